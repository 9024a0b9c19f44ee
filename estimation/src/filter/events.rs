//! A [`Schedule`] resolved for the filters: the same NONMEM event grammar the
//! solve layer uses (bolus, infusions by rate or duration, F, lag, ADDL/II,
//! resets, exposure windows of inputs), flattened into a time-ordered list of
//! elementary changes. The filters integrate between these breakpoints and
//! between observations themselves, because a measurement update must be able
//! to change the state in the middle of a dosing history; the solve layer's
//! own resolver is private to it and works on one uninterrupted solve.
//!
//! Steady-state doses (SS = 1 or 2) are refused: the filter's state at the
//! start of such a history is not defined by the schedule alone.

use insilico_solvers::{Dose, DoseKind, Event, Schedule, SteadyState};

use crate::error::EstimationError;

/// One elementary change of the forcing or the state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// `x[cmt] += amount` (bolus, bioavailability applied).
    Jump { cmt: usize, amount: f64 },
    /// Infusion `id` starts adding `rate` to `dx[cmt]/dt`.
    RateOn { id: usize, cmt: usize, rate: f64 },
    /// Infusion `id` stops (nothing when a reset already stopped it).
    RateOff { id: usize },
    /// Input `input` changes by `delta`.
    Input { input: usize, delta: f64 },
    /// EVID 3: every state to zero, running infusions stop.
    Reset,
}

/// A change at its effective time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timed {
    /// Effective time (record time plus lag).
    pub time: f64,
    /// Record time (for resets cancelling lagged doses).
    nominal: f64,
    /// Index of the schedule event it comes from.
    record: usize,
    /// Emission order, the tie-break at equal times.
    seq: usize,
    /// What happens.
    pub change: Change,
}

fn dose_error(d: &Dose, reason: String) -> EstimationError {
    EstimationError::Filter(match d.line {
        Some(l) => format!("dose at t = {} (dataset line {l}): {reason}", d.time),
        None => format!("dose at t = {}: {reason}", d.time),
    })
}

/// Resolves `schedule` for parameters `p` of a model with `nstates` states
/// and `ninputs` inputs. Events at equal times keep record order; a reset
/// cancels doses of earlier records whose lag carries them past it (as the
/// solve layer does).
pub(crate) fn resolve(
    schedule: &Schedule,
    p: &[f64],
    nstates: usize,
    ninputs: usize,
) -> Result<Vec<Timed>, EstimationError> {
    let mut out: Vec<Timed> = Vec::new();
    let mut seq = 0;
    let mut next_id = 0;
    let mut push = |out: &mut Vec<Timed>, time: f64, nominal: f64, record: usize, change: Change| {
        out.push(Timed { time, nominal, record, seq, change });
        seq += 1;
    };
    for (record, ev) in schedule.events.iter().enumerate() {
        match ev {
            Event::Reset { time } => {
                if !time.is_finite() {
                    return Err(EstimationError::Filter(format!("a reset at t = {time}")));
                }
                push(&mut out, *time, *time, record, Change::Reset)
            }
            Event::Exposure(e) => {
                if e.input >= ninputs {
                    return Err(EstimationError::Filter(format!(
                        "an exposure window targets input {} but the model has {ninputs} inputs",
                        e.input
                    )));
                }
                if !(e.duration > 0.0 && e.start.is_finite() && e.level.is_finite() && e.duration.is_finite()) {
                    return Err(EstimationError::Filter(format!(
                        "exposure window at t = {} needs a finite level and a positive duration (got {} and {})",
                        e.start, e.level, e.duration
                    )));
                }
                for k in 0..=e.repeats {
                    let s = e.start + k as f64 * e.period;
                    push(&mut out, s, s, record, Change::Input { input: e.input, delta: e.level });
                    push(&mut out, s + e.duration, s, record, Change::Input { input: e.input, delta: -e.level });
                }
            }
            Event::Dose(d) => {
                if d.ss != SteadyState::No {
                    return Err(dose_error(
                        d,
                        "steady-state dosing (SS = 1 or 2) is not supported by the state filters; \
                         give the dosing history explicitly (ADDL/II)"
                            .into(),
                    ));
                }
                if d.cmt >= nstates {
                    return Err(dose_error(
                        d,
                        format!("dose into compartment {} but the model has {nstates} states", d.cmt + 1),
                    ));
                }
                let f = d.bioavailability.value(p);
                let lag = d.lag.value(p);
                let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
                if !finite_nonneg(f) || !finite_nonneg(lag) || !finite_nonneg(d.amount) || !d.time.is_finite() {
                    return Err(dose_error(
                        d,
                        format!(
                            "amount {}, bioavailability {f} and lag {lag} must be finite and non-negative",
                            d.amount
                        ),
                    ));
                }
                if d.addl > 0 && !(d.ii > 0.0 && d.ii.is_finite()) {
                    return Err(dose_error(d, "ADDL > 0 needs II > 0".into()));
                }
                let amount = f * d.amount;
                let infusion = match d.kind {
                    DoseKind::Bolus => None,
                    DoseKind::Rate(r) => {
                        let rate = r.value(p);
                        if !(rate > 0.0 && rate.is_finite()) {
                            return Err(dose_error(d, format!("infusion rate {rate} must be positive")));
                        }
                        Some((rate, amount / rate))
                    }
                    DoseKind::Duration(dur) => {
                        let duration = dur.value(p);
                        if !(duration > 0.0 && duration.is_finite()) {
                            return Err(dose_error(d, format!("infusion duration {duration} must be positive")));
                        }
                        Some((amount / duration, duration))
                    }
                };
                for k in 0..=d.addl {
                    let nominal = d.time + k as f64 * d.ii;
                    let t = nominal + lag;
                    match infusion {
                        None => push(&mut out, t, nominal, record, Change::Jump { cmt: d.cmt, amount }),
                        Some((rate, duration)) => {
                            if amount == 0.0 {
                                continue;
                            }
                            let id = next_id;
                            next_id += 1;
                            push(&mut out, t, nominal, record, Change::RateOn { id, cmt: d.cmt, rate });
                            push(&mut out, t + duration, nominal, record, Change::RateOff { id });
                        }
                    }
                }
            }
        }
    }
    let resets: Vec<(f64, usize)> =
        out.iter().filter(|e| e.change == Change::Reset).map(|e| (e.time, e.record)).collect();
    if !resets.is_empty() {
        out.retain(|e| {
            let start = matches!(e.change, Change::Jump { .. } | Change::RateOn { .. });
            !(start && resets.iter().any(|&(tr, rec)| e.record < rec && e.nominal <= tr && e.time > tr))
        });
    }
    out.sort_by(|a, b| a.time.total_cmp(&b.time).then(a.seq.cmp(&b.seq)));
    Ok(out)
}

/// The forcing in force between breakpoints: infusion rates per state and
/// input levels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Forcing {
    /// `Σ` running infusion rates, per state.
    pub rates: Vec<f64>,
    /// Input levels.
    pub u: Vec<f64>,
    /// Running infusions: `(id, cmt, rate)`.
    active: Vec<(usize, usize, f64)>,
}

/// What a change does to the state (the forcing changes are applied by
/// [`Forcing::apply`] itself).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum StateChange {
    /// Nothing.
    None,
    /// `x[cmt] += amount`.
    Jump(usize, f64),
    /// Every state to zero.
    Reset,
}

impl Forcing {
    /// No infusion running, inputs at `u0`.
    pub fn new(nstates: usize, u0: Vec<f64>) -> Forcing {
        Forcing { rates: vec![0.0; nstates], u: u0, active: Vec::new() }
    }

    /// Applies a change to the forcing and says what it does to the state.
    pub fn apply(&mut self, change: &Change) -> StateChange {
        match *change {
            Change::Jump { cmt, amount } => StateChange::Jump(cmt, amount),
            Change::RateOn { id, cmt, rate } => {
                self.active.push((id, cmt, rate));
                self.rates[cmt] += rate;
                StateChange::None
            }
            Change::RateOff { id } => {
                if let Some(pos) = self.active.iter().position(|a| a.0 == id) {
                    let (_, cmt, rate) = self.active.remove(pos);
                    self.rates[cmt] -= rate;
                    if self.active.iter().all(|a| a.1 != cmt) {
                        self.rates[cmt] = 0.0; // no round-off residue once nothing runs
                    }
                }
                StateChange::None
            }
            Change::Input { input, delta } => {
                self.u[input] += delta;
                StateChange::None
            }
            Change::Reset => {
                self.active.clear();
                self.rates.iter_mut().for_each(|r| *r = 0.0);
                StateChange::Reset
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infusions_addl_lag_and_reset() {
        let mut d = Dose::infusion(0.0, 0, 10.0, 2.0).repeated(12.0, 1);
        d.lag = insilico_solvers::Attr::Param(0);
        let s = Schedule::new().dose(d).dose(Dose::bolus(5.0, 1, 3.0)).reset(12.0);
        let ev = resolve(&s, &[0.5], 2, 0).unwrap();
        let times: Vec<f64> = ev.iter().map(|e| e.time).collect();
        // The second infusion (nominal 12, effective 12.5) is cancelled by the reset at 12.
        assert_eq!(times, vec![0.5, 2.5, 5.0, 12.0, 14.5]);
        assert_eq!(ev[0].change, Change::RateOn { id: 0, cmt: 0, rate: 5.0 });
        let mut f = Forcing::new(2, vec![]);
        assert_eq!(f.apply(&ev[0].change), StateChange::None);
        assert_eq!(f.rates, vec![5.0, 0.0]);
        assert_eq!(f.apply(&ev[1].change), StateChange::None);
        assert_eq!(f.rates, vec![0.0, 0.0]);
        assert_eq!(f.apply(&ev[2].change), StateChange::Jump(1, 3.0));
        assert_eq!(f.apply(&ev[3].change), StateChange::Reset);
        let mut ss = Dose::bolus(0.0, 0, 1.0);
        ss.ss = SteadyState::Reset;
        assert!(resolve(&Schedule::new().dose(ss), &[], 1, 0).is_err());
        assert!(resolve(&Schedule::new().dose(Dose::bolus(0.0, 3, 1.0)), &[], 1, 0).is_err());
    }
}
