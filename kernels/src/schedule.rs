//! Compact, GPU-friendly schedules: trains of identical doses and trains of
//! exposure windows, expanded on the fly inside the integrators (no event
//! lists in memory, so a million trajectories cost a few numbers each).

/// Capacity of a [`Regimen`] (dose trains and window trains each).
pub const MAX_TRAINS: usize = 4;

/// `count` identical doses of `amount` into state `target`, every `interval`
/// from `start`; a bolus when `duration` is 0, else a zero-order input of
/// `amount/duration` over `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DoseTrain {
    /// First dose time.
    pub start: f64,
    /// Interval between doses (ignored when `count` is 1).
    pub interval: f64,
    /// Number of doses.
    pub count: u32,
    /// Amount per dose.
    pub amount: f64,
    /// Dosed state.
    pub target: u32,
    /// Infusion duration (0 = bolus).
    pub duration: f64,
}

/// `count` windows during which input `input` is raised by `level`:
/// `[start + k·period, start + k·period + duration)`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowTrain {
    /// Opening of the first window.
    pub start: f64,
    /// Period between openings.
    pub period: f64,
    /// Number of windows.
    pub count: u32,
    /// Window length.
    pub duration: f64,
    /// Level added while open.
    pub level: f64,
    /// Target input.
    pub input: u32,
}

/// Up to [`MAX_TRAINS`] dose trains and window trains.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Regimen {
    /// Dose trains (the first `n_doses` are used).
    pub doses: [DoseTrain; MAX_TRAINS],
    /// Number of dose trains in use.
    pub n_doses: usize,
    /// Window trains (the first `n_windows` are used).
    pub windows: [WindowTrain; MAX_TRAINS],
    /// Number of window trains in use.
    pub n_windows: usize,
}

/// Errors in a regimen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegimenError {
    /// A schedule uses something the batched integrators do not run.
    #[error("{what}{}: the batched integrators run bolus and zero-order doses (with F, lag, II/ADDL) and exposure windows; the diffsol engine (`simulate`) runs the full NONMEM grammar", line.map(|l| format!(" (dataset line {l})")).unwrap_or_default())]
    Unsupported {
        /// What.
        what: String,
        /// Dataset line, when known.
        line: Option<usize>,
    },
    /// More trains than [`MAX_TRAINS`].
    #[error("a regimen holds at most {MAX_TRAINS} dose trains and {MAX_TRAINS} window trains")]
    Full,
    /// A non-finite or negative time, amount or duration.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: f64,
    },
}

fn check(what: &'static str, value: f64, ok: bool) -> Result<(), RegimenError> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(RegimenError::Invalid { what, value })
    }
}

impl Regimen {
    /// An empty regimen.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a dose train.
    pub fn with_doses(mut self, d: DoseTrain) -> Result<Self, RegimenError> {
        check("dose start", d.start, true)?;
        check("dose interval", d.interval, d.interval > 0.0 || d.count <= 1)?;
        check("dose amount", d.amount, d.amount >= 0.0)?;
        check("infusion duration", d.duration, d.duration >= 0.0)?;
        if self.n_doses == MAX_TRAINS {
            return Err(RegimenError::Full);
        }
        self.doses[self.n_doses] = d;
        self.n_doses += 1;
        Ok(self)
    }
    /// Adds a window train.
    pub fn with_windows(mut self, w: WindowTrain) -> Result<Self, RegimenError> {
        check("window start", w.start, true)?;
        check("window period", w.period, w.period > 0.0 || w.count <= 1)?;
        check("window duration", w.duration, w.duration > 0.0)?;
        check("window level", w.level, true)?;
        if self.n_windows == MAX_TRAINS {
            return Err(RegimenError::Full);
        }
        self.windows[self.n_windows] = w;
        self.n_windows += 1;
        Ok(self)
    }
    /// The exact conversion of a NONMEM [`Schedule`](insilico_solvers::Schedule)
    /// for parameters `p` (which resolve parameter-valued F, lag, rate and
    /// duration): each dose record becomes a train of `ADDL + 1` doses of
    /// `F·AMT` every II starting at `TIME + lag`, zero-order over the
    /// modelled or data duration (`F·AMT / RATE` for a rate); consecutive
    /// single records of the same amount, target and duration at a constant
    /// spacing merge into one train; exposures become window trains.
    /// Steady-state doses, resets, and more than [`MAX_TRAINS`] trains of
    /// either kind are refused with the reason (the diffsol engine runs them).
    ///
    /// ```
    /// use insilico_kernels::Regimen;
    /// use insilico_solvers::{Dose, Schedule};
    /// let s = Schedule::new().dose(Dose::bolus(0.0, 0, 100.0).repeated(12.0, 3));
    /// let r = Regimen::from_schedule(&s, &[])?;
    /// assert_eq!((r.n_doses, r.doses[0].count, r.doses[0].interval), (1, 4, 12.0));
    /// # Ok::<(), insilico_kernels::RegimenError>(())
    /// ```
    pub fn from_schedule(schedule: &insilico_solvers::Schedule, p: &[f64]) -> Result<Self, RegimenError> {
        use insilico_solvers::{DoseKind, Event, SteadyState};
        let mut trains: Vec<(DoseTrain, Option<usize>)> = Vec::new();
        let mut r = Regimen::new();
        let attr = |a: &insilico_solvers::Attr, what: &'static str, line: Option<usize>| {
            let v = match a {
                insilico_solvers::Attr::Param(i) if *i >= p.len() => f64::NAN,
                a => a.value(p),
            };
            if v.is_finite() {
                Ok(v)
            } else {
                Err(RegimenError::Unsupported { what: format!("a {what} of {v}"), line })
            }
        };
        for ev in &schedule.events {
            match ev {
                Event::Reset { time } => {
                    return Err(RegimenError::Unsupported {
                        what: format!("a reset (EVID 3/4) at t = {time}"),
                        line: None,
                    })
                }
                Event::Exposure(e) => {
                    r = r.with_windows(WindowTrain {
                        start: e.start,
                        period: e.period,
                        count: e.repeats.saturating_add(1),
                        duration: e.duration,
                        level: e.level,
                        input: e.input as u32,
                    })?;
                }
                Event::Dose(d) => {
                    if d.ss != SteadyState::No {
                        return Err(RegimenError::Unsupported {
                            what: "a steady-state dose (SS = 1 or 2)".into(),
                            line: d.line,
                        });
                    }
                    let f = attr(&d.bioavailability, "bioavailability", d.line)?;
                    let lag = attr(&d.lag, "lag time", d.line)?;
                    let amount = f * d.amount;
                    let duration = match &d.kind {
                        DoseKind::Bolus => 0.0,
                        DoseKind::Rate(a) => amount / attr(a, "rate", d.line)?,
                        DoseKind::Duration(a) => attr(a, "duration", d.line)?,
                    };
                    let train = DoseTrain {
                        start: d.time + lag,
                        interval: if d.addl > 0 { d.ii } else { 0.0 },
                        count: d.addl.saturating_add(1),
                        amount,
                        target: d.cmt as u32,
                        duration,
                    };
                    // Merge a single dose into the previous train when it continues it exactly.
                    if let Some((prev, _)) = trains.last_mut() {
                        let same = prev.amount == train.amount
                            && prev.target == train.target
                            && prev.duration == train.duration;
                        if same && train.count == 1 {
                            let next = if prev.count == 1 { train.start - prev.start } else { prev.interval };
                            let expected = prev.start + prev.count as f64 * next;
                            if next > 0.0 && (train.start - expected).abs() <= 1e-12 * expected.abs().max(1.0) {
                                prev.interval = next;
                                prev.count += 1;
                                continue;
                            }
                        }
                    }
                    trains.push((train, d.line));
                }
            }
        }
        if trains.len() > MAX_TRAINS {
            let lines: Vec<String> = trains.iter().filter_map(|t| t.1).map(|l| l.to_string()).collect();
            return Err(RegimenError::Unsupported {
                what: format!(
                    "{} dose trains (the batched integrators hold {MAX_TRAINS}){}",
                    trains.len(),
                    if lines.is_empty() { String::new() } else { format!(", from dataset lines {}", lines.join(", ")) }
                ),
                line: None,
            });
        }
        for (t, _) in trains {
            r = r.with_doses(t)?;
        }
        Ok(r)
    }

    /// Oral/IV boluses of `amount` into `target` at `0, τ, 2τ, …` while `t < horizon`.
    pub fn repeated_bolus(amount: f64, target: u32, tau: f64, horizon: f64) -> Result<Self, RegimenError> {
        check("dosing interval", tau, tau > 0.0)?;
        let count = (horizon / tau).ceil().max(1.0) as u32;
        Regimen::new().with_doses(DoseTrain { start: 0.0, interval: tau, count, amount, target, duration: 0.0 })
    }
}

/// Where a trajectory stands in its regimen.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    next_start: [u32; MAX_TRAINS],
    next_end: [u32; MAX_TRAINS],
    win_open: [u32; MAX_TRAINS],
    win_close: [u32; MAX_TRAINS],
}

#[inline]
fn dose_start(d: &DoseTrain, k: u32) -> f64 {
    d.start + k as f64 * d.interval
}
#[inline]
fn dose_end(d: &DoseTrain, k: u32) -> f64 {
    d.start + k as f64 * d.interval + d.duration
}
#[inline]
fn win_open(w: &WindowTrain, k: u32) -> f64 {
    w.start + k as f64 * w.period
}
#[inline]
fn win_close(w: &WindowTrain, k: u32) -> f64 {
    w.start + k as f64 * w.period + w.duration
}

impl Cursor {
    /// Time of the next breakpoint (∞ if none).
    #[inline]
    pub(crate) fn next_time(&self, r: &Regimen) -> f64 {
        let mut t = f64::INFINITY;
        for (i, d) in r.doses[..r.n_doses].iter().enumerate() {
            if self.next_start[i] < d.count {
                t = t.min(dose_start(d, self.next_start[i]));
            }
            if d.duration > 0.0 && self.next_end[i] < self.next_start[i] {
                t = t.min(dose_end(d, self.next_end[i]));
            }
        }
        for (i, w) in r.windows[..r.n_windows].iter().enumerate() {
            if self.win_open[i] < w.count {
                t = t.min(win_open(w, self.win_open[i]));
            }
            if self.win_close[i] < self.win_open[i] {
                t = t.min(win_close(w, self.win_close[i]));
            }
        }
        t
    }

    /// Applies every breakpoint at or before `t`: boluses to `x`, infusion
    /// rates to `rate`, window levels to `u`. Returns whether `x` jumped.
    #[inline]
    pub(crate) fn apply<const N: usize>(
        &mut self,
        r: &Regimen,
        t: f64,
        x: &mut [f64; N],
        rate: &mut [f64; N],
        u: &mut [f64],
    ) -> bool {
        let mut jumped = false;
        for (i, d) in r.doses[..r.n_doses].iter().enumerate() {
            let tg = d.target as usize;
            while self.next_start[i] < d.count && dose_start(d, self.next_start[i]) <= t {
                if d.duration > 0.0 {
                    rate[tg] += d.amount / d.duration;
                } else {
                    x[tg] += d.amount;
                    jumped = true;
                }
                self.next_start[i] += 1;
            }
            if d.duration > 0.0 {
                while self.next_end[i] < self.next_start[i] && dose_end(d, self.next_end[i]) <= t {
                    rate[tg] -= d.amount / d.duration;
                    self.next_end[i] += 1;
                }
            }
        }
        // No round-off residue once no infusion into a state runs (checked over
        // every train into that state: another train's infusion may still run).
        let doses = &r.doses[..r.n_doses];
        for (i, d) in doses.iter().enumerate() {
            if d.duration > 0.0 && self.next_end[i] == self.next_start[i] {
                let running = doses
                    .iter()
                    .enumerate()
                    .any(|(j, e)| e.target == d.target && e.duration > 0.0 && self.next_end[j] < self.next_start[j]);
                if !running {
                    rate[d.target as usize] = 0.0;
                }
            }
        }
        for (i, w) in r.windows[..r.n_windows].iter().enumerate() {
            let k = w.input as usize;
            while self.win_open[i] < w.count && win_open(w, self.win_open[i]) <= t {
                u[k] += w.level;
                self.win_open[i] += 1;
            }
            while self.win_close[i] < self.win_open[i] && win_close(w, self.win_close[i]) <= t {
                u[k] -= w.level;
                self.win_close[i] += 1;
            }
        }
        jumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_expand_in_time_order() {
        let r = Regimen::new()
            .with_doses(DoseTrain { start: 0.0, interval: 12.0, count: 3, amount: 100.0, target: 0, duration: 0.0 })
            .unwrap()
            .with_doses(DoseTrain { start: 1.0, interval: 24.0, count: 2, amount: 60.0, target: 1, duration: 30.0 })
            .unwrap();
        let mut c = Cursor::default();
        let (mut x, mut rate, mut u) = ([0.0; 2], [0.0; 2], [0.0; 0]);
        let mut times = Vec::new();
        let mut t = c.next_time(&r);
        while t.is_finite() {
            times.push(t);
            c.apply(&r, t, &mut x, &mut rate, &mut u);
            if t == 25.0 {
                assert!((rate[1] - 4.0).abs() < 1e-15, "two overlapping infusions of 2 mg/h");
            }
            t = c.next_time(&r);
        }
        assert_eq!(times, vec![0.0, 1.0, 12.0, 24.0, 25.0, 31.0, 55.0]);
        assert_eq!(x, [300.0, 0.0]);
        assert_eq!(rate, [0.0, 0.0]);
    }

    #[test]
    fn an_idle_train_does_not_stop_another_trains_infusion_into_the_same_state() {
        // A finished-or-not-yet-started infusion train must not zero the rate of
        // another train's running infusion into the same state.
        let r = Regimen::new()
            .with_doses(DoseTrain { start: 0.0, interval: 0.0, count: 1, amount: 100.0, target: 0, duration: 5.0 })
            .unwrap()
            .with_doses(DoseTrain { start: 15.0, interval: 24.0, count: 2, amount: 150.0, target: 0, duration: 5.0 })
            .unwrap();
        let mut c = Cursor::default();
        let (mut x, mut rate, mut u) = ([0.0; 1], [0.0; 1], [0.0; 0]);
        let mut t = c.next_time(&r);
        let mut seen = Vec::new();
        while t.is_finite() {
            c.apply(&r, t, &mut x, &mut rate, &mut u);
            seen.push((t, rate[0]));
            t = c.next_time(&r);
        }
        assert_eq!(seen, vec![(0.0, 20.0), (5.0, 0.0), (15.0, 30.0), (20.0, 0.0), (39.0, 30.0), (44.0, 0.0)]);
    }

    #[test]
    fn invalid_trains_are_refused() {
        assert!(Regimen::repeated_bolus(100.0, 0, 0.0, 10.0).is_err());
        assert!(Regimen::new().with_doses(DoseTrain { amount: -1.0, count: 1, ..Default::default() }).is_err());
        assert_eq!(Regimen::repeated_bolus(1.0, 0, 6.0, 336.0).unwrap().doses[0].count, 56);
        assert_eq!(Regimen::repeated_bolus(1.0, 0, 24.0, 336.0).unwrap().doses[0].count, 14);
    }
}
