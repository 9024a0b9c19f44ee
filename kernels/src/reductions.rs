//! Per-trajectory reductions of the output: Cmax, Ctrough, AUC, mean, time
//! above a threshold, the final value (final tumour burden, say), each over
//! a time window of the output grid.
//!
//! A [`Reduction`] reads one field of the [`Summary`] of its window, so a
//! set of reductions costs one pass over the output whatever their number,
//! and the values are exactly those of [`SummaryObserver`] — and of the CUDA
//! kernels' on-device summaries — for the same window and threshold.
//!
//! ```
//! use insilico_kernels::reductions::{reduce_grid, Reduction};
//! let times = [0.0, 1.0, 2.0, 3.0];
//! let conc = [0.0, 4.0, 2.0, 1.0];
//! let r = [Reduction::cmax(0.0, 3.0), Reduction::auc(1.0, 3.0), Reduction::time_above(0.0, 3.0, 1.5), Reduction::last()];
//! assert_eq!(reduce_grid(&times, &conc, &r), vec![4.0, 4.5, 2.0, 1.0]);
//! ```

use rayon::prelude::*;

use crate::ensemble::{run_lanes, Batch, Summary, SummaryObserver, LANES};
use crate::integrate::{Observer, Stepper, Tolerances, TrajectoryStats};
use crate::model::BatchModel;

/// Which statistic of a window's [`Summary`] a reduction reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// Maximum (Cmax).
    Max,
    /// Minimum (Ctrough, nadir).
    Min,
    /// Trapezoidal area under the output (AUC).
    Auc,
    /// AUC divided by the window's length (average level).
    Mean,
    /// Time above the threshold (trapezoid on the indicator: grid resolution).
    TimeAbove,
    /// The output at the last grid time (final tumour burden, ...), whatever the window.
    Last,
}

impl Stat {
    /// Every statistic, in a stable order.
    pub const ALL: [Stat; 6] = [Stat::Max, Stat::Min, Stat::Auc, Stat::Mean, Stat::TimeAbove, Stat::Last];

    /// The statistic's name in configs: `max`, `min`, `auc`, `mean`, `time_above`, `final`.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Max => "max",
            Stat::Min => "min",
            Stat::Auc => "auc",
            Stat::Mean => "mean",
            Stat::TimeAbove => "time_above",
            Stat::Last => "final",
        }
    }

    /// Parses a name of [`Stat::name`], or the aliases `cmax`, `ctrough`,
    /// `nadir`, `last` (case-insensitive).
    pub fn parse(s: &str) -> Option<Stat> {
        match s.to_ascii_lowercase().as_str() {
            "max" | "cmax" | "peak" => Some(Stat::Max),
            "min" | "ctrough" | "trough" | "nadir" => Some(Stat::Min),
            "auc" => Some(Stat::Auc),
            "mean" | "average" => Some(Stat::Mean),
            "time_above" | "tat" => Some(Stat::TimeAbove),
            "final" | "last" => Some(Stat::Last),
            _ => None,
        }
    }
}

/// One reduction of a trajectory's output: a statistic over the window
/// `[a, b]` of the output grid (`threshold` for [`Stat::TimeAbove`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reduction {
    /// The statistic.
    pub stat: Stat,
    /// Window start.
    pub a: f64,
    /// Window end.
    pub b: f64,
    /// Threshold of [`Stat::TimeAbove`] (ignored otherwise).
    pub threshold: f64,
}

impl Reduction {
    /// Any statistic over `[a, b]`.
    pub fn new(stat: Stat, a: f64, b: f64, threshold: f64) -> Self {
        Reduction { stat, a, b, threshold }
    }
    /// Cmax over `[a, b]`.
    pub fn cmax(a: f64, b: f64) -> Self {
        Self::new(Stat::Max, a, b, 0.0)
    }
    /// Ctrough (minimum) over `[a, b]`.
    pub fn ctrough(a: f64, b: f64) -> Self {
        Self::new(Stat::Min, a, b, 0.0)
    }
    /// Trapezoidal AUC over `[a, b]`.
    pub fn auc(a: f64, b: f64) -> Self {
        Self::new(Stat::Auc, a, b, 0.0)
    }
    /// Time above `threshold` within `[a, b]`.
    pub fn time_above(a: f64, b: f64, threshold: f64) -> Self {
        Self::new(Stat::TimeAbove, a, b, threshold)
    }
    /// The output at the last grid time.
    pub fn last() -> Self {
        Self::new(Stat::Last, f64::NEG_INFINITY, f64::INFINITY, 0.0)
    }
    /// The reduction's value from the summary of its window.
    pub fn of(&self, s: &Summary) -> f64 {
        match self.stat {
            Stat::Max => s.max,
            Stat::Min => s.min,
            Stat::Auc => s.auc,
            Stat::Mean => s.auc / (self.b - self.a),
            Stat::TimeAbove => s.time_above,
            Stat::Last => s.last,
        }
    }
    /// The summary this reduction reads: window and threshold (the threshold
    /// only matters to [`Stat::TimeAbove`]; others share any summary of
    /// their window). [`Stat::Last`] reads any summary.
    fn key(&self) -> (f64, f64, Option<f64>) {
        (self.a, self.b, (self.stat == Stat::TimeAbove).then_some(self.threshold))
    }
}

/// Most distinct windows (window × threshold) one [`Reducer`] tracks.
pub const MAX_WINDOWS: usize = 8;

/// Errors of a set of reductions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReductionError {
    /// More distinct windows than [`MAX_WINDOWS`].
    #[error("at most {MAX_WINDOWS} distinct windows (window × threshold) per output, got {0}")]
    TooManyWindows(usize),
    /// A window with `b < a` or a NaN bound.
    #[error("reduction window [{a}, {b}] is empty")]
    EmptyWindow {
        /// Start.
        a: f64,
        /// End.
        b: f64,
    },
}

/// Computes a set of [`Reduction`]s in one pass over a trajectory's output
/// (an [`Observer`]: no stored trajectory, no allocation).
#[derive(Debug, Clone)]
pub struct Reducer<'a> {
    reductions: &'a [Reduction],
    /// Window of each reduction (index into `obs`).
    slot: [u8; 64],
    obs: [SummaryObserver; MAX_WINDOWS],
    nobs: usize,
}

/// The distinct summaries a set of reductions needs and, per reduction, its summary.
/// The summaries a set of reductions reads: the distinct `(a, b, threshold)`
/// windows and, per reduction, the index of its window.
pub type SummaryPlan = (Vec<(f64, f64, f64)>, Vec<usize>);

fn plan(reductions: &[Reduction]) -> Result<SummaryPlan, ReductionError> {
    let mut keys: Vec<(f64, f64, Option<f64>)> = Vec::new();
    let mut slots = Vec::with_capacity(reductions.len());
    for r in reductions {
        if r.stat != Stat::Last && (r.a.is_nan() || r.b.is_nan() || r.b < r.a) {
            return Err(ReductionError::EmptyWindow { a: r.a, b: r.b });
        }
        if r.stat == Stat::Last {
            slots.push(usize::MAX);
            continue;
        }
        let k = r.key();
        let pos = keys.iter().position(|q| q.0 == k.0 && q.1 == k.1 && (q.2 == k.2 || q.2.is_none() || k.2.is_none()));
        let i = match pos {
            Some(i) => {
                if keys[i].2.is_none() {
                    keys[i].2 = k.2;
                }
                i
            }
            None => {
                keys.push(k);
                keys.len() - 1
            }
        };
        slots.push(i);
    }
    if keys.is_empty() {
        keys.push((f64::NEG_INFINITY, f64::INFINITY, None));
    }
    for s in slots.iter_mut() {
        if *s == usize::MAX {
            *s = 0;
        }
    }
    if keys.len() > MAX_WINDOWS {
        return Err(ReductionError::TooManyWindows(keys.len()));
    }
    Ok((keys.into_iter().map(|(a, b, t)| (a, b, t.unwrap_or(0.0))).collect(), slots))
}

/// The distinct `(a, b, threshold)` summaries a set of reductions reads, and
/// for each reduction the index of its summary: what a device path that
/// reduces one summary per launch (the CUDA kernels) needs to run.
pub fn summaries_needed(reductions: &[Reduction]) -> Result<SummaryPlan, ReductionError> {
    plan(reductions)
}

impl<'a> Reducer<'a> {
    /// A reducer for `reductions` (at most 64 of them over at most
    /// [`MAX_WINDOWS`] distinct windows).
    pub fn new(reductions: &'a [Reduction]) -> Result<Self, ReductionError> {
        if reductions.len() > 64 {
            return Err(ReductionError::TooManyWindows(reductions.len()));
        }
        let (keys, slots) = plan(reductions)?;
        let mut obs = [SummaryObserver::new(0.0, 0.0, 0.0); MAX_WINDOWS];
        for (o, &(a, b, t)) in obs.iter_mut().zip(&keys) {
            *o = SummaryObserver::new(a, b, t);
        }
        let mut slot = [0u8; 64];
        for (s, &k) in slot.iter_mut().zip(&slots) {
            *s = k as u8;
        }
        Ok(Reducer { reductions, slot, obs, nobs: keys.len() })
    }
    /// Starts over (a new trajectory).
    pub fn reset(&mut self) {
        for o in self.obs[..self.nobs].iter_mut() {
            *o = SummaryObserver::new(o.a, o.b, o.threshold);
        }
    }
    /// The reductions' values, in their order.
    pub fn values(&self, out: &mut [f64]) {
        for (i, (r, o)) in self.reductions.iter().zip(out.iter_mut()).enumerate() {
            *o = r.of(&self.obs[self.slot[i] as usize].s);
        }
    }
}

impl Observer for Reducer<'_> {
    #[inline]
    fn observe(&mut self, k: usize, t: f64, y: f64) {
        for o in self.obs[..self.nobs].iter_mut() {
            o.observe(k, t, y);
        }
    }
}

/// The reductions of one stored output series `values` at `times`.
pub fn reduce_grid(times: &[f64], values: &[f64], reductions: &[Reduction]) -> Vec<f64> {
    let mut out = vec![f64::NAN; reductions.len()];
    if let Ok(mut r) = Reducer::new(reductions) {
        for (k, (&t, &y)) in times.iter().zip(values).enumerate() {
            r.observe(k, t, y);
        }
        r.values(&mut out);
    }
    out
}

/// Integrates every trajectory of `batch` (in parallel, identical results for
/// any thread count) and reduces its output at `times` to `reductions`.
/// Returns the values trajectory-major (`n × reductions.len()`) and the
/// per-trajectory counters; memory O(n), no stored trajectories.
pub fn solve_reductions<const N: usize, M: BatchModel<N>>(
    model: &M,
    stepper: Stepper,
    batch: &Batch<N>,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    reductions: &[Reduction],
) -> Result<(Vec<f64>, Vec<TrajectoryStats>), ReductionError> {
    let reducer = Reducer::new(reductions)?;
    let k = reductions.len();
    let row = k.max(1);
    // One slot per trajectory even without reductions, so every trajectory is
    // still integrated (and its status reported); cleared below.
    let mut values = vec![0.0; batch.n * row];
    let mut stats = vec![TrajectoryStats::default(); batch.n];
    values.par_chunks_mut(LANES * row).zip(stats.par_chunks_mut(LANES)).enumerate().for_each(|(c, (out, st))| {
        let first = c * LANES;
        let mut rs: Vec<Reducer> = st
            .iter()
            .map(|_| {
                let mut r = reducer.clone();
                r.reset();
                r
            })
            .collect();
        match <[&mut Reducer; LANES]>::try_from(rs.iter_mut().collect::<Vec<_>>()) {
            Ok(obs) => st.copy_from_slice(&run_lanes(model, stepper, batch, first, times, t_end, tol, obs)),
            Err(rest) => {
                for (l, (r, s)) in rest.into_iter().zip(st.iter_mut()).enumerate() {
                    [*s] = run_lanes(model, stepper, batch, first + l, times, t_end, tol, [r]);
                }
            }
        }
        for (r, o) in rs.iter().zip(out.chunks_mut(row)) {
            r.values(o);
        }
    });
    if k == 0 {
        values.clear();
    }
    Ok((values, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{solve_summaries, Regimen, TwoCmtOral};

    #[test]
    fn stats_parse_and_name_round_trip() {
        for s in Stat::ALL {
            assert_eq!(Stat::parse(s.name()), Some(s));
        }
        assert_eq!(Stat::parse("Ctrough"), Some(Stat::Min));
        assert_eq!(Stat::parse("median"), None);
    }

    #[test]
    fn reductions_equal_the_summary_observer() {
        let rows = vec![vec![1.2, 5.0, 30.0, 10.0, 50.0], vec![1.2, 9.0, 30.0, 10.0, 50.0]];
        let regs = vec![Regimen::repeated_bolus(100.0, 0, 12.0, 96.0).unwrap(); 2];
        let batch = Batch::<4>::from_rows(&rows, regs).unwrap();
        let times: Vec<f64> = (0..=192).map(|k| k as f64 * 0.5).collect();
        let tol = Tolerances::default();
        let red = [
            Reduction::cmax(72.0, 96.0),
            Reduction::ctrough(72.0, 96.0),
            Reduction::auc(72.0, 96.0),
            Reduction::time_above(72.0, 96.0, 1.0),
            Reduction::new(Stat::Mean, 72.0, 96.0, 0.0),
            Reduction::last(),
            Reduction::cmax(0.0, 24.0),
        ];
        let (v, st) = solve_reductions(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 96.0, &tol, &red).unwrap();
        let (s, _) = solve_summaries(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 96.0, &tol, (72.0, 96.0), 1.0);
        let (s0, _) = solve_summaries(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 96.0, &tol, (0.0, 24.0), 1.0);
        for i in 0..2 {
            let row = &v[i * red.len()..(i + 1) * red.len()];
            assert_eq!(row[..4], [s[i].max, s[i].min, s[i].auc, s[i].time_above]);
            assert_eq!(row[4], s[i].auc / 24.0);
            assert_eq!(row[5], s[i].last);
            assert_eq!(row[6], s0[i].max);
            assert_eq!(st[i].status, crate::Status::Ok);
        }
        assert!(v[0] > v[7], "faster clearance, lower Cmax");
    }

    #[test]
    fn too_many_windows_and_empty_windows_are_errors() {
        let many: Vec<Reduction> = (0..9).map(|k| Reduction::cmax(k as f64, 100.0)).collect();
        assert_eq!(Reducer::new(&many).err(), Some(ReductionError::TooManyWindows(9)));
        assert!(Reducer::new(&[Reduction::auc(5.0, 1.0)]).is_err());
        let shared = [Reduction::cmax(0.0, 1.0), Reduction::auc(0.0, 1.0), Reduction::time_above(0.0, 1.0, 2.0)];
        let (keys, slots) = summaries_needed(&shared).unwrap();
        assert_eq!(keys, vec![(0.0, 1.0, 2.0)]);
        assert_eq!(slots, vec![0, 0, 0]);
    }
}
