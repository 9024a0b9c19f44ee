//! The forecast engine: for one subject, each posterior draw (a full model
//! parameter vector) and each candidate regimen (added after the subject's
//! own dose history), the trajectory of every requested output on a time
//! grid over the horizon, reduced to quantile bands and per-draw summaries.
//!
//! Trajectories run on the batched CPU integrators of `insilico sweep`
//! ([`LaneModel`] through [`integrate_lanes`], Tsit5, [`LANES`] draws side by
//! side), compiled once per model and output. A schedule the batched engine
//! cannot take (more than [`MAX_TRAINS`](crate::kernels::schedule::MAX_TRAINS)
//! dose trains after merging, steady-state doses, resets, records before
//! time 0) or a model it cannot run (networks, time-dependent right-hand
//! sides, more than 16 states) goes through the diffsol [`ModelSystem`]
//! path (Tsit45) instead, per subject and regimen; [`RegimenForecast::engine`]
//! says which ran.
//!
//! # Grid and summaries
//! The summary grid is `start + k·summary_step` up to `start + horizon`,
//! plus the AUC windows' ends; the reported grid (bands) is every
//! `step / summary_step`-th point of it. Per draw and output:
//! * `AUC_<a>_<b>`: trapezoidal rule on the summary grid over `[start + a, start + b]`
//!   (error `O(summary_step²)`; a bolus into the observed compartment at a
//!   grid time adds up to `summary_step·jump/2`);
//! * `CMAX`: the largest value on the summary grid;
//! * `CTROUGH`: the value at the end of the horizon (for a regimen whose
//!   interval divides the horizon, the trough just before the next dose);
//! * `TIME_ABOVE_<x>`: time above `x`, crossings located by linear
//!   interpolation between summary-grid points.
//!
//! Summaries are of the model output itself (parameter uncertainty); with
//! `residual`, the bands are those of a new observation: each draw's value at
//! each reported time gets residual error from the output's error model,
//! from a counter-based normal keyed by (seed, subject, regimen, draw, time),
//! so results do not depend on the thread count or the chunking.

use rayon::prelude::*;

use crate::estimation::ErrorModel;
use crate::kernels::generators::{counter_normal, splitmix64};
use crate::kernels::{integrate, integrate_lanes, Observer, Regimen, Status, Stepper, Tolerances, LANES};
use crate::model::subject::{subject_covariates, subject_dose_mapping};
use crate::model::{Compiled, LaneModel, Model, ModelSystem, ParamKind};
use crate::solvers::data::{DoseMapping, Subject};
use crate::solvers::{solve, Dataset, Method, ObservationPoint, Options, Problem, Schedule};

use crate::bayes_config::{with_regimen, CandidateRegimen};

/// The probabilities of the reported quantiles.
pub const QUANTILES: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

/// One forecast output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputPlan {
    /// The model output.
    pub name: String,
    /// Its residual error model and σ (for bands with residual error).
    pub error: Option<(ErrorModel, Vec<f64>)>,
    /// Threshold of `TIME_ABOVE_<x>`, if any.
    pub threshold: Option<f64>,
}

/// What to compute.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPlan {
    /// Outputs.
    pub outputs: Vec<OutputPlan>,
    /// Forecast length.
    pub horizon: f64,
    /// Reported grid step.
    pub step: f64,
    /// Summary grid step (divides `step`).
    pub summary_step: f64,
    /// AUC windows relative to the start.
    pub auc: Vec<(f64, f64)>,
    /// Residual error in the bands.
    pub residual: bool,
    /// Seed of the residual error.
    pub seed: u64,
    /// Keep bands (false: summaries only).
    pub bands: bool,
    /// ODE tolerances and step limit.
    pub ode: Options,
    /// Default dose compartment (1-based; default 1).
    pub dose_cmt: Option<usize>,
    /// Force the diffsol path (the reference in tests and the speed example).
    pub force_diffsol: bool,
}

/// Which engine ran a subject's regimen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineUsed {
    /// The batched CPU integrators.
    Lanes,
    /// The diffsol `ModelSystem` path, with the reason.
    Diffsol(String),
}

/// One summary of one output over the draws.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValues {
    /// Output name.
    pub output: String,
    /// `AUC_<a>_<b>`, `CMAX`, `CTROUGH` or `TIME_ABOVE_<x>`.
    pub name: String,
    /// Per draw (NaN where the trajectory failed).
    pub values: Vec<f64>,
}

impl SummaryValues {
    /// Mean and SD (n − 1) of the finite values, and the [`QUANTILES`].
    pub fn stats(&self) -> (f64, f64, [f64; 5]) {
        let mut v: Vec<f64> = self.values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd =
            if v.len() > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { f64::NAN };
        v.sort_by(f64::total_cmp);
        (mean, sd, QUANTILES.map(|p| quantile_sorted(&v, p)))
    }
}

/// The forecast of one subject under one regimen.
#[derive(Debug, Clone, PartialEq)]
pub struct RegimenForecast {
    /// Regimen name.
    pub regimen: String,
    /// Reported times (absolute).
    pub times: Vec<f64>,
    /// `bands[o][k]`: the [`QUANTILES`] of output `o` at `times[k]` (empty without bands).
    pub bands: Vec<Vec<[f64; 5]>>,
    /// Summaries, output by output (AUC windows, CMAX, CTROUGH, TIME_ABOVE).
    pub summaries: Vec<SummaryValues>,
    /// Draws whose trajectory failed (excluded from bands and statistics).
    pub failed: usize,
    /// The engine that ran it.
    pub engine: EngineUsed,
}

/// Type-7 quantile (linear interpolation, R's default) of sorted values; NaN when empty.
pub fn quantile_sorted(v: &[f64], p: f64) -> f64 {
    match v.len() {
        0 => f64::NAN,
        1 => v[0],
        n => {
            let h = (n - 1) as f64 * p;
            let lo = h.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            v[lo] + (h - lo as f64) * (v[hi] - v[lo])
        }
    }
}

/// The summary grid, its reported points and the summaries' layout.
#[derive(Debug, Clone)]
struct Grid {
    times: Vec<f64>,
    /// Index into the reported grid of each summary-grid point.
    report: Vec<Option<usize>>,
    n_report: usize,
    /// AUC windows as grid index ranges.
    windows: Vec<(usize, usize)>,
}

impl Grid {
    fn new(plan: &ForecastPlan, start: f64) -> Grid {
        let refine = (plan.step / plan.summary_step).round().max(1.0) as usize;
        let n = (plan.horizon / plan.summary_step * (1.0 + 1e-12)).floor() as usize;
        let mut rel: Vec<(f64, Option<usize>)> =
            (0..=n).map(|k| (k as f64 * plan.summary_step, (k % refine == 0).then_some(k / refine))).collect();
        if rel.last().is_some_and(|l| (plan.horizon - l.0).abs() > 1e-9 * plan.horizon) {
            rel.push((plan.horizon, None));
        }
        for &(a, b) in &plan.auc {
            for x in [a, b] {
                if !rel.iter().any(|r| (r.0 - x).abs() <= 1e-9 * plan.horizon.max(1.0)) {
                    rel.push((x, None));
                }
            }
        }
        rel.sort_by(|a, b| a.0.total_cmp(&b.0));
        let close = |t: f64, x: f64| (t - x).abs() <= 1e-9 * plan.horizon.max(1.0);
        let windows = plan
            .auc
            .iter()
            .map(|&(a, b)| {
                let ka = rel.iter().position(|r| close(r.0, a)).unwrap_or(0);
                let kb = rel.iter().position(|r| close(r.0, b)).unwrap_or(rel.len() - 1);
                (ka, kb)
            })
            .collect();
        let n_report = rel.iter().filter(|r| r.1.is_some()).count();
        Grid {
            times: rel.iter().map(|r| start + r.0).collect(),
            report: rel.iter().map(|r| r.1).collect(),
            n_report,
            windows,
        }
    }
}

/// Summary names of one output.
fn summary_names(plan: &ForecastPlan, o: &OutputPlan) -> Vec<String> {
    let fmt = |x: f64| {
        let s = format!("{x}");
        s.replace('-', "m")
    };
    let mut names: Vec<String> = plan.auc.iter().map(|&(a, b)| format!("AUC_{}_{}", fmt(a), fmt(b))).collect();
    names.push("CMAX".into());
    names.push("CTROUGH".into());
    if let Some(x) = o.threshold {
        names.push(format!("TIME_ABOVE_{}", fmt(x)));
    }
    names
}

/// Receives one trajectory of one output on the summary grid.
struct Acc<'a> {
    grid: &'a Grid,
    threshold: Option<f64>,
    /// Reported values (empty without bands).
    band: &'a mut [f64],
    /// AUC per window, then CMAX, CTROUGH, TIME_ABOVE.
    sums: &'a mut [f64],
    prev: (f64, f64),
    seen: usize,
}

impl<'a> Acc<'a> {
    fn new(grid: &'a Grid, threshold: Option<f64>, band: &'a mut [f64], sums: &'a mut [f64]) -> Self {
        band.fill(f64::NAN);
        sums.fill(0.0);
        let nw = grid.windows.len();
        sums[nw] = f64::NEG_INFINITY;
        sums[nw + 1] = f64::NAN;
        Acc { grid, threshold, band, sums, prev: (f64::NAN, f64::NAN), seen: 0 }
    }
    /// Marks an incomplete trajectory: every summary NaN.
    fn finish(&mut self, ok: bool) {
        if !ok || self.seen != self.grid.times.len() {
            self.sums.fill(f64::NAN);
            self.band.fill(f64::NAN);
        }
    }
}

impl Observer for Acc<'_> {
    fn observe(&mut self, k: usize, t: f64, y: f64) {
        self.seen += 1;
        if let (Some(r), false) = (self.grid.report[k], self.band.is_empty()) {
            self.band[r] = y;
        }
        let nw = self.grid.windows.len();
        if k > 0 {
            let (tp, yp) = self.prev;
            let h = t - tp;
            for (w, &(ka, kb)) in self.grid.windows.iter().enumerate() {
                if k > ka && k <= kb {
                    self.sums[w] += 0.5 * h * (y + yp);
                }
            }
            if let Some(x) = self.threshold {
                let above = match (yp > x, y > x) {
                    (true, true) => h,
                    (false, false) => 0.0,
                    (true, false) => h * (yp - x) / (yp - y),
                    (false, true) => h * (y - x) / (y - yp),
                };
                self.sums[nw + 2] += above;
            }
        }
        if y > self.sums[nw] || y.is_nan() {
            self.sums[nw] = y;
        }
        self.sums[nw + 1] = y;
        self.prev = (t, y);
    }
}

/// The model on the batched engine: one [`LaneModel`] per forecast output.
trait LaneRunner: Send + Sync {
    /// Integrates `p.len() ≤ LANES` trajectories of output `o`; `false` where one failed.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        o: usize,
        p: &[Vec<f64>],
        regimens: &[Regimen],
        times: &[f64],
        t_end: f64,
        tol: &Tolerances,
        obs: &mut [Acc<'_>],
    ) -> Vec<bool>;
}

struct Lanes<const N: usize> {
    models: Vec<LaneModel<N>>,
}

impl<const N: usize> LaneRunner for Lanes<N> {
    fn run(
        &self,
        o: usize,
        p: &[Vec<f64>],
        regimens: &[Regimen],
        times: &[f64],
        t_end: f64,
        tol: &Tolerances,
        obs: &mut [Acc<'_>],
    ) -> Vec<bool> {
        let m = &self.models[o];
        let x0: Vec<[f64; N]> = p.iter().map(|p| m.initial_state(p)).collect();
        let ok = |s: Status| s == Status::Ok;
        if p.len() == LANES {
            let refs: Vec<&mut Acc<'_>> = obs.iter_mut().collect();
            if let Ok(arr) = <[&mut Acc<'_>; LANES]>::try_from(refs) {
                let st = integrate_lanes(
                    m,
                    Stepper::Tsit5,
                    std::array::from_fn(|l| &p[l][..]),
                    std::array::from_fn(|l| &x0[l]),
                    std::array::from_fn(|l| &regimens[l]),
                    times,
                    t_end,
                    tol,
                    arr,
                );
                return st.iter().map(|s| ok(s.status)).collect();
            }
        }
        (0..p.len())
            .map(|l| {
                ok(integrate(m, Stepper::Tsit5, &p[l], &x0[l], &regimens[l], times, t_end, tol, &mut obs[l]).status)
            })
            .collect()
    }
}

/// A compiled forecast: the model on the batched engine (where it runs)
/// and on diffsol.
pub struct Forecaster {
    model: Model,
    compiled: std::sync::Arc<Compiled>,
    plan: ForecastPlan,
    outputs: Vec<usize>,
    lanes: Result<Box<dyn LaneRunner>, String>,
    n_scalar: usize,
}

impl std::fmt::Debug for Forecaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Forecaster({}, lanes: {})", self.model.name(), self.lanes.is_ok())
    }
}

impl Forecaster {
    /// Compiles `model` for `plan` (errors: an output the model lacks).
    pub fn new(model: &Model, plan: ForecastPlan) -> Result<Forecaster, String> {
        let names = model.output_names();
        let outputs = plan
            .outputs
            .iter()
            .map(|o| {
                names.iter().position(|n| *n == o.name).ok_or_else(|| {
                    format!("model {} has no output `{}` (outputs: {})", model.name(), o.name, names.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lanes = if plan.force_diffsol {
            Err("the diffsol path was asked for".to_string())
        } else {
            compile_lanes(model, &plan)
        };
        let n_scalar = model.params().iter().filter(|p| !matches!(p.kind, ParamKind::Weight { .. })).count();
        Ok(Forecaster { model: model.clone(), compiled: Compiled::new(model.clone()), plan, outputs, lanes, n_scalar })
    }

    /// Why the batched engine is not used for this model, if it is not.
    pub fn lanes_unavailable(&self) -> Option<&str> {
        self.lanes.as_ref().err().map(|s| s.as_str())
    }

    /// The plan.
    pub fn plan(&self) -> &ForecastPlan {
        &self.plan
    }

    /// The summary names of output `o` of the plan.
    pub fn summary_names(&self, o: usize) -> Vec<String> {
        summary_names(&self.plan, &self.plan.outputs[o])
    }

    /// Forecasts subject `subject` (number `index` in its dataset, which
    /// keys the residual error) from `start` (absolute time) for each
    /// parameter vector of `draws` (the model's full parameter vectors)
    /// under each regimen. Results in regimen order; identical for any
    /// thread count.
    pub fn forecast_subject(
        &self,
        ds: &Dataset,
        subject: &Subject,
        index: usize,
        start: f64,
        draws: &[Vec<f64>],
        regimens: &[CandidateRegimen],
    ) -> Result<Vec<RegimenForecast>, (String, String)> {
        let fail = |r: &str, e: String| (r.to_string(), e);
        let covariates = subject_covariates(&self.model, ds, subject).map_err(|e| fail("", e.to_string()))?;
        let sys =
            ModelSystem::from_compiled(self.compiled.clone(), &covariates).map_err(|e| fail("", e.to_string()))?;
        let n = self.model.nstates();
        let central = self.model.state_names().iter().position(|s| *s == "central").map_or(1, |i| i + 1);
        let base = DoseMapping::new(n, self.plan.dose_cmt.unwrap_or(1), central);
        let grid = Grid::new(&self.plan, start);
        let t_end = start + self.plan.horizon;
        for (d, p) in draws.iter().enumerate() {
            if p.len() != self.model.params().len() || p.iter().take(self.n_scalar).any(|v| !v.is_finite()) {
                return Err(fail(
                    "",
                    format!(
                        "draw {d}: a parameter vector of {} values, not {} finite ones",
                        p.len(),
                        self.model.params().len()
                    ),
                ));
            }
        }
        // Lane parameter vectors: [scalar θ | covariates].
        let lane_p: Vec<Vec<f64>> =
            draws.iter().map(|p| p[..self.n_scalar].iter().chain(&covariates).copied().collect()).collect();
        let mut out = Vec::with_capacity(regimens.len());
        for (ri, reg) in regimens.iter().enumerate() {
            let subj = with_regimen(subject, reg, start, ds.covariate_names.len());
            let schedule_of = |p: &[f64]| -> Result<Schedule, String> {
                let map = subject_dose_mapping(&sys, &base, p);
                subj.to_schedule(ds, &map).map(|s| s.0).map_err(|e| e.to_string())
            };
            let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
            // The batched engine's regimens, one per draw, or why not.
            let lane_regimens: Result<Vec<Regimen>, String> = match (&self.lanes, t0 < 0.0) {
                (Err(e), _) => Err(e.clone()),
                (_, true) => Err(format!("records before time 0 (from {t0})")),
                _ => draws
                    .iter()
                    .map(|p| Regimen::from_schedule(&schedule_of(p)?, p).map_err(|e| e.to_string()))
                    .collect(),
            };
            let lanes = self.lanes.as_ref().map_err(|e| e.clone()).and_then(|r| lane_regimens.map(|regs| (r, regs)));
            let block = match lanes {
                Ok((runner, regs)) => self.run_lanes(runner.as_ref(), &grid, &lane_p, &regs, t_end),
                Err(reason) => {
                    let block = self
                        .run_diffsol(&sys, &grid, draws, &schedule_of, t0, t_end)
                        .map_err(|e| fail(&reg.name, e))?;
                    (block.0, block.1, EngineUsed::Diffsol(reason))
                }
            };
            out.push(self.reduce(reg, ri, index, &grid, block));
        }
        Ok(out)
    }

    /// Band and summary buffers for `nd` draws.
    fn buffers(&self, grid: &Grid, nd: usize) -> (usize, usize, Vec<f64>, Vec<f64>) {
        let nb = if self.plan.bands { grid.n_report } else { 0 };
        let ns = grid.windows.len() + 3;
        let no = self.outputs.len();
        (nb, ns, vec![f64::NAN; nd * no * nb], vec![f64::NAN; nd * no * ns])
    }

    fn run_lanes(
        &self,
        runner: &dyn LaneRunner,
        grid: &Grid,
        p: &[Vec<f64>],
        regs: &[Regimen],
        t_end: f64,
    ) -> (Vec<f64>, Vec<f64>, EngineUsed) {
        let (nb, ns, _, _) = self.buffers(grid, 0);
        let no = self.outputs.len();
        let tol = Tolerances {
            rtol: self.plan.ode.rtol,
            atol: self.plan.ode.atol,
            max_steps: self.plan.ode.max_steps.min(u32::MAX as usize) as u32,
        };
        // `LANES` draws at a time; each chunk fills its own draw-major buffers
        // (draw l's output o at [(l·no + o)·len]), joined in draw order.
        let chunks: Vec<(Vec<f64>, Vec<f64>)> = p
            .par_chunks(LANES)
            .zip(regs.par_chunks(LANES))
            .map(|(pc, rc)| {
                let m = pc.len();
                let mut b = vec![f64::NAN; m * no * nb];
                let mut s = vec![f64::NAN; m * no * ns];
                for o in 0..no {
                    let thr = self.plan.outputs[o].threshold;
                    let mut accs: Vec<Acc<'_>> = b
                        .chunks_mut((no * nb).max(1))
                        .map(|c| if nb == 0 { &mut c[..0] } else { &mut c[o * nb..(o + 1) * nb] })
                        .chain(std::iter::repeat_with(|| &mut [][..]))
                        .zip(s.chunks_mut(no * ns))
                        .take(m)
                        .map(|(bb, sb)| Acc::new(grid, thr, bb, &mut sb[o * ns..(o + 1) * ns]))
                        .collect();
                    let ok = runner.run(o, pc, rc, &grid.times, t_end, &tol, &mut accs);
                    for (a, ok) in accs.iter_mut().zip(ok) {
                        a.finish(ok);
                    }
                }
                (b, s)
            })
            .collect();
        let mut bands = Vec::with_capacity(p.len() * no * nb);
        let mut sums = Vec::with_capacity(p.len() * no * ns);
        for (b, s) in chunks {
            bands.extend(b);
            sums.extend(s);
        }
        (bands, sums, EngineUsed::Lanes)
    }

    fn run_diffsol(
        &self,
        sys: &ModelSystem,
        grid: &Grid,
        draws: &[Vec<f64>],
        schedule_of: &(dyn Fn(&[f64]) -> Result<Schedule, String> + Sync),
        t0: f64,
        t_end: f64,
    ) -> Result<(Vec<f64>, Vec<f64>), String> {
        let (nb, ns, mut bands, mut sums) = self.buffers(grid, draws.len());
        let no = self.outputs.len();
        let nt = grid.times.len();
        let results: Vec<Result<Option<Vec<f64>>, String>> = draws
            .par_iter()
            .map(|p| {
                let schedule = schedule_of(p)?;
                let mut prob = Problem::new(sys, p.clone()).with_schedule(schedule);
                let x0 = sys.initial_state(p);
                if x0.iter().any(|v| *v != 0.0) {
                    prob = prob.with_x0(x0);
                }
                prob.t0 = t0;
                prob.t_end = Some(t_end);
                prob.observations = self
                    .outputs
                    .iter()
                    .flat_map(|&o| grid.times.iter().map(move |&t| ObservationPoint { time: t, output: o }))
                    .collect();
                // Observations are sorted by time inside the solver; outputs come back in request order.
                Ok(solve(&prob, Method::Tsit45, &self.plan.ode).ok().map(|s| s.outputs))
            })
            .collect();
        for (d, r) in results.into_iter().enumerate() {
            let Some(values) = r? else { continue };
            for o in 0..no {
                let b = &mut bands[(d * no + o) * nb..(d * no + o + 1) * nb];
                let s = &mut sums[(d * no + o) * ns..(d * no + o + 1) * ns];
                let mut acc = Acc::new(grid, self.plan.outputs[o].threshold, b, s);
                for k in 0..nt {
                    acc.observe(k, grid.times[k], values[o * nt + k]);
                }
                let ok = values[o * nt..(o + 1) * nt].iter().all(|v| v.is_finite());
                acc.finish(ok);
            }
        }
        Ok((bands, sums))
    }

    /// Quantiles and summaries of one (subject, regimen) block.
    fn reduce(
        &self,
        reg: &CandidateRegimen,
        ri: usize,
        index: usize,
        grid: &Grid,
        block: (Vec<f64>, Vec<f64>, EngineUsed),
    ) -> RegimenForecast {
        let (bands, sums, engine) = block;
        let no = self.outputs.len();
        let nb = if self.plan.bands { grid.n_report } else { 0 };
        let ns = grid.windows.len() + 3;
        let nd = sums.len() / (ns * no).max(1);
        let failed = (0..nd).filter(|d| (0..no).any(|o| sums[(d * no + o) * ns + ns - 2].is_nan())).count();
        let times: Vec<f64> =
            grid.times.iter().zip(&grid.report).filter(|(_, r)| r.is_some()).map(|(t, _)| *t).collect();
        let seed = self.plan.seed ^ splitmix64(index as u64 + 1);
        let band_q: Vec<Vec<[f64; 5]>> = (0..if nb > 0 { no } else { 0 })
            .map(|o| {
                let err = self.plan.outputs[o].error.as_ref().filter(|_| self.plan.residual);
                (0..nb)
                    .into_par_iter()
                    .map(|k| {
                        let mut v: Vec<f64> = (0..nd)
                            .map(|d| {
                                let f = bands[(d * no + o) * nb + k];
                                match err {
                                    None => f,
                                    Some((e, sigma)) => {
                                        let key = ((ri as u64) << 32) | d as u64;
                                        let z = counter_normal(seed, key, (o * nb + k) as u64);
                                        with_residual(*e, sigma, f, z)
                                    }
                                }
                            })
                            .filter(|x| x.is_finite())
                            .collect();
                        v.sort_by(f64::total_cmp);
                        QUANTILES.map(|p| quantile_sorted(&v, p))
                    })
                    .collect()
            })
            .collect();
        let mut summaries = Vec::new();
        for o in 0..no {
            let names = summary_names(&self.plan, &self.plan.outputs[o]);
            for (j, name) in names.into_iter().enumerate() {
                summaries.push(SummaryValues {
                    output: self.plan.outputs[o].name.clone(),
                    name,
                    values: (0..nd).map(|d| sums[(d * no + o) * ns + j]).collect(),
                });
            }
        }
        RegimenForecast { regimen: reg.name.clone(), times, bands: band_q, summaries, failed, engine }
    }
}

/// An observation drawn around prediction `f` with standard normal `z`.
fn with_residual(e: ErrorModel, sigma: &[f64], f: f64, z: f64) -> f64 {
    match e {
        ErrorModel::Exponential => f * (sigma[0] * z).exp(),
        _ => f + e.variance(f, sigma).0.sqrt() * z,
    }
}

/// The batched engine for `model`, or why it cannot run it.
fn compile_lanes(model: &Model, plan: &ForecastPlan) -> Result<Box<dyn LaneRunner>, String> {
    crate::sweep::check_model_for_lanes(model)?;
    let n = model.nstates();
    crate::sweep::with_states!(n, N => {
        let models = plan
            .outputs
            .iter()
            .map(|o| LaneModel::<N>::new(model, &[], &o.name).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>();
        models.map(|models| Box::new(Lanes::<N> { models }) as Box<dyn LaneRunner>)
    })
    .unwrap_or_else(|| Err(format!("model {} has {n} states (the batched engine takes at most 16)", model.name())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solvers::data::Record;
    use crate::solvers::ReadOptions;

    fn dose(time: f64, amt: f64, ii: f64, addl: u32, cmt: usize) -> Record {
        Record {
            line: 1,
            time,
            amt,
            dv: None,
            evid: 1,
            cmt: Some(cmt),
            mdv: true,
            rate: 0.0,
            ii,
            addl,
            ss: 0,
            covariates: Vec::new(),
        }
    }

    fn regimen(name: &str, records: Vec<Record>) -> CandidateRegimen {
        CandidateRegimen { name: name.into(), records, source: "test".into() }
    }

    fn plan(outputs: &[(&str, Option<f64>)], horizon: f64, auc: Vec<(f64, f64)>) -> ForecastPlan {
        ForecastPlan {
            outputs: outputs
                .iter()
                .map(|(n, t)| OutputPlan { name: n.to_string(), error: None, threshold: *t })
                .collect(),
            horizon,
            step: 1.0,
            summary_step: 0.125,
            auc,
            residual: false,
            seed: 3,
            bands: true,
            ode: Options { rtol: 1e-8, atol: 1e-12, max_steps: 100_000 },
            dose_cmt: Some(1),
            force_diffsol: false,
        }
    }

    #[test]
    fn summaries_match_the_closed_form_of_a_one_compartment_bolus() {
        let model = crate::models_zoo::resolve("pk-1cmt-iv", None).unwrap();
        let ds = Dataset::from_str("s.csv", "ID,TIME,AMT,DV,EVID\n1,0,0,.,2\n", &ReadOptions::default()).unwrap();
        let (cl, v, d, x) = (3.0, 30.0, 100.0, 1.0);
        let k = cl / v;
        let fc = Forecaster::new(&model, plan(&[("cp", Some(x))], 48.0, vec![(0.0, 24.0), (24.0, 48.0)])).unwrap();
        assert!(fc.lanes_unavailable().is_none());
        let r = fc
            .forecast_subject(
                &ds,
                &ds.subjects[0],
                0,
                0.0,
                &[vec![cl, v]],
                &[regimen("bolus", vec![dose(0.0, d, 0.0, 0, 1)])],
            )
            .unwrap();
        let r = &r[0];
        assert_eq!(r.engine, EngineUsed::Lanes);
        let get = |n: &str| r.summaries.iter().find(|s| s.name == n).unwrap().values[0];
        let c = |t: f64| d / v * (-k * t).exp();
        // Trapezoid on a 0.125 h grid: relative error ≈ (h·k)²/12 = 1.3e-5 (k = 0.1/h), plus the
        // ODE's 1e-8; 5e-5 leaves a margin.
        let auc = |a: f64, b: f64| (c(a) - c(b)) / k;
        assert!((get("AUC_0_24") / auc(0.0, 24.0) - 1.0).abs() < 5e-5, "{}", get("AUC_0_24"));
        assert!((get("AUC_24_48") / auc(24.0, 48.0) - 1.0).abs() < 5e-5);
        assert!((get("CMAX") / c(0.0) - 1.0).abs() < 1e-7, "the dose is seen at its own time");
        assert!((get("CTROUGH") / c(48.0) - 1.0).abs() < 1e-6);
        // Crossing located by linear interpolation: error ≤ h²·|C''|/(8|C'|) = h²k/8 ≈ 2e-4 h.
        let above = (c(0.0) / x).ln() / k;
        assert!((get("TIME_ABOVE_1") - above).abs() < 3e-4, "{} vs {above}", get("TIME_ABOVE_1"));
        // The reported grid: 0, 1, ..., 48; a single draw's band is its trajectory.
        assert_eq!(r.times.len(), 49);
        assert!((r.bands[0][10][2] / c(10.0) - 1.0).abs() < 1e-6);
    }

    /// Two-compartment oral, a dose history and candidate regimens; draws around typical values.
    fn oral_case() -> (Model, Dataset, Vec<Vec<f64>>, Vec<CandidateRegimen>) {
        let model = crate::models_zoo::resolve("pk-2cmt-oral", None).unwrap();
        let ds = Dataset::from_str(
            "s.csv",
            "ID,TIME,AMT,DV,EVID,CMT\n1,0,100,.,1,1\n1,3,0,1.5,0,2\n1,12,150,.,1,1\n1,20,0,1.1,0,2\n",
            &ReadOptions::default(),
        )
        .unwrap();
        let draws: Vec<Vec<f64>> = (0..37u64)
            .map(|d| {
                [1.0, 5.0, 30.0, 10.0, 50.0]
                    .iter()
                    .enumerate()
                    .map(|(k, t)| t * (0.3 * counter_normal(9, d, k as u64)).exp())
                    .collect()
            })
            .collect();
        let regs = vec![
            regimen("q12", vec![dose(0.0, 100.0, 12.0, 1, 1)]),
            regimen("q24", vec![dose(0.0, 200.0, 0.0, 0, 1)]),
            regimen("inf", vec![Record { rate: 50.0, ..dose(2.0, 100.0, 0.0, 0, 2) }]),
        ];
        (model, ds, draws, regs)
    }

    #[test]
    fn batched_engine_agrees_with_diffsol_and_any_thread_count() {
        let (model, ds, draws, regs) = oral_case();
        let mut p = plan(&[("cp", Some(2.0))], 24.0, vec![(0.0, 12.0), (12.0, 24.0)]);
        p.residual = true;
        p.outputs[0].error = Some((ErrorModel::Combined2, vec![0.05, 0.1]));
        let fc = Forecaster::new(&model, p.clone()).unwrap();
        let run = |threads: usize, fc: &Forecaster| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| fc.forecast_subject(&ds, &ds.subjects[0], 0, 20.0, &draws, &regs).unwrap())
        };
        let one = run(1, &fc);
        assert_eq!(one, run(3, &fc), "bit-identical for 1 and 3 threads");
        assert!(one.iter().all(|r| r.engine == EngineUsed::Lanes && r.failed == 0));
        let reference = run(2, &Forecaster::new(&model, ForecastPlan { force_diffsol: true, ..p }).unwrap());
        for (a, b) in one.iter().zip(&reference) {
            assert!(matches!(b.engine, EngineUsed::Diffsol(_)));
            // Both at rtol 1e-8; the same grid, so only the ODE error differs (1e-6 is generous).
            for (sa, sb) in a.summaries.iter().zip(&b.summaries) {
                for (x, y) in sa.values.iter().zip(&sb.values) {
                    assert!((x - y).abs() <= 1e-6 * y.abs().max(1e-2), "{} {}: {x} vs {y}", a.regimen, sa.name);
                }
            }
            // Bands carry the same residual draws: equal up to the ODE error too.
            for (qa, qb) in a.bands[0].iter().zip(&b.bands[0]) {
                for (x, y) in qa.iter().zip(qb) {
                    assert!((x - y).abs() <= 1e-6 * y.abs().max(1e-2));
                }
                assert!(qa.windows(2).all(|w| w[0] <= w[1]), "quantiles are monotone");
            }
        }
    }

    #[test]
    fn a_candidate_infusion_train_keeps_the_history_infusion_into_the_same_state() {
        // mapbayr-like: a 5 h infusion at 0 (history), then a candidate infusion train into the
        // same compartment from 15 h; the two paths must agree (a regression: the batched
        // engine once zeroed a running infusion when another train into the state was idle).
        let model = crate::models_zoo::resolve("pk-1cmt-iv", None).unwrap();
        let ds = Dataset::from_str(
            "s.csv",
            "ID,TIME,AMT,RATE,DV,EVID\n1,0,100,20,.,1\n1,15,0,0,1.1,0\n",
            &ReadOptions::default(),
        )
        .unwrap();
        let reg = regimen("inf-q24", vec![Record { rate: 30.0, ..dose(0.0, 150.0, 24.0, 1, 1) }]);
        let p = plan(&[("cp", None)], 48.0, vec![(0.0, 24.0)]);
        let draws = vec![vec![1.3, 11.7], vec![0.9, 10.0]];
        let a = Forecaster::new(&model, p.clone())
            .unwrap()
            .forecast_subject(&ds, &ds.subjects[0], 0, 15.0, &draws, std::slice::from_ref(&reg))
            .unwrap();
        let b = Forecaster::new(&model, ForecastPlan { force_diffsol: true, ..p })
            .unwrap()
            .forecast_subject(&ds, &ds.subjects[0], 0, 15.0, &draws, &[reg])
            .unwrap();
        assert_eq!(a[0].engine, EngineUsed::Lanes);
        for (qa, qb) in a[0].bands[0].iter().zip(&b[0].bands[0]) {
            assert!((qa[2] - qb[2]).abs() <= 1e-6 * qb[2].abs().max(1e-2), "{qa:?} vs {qb:?}");
        }
        // At the start, 10 h after the history infusion ended, the concentration is not zero.
        assert!(a[0].bands[0][0][0] > 0.1, "{:?}", a[0].bands[0][0]);
    }

    #[test]
    fn schedules_beyond_the_batched_engine_fall_back_to_diffsol() {
        let (model, ds, draws, _) = oral_case();
        // Five single doses of different amounts: five trains, the batched engine holds four.
        let many =
            regimen("irregular", (0..5).map(|k| dose(k as f64 * 3.0, 10.0 * (k + 1) as f64, 0.0, 0, 1)).collect());
        let fc = Forecaster::new(&model, plan(&[("cp", None)], 24.0, vec![])).unwrap();
        let r = fc.forecast_subject(&ds, &ds.subjects[0], 0, 20.0, &draws[..4], &[many]).unwrap();
        assert!(matches!(&r[0].engine, EngineUsed::Diffsol(why) if why.contains("dose trains")), "{:?}", r[0].engine);
        assert_eq!(r[0].failed, 0);
    }

    #[test]
    fn quantiles_are_type_7() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert!((quantile_sorted(&v, 0.05) - 1.2).abs() < 1e-15);
        assert!((quantile_sorted(&v, 0.95) - 4.8).abs() < 1e-15);
        assert!(quantile_sorted(&[], 0.5).is_nan());
    }
}
