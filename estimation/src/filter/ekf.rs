//! The continuous-discrete extended Kalman filter.
//!
//! Time update: the moment ODEs `dm/dt = f(m) + R`,
//! `dP/dt = J P + P Jᵀ + Q(m, P)` with the model's exact `J = ∂f/∂x`,
//! integrated as one augmented system (`n + n²` states) by the solve layer
//! at the filter's tolerances; `P` is symmetrised after each interval.
//! Measurement update: the square-root array form — with any square root
//! `S` of `P` (Cholesky, or the eigen-decomposition with negative round-off
//! eigenvalues clipped when `P` is only semi-definite), the pre-array
//! `[[√R, H S], [0, S]]` is triangularised by a QR factorisation; its
//! lower-triangular form `[[√Σ, 0], [K̄, S⁺]]` gives the innovation variance
//! `Σ = H P Hᵀ + R`, the gain `K = K̄/√Σ` and the updated factor `S⁺`, so the
//! updated covariance `S⁺S⁺ᵀ` is symmetric positive semi-definite by
//! construction.

use insilico_model::tape::Env;
use insilico_model::ModelSystem;
use insilico_solvers::{solve, Problem, System};
use nalgebra::{DMatrix, DVector};

use super::events::Forcing;
use super::noise::NoiseModel;
use super::{comparison, Engine, Filter, ObservedOutput, Update};
use crate::error::EstimationError;

/// The EKF's state: mean and covariance.
pub(crate) struct Ekf<'f> {
    f: &'f Filter,
    m: Vec<f64>,
    p: DMatrix<f64>,
}

impl<'f> Ekf<'f> {
    pub fn new(f: &'f Filter) -> Ekf<'f> {
        Ekf { f, m: f.mean0.clone(), p: f.cov0.clone() }
    }
}

/// The model's `∂f/∂x` at `(t, x)` as a dense row-major `n × n` matrix.
/// Integrates a moment system (state: the mean, then the covariance row-major)
/// from `(m, P)` at `t0` to `t1`; returns the mean and the symmetrised
/// covariance. Shared by the EKF's and the UKF's time updates.
pub(crate) fn integrate_moments(
    f: &Filter,
    sys: &dyn System,
    m: &[f64],
    p: &DMatrix<f64>,
    t0: f64,
    t1: f64,
    forcing: &Forcing,
) -> Result<(Vec<f64>, DMatrix<f64>), EstimationError> {
    let n = m.len();
    let mut z = m.to_vec();
    // Row-major P (symmetric, so the column-major storage reads the same).
    z.extend(p.transpose().iter());
    let mut prob = Problem::new(sys, f.params.clone()).with_x0(z);
    prob.t0 = t0;
    prob.t_end = Some(t1);
    prob.u0 = forcing.u.clone();
    let opts = insilico_solvers::Options { rtol: f.opts.rtol, atol: f.opts.atol, ..Default::default() };
    let sol =
        solve(&prob, f.opts.method, &opts).map_err(|error| EstimationError::Solve { subject: f.label(), error })?;
    let z = sol.final_state;
    let p = DMatrix::from_row_slice(n, n, &z[n..]);
    Ok((z[..n].to_vec(), (&p + p.transpose()) * 0.5))
}

pub(crate) fn dense_jacobian(sys: &ModelSystem, t: f64, x: &[f64], u: &[f64], p: &[f64]) -> Vec<f64> {
    let n = x.len();
    let pattern = sys.model().jacobian_pattern();
    let mut values = vec![0.0; pattern.len()];
    sys.jacobian_values(t, x, u, p, &mut values);
    let mut j = vec![0.0; n * n];
    for (&(r, c), v) in pattern.iter().zip(values) {
        j[r * n + c] += v;
    }
    j
}

/// `P`'s square root: Cholesky when `P` is positive definite, else the
/// symmetric eigen-decomposition with eigenvalues clipped at 0.
pub(crate) fn square_root(p: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (p + p.transpose()) * 0.5;
    if let Some(c) = sym.clone().cholesky() {
        return c.l();
    }
    let e = sym.symmetric_eigen();
    let d = DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.max(0.0).sqrt()));
    &e.eigenvectors * d
}

/// The augmented moment system `z = [m, vec(P)]` (row-major `P`).
///
/// Its `jvp`/`vjp` (used only as the Newton matrix of implicit methods, never
/// for sensitivities) are exact in the blocks `∂ṁ/∂m = J` and
/// `∂Ṗ/∂P = J ⊗ I + I ⊗ J` and leave out `∂Ṗ/∂m`, which needs second
/// derivatives of `f`: like the solve layer's own sensitivity systems, an
/// approximate Newton matrix changes the convergence rate, not the solution.
struct Moments<'a> {
    sys: &'a ModelSystem,
    noise: &'a NoiseModel,
    rates: &'a [f64],
    /// Square of the noise scale.
    scale2: f64,
    n: usize,
}

impl Moments<'_> {
    /// `out = J V + V Jᵀ` for row-major `n × n` matrices.
    fn sandwich(&self, j: &[f64], v: &[f64], out: &mut [f64], transpose: bool) {
        let n = self.n;
        for r in 0..n {
            for c in 0..n {
                let mut s = 0.0;
                for k in 0..n {
                    // J V + V Jᵀ, or (transpose) Jᵀ V + V J.
                    let (a, b) = if transpose { (j[k * n + r], j[k * n + c]) } else { (j[r * n + k], j[c * n + k]) };
                    s += a * v[k * n + c] + v[r * n + k] * b;
                }
                out[r * n + c] = s;
            }
        }
    }
}

impl System for Moments<'_> {
    fn nstates(&self) -> usize {
        self.n + self.n * self.n
    }
    fn nparams(&self) -> usize {
        self.sys.nparams()
    }
    fn ninputs(&self) -> usize {
        self.sys.ninputs()
    }
    fn rhs(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], dz: &mut [f64]) {
        let n = self.n;
        let (m, pm) = z.split_at(n);
        let (dm, dp) = dz.split_at_mut(n);
        self.sys.rhs(t, m, u, p, dm);
        for (d, r) in dm.iter_mut().zip(self.rates) {
            *d += r;
        }
        let j = dense_jacobian(self.sys, t, m, u, p);
        self.sandwich(&j, pm, dp, false);
        if self.noise.is_empty() {
            return;
        }
        let mut sd = vec![0.0; n];
        let mut grad = vec![0.0; n * n];
        let env = Env { x: m, p, u, cov: self.sys.covariates(), t };
        self.noise.eval(self.sys.model(), &env, &mut sd, Some(&mut grad));
        for &i in &self.noise.states {
            // E[g_i²] ≈ g_i(m)² + ∇g_iᵀ P ∇g_i.
            let gi = &grad[i * n..(i + 1) * n];
            let mut quad = 0.0;
            for a in 0..n {
                if gi[a] != 0.0 {
                    for b in 0..n {
                        quad += gi[a] * pm[a * n + b] * gi[b];
                    }
                }
            }
            dp[i * n + i] += self.scale2 * (sd[i] * sd[i] + quad);
        }
    }
    fn jvp(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let n = self.n;
        self.sys.jvp(t, &z[..n], u, p, &v[..n], &mut out[..n]);
        let j = dense_jacobian(self.sys, t, &z[..n], u, p);
        self.sandwich(&j, &v[n..], &mut out[n..], false);
    }
    fn vjp_state(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let n = self.n;
        self.sys.vjp_state(t, &z[..n], u, p, &w[..n], &mut out[..n]);
        let j = dense_jacobian(self.sys, t, &z[..n], u, p);
        self.sandwich(&j, &w[n..], &mut out[n..], true);
    }
    fn jvp_params(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let n = self.n;
        self.sys.jvp_params(t, &z[..n], u, p, v, &mut out[..n]);
        out[n..].iter_mut().for_each(|o| *o = 0.0);
    }
    fn vjp_params(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        self.sys.vjp_params(t, &z[..self.n], u, p, &w[..self.n], out);
    }
}

impl Engine for Ekf<'_> {
    fn propagate(&mut self, t0: f64, t1: f64, forcing: &Forcing) -> Result<(), EstimationError> {
        if t1 <= t0 {
            return Ok(());
        }
        let f = self.f;
        let n = self.m.len();
        let scale = f.opts.noise_scale;
        let sys = Moments { sys: &f.sys, noise: &f.noise, rates: &forcing.rates, scale2: scale * scale, n };
        (self.m, self.p) = integrate_moments(f, &sys, &self.m, &self.p, t0, t1, forcing)?;
        Ok(())
    }

    fn jump(&mut self, cmt: usize, amount: f64) {
        self.m[cmt] += amount;
    }

    fn reset(&mut self) {
        self.m.iter_mut().for_each(|v| *v = 0.0);
        self.p.fill(0.0);
    }

    fn moments(&self) -> (Vec<f64>, Vec<f64>) {
        (self.m.clone(), self.p.transpose().iter().copied().collect())
    }

    fn update(&mut self, t: f64, out: &ObservedOutput, y: Option<f64>) -> Result<Update, EstimationError> {
        let f = self.f;
        let n = self.m.len();
        let sys = &f.sys;
        let h = sys.output(out.output, t, &self.m, &f.params);
        let mut gx = vec![0.0; n];
        let mut gp = vec![0.0; sys.nparams()];
        sys.output_grad(out.output, t, &self.m, &f.params, &mut gx, &mut gp);
        let r = out.error.variance(h, &out.sigma).0;
        if out.error.log_scale() && h <= 0.0 {
            if y.is_some() {
                return Err(EstimationError::Filter(format!(
                    "at t = {t} the predicted `{}` is {h}; the exponential error model needs a positive prediction",
                    out.name
                )));
            }
            return Ok(Update { predicted: h, variance: f64::NAN, log_likelihood: 0.0, ess: None });
        }
        let (_, hc, dfac) = comparison(out, 1.0, h);
        let hrow = DVector::from_iterator(n, gx.iter().map(|g| g * dfac));
        let s = square_root(&self.p);
        let hs = s.transpose() * &hrow; // (H S)ᵀ
        let Some(y) = y else {
            let variance = hs.norm_squared() + r;
            return Ok(Update { predicted: h, variance, log_likelihood: 0.0, ess: None });
        };
        let mut a = DMatrix::zeros(n + 1, n + 1);
        a[(0, 0)] = r.sqrt();
        for k in 0..n {
            a[(0, k + 1)] = hs[k];
            for c in 0..n {
                a[(k + 1, c + 1)] = s[(k, c)];
            }
        }
        // A = L Q with L = Rᵀ from the QR factorisation of Aᵀ.
        let l = a.transpose().qr().r().transpose();
        let l00 = l[(0, 0)];
        let variance = l00 * l00;
        if !(variance > 0.0 && variance.is_finite()) {
            return Err(EstimationError::Filter(format!(
                "at t = {t} the innovation variance of `{}` is {variance} (no residual error and no state uncertainty)",
                out.name
            )));
        }
        let (yc, _, _) = comparison(out, y, h);
        let e = yc - hc;
        for k in 0..n {
            self.m[k] += l[(k + 1, 0)] / l00 * e;
        }
        let sp = l.view((1, 1), (n, n)).into_owned();
        self.p = &sp * sp.transpose();
        let log_likelihood = -0.5 * ((2.0 * std::f64::consts::PI * variance).ln() + e * e / variance);
        Ok(Update { predicted: h, variance, log_likelihood, ess: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use insilico_model::Model;

    /// The moment system's `f` part uses the model's exact Jacobian, the
    /// update the exact `H`: both against central differences (h = 1e-6
    /// relative, truncation O(h²), round-off O(1e-16/h): 1e-7 relative is
    /// safe for these smooth right-hand sides).
    #[test]
    fn jacobian_matches_finite_differences() {
        let m = Model::parse(
            "parameters: Vmax = 2, Km = 1.5, V = 3, r = 0.3\nstates: c, tum\n\
             d/dt(c) = -Vmax * c / (Km + c)\nd/dt(tum) = r * tum * (1 - tum / 10) - 0.1 * c * tum / V\n\
             output: y = c / V + sqrt(tum) * c",
            "j",
        )
        .unwrap();
        let sys = ModelSystem::new(&m, &[]).unwrap();
        let p = [2.0, 1.5, 3.0, 0.3];
        let x = [2.2, 4.1];
        let j = dense_jacobian(&sys, 0.0, &x, &[], &p);
        for c in 0..2 {
            let h = 1e-6 * x[c];
            let (mut xp, mut xm) = (x, x);
            xp[c] += h;
            xm[c] -= h;
            let (mut fp, mut fm) = ([0.0; 2], [0.0; 2]);
            sys.rhs(0.0, &xp, &[], &p, &mut fp);
            sys.rhs(0.0, &xm, &[], &p, &mut fm);
            for r in 0..2 {
                let fd = (fp[r] - fm[r]) / (2.0 * h);
                assert!((fd - j[r * 2 + c]).abs() < 1e-7 * (1.0 + fd.abs()), "J[{r},{c}] {fd} vs {}", j[r * 2 + c]);
            }
        }
        // H = ∂h/∂x, as the measurement update reads it.
        let mut gx = [0.0; 2];
        let mut gp = [0.0; 4];
        sys.output_grad(0, 0.0, &x, &p, &mut gx, &mut gp);
        for c in 0..2 {
            let h = 1e-6 * x[c];
            let (mut xp, mut xm) = (x, x);
            xp[c] += h;
            xm[c] -= h;
            let fd = (sys.output(0, 0.0, &xp, &p) - sys.output(0, 0.0, &xm, &p)) / (2.0 * h);
            assert!((fd - gx[c]).abs() < 1e-7 * (1.0 + fd.abs()), "H[{c}] {fd} vs {}", gx[c]);
        }
    }

    /// The square-root update equals the textbook Kalman update
    /// `K = P Hᵀ/Σ`, `P⁺ = P − K Σ Kᵀ` (to round-off, 1e-12 here).
    #[test]
    fn square_root_update_matches_textbook_form() {
        let m =
            Model::parse("parameters: k = 1\nstates: a, b\nd/dt(a) = -k*a\nd/dt(b) = a - b\noutput: y = a + 2*b", "u")
                .unwrap();
        let out = super::super::ObservedOutput::new(&m, "y", crate::ErrorModel::Additive, &[0.3]).unwrap();
        let f = Filter::new(&m, &[1.0], &[], std::slice::from_ref(&out))
            .unwrap()
            .with_initial(&[1.0, 2.0], &[0.5, 0.1, 0.1, 0.2])
            .unwrap();
        let mut e = Ekf::new(&f);
        let up = e.update(0.0, &out, Some(6.0)).unwrap();
        let p = DMatrix::from_row_slice(2, 2, &[0.5, 0.1, 0.1, 0.2]);
        let h = DVector::from_vec(vec![1.0, 2.0]);
        let sigma = (h.transpose() * &p * &h)[0] + 0.09;
        let k = &p * &h / sigma;
        let m_new = DVector::from_vec(vec![1.0, 2.0]) + &k * (6.0 - 5.0);
        let p_new = &p - &k * k.transpose() * sigma;
        assert!((up.variance - sigma).abs() < 1e-12);
        let (mean, cov) = e.moments();
        for i in 0..2 {
            assert!((mean[i] - m_new[i]).abs() < 1e-12);
            for j in 0..2 {
                assert!((cov[i * 2 + j] - p_new[(i, j)]).abs() < 1e-12);
            }
        }
        let ll = -0.5 * ((2.0 * std::f64::consts::PI * sigma).ln() + 1.0 / sigma);
        assert!((up.log_likelihood - ll).abs() < 1e-12);
    }
}
