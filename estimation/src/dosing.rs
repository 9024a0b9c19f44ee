//! Point dose-finding on one individual's prediction: when does the
//! prediction cross a threshold, and which amount of a candidate dose puts it
//! on a target at a given time.
//!
//! A [`Forecast`] is one individual: a [`ModelSystem`] bound to its
//! covariates, its full parameter vector (for instance
//! [`Posterior::individual_parameters`](crate::Posterior::individual_parameters)
//! at the MAP), the output to predict and the doses already given (the
//! history). [`time_to_threshold`] brackets the first crossing on a grid of
//! the prediction and refines it by Brent's method on the solve itself;
//! [`dose_for_target`] finds the amount of a candidate [`Dose`] given after
//! the history by Brent's method on the amount (no linearity assumed; for a
//! linear model the first secant step lands on the root).
//!
//! ```
//! use insilico_estimation::dosing::{dose_for_target, time_to_threshold, Crossing, DoseSearch, Forecast};
//! use insilico_model::{Model, ModelSystem};
//! use insilico_solvers::{Dose, Schedule};
//! // One compartment, bolus: cp = A/V·exp(−k t), k = 0.1 /h, V = 20 L.
//! let m = Model::parse("parameters: k = 0.1, V = 20\nstates: c\nflux c -> out = k * c\noutput: cp = c / V", "iv")?;
//! let f = Forecast::new(ModelSystem::new(&m, &[])?, vec![0.1, 20.0], "cp",
//!                       Schedule::new().dose(Dose::bolus(0.0, 0, 200.0)))?;
//! // cp = 10·exp(−0.1 t) falls to 1 at t = 10·ln 10.
//! let t = time_to_threshold(&f, 1.0, Crossing::Falling, 0.0, 48.0, 0.5)?;
//! assert!((t.time - 10.0 * 10f64.ln()).abs() < 1e-6);
//! // A bolus at 24 h that gives cp = 5 at 30 h: (5 − 10e^−3)·20·e^0.6.
//! let d = dose_for_target(&f, &Dose::bolus(24.0, 0, 0.0), 30.0, 5.0, &DoseSearch::up_to(10_000.0))?;
//! let exact = (5.0 - 10.0 * (-3.0f64).exp()) * 20.0 * 0.6f64.exp();
//! assert!((d.amount - exact).abs() < 1e-5 * exact);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use insilico_model::subject::{subject_covariates, subject_dose_mapping};
use insilico_model::{Model, ModelSystem};
use insilico_solvers::data::{Dataset, DoseMapping};
use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule};

use crate::EstimationError;

/// One individual's prediction: a bound system, its parameters, the output
/// and the doses already given.
#[derive(Debug, Clone)]
pub struct Forecast {
    system: ModelSystem,
    params: Vec<f64>,
    output: usize,
    output_name: String,
    history: Schedule,
    label: String,
    /// ODE method (default Tsit45).
    pub method: Method,
    /// ODE tolerances (default rtol 1e-10, atol 1e-12: the root-finding
    /// tolerances below are only meaningful on an accurate solve).
    pub options: Options,
}

impl Forecast {
    /// The individual with system `system` (bound to its covariates),
    /// parameters `params` (the model's full parameter vector), predicting
    /// output `output`, after the doses of `history`.
    pub fn new(
        system: ModelSystem,
        params: Vec<f64>,
        output: &str,
        history: Schedule,
    ) -> Result<Forecast, EstimationError> {
        let names = system.model().output_names();
        let index = names.iter().position(|n| *n == output).ok_or_else(|| {
            EstimationError::Dosing(format!(
                "model {} has no output `{output}` (its outputs: {})",
                system.model().name(),
                names.join(", ")
            ))
        })?;
        let label = system.model().name().to_string();
        Ok(Forecast {
            system,
            params,
            output: index,
            output_name: output.to_string(),
            history,
            label,
            method: Method::Tsit45,
            options: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 },
        })
    }

    /// Subject `index` of `data`: its covariates bound as `simulate` and the
    /// posterior bind them, its dose records as the history (doses without
    /// CMT into compartment 1, with the model's own `alag`/`f`/`rate`/`dur`).
    pub fn from_subject(
        model: &Model,
        data: &Dataset,
        index: usize,
        params: Vec<f64>,
        output: &str,
    ) -> Result<Forecast, EstimationError> {
        let subj = data.subjects.get(index).ok_or_else(|| {
            EstimationError::Dosing(format!(
                "{} has {} subjects; there is no subject #{index}",
                data.file,
                data.subjects.len()
            ))
        })?;
        let cov = subject_covariates(model, data, subj)?;
        let system = ModelSystem::new(model, &cov)?;
        let base = DoseMapping::new(model.nstates(), 1, 1);
        let (history, _) = subj.to_schedule(data, &subject_dose_mapping(&system, &base, &params))?;
        let mut f = Forecast::new(system, params, output, history)?;
        f.label = format!("subject `{}`", subj.id);
        Ok(f)
    }

    /// The doses already given.
    pub fn history(&self) -> &Schedule {
        &self.history
    }

    /// The predicted output at `times` after the history followed by `extra` doses.
    pub fn predict(&self, extra: &[Dose], times: &[f64]) -> Result<Vec<f64>, EstimationError> {
        let mut schedule = self.history.clone();
        for d in extra {
            schedule = schedule.dose(d.clone());
        }
        let problem =
            Problem::new(&self.system, self.params.clone()).with_schedule(schedule).observe(self.output, times);
        let sol = solve(&problem, self.method, &self.options)
            .map_err(|error| EstimationError::Solve { subject: self.label.clone(), error })?;
        if let Some(k) = sol.outputs.iter().position(|v| !v.is_finite()) {
            return Err(EstimationError::Prediction {
                subject: self.label.clone(),
                reason: format!("{} is {} at t = {}", self.output_name, sol.outputs[k], times[k]),
            });
        }
        Ok(sol.outputs)
    }
}

/// Which crossing of a threshold [`time_to_threshold`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// From above the threshold to at or below it (a trough target).
    Falling,
    /// From below the threshold to at or above it.
    Rising,
}

/// The result of [`time_to_threshold`].
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdTime {
    /// The crossing time (to 1e-9 in time units, on the solve).
    pub time: f64,
    /// The prediction there (equal to the threshold up to the ODE error).
    pub value: f64,
    /// The grid interval that bracketed it.
    pub bracket: (f64, f64),
    /// Solves of Brent's method after the grid.
    pub iterations: usize,
}

/// The first time in `[from, to]` at which the forecast's prediction crosses
/// `threshold` in direction `crossing`: the prediction on the grid
/// `from, from + step, …, to` (one solve) brackets the first crossing, then
/// Brent's method on the solve at single times refines it to 1e-9.
///
/// Errors: non-finite inputs, `from ≥ to`, `step ≤ 0` or over 10⁷ grid
/// points ([`EstimationError::Dosing`]); no crossing on the grid
/// ([`EstimationError::Unreachable`] with the closest approach: the grid
/// minimum after the prediction is above the threshold for a falling
/// crossing, the maximum after it is below for a rising one). A crossing that goes and comes back within one grid step is
/// not seen: choose `step` below the fastest change of the prediction.
pub fn time_to_threshold(
    forecast: &Forecast,
    threshold: f64,
    crossing: Crossing,
    from: f64,
    to: f64,
    step: f64,
) -> Result<ThresholdTime, EstimationError> {
    let bad = |m: String| Err(EstimationError::Dosing(m));
    if !(threshold.is_finite() && from.is_finite() && to.is_finite() && step.is_finite()) {
        return bad(format!("threshold {threshold}, from {from}, to {to} and step {step} must be finite"));
    }
    if from >= to {
        return bad(format!("empty time range: from {from} is not before to {to}"));
    }
    if step <= 0.0 || (to - from) / step > 1e7 {
        return bad(format!("grid step {step} must be > 0 and give at most 10^7 points over [{from}, {to}]"));
    }
    let n = ((to - from) / step).ceil() as usize;
    let grid: Vec<f64> = (0..=n).map(|k| (from + k as f64 * step).min(to)).collect();
    let values = forecast.predict(&[], &grid)?;
    // g > 0 before the crossing, g ≤ 0 at or after it.
    let g = |v: f64| match crossing {
        Crossing::Falling => v - threshold,
        Crossing::Rising => threshold - v,
    };
    let Some(k) = (0..n).find(|&k| g(values[k]) > 0.0 && g(values[k + 1]) <= 0.0) else {
        // The best reached: after the prediction is first on the near side,
        // its closest approach (its minimum for a falling crossing); if it
        // never is, the grid value closest to the threshold.
        let dir = if crossing == Crossing::Falling { "fall to" } else { "rise to" };
        let (kb, why) = match (0..=n).find(|&k| g(values[k]) > 0.0) {
            Some(k0) => ((k0..=n).min_by(|&a, &b| g(values[a]).total_cmp(&g(values[b]))).unwrap_or(k0), dir),
            None => (
                (0..=n).min_by(|&a, &b| g(values[a]).abs().total_cmp(&g(values[b]).abs())).unwrap_or(0),
                if crossing == Crossing::Falling { "start above and fall to" } else { "start below and rise to" },
            ),
        };
        return Err(EstimationError::Unreachable {
            what: format!(
                "{}: {} does not {why} the threshold in [{from}, {to}] (grid step {step})",
                forecast.label, forecast.output_name
            ),
            target: threshold,
            best: values[kb],
            best_at: grid[kb],
        });
    };
    let (a, b) = (grid[k], grid[k + 1]);
    if g(values[k + 1]) == 0.0 {
        return Ok(ThresholdTime { time: b, value: values[k + 1], bracket: (a, b), iterations: 0 });
    }
    let root =
        brent(|t| Ok(g(forecast.predict(&[], &[t])?[0])), (a, g(values[k])), (b, g(values[k + 1])), 1e-9, 0.0, 200)?;
    let value = forecast.predict(&[], &[root.x])?[0];
    Ok(ThresholdTime { time: root.x, value, bracket: (a, b), iterations: root.evaluations })
}

/// The amounts [`dose_for_target`] searches, and its tolerances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoseSearch {
    /// Smallest amount (≥ 0).
    pub min: f64,
    /// Largest amount.
    pub max: f64,
    /// Points of the scan used when the bracket's ends do not straddle the target (default 32).
    pub scan: usize,
    /// Absolute tolerance on the amount (default 1e-12·max).
    pub amount_tol: f64,
    /// Stop when |prediction − target| is at most this times |target| (default 1e-12).
    pub value_rtol: f64,
}

impl DoseSearch {
    /// Amounts in `[0, max]`, default tolerances.
    pub fn up_to(max: f64) -> DoseSearch {
        DoseSearch { min: 0.0, max, scan: 32, amount_tol: 1e-12 * max.abs(), value_rtol: 1e-12 }
    }
}

/// The result of [`dose_for_target`].
#[derive(Debug, Clone, PartialEq)]
pub struct DoseForTarget {
    /// The amount.
    pub amount: f64,
    /// The candidate dose with that amount.
    pub dose: Dose,
    /// The prediction at the target time with it.
    pub achieved: f64,
    /// Solves of Brent's method after the bracket (and any scan).
    pub iterations: usize,
    /// All solves, bracket and scan included.
    pub solves: usize,
}

/// The amount of dose `template` (its time, compartment, kind and duration;
/// its amount is replaced), given after the forecast's history, that makes
/// the prediction equal `target` at `target_time`.
///
/// The prediction at `target_time` is a function of the amount; Brent's
/// method finds its root in `search`'s `[min, max]` (secant and inverse
/// quadratic steps with bisection as the safeguard: no linearity assumed;
/// for a linear model the first secant step lands on the root). When the
/// ends do not straddle the target, `search.scan` interior amounts are
/// tried for a sign change.
///
/// Errors ([`EstimationError::Dosing`]): a non-finite or negative target, a
/// target time not after the dose, a bracket that is empty (`min ≥ max`),
/// negative or not finite. [`EstimationError::Unreachable`]: no amount in the
/// bracket reaches the target; it gives the closest value reached and its
/// amount.
pub fn dose_for_target(
    forecast: &Forecast,
    template: &Dose,
    target_time: f64,
    target: f64,
    search: &DoseSearch,
) -> Result<DoseForTarget, EstimationError> {
    let bad = |m: String| Err(EstimationError::Dosing(m));
    if !target.is_finite() || target < 0.0 {
        return bad(format!("target {} = {target} must be finite and ≥ 0", forecast.output_name));
    }
    if !(target_time.is_finite() && template.time.is_finite()) || target_time <= template.time {
        return bad(format!(
            "target time {target_time} must be after the candidate dose at {}: the dose cannot change the prediction before it",
            template.time
        ));
    }
    let (lo, hi) = (search.min, search.max);
    if !(lo.is_finite() && hi.is_finite()) || lo < 0.0 {
        return bad(format!("dose bracket [{lo}, {hi}] must be finite with min ≥ 0"));
    }
    if lo >= hi {
        return bad(format!("empty dose bracket [{lo}, {hi}]: min must be below max"));
    }
    let solves = std::cell::Cell::new(0usize);
    let at = |amount: f64| -> Result<f64, EstimationError> {
        solves.set(solves.get() + 1);
        let dose = Dose { amount, ..template.clone() };
        Ok(forecast.predict(&[dose], &[target_time])?[0] - target)
    };
    let value_tol = search.value_rtol * target.abs();
    let (glo, ghi) = (at(lo)?, at(hi)?);
    let mut tried = vec![(lo, glo), (hi, ghi)];
    let mut bracket = ((lo, glo), (hi, ghi));
    if glo.signum() == ghi.signum() && glo != 0.0 {
        let m = search.scan.max(1);
        let mut prev = (lo, glo);
        let mut found = None;
        for j in 1..=m + 1 {
            let a = if j == m + 1 { hi } else { lo + (hi - lo) * j as f64 / (m + 1) as f64 };
            let ga = if j == m + 1 { ghi } else { at(a)? };
            tried.push((a, ga));
            if ga.signum() != prev.1.signum() || ga == 0.0 {
                found = Some((prev, (a, ga)));
                break;
            }
            prev = (a, ga);
        }
        match found {
            Some(b) => bracket = b,
            None => {
                let (best_at, g) =
                    tried.iter().copied().min_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap_or((lo, glo));
                return Err(EstimationError::Unreachable {
                    what: format!(
                        "{}: {} at t = {target_time} with amounts in [{lo}, {hi}] of the dose at t = {}",
                        forecast.label, forecast.output_name, template.time
                    ),
                    target,
                    best: g + target,
                    best_at,
                });
            }
        }
    }
    let root = brent(at, bracket.0, bracket.1, search.amount_tol, value_tol, 200)?;
    Ok(DoseForTarget {
        amount: root.x,
        dose: Dose { amount: root.x, ..template.clone() },
        achieved: root.fx + target,
        iterations: root.evaluations,
        solves: solves.get(),
    })
}

/// A root found by [`brent`].
struct Root {
    x: f64,
    fx: f64,
    evaluations: usize,
}

/// Brent's method (zeroin, as in Numerical Recipes' `zbrent`) on a bracket
/// `(a, f(a))`, `(b, f(b))` with f(a)·f(b) ≤ 0: stops when the bracket is
/// below `xtol` (plus rounding) or |f| ≤ `ftol`.
fn brent<F>(
    mut f: F,
    a: (f64, f64),
    b: (f64, f64),
    xtol: f64,
    ftol: f64,
    max_iter: usize,
) -> Result<Root, EstimationError>
where
    F: FnMut(f64) -> Result<f64, EstimationError>,
{
    let ((mut a, mut fa), (mut b, mut fb)) = (a, b);
    if fa == 0.0 {
        return Ok(Root { x: a, fx: fa, evaluations: 0 });
    }
    let (mut c, mut fc) = (b, fb);
    let (mut d, mut e) = (b - a, b - a);
    for it in 0..max_iter {
        if (fb > 0.0 && fc > 0.0) || (fb < 0.0 && fc < 0.0) {
            c = a;
            fc = fa;
            d = b - a;
            e = d;
        }
        if fc.abs() < fb.abs() {
            a = b;
            b = c;
            c = a;
            fa = fb;
            fb = fc;
            fc = fa;
        }
        let tol1 = 2.0 * f64::EPSILON * b.abs() + 0.5 * xtol;
        let xm = 0.5 * (c - b);
        if xm.abs() <= tol1 || fb.abs() <= ftol {
            return Ok(Root { x: b, fx: fb, evaluations: it });
        }
        if e.abs() >= tol1 && fa.abs() > fb.abs() {
            let s = fb / fa;
            let (mut p, mut q);
            if a == c {
                p = 2.0 * xm * s;
                q = 1.0 - s;
            } else {
                let qq = fa / fc;
                let r = fb / fc;
                p = s * (2.0 * xm * qq * (qq - r) - (b - a) * (r - 1.0));
                q = (qq - 1.0) * (r - 1.0) * (s - 1.0);
            }
            if p > 0.0 {
                q = -q;
            }
            p = p.abs();
            let min1 = 3.0 * xm * q - (tol1 * q).abs();
            let min2 = (e * q).abs();
            if 2.0 * p < min1.min(min2) {
                e = d;
                d = p / q;
            } else {
                d = xm;
                e = d;
            }
        } else {
            d = xm;
            e = d;
        }
        a = b;
        fa = fb;
        b += if d.abs() > tol1 { d } else { tol1.copysign(xm) };
        fb = f(b)?;
    }
    Err(EstimationError::Dosing(format!(
        "root-finding did not converge in {max_iter} iterations (last point {b}, residual {fb})"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brent on closed forms: a linear function is solved by the first
    /// secant step; a cubic to the requested tolerance.
    #[test]
    fn brent_linear_and_cubic() {
        let f = |x: f64| Ok(3.0 * x - 2.0);
        let r = brent(f, (0.0, -2.0), (10.0, 28.0), 1e-12, 1e-13, 100).unwrap();
        assert!((r.x - 2.0 / 3.0).abs() < 1e-12);
        assert!(r.evaluations <= 3, "{}", r.evaluations);
        let g = |x: f64| Ok(x * x * x - 2.0);
        let r = brent(g, (0.0, -2.0), (3.0, 25.0), 1e-12, 0.0, 100).unwrap();
        assert!((r.x - 2f64.cbrt()).abs() < 1e-11, "{}", r.x);
    }
}
