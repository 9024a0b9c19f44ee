//! Interventions in time: doses in the full NONMEM event grammar, resets and
//! exposure windows of exogenous inputs.
//!
//! A [`Schedule`] is what a dataset's dosing records (or a regimen written in
//! code) become. The solver expands it for a given parameter vector into
//! breakpoints (see the private `events` module) and integrates segment by segment.

/// A dosing attribute that is either a fixed value or one of the model's
/// parameters (so that gradients flow through it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attr {
    /// A fixed value (for example read from a dataset column).
    Value(f64),
    /// The value of parameter `θ[i]`.
    Param(usize),
}

impl Attr {
    /// The attribute's value for parameters `p`.
    pub fn value(&self, p: &[f64]) -> f64 {
        match *self {
            Attr::Value(v) => v,
            Attr::Param(i) => p[i],
        }
    }
    /// Index of the parameter this attribute is, if any.
    pub fn param(&self) -> Option<usize> {
        match *self {
            Attr::Value(_) => None,
            Attr::Param(i) => Some(i),
        }
    }
}

/// How a dose enters its compartment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DoseKind {
    /// Instantaneous: the amount `F·AMT` is added to the state.
    Bolus,
    /// Zero-order input at rate `R` (amount per time); lasts `F·AMT/R`.
    /// NONMEM's RATE > 0 (data) or RATE = -1 (modelled rate).
    Rate(Attr),
    /// Zero-order input over duration `D`; runs at `F·AMT/D`.
    /// NONMEM's RATE = -2 (modelled duration).
    Duration(Attr),
}

/// Steady-state flag of a dose (NONMEM's SS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteadyState {
    /// SS = 0: an ordinary dose.
    No,
    /// SS = 1: reset every state, then bring the system to the periodic
    /// steady state of this dose repeated every II (or, with II = 0 and an
    /// infusion, to the steady state of a constant infusion).
    Reset,
    /// SS = 2: add the steady state to the current state (superposition).
    Add,
}

/// One dosing record.
#[derive(Debug, Clone, PartialEq)]
pub struct Dose {
    /// Record time (the dose itself happens at `time + lag`).
    pub time: f64,
    /// Index of the dosed state (0-based).
    pub cmt: usize,
    /// Amount (AMT) before bioavailability.
    pub amount: f64,
    /// Bolus or zero-order input.
    pub kind: DoseKind,
    /// Bioavailable fraction F.
    pub bioavailability: Attr,
    /// Lag time.
    pub lag: Attr,
    /// Interdose interval for ADDL and SS.
    pub ii: f64,
    /// Number of additional doses at `time + k·ii`, k = 1..=addl.
    pub addl: u32,
    /// Steady-state flag.
    pub ss: SteadyState,
    /// Where the dose came from (dataset line), for error messages.
    pub line: Option<usize>,
}

impl Dose {
    /// A bolus of `amount` into state `cmt` at `time`, F = 1, no lag.
    pub fn bolus(time: f64, cmt: usize, amount: f64) -> Self {
        Dose {
            time,
            cmt,
            amount,
            kind: DoseKind::Bolus,
            bioavailability: Attr::Value(1.0),
            lag: Attr::Value(0.0),
            ii: 0.0,
            addl: 0,
            ss: SteadyState::No,
            line: None,
        }
    }
    /// A zero-order input of `amount` into `cmt` starting at `time` lasting `duration`.
    pub fn infusion(time: f64, cmt: usize, amount: f64, duration: f64) -> Self {
        Dose { kind: DoseKind::Duration(Attr::Value(duration)), ..Dose::bolus(time, cmt, amount) }
    }
    /// Repeats the dose `addl` more times every `ii`.
    pub fn repeated(mut self, ii: f64, addl: u32) -> Self {
        self.ii = ii;
        self.addl = addl;
        self
    }
}

/// A window during which exogenous input `input` is raised by `level`
/// (repeated `repeats` more times every `period`). Overlapping windows add.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    /// Index into the system's inputs `u`.
    pub input: usize,
    /// Level added to the input while the window is open.
    pub level: f64,
    /// Opening time of the first window.
    pub start: f64,
    /// Length of each window.
    pub duration: f64,
    /// Period between window openings (ignored when `repeats` is 0).
    pub period: f64,
    /// Number of additional windows.
    pub repeats: u32,
}

/// One scheduled intervention.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A dose (EVID 1; EVID 4 is a [`Event::Reset`] followed by a dose).
    Dose(Dose),
    /// EVID 3: every state to its initial value... in NONMEM terms, to zero;
    /// running infusions stop.
    Reset {
        /// Time of the reset.
        time: f64,
    },
    /// A window of an exogenous input.
    Exposure(Exposure),
}

impl Event {
    /// The record time of the event.
    pub fn time(&self) -> f64 {
        match self {
            Event::Dose(d) => d.time,
            Event::Reset { time } => *time,
            Event::Exposure(e) => e.start,
        }
    }
}

/// Interventions in record order (records at equal times act in this order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// The events, in record order.
    pub events: Vec<Event>,
}

impl Schedule {
    /// An empty schedule.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a dose.
    pub fn dose(mut self, d: Dose) -> Self {
        self.events.push(Event::Dose(d));
        self
    }
    /// Appends a reset.
    pub fn reset(mut self, time: f64) -> Self {
        self.events.push(Event::Reset { time });
        self
    }
    /// Appends an exposure window.
    pub fn exposure(mut self, e: Exposure) -> Self {
        self.events.push(Event::Exposure(e));
        self
    }
}
