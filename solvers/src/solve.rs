//! Problems, methods, options, solutions and errors; [`solve`].

use crate::driver::{self, Dir, ObsSink};
use crate::schedule::Schedule;
use crate::system::System;

/// Errors of the solve layer. Each carries the model time at which it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The step size fell below the solver's minimum (a stiff blow-up, a
    /// singularity, or tolerances too tight).
    #[error("step size too small at t = {t}")]
    StepSizeTooSmall {
        /// Model time of the failure.
        t: f64,
    },
    /// The right-hand side produced NaN or infinity.
    #[error("the state became NaN or infinite at t = {t} (check parameters and the right-hand side)")]
    NonFinite {
        /// Model time of the failure.
        t: f64,
    },
    /// More steps than `Options::max_steps`.
    #[error("more than {max_steps} steps by t = {t}; raise the config key `max_steps` (Options::max_steps) or loosen the tolerances (`rtol`, `atol`)")]
    MaxSteps {
        /// Model time of the failure.
        t: f64,
        /// The limit that was hit.
        max_steps: usize,
    },
    /// Any other failure reported by diffsol.
    #[error("solver failed at t = {t}: {reason}")]
    Solver {
        /// Model time of the failure.
        t: f64,
        /// diffsol's message.
        reason: String,
    },
    /// A dose that cannot be given (bad compartment, negative amount, NaN lag, ...).
    #[error("invalid dose{}: {reason}", line.map(|l| format!(" (dataset line {l})")).unwrap_or_default())]
    InvalidDose {
        /// Dataset line of the dose record, when known.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The problem itself is inconsistent (lengths, NaN parameters, ...).
    #[error("invalid problem: {0}")]
    InvalidProblem(String),
    /// A steady state could not be found.
    #[error("steady state at t = {t} did not converge: {reason}")]
    SteadyState {
        /// Record time of the steady-state dose.
        t: f64,
        /// Why.
        reason: String,
    },
}

/// An integration method (all from diffsol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Variable-order BDF (stiff).
    Bdf,
    /// ESDIRK3(4) (stiff, one-step).
    Esdirk34,
    /// TR-BDF2 (stiff, one-step, L-stable).
    TrBdf2,
    /// Tsitouras 4(5) explicit Runge–Kutta (non-stiff).
    Tsit45,
}

impl Method {
    /// All methods.
    pub const ALL: [Method; 4] = [Method::Bdf, Method::Esdirk34, Method::TrBdf2, Method::Tsit45];
    /// Parses `bdf`, `esdirk34`, `tr-bdf2`/`trbdf2`, `tsit45` (any case).
    pub fn parse(s: &str) -> Option<Method> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "bdf" => Some(Method::Bdf),
            "esdirk34" => Some(Method::Esdirk34),
            "trbdf2" => Some(Method::TrBdf2),
            "tsit45" | "tsit5" => Some(Method::Tsit45),
            _ => None,
        }
    }
    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Bdf => "bdf",
            Method::Esdirk34 => "esdirk34",
            Method::TrBdf2 => "tr-bdf2",
            Method::Tsit45 => "tsit45",
        }
    }
}

/// Shared solver knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance (state units).
    pub atol: f64,
    /// Maximum number of steps over the whole solve.
    pub max_steps: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { rtol: 1e-6, atol: 1e-9, max_steps: 1_000_000 }
    }
}

/// A requested observation: output `output` of the system at `time`.
///
/// An observation at the time of a dose sees the dose (it is taken after all
/// events at that time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Time.
    pub time: f64,
    /// Output index (see [`System::output`]).
    pub output: usize,
}

/// Everything a solve needs.
pub struct Problem<'a> {
    /// The right-hand side.
    pub system: &'a dyn System,
    /// Parameters θ.
    pub params: Vec<f64>,
    /// Initial state at `t0`.
    pub x0: Vec<f64>,
    /// Baseline exogenous inputs (exposure windows add to them).
    pub u0: Vec<f64>,
    /// Start time.
    pub t0: f64,
    /// Interventions.
    pub schedule: Schedule,
    /// Observations, in any order.
    pub observations: Vec<Observation>,
    /// Integrate at least until here (defaults to the last observation).
    pub t_end: Option<f64>,
}

impl<'a> Problem<'a> {
    /// A problem starting from zero state at t = 0 with no schedule or observations.
    pub fn new(system: &'a dyn System, params: Vec<f64>) -> Self {
        Problem {
            system,
            params,
            x0: vec![0.0; system.nstates()],
            u0: vec![0.0; system.ninputs()],
            t0: 0.0,
            schedule: Schedule::new(),
            observations: Vec::new(),
            t_end: None,
        }
    }
    /// Sets the schedule.
    pub fn with_schedule(mut self, s: Schedule) -> Self {
        self.schedule = s;
        self
    }
    /// Observes output `output` at each of `times`.
    pub fn observe(mut self, output: usize, times: &[f64]) -> Self {
        self.observations.extend(times.iter().map(|&time| Observation { time, output }));
        self
    }
    /// Sets the initial state.
    pub fn with_x0(mut self, x0: Vec<f64>) -> Self {
        self.x0 = x0;
        self
    }

    /// Checks lengths and finiteness.
    pub fn validate(&self) -> Result<(), Error> {
        let s = self.system;
        let names = s.param_names();
        if self.params.len() != s.nparams() {
            return Err(Error::InvalidProblem(format!(
                "{} parameters given, the system has {}",
                self.params.len(),
                s.nparams()
            )));
        }
        for (i, v) in self.params.iter().enumerate() {
            if !v.is_finite() {
                let name = names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
                return Err(Error::InvalidProblem(format!("parameter {name} is {v}")));
            }
        }
        if self.x0.len() != s.nstates() || self.x0.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidProblem(format!("initial state must be {} finite values", s.nstates())));
        }
        if self.u0.len() != s.ninputs() {
            return Err(Error::InvalidProblem(format!(
                "{} inputs given, the system has {}",
                self.u0.len(),
                s.ninputs()
            )));
        }
        for o in &self.observations {
            if !o.time.is_finite() || o.time < self.t0 || o.output >= s.noutputs() {
                return Err(Error::InvalidProblem(format!(
                    "observation at t = {} of output {} is outside the problem",
                    o.time, o.output
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn horizon(&self) -> f64 {
        let last = self.observations.iter().map(|o| o.time).fold(self.t0, f64::max);
        self.t_end.map_or(last, |t| t.max(last))
    }
}

/// Counters of a solve.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Accepted steps.
    pub steps: usize,
    /// Smooth segments integrated.
    pub segments: usize,
}

/// The result of [`solve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Observation times, in the order of `Problem::observations`.
    pub times: Vec<f64>,
    /// Output values at the observations.
    pub outputs: Vec<f64>,
    /// Full state at each observation.
    pub states: Vec<Vec<f64>>,
    /// State at the horizon.
    pub final_state: Vec<f64>,
    /// Counters.
    pub stats: Stats,
}

struct Collect<'s> {
    sys: &'s dyn System,
    p: &'s [f64],
    sol: &'s mut Solution,
}

impl ObsSink for Collect<'_> {
    fn observe(&mut self, idx: usize, obs: &Observation, x: &[f64], _s: &[f64]) {
        self.sol.outputs[idx] = self.sys.output(obs.output, obs.time, x, self.p);
        self.sol.states[idx] = x.to_vec();
    }
}

/// Solves `problem` with `method`: integrates segment by segment across the
/// schedule's breakpoints and evaluates the observations.
///
/// # Example
/// ```
/// use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule, System};
/// struct Decay;
/// impl System for Decay {
///     fn nstates(&self) -> usize { 1 }
///     fn nparams(&self) -> usize { 1 }
///     fn rhs(&self, _t: f64, x: &[f64], _u: &[f64], p: &[f64], dx: &mut [f64]) { dx[0] = -p[0] * x[0]; }
///     fn jvp(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -p[0] * v[0]; }
///     fn vjp_state(&self, _t: f64, _x: &[f64], _u: &[f64], p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -p[0] * w[0]; }
///     fn jvp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], v: &[f64], o: &mut [f64]) { o[0] = -x[0] * v[0]; }
///     fn vjp_params(&self, _t: f64, x: &[f64], _u: &[f64], _p: &[f64], w: &[f64], o: &mut [f64]) { o[0] = -x[0] * w[0]; }
/// }
/// // 100 mg every 12 h, three doses; observe at 30 h.
/// let sched = Schedule::new().dose(Dose::bolus(0.0, 0, 100.0).repeated(12.0, 2));
/// let prob = Problem::new(&Decay, vec![0.1]).with_schedule(sched).observe(0, &[30.0]);
/// let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-8, atol: 1e-10, ..Options::default() }).unwrap();
/// let exact: f64 = [30.0f64, 18.0, 6.0].iter().map(|dt| 100.0 * (-0.1 * dt).exp()).sum();
/// assert!((sol.outputs[0] - exact).abs() < 1e-5 * exact);
/// ```
pub fn solve(problem: &Problem, method: Method, options: &Options) -> Result<Solution, Error> {
    problem.validate()?;
    let n = problem.observations.len();
    let mut sol = Solution {
        times: problem.observations.iter().map(|o| o.time).collect(),
        outputs: vec![0.0; n],
        states: vec![Vec::new(); n],
        final_state: Vec::new(),
        stats: Stats::default(),
    };
    let dirs: Vec<Dir> = Vec::new();
    let run = {
        let mut sink = Collect { sys: problem.system, p: &problem.params, sol: &mut sol };
        driver::forward(problem, method, options, &dirs, &mut sink, None)?
    };
    sol.final_state = run.x;
    sol.stats = run.stats;
    Ok(sol)
}
