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
    /// Number of derived constants (at most 64) computed once per trajectory
    /// by [`BatchModel::prepare`]; `rhs`, `jacobian` and `output` receive
    /// these instead of the raw parameters. Defaults to the parameters
    /// themselves.
    fn nderived(&self) -> usize {
        self.nparams()
    }
    /// Derived constants from the parameters (rate constants instead of
    /// clearances and volumes, say): divisions done once per trajectory
    /// rather than in every right-hand side evaluation.
    fn prepare(&self, p: &[f64], d: &mut [f64]) {
        d[..p.len()].copy_from_slice(p);
    }
    /// `dx = f(x, d, u)` without the infusion rates (the integrator adds them);
    /// `d` are the derived constants of [`BatchModel::prepare`].
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
    /// Weights shared by every trajectory (a neural term's flat parameter
    /// vector), passed to the device functions as `w`. Empty by default.
    fn weights(&self) -> &[f64] {
        &[]
    }
    /// Whether the integrators should evaluate the right-hand sides of all
    /// stepping lanes with one [`BatchModel::rhs_lanes`] call rather than
    /// [`BatchModel::rhs`] lane by lane. False by default (an inlined
    /// `rhs` is fastest lane by lane); true for models whose right-hand
    /// side is an out-of-line call (run-time compiled code), where one call
    /// for several lanes saves the call and its register spills.
    fn batches_lanes(&self) -> bool {
        false
    }
    /// `dx = f(x, d, u)` for every `Some` entry (the stepping lanes). Must
    /// compute, lane by lane, exactly what [`BatchModel::rhs`] computes.
    fn rhs_lanes(&self, lanes: &mut [Option<LaneRhs<'_, N>>]) {
        for l in lanes.iter_mut().flatten() {
            self.rhs(l.x, l.d, l.u, l.dx);
        }
    }
}

/// One lane's arguments of [`BatchModel::rhs_lanes`].
#[derive(Debug)]
pub struct LaneRhs<'a, const N: usize> {
    /// State.
    pub x: &'a [f64; N],
    /// Derived constants.
    pub d: &'a [f64],
    /// Inputs.
    pub u: &'a [f64],
    /// Where `f` goes.
    pub dx: &'a mut [f64; N],
}

/// CUDA C source of a model's device functions. The kernel calls
///
/// ```c
/// __device__ void model_prepare(const double* p, double* d);
/// __device__ void model_rhs(const double* x, const double* p, const double* u, const double* w, double* dx);
/// __device__ void model_jac(const double* x, const double* p, const double* u, const double* w, double* jac); // row-major N×N
/// __device__ double model_output(const double* x, const double* p, const double* w);
/// ```
///
/// The functions must do the same floating-point operations in the same
/// order as the Rust `rhs`/`jacobian`/`output`, so that the GPU and its CPU
/// twin agree to round-off (the kernels are compiled without FMA contraction).
///
/// with `#define NSTATES`, `NPARAMS`, `NDERIVED` and `NINPUTS` set by the kernel
/// builder; `p` in `model_rhs`, `model_jac` and `model_output` are the derived
/// constants.
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
    /// `[ka, k10 = CL/V1, k12 = Q/V1, k21 = Q/V2, 1/V1]`.
    fn prepare(&self, p: &[f64], d: &mut [f64]) {
        let (ka, cl, v1, q, v2) = (p[0], p[1], p[2], p[3], p[4]);
        d[0] = ka;
        d[1] = cl / v1;
        d[2] = q / v1;
        d[3] = q / v2;
        d[4] = 1.0 / v1;
    }
    #[inline]
    fn rhs(&self, x: &[f64; 4], d: &[f64], _u: &[f64], dx: &mut [f64; 4]) {
        let elim = d[1] * x[1];
        let dist = d[2] * x[1] - d[3] * x[2];
        dx[0] = -d[0] * x[0];
        dx[1] = d[0] * x[0] - elim - dist;
        dx[2] = dist;
        dx[3] = elim;
    }
    #[inline]
    fn jacobian(&self, _x: &[f64; 4], d: &[f64], _u: &[f64], j: &mut [[f64; 4]; 4]) {
        *j = [[0.0; 4]; 4];
        j[0][0] = -d[0];
        j[1][0] = d[0];
        j[1][1] = -(d[1] + d[2]);
        j[1][2] = d[3];
        j[2][1] = d[2];
        j[2][2] = -d[3];
        j[3][1] = d[1];
    }
    #[inline]
    fn output(&self, x: &[f64; 4], d: &[f64]) -> f64 {
        x[1] * d[4]
    }
    fn cuda_source(&self) -> CudaSource {
        CudaSource {
            code: r#"
__device__ __forceinline__ void model_prepare(const double* p, double* d) {
    d[0] = p[0]; d[1] = p[1] / p[2]; d[2] = p[3] / p[2]; d[3] = p[3] / p[4]; d[4] = 1.0 / p[2];
}
__device__ __forceinline__ void model_rhs(const double* x, const double* d, const double* u, const double* w, double* dx) {
    double elim = d[1] * x[1];
    double dist = d[2] * x[1] - d[3] * x[2];
    dx[0] = -d[0] * x[0];
    dx[1] = d[0] * x[0] - elim - dist;
    dx[2] = dist;
    dx[3] = elim;
}
__device__ __forceinline__ void model_jac(const double* x, const double* d, const double* u, const double* w, double* j) {
    for (int k = 0; k < 16; ++k) j[k] = 0.0;
    j[0 * 4 + 0] = -d[0];
    j[1 * 4 + 0] = d[0];
    j[1 * 4 + 1] = -(d[1] + d[2]);
    j[1 * 4 + 2] = d[3];
    j[2 * 4 + 1] = d[2];
    j[2 * 4 + 2] = -d[3];
    j[3 * 4 + 1] = d[1];
}
__device__ __forceinline__ double model_output(const double* x, const double* d, const double* w) { return x[1] * d[4]; }
"#
            .to_string(),
        }
    }
}

/// One-compartment oral absorption with a learned elimination: states gut,
/// central, eliminated; parameters `[ka, V]`; elimination (amount/h)
/// `A_c · softplus(nn(C))` with `C = A_c/V` and `nn` a tanh MLP `1 → H → H → 1`
/// over flat, column-major-per-layer weights (`W1 (H×1), b1, W2 (H×H), b2,
/// W3 (1×H), b3`): non-negative and zero at zero concentration whatever the
/// weights, and mass-conserving (what leaves central enters eliminated).
#[derive(Debug, Clone, PartialEq)]
pub struct HybridOneCmt {
    /// Hidden width `H`.
    pub hidden: usize,
    /// `H + H + H·H + H + H + 1` weights.
    pub weights: Vec<f64>,
}

impl HybridOneCmt {
    /// Number of weights for hidden width `h`.
    pub fn n_weights(h: usize) -> usize {
        h + h + h * h + h + h + 1
    }
    /// Deterministic pseudo-random weights (scaled 1/√fan-in) from `seed`.
    pub fn seeded(hidden: usize, seed: u64) -> Self {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let h = hidden;
        let mut w = Vec::with_capacity(Self::n_weights(h));
        w.extend((0..h).map(|_| next()));
        w.extend((0..h).map(|_| 0.1 * next()));
        w.extend((0..h * h).map(|_| next() / (h as f64).sqrt()));
        w.extend((0..h).map(|_| 0.1 * next()));
        w.extend((0..h).map(|_| next() / (h as f64).sqrt()));
        w.push(-1.0);
        HybridOneCmt { hidden, weights: w }
    }

    /// `(nn(c), d nn/dc)` by forward-mode differentiation through the layers.
    #[inline]
    fn mlp(&self, c: f64) -> (f64, f64) {
        let h = self.hidden;
        let w = &self.weights;
        let (w1, b1) = (&w[..h], &w[h..2 * h]);
        let (w2, b2) = (&w[2 * h..2 * h + h * h], &w[2 * h + h * h..3 * h + h * h]);
        let (w3, b3) = (&w[3 * h + h * h..4 * h + h * h], w[4 * h + h * h]);
        let mut a1 = [0.0; 64];
        let mut d1 = [0.0; 64];
        for j in 0..h {
            let t = (w1[j] * c + b1[j]).tanh();
            a1[j] = t;
            d1[j] = (1.0 - t * t) * w1[j];
        }
        let (mut out, mut dout) = (b3, 0.0);
        for i in 0..h {
            let (mut z, mut dz) = (b2[i], 0.0);
            for j in 0..h {
                z += w2[i + j * h] * a1[j];
                dz += w2[i + j * h] * d1[j];
            }
            let t = z.tanh();
            out += w3[i] * t;
            dout += w3[i] * ((1.0 - t * t) * dz);
        }
        (out, dout)
    }
}

#[inline]
fn softplus(z: f64) -> f64 {
    if z > 30.0 {
        z
    } else {
        z.exp().ln_1p()
    }
}

#[inline]
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl BatchModel<3> for HybridOneCmt {
    fn nparams(&self) -> usize {
        2
    }
    fn rhs(&self, x: &[f64; 3], p: &[f64], _u: &[f64], dx: &mut [f64; 3]) {
        let (ka, v) = (p[0], p[1]);
        let (nn, _) = self.mlp(x[1] / v);
        let elim = x[1] * softplus(nn);
        dx[0] = -ka * x[0];
        dx[1] = ka * x[0] - elim;
        dx[2] = elim;
    }
    fn jacobian(&self, x: &[f64; 3], p: &[f64], _u: &[f64], j: &mut [[f64; 3]; 3]) {
        let (ka, v) = (p[0], p[1]);
        let (nn, dnn) = self.mlp(x[1] / v);
        let delim = softplus(nn) + x[1] * sigmoid(nn) * dnn / v;
        *j = [[0.0; 3]; 3];
        j[0][0] = -ka;
        j[1][0] = ka;
        j[1][1] = -delim;
        j[2][1] = delim;
    }
    fn output(&self, x: &[f64; 3], p: &[f64]) -> f64 {
        x[1] / p[1]
    }
    fn weights(&self) -> &[f64] {
        &self.weights
    }
    fn cuda_source(&self) -> CudaSource {
        let h = self.hidden;
        CudaSource {
            code: format!(
                r#"
#define HID {h}
__device__ __forceinline__ double softplus_(double z) {{ return z > 30.0 ? z : log1p(exp(z)); }}
__device__ __forceinline__ double sigmoid_(double z) {{ return 1.0 / (1.0 + exp(-z)); }}
__device__ void mlp_(const double* w, double c, double* out, double* dout) {{
    const double* w1 = w; const double* b1 = w + HID;
    const double* w2 = w + 2 * HID; const double* b2 = w + 2 * HID + HID * HID;
    const double* w3 = w + 3 * HID + HID * HID; double b3 = w[4 * HID + HID * HID];
    double a1[HID], d1[HID];
    for (int j = 0; j < HID; ++j) {{ double t = tanh(w1[j] * c + b1[j]); a1[j] = t; d1[j] = (1.0 - t * t) * w1[j]; }}
    double o = b3, d = 0.0;
    for (int i = 0; i < HID; ++i) {{
        double z = b2[i], dz = 0.0;
        for (int j = 0; j < HID; ++j) {{ z += w2[i + j * HID] * a1[j]; dz += w2[i + j * HID] * d1[j]; }}
        double t = tanh(z);
        o += w3[i] * t;
        d += w3[i] * ((1.0 - t * t) * dz);
    }}
    *out = o; *dout = d;
}}
__device__ void model_prepare(const double* p, double* d) {{ d[0] = p[0]; d[1] = p[1]; }}
__device__ void model_rhs(const double* x, const double* p, const double* u, const double* w, double* dx) {{
    double ka = p[0], v = p[1], nn, dnn;
    mlp_(w, x[1] / v, &nn, &dnn);
    double elim = x[1] * softplus_(nn);
    dx[0] = -ka * x[0];
    dx[1] = ka * x[0] - elim;
    dx[2] = elim;
}}
__device__ void model_jac(const double* x, const double* p, const double* u, const double* w, double* j) {{
    double ka = p[0], v = p[1], nn, dnn;
    mlp_(w, x[1] / v, &nn, &dnn);
    double delim = softplus_(nn) + x[1] * sigmoid_(nn) * dnn / v;
    for (int k = 0; k < 9; ++k) j[k] = 0.0;
    j[0] = -ka;
    j[3] = ka;
    j[4] = -delim;
    j[7] = delim;
}}
__device__ double model_output(const double* x, const double* p, const double* w) {{ return x[1] / p[1]; }}
"#
            ),
        }
    }
}

/// Central-difference check of a model's Jacobian (used by tests of every
/// model) at state `x` and derived constants `d` (see [`BatchModel::prepare`]):
/// returns the largest `|J − J_fd| / max(|J_fd|, 1)`.
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
        let mut d = [0.0; 5];
        TwoCmtOral.prepare(&p, &mut d);
        let x = [3.0, 7.0, 2.0, 1.0];
        assert!(jacobian_fd_error(&TwoCmtOral, &x, &d, &[]) < 1e-8);
        let p = d;
        let mut dx = [0.0; 4];
        TwoCmtOral.rhs(&x, &p, &[], &mut dx);
        assert!(dx.iter().sum::<f64>().abs() < 1e-15);
    }

    #[test]
    fn hybrid_jacobian_is_exact_and_elimination_non_negative() {
        let m = HybridOneCmt::seeded(16, 7);
        assert_eq!(m.weights.len(), HybridOneCmt::n_weights(16));
        let p = [1.0, 20.0];
        for x in [[10.0, 40.0, 1.0], [0.0, 0.3, 0.0], [5.0, 400.0, 2.0]] {
            assert!(jacobian_fd_error(&m, &x, &p, &[]) < 1e-7);
            let mut dx = [0.0; 3];
            m.rhs(&x, &p, &[], &mut dx);
            assert!(dx[2] >= 0.0);
            assert!(dx.iter().sum::<f64>().abs() < 1e-12);
        }
        let mut dx = [0.0; 3];
        m.rhs(&[0.0, 0.0, 0.0], &p, &[], &mut dx);
        assert_eq!(dx[2], 0.0, "no elimination at zero concentration");
    }
}
