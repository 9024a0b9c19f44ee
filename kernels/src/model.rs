//! Small models for batched integration.

/// A small ODE model `dx/dt = f(x, θ) + r` with `N ≤ 32` states, where `r` is
/// the zero-order input (infusion rates) set by the schedule, and its exact
/// Jacobian. Written once, it runs in the CPU integrators of this crate and,
/// through [`BatchModel::cuda_source`], inside the CUDA kernels.
///
/// Models are autonomous between breakpoints: time enters only through the
/// schedule (doses, infusions, exposure windows), which the integrators
/// handle exactly by stopping at every breakpoint.
pub trait BatchModel<const N: usize>: Sync {
    /// Number of parameters.
    fn nparams(&self) -> usize;
    /// `dx = f(x, θ, u)` without the infusion rates (the integrator adds them).
    /// `u` holds the exogenous inputs (exposure levels), length [`BatchModel::ninputs`].
    fn rhs(&self, x: &[f64; N], p: &[f64], u: &[f64], dx: &mut [f64; N]);
    /// Row-major Jacobian `jac[i][j] = ∂f_i/∂x_j`.
    fn jacobian(&self, x: &[f64; N], p: &[f64], u: &[f64], jac: &mut [[f64; N]; N]);
    /// Number of exogenous inputs (0 by default).
    fn ninputs(&self) -> usize {
        0
    }
    /// The observed output (e.g. a concentration).
    fn output(&self, x: &[f64; N], p: &[f64]) -> f64;
    /// The same model as CUDA C device functions, for the GPU kernels. See
    /// [`CudaSource`] for the contract.
    fn cuda_source(&self) -> CudaSource;
}

/// CUDA C source of a model's device functions. The kernel calls
///
/// ```c
/// __device__ void model_rhs(const double* x, const double* p, const double* u, double* dx);
/// __device__ void model_jac(const double* x, const double* p, const double* u, double* jac); // row-major N×N
/// __device__ double model_output(const double* x, const double* p);
/// ```
///
/// with `#define NSTATES`, `NPARAMS` and `NINPUTS` set by the kernel builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaSource {
    /// The three device functions (and any helpers they need).
    pub code: String,
}

/// Linear two-compartment oral PK (P1): states gut, central, peripheral,
/// eliminated; parameters `[ka, CL, V1, Q, V2]`; output `C = central/V1`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TwoCmtOral;

impl BatchModel<4> for TwoCmtOral {
    fn nparams(&self) -> usize {
        5
    }
    #[inline]
    fn rhs(&self, x: &[f64; 4], p: &[f64], _u: &[f64], dx: &mut [f64; 4]) {
        let (ka, cl, v1, q, v2) = (p[0], p[1], p[2], p[3], p[4]);
        let elim = cl / v1 * x[1];
        let dist = q / v1 * x[1] - q / v2 * x[2];
        dx[0] = -ka * x[0];
        dx[1] = ka * x[0] - elim - dist;
        dx[2] = dist;
        dx[3] = elim;
    }
    #[inline]
    fn jacobian(&self, _x: &[f64; 4], p: &[f64], _u: &[f64], j: &mut [[f64; 4]; 4]) {
        let (ka, cl, v1, q, v2) = (p[0], p[1], p[2], p[3], p[4]);
        *j = [[0.0; 4]; 4];
        j[0][0] = -ka;
        j[1][0] = ka;
        j[1][1] = -(cl + q) / v1;
        j[1][2] = q / v2;
        j[2][1] = q / v1;
        j[2][2] = -q / v2;
        j[3][1] = cl / v1;
    }
    #[inline]
    fn output(&self, x: &[f64; 4], p: &[f64]) -> f64 {
        x[1] / p[2]
    }
    fn cuda_source(&self) -> CudaSource {
        CudaSource {
            code: r#"
__device__ __forceinline__ void model_rhs(const double* x, const double* p, const double* u, double* dx) {
    double ka = p[0], cl = p[1], v1 = p[2], q = p[3], v2 = p[4];
    double elim = cl / v1 * x[1];
    double dist = q / v1 * x[1] - q / v2 * x[2];
    dx[0] = -ka * x[0];
    dx[1] = ka * x[0] - elim - dist;
    dx[2] = dist;
    dx[3] = elim;
}
__device__ __forceinline__ void model_jac(const double* x, const double* p, const double* u, double* j) {
    double ka = p[0], cl = p[1], v1 = p[2], q = p[3], v2 = p[4];
    for (int k = 0; k < 16; ++k) j[k] = 0.0;
    j[0 * 4 + 0] = -ka;
    j[1 * 4 + 0] = ka;
    j[1 * 4 + 1] = -(cl + q) / v1;
    j[1 * 4 + 2] = q / v2;
    j[2 * 4 + 1] = q / v1;
    j[2 * 4 + 2] = -q / v2;
    j[3 * 4 + 1] = cl / v1;
}
__device__ __forceinline__ double model_output(const double* x, const double* p) { return x[1] / p[2]; }
"#
            .to_string(),
        }
    }
}

/// Central-difference check of a model's Jacobian (used by tests of every
/// model): returns the largest `|J − J_fd| / max(|J_fd|, 1)`.
pub fn jacobian_fd_error<const N: usize, M: BatchModel<N>>(m: &M, x: &[f64; N], p: &[f64], u: &[f64]) -> f64 {
    let mut jac = [[0.0; N]; N];
    m.jacobian(x, p, u, &mut jac);
    let mut worst = 0.0f64;
    for j in 0..N {
        let h = 1e-6 * x[j].abs().max(1.0);
        let (mut xp, mut xm) = (*x, *x);
        xp[j] += h;
        xm[j] -= h;
        let (mut fp, mut fm) = ([0.0; N], [0.0; N]);
        m.rhs(&xp, p, u, &mut fp);
        m.rhs(&xm, p, u, &mut fm);
        for i in 0..N {
            let fd = (fp[i] - fm[i]) / (2.0 * h);
            worst = worst.max((jac[i][j] - fd).abs() / fd.abs().max(1.0));
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cmt_jacobian_is_exact_and_mass_conserving() {
        let p = [1.2, 5.0, 30.0, 10.0, 50.0];
        let x = [3.0, 7.0, 2.0, 1.0];
        assert!(jacobian_fd_error(&TwoCmtOral, &x, &p, &[]) < 1e-8);
        let mut dx = [0.0; 4];
        TwoCmtOral.rhs(&x, &p, &[], &mut dx);
        assert!(dx.iter().sum::<f64>().abs() < 1e-15);
    }
}
