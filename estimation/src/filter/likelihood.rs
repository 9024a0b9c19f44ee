//! Estimating noise levels by maximising the EKF's log-likelihood over one
//! positive quantity: a common scale of the declared noise SDs, or one named
//! model parameter (e.g. the `s` of `noise: tumour ~ s * tumour`), by
//! Brent's method (golden section with parabolic steps) on the log scale.

use insilico_model::ParamKind;
use insilico_solvers::Schedule;

use super::{Filter, FilterMethod, Measurement};
use crate::error::EstimationError;

/// The maximiser of a one-dimensional likelihood.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseEstimate {
    /// What was estimated (`noise_scale` or the parameter's name).
    pub name: String,
    /// The maximising value.
    pub value: f64,
    /// The log-likelihood there.
    pub log_likelihood: f64,
    /// Likelihood evaluations used.
    pub evaluations: usize,
    /// Whether the maximum lies at (within the tolerance of) a bound of the bracket.
    pub at_bound: bool,
}

/// Maximises `f` over `[lo, hi]` (`0 < lo < hi`) in `u = ln x` by Brent's
/// method, to `tol` in `u` (relative precision of `x`). Returns the
/// maximiser, the maximum and the number of evaluations. An evaluation that
/// fails stops the search with its error.
///
/// ```
/// use insilico_estimation::filter::maximize_log_scale;
/// let (x, fx, _) = maximize_log_scale(|x| Ok(-(x.ln() - 0.7).powi(2)), 0.01, 100.0, 1e-8)?;
/// assert!((x.ln() - 0.7).abs() < 1e-6 && fx.abs() < 1e-12);
/// # Ok::<(), insilico_estimation::EstimationError>(())
/// ```
pub fn maximize_log_scale(
    mut f: impl FnMut(f64) -> Result<f64, EstimationError>,
    lo: f64,
    hi: f64,
    tol: f64,
) -> Result<(f64, f64, usize), EstimationError> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Err(EstimationError::Spec(format!("the bracket [{lo}, {hi}] must satisfy 0 < lo < hi < ∞")));
    }
    // Minimise φ(u) = −f(eᵘ); a non-finite value counts as +∞.
    let mut evals = 0;
    let mut phi = |u: f64| -> Result<f64, EstimationError> {
        evals += 1;
        let v = -f(u.exp())?;
        Ok(if v.is_nan() { f64::INFINITY } else { v })
    };
    let golden = 0.381_966_011_250_105_1;
    let (mut a, mut b) = (lo.ln(), hi.ln());
    let mut x = a + golden * (b - a);
    let (mut w, mut v) = (x, x);
    let mut fx = phi(x)?;
    let (mut fw, mut fv) = (fx, fx);
    let mut d: f64 = 0.0;
    let mut e: f64 = 0.0;
    for _ in 0..200 {
        let xm = 0.5 * (a + b);
        let tol1 = tol;
        let tol2 = 2.0 * tol1;
        if (x - xm).abs() <= tol2 - 0.5 * (b - a) {
            break;
        }
        let mut golden_step = true;
        if e.abs() > tol1 {
            let r = (x - w) * (fx - fv);
            let mut q = (x - v) * (fx - fw);
            let mut p = (x - v) * q - (x - w) * r;
            q = 2.0 * (q - r);
            if q > 0.0 {
                p = -p;
            }
            q = q.abs();
            let etemp = e;
            e = d;
            if p.abs() < (0.5 * q * etemp).abs() && p > q * (a - x) && p < q * (b - x) {
                d = p / q;
                let u = x + d;
                if u - a < tol2 || b - u < tol2 {
                    d = tol1.copysign(xm - x);
                }
                golden_step = false;
            }
        }
        if golden_step {
            e = if x >= xm { a - x } else { b - x };
            d = golden * e;
        }
        let u = if d.abs() >= tol1 { x + d } else { x + tol1.copysign(d) };
        let fu = phi(u)?;
        if fu <= fx {
            if u >= x {
                a = x;
            } else {
                b = x;
            }
            (v, fv, w, fw, x, fx) = (w, fw, x, fx, u, fu);
        } else {
            if u < x {
                a = u;
            } else {
                b = u;
            }
            if fu <= fw || w == x {
                (v, fv, w, fw) = (w, fw, u, fu);
            } else if fu <= fv || v == x || v == w {
                (v, fv) = (u, fu);
            }
        }
    }
    Ok((x.exp(), -fx, evals))
}

impl Filter {
    /// Maximises the EKF log-likelihood over a common scale `λ` of every
    /// declared noise SD (`g → λ g`) in `[lo, hi]`, to relative precision 1e-6.
    pub fn estimate_noise_scale(
        &self,
        schedule: &Schedule,
        measurements: &[Measurement],
        lo: f64,
        hi: f64,
    ) -> Result<NoiseEstimate, EstimationError> {
        if !self.has_noise() {
            return Err(EstimationError::Spec(format!(
                "model {} declares no process noise (`noise: state ~ SD`) to scale",
                self.model().name()
            )));
        }
        let (value, ll, evaluations) = maximize_log_scale(
            |lambda| {
                let mut f = self.clone();
                f.opts.noise_scale = lambda;
                Ok(f.run(schedule, measurements, FilterMethod::Ekf)?.log_likelihood)
            },
            lo,
            hi,
            1e-6,
        )?;
        Ok(NoiseEstimate {
            name: "noise_scale".into(),
            value,
            log_likelihood: ll,
            evaluations,
            at_bound: at_bound(value, lo, hi),
        })
    }

    /// Maximises the EKF log-likelihood over one positive model parameter
    /// (typically one that sets a noise SD) in `[lo, hi]`, to relative
    /// precision 1e-6; the other parameters stay as given.
    pub fn estimate_parameter(
        &self,
        name: &str,
        schedule: &Schedule,
        measurements: &[Measurement],
        lo: f64,
        hi: f64,
    ) -> Result<NoiseEstimate, EstimationError> {
        let m = self.model();
        let k =
            m.params().iter().position(|p| p.name == name && !matches!(p.kind, ParamKind::Weight { .. })).ok_or_else(
                || EstimationError::Parameter {
                    param: name.to_string(),
                    model: m.name().to_string(),
                    reason: format!("no such parameter (the model has: {})", m.scalar_param_names().join(", ")),
                },
            )?;
        let (value, ll, evaluations) = maximize_log_scale(
            |v| {
                let mut f = self.clone();
                f.params[k] = v;
                // Initial values may depend on the parameter.
                if self.mean0 == self.sys.initial_state(&self.params) {
                    f.mean0 = f.sys.initial_state(&f.params);
                }
                Ok(f.run(schedule, measurements, FilterMethod::Ekf)?.log_likelihood)
            },
            lo,
            hi,
            1e-6,
        )?;
        Ok(NoiseEstimate {
            name: name.to_string(),
            value,
            log_likelihood: ll,
            evaluations,
            at_bound: at_bound(value, lo, hi),
        })
    }
}

pub(crate) fn at_bound(x: f64, lo: f64, hi: f64) -> bool {
    (x / lo).ln() < 1e-4 || (hi / x).ln() < 1e-4
}
