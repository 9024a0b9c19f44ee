//! Ensembles: many trajectories of one model that differ in parameters,
//! initial state and regimen, integrated in parallel on all cores.
//!
//! The batch is stored structure-of-arrays, parameter-major (parameter `j` of
//! trajectory `i` at `params[j * n + i]`), exactly as the CUDA kernels read it
//! (coalesced). Each trajectory writes only its own outputs, so results are
//! identical for any number of threads.

use rayon::prelude::*;

use crate::integrate::{integrate_lanes, Observer, Stepper, Tolerances, TrajectoryStats};
use crate::model::BatchModel;
use crate::schedule::Regimen;

/// Errors of batch construction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// Array lengths do not match the number of trajectories.
    #[error("batch of {n} trajectories: {what} has length {got}, expected {expected}")]
    Length {
        /// Trajectories.
        n: usize,
        /// Which array.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The expected length.
        expected: usize,
    },
    /// A non-finite parameter.
    #[error("parameter {param} of trajectory {trajectory} is {value}")]
    NonFinite {
        /// Trajectory index.
        trajectory: usize,
        /// Parameter index.
        param: usize,
        /// The value.
        value: f64,
    },
}

/// A batch of trajectories in structure-of-arrays layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<const N: usize> {
    /// Number of trajectories.
    pub n: usize,
    /// Parameters per trajectory.
    pub nparams: usize,
    /// `nparams × n`, parameter-major.
    pub params: Vec<f64>,
    /// `N × n`, state-major.
    pub x0: Vec<f64>,
    /// One regimen per trajectory.
    pub regimens: Vec<Regimen>,
}

impl<const N: usize> Batch<N> {
    /// Builds a batch from per-trajectory rows (`rows[i]` = parameters of
    /// trajectory `i`), zero initial states, and regimens.
    pub fn from_rows(rows: &[Vec<f64>], regimens: Vec<Regimen>) -> Result<Self, BatchError> {
        let n = rows.len();
        let nparams = rows.first().map_or(0, |r| r.len());
        if regimens.len() != n {
            return Err(BatchError::Length { n, what: "regimens", got: regimens.len(), expected: n });
        }
        let mut params = vec![0.0; nparams * n];
        for (i, r) in rows.iter().enumerate() {
            if r.len() != nparams {
                return Err(BatchError::Length { n, what: "parameter row", got: r.len(), expected: nparams });
            }
            for (j, &v) in r.iter().enumerate() {
                if !v.is_finite() {
                    return Err(BatchError::NonFinite { trajectory: i, param: j, value: v });
                }
                params[j * n + i] = v;
            }
        }
        Ok(Batch { n, nparams, params, x0: vec![0.0; N * n], regimens })
    }

    /// Parameters of trajectory `i` gathered into `out`.
    #[inline]
    pub fn params_of(&self, i: usize, out: &mut [f64]) {
        for (j, o) in out.iter_mut().enumerate().take(self.nparams) {
            *o = self.params[j * self.n + i];
        }
    }

    /// Initial state of trajectory `i`.
    #[inline]
    pub fn x0_of(&self, i: usize) -> [f64; N] {
        let mut x = [0.0; N];
        for (s, v) in x.iter_mut().enumerate() {
            *v = self.x0[s * self.n + i];
        }
        x
    }
}

/// Largest parameter count a batched model may have.
pub const MAX_PARAMS: usize = 64;

/// Per-trajectory summaries over a window `[a, b]` of the output grid:
/// maximum, minimum, trapezoidal AUC, time above a threshold (trapezoid on
/// the indicator, i.e. grid resolution), and the last value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    /// Maximum over the window.
    pub max: f64,
    /// Minimum over the window.
    pub min: f64,
    /// Trapezoidal area over the window.
    pub auc: f64,
    /// Time spent above the threshold within the window (grid resolution).
    pub time_above: f64,
    /// Output at the last grid time.
    pub last: f64,
}

/// Accumulates a [`Summary`] on the fly (no stored trajectory).
#[derive(Debug, Clone, Copy)]
pub struct SummaryObserver {
    /// Window start.
    pub a: f64,
    /// Window end.
    pub b: f64,
    /// Threshold for `time_above`.
    pub threshold: f64,
    /// The running summary.
    pub s: Summary,
    prev: Option<(f64, f64)>,
}

impl SummaryObserver {
    /// A summary over `[a, b]` with threshold `threshold`.
    pub fn new(a: f64, b: f64, threshold: f64) -> Self {
        SummaryObserver {
            a,
            b,
            threshold,
            s: Summary { max: f64::NEG_INFINITY, min: f64::INFINITY, auc: 0.0, time_above: 0.0, last: f64::NAN },
            prev: None,
        }
    }
}

impl Observer for SummaryObserver {
    /// Only outputs from the window's start on matter (the window and the
    /// last value).
    #[inline]
    fn wants(&self, _k: usize, t: f64) -> bool {
        t >= self.a
    }
    #[inline]
    fn observe(&mut self, _k: usize, t: f64, y: f64) {
        self.s.last = y;
        if t < self.a || t > self.b {
            return;
        }
        self.s.max = self.s.max.max(y);
        self.s.min = self.s.min.min(y);
        if let Some((tp, yp)) = self.prev {
            let dt = t - tp;
            self.s.auc += 0.5 * dt * (yp + y);
            let above = (yp > self.threshold) as u8 + (y > self.threshold) as u8;
            self.s.time_above += 0.5 * dt * above as f64;
        }
        self.prev = Some((t, y));
    }
}

/// Outputs of every trajectory on a shared time grid.
#[derive(Debug, Clone, PartialEq)]
pub struct GridResult {
    /// `n × times.len()`, trajectory-major.
    pub values: Vec<f64>,
    /// Per-trajectory counters and status.
    pub stats: Vec<TrajectoryStats>,
}

/// Trajectories per call of [`integrate_lanes`] in the batch solvers: with
/// more independent dependency chains side by side, the core has more work to
/// overlap. P1 on one thread (`--example lanes_probe`, minimum of 7): 1 lane
/// 125 µs per solve, 2 lanes 1.38x faster, 4 lanes 2.09x, 8 lanes 2.38x,
/// 16 lanes 2.28x.
pub const LANES: usize = 8;

/// Integrates trajectories `first..first + L` of `batch` as the lanes of one
/// [`integrate_lanes`] call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_lanes<const N: usize, const L: usize, M: BatchModel<N>, O: Observer + ?Sized>(
    model: &M,
    stepper: Stepper,
    batch: &Batch<N>,
    first: usize,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    obs: [&mut O; L],
) -> [TrajectoryStats; L] {
    let np = batch.nparams;
    let mut p = [[0.0; MAX_PARAMS]; L];
    for (l, row) in p.iter_mut().enumerate() {
        batch.params_of(first + l, &mut row[..np]);
    }
    let x0: [[f64; N]; L] = std::array::from_fn(|l| batch.x0_of(first + l));
    let ps: [&[f64]; L] = std::array::from_fn(|l| &p[l][..np]);
    let xs: [&[f64; N]; L] = std::array::from_fn(|l| &x0[l]);
    let regs: [&Regimen; L] = std::array::from_fn(|l| &batch.regimens[first + l]);
    integrate_lanes(model, stepper, ps, xs, regs, times, t_end, tol, obs)
}

/// Integrates every trajectory of `batch`, storing the output at `times`.
pub fn solve_grid<const N: usize, M: BatchModel<N>>(
    model: &M,
    stepper: Stepper,
    batch: &Batch<N>,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
) -> GridResult {
    let nt = times.len().max(1);
    // One slot per trajectory even without output times (so every
    // trajectory is still integrated); cleared again below.
    let mut values = vec![0.0; batch.n * nt];
    let mut stats = vec![TrajectoryStats::default(); batch.n];
    // Trajectories go through the lane-interleaved integrator `LANES` at a
    // time (each result is bit-for-bit what `integrate` gives it alone).
    values.par_chunks_mut(LANES * nt).zip(stats.par_chunks_mut(LANES)).enumerate().for_each(|(c, (out, st))| {
        let first = c * LANES;
        let rows: Vec<&mut [f64]> = out.chunks_mut(nt).collect();
        match <[&mut [f64]; LANES]>::try_from(rows) {
            Ok(obs) => st.copy_from_slice(&run_lanes(model, stepper, batch, first, times, t_end, tol, obs)),
            Err(rows) => {
                for (l, (o, s)) in rows.into_iter().zip(st).enumerate() {
                    [*s] = run_lanes(model, stepper, batch, first + l, times, t_end, tol, [o]);
                }
            }
        }
    });
    if times.is_empty() {
        values.clear();
    }
    GridResult { values, stats }
}

/// Integrates every trajectory of `batch`, reducing the output at `times` to a
/// [`Summary`] over `[a, b]` without storing trajectories (memory O(n)).
#[allow(clippy::too_many_arguments)]
pub fn solve_summaries<const N: usize, M: BatchModel<N>>(
    model: &M,
    stepper: Stepper,
    batch: &Batch<N>,
    times: &[f64],
    t_end: f64,
    tol: &Tolerances,
    window: (f64, f64),
    threshold: f64,
) -> (Vec<Summary>, Vec<TrajectoryStats>) {
    let mut out = vec![(Summary::default(), TrajectoryStats::default()); batch.n];
    out.par_chunks_mut(LANES).enumerate().for_each(|(c, slots)| {
        let first = c * LANES;
        let new = || SummaryObserver::new(window.0, window.1, threshold);
        if slots.len() == LANES {
            let mut obs: [SummaryObserver; LANES] = std::array::from_fn(|_| new());
            let st = run_lanes(model, stepper, batch, first, times, t_end, tol, obs.each_mut());
            for ((slot, o), s) in slots.iter_mut().zip(&obs).zip(st) {
                *slot = (o.s, s);
            }
        } else {
            for (l, slot) in slots.iter_mut().enumerate() {
                let mut o = new();
                let [s] = run_lanes(model, stepper, batch, first + l, times, t_end, tol, [&mut o]);
                *slot = (o.s, s);
            }
        }
    });
    out.into_iter().unzip()
}
