//! A fast path for loss gradients of small non-stiff systems: an explicit
//! adaptive Dormand–Prince 5(4) integrator with a **discrete adjoint** over
//! the stored steps, allocation-free once its [`FastWorkspace`] has grown.
//!
//! The generic [`insilico_solvers::gradient()`] builds diffsol solvers for
//! every call and integrates an adjoint ODE; for a hybrid model of a few
//! states fitted to a few hundred observations that construction dominates.
//! Here a [`Plan`] is compiled once per subject (events and observations
//! sorted), and each gradient is one forward sweep that stores every
//! accepted step (state and stages) and one backward sweep that applies the
//! transposed step map exactly: the gradient is the exact derivative of the
//! discrete solution (step sizes held fixed), so it agrees with finite
//! differences of the same solver to round-off once the steps are frozen, and
//! with the continuous gradient to the integration tolerance.
//!
//! Supported schedules: boluses, zero-order inputs of fixed rate or
//! duration, fixed bioavailability and lag, `ADDL`/`II` repetition and
//! resets. Steady-state doses, attributes that are model parameters and
//! exposure windows are refused with [`FastError::Unsupported`] so a caller
//! can fall back to the generic path.
//!
//! # Example
//! ```
//! use insilico_neural::fast::{FastWorkspace, Generic, Plan};
//! use insilico_solvers::{Dose, Options, Problem, Schedule, System};
//! struct Decay;
//! impl System for Decay {
//!     fn nstates(&self) -> usize { 1 }
//!     fn nparams(&self) -> usize { 1 }
//!     fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) { dx[0] = -p[0] * x[0]; }
//!     fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -p[0] * v[0]; }
//!     fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -p[0] * w[0]; }
//!     fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -x[0] * v[0]; }
//!     fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -x[0] * w[0]; }
//! }
//! let prob = Problem::new(&Decay, vec![0.2])
//!     .with_schedule(Schedule::new().dose(Dose::bolus(0.0, 0, 10.0)))
//!     .observe(0, &[5.0]);
//! let plan = Plan::new(&prob).unwrap();
//! let mut ws = FastWorkspace::default();
//! let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
//! let g = plan.gradient(&Generic(&Decay), &prob.params, &prob.x0, &opts, &|_, y| (y, 1.0), &mut ws).unwrap();
//! assert!((g.loss - 10.0 * (-1.0f64).exp()).abs() < 1e-8);
//! assert!((g.d_params[0] + 50.0 * (-1.0f64).exp()).abs() < 1e-7);
//! ```

use std::cell::RefCell;

use insilico_solvers::{DoseKind, Event, Loss, Options, Problem, SteadyState, System};

use crate::coupling::FluxResidual;
use crate::lockstep::{Lockstep, LockstepGradient};
use crate::mlp::Mlp;
use crate::residual::Residual;

/// Errors of the fast path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FastError {
    /// The schedule or system uses something the fast path does not handle.
    #[error("not supported by the fast path: {0}")]
    Unsupported(String),
    /// The state became NaN or infinite.
    #[error("the state became NaN or infinite at t = {t}")]
    NonFinite {
        /// Model time.
        t: f64,
    },
    /// More steps than allowed.
    #[error("more than {max_steps} steps by t = {t}")]
    MaxSteps {
        /// Model time.
        t: f64,
        /// The limit.
        max_steps: usize,
    },
    /// The step size underflowed.
    #[error("step size too small at t = {t}")]
    StepSizeTooSmall {
        /// Model time.
        t: f64,
    },
}

/// A right-hand side as the fast path needs it: no exogenous inputs, and a
/// combined VJP (state and parameters in one call, so a network is evaluated
/// once per stage).
pub trait FastRhs: Sync {
    /// Number of states.
    fn nstates(&self) -> usize;
    /// Number of parameters.
    fn nparams(&self) -> usize;
    /// `dx = f(t, x, θ)`.
    fn rhs(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64]);
    /// `gx = (∂f/∂x)ᵀ w` (overwritten) and `gp += (∂f/∂θ)ᵀ w` (accumulated).
    #[allow(clippy::too_many_arguments)]
    fn vjp_both(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64]);
    /// Output `k`.
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64;
    /// Adds `∂y_k/∂x` into `gx` and `∂y_k/∂θ` into `gp`.
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]);
    /// Length of the tape that [`FastRhs::rhs_tape`] writes (0: no tape;
    /// the default). The forward sweep keeps one tape per stage of every
    /// accepted step so that the backward sweep does not redo a network's
    /// forward pass.
    fn tape_len(&self) -> usize {
        0
    }
    /// [`FastRhs::rhs`], also writing into `tape` (length [`FastRhs::tape_len`])
    /// what [`FastRhs::vjp_tape`] needs at the same point.
    fn rhs_tape(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64], tape: &mut [f64]) {
        let _ = tape;
        self.rhs(t, x, p, dx)
    }
    /// [`FastRhs::vjp_both`] at a point whose tape [`FastRhs::rhs_tape`]
    /// wrote (same `t`, `x` and `θ`).
    #[allow(clippy::too_many_arguments)]
    fn vjp_tape(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        let _ = tape;
        self.vjp_both(t, x, p, w, gx, gp)
    }
    /// The lockstep form ([`crate::lockstep`]: several subjects integrated
    /// together, the network evaluated for all of them at once), if this
    /// right-hand side has one (`None`, the default: subjects run one by one).
    fn lockstep(&self) -> Option<Box<dyn LockstepGradient + '_>> {
        None
    }
}

/// Any [`System`] without exogenous inputs, through its `vjp_state` and `vjp_params`.
pub struct Generic<'a>(pub &'a dyn System);

thread_local! {
    static GP: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

impl FastRhs for Generic<'_> {
    fn nstates(&self) -> usize {
        self.0.nstates()
    }
    fn nparams(&self) -> usize {
        self.0.nparams()
    }
    fn rhs(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64]) {
        self.0.rhs(t, x, &[], p, dx)
    }
    fn vjp_both(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        self.0.vjp_state(t, x, &[], p, w, gx);
        let m = gp.len();
        let mut add = |tmp: &mut Vec<f64>| {
            if tmp.len() < m {
                tmp.resize(m, 0.0);
            }
            self.0.vjp_params(t, x, &[], p, w, &mut tmp[..m]);
            for (a, b) in gp.iter_mut().zip(tmp.iter()) {
                *a += b;
            }
        };
        GP.with(|c| match c.try_borrow_mut() {
            Ok(mut tmp) => add(&mut tmp),
            Err(_) => add(&mut Vec::new()),
        });
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        self.0.output(k, t, x, p)
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        self.0.output_grad(k, t, x, p, gx, gp)
    }
}

impl<S: System, R: Residual + 'static> FastRhs for FluxResidual<S, R> {
    fn nstates(&self) -> usize {
        System::nstates(self)
    }
    fn nparams(&self) -> usize {
        System::nparams(self)
    }
    fn rhs(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64]) {
        System::rhs(self, t, x, &[], p, dx)
    }
    fn vjp_both(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        FluxResidual::vjp_both(self, t, x, &[], p, w, gx, gp)
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        System::output(self, k, t, x, p)
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        System::output_grad(self, k, t, x, p, gx, gp)
    }
    fn tape_len(&self) -> usize {
        FluxResidual::tape_len(self)
    }
    fn rhs_tape(&self, t: f64, x: &[f64], p: &[f64], dx: &mut [f64], tape: &mut [f64]) {
        FluxResidual::rhs_tape(self, t, x, p, dx, tape)
    }
    fn vjp_tape(&self, t: f64, x: &[f64], p: &[f64], w: &[f64], gx: &mut [f64], gp: &mut [f64], tape: &[f64]) {
        FluxResidual::vjp_tape(self, t, x, p, w, gx, gp, tape)
    }
    fn lockstep(&self) -> Option<Box<dyn LockstepGradient + '_>> {
        let net = (self.net() as &dyn std::any::Any).downcast_ref::<Mlp>()?;
        let ls = Lockstep::new(self.system(), net, self.features(), self.channels())?;
        Some(Box::new(ls))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Ev {
    Jump { cmt: usize, amount: f64 },
    Rate { cmt: usize, delta: f64 },
    Reset,
}

/// A subject's events and observations, compiled once for many solves.
#[derive(Debug, Clone)]
pub struct Plan {
    pub(crate) t0: f64,
    /// Events sorted by time (stable: record order at equal times).
    pub(crate) events: Vec<(f64, Ev)>,
    /// Observations sorted by time: (time, output, index in the problem).
    pub(crate) obs: Vec<(f64, usize, usize)>,
    pub(crate) horizon: f64,
    pub(crate) n: usize,
}

/// Loss, gradient and predictions from [`Plan::gradient`].
#[derive(Debug, Clone, PartialEq)]
pub struct FastGradient {
    /// `Σ_j ℓ_j(y_j)`.
    pub loss: f64,
    /// `∂L/∂θ`.
    pub d_params: Vec<f64>,
    /// `∂L/∂x₀`.
    pub d_x0: Vec<f64>,
    /// Predictions in the order of the problem's observations.
    pub predictions: Vec<f64>,
    /// Accepted steps.
    pub steps: usize,
}

/// Reusable buffers of the fast path (one per thread).
#[derive(Debug, Clone, Default)]
pub struct FastWorkspace {
    x: Vec<f64>,
    xn: Vec<f64>,
    k: Vec<f64>,
    y: Vec<f64>,
    rates: Vec<f64>,
    err: Vec<f64>,
    /// Per step: t, h, x (n), k1..k7 (7n).
    steps: Vec<f64>,
    /// Tapes of the current attempt's 7 stages.
    tape: Vec<f64>,
    /// Per accepted step: the 7 stage tapes.
    tapes: Vec<f64>,
    /// Backward: dense observations' contributions to the step's start state and stages.
    acc_x: Vec<f64>,
    acc_k: Vec<f64>,
    /// Forward record: items in order.
    items: Vec<Item>,
    /// States at observations.
    obs_x: Vec<f64>,
    weights: Vec<f64>,
    lam: Vec<f64>,
    mu: Vec<f64>,
    kap: Vec<f64>,
    gp: Vec<f64>,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    /// An accepted step: offsets of its record and of its tapes.
    Step {
        off: usize,
        toff: usize,
    },
    /// An observation: at the current time (`theta: None`) or inside the
    /// preceding step, from its dense output at `t + θh`.
    Obs {
        j: usize,
        pos: usize,
        slot: usize,
        theta: Option<f64>,
    },
    Reset,
}

// Dormand–Prince 5(4).
pub(crate) const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
pub(crate) const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0, 0.0],
    [9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0, 0.0],
    [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
/// `B` with the (zero) weight of the FSAL stage 7.
pub(crate) const B7: [f64; 7] = [35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0];
/// Hairer's `contd5` coefficients of DOPRI5's 4th-order continuous extension.
const D: [f64; 7] = [
    -12715105075.0 / 11282082432.0,
    0.0,
    87487479700.0 / 32700410799.0,
    -10690763975.0 / 1880347072.0,
    701980252875.0 / 199316789632.0,
    -1453857185.0 / 822651844.0,
    69997945.0 / 29380423.0,
];

/// Weights of DOPRI5's continuous extension: `x(t + θh) = x + h Σ_s b_s(θ) k_s`
/// over the 7 stages (`k7 = f(t + h, x_{n+1})`). Hairer's `contd5`,
/// `x + θ(r2 + (1−θ)(r3 + θ(r4 + (1−θ) r5)))`, expanded per stage; `b(1) = B`.
pub(crate) fn dense_weights(theta: f64) -> [f64; 7] {
    let t1 = 1.0 - theta;
    let mut b = [0.0; 7];
    for (s, bs) in b.iter_mut().enumerate() {
        let bb = B7[s];
        let e1 = if s == 0 { 1.0 } else { 0.0 };
        let e7 = if s == 6 { 1.0 } else { 0.0 };
        *bs = theta * bb
            + theta * t1 * (e1 - bb)
            + theta * theta * t1 * (2.0 * bb - e1 - e7)
            + theta * theta * t1 * t1 * D[s];
    }
    b
}

pub(crate) const E: [f64; 7] =
    [71.0 / 57600.0, 0.0, -71.0 / 16695.0, 71.0 / 1920.0, -17253.0 / 339200.0, 22.0 / 525.0, -1.0 / 40.0];

impl Plan {
    /// Compiles `problem`'s schedule and observations (its system, parameters
    /// and initial state are not kept: pass them to [`Plan::gradient`]).
    pub fn new(problem: &Problem) -> Result<Plan, FastError> {
        let sys = problem.system;
        if sys.ninputs() > 0 {
            return Err(FastError::Unsupported("systems with exogenous inputs".into()));
        }
        let n = sys.nstates();
        let unsup = |s: &str| Err(FastError::Unsupported(s.to_string()));
        // Repeats after the horizon are never reached: not expanded (memory
        // does not grow with ADDL beyond the doses inside the horizon).
        let last_obs = problem.observations.iter().map(|o| o.time).fold(problem.t0, f64::max);
        let horizon = problem.t_end.map_or(last_obs, |t| t.max(last_obs));
        let mut events: Vec<(f64, usize, Ev)> = Vec::new();
        let mut seq = 0usize;
        let mut push = |t: f64, ev: Ev, events: &mut Vec<(f64, usize, Ev)>| {
            events.push((t, seq, ev));
            seq += 1;
        };
        for e in &problem.schedule.events {
            match e {
                Event::Reset { time } => push(*time, Ev::Reset, &mut events),
                Event::Exposure(_) => return unsup("exposure windows"),
                Event::Dose(d) => {
                    if d.ss != SteadyState::No {
                        return unsup("steady-state doses");
                    }
                    let (Some(f), Some(lag)) = (attr(d.bioavailability), attr(d.lag)) else {
                        return unsup("bioavailability or lag that is a model parameter");
                    };
                    if d.cmt >= n || !(d.amount.is_finite() && f.is_finite() && lag.is_finite()) {
                        return unsup("a dose outside the model or with non-finite attributes");
                    }
                    let amount = f * d.amount;
                    for r in 0..=d.addl {
                        let t = d.time + lag + r as f64 * d.ii;
                        if r > 0 && t > horizon {
                            break;
                        }
                        match d.kind {
                            DoseKind::Bolus => push(t, Ev::Jump { cmt: d.cmt, amount }, &mut events),
                            DoseKind::Rate(a) | DoseKind::Duration(a) => {
                                let Some(v) = attr(a) else {
                                    return unsup("modelled infusion rate or duration");
                                };
                                let (rate, dur) = match d.kind {
                                    DoseKind::Rate(_) => (v, amount / v),
                                    _ => (amount / v, v),
                                };
                                if !(rate.is_finite() && dur.is_finite() && dur >= 0.0) {
                                    return unsup("an infusion with a non-finite rate or duration");
                                }
                                if dur > 0.0 {
                                    push(t, Ev::Rate { cmt: d.cmt, delta: rate }, &mut events);
                                    push(t + dur, Ev::Rate { cmt: d.cmt, delta: -rate }, &mut events);
                                }
                            }
                        }
                    }
                }
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut obs: Vec<(f64, usize, usize)> =
            problem.observations.iter().enumerate().map(|(j, o)| (o.time, o.output, j)).collect();
        obs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
        let events = events.into_iter().filter(|e| e.0 >= problem.t0 && e.0 <= horizon).map(|e| (e.0, e.2)).collect();
        Ok(Plan { t0: problem.t0, events, obs, horizon, n })
    }

    /// Number of observations.
    pub fn n_obs(&self) -> usize {
        self.obs.len()
    }

    /// Predictions only (outputs at the observations, in problem order).
    pub fn predict(
        &self,
        sys: &dyn FastRhs,
        p: &[f64],
        x0: &[f64],
        opts: &Options,
        ws: &mut FastWorkspace,
    ) -> Result<Vec<f64>, FastError> {
        let mut preds = vec![0.0; self.obs.len()];
        self.forward(sys, p, x0, opts, ws, false, &mut |j, y| {
            preds[j] = y;
            0.0
        })?;
        Ok(preds)
    }

    /// Loss `Σ_j loss(j, y_j)`, its gradient with respect to `θ` and `x₀`
    /// (discrete adjoint) and the predictions.
    pub fn gradient(
        &self,
        sys: &dyn FastRhs,
        p: &[f64],
        x0: &[f64],
        opts: &Options,
        loss: &Loss,
        ws: &mut FastWorkspace,
    ) -> Result<FastGradient, FastError> {
        let mut preds = vec![0.0; self.obs.len()];
        let mut total = 0.0;
        let steps = self.forward(sys, p, x0, opts, ws, true, &mut |j, y| {
            preds[j] = y;
            let (l, w) = loss(j, y);
            total += l;
            w
        })?;
        let mut d_params = vec![0.0; p.len()];
        let mut d_x0 = vec![0.0; self.n];
        self.backward(sys, p, ws, &mut d_params, &mut d_x0);
        Ok(FastGradient { loss: total, d_params, d_x0, predictions: preds, steps })
    }

    /// The forward sweep. `obs(j, y)` returns `dℓ/dy` (stored for the
    /// backward sweep when `record`). Returns the number of accepted steps.
    ///
    /// The integrator stops only at events and at the horizon; observations
    /// between them are read from DOPRI5's continuous extension of the step
    /// that covers them (an observation at an event time is taken after the
    /// event, at the stop).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        sys: &dyn FastRhs,
        p: &[f64],
        x0: &[f64],
        opts: &Options,
        ws: &mut FastWorkspace,
        record: bool,
        obs: &mut dyn FnMut(usize, f64) -> f64,
    ) -> Result<usize, FastError> {
        let n = self.n;
        if x0.len() != n || p.len() != sys.nparams() {
            return Err(FastError::Unsupported("initial state or parameter length mismatch".into()));
        }
        let tl = sys.tape_len();
        ws.x.clear();
        ws.x.extend_from_slice(x0);
        ws.xn.resize(n, 0.0);
        ws.k.resize(7 * n, 0.0);
        ws.y.resize(n, 0.0);
        ws.err.resize(n, 0.0);
        ws.tape.resize(7 * tl, 0.0);
        ws.rates.clear();
        ws.rates.resize(n, 0.0);
        ws.steps.clear();
        ws.tapes.clear();
        ws.items.clear();
        ws.obs_x.clear();
        ws.weights.clear();
        ws.weights.resize(self.obs.len(), 0.0);
        let mut t = self.t0;
        let (mut ei, mut oi) = (0usize, 0usize);
        let mut h = 0.0f64;
        let mut steps = 0usize;
        let mut fresh = true; // k1 must be recomputed
        loop {
            // Events and observations at the current time: events first.
            while ei < self.events.len() && self.events[ei].0 <= t {
                match self.events[ei].1 {
                    Ev::Jump { cmt, amount } => ws.x[cmt] += amount,
                    Ev::Rate { cmt, delta } => {
                        ws.rates[cmt] += delta;
                        if ws.rates[cmt].abs() < 1e-12 * delta.abs() {
                            ws.rates[cmt] = 0.0;
                        }
                    }
                    Ev::Reset => {
                        ws.x.iter_mut().for_each(|v| *v = 0.0);
                        ws.rates.iter_mut().for_each(|v| *v = 0.0);
                        if record {
                            ws.items.push(Item::Reset);
                        }
                    }
                }
                fresh = true;
                ei += 1;
            }
            while oi < self.obs.len() && self.obs[oi].0 <= t {
                let (_, k, j) = self.obs[oi];
                let y = sys.output(k, t, &ws.x, p);
                ws.weights[j] = obs(j, y);
                if record {
                    ws.items.push(Item::Obs { j, pos: oi, slot: ws.obs_x.len(), theta: None });
                    ws.obs_x.extend_from_slice(&ws.x);
                }
                oi += 1;
            }
            if t >= self.horizon {
                break;
            }
            let next_ev = self.events.get(ei).map_or(f64::INFINITY, |e| e.0);
            let stop = next_ev.min(self.horizon);
            if fresh {
                sys.rhs_tape(t, &ws.x, p, &mut ws.k[..n], &mut ws.tape[..tl]);
                for (a, r) in ws.k[..n].iter_mut().zip(&ws.rates) {
                    *a += r;
                }
                if h == 0.0 {
                    let next_obs = self.obs.get(oi).map_or(f64::INFINITY, |o| o.0);
                    h = initial_step(&ws.x, &ws.k[..n], opts, next_obs.min(stop) - t);
                }
                fresh = false;
            }
            // Integrate up to `stop`.
            while t < stop {
                let mut hh = h.min(stop - t);
                // Avoid a sliver of a last step.
                if stop - t - hh < 1e-10 * (stop - t) {
                    hh = stop - t;
                }
                if hh <= 1e-14 * t.abs().max(1.0) {
                    return Err(FastError::StepSizeTooSmall { t });
                }
                // Stages 2..7.
                for s in 1..7 {
                    for i in 0..n {
                        let mut acc = ws.x[i];
                        for (jj, a) in A[s][..s].iter().enumerate() {
                            acc += hh * a * ws.k[jj * n + i];
                        }
                        ws.y[i] = acc;
                    }
                    let (_, ks) = ws.k.split_at_mut(s * n);
                    sys.rhs_tape(t + C[s] * hh, &ws.y, p, &mut ks[..n], &mut ws.tape[s * tl..(s + 1) * tl]);
                    for (a, r) in ks[..n].iter_mut().zip(&ws.rates) {
                        *a += r;
                    }
                    if s == 6 {
                        ws.xn.copy_from_slice(&ws.y);
                    }
                }
                // Error estimate.
                let mut e2 = 0.0;
                for i in 0..n {
                    let mut e = 0.0;
                    for (s, es) in E.iter().enumerate() {
                        e += es * ws.k[s * n + i];
                    }
                    let sc = opts.atol + opts.rtol * ws.x[i].abs().max(ws.xn[i].abs());
                    let r = hh * e / sc;
                    e2 += r * r;
                }
                let err = (e2 / n as f64).sqrt();
                if !err.is_finite() || ws.xn.iter().any(|v| !v.is_finite()) {
                    if hh <= 1e-10 {
                        return Err(FastError::NonFinite { t });
                    }
                    h = hh * 0.1;
                    continue;
                }
                let fac = if err == 0.0 { 5.0 } else { (0.9 * err.powf(-0.2)).clamp(0.2, 5.0) };
                if err <= 1.0 {
                    steps += 1;
                    if steps > opts.max_steps {
                        return Err(FastError::MaxSteps { t, max_steps: opts.max_steps });
                    }
                    let t_new = if hh == stop - t { stop } else { t + hh };
                    if record {
                        ws.items.push(Item::Step { off: ws.steps.len(), toff: ws.tapes.len() });
                        ws.steps.push(t);
                        ws.steps.push(hh);
                        ws.steps.extend_from_slice(&ws.x);
                        ws.steps.extend_from_slice(&ws.k[..7 * n]);
                        ws.tapes.extend_from_slice(&ws.tape[..7 * tl]);
                    }
                    // Observations inside this step (those at `stop` wait for its events).
                    while oi < self.obs.len() && self.obs[oi].0 <= t_new && self.obs[oi].0 < stop {
                        let (to, k, j) = self.obs[oi];
                        let theta = ((to - t) / hh).clamp(0.0, 1.0);
                        let bw = dense_weights(theta);
                        for i in 0..n {
                            let mut acc = 0.0;
                            for (s, b) in bw.iter().enumerate() {
                                acc += b * ws.k[s * n + i];
                            }
                            ws.y[i] = ws.x[i] + hh * acc;
                        }
                        let yv = sys.output(k, to, &ws.y, p);
                        ws.weights[j] = obs(j, yv);
                        if record {
                            ws.items.push(Item::Obs { j, pos: oi, slot: ws.obs_x.len(), theta: Some(theta) });
                            ws.obs_x.extend_from_slice(&ws.y);
                        }
                        oi += 1;
                    }
                    t = t_new;
                    std::mem::swap(&mut ws.x, &mut ws.xn);
                    // FSAL: k7 becomes k1 (and its tape stage 1's).
                    ws.k.copy_within(6 * n..7 * n, 0);
                    ws.tape.copy_within(6 * tl..7 * tl, 0);
                    // Keep the proposed step (not the clamped one) unless it grew.
                    h = if hh < h { h.max(hh * fac) } else { hh * fac };
                } else {
                    h = hh * fac.min(1.0);
                }
            }
        }
        Ok(steps)
    }

    /// The backward sweep over the recorded forward pass.
    fn backward(&self, sys: &dyn FastRhs, p: &[f64], ws: &mut FastWorkspace, d_params: &mut [f64], d_x0: &mut [f64]) {
        let n = self.n;
        let tl = sys.tape_len();
        let FastWorkspace { steps, tapes, items, obs_x, weights, lam, mu, kap, y, gp, acc_x, acc_k, .. } = ws;
        lam.clear();
        lam.resize(n, 0.0);
        mu.clear();
        mu.resize(7 * n, 0.0);
        kap.clear();
        kap.resize(n, 0.0);
        gp.clear();
        gp.resize(n, 0.0);
        acc_x.clear();
        acc_x.resize(n, 0.0);
        acc_k.clear();
        acc_k.resize(7 * n, 0.0);
        y.resize(n, 0.0);
        for item in items.iter().rev() {
            match *item {
                Item::Obs { j, pos, slot, theta } => {
                    let w = weights[j];
                    if w != 0.0 {
                        let (t, k, _) = self.obs[pos];
                        let x = &obs_x[slot..slot + n];
                        // gp = w ∂y/∂x; parameters go straight into d_params.
                        gp.iter_mut().for_each(|v| *v = 0.0);
                        output_grad_scaled(sys, k, t, x, p, w, gp, d_params);
                        match theta {
                            None => {
                                for (a, b) in lam.iter_mut().zip(gp.iter()) {
                                    *a += b;
                                }
                            }
                            Some(theta) => {
                                // x(t + θh) = x + h Σ b_s(θ) k_s: to x directly, and to each stage.
                                let bw = dense_weights(theta);
                                for i in 0..n {
                                    acc_x[i] += gp[i];
                                    for (s, b) in bw.iter().enumerate() {
                                        acc_k[s * n + i] += b * gp[i];
                                    }
                                }
                            }
                        }
                    }
                }
                Item::Reset => lam.iter_mut().for_each(|v| *v = 0.0),
                Item::Step { off, toff } => {
                    let rec = &steps[off..off + 2 + 8 * n];
                    let (t, h) = (rec[0], rec[1]);
                    let x0 = &rec[2..2 + n];
                    let ks = &rec[2 + n..2 + 8 * n];
                    // Reverse over stages 7..1:
                    // κ_s = h (b_s λ + Σ_obs b_s(θ) g + Σ_{j>s} a_js μ_j).
                    for s in (0..7).rev() {
                        let mut any = false;
                        for i in 0..n {
                            let mut acc = B7[s] * lam[i] + acc_k[s * n + i];
                            for jj in s + 1..7 {
                                acc += A[jj][s] * mu[jj * n + i];
                            }
                            kap[i] = h * acc;
                            any |= acc != 0.0;
                        }
                        let (_, mus) = mu.split_at_mut(s * n);
                        let mus = &mut mus[..n];
                        if !any {
                            mus.iter_mut().for_each(|v| *v = 0.0);
                            continue;
                        }
                        for i in 0..n {
                            let mut acc = x0[i];
                            for (jj, a) in A[s][..s].iter().enumerate() {
                                acc += h * a * ks[jj * n + i];
                            }
                            y[i] = acc;
                        }
                        let tape = &tapes[toff + s * tl..toff + (s + 1) * tl];
                        sys.vjp_tape(t + C[s] * h, y, p, kap, mus, d_params, tape);
                    }
                    for i in 0..n {
                        let mut acc = acc_x[i];
                        for s in 0..7 {
                            acc += mu[s * n + i];
                        }
                        lam[i] += acc;
                    }
                    acc_x.iter_mut().for_each(|v| *v = 0.0);
                    acc_k.iter_mut().for_each(|v| *v = 0.0);
                }
            }
        }
        d_x0.copy_from_slice(lam);
    }
}

/// `gx += w ∂y/∂x`, `d_params += w ∂y/∂θ`.
#[allow(clippy::too_many_arguments)]
fn output_grad_scaled(
    sys: &dyn FastRhs,
    k: usize,
    t: f64,
    x: &[f64],
    p: &[f64],
    w: f64,
    gx: &mut [f64],
    d_params: &mut [f64],
) {
    let n = gx.len();
    OUT_GP.with(|c| {
        let mut buf = c.borrow_mut();
        buf.clear();
        buf.resize(d_params.len() + n, 0.0);
        let (gp, tx) = buf.split_at_mut(d_params.len());
        sys.output_grad(k, t, x, p, tx, gp);
        for (a, b) in d_params.iter_mut().zip(gp.iter()) {
            *a += w * b;
        }
        for (a, b) in gx.iter_mut().zip(tx.iter()) {
            *a += w * b;
        }
    });
}

thread_local! {
    static OUT_GP: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

fn attr(a: insilico_solvers::Attr) -> Option<f64> {
    match a {
        insilico_solvers::Attr::Value(v) => Some(v),
        insilico_solvers::Attr::Param(_) => None,
    }
}

/// Hairer's starting step, simplified: `0.01 ‖x‖/‖f‖`, bounded by the span.
pub(crate) fn initial_step(x: &[f64], f: &[f64], opts: &Options, span: f64) -> f64 {
    let n = x.len() as f64;
    let (mut d0, mut d1) = (0.0, 0.0);
    for (xi, fi) in x.iter().zip(f) {
        let sc = opts.atol + opts.rtol * xi.abs();
        d0 += (xi / sc).powi(2);
        d1 += (fi / sc).powi(2);
    }
    let (d0, d1) = ((d0 / n).sqrt(), (d1 / n).sqrt());
    let h = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { 0.01 * d0 / d1 };
    h.min(span).max(1e-10 * span.max(1e-300))
}
