//! Latent-state filtering for models with process noise declared on their
//! states (`noise: s ~ expr`, the SD per unit time; docs/models.md).
//!
//! Between records the states follow the Itô SDE
//! `dx = (f(x, θ, t) + R(t)) dt + diag(g(x, θ, t)) dW` (`R`: running
//! infusions; doses are jumps, as in every engine), and each observation is
//! `y = h(x) + ε` with its output's residual error model ([`ErrorModel`]).
//!
//! | filter | what it does |
//! |---|---|
//! | [`FilterMethod::Ekf`] | continuous-discrete extended Kalman filter: the mean and covariance follow the moment ODEs `dm/dt = f(m) + R`, `dP/dt = J P + P Jᵀ + Q(m, P)` with the model's exact `J = ∂f/∂x`, integrated by the solve layer's ODE methods at the stated tolerance; the measurement update is a square-root (array/QR) update with the exact `H = ∂h/∂x` |
//! | [`FilterMethod::Ukf`] | continuous-discrete unscented Kalman filter: the same moment ODEs with `f`, `g` averaged over spherical cubature points instead of linearised, and an unscented measurement update |
//! | [`FilterMethod::Particle`] | bootstrap particle filter: Euler–Maruyama substeps, systematic resampling, seeded per particle so that results are identical for any thread count; the reference for nonlinear cases |
//!
//! `Q = diag(E[g_i(x)²])` with `E[g_i²] ≈ g_i(m)² + ∇g_iᵀ P ∇g_i` (the noise SD
//! linearised around the mean with its exact state gradient; exact for
//! additive and for multiplicative noise `g_i = s·x_i`).
//!
//! Both filters return the log-likelihood by the prediction-error
//! decomposition (the particle filter: its unbiased estimate), so noise
//! levels can be estimated: [`Filter::estimate_noise_scale`],
//! [`Filter::estimate_parameter`]. Every subject of a NONMEM dataset:
//! [`filter_dataset`], [`estimate_dataset_noise_scale`].
//!
//! ## Example
//! ```
//! use insilico_estimation::filter::{Filter, FilterMethod, FilterOptions, Measurement, ObservedOutput};
//! use insilico_estimation::ErrorModel;
//! use insilico_solvers::{Dose, Schedule};
//! let model = insilico_model::Model::parse(
//!     "parameters: k = 0.2, s = 0.05\nstates: a\nd/dt(a) = -k * a\nnoise: a ~ s * a\noutput: a", "decay")?;
//! let out = ObservedOutput::new(&model, "a", ErrorModel::Additive, &[0.5])?;
//! let filter = Filter::new(&model, &[0.2, 0.05], &[], &[out])?;
//! let schedule = Schedule::new().dose(Dose::bolus(0.0, 0, 10.0));
//! let obs = [Measurement::new(1.0, 0, 8.3), Measurement::new(2.0, 0, 6.5)];
//! let res = filter.run(&schedule, &obs, FilterMethod::Ekf)?;
//! assert_eq!(res.steps.len(), 2);
//! assert!(res.log_likelihood.is_finite() && res.steps[1].cov[0] > 0.0);
//! # Ok::<(), insilico_estimation::EstimationError>(())
//! ```

mod dataset;
mod ekf;
mod events;
mod likelihood;
mod noise;
mod particle;
mod ukf;

use insilico_model::{Model, ModelSystem};
use insilico_solvers::{Method, Schedule};
use nalgebra::DMatrix;

pub use dataset::{estimate_dataset_noise_scale, filter_dataset, DatasetFilterOptions, DatasetOutput, SubjectFilter};
pub use likelihood::{maximize_log_scale, NoiseEstimate};

use crate::error::EstimationError;
use crate::spec::ErrorModel;
use events::{resolve, Forcing, StateChange};
use noise::NoiseModel;

/// Which filter [`Filter::run`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterMethod {
    /// Continuous-discrete extended Kalman filter (moment ODEs, square-root measurement update).
    Ekf,
    /// Continuous-discrete unscented Kalman filter (cubature sigma points in
    /// the moment ODEs and in the measurement update).
    Ukf,
    /// Bootstrap particle filter (Euler–Maruyama, systematic resampling).
    Particle,
}

impl FilterMethod {
    /// `ekf`, `ukf` or `particle` (also `pf`), any case.
    pub fn parse(s: &str) -> Option<FilterMethod> {
        match s.to_ascii_lowercase().as_str() {
            "ekf" => Some(FilterMethod::Ekf),
            "ukf" => Some(FilterMethod::Ukf),
            "particle" | "pf" => Some(FilterMethod::Particle),
            _ => None,
        }
    }
    /// Canonical name.
    pub fn name(&self) -> &'static str {
        match self {
            FilterMethod::Ekf => "ekf",
            FilterMethod::Ukf => "ukf",
            FilterMethod::Particle => "particle",
        }
    }
}

/// Settings of both filters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterOptions {
    /// ODE method of the EKF's moment equations (default Tsit45; a stiff
    /// model may want Bdf, whose Newton matrix then omits the second
    /// derivatives of `f`, which only affects its convergence rate).
    pub method: Method,
    /// Relative tolerance of the moment ODEs.
    pub rtol: f64,
    /// Absolute tolerance of the moment ODEs (state units, and their squares for `P`).
    pub atol: f64,
    /// Start time (the initial mean and covariance hold here). Default: the
    /// earlier of 0 and the first event or observation.
    pub t0: Option<f64>,
    /// Multiplies every declared noise SD (1 = as declared).
    pub noise_scale: f64,
    /// Particles of the particle filter.
    pub particles: usize,
    /// Largest Euler–Maruyama substep of the particle filter (time units);
    /// each interval between breakpoints is cut into equal substeps no longer
    /// than this. The discretisation bias of the moments is O(substep).
    pub substep: f64,
    /// Seed of the particle filter.
    pub seed: u64,
    /// Resample when the effective sample size falls below this fraction of
    /// the particles (1 = after every observation).
    pub resample_below: f64,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            method: Method::Tsit45,
            rtol: 1e-8,
            atol: 1e-10,
            t0: None,
            noise_scale: 1.0,
            particles: 10_000,
            substep: 0.01,
            seed: 20261207,
            resample_below: 0.5,
        }
    }
}

/// A model output that is observed, with its residual error model.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedOutput {
    /// The output's name.
    pub name: String,
    /// Its index among the model's outputs.
    pub output: usize,
    /// Residual error model.
    pub error: ErrorModel,
    /// Its σ (standard deviations, [`ErrorModel::sigma_names`] order).
    pub sigma: Vec<f64>,
}

impl ObservedOutput {
    /// Output `name` of `model` with its error model; checks the name and σ.
    pub fn new(model: &Model, name: &str, error: ErrorModel, sigma: &[f64]) -> Result<ObservedOutput, EstimationError> {
        let names = model.output_names();
        let output = names.iter().position(|n| *n == name).ok_or_else(|| {
            EstimationError::Spec(format!(
                "model {} has no output `{name}` (outputs: {})",
                model.name(),
                names.join(", ")
            ))
        })?;
        let k = error.sigma_names().len();
        if sigma.len() != k || sigma.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(EstimationError::Spec(format!(
                "output `{name}`: the {} error model takes {k} non-negative σ ({}), given {sigma:?}",
                error.name(),
                error.sigma_names().join(", ")
            )));
        }
        Ok(ObservedOutput { name: name.to_string(), output, error, sigma: sigma.to_vec() })
    }
}

/// One observation record for the filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Time (after every event at this time, as in the solve layer).
    pub time: f64,
    /// Index into the filter's observed outputs (the list given to [`Filter::new`]).
    pub output: usize,
    /// The observed value; `None`: predict only (no update, no likelihood term).
    pub value: Option<f64>,
    /// Dataset line, for messages.
    pub line: Option<usize>,
}

impl Measurement {
    /// An observed value of observed output `output` at `time`.
    pub fn new(time: f64, output: usize, value: f64) -> Measurement {
        Measurement { time, output, value: Some(value), line: None }
    }
    /// A prediction-only point.
    pub fn predict(time: f64, output: usize) -> Measurement {
        Measurement { time, output, value: None, line: None }
    }
}

/// The filter's state at one measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterStep {
    /// Time.
    pub time: f64,
    /// Index into the observed outputs.
    pub output: usize,
    /// The observed value (natural scale), if any.
    pub observed: Option<f64>,
    /// Dataset line, if known.
    pub line: Option<usize>,
    /// Predicted output before the update, natural scale (EKF: `h(m⁻)`;
    /// particle filter: the weighted mean of `h(x)`).
    pub predicted: f64,
    /// Variance of the innovation on the comparison scale (log scale for the
    /// exponential error model): `H P⁻ Hᵀ + R` (particle filter: `Var(h) + E[R]`).
    pub predicted_variance: f64,
    /// Mean of the states before the update.
    pub prior_mean: Vec<f64>,
    /// Covariance before the update (n × n, row-major).
    pub prior_cov: Vec<f64>,
    /// Mean after the update (the filtered mean).
    pub mean: Vec<f64>,
    /// Covariance after the update (n × n, row-major).
    pub cov: Vec<f64>,
    /// This observation's log-likelihood term (0 without a value).
    pub log_likelihood: f64,
    /// Particle filter: effective sample size after weighting.
    pub ess: Option<f64>,
}

impl FilterStep {
    /// Filtered standard deviations (square roots of the covariance diagonal).
    pub fn sd(&self) -> Vec<f64> {
        let n = self.mean.len();
        (0..n).map(|i| self.cov[i * n + i].max(0.0).sqrt()).collect()
    }
}

/// What [`Filter::run`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterResult {
    /// The filter used.
    pub method: FilterMethod,
    /// One step per measurement, in time order (record order at equal times).
    pub steps: Vec<FilterStep>,
    /// Σ of the steps' log-likelihood terms (Gaussian, including `−½ log 2π`).
    pub log_likelihood: f64,
    /// Number of measurements with a value.
    pub n_obs: usize,
}

/// A model with fixed parameters, bound to covariates, with observed outputs
/// and an initial mean and covariance: ready to filter a schedule and its
/// measurements.
#[derive(Debug, Clone)]
pub struct Filter {
    pub(crate) sys: ModelSystem,
    pub(crate) params: Vec<f64>,
    pub(crate) outputs: Vec<ObservedOutput>,
    pub(crate) mean0: Vec<f64>,
    pub(crate) cov0: DMatrix<f64>,
    pub(crate) noise: NoiseModel,
    pub(crate) opts: FilterOptions,
    /// Name in messages (a subject's ID, say).
    label: String,
}

/// What an engine reports from a measurement update.
pub(crate) struct Update {
    pub predicted: f64,
    pub variance: f64,
    pub log_likelihood: f64,
    pub ess: Option<f64>,
}

/// One filter's state and its four operations; [`Filter::drive`] runs any
/// of them through a schedule.
pub(crate) trait Engine {
    /// Propagates from `t0` to `t1` under `forcing`.
    fn propagate(&mut self, t0: f64, t1: f64, forcing: &Forcing) -> Result<(), EstimationError>;
    /// `x[cmt] += amount` (a bolus: deterministic, so the covariance is unchanged).
    fn jump(&mut self, cmt: usize, amount: f64);
    /// Every state to zero (EVID 3): mean and covariance to zero.
    fn reset(&mut self);
    /// Mean and covariance (row-major).
    fn moments(&self) -> (Vec<f64>, Vec<f64>);
    /// Measurement update at `t` (`y` on the natural scale; `None`: predict only).
    fn update(&mut self, t: f64, out: &ObservedOutput, y: Option<f64>) -> Result<Update, EstimationError>;
}

impl Filter {
    /// Binds `model` to parameters `params` (the full `θ`, as
    /// [`Model::default_params`] lays it out) and covariate values (model
    /// order; missing ones take the defaults), observed through `outputs`.
    /// The initial mean is the model's initial state (`s(0) = ...`), with
    /// zero covariance; see [`Filter::with_initial`].
    pub fn new(
        model: &Model,
        params: &[f64],
        covariates: &[f64],
        outputs: &[ObservedOutput],
    ) -> Result<Filter, EstimationError> {
        model.check_params(params)?;
        let sys = ModelSystem::new(model, covariates)?;
        let names = model.output_names();
        for o in outputs {
            if names.get(o.output) != Some(&o.name.as_str()) {
                return Err(EstimationError::Spec(format!(
                    "observed output `{}` (index {}) is not an output of model {}",
                    o.name,
                    o.output,
                    model.name()
                )));
            }
        }
        let n = model.nstates();
        let mean0 = sys.initial_state(params);
        Ok(Filter {
            sys,
            params: params.to_vec(),
            outputs: outputs.to_vec(),
            mean0,
            cov0: DMatrix::zeros(n, n),
            noise: NoiseModel::new(model)?,
            opts: FilterOptions::default(),
            label: model.name().to_string(),
        })
    }

    /// Sets the initial mean and covariance (n × n, row-major; symmetric
    /// positive semi-definite).
    pub fn with_initial(mut self, mean: &[f64], cov: &[f64]) -> Result<Filter, EstimationError> {
        let n = self.nstates();
        if mean.len() != n || cov.len() != n * n {
            return Err(EstimationError::Spec(format!(
                "the initial mean needs {n} values and the covariance {} (row-major), given {} and {}",
                n * n,
                mean.len(),
                cov.len()
            )));
        }
        if mean.iter().chain(cov).any(|v| !v.is_finite()) {
            return Err(EstimationError::Spec("the initial mean and covariance must be finite".into()));
        }
        let p = DMatrix::from_row_slice(n, n, cov);
        let scale = p.amax().max(f64::MIN_POSITIVE);
        if (&p - p.transpose()).amax() > 1e-12 * scale {
            return Err(EstimationError::Spec("the initial covariance is not symmetric".into()));
        }
        let min_eig = p.clone().symmetric_eigenvalues().min();
        if min_eig < -1e-12 * scale {
            return Err(EstimationError::Spec(format!(
                "the initial covariance is not positive semi-definite (smallest eigenvalue {min_eig})"
            )));
        }
        self.mean0 = mean.to_vec();
        self.cov0 = p;
        Ok(self)
    }

    /// Sets the options.
    pub fn with_options(mut self, opts: FilterOptions) -> Filter {
        self.opts = opts;
        self
    }

    /// Names the filter in messages (a subject's ID, say; default: the model's name).
    pub fn with_label(mut self, label: &str) -> Filter {
        self.label = label.to_string();
        self
    }

    pub(crate) fn label(&self) -> String {
        self.label.clone()
    }

    /// The options in force.
    pub fn options(&self) -> &FilterOptions {
        &self.opts
    }
    /// The model.
    pub fn model(&self) -> &Model {
        self.sys.model()
    }
    /// The parameter vector.
    pub fn params(&self) -> &[f64] {
        &self.params
    }
    /// Number of states.
    pub fn nstates(&self) -> usize {
        self.sys.model().nstates()
    }
    /// The observed outputs.
    pub fn outputs(&self) -> &[ObservedOutput] {
        &self.outputs
    }
    /// Whether the model declares process noise on any state.
    pub fn has_noise(&self) -> bool {
        !self.noise.is_empty()
    }

    /// Filters `measurements` (any order; processed in time order, record
    /// order at equal times) under `schedule` with `method`.
    pub fn run(
        &self,
        schedule: &Schedule,
        measurements: &[Measurement],
        method: FilterMethod,
    ) -> Result<FilterResult, EstimationError> {
        match method {
            FilterMethod::Ekf => {
                let mut e = ekf::Ekf::new(self);
                self.drive(&mut e, schedule, measurements, method)
            }
            FilterMethod::Ukf => {
                let mut e = ukf::Ukf::new(self);
                self.drive(&mut e, schedule, measurements, method)
            }
            FilterMethod::Particle => {
                let mut e = particle::ParticleFilter::new(self)?;
                self.drive(&mut e, schedule, measurements, method)
            }
        }
    }

    /// Simulates one sample path of the SDE (Euler–Maruyama with the particle
    /// filter's substep and seed, from `N(m₀, P₀)`) and draws each
    /// measurement's value from its output's error model: `measurements`
    /// with their values replaced (times, outputs and lines kept, in time
    /// order), and the true states at each.
    pub fn simulate(
        &self,
        schedule: &Schedule,
        measurements: &[Measurement],
    ) -> Result<(Vec<Measurement>, Vec<Vec<f64>>), EstimationError> {
        let mut path = particle::Path::new(self)?;
        let res = self.drive(&mut path, schedule, measurements, FilterMethod::Particle)?;
        let sim = res
            .steps
            .iter()
            .zip(&path.values)
            .map(|(s, &v)| Measurement { time: s.time, output: s.output, value: Some(v), line: s.line })
            .collect();
        Ok((sim, res.steps.into_iter().map(|s| s.mean).collect()))
    }

    /// The EKF's log-likelihood of `measurements` (prediction-error decomposition).
    pub fn log_likelihood(&self, schedule: &Schedule, measurements: &[Measurement]) -> Result<f64, EstimationError> {
        Ok(self.run(schedule, measurements, FilterMethod::Ekf)?.log_likelihood)
    }

    fn check_measurement(&self, m: &Measurement) -> Result<(), EstimationError> {
        let at = || match m.line {
            Some(l) => format!("measurement at t = {} (line {l})", m.time),
            None => format!("measurement at t = {}", m.time),
        };
        if !m.time.is_finite() {
            return Err(EstimationError::Filter(format!("{}: the time is not finite", at())));
        }
        let Some(out) = self.outputs.get(m.output) else {
            return Err(EstimationError::Filter(format!(
                "{}: observed output {} but the filter has {} observed outputs",
                at(),
                m.output,
                self.outputs.len()
            )));
        };
        if let Some(y) = m.value {
            if !y.is_finite() || (out.error.log_scale() && y <= 0.0) {
                return Err(EstimationError::Filter(format!(
                    "{}: value {y} of output `{}` cannot be used by the {} error model",
                    at(),
                    out.name,
                    out.error.name()
                )));
            }
        }
        Ok(())
    }

    fn drive(
        &self,
        engine: &mut dyn Engine,
        schedule: &Schedule,
        measurements: &[Measurement],
        method: FilterMethod,
    ) -> Result<FilterResult, EstimationError> {
        let m = self.model();
        let events = resolve(schedule, &self.params, m.nstates(), m.inputs().len())?;
        let mut order: Vec<usize> = (0..measurements.len()).collect();
        order.sort_by(|&a, &b| measurements[a].time.total_cmp(&measurements[b].time).then(a.cmp(&b)));
        for mm in measurements {
            self.check_measurement(mm)?;
        }
        let first = events.first().map(|e| e.time).into_iter().chain(order.first().map(|&k| measurements[k].time));
        let t0 = self.opts.t0.unwrap_or_else(|| first.fold(0.0, f64::min));
        if let Some(e) = events.first().filter(|e| e.time < t0) {
            return Err(EstimationError::Filter(format!("an event at t = {} precedes the start t0 = {t0}", e.time)));
        }
        if let Some(&k) = order.first().filter(|&&k| measurements[k].time < t0) {
            return Err(EstimationError::Filter(format!(
                "a measurement at t = {} precedes the start t0 = {t0}",
                measurements[k].time
            )));
        }
        let mut forcing = Forcing::new(m.nstates(), vec![0.0; m.inputs().len()]);
        let mut t = t0;
        let mut ei = 0;
        let mut steps = Vec::with_capacity(measurements.len());
        let mut total = 0.0;
        let mut n_obs = 0;
        for k in order {
            let mm = &measurements[k];
            while ei < events.len() && events[ei].time <= mm.time {
                let te = events[ei].time;
                engine.propagate(t, te, &forcing)?;
                t = te;
                while ei < events.len() && events[ei].time == te {
                    match forcing.apply(&events[ei].change) {
                        StateChange::None => {}
                        StateChange::Jump(cmt, amount) => engine.jump(cmt, amount),
                        StateChange::Reset => engine.reset(),
                    }
                    ei += 1;
                }
            }
            engine.propagate(t, mm.time, &forcing)?;
            t = mm.time;
            let (prior_mean, prior_cov) = engine.moments();
            let out = &self.outputs[mm.output];
            let up = engine.update(t, out, mm.value).map_err(|e| match (e, mm.line) {
                (EstimationError::Filter(r), Some(l)) => EstimationError::Filter(format!("line {l}: {r}")),
                (e, _) => e,
            })?;
            let (mean, cov) = engine.moments();
            if mm.value.is_some() {
                n_obs += 1;
                total += up.log_likelihood;
            }
            steps.push(FilterStep {
                time: t,
                output: mm.output,
                observed: mm.value,
                line: mm.line,
                predicted: up.predicted,
                predicted_variance: up.variance,
                prior_mean,
                prior_cov,
                mean,
                cov,
                log_likelihood: up.log_likelihood,
                ess: up.ess,
            });
        }
        Ok(FilterResult { method, steps, log_likelihood: total, n_obs })
    }
}

/// The observation on the comparison scale and the prediction's value and
/// its derivative factor there: `(y, h̃, dh̃/dh)`.
pub(crate) fn comparison(out: &ObservedOutput, y: f64, h: f64) -> (f64, f64, f64) {
    if out.error.log_scale() {
        (y.ln(), h.ln(), 1.0 / h)
    } else {
        (y, h, 1.0)
    }
}
