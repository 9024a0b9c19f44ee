//! Expansion of a [`Schedule`] into timed actions for one parameter vector.
//!
//! Every dose becomes jumps and rate changes at resolved times (record time
//! plus lag, ADDL repeats, infusion ends); each action carries the sparse
//! derivative of its time and size with respect to the parameters, which is
//! what lets gradients flow through lags, bioavailability, modelled rates and
//! modelled durations.

use crate::schedule::{Attr, DoseKind, Event, Schedule, SteadyState};
use crate::solve::Error;

/// Sparse derivative with respect to parameters: `(index, ∂/∂θ_index)`.
pub(crate) type Grad = Vec<(usize, f64)>;

fn attr_grad(a: &Attr, scale: f64) -> Grad {
    match a.param() {
        Some(i) => vec![(i, scale)],
        None => Vec::new(),
    }
}

fn add(a: &Grad, b: &Grad) -> Grad {
    let mut out = a.clone();
    for &(i, v) in b {
        match out.iter_mut().find(|(j, _)| *j == i) {
            Some(e) => e.1 += v,
            None => out.push((i, v)),
        }
    }
    out
}

fn scaled(a: &Grad, s: f64) -> Grad {
    a.iter().map(|&(i, v)| (i, v * s)).collect()
}

/// How a (steady-state) dose enters: bolus, or infusion with its rate and duration.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Bolus,
    Infusion { rate: f64, d_rate: Grad, duration: f64, d_duration: Grad },
}

/// A steady-state dose to be solved for at its record time.
#[derive(Debug, Clone)]
pub(crate) struct SsSpec {
    pub mode: SteadyState,
    pub cmt: usize,
    /// Bioavailable amount per dose, F·AMT.
    pub amount: f64,
    pub d_amount: Grad,
    pub input: Input,
    /// Dosing interval; 0 for a constant infusion to steady state.
    pub ii: f64,
    /// Time from the record time back to the last dose of the steady-state
    /// history, in (0, ii]; its derivative.
    pub phase: f64,
    pub d_phase: Grad,
    /// Infusions of the steady-state history still running at the record time.
    pub residual_ids: Vec<usize>,
}

/// What happens at a breakpoint.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Add `amount` to state `cmt`.
    Jump { cmt: usize, amount: f64, d_amount: Grad },
    /// Start infusion `id` into `cmt` at `rate`.
    RateOn { id: usize, cmt: usize, rate: f64, d_rate: Grad },
    /// End infusion `id` (ignored if a reset already ended it).
    RateOff { id: usize },
    /// Raise exogenous input `input` by `delta`.
    Input { input: usize, delta: f64 },
    /// Every state and running infusion to zero.
    Reset,
    /// Steady state at this time.
    SteadyState(Box<SsSpec>),
}

/// An action at a resolved time.
#[derive(Debug, Clone)]
pub(crate) struct Timed {
    pub time: f64,
    pub d_time: Grad,
    /// Tie-breaker: record order, then order of expansion.
    pub seq: usize,
    /// Index of the schedule event this action came from.
    pub record: usize,
    /// For doses: the time before the lag was added (a reset between the
    /// nominal and the actual time cancels the dose, as in NONMEM).
    pub nominal: f64,
    pub action: Action,
}

struct Builder {
    out: Vec<Timed>,
    next_id: usize,
    seq: usize,
    record: usize,
    lag: f64,
}

impl Builder {
    fn push(&mut self, time: f64, d_time: Grad, action: Action) {
        let nominal = time - self.lag;
        self.out.push(Timed { time, d_time, seq: self.seq, record: self.record, nominal, action });
        self.seq += 1;
    }
    fn dose(&mut self, time: f64, d_time: &Grad, cmt: usize, amount: f64, d_amount: &Grad, input: &Input) {
        match input {
            Input::Bolus => self.push(time, d_time.clone(), Action::Jump { cmt, amount, d_amount: d_amount.clone() }),
            Input::Infusion { rate, d_rate, duration, d_duration } => {
                if *duration <= 0.0 || amount == 0.0 {
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.push(time, d_time.clone(), Action::RateOn { id, cmt, rate: *rate, d_rate: d_rate.clone() });
                self.push(time + duration, add(d_time, d_duration), Action::RateOff { id });
            }
        }
    }
}

fn check(v: f64, what: &str, line: Option<usize>, ok: bool) -> Result<f64, Error> {
    if v.is_finite() && ok {
        Ok(v)
    } else {
        Err(Error::InvalidDose { line, reason: format!("{what} is {v}") })
    }
}

/// Expands `schedule` for parameters `p` into actions sorted by time (ties in
/// record order). `nstates`/`ninputs` bound the targets. Repeats (ADDL,
/// exposure repeats) are expanded only up to `horizon`: memory does not grow
/// with repeats that fall after the last time the solve reaches.
pub(crate) fn resolve(
    schedule: &Schedule,
    p: &[f64],
    nstates: usize,
    ninputs: usize,
    horizon: f64,
) -> Result<Vec<Timed>, Error> {
    let mut b = Builder { out: Vec::new(), next_id: 0, seq: 0, record: 0, lag: 0.0 };
    for (record, ev) in schedule.events.iter().enumerate() {
        b.record = record;
        b.lag = 0.0;
        match ev {
            Event::Reset { time } => b.push(*time, Vec::new(), Action::Reset),
            Event::Exposure(e) => {
                if e.input >= ninputs {
                    return Err(Error::InvalidDose {
                        line: None,
                        reason: format!("exposure targets input {} but the system has {ninputs}", e.input),
                    });
                }
                check(e.duration, "exposure duration", None, e.duration > 0.0)?;
                for k in 0..=e.repeats {
                    let s = e.start + k as f64 * e.period;
                    if k > 0 && s > horizon {
                        break;
                    }
                    b.push(s, Vec::new(), Action::Input { input: e.input, delta: e.level });
                    b.push(s + e.duration, Vec::new(), Action::Input { input: e.input, delta: -e.level });
                }
            }
            Event::Dose(d) => {
                let line = d.line;
                if d.cmt >= nstates {
                    return Err(Error::InvalidDose {
                        line,
                        reason: format!("dose into compartment {} but the model has {nstates} states", d.cmt + 1),
                    });
                }
                let f = check(d.bioavailability.value(p), "bioavailability", line, d.bioavailability.value(p) >= 0.0)?;
                let lag = check(d.lag.value(p), "lag time", line, d.lag.value(p) >= 0.0)?;
                check(d.amount, "amount", line, d.amount >= 0.0)?;
                let amount = f * d.amount;
                let d_amount = attr_grad(&d.bioavailability, d.amount);
                let d_lag = attr_grad(&d.lag, 1.0);
                let input = match d.kind {
                    DoseKind::Bolus => Input::Bolus,
                    DoseKind::Rate(r) => {
                        let rate = check(r.value(p), "infusion rate", line, r.value(p) > 0.0)?;
                        // duration = F·AMT / R
                        let duration = amount / rate;
                        let d_duration = add(&scaled(&d_amount, 1.0 / rate), &attr_grad(&r, -amount / (rate * rate)));
                        Input::Infusion { rate, d_rate: attr_grad(&r, 1.0), duration, d_duration }
                    }
                    DoseKind::Duration(dur) => {
                        let duration = check(dur.value(p), "infusion duration", line, dur.value(p) > 0.0)?;
                        // rate = F·AMT / D
                        let rate = amount / duration;
                        let d_rate =
                            add(&scaled(&d_amount, 1.0 / duration), &attr_grad(&dur, -amount / (duration * duration)));
                        Input::Infusion { rate, d_rate, duration, d_duration: attr_grad(&dur, 1.0) }
                    }
                };
                check(d.ii, "II", line, d.ii >= 0.0)?;
                if d.addl > 0 && d.ii <= 0.0 {
                    return Err(Error::InvalidDose { line, reason: "ADDL > 0 needs II > 0".into() });
                }
                let first = d.time + lag;
                b.lag = lag;
                if d.ss != SteadyState::No {
                    steady_state(&mut b, d.time, lag, &d_lag, d.ii, d.cmt, amount, &d_amount, &input, d.ss, line)?;
                }
                // The record's own dose (constant-infusion steady state has none) and its ADDL repeats.
                let constant = d.ss != SteadyState::No && d.ii == 0.0;
                if !constant {
                    for k in 0..=d.addl {
                        let t = first + k as f64 * d.ii;
                        if k > 0 && t > horizon {
                            break;
                        }
                        b.dose(t, &d_lag, d.cmt, amount, &d_amount, &input);
                    }
                }
            }
        }
    }
    let mut out = cancel_pending(b.out);
    out.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.seq.cmp(&b.seq)));
    Ok(out)
}

/// Emits the steady-state action of a dose record at `t0` and the parts of
/// its infinite dosing history that reach past `t0`.
#[allow(clippy::too_many_arguments)]
fn steady_state(
    b: &mut Builder,
    t0: f64,
    lag: f64,
    d_lag: &Grad,
    ii: f64,
    cmt: usize,
    amount: f64,
    d_amount: &Grad,
    input: &Input,
    mode: SteadyState,
    line: Option<usize>,
) -> Result<(), Error> {
    if ii == 0.0 {
        // Constant infusion to steady state (AMT = 0, RATE > 0, II = 0).
        let Input::Infusion { rate, d_rate, .. } = input else {
            return Err(Error::InvalidDose { line, reason: "a steady-state bolus needs II > 0".into() });
        };
        let spec = SsSpec {
            mode,
            cmt,
            amount: *rate,
            d_amount: d_rate.clone(),
            input: input.clone(),
            ii: 0.0,
            phase: 0.0,
            d_phase: Vec::new(),
            residual_ids: Vec::new(),
        };
        b.push(t0, Vec::new(), Action::SteadyState(Box::new(spec)));
        return Ok(());
    }
    // History doses at s_k = t0 + lag - k·ii, k ≥ 1. The last one strictly
    // before t0 fixes the phase; later ones (lag ≥ ii) are still to come.
    let m = ((lag / ii).floor() as i64 + 1).max(1);
    let s_m = t0 + lag - m as f64 * ii;
    let phase = t0 - s_m;
    let d_phase = scaled(d_lag, -1.0);
    let mut residual_ids = Vec::new();
    if let Input::Infusion { duration, d_duration, rate, d_rate } = input {
        // Infusions started at s_k (k ≥ m) that are still running at t0.
        if *duration / ii > 1e6 {
            return Err(Error::InvalidDose {
                line,
                reason: format!(
                    "a steady-state infusion lasting {duration} overlaps {:.3e} dosing intervals (II = {ii}); \
                     at most 1e6 are supported",
                    duration / ii
                ),
            });
        }
        let mut k = m;
        while t0 + lag - k as f64 * ii + duration > t0 {
            let start = t0 + lag - k as f64 * ii;
            let id = b.next_id;
            b.next_id += 1;
            residual_ids.push(id);
            let _ = (rate, d_rate);
            b.push(start + duration, add(d_lag, d_duration), Action::RateOff { id });
            k += 1;
        }
    }
    let spec = SsSpec {
        mode,
        cmt,
        amount,
        d_amount: d_amount.clone(),
        input: input.clone(),
        ii,
        phase,
        d_phase,
        residual_ids,
    };
    // The steady-state action comes before the future history doses pushed below.
    let seq_ss = b.seq;
    b.push(t0, Vec::new(), Action::SteadyState(Box::new(spec)));
    debug_assert_eq!(b.out.last().map(|e| e.seq), Some(seq_ss));
    for k in 1..m {
        b.dose(t0 + lag - k as f64 * ii, d_lag, cmt, amount, d_amount, input);
    }
    Ok(())
}

/// A reset (EVID 3/4, SS = 1) cancels doses of earlier records that were
/// due (nominal time) but not yet given because of their lag.
fn cancel_pending(events: Vec<Timed>) -> Vec<Timed> {
    let resets: Vec<(f64, usize)> = events
        .iter()
        .filter(|e| {
            matches!(e.action, Action::Reset)
                || matches!(&e.action, Action::SteadyState(s) if s.mode == SteadyState::Reset)
        })
        .map(|e| (e.time, e.record))
        .collect();
    if resets.is_empty() {
        return events;
    }
    events
        .into_iter()
        .filter(|e| {
            let is_start = matches!(e.action, Action::Jump { .. } | Action::RateOn { .. });
            !(is_start && resets.iter().any(|&(tr, rec)| e.record < rec && e.nominal <= tr && e.time > tr))
        })
        .collect()
}
