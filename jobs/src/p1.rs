//! Reference problem P1 (`../shared/benchmarks/PROBLEMS.md`) as a benchmark:
//! the 10,000-regimen sweep solved in parallel, timed, and checked against the
//! closed form. This is what `insilico bench p1` runs.
//!
//! The problem itself (model, parameters, regimens, grid, tolerances,
//! closed form, metrics) is defined once, in [`crate::validation::p1`], and
//! re-exported here:
//!
//! * model `pk-2cmt-oral`, ka = 1.2 /h, CL = 5·s L/h, V1 = 30 L, Q = 10 L/h,
//!   V2 = 50 L; C = central / V1 (mg/L);
//! * an oral bolus of D mg into the depot at 0, τ, 2τ, ... while t < 336 h;
//! * C on the grid 0, 0.5, ..., 336 (673 points); Cmax, AUC (trapezoid) and
//!   Ctrough (minimum) over [312, 336];
//! * D in 50 values linearly spaced over [50, 1000] (outermost), τ in
//!   {6, 8, 12, 24}, s in 50 values log-spaced over [0.5, 2] (innermost);
//! * rtol = 1e-6, atol = 1e-9.
//!
//! # Example
//! ```
//! use insilico_jobs::p1;
//! use insilico_jobs::solvers::Method;
//!
//! let cases = p1::sweep();
//! assert_eq!(cases.len(), 10_000);
//! let c = p1::solve_case(&cases[0], Method::Tsit45).unwrap();
//! let reference = p1::closed_form_case(&cases[0]).unwrap();
//! assert_eq!(c.len(), 673);
//! let m = p1::metrics(&c);
//! assert!(m.cmax > m.ctrough && m.auc > 0.0);
//! assert!(p1::max_rel_err(&c, &reference) < 1e-4);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::Error;
use crate::mechanistic::PkModel;
use crate::solvers::{solve, Method};

pub use crate::validation::p1::{
    closed_form, grid, max_rel_err, metrics, model, options, sweep, Metrics, Regimen, BASE_PARAMS, HORIZON, NGRID, TAUS,
};

/// One regimen of the sweep (an alias of [`Regimen`]).
pub type Case = Regimen;

/// Solves `case` with `method` at P1's tolerances: C (mg/L) on the grid.
pub fn solve_case(case: &Case, method: Method) -> Result<Vec<f64>, Error> {
    solve_case_with(&model(), case, method)
}

fn solve_case_with(model: &PkModel, case: &Case, method: Method) -> Result<Vec<f64>, Error> {
    let prob = crate::validation::p1::problem(model, case);
    let sol = solve(&prob, method, &options()).map_err(|e| {
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

/// The closed-form C (mg/L) of `case` on the grid ([`closed_form`] with this
/// crate's error type).
pub fn closed_form_case(case: &Case) -> Result<Vec<f64>, Error> {
    closed_form(case).map_err(|error| Error::Model {
        context: format!("P1 closed form, D = {}, tau = {}, CL scale = {}", case.dose, case.tau, case.cl_scale),
        error,
    })
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
    let start = Instant::now();
    let out: Vec<(Vec<f64>, Metrics)> = cases
        .par_iter()
        .map(|case| {
            let c = closed_form_case(case)?;
            let m = metrics(&c);
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
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let out: Vec<(Vec<f64>, Metrics)> = cases
        .par_iter()
        .map(|case| {
            let c = solve_case_with(&model, case, method)?;
            let m = metrics(&c);
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

/// How a P1 sweep is solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P1Method {
    /// The batched integrators of `insilico-kernels` (one trajectory per
    /// task, all cores): the default.
    Batched(crate::kernels::Stepper),
    /// The exact matrix-exponential path of `insilico-kernels` (no
    /// truncation error; checked against the independent superposition
    /// closed form like every other method).
    ClosedForm,
    /// One diffsol solve per regimen through the segment-by-segment solve layer.
    Diffsol(Method),
}

impl P1Method {
    /// Every method, batched first.
    pub fn all() -> Vec<P1Method> {
        let mut v = vec![
            P1Method::Batched(crate::kernels::Stepper::Tsit5),
            P1Method::Batched(crate::kernels::Stepper::Rosenbrock),
            P1Method::ClosedForm,
        ];
        v.extend(Method::ALL.iter().map(|&m| P1Method::Diffsol(m)));
        v
    }
    /// Parses `batched` (Tsit5), `batched-rosenbrock`, `closed-form`,
    /// `diffsol` (diffsol's Tsit45), or a diffsol method name.
    pub fn parse(s: &str) -> Option<P1Method> {
        use crate::kernels::Stepper;
        match s.trim().to_ascii_lowercase().as_str() {
            "batched" | "batched-tsit5" => Some(P1Method::Batched(Stepper::Tsit5)),
            "batched-rosenbrock" => Some(P1Method::Batched(Stepper::Rosenbrock)),
            "closed-form" | "closedform" | "expm" => Some(P1Method::ClosedForm),
            "diffsol" => Some(P1Method::Diffsol(Method::Tsit45)),
            other => Method::parse(other).map(P1Method::Diffsol),
        }
    }
    /// Name used in tables and bench.json.
    pub fn name(&self) -> String {
        use crate::kernels::Stepper;
        match self {
            P1Method::Batched(Stepper::Tsit5) => "batched".into(),
            P1Method::Batched(Stepper::Rosenbrock) => "batched-rosenbrock".into(),
            P1Method::ClosedForm => "closed-form".into(),
            P1Method::Diffsol(m) => format!("diffsol-{}", m.name()),
        }
    }
}

/// The cases as a batch of the kernels' two-compartment model.
fn batch_of(cases: &[Case]) -> Result<crate::kernels::Batch<4>, Error> {
    use crate::kernels::{Batch, Regimen};
    let rows: Vec<Vec<f64>> = cases.iter().map(|c| c.params()).collect();
    let regimens = cases
        .iter()
        .map(|c| Regimen::repeated_bolus(c.dose, 0, c.tau, HORIZON))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Bench(format!("P1 regimen: {e}")))?;
    Batch::from_rows(&rows, regimens).map_err(|e| Error::Bench(format!("P1 batch: {e}")))
}

/// Solves every case with `method` on rayon's current pool (timed: the
/// solves and their metrics) and checks each C against `reference` (the
/// grids from [`run_closed_form`]).
pub fn run_p1(
    cases: &[Case],
    method: P1Method,
    reference: &[Vec<f64>],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Run, Error> {
    use crate::kernels::{linear::solve_linear_grid, solve_grid, Status, Tolerances, TwoCmtOral};
    let m = match method {
        P1Method::Diffsol(m) => {
            let mut run = run_method(cases, m, reference, progress)?;
            run.method = method.name();
            return Ok(run);
        }
        P1Method::Batched(_) | P1Method::ClosedForm => method,
    };
    if reference.len() != cases.len() {
        return Err(Error::Bench(format!("{} reference grids for {} cases", reference.len(), cases.len())));
    }
    let batch = batch_of(cases)?;
    let times = grid();
    let opts = options();
    let tol = Tolerances { rtol: opts.rtol, atol: opts.atol, ..Tolerances::default() };
    let start = Instant::now();
    let values = match m {
        P1Method::Batched(stepper) => {
            let r = solve_grid(&TwoCmtOral, stepper, &batch, &times, HORIZON, &tol);
            if let Some((i, st)) = r.stats.iter().enumerate().find(|(_, s)| s.status != Status::Ok) {
                return Err(Error::Bench(format!("P1 case {i} failed in the batched integrator: {:?}", st.status)));
            }
            r.values
        }
        _ => solve_linear_grid(&TwoCmtOral, &batch, &times, HORIZON),
    };
    let metrics: Vec<Metrics> = values.par_chunks(NGRID).map(metrics).collect();
    let wall_s = start.elapsed().as_secs_f64();
    progress(cases.len());
    let max_rel_err = values.par_chunks(NGRID).zip(reference).map(|(c, r)| max_rel_err(c, r)).reduce(|| 0.0, f64::max);
    Ok(Run { method: method.name(), n_solves: cases.len(), wall_s, max_rel_err, metrics })
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
        "rtol": options().rtol,
        "atol": options().atol,
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
    fn sweep_order_and_grid() {
        let s = sweep();
        assert_eq!(s.len(), 10_000);
        assert_eq!((s[0].dose, s[0].tau), (50.0, 6.0));
        assert!((s[0].cl_scale - 0.5).abs() < 1e-15 && (s[49].cl_scale - 2.0).abs() < 1e-15);
        assert_eq!(s[50].tau, 8.0);
        assert!((s[200].dose - (50.0 + 950.0 / 49.0)).abs() < 1e-12);
        assert_eq!((s[9_999].dose, s[9_999].tau), (1000.0, 24.0));
        let g = grid();
        assert_eq!((g.len(), g[0], g[672]), (NGRID, 0.0, HORIZON));
        assert_eq!(s[0].dose_times().len(), 56);
        assert_eq!(s[9_999].dose_times().last(), Some(&312.0));
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
    fn batched_and_exact_paths_match_the_closed_form() {
        let cases: Vec<Case> = sweep().into_iter().step_by(97).collect();
        let (_, reference) = run_closed_form(&cases).unwrap();
        for m in [P1Method::Batched(crate::kernels::Stepper::Tsit5), P1Method::ClosedForm] {
            let run = run_p1(&cases, m, &reference, &|_| {}).unwrap();
            assert!(run.max_rel_err <= 1e-5, "{}: {}", m.name(), run.max_rel_err);
        }
        // The exact path agrees with the independent superposition to round-off.
        let exact = run_p1(&cases, P1Method::ClosedForm, &reference, &|_| {}).unwrap();
        assert!(exact.max_rel_err < 1e-10, "{}", exact.max_rel_err);
        assert_eq!(P1Method::parse("batched"), Some(P1Method::Batched(crate::kernels::Stepper::Tsit5)));
        assert_eq!(P1Method::parse("diffsol"), Some(P1Method::Diffsol(Method::Tsit45)));
        assert_eq!(P1Method::parse("nope"), None);
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
