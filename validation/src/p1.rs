//! P1 — two-compartment oral PK, regimen sweep (PROBLEMS.md).
//!
//! States (amounts, mg): gut, central, peripheral, eliminated; parameters
//! `ka = 1.2 /h, CL = 5 L/h, V1 = 30 L, Q = 10 L/h, V2 = 50 L`; oral boluses of
//! `D` mg at `0, τ, 2τ, …` while `t < 336 h`; `C = A_c/V1` on the grid
//! `0, 0.5, …, 336` (673 points); tolerances `rtol = 1e-6`, `atol = 1e-9`.
//!
//! # Example
//! ```
//! use insilico_validation::p1;
//! let sweep = p1::sweep();
//! assert_eq!(sweep.len(), 10_000);
//! let r = sweep[0];
//! let c = p1::closed_form(&r).unwrap();
//! let m = p1::metrics(&c);
//! assert!(m.cmax > m.ctrough);
//! ```

use insilico_mechanistic::pk::{ClosedFormDose, LinearPkSolution, PkError, PkModel};
use insilico_solvers::{Dose, Options, Problem, Schedule};

/// Horizon (h).
pub const HORIZON: f64 = 336.0;
/// Output grid spacing (h).
pub const DT: f64 = 0.5;
/// Number of grid points (0, 0.5, ..., 336).
pub const NGRID: usize = 673;
/// Base parameters `[ka, CL, V1, Q, V2]` in the order of `pk-2cmt-oral`.
pub const BASE_PARAMS: [f64; 5] = [1.2, 5.0, 30.0, 10.0, 50.0];
/// Dosing intervals of the sweep (h).
pub const TAUS: [f64; 4] = [6.0, 8.0, 12.0, 24.0];

/// Tolerances stated by P1.
pub fn options() -> Options {
    Options { rtol: 1e-6, atol: 1e-9, ..Options::default() }
}

/// One regimen of the sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regimen {
    /// Dose (mg).
    pub dose: f64,
    /// Dosing interval (h).
    pub tau: f64,
    /// Factor on CL.
    pub cl_scale: f64,
}

impl Regimen {
    /// Parameters `[ka, CL·scale, V1, Q, V2]`.
    pub fn params(&self) -> Vec<f64> {
        let mut p = BASE_PARAMS.to_vec();
        p[1] *= self.cl_scale;
        p
    }
    /// Dose times: `0, τ, 2τ, …` while `t < 336`.
    pub fn dose_times(&self) -> Vec<f64> {
        (0..).map(|k| k as f64 * self.tau).take_while(|&t| t < HORIZON).collect()
    }
    /// The regimen as a schedule (boluses into the gut, state 0).
    pub fn schedule(&self) -> Schedule {
        let n = self.dose_times().len() as u32;
        Schedule::new().dose(Dose::bolus(0.0, 0, self.dose).repeated(self.tau, n - 1))
    }
}

/// The model of P1.
pub fn model() -> PkModel {
    // "pk-2cmt-oral" is a fixed, valid name: this cannot fail.
    PkModel::from_name("pk-2cmt-oral").unwrap_or_else(|_| unreachable!("pk-2cmt-oral is a built-in model"))
}

/// The output grid `0, 0.5, …, 336`.
pub fn grid() -> Vec<f64> {
    (0..NGRID).map(|i| i as f64 * DT).collect()
}

/// The sweep in PROBLEMS.md order: D (50 values, linspace [50, 1000]) outermost,
/// then τ ∈ {6, 8, 12, 24}, then the CL scale (50 values, logspace [0.5, 2]).
pub fn sweep() -> Vec<Regimen> {
    let lin = |i: usize| 50.0 + (1000.0 - 50.0) * i as f64 / 49.0;
    let log = |i: usize| (0.5f64.ln() + (2.0f64.ln() - 0.5f64.ln()) * i as f64 / 49.0).exp();
    let mut out = Vec::with_capacity(10_000);
    for i in 0..50 {
        for &tau in &TAUS {
            for j in 0..50 {
                out.push(Regimen { dose: lin(i), tau, cl_scale: log(j) });
            }
        }
    }
    out
}

/// A solve problem for `model` (the caller keeps it alive) and regimen `r`,
/// observing C on the grid.
pub fn problem<'a>(model: &'a PkModel, r: &Regimen) -> Problem<'a> {
    Problem::new(model, r.params()).with_schedule(r.schedule()).observe(0, &grid())
}

/// Closed-form C on the grid (superposition of exact single-dose responses).
pub fn closed_form(r: &Regimen) -> Result<Vec<f64>, PkError> {
    let m = model();
    let sol = LinearPkSolution::new(&m, &r.params())?;
    let doses: Vec<ClosedFormDose> = r.dose_times().iter().map(|&t| ClosedFormDose::bolus(t, 0, r.dose)).collect();
    let mut c = vec![0.0; NGRID];
    sol.concentrations_at_times(&doses, &grid(), &mut c)?;
    Ok(c)
}

/// Summary metrics of one solve over the last day, [312, 336].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Maximum of C over [312, 336] (mg/L).
    pub cmax: f64,
    /// Trapezoidal AUC over [312, 336] (mg·h/L).
    pub auc: f64,
    /// Minimum of C over [312, 336] (mg/L).
    pub ctrough: f64,
}

/// Cmax, AUC and Ctrough of C on the grid.
pub fn metrics(c: &[f64]) -> Metrics {
    let start = (312.0 / DT) as usize;
    let tail = &c[start..];
    let cmax = tail.iter().copied().fold(f64::MIN, f64::max);
    let ctrough = tail.iter().copied().fold(f64::MAX, f64::min);
    let auc = tail.windows(2).map(|w| 0.5 * DT * (w[0] + w[1])).sum();
    Metrics { cmax, auc, ctrough }
}

/// Largest relative error of `c` against `reference` over points where the
/// reference is positive (C is exactly 0 at t = 0, before any absorption).
pub fn max_rel_err(c: &[f64], reference: &[f64]) -> f64 {
    c.iter().zip(reference).filter(|(_, r)| **r > 0.0).map(|(a, r)| (a - r).abs() / r).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_order_and_ranges() {
        let s = sweep();
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0], Regimen { dose: 50.0, tau: 6.0, cl_scale: 0.5 });
        assert!((s[49].cl_scale - 2.0).abs() < 1e-12);
        assert_eq!(s[50].tau, 8.0);
        assert!((s[9999].dose - 1000.0).abs() < 1e-12);
        assert_eq!(Regimen { dose: 1.0, tau: 24.0, cl_scale: 1.0 }.dose_times().len(), 14);
        assert_eq!(Regimen { dose: 1.0, tau: 6.0, cl_scale: 1.0 }.dose_times().len(), 56);
    }

    #[test]
    fn metrics_of_a_known_profile() {
        let c: Vec<f64> = grid().iter().map(|t| t / 336.0).collect();
        let m = metrics(&c);
        assert!((m.cmax - 1.0).abs() < 1e-15);
        assert!((m.ctrough - 312.0 / 336.0).abs() < 1e-15);
        // Trapezoid is exact for a linear profile: ∫ t/336 over [312, 336].
        let exact = (336.0f64.powi(2) - 312.0f64.powi(2)) / (2.0 * 336.0);
        assert!((m.auc - exact).abs() < 1e-12);
    }
}
