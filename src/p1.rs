//! Reference problem P1 (`../shared/benchmarks/PROBLEMS.md`): two-compartment
//! oral PK, a sweep of 10,000 regimens, every solve checked against the
//! closed form. This is what `insilico bench p1` runs.
//!
//! * Model `pk-2cmt-oral`, parameters ka = 1.2 /h, CL = 5·s L/h, V1 = 30 L,
//!   Q = 10 L/h, V2 = 50 L; C = central / V1 (mg/L).
//! * Regimen: an oral bolus of D mg into the depot at 0, τ, 2τ, ... while
//!   t < 336 h.
//! * Output: C on the grid 0, 0.5, ..., 336 (673 points); from it Cmax, AUC
//!   (trapezoid) and Ctrough (minimum) over [312, 336].
//! * Sweep: D in 50 values linearly spaced over [50, 1000] (outermost), τ in
//!   {6, 8, 12, 24}, s in 50 values log-spaced over [0.5, 2] (innermost).
//! * Tolerances rtol = 1e-6, atol = 1e-9.
//!
//! # Example
//! ```
//! use insilico::p1;
//! use insilico::solvers::Method;
//!
//! let cases = p1::sweep();
//! assert_eq!(cases.len(), 10_000);
//! let c = p1::solve_case(&cases[0], Method::Tsit45).unwrap();
//! let reference = p1::closed_form_case(&cases[0]).unwrap();
//! assert_eq!(c.len(), 673);
//! let m = p1::Metrics::from_grid(&c);
//! assert!(m.cmax > m.ctrough && m.auc > 0.0);
//! assert!(p1::max_rel_err(&c, &reference) < 1e-4);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::Error;
use crate::mechanistic::{Absorption, ClosedFormDose, Elimination, LinearPkSolution, PkModel};
use crate::solvers::{solve, Dose, Method, Options, Problem, Schedule};

/// Horizon (h).
pub const HORIZON: f64 = 336.0;
/// Grid spacing (h).
pub const GRID_STEP: f64 = 0.5;
/// Number of grid points (0, 0.5, ..., 336).
pub const N_GRID: usize = 673;
/// Start of the last-day window over which the metrics are taken (h).
pub const WINDOW_START: f64 = 312.0;
/// Relative tolerance of P1.
pub const RTOL: f64 = 1e-6;
/// Absolute tolerance of P1 (amounts, mg).
pub const ATOL: f64 = 1e-9;
/// Base parameters `[ka, CL, V1, Q, V2]` (CL is scaled per case).
pub const BASE_PARAMS: [f64; 5] = [1.2, 5.0, 30.0, 10.0, 50.0];
/// Dosing intervals of the sweep (h).
pub const TAUS: [f64; 4] = [6.0, 8.0, 12.0, 24.0];
/// Number of dose levels and of CL scales in the sweep.
pub const N_LEVELS: usize = 50;

/// One regimen of the sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Case {
    /// Dose (mg).
    pub dose: f64,
    /// Dosing interval (h).
    pub tau: f64,
    /// Factor applied to the base CL.
    pub cl_scale: f64,
}

/// Cmax, AUC and Ctrough over the last day [312, 336].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Maximum concentration (mg/L).
    pub cmax: f64,
    /// Trapezoid AUC (mg·h/L).
    pub auc: f64,
    /// Minimum concentration (mg/L).
    pub ctrough: f64,
}

impl Metrics {
    /// The metrics of concentrations `c` on the P1 grid (length [`N_GRID`]).
    pub fn from_grid(c: &[f64]) -> Metrics {
        let first = (WINDOW_START / GRID_STEP) as usize;
        let w = c.get(first..).unwrap_or(&[]);
        let cmax = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ctrough = w.iter().copied().fold(f64::INFINITY, f64::min);
        let auc = w.windows(2).map(|p| 0.5 * GRID_STEP * (p[0] + p[1])).sum();
        Metrics { cmax, auc, ctrough }
    }
}

/// The model of P1 (`pk-2cmt-oral`, output C = central / V1 in mg/L).
pub fn model() -> PkModel {
    PkModel { compartments: 2, absorption: Absorption::Oral, elimination: Elimination::Linear, output_scale: 1.0 }
}

/// The sweep's 10,000 regimens in order: D outermost, then τ, then the CL scale.
pub fn sweep() -> Vec<Case> {
    let n = N_LEVELS;
    let mut cases = Vec::with_capacity(n * TAUS.len() * n);
    for i in 0..n {
        let dose = 50.0 + 950.0 * i as f64 / (n - 1) as f64;
        for &tau in &TAUS {
            for j in 0..n {
                let cl_scale = 0.5 * 4f64.powf(j as f64 / (n - 1) as f64);
                cases.push(Case { dose, tau, cl_scale });
            }
        }
    }
    cases
}

/// The output grid 0, 0.5, ..., 336.
pub fn grid() -> Vec<f64> {
    (0..N_GRID).map(|k| k as f64 * GRID_STEP).collect()
}

/// Parameters `[ka, CL, V1, Q, V2]` of `case`.
pub fn params(case: &Case) -> Vec<f64> {
    let mut p = BASE_PARAMS.to_vec();
    p[1] *= case.cl_scale;
    p
}

/// Dose times 0, τ, 2τ, ... < 336.
pub fn dose_times(tau: f64) -> Vec<f64> {
    let mut t = Vec::new();
    let mut k = 0u32;
    while f64::from(k) * tau < HORIZON {
        t.push(f64::from(k) * tau);
        k += 1;
    }
    t
}

/// The regimen of `case` as a schedule: a bolus into the depot repeated
/// every τ (ADDL) while t < 336.
pub fn schedule(case: &Case) -> Schedule {
    let n = dose_times(case.tau).len() as u32;
    Schedule::new().dose(Dose::bolus(0.0, 0, case.dose).repeated(case.tau, n.saturating_sub(1)))
}

/// Solves `case` with `method` at P1's tolerances: C (mg/L) on the grid.
pub fn solve_case(case: &Case, method: Method) -> Result<Vec<f64>, Error> {
    solve_case_on(&model(), &grid(), case, method)
}

fn solve_case_on(model: &PkModel, grid: &[f64], case: &Case, method: Method) -> Result<Vec<f64>, Error> {
    let opts = Options { rtol: RTOL, atol: ATOL, ..Options::default() };
    let prob = Problem::new(model, params(case)).with_schedule(schedule(case)).observe(0, grid);
    let sol = solve(&prob, method, &opts).map_err(|e| {
        Error::Bench(format!(
            "P1 case D = {}, tau = {}, CL scale = {} with {}: {e}",
            case.dose,
            case.tau,
            case.cl_scale,
            method.name()
        ))
    })?;
    Ok(sol.outputs)
}

/// The closed-form C (mg/L) of `case` on the grid.
pub fn closed_form_case(case: &Case) -> Result<Vec<f64>, Error> {
    closed_form_on(&model(), &grid(), case)
}

fn closed_form_on(model: &PkModel, grid: &[f64], case: &Case) -> Result<Vec<f64>, Error> {
    let ctx = || format!("P1 closed form, D = {}, tau = {}, CL scale = {}", case.dose, case.tau, case.cl_scale);
    let sol = LinearPkSolution::new(model, &params(case)).map_err(|error| Error::Model { context: ctx(), error })?;
    let doses: Vec<ClosedFormDose> =
        dose_times(case.tau).into_iter().map(|t| ClosedFormDose::bolus(t, 0, case.dose)).collect();
    let mut c = vec![0.0; grid.len()];
    sol.concentrations_at_times(&doses, grid, &mut c).map_err(|error| Error::Model { context: ctx(), error })?;
    Ok(c)
}

/// Largest relative error of `c` against `reference` over the points where
/// the reference is positive.
pub fn max_rel_err(c: &[f64], reference: &[f64]) -> f64 {
    c.iter().zip(reference).filter(|(_, &r)| r > 0.0).map(|(&x, &r)| (x - r).abs() / r).fold(0.0, f64::max)
}

/// The outcome of one sweep with one method.
#[derive(Debug, Clone)]
pub struct Run {
    /// Method name (`closed-form` for the reference).
    pub method: String,
    /// Number of solves.
    pub n_solves: usize,
    /// Wall time of the solves, metrics included (s).
    pub wall_s: f64,
    /// Largest relative error against the closed form over every grid point
    /// with a positive reference, over all solves (0 for the reference itself).
    pub max_rel_err: f64,
    /// Metrics of each solve, in sweep order.
    pub metrics: Vec<Metrics>,
}

impl Run {
    /// Solves per second.
    pub fn solves_per_s(&self) -> f64 {
        self.n_solves as f64 / self.wall_s.max(f64::MIN_POSITIVE)
    }
}

/// The closed-form reference over `cases`: its run (timed) and the grid
/// concentrations of every case.
pub fn run_closed_form(cases: &[Case]) -> Result<(Run, Vec<Vec<f64>>), Error> {
    let model = model();
    let grid = grid();
    let start = Instant::now();
    let out: Vec<(Vec<f64>, Metrics)> = cases
        .par_iter()
        .map(|case| {
            let c = closed_form_on(&model, &grid, case)?;
            let m = Metrics::from_grid(&c);
            Ok((c, m))
        })
        .collect::<Result<_, Error>>()?;
    let wall_s = start.elapsed().as_secs_f64();
    let (grids, metrics) = out.into_iter().unzip();
    Ok((Run { method: "closed-form".into(), n_solves: cases.len(), wall_s, max_rel_err: 0.0, metrics }, grids))
}

/// Solves every case with `method` on rayon's current pool (timed: the
/// solves and their metrics), then checks each C against `reference`
/// (the grids from [`run_closed_form`]). `progress` is called with the
/// number of finished solves after each one.
pub fn run_method(
    cases: &[Case],
    method: Method,
    reference: &[Vec<f64>],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Run, Error> {
    if reference.len() != cases.len() {
        return Err(Error::Bench(format!("{} reference grids for {} cases", reference.len(), cases.len())));
    }
    let model = model();
    let grid = grid();
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let out: Vec<(Vec<f64>, Metrics)> = cases
        .par_iter()
        .map(|case| {
            let c = solve_case_on(&model, &grid, case, method)?;
            let m = Metrics::from_grid(&c);
            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            Ok((c, m))
        })
        .collect::<Result<_, Error>>()?;
    let wall_s = start.elapsed().as_secs_f64();
    let max_rel_err = out.par_iter().zip(reference).map(|((c, _), r)| max_rel_err(c, r)).reduce(|| 0.0, f64::max);
    Ok(Run {
        method: method.name().into(),
        n_solves: cases.len(),
        wall_s,
        max_rel_err,
        metrics: out.into_iter().map(|(_, m)| m).collect(),
    })
}

/// Writes `D,tau,cl_scale,cmax,auc,ctrough`, one row per case in sweep order.
pub fn write_csv<W: std::io::Write>(mut w: W, cases: &[Case], metrics: &[Metrics]) -> std::io::Result<()> {
    writeln!(w, "D,tau,cl_scale,cmax,auc,ctrough")?;
    for (c, m) in cases.iter().zip(metrics) {
        writeln!(w, "{},{},{},{},{},{}", c.dose, c.tau, c.cl_scale, m.cmax, m.auc, m.ctrough)?;
    }
    w.flush()
}

/// The `bench.json` document of a benchmark: `problem`, `wall_s`,
/// `n_solves`, `max_rel_err`, `method`, `threads`, plus `solves_per_s`,
/// `closed_form_wall_s`, `ratio_to_closed_form`, and, when several methods
/// ran, `runs` (one object per method). The top-level figures are those of
/// `primary`.
pub fn bench_json(primary: &Run, all: &[Run], closed_form: &Run, threads: usize) -> serde_json::Value {
    let one = |r: &Run| {
        serde_json::json!({
            "method": r.method,
            "wall_s": r.wall_s,
            "n_solves": r.n_solves,
            "solves_per_s": r.solves_per_s(),
            "max_rel_err": r.max_rel_err,
            "ratio_to_closed_form": r.wall_s / closed_form.wall_s.max(f64::MIN_POSITIVE),
        })
    };
    let mut doc = serde_json::json!({
        "problem": "p1",
        "wall_s": primary.wall_s,
        "n_solves": primary.n_solves,
        "max_rel_err": primary.max_rel_err,
        "method": primary.method,
        "threads": threads,
        "solves_per_s": primary.solves_per_s(),
        "closed_form_wall_s": closed_form.wall_s,
        "ratio_to_closed_form": primary.wall_s / closed_form.wall_s.max(f64::MIN_POSITIVE),
        "rtol": RTOL,
        "atol": ATOL,
    });
    if all.len() > 1 {
        doc["runs"] = all.iter().map(one).collect();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_definition() {
        let s = sweep();
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0], Case { dose: 50.0, tau: 6.0, cl_scale: 0.5 });
        assert_eq!(s[49].cl_scale, 2.0);
        assert_eq!(s[50].tau, 8.0);
        assert_eq!(s[200].dose, 50.0 + 950.0 / 49.0);
        assert_eq!(s[9_999], Case { dose: 1000.0, tau: 24.0, cl_scale: 2.0 });
        let g = grid();
        assert_eq!((g.len(), g[0], g[672]), (673, 0.0, 336.0));
        assert_eq!(dose_times(6.0).len(), 56);
        assert_eq!(dose_times(24.0).last(), Some(&312.0));
        assert_eq!(dose_times(7.0).last(), Some(&329.0));
    }

    #[test]
    fn metrics_on_a_known_profile() {
        let mut c = vec![0.0; N_GRID];
        for (k, v) in c.iter_mut().enumerate().skip(624) {
            *v = if k % 2 == 0 { 2.0 } else { 4.0 };
        }
        let m = Metrics::from_grid(&c);
        assert_eq!((m.cmax, m.ctrough), (4.0, 2.0));
        assert!((m.auc - 3.0 * 24.0).abs() < 1e-12);
    }

    #[test]
    fn every_method_matches_the_closed_form() {
        let cases: Vec<Case> = sweep().into_iter().step_by(997).collect();
        let (cf, reference) = run_closed_form(&cases).unwrap();
        assert_eq!(cf.metrics.len(), cases.len());
        for m in Method::ALL {
            let run = run_method(&cases, m, &reference, &|_| {}).unwrap();
            assert!(run.max_rel_err < 1e-3, "{}: {}", m.name(), run.max_rel_err);
            for (a, b) in run.metrics.iter().zip(&cf.metrics) {
                assert!((a.auc - b.auc).abs() < 1e-3 * b.auc);
            }
        }
    }

    #[test]
    fn json_keys() {
        let r = Run { method: "tsit45".into(), n_solves: 3, wall_s: 2.0, max_rel_err: 1e-7, metrics: vec![] };
        let cf = Run { method: "closed-form".into(), n_solves: 3, wall_s: 0.5, max_rel_err: 0.0, metrics: vec![] };
        let j = bench_json(&r, std::slice::from_ref(&r), &cf, 2);
        for k in ["problem", "wall_s", "n_solves", "max_rel_err", "method", "threads"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["problem"], "p1");
        assert_eq!(j["ratio_to_closed_form"], 4.0);
        assert!(j.get("runs").is_none());
    }
}
