//! The segment-by-segment forward driver, with optional forward
//! sensitivities and an optional tape for the adjoint.
//!
//! Between breakpoints the (augmented) system is smooth and handed to a
//! diffsol stepper; at breakpoints the driver applies jumps, rate changes,
//! resets and steady states to the state *and* to its sensitivities,
//! including the terms that come from event times that depend on parameters
//! (`S⁺ = S⁻ + ∂Δ/∂θ + (f⁻ − f⁺) ∂τ/∂θ`).

use std::cell::RefCell;

use nalgebra::{DMatrix, DVector};

use crate::events::{resolve, Action, Grad, Input, SsSpec, Timed};
use crate::integrator::{with_stepper, Rhs, Stepper};
use crate::schedule::SteadyState;
use crate::solve::{Error, Method, Observation, Options, Problem, Stats};
use crate::system::System;

/// A direction of forward sensitivity: a parameter or an initial state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Param(usize),
    State(usize),
}

/// Receives observations: index into the problem's list, the observation,
/// the state and the sensitivities (`n × k`, column-major by direction).
pub(crate) trait ObsSink {
    fn observe(&mut self, idx: usize, obs: &Observation, x: &[f64], s: &[f64]);
}

/// A point of the stored forward trajectory: time, state, derivative.
#[derive(Debug, Clone)]
pub(crate) struct Knot {
    pub t: f64,
    pub x: Vec<f64>,
    pub f: Vec<f64>,
}

/// One smooth segment of the forward pass.
#[derive(Debug, Clone)]
pub(crate) struct TapeSeg {
    pub t0: f64,
    pub t1: f64,
    pub knots: Vec<Knot>,
    pub u: Vec<f64>,
    /// Observations strictly inside the segment: (index, state).
    pub obs: Vec<(usize, Vec<f64>)>,
    /// Running infusions: (state, ∂rate/∂θ).
    pub active: Vec<(usize, Grad)>,
}

/// One applied action.
#[derive(Debug, Clone)]
pub(crate) struct TapeEvent {
    pub timed: Timed,
    pub x_before: Vec<f64>,
    pub x_after: Vec<f64>,
    pub r_before: Vec<f64>,
    pub r_after: Vec<f64>,
    pub u_before: Vec<f64>,
    pub u_after: Vec<f64>,
    /// For a steady state: ∂x_ss/∂θ, `n × m` column-major.
    pub ss_sens: Option<Vec<f64>>,
}

/// The forward pass, in order.
#[derive(Debug, Clone)]
pub(crate) enum TapeItem {
    Seg(TapeSeg),
    Event(TapeEvent),
    Obs(usize, Vec<f64>),
}

/// What the adjoint needs from the forward pass.
#[derive(Debug, Default)]
pub(crate) struct Tape {
    pub items: Vec<TapeItem>,
}

/// State of the forward driver.
#[derive(Debug, Clone)]
pub(crate) struct FwdState {
    pub t: f64,
    pub x: Vec<f64>,
    /// Sensitivities, `n × k` column-major.
    pub s: Vec<f64>,
    /// Total infusion rate into each state.
    pub rates: Vec<f64>,
    /// Its derivative along each direction, `n × k`.
    pub drates: Vec<f64>,
    pub u: Vec<f64>,
    /// Running infusions: (id, cmt, rate, ∂rate/∂θ).
    pub active: Vec<(usize, usize, f64, Grad)>,
}

/// End of a forward run.
pub(crate) struct RunEnd {
    pub x: Vec<f64>,
    pub stats: Stats,
}

struct Seg {
    rates: Vec<f64>,
    drates: Vec<f64>,
    u: Vec<f64>,
}

/// `[x, S₁..S_k]' = [f + R, J·S_j + ∂f/∂θ·e_j + ∂R/∂θ_j]`.
struct ForwardRhs<'a> {
    sys: &'a dyn System,
    p: &'a [f64],
    n: usize,
    dirs: &'a [Dir],
    /// The parameter of each direction (`None` for a state direction), for
    /// [`System::sensitivity_rhs`].
    dir_params: Vec<Option<usize>>,
    seg: RefCell<Seg>,
    scratch: RefCell<(Vec<f64>, Vec<f64>)>,
}

impl Rhs for ForwardRhs<'_> {
    fn size(&self) -> usize {
        self.n * (1 + self.dirs.len())
    }
    fn rhs(&self, t: f64, z: &[f64], dz: &mut [f64]) {
        let n = self.n;
        let seg = self.seg.borrow();
        let (x, s) = z.split_at(n);
        let (fx, ds) = dz.split_at_mut(n);
        self.sys.rhs(t, x, &seg.u, self.p, fx);
        for (f, r) in fx.iter_mut().zip(&seg.rates) {
            *f += r;
        }
        if self.dirs.is_empty() {
            return;
        }
        if self.sys.sensitivity_rhs(t, x, &seg.u, self.p, s, &self.dir_params, ds) {
            for (o, v) in ds.iter_mut().zip(&seg.drates) {
                *o += v;
            }
            return;
        }
        let mut sc = self.scratch.borrow_mut();
        let (e, tmp) = &mut *sc;
        for (j, d) in self.dirs.iter().enumerate() {
            let out = &mut ds[j * n..(j + 1) * n];
            self.sys.jvp(t, x, &seg.u, self.p, &s[j * n..(j + 1) * n], out);
            if let Dir::Param(i) = *d {
                e[i] = 1.0;
                self.sys.jvp_params(t, x, &seg.u, self.p, e, tmp);
                e[i] = 0.0;
                for (o, v) in out.iter_mut().zip(tmp.iter()) {
                    *o += v;
                }
            }
            for (o, v) in out.iter_mut().zip(&seg.drates[j * n..(j + 1) * n]) {
                *o += v;
            }
        }
    }
    fn jvp(&self, t: f64, z: &[f64], v: &[f64], out: &mut [f64]) {
        // Block-diagonal: exact for linear systems; for nonlinear ones it
        // leaves out the second-derivative coupling, which only slows Newton.
        let n = self.n;
        let seg = self.seg.borrow();
        let x = &z[..n];
        for j in 0..=self.dirs.len() {
            self.sys.jvp(t, x, &seg.u, self.p, &v[j * n..(j + 1) * n], &mut out[j * n..(j + 1) * n]);
        }
    }
    fn sparsity(&self) -> Option<Vec<(usize, usize)>> {
        // The same block-diagonal approximation as `jvp`: one copy of the
        // system's pattern per direction.
        let pattern = self.sys.jacobian_sparsity()?;
        let n = self.n;
        let mut all = Vec::with_capacity(pattern.len() * (1 + self.dirs.len()));
        for j in 0..=self.dirs.len() {
            all.extend(pattern.iter().map(|&(r, c)| (r + j * n, c + j * n)));
        }
        Some(all)
    }
    fn jacobian_values(&self, t: f64, z: &[f64], values: &mut [f64]) -> bool {
        let blocks = 1 + self.dirs.len();
        let nnz = values.len() / blocks;
        let seg = self.seg.borrow();
        if !self.sys.jacobian_values(t, &z[..self.n], &seg.u, self.p, &mut values[..nnz]) {
            return false;
        }
        for j in 1..blocks {
            values.copy_within(0..nnz, j * nnz);
        }
        true
    }
}

fn param_dir_index(dirs: &[Dir], m: usize) -> Vec<Option<usize>> {
    let mut idx = vec![None; m];
    for (j, d) in dirs.iter().enumerate() {
        if let Dir::Param(i) = *d {
            idx[i] = Some(j);
        }
    }
    idx
}

fn new_state(n: usize, ninputs: usize, dirs: &[Dir], t: f64, x: Vec<f64>, u: Vec<f64>) -> FwdState {
    let k = dirs.len();
    let mut s = vec![0.0; n * k];
    for (j, d) in dirs.iter().enumerate() {
        if let Dir::State(i) = *d {
            s[j * n + i] = 1.0;
        }
    }
    debug_assert_eq!(u.len(), ninputs);
    FwdState { t, x, s, rates: vec![0.0; n], drates: vec![0.0; n * k], u, active: Vec::new() }
}

/// Runs `problem` forward from its `t0` to its horizon.
pub(crate) fn forward(
    problem: &Problem,
    method: Method,
    opts: &Options,
    dirs: &[Dir],
    sink: &mut dyn ObsSink,
    tape: Option<&mut Tape>,
) -> Result<RunEnd, Error> {
    let sys = problem.system;
    let p = &problem.params;
    let events = resolve(&problem.schedule, p, sys.nstates(), sys.ninputs(), problem.horizon())?;
    let mut obs: Vec<(usize, Observation)> = problem.observations.iter().copied().enumerate().collect();
    obs.sort_by(|a, b| a.1.time.total_cmp(&b.1.time));
    let mut st = new_state(sys.nstates(), sys.ninputs(), dirs, problem.t0, problem.x0.clone(), problem.u0.clone());
    let stats = integrate(sys, p, method, opts, dirs, &mut st, &events, &obs, problem.horizon(), sink, tape)?;
    Ok(RunEnd { x: st.x, stats })
}

struct NoObs;
impl ObsSink for NoObs {
    fn observe(&mut self, _: usize, _: &Observation, _: &[f64], _: &[f64]) {}
}

/// Integrates from `st.t` to `t_end` through `events` (sorted), reporting `obs` (sorted by time).
#[allow(clippy::too_many_arguments)]
pub(crate) fn integrate(
    sys: &dyn System,
    p: &[f64],
    method: Method,
    opts: &Options,
    dirs: &[Dir],
    st: &mut FwdState,
    events: &[Timed],
    obs: &[(usize, Observation)],
    t_end: f64,
    sink: &mut dyn ObsSink,
    mut tape: Option<&mut Tape>,
) -> Result<Stats, Error> {
    let n = sys.nstates();
    let m = sys.nparams();
    let k = dirs.len();
    let pdir = param_dir_index(dirs, m);
    let rhs = ForwardRhs {
        sys,
        p,
        n,
        dirs,
        dir_params: dirs
            .iter()
            .map(|d| match *d {
                Dir::Param(i) => Some(i),
                Dir::State(_) => None,
            })
            .collect(),
        seg: RefCell::new(Seg { rates: st.rates.clone(), drates: st.drates.clone(), u: st.u.clone() }),
        scratch: RefCell::new((vec![0.0; m], vec![0.0; n])),
    };
    let mut stats = Stats::default();
    let mut z = vec![0.0; n * (1 + k)];
    let mut dz = vec![0.0; n * (1 + k)];
    with_stepper(&rhs, method, opts, &mut |stepper: &mut dyn Stepper| {
        let mut ei = 0;
        let mut oi = 0;
        loop {
            // Next breakpoint: the next event time, or the horizon.
            let pending = events.get(ei).filter(|e| e.time <= t_end).map(|e| e.time);
            let t_stop = pending.unwrap_or(t_end);
            // Integrate the smooth segment [st.t, t_stop].
            if t_stop > st.t {
                {
                    let mut seg = rhs.seg.borrow_mut();
                    seg.rates.copy_from_slice(&st.rates);
                    seg.drates.copy_from_slice(&st.drates);
                    seg.u.copy_from_slice(&st.u);
                }
                z[..n].copy_from_slice(&st.x);
                z[n..].copy_from_slice(&st.s);
                rhs.rhs(st.t, &z, &mut dz);
                stepper.restart(st.t, &z, &dz);
                let mut tseg = tape.as_ref().map(|_| TapeSeg {
                    t0: st.t,
                    t1: t_stop,
                    knots: vec![Knot { t: st.t, x: st.x.clone(), f: dz[..n].to_vec() }],
                    u: st.u.clone(),
                    obs: Vec::new(),
                    active: st.active.iter().map(|a| (a.1, a.3.clone())).collect(),
                });
                let mut buf = vec![0.0; n * (1 + k)];
                let mut fbuf = vec![0.0; n * (1 + k)];
                stepper.advance(t_stop, &mut |t_prev, t_now, interp| {
                    while oi < obs.len() && obs[oi].1.time <= t_now && obs[oi].1.time < t_stop {
                        let (idx, o) = obs[oi];
                        interp(o.time, &mut buf)?;
                        sink.observe(idx, &o, &buf[..n], &buf[n..]);
                        if let Some(ts) = tseg.as_mut() {
                            ts.obs.push((idx, buf[..n].to_vec()));
                        }
                        oi += 1;
                    }
                    if let Some(ts) = tseg.as_mut() {
                        for s in [0.5 * (t_prev + t_now), t_now] {
                            interp(s, &mut buf)?;
                            rhs.rhs(s, &buf, &mut fbuf);
                            ts.knots.push(Knot { t: s, x: buf[..n].to_vec(), f: fbuf[..n].to_vec() });
                        }
                    }
                    Ok(())
                })?;
                stats.segments += 1;
                let y = stepper.y();
                st.x.copy_from_slice(&y[..n]);
                st.s.copy_from_slice(&y[n..]);
                st.t = t_stop;
                if let (Some(tp), Some(ts)) = (tape.as_mut(), tseg) {
                    tp.items.push(TapeItem::Seg(ts));
                }
            }
            let Some(t_ev) = pending else { break };
            // Apply every event at this time, then take observations at it.
            st.t = st.t.max(t_ev);
            while ei < events.len() && events[ei].time == t_ev {
                apply(sys, p, method, opts, dirs, &pdir, st, &events[ei], tape.as_deref_mut())?;
                ei += 1;
            }
            while oi < obs.len() && obs[oi].1.time <= t_ev {
                let (idx, o) = obs[oi];
                sink.observe(idx, &o, &st.x, &st.s);
                if let Some(tp) = tape.as_mut() {
                    tp.items.push(TapeItem::Obs(idx, st.x.clone()));
                }
                oi += 1;
            }
        }
        // Observations exactly at the horizon after the last event.
        while oi < obs.len() {
            let (idx, o) = obs[oi];
            sink.observe(idx, &o, &st.x, &st.s);
            if let Some(tp) = tape.as_mut() {
                tp.items.push(TapeItem::Obs(idx, st.x.clone()));
            }
            oi += 1;
        }
        stats.steps = stepper.steps();
        Ok(())
    })?;
    Ok(stats)
}

/// `f(t, x, u, θ) + R`.
pub(crate) fn full_rhs(sys: &dyn System, t: f64, x: &[f64], u: &[f64], p: &[f64], rates: &[f64]) -> Vec<f64> {
    let mut f = vec![0.0; x.len()];
    sys.rhs(t, x, u, p, &mut f);
    for (a, r) in f.iter_mut().zip(rates) {
        *a += r;
    }
    f
}

/// Adds `g · v` to sensitivity columns along parameter directions.
fn add_param_grad(s: &mut [f64], n: usize, pdir: &[Option<usize>], g: &Grad, v: &[f64]) {
    for &(i, gi) in g {
        if let Some(j) = pdir[i] {
            for r in 0..n {
                s[j * n + r] += gi * v[r];
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    sys: &dyn System,
    p: &[f64],
    method: Method,
    opts: &Options,
    dirs: &[Dir],
    pdir: &[Option<usize>],
    st: &mut FwdState,
    ev: &Timed,
    tape: Option<&mut Tape>,
) -> Result<(), Error> {
    let n = sys.nstates();
    let m = sys.nparams();
    let t = ev.time;
    let x_before = st.x.clone();
    let r_before = st.rates.clone();
    let u_before = st.u.clone();
    let mut ss_sens = None;
    let timing = !ev.d_time.is_empty() && !dirs.is_empty();
    let f_before = if timing { full_rhs(sys, t, &st.x, &st.u, p, &st.rates) } else { Vec::new() };
    match &ev.action {
        Action::Jump { cmt, amount, d_amount } => {
            st.x[*cmt] += amount;
            let mut e = vec![0.0; n];
            e[*cmt] = 1.0;
            add_param_grad(&mut st.s, n, pdir, d_amount, &e);
        }
        Action::RateOn { id, cmt, rate, d_rate } => {
            st.active.push((*id, *cmt, *rate, d_rate.clone()));
            st.rates[*cmt] += rate;
            let mut e = vec![0.0; n];
            e[*cmt] = 1.0;
            add_param_grad(&mut st.drates, n, pdir, d_rate, &e);
        }
        Action::RateOff { id } => {
            if let Some(pos) = st.active.iter().position(|a| a.0 == *id) {
                let (_, cmt, rate, d_rate) = st.active.remove(pos);
                st.rates[cmt] -= rate;
                if st.active.iter().all(|a| a.1 != cmt) {
                    st.rates[cmt] = 0.0; // no round-off residue once nothing runs
                }
                let mut e = vec![0.0; n];
                e[cmt] = -1.0;
                add_param_grad(&mut st.drates, n, pdir, &d_rate, &e);
            }
        }
        Action::Input { input, delta } => st.u[*input] += delta,
        Action::Reset => {
            st.x.iter_mut().for_each(|v| *v = 0.0);
            st.s.iter_mut().for_each(|v| *v = 0.0);
            st.rates.iter_mut().for_each(|v| *v = 0.0);
            st.drates.iter_mut().for_each(|v| *v = 0.0);
            st.active.clear();
        }
        Action::SteadyState(spec) => {
            let want_sens = tape.is_some() || pdir.iter().any(|d| d.is_some());
            let (x_ss, s_ss) = steady_state(sys, p, method, opts, spec, &st.u, want_sens, t)?;
            if spec.mode == SteadyState::Reset {
                st.x.iter_mut().for_each(|v| *v = 0.0);
                st.s.iter_mut().for_each(|v| *v = 0.0);
                st.rates.iter_mut().for_each(|v| *v = 0.0);
                st.drates.iter_mut().for_each(|v| *v = 0.0);
                st.active.clear();
            }
            for (a, b) in st.x.iter_mut().zip(&x_ss) {
                *a += b;
            }
            if let Some(s_ss) = &s_ss {
                for (i, j) in pdir.iter().enumerate() {
                    if let Some(j) = *j {
                        for r in 0..n {
                            st.s[j * n + r] += s_ss[i * n + r];
                        }
                    }
                }
            }
            if let Input::Infusion { rate, d_rate, .. } = &spec.input {
                let mut e = vec![0.0; n];
                e[spec.cmt] = 1.0;
                for &id in &spec.residual_ids {
                    st.active.push((id, spec.cmt, *rate, d_rate.clone()));
                    st.rates[spec.cmt] += rate;
                    add_param_grad(&mut st.drates, n, pdir, d_rate, &e);
                }
            }
            ss_sens = s_ss;
        }
    }
    if timing {
        // S⁺ += (f⁻ − f⁺) ∂τ/∂θ
        let f_after = full_rhs(sys, t, &st.x, &st.u, p, &st.rates);
        let diff: Vec<f64> = f_before.iter().zip(&f_after).map(|(a, b)| a - b).collect();
        add_param_grad(&mut st.s, n, pdir, &ev.d_time, &diff);
    }
    let _ = m;
    if let Some(tp) = tape {
        tp.items.push(TapeItem::Event(TapeEvent {
            timed: ev.clone(),
            x_before,
            x_after: st.x.clone(),
            r_before,
            r_after: st.rates.clone(),
            u_before,
            u_after: st.u.clone(),
            ss_sens,
        }));
    }
    Ok(())
}

/// Events of one period of a steady-state regimen, measured from the last
/// dose: the dose at 0 and, for infusions, the overlapping infusions of
/// earlier doses, `ceil(D/II)` of them at first and one fewer after
/// `D − (ceil(D/II) − 1)·II`.
fn period_events(spec: &SsSpec, horizon: f64) -> Vec<Timed> {
    let mut ev = Vec::new();
    match &spec.input {
        Input::Bolus => ev.push(Timed {
            time: 0.0,
            d_time: Vec::new(),
            seq: 0,
            record: 0,
            nominal: 0.0,
            action: Action::Jump { cmt: spec.cmt, amount: spec.amount, d_amount: spec.d_amount.clone() },
        }),
        Input::Infusion { rate, d_rate, duration, d_duration } => {
            let c0 = (duration / spec.ii).ceil().max(1.0);
            let b = duration - (c0 - 1.0) * spec.ii;
            if c0 > 1.0 {
                let scaled: Grad = d_rate.iter().map(|&(i, v)| (i, v * (c0 - 1.0))).collect();
                ev.push(Timed {
                    time: 0.0,
                    d_time: Vec::new(),
                    seq: 0,
                    record: 0,
                    nominal: 0.0,
                    action: Action::RateOn { id: 0, cmt: spec.cmt, rate: rate * (c0 - 1.0), d_rate: scaled },
                });
            }
            ev.push(Timed {
                time: 0.0,
                d_time: Vec::new(),
                seq: 1,
                record: 0,
                nominal: 0.0,
                action: Action::RateOn { id: 1, cmt: spec.cmt, rate: *rate, d_rate: d_rate.clone() },
            });
            if b < horizon {
                ev.push(Timed {
                    time: b,
                    d_time: d_duration.clone(),
                    seq: 2,
                    record: 0,
                    nominal: b,
                    action: Action::RateOff { id: 1 },
                });
            }
        }
    }
    ev
}

/// The steady state of `spec` at its record time and, if asked, its
/// derivative with respect to the parameters (`n × m`, column-major).
#[allow(clippy::too_many_arguments)]
pub(crate) fn steady_state(
    sys: &dyn System,
    p: &[f64],
    method: Method,
    opts: &Options,
    spec: &SsSpec,
    u: &[f64],
    want_sens: bool,
    t_rec: f64,
) -> Result<(Vec<f64>, Option<Vec<f64>>), Error> {
    let n = sys.nstates();
    let m = sys.nparams();
    let acc = sys.accumulators();
    let free: Vec<usize> = (0..n).filter(|i| !acc.contains(i)).collect();
    let nf = free.len();
    let fail = |reason: String| Error::SteadyState { t: t_rec, reason };
    if spec.ii == 0.0 {
        return constant_infusion(sys, p, spec, u, want_sens, &free).map_err(fail);
    }
    // Newton on the periodic map P(x) = state one period after the dose.
    let mut dirs: Vec<Dir> = free.iter().map(|&i| Dir::State(i)).collect();
    if want_sens {
        dirs.extend((0..m).map(Dir::Param));
    }
    let events = period_events(spec, spec.ii);
    let mut x = vec![0.0; n];
    let mut converged = false;
    let mut last: Option<FwdState> = None;
    for _ in 0..50 {
        let mut st = new_state(n, u.len(), &dirs, 0.0, x.clone(), u.to_vec());
        integrate(sys, p, method, opts, &dirs, &mut st, &events, &[], spec.ii, &mut NoObs, None)?;
        // Newton step on the free states: (I − P_x) dx = P(x) − x.
        let a = DMatrix::from_fn(nf, nf, |r, c| (r == c) as u8 as f64 - st.s[c * n + free[r]]);
        let res = DVector::from_fn(nf, |r, _| st.x[free[r]] - x[free[r]]);
        // Residual and step are judged per state against its own size (a max
        // over states of very different sizes would hide a wrong small state).
        let small =
            free.iter().enumerate().all(|(r, &i)| res[r].abs() <= 1e-3 * (opts.rtol * st.x[i].abs() + opts.atol));
        if last.is_none() {
            check_conditioning(&a, opts.rtol, spec.ii).map_err(fail)?;
        }
        let lu = a.clone().lu();
        let dx = lu.solve(&res).ok_or_else(|| fail("the periodic map's Jacobian is singular".into()))?;
        for (r, &i) in free.iter().enumerate() {
            x[i] += dx[r];
        }
        let within = free.iter().enumerate().all(|(r, &i)| dx[r].abs() <= opts.rtol * st.x[i].abs() + opts.atol);
        last = Some(st);
        if small || within {
            converged = true;
            break;
        }
    }
    if !converged {
        return Err(fail("Newton on the periodic state did not converge in 50 iterations".into()));
    }
    let Some(last) = last else {
        return Err(fail("no iteration ran".into()));
    };
    // dx_p/dθ = (I − P_x)⁻¹ P_θ on the free states.
    let mut s_p = vec![0.0; n * m];
    if want_sens {
        let a = DMatrix::from_fn(nf, nf, |r, c| (r == c) as u8 as f64 - last.s[c * n + free[r]]);
        let pth = DMatrix::from_fn(nf, m, |r, c| last.s[(nf + c) * n + free[r]]);
        let sol = a.lu().solve(&pth).ok_or_else(|| fail("the periodic map's Jacobian is singular".into()))?;
        for c in 0..m {
            for (r, &i) in free.iter().enumerate() {
                s_p[c * n + i] = sol[(r, c)];
            }
        }
    }
    // From the last dose of the history to the record time.
    let pdirs: Vec<Dir> = if want_sens { (0..m).map(Dir::Param).collect() } else { Vec::new() };
    let mut st = new_state(n, u.len(), &pdirs, 0.0, x, u.to_vec());
    if want_sens {
        st.s.copy_from_slice(&s_p);
    }
    let events = period_events(spec, spec.phase);
    integrate(sys, p, method, opts, &pdirs, &mut st, &events, &[], spec.phase, &mut NoObs, None)?;
    for &i in &acc {
        st.x[i] = 0.0;
    }
    if !want_sens {
        return Ok((st.x, None));
    }
    // The phase moves with the lag: add f(x) ∂phase/∂θ.
    let f = full_rhs(sys, spec.phase, &st.x, u, p, &st.rates);
    for &(i, g) in &spec.d_phase {
        for (s, fr) in st.s[i * n..(i + 1) * n].iter_mut().zip(&f) {
            *s += g * fr;
        }
    }
    for &i in &acc {
        for c in 0..m {
            st.s[c * n + i] = 0.0;
        }
    }
    Ok((st.x, Some(st.s)))
}

/// Refuses a periodic steady state whose Newton matrix `I − P_x` is too
/// ill-conditioned for the integration tolerance: with `cond · rtol ≳ 1` the
/// solution has no correct digit (a compartment whose time scale dwarfs the
/// dosing interval, e.g. a peripheral volume of 1e17).
fn check_conditioning(a: &DMatrix<f64>, rtol: f64, ii: f64) -> Result<(), String> {
    let sv = a.clone().svd(false, false).singular_values;
    let smax = sv.iter().copied().fold(0.0f64, f64::max);
    let smin = sv.iter().copied().fold(f64::INFINITY, f64::min);
    let cond = if smin > 0.0 { smax / smin } else { f64::INFINITY };
    if !(cond.is_finite() && cond * rtol.max(1e-15) <= 0.5) {
        return Err(format!(
            "the periodic steady state cannot be computed accurately: the model's slowest time scale is about \
             {cond:.1e} times longer than the dosing interval II = {ii} (condition number {cond:.1e} of the \
             periodic map at rtol {rtol:e}), so the state would take that many intervals to settle and any \
             result would be dominated by round-off; check the parameters (a huge volume or a tiny rate \
             constant), or give the dosing history explicitly (ADDL) instead of SS"
        ));
    }
    Ok(())
}

/// Steady state of a constant infusion: `f(x) + r·e_c = 0` on the free states.
fn constant_infusion(
    sys: &dyn System,
    p: &[f64],
    spec: &SsSpec,
    u: &[f64],
    want_sens: bool,
    free: &[usize],
) -> Result<(Vec<f64>, Option<Vec<f64>>), String> {
    let n = sys.nstates();
    let m = sys.nparams();
    let nf = free.len();
    let mut x = vec![0.0; n];
    let mut rates = vec![0.0; n];
    rates[spec.cmt] = spec.amount;
    let jac = |x: &[f64]| {
        let mut j = DMatrix::zeros(nf, nf);
        let mut e = vec![0.0; n];
        let mut col = vec![0.0; n];
        for (c, &ic) in free.iter().enumerate() {
            e[ic] = 1.0;
            sys.jvp(0.0, x, u, p, &e, &mut col);
            e[ic] = 0.0;
            for (r, &ir) in free.iter().enumerate() {
                j[(r, c)] = col[ir];
            }
        }
        j
    };
    let mut ok = false;
    for _ in 0..100 {
        let f = full_rhs(sys, 0.0, &x, u, p, &rates);
        let res = DVector::from_fn(nf, |r, _| -f[free[r]]);
        let dx = jac(&x).lu().solve(&res).ok_or("the Jacobian is singular at the steady state")?;
        for (r, &i) in free.iter().enumerate() {
            x[i] += dx[r];
        }
        let scale = free.iter().map(|&i| x[i].abs()).fold(0.0, f64::max);
        if dx.amax() <= 1e-12 * scale.max(1e-300) {
            ok = true;
            break;
        }
    }
    if !ok {
        return Err("Newton on the constant-infusion steady state did not converge".into());
    }
    if !want_sens {
        return Ok((x, None));
    }
    // J S = −(∂f/∂θ + ∂r/∂θ e_c)
    let j = jac(&x).lu();
    let mut s = vec![0.0; n * m];
    let mut e = vec![0.0; m];
    let mut col = vec![0.0; n];
    for c in 0..m {
        e[c] = 1.0;
        sys.jvp_params(0.0, &x, u, p, &e, &mut col);
        e[c] = 0.0;
        for &(i, g) in &spec.d_amount {
            if i == c {
                col[spec.cmt] += g;
            }
        }
        let rhs = DVector::from_fn(nf, |r, _| -col[free[r]]);
        let sol = j.solve(&rhs).ok_or("the Jacobian is singular at the steady state")?;
        for (r, &i) in free.iter().enumerate() {
            s[c * n + i] = sol[r];
        }
    }
    Ok((x, Some(s)))
}
