//! The continuous-discrete unscented Kalman filter (spherical cubature
//! points: `2n` points `m ± √n·(P^{1/2})_k`, equal weights `1/(2n)`, all
//! positive).
//!
//! Time update: the sigma-point moment ODEs (Särkkä 2007)
//! `dm/dt = Σ w f(X_i) + R`,
//! `dP/dt = Σ w [(X_i − m) f(X_i)ᵀ + f(X_i) (X_i − m)ᵀ] + diag(Σ w g(X_i)²)`,
//! integrated as one augmented system by the solve layer. `P^{1/2}` is the
//! symmetric principal square root (eigenvalues clipped at 0), continuous
//! in `P` even where `P` is only semi-definite (a state known exactly).
//! Measurement update: the unscented transform of `h` (on the comparison
//! scale) with `R = Σ w R(h(X_i))`; the updated covariance is projected onto
//! the positive semi-definite cone.
//!
//! Exact for linear models (the cubature rule integrates quadratics
//! exactly), like the EKF; on nonlinear ones it averages `f`, `g` and `h`
//! over the spread instead of linearising them.

use insilico_model::tape::Env;
use insilico_model::ModelSystem;
use insilico_solvers::System;
use nalgebra::DMatrix;

use super::ekf::{dense_jacobian, integrate_moments};
use super::events::Forcing;
use super::noise::NoiseModel;
use super::{comparison, Engine, Filter, ObservedOutput, Update};
use crate::error::EstimationError;

/// The symmetric principal square root of `P` (eigenvalues clipped at 0).
fn sym_sqrt(p: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (p + p.transpose()) * 0.5;
    let e = sym.symmetric_eigen();
    let d = DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.max(0.0).sqrt()));
    &e.eigenvectors * d * e.eigenvectors.transpose()
}

/// `P` projected onto the positive semi-definite cone.
fn psd(p: &DMatrix<f64>) -> DMatrix<f64> {
    let s = sym_sqrt(p);
    &s * &s
}

/// The `2n` cubature points of `(m, P)`, as rows.
fn sigma_points(m: &[f64], p: &DMatrix<f64>) -> Vec<Vec<f64>> {
    let n = m.len();
    let s = sym_sqrt(p) * (n as f64).sqrt();
    let mut pts = Vec::with_capacity(2 * n);
    for k in 0..n {
        for sign in [1.0, -1.0] {
            pts.push((0..n).map(|r| m[r] + sign * s[(r, k)]).collect());
        }
    }
    pts
}

pub(crate) struct Ukf<'f> {
    f: &'f Filter,
    m: Vec<f64>,
    p: DMatrix<f64>,
}

impl<'f> Ukf<'f> {
    pub fn new(f: &'f Filter) -> Ukf<'f> {
        Ukf { f, m: f.mean0.clone(), p: f.cov0.clone() }
    }
}

/// The augmented sigma-point moment system `z = [m, vec(P)]`. Its
/// `jvp`/`vjp` (the Newton matrix of implicit methods only) are those of the
/// EKF's moment system at the mean, an approximation that affects the
/// Newton convergence rate, not the solution.
struct SigmaMoments<'a> {
    sys: &'a ModelSystem,
    noise: &'a NoiseModel,
    rates: &'a [f64],
    scale2: f64,
    n: usize,
}

impl System for SigmaMoments<'_> {
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
        let pts = sigma_points(m, &DMatrix::from_row_slice(n, n, pm));
        let w = 1.0 / pts.len() as f64;
        dz.iter_mut().for_each(|v| *v = 0.0);
        let mut fx = vec![0.0; n];
        let mut sd = vec![0.0; n];
        for x in &pts {
            self.sys.rhs(t, x, u, p, &mut fx);
            for r in 0..n {
                dz[r] += w * fx[r];
                let dr = x[r] - m[r];
                for c in 0..n {
                    dz[n + r * n + c] += w * (dr * fx[c] + fx[r] * (x[c] - m[c]));
                }
            }
            if !self.noise.is_empty() {
                let env = Env { x, p, u, cov: self.sys.covariates(), t };
                self.noise.eval(self.sys.model(), &env, &mut sd, None);
                for &i in &self.noise.states {
                    dz[n + i * n + i] += w * self.scale2 * sd[i] * sd[i];
                }
            }
        }
        for (d, r) in dz[..n].iter_mut().zip(self.rates) {
            *d += r;
        }
    }
    fn jvp(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        let n = self.n;
        self.sys.jvp(t, &z[..n], u, p, &v[..n], &mut out[..n]);
        let j = dense_jacobian(self.sys, t, &z[..n], u, p);
        for r in 0..n {
            for c in 0..n {
                out[n + r * n + c] =
                    (0..n).map(|k| j[r * n + k] * v[n + k * n + c] + v[n + r * n + k] * j[c * n + k]).sum();
            }
        }
    }
    fn vjp_state(&self, t: f64, z: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        let n = self.n;
        self.sys.vjp_state(t, &z[..n], u, p, &w[..n], &mut out[..n]);
        let j = dense_jacobian(self.sys, t, &z[..n], u, p);
        for r in 0..n {
            for c in 0..n {
                out[n + r * n + c] =
                    (0..n).map(|k| j[k * n + r] * w[n + k * n + c] + w[n + r * n + k] * j[k * n + c]).sum();
            }
        }
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

impl Engine for Ukf<'_> {
    fn propagate(&mut self, t0: f64, t1: f64, forcing: &Forcing) -> Result<(), EstimationError> {
        if t1 <= t0 {
            return Ok(());
        }
        let f = self.f;
        let n = self.m.len();
        let scale = f.opts.noise_scale;
        let sys = SigmaMoments { sys: &f.sys, noise: &f.noise, rates: &forcing.rates, scale2: scale * scale, n };
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
        let pts = sigma_points(&self.m, &self.p);
        let w = 1.0 / pts.len() as f64;
        let hs: Vec<f64> = pts.iter().map(|x| f.sys.output(out.output, t, x, &f.params)).collect();
        let predicted: f64 = hs.iter().map(|h| w * h).sum();
        if out.error.log_scale() && hs.iter().any(|h| *h <= 0.0) {
            if y.is_none() {
                return Ok(Update { predicted, variance: f64::NAN, log_likelihood: 0.0, ess: None });
            }
            return Err(EstimationError::Filter(format!(
                "at t = {t} a sigma point predicts a non-positive `{}`; the exponential error model needs positive predictions",
                out.name
            )));
        }
        let hc: Vec<f64> = hs.iter().map(|&h| comparison(out, 1.0, h).1).collect();
        let yhat: f64 = hc.iter().map(|h| w * h).sum();
        let r: f64 = hs.iter().map(|&h| w * out.error.variance(h, &out.sigma).0).sum();
        let mut variance = r;
        let mut cross = vec![0.0; n];
        for (x, h) in pts.iter().zip(&hc) {
            let d = h - yhat;
            variance += w * d * d;
            for k in 0..n {
                cross[k] += w * (x[k] - self.m[k]) * d;
            }
        }
        let Some(y) = y else {
            return Ok(Update { predicted, variance, log_likelihood: 0.0, ess: None });
        };
        if !(variance > 0.0 && variance.is_finite()) {
            return Err(EstimationError::Filter(format!(
                "at t = {t} the innovation variance of `{}` is {variance} (no residual error and no state uncertainty)",
                out.name
            )));
        }
        let e = comparison(out, y, 1.0).0 - yhat;
        for (m, c) in self.m.iter_mut().zip(&cross) {
            *m += c / variance * e;
        }
        for a in 0..n {
            for b in 0..n {
                self.p[(a, b)] -= cross[a] * cross[b] / variance;
            }
        }
        self.p = psd(&self.p);
        let log_likelihood = -0.5 * ((2.0 * std::f64::consts::PI * variance).ln() + e * e / variance);
        Ok(Update { predicted, variance, log_likelihood, ess: None })
    }
}
