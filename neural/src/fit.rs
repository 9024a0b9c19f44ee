//! Fitting hybrid (or purely mechanistic) models to NONMEM-layout data by
//! maximising a joint posterior.
//!
//! # The objective
//! For subjects `i` with observations `y_ij` and predictions `f_ij`:
//!
//! ```text
//! J(φ) = Σ_i Σ_j ℓ(y_ij, f_ij; σ)                       residual error (negative log-likelihood)
//!      + Σ_i Σ_k [ η_ik² / (2 ω_k²) + ln ω_k + ½ ln 2π ]  log-normal random effects θ_ik = θ_k·exp(η_ik)
//!      + Σ_k [ (ν/2 + 1) ln ω_k² + ν ω0_k² / (2 ω_k²) ]   weak scaled-inverse-χ² hyperprior (estimated ω only)
//!      + Σ_k (T(θ_k) − μ_k)² / (2 s_k²)                   optional priors on transformed parameters
//!      + ‖w‖² / (2 s_w²)                                   optional Gaussian prior (weight decay) on network weights
//! ```
//!
//! Error models ([`ErrorModel`]): additive `var = a²`, proportional
//! `var = (b f)²`, combined `var = a² + (b f)²`, each with
//! `ℓ = ½ [(y − f)²/var + ln var + ln 2π]`; or log-transform-both-sides,
//! `ℓ` on `ln y − ln f` with variance `a²`. Error parameters are
//! estimated on the log scale.
//!
//! Joint maximisation with an estimated `ω` has a degenerate mode at
//! `ω → 0, η → 0`; the hyperprior (ν = 1, scale the initial ω) removes it and
//! moves the estimate to `ω² = (Σ_i η_ik² + ν ω0²)/(N + ν + 2)`. Fix `ω` to
//! avoid it altogether.
//!
//! # Gradients
//! Per subject, by the fast path ([`crate::fast`], a discrete adjoint whose
//! cost does not grow with the number of weights) when the schedule allows,
//! else by [`insilico_solvers::gradient()`] with [`GradientMethod::Auto`]
//! (forward sensitivities when parameters and states number ≤ 16, adjoint
//! otherwise). Subjects run in parallel (rayon); their contributions are
//! added in subject order, so results do not depend on the thread count.
//!
//! # Optimisers
//! [`Stage::Adam`] and [`Stage::Lbfgs`] (a compact two-loop L-BFGS with an
//! Armijo backtracking line search), run in sequence.
//!
//! # Early stopping
//! With `validation_fraction > 0`, a seeded split holds subjects out of the
//! training objective; every `check_every` iterations their validation loss
//! is computed with the current shared parameters (θ, σ, ω, weights), the
//! best parameters so far are kept, and a stage stops after `patience`
//! checks without improvement. The criterion depends on the mode
//! ([`ValidationCriterion`], reported in [`FitResult::validation_criterion`]):
//!
//! - **Without random effects** (pooled fits, or a spec without `eta`):
//!   [`ValidationCriterion::Typical`], the data NLL of the typical (`η = 0`)
//!   prediction ([`Objective::data_loss_typical`]). The pooled model claims
//!   that every subject follows the typical curve, so scoring that curve on
//!   new subjects is what it is trained for.
//! - **With random effects** (population fits):
//!   [`ValidationCriterion::Conditional`], the post-hoc (conditional)
//!   individual objective of each held-out subject,
//!   `min_η Σ_j ℓ(y_j, f_j(θ e^η)) + Σ_k [η_k²/(2ω_k²) + ln ω_k + ½ ln 2π]`,
//!   with θ, σ, ω and the weights at their current values and η estimated
//!   by MAP ([`Objective::conditional_loss`]: L-BFGS on the η block with the
//!   exact η gradient, warm-started from the previous check's η). The
//!   population model explains a held-out subject by its typical curve *and*
//!   its own η; scoring the η = 0 prediction instead measures between-subject
//!   variability: under a proportional error model one slow subject's
//!   terminal samples, underpredicted 8x by the typical curve, dominate the
//!   loss and favour undertrained parameters that happen to eliminate slowly
//!   (docs/notes/issue-4-early-stopping.md). This is NONMEM's conditional
//!   (post-hoc) evaluation of new subjects.

use std::time::Instant;

use insilico_solvers::{gradient, GradientMethod, Method, ObservationPoint, Options, Problem, Schedule, System};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::fast::{FastRhs, FastWorkspace, Generic, Plan};
use crate::lockstep::{LockWorkspace, LockstepGradient};

/// Errors of fitting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// The fit's specification is inconsistent.
    #[error("invalid fit specification: {0}")]
    Spec(String),
    /// A subject could not be solved.
    #[error("subject `{subject}`: {reason}")]
    Solve {
        /// Subject ID.
        subject: String,
        /// Why.
        reason: String,
    },
}

/// Transform of a parameter to the optimiser's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// `φ = ln θ` (θ > 0).
    Log,
    /// `φ = θ`.
    Identity,
}

impl Transform {
    fn to_phi(self, v: f64) -> f64 {
        match self {
            Transform::Log => v.ln(),
            Transform::Identity => v,
        }
    }
    fn to_theta(self, v: f64) -> f64 {
        match self {
            Transform::Log => v.exp(),
            Transform::Identity => v,
        }
    }
    /// `dθ/dφ` at `θ`.
    fn deriv(self, theta: f64) -> f64 {
        match self {
            Transform::Log => theta,
            Transform::Identity => 1.0,
        }
    }
}

/// A mechanistic parameter of the fit.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Name (as the system calls it).
    pub name: String,
    /// Initial (or fixed) value on the natural scale.
    pub init: f64,
    /// Optimiser scale.
    pub transform: Transform,
    /// Held at `init`.
    pub fixed: bool,
    /// Gaussian prior `(mean, sd)` on the transformed scale.
    pub prior: Option<(f64, f64)>,
    /// Log-normal random effect: initial `ω` and whether it is fixed.
    pub eta: Option<(f64, bool)>,
}

impl ParamSpec {
    /// A free, log-transformed parameter without prior or random effect.
    pub fn new(name: &str, init: f64) -> Self {
        ParamSpec { name: name.into(), init, transform: Transform::Log, fixed: false, prior: None, eta: None }
    }
}

/// Residual error model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorModel {
    /// `var = a²`.
    Additive,
    /// `var = (b f)²`.
    Proportional,
    /// `var = a² + (b f)²`.
    Combined,
    /// Log-transform both sides: `ln y = ln f + ε`, `var = a²`.
    Log,
}

impl ErrorModel {
    /// Parses `additive`, `proportional`, `combined`, `log` (any case).
    pub fn parse(s: &str) -> Option<ErrorModel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "additive" => Some(ErrorModel::Additive),
            "proportional" => Some(ErrorModel::Proportional),
            "combined" => Some(ErrorModel::Combined),
            "log" | "ltbs" | "log-additive" => Some(ErrorModel::Log),
            _ => None,
        }
    }
    /// Names of its σ parameters.
    pub fn sigma_names(&self) -> Vec<&'static str> {
        match self {
            ErrorModel::Additive | ErrorModel::Log => vec!["sigma_add"],
            ErrorModel::Proportional => vec!["sigma_prop"],
            ErrorModel::Combined => vec!["sigma_add", "sigma_prop"],
        }
    }

    /// `(ℓ, ∂ℓ/∂f, ∂ℓ/∂ln σ_k...)` for observation `y`, prediction `f`.
    pub fn nll(&self, y: f64, f: f64, sig: &[f64]) -> (f64, f64, [f64; 2]) {
        const LN2PI: f64 = 1.837_877_066_409_345_5;
        match self {
            ErrorModel::Log => {
                let a2 = sig[0] * sig[0];
                let fc = f.max(1e-300);
                let r = y.max(1e-300).ln() - fc.ln();
                let l = 0.5 * (r * r / a2 + a2.ln() + LN2PI);
                let dl_df = if f > 1e-300 { -r / a2 / fc } else { 0.0 };
                (l, dl_df, [1.0 - r * r / a2, 0.0])
            }
            _ => {
                let (a, b) = match self {
                    ErrorModel::Additive => (sig[0], 0.0),
                    ErrorModel::Proportional => (0.0, sig[0]),
                    _ => (sig[0], sig[1]),
                };
                let var = (a * a + b * b * f * f).max(1e-300);
                let r = y - f;
                let l = 0.5 * (r * r / var + var.ln() + LN2PI);
                let dl_dvar = 0.5 * (1.0 / var - r * r / (var * var));
                let dl_df = -r / var + dl_dvar * 2.0 * b * b * f;
                let da = dl_dvar * 2.0 * a * a;
                let db = dl_dvar * 2.0 * b * b * f * f;
                let g = match self {
                    ErrorModel::Additive => [da, 0.0],
                    ErrorModel::Proportional => [db, 0.0],
                    _ => [da, db],
                };
                (l, dl_df, g)
            }
        }
    }
}

/// A subject to fit: its schedule and observations (output 0 observed).
#[derive(Debug, Clone)]
pub struct FitSubject {
    /// ID as in the dataset.
    pub id: String,
    /// Dosing.
    pub schedule: Schedule,
    /// Start time.
    pub t0: f64,
    /// Observation times.
    pub times: Vec<f64>,
    /// Observed values (same length as `times`).
    pub dv: Vec<f64>,
    /// The model output observed at each time (same length as `times`);
    /// empty: output 0 everywhere.
    pub outputs: Vec<usize>,
}

/// How subjects' gradients are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The fast path when the schedule allows, else generic.
    Auto,
    /// Always [`crate::fast`] (error if a schedule is unsupported).
    Fast,
    /// Always [`insilico_solvers::gradient()`] (with [`GradientMethod::Auto`]).
    Generic,
}

/// The model being fitted.
pub struct Model<'a> {
    /// The (possibly coupled) system; its parameters are the mechanistic
    /// parameters followed by `n_weights` network weights.
    pub system: &'a dyn System,
    /// Its fast-path form, if it has a specialised one (else [`Generic`]).
    pub fast: Option<&'a dyn FastRhs>,
    /// Number of network weights (0 for a mechanistic model).
    pub n_weights: usize,
    /// Initial weights.
    pub weights_init: Vec<f64>,
    /// Gaussian prior sd of the weights (`None`: no penalty).
    pub weight_prior_sd: Option<f64>,
    /// The initial state as a function of a subject's parameters, with its
    /// Jacobian `∂x₀/∂θ` as `(state, parameter, value)` entries (`None`:
    /// [`FitSpec::x0`], fixed). Gradients are chained through it.
    pub initial_state: Option<&'a InitialState>,
}

/// A parameter-dependent initial state: `θ ↦ (x₀, ∂x₀/∂θ entries)`.
pub type InitialState = dyn Fn(&[f64]) -> (Vec<f64>, Vec<(usize, usize, f64)>) + Sync;

/// An optimiser stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Stage {
    /// Adam with learning rate `lr` for `iterations` steps.
    Adam {
        /// Steps.
        iterations: usize,
        /// Learning rate.
        lr: f64,
    },
    /// L-BFGS for at most `iterations` iterations (memory 10).
    Lbfgs {
        /// Iterations.
        iterations: usize,
    },
}

/// An extra term of the objective that depends only on the shared
/// mechanistic parameters and the network weights (e.g.
/// [`crate::shape::FluxShape`]), added by [`Objective::with_penalty`] and
/// [`fit_with_penalty`].
pub trait Penalty: Sync {
    /// The value at mechanistic parameters `theta` (natural scale, typical
    /// values) and weights `w`; adds `∂/∂θ` into `g_theta` and `∂/∂w` into `g_w`.
    fn value_grad(&self, theta: &[f64], w: &[f64], g_theta: &mut [f64], g_w: &mut [f64]) -> f64;
}

/// Everything about a fit but the model and data.
#[derive(Debug, Clone)]
pub struct FitSpec {
    /// Mechanistic parameters in the system's order.
    pub params: Vec<ParamSpec>,
    /// Residual error model.
    pub error: ErrorModel,
    /// Initial σ values (see [`ErrorModel::sigma_names`]).
    pub sigma_init: Vec<f64>,
    /// Hold σ fixed.
    pub sigma_fixed: bool,
    /// Optimiser stages, run in order.
    pub stages: Vec<Stage>,
    /// Fraction of subjects held out for early stopping (0: none).
    pub validation_fraction: f64,
    /// Evaluations of the validation loss without improvement before a stage stops.
    pub patience: usize,
    /// Iterations between validation checks.
    pub check_every: usize,
    /// Seed of the validation split (the weights' seed is the caller's).
    pub seed: u64,
    /// Solver tolerances.
    pub options: Options,
    /// Gradient engine.
    pub engine: Engine,
    /// Initial state (defaults to zeros).
    pub x0: Option<Vec<f64>>,
}

/// How held-out subjects are scored for early stopping (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationCriterion {
    /// Data NLL of the typical prediction (`η = 0`): fits without random effects.
    Typical,
    /// Data NLL plus η prior at each subject's MAP η (post-hoc, IPRED): fits with random effects.
    Conditional,
}

impl ValidationCriterion {
    /// `typical` or `conditional`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ValidationCriterion::Typical => "typical",
            ValidationCriterion::Conditional => "conditional",
        }
    }
}

/// Maximum L-BFGS iterations of a held-out subject's η MAP at each check.
pub const ETA_MAP_ITERATIONS: usize = 50;
/// The η MAP stops once every entry of the η gradient is below this.
pub const ETA_MAP_GTOL: f64 = 1e-3;

/// One entry of the loss history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Iteration (over all stages).
    pub iteration: usize,
    /// Objective on the training subjects.
    pub loss: f64,
    /// Validation loss (criterion [`FitResult::validation_criterion`]), when checked.
    pub validation: Option<f64>,
}

/// Progress report passed to the caller's callback.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Iteration (over all stages).
    pub iteration: usize,
    /// Total planned iterations.
    pub total: usize,
    /// Current objective.
    pub loss: f64,
    /// Last validation loss.
    pub validation: Option<f64>,
}

/// The result of [`fit`].
#[derive(Debug, Clone)]
pub struct FitResult {
    /// Estimated mechanistic parameters (natural scale), system order.
    pub theta: Vec<f64>,
    /// σ estimates.
    pub sigma: Vec<f64>,
    /// ω estimates, one per parameter with a random effect (order of `eta_params`).
    pub omega: Vec<f64>,
    /// Indices of the parameters with random effects.
    pub eta_params: Vec<usize>,
    /// Per training subject: (ID, η values).
    pub etas: Vec<(String, Vec<f64>)>,
    /// Network weights.
    pub weights: Vec<f64>,
    /// Final objective on the training subjects.
    pub loss: f64,
    /// Validation loss at the kept parameters, if any subjects were held out.
    pub validation_loss: Option<f64>,
    /// How the validation loss is computed (`None`: no subjects held out).
    pub validation_criterion: Option<ValidationCriterion>,
    /// IDs of the validation subjects.
    pub validation_ids: Vec<String>,
    /// Loss history.
    pub history: Vec<HistoryPoint>,
    /// Number of gradient evaluations.
    pub n_gradients: usize,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// Optimiser vector at the optimum (for standard errors).
    pub phi: Vec<f64>,
    /// Names of the optimiser vector's entries.
    pub phi_names: Vec<String>,
    /// Which engine computed the gradients (`fast` or `generic`).
    pub engine_used: String,
}

/// The compiled objective over a set of subjects.
pub struct Objective<'a> {
    model: &'a Model<'a>,
    spec: &'a FitSpec,
    subjects: Vec<&'a FitSubject>,
    plans: Vec<Option<Plan>>,
    /// Optimiser-vector layout.
    free_params: Vec<usize>,
    eta_params: Vec<usize>,
    n_sigma_free: usize,
    n_shared: usize,
    x0: Vec<f64>,
    with_eta: bool,
    penalty: Option<&'a dyn Penalty>,
    /// Subjects integrated together ([`crate::lockstep`]), when the model
    /// has a lockstep form and every subject is on the fast path. (The
    /// lockstep form itself is fetched per gradient: an `Objective` holding
    /// a boxed trait object would keep its borrows alive until it is dropped.)
    groups: Option<Vec<Vec<usize>>>,
}

/// One subject's contribution.
struct SubjectGrad {
    loss: f64,
    d_theta: Vec<f64>,
    d_w: Vec<f64>,
    d_lnsig: [f64; 2],
    preds: Vec<f64>,
}

impl<'a> Objective<'a> {
    /// Compiles the objective. `with_eta`: whether subjects carry random
    /// effects (else they are predicted at `η = 0`).
    pub fn new(
        model: &'a Model<'a>,
        spec: &'a FitSpec,
        subjects: Vec<&'a FitSubject>,
        with_eta: bool,
    ) -> Result<Self, FitError> {
        let sys = model.system;
        let m0 = sys.nparams() - model.n_weights;
        if spec.params.len() != m0 {
            return Err(FitError::Spec(format!(
                "{} parameters specified, the model has {m0} mechanistic parameters",
                spec.params.len()
            )));
        }
        if model.weights_init.len() != model.n_weights {
            return Err(FitError::Spec("initial weights have the wrong length".into()));
        }
        if spec.sigma_init.len() != spec.error.sigma_names().len()
            || spec.sigma_init.iter().any(|s| s.is_nan() || *s <= 0.0)
        {
            return Err(FitError::Spec(format!(
                "error model {:?} needs {} positive sigma values",
                spec.error,
                spec.error.sigma_names().len()
            )));
        }
        for p in &spec.params {
            if !p.init.is_finite() || (p.transform == Transform::Log && p.init <= 0.0) {
                return Err(FitError::Spec(format!("parameter {} has initial value {}", p.name, p.init)));
            }
            if let Some((o, _)) = p.eta {
                if o.is_nan() || o <= 0.0 {
                    return Err(FitError::Spec(format!("parameter {}: omega must be > 0", p.name)));
                }
            }
        }
        let n = sys.nstates();
        let x0 = spec.x0.clone().unwrap_or_else(|| vec![0.0; n]);
        if x0.len() != n {
            return Err(FitError::Spec(format!("x0 has {} values, the model has {n} states", x0.len())));
        }
        let free_params: Vec<usize> = (0..m0).filter(|&k| !spec.params[k].fixed).collect();
        // ω entries are part of the layout whenever the spec has random
        // effects, so objectives with and without η share the shared part.
        let eta_params: Vec<usize> = (0..m0).filter(|&k| spec.params[k].eta.is_some()).collect();
        let n_sigma_free = if spec.sigma_fixed { 0 } else { spec.sigma_init.len() };
        let n_omega_free = eta_params.iter().filter(|&&k| spec.params[k].eta.is_some_and(|e| !e.1)).count();
        let _ = with_eta;
        let n_shared = free_params.len() + n_sigma_free + n_omega_free + model.n_weights;
        let mut plans = Vec::with_capacity(subjects.len());
        for s in &subjects {
            if s.times.len() != s.dv.len() {
                return Err(FitError::Spec(format!("subject {}: times and DV differ in length", s.id)));
            }
            let plan = match spec.engine {
                Engine::Generic => None,
                _ => {
                    let prob = problem(sys, vec![0.0; sys.nparams()], &x0, s);
                    match Plan::new(&prob) {
                        Ok(p) => Some(p),
                        Err(e) if spec.engine == Engine::Fast => {
                            return Err(FitError::Spec(format!("subject {}: {e}", s.id)))
                        }
                        Err(_) => None,
                    }
                }
            };
            plans.push(plan);
        }
        // Lockstep groups when every subject is on the fast path and the model has a lockstep form.
        let groups = match (spec.engine, model.fast.and_then(|f| f.lockstep())) {
            (Engine::Generic, _) | (_, None) => None,
            // The lockstep form starts every subject from the fixed x₀.
            _ if model.initial_state.is_some() => None,
            _ => plans.iter().map(|p| p.as_ref()).collect::<Option<Vec<&Plan>>>().map(|p| crate::lockstep::groups(&p)),
        };
        Ok(Objective {
            model,
            spec,
            subjects,
            plans,
            free_params,
            eta_params,
            n_sigma_free,
            n_shared,
            x0,
            with_eta,
            penalty: None,
            groups,
        })
    }

    /// Length of the optimiser vector.
    pub fn dim(&self) -> usize {
        self.n_shared + if self.with_eta { self.subjects.len() * self.eta_params.len() } else { 0 }
    }

    /// Length of the shared block of the optimiser vector (θ, σ, ω, weights);
    /// with random effects the η block (subject by subject) follows it.
    pub fn n_shared(&self) -> usize {
        self.n_shared
    }

    /// Number of random effects per subject (0 without them in the spec).
    pub fn n_eta(&self) -> usize {
        self.eta_params.len()
    }

    /// Whether every subject runs on the fast path.
    pub fn all_fast(&self) -> bool {
        self.plans.iter().all(|p| p.is_some())
    }

    /// Number of lockstep groups the subjects are integrated in (0: one
    /// subject at a time; see [`crate::lockstep`]).
    pub fn lockstep_groups(&self) -> usize {
        self.groups.as_ref().map_or(0, |g| g.len())
    }

    /// The initial optimiser vector.
    pub fn initial(&self) -> Vec<f64> {
        let mut phi = Vec::with_capacity(self.dim());
        for &k in &self.free_params {
            let p = &self.spec.params[k];
            phi.push(p.transform.to_phi(p.init));
        }
        if !self.spec.sigma_fixed {
            phi.extend(self.spec.sigma_init.iter().map(|s| s.ln()));
        }
        for &k in &self.eta_params {
            if let Some((o, false)) = self.spec.params[k].eta {
                phi.push(o.ln());
            }
        }
        phi.extend_from_slice(&self.model.weights_init);
        phi.resize(self.dim(), 0.0);
        phi
    }

    /// Names of the optimiser vector's entries.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .free_params
            .iter()
            .map(|&k| {
                let p = &self.spec.params[k];
                match p.transform {
                    Transform::Log => format!("log {}", p.name),
                    Transform::Identity => p.name.clone(),
                }
            })
            .collect();
        if !self.spec.sigma_fixed {
            v.extend(self.spec.error.sigma_names().iter().map(|s| format!("log {s}")));
        }
        for &k in &self.eta_params {
            if let Some((_, false)) = self.spec.params[k].eta {
                v.push(format!("log omega_{}", self.spec.params[k].name));
            }
        }
        v.extend((0..self.model.n_weights).map(|i| format!("w{i}")));
        if self.with_eta {
            for s in &self.subjects {
                for &k in &self.eta_params {
                    v.push(format!("eta_{}[{}]", self.spec.params[k].name, s.id));
                }
            }
        }
        v
    }

    /// Decodes `φ`: (θ_pop, σ, ω, weights slice offset).
    fn decode(&self, phi: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
        let mut theta: Vec<f64> = self.spec.params.iter().map(|p| p.init).collect();
        let mut o = 0;
        for &k in &self.free_params {
            theta[k] = self.spec.params[k].transform.to_theta(phi[o]);
            o += 1;
        }
        let sigma: Vec<f64> = if self.spec.sigma_fixed {
            self.spec.sigma_init.clone()
        } else {
            let s = phi[o..o + self.n_sigma_free].iter().map(|v| v.exp()).collect();
            o += self.n_sigma_free;
            s
        };
        let mut omega = Vec::with_capacity(self.eta_params.len());
        for &k in &self.eta_params {
            match self.spec.params[k].eta {
                Some((_, false)) => {
                    omega.push(phi[o].exp());
                    o += 1;
                }
                Some((w, true)) => omega.push(w),
                None => omega.push(1.0),
            }
        }
        (theta, sigma, omega, o)
    }

    fn eta_offset(&self, i: usize) -> usize {
        self.n_shared + i * self.eta_params.len()
    }

    /// Individual parameters of subject `i` (mechanistic, then weights).
    fn subject_params(&self, phi: &[f64], theta: &[f64], w_off: usize, i: usize, use_eta: bool) -> Vec<f64> {
        let mut p = theta.to_vec();
        if use_eta {
            let e0 = self.eta_offset(i);
            for (r, &k) in self.eta_params.iter().enumerate() {
                p[k] *= phi[e0 + r].exp();
            }
        }
        p.extend_from_slice(&phi[w_off..w_off + self.model.n_weights]);
        p
    }

    fn subject_grad(
        &self,
        i: usize,
        p: &[f64],
        sigma: &[f64],
        want_grad: bool,
        ws: &mut FastWorkspace,
    ) -> Result<SubjectGrad, FitError> {
        let s = self.subjects[i];
        let err = self.spec.error;
        let loss = |j: usize, y: f64| {
            let (l, d, _) = err.nll(s.dv[j], y, sigma);
            (l, d)
        };
        let sys = self.model.system;
        let init = self.model.initial_state.map(|f| f(p));
        let x0: &[f64] = init.as_ref().map_or(&self.x0, |(x, _)| x);
        let (l, mut dp, preds, d_x0) = match &self.plans[i] {
            Some(plan) => {
                let generic = Generic(sys);
                let fast: &dyn FastRhs = self.model.fast.unwrap_or(&generic);
                let fail = |e: crate::fast::FastError| FitError::Solve { subject: s.id.clone(), reason: e.to_string() };
                if want_grad {
                    let g = plan.gradient(fast, p, x0, &self.spec.options, &loss, ws).map_err(fail)?;
                    (g.loss, g.d_params, g.predictions, g.d_x0)
                } else {
                    let preds = plan.predict(fast, p, x0, &self.spec.options, ws).map_err(fail)?;
                    let l = preds.iter().enumerate().map(|(j, &y)| loss(j, y).0).sum();
                    (l, Vec::new(), preds, Vec::new())
                }
            }
            None => {
                let prob = problem(sys, p.to_vec(), x0, s);
                let fail =
                    |e: insilico_solvers::Error| FitError::Solve { subject: s.id.clone(), reason: e.to_string() };
                if want_grad {
                    let g = gradient(&prob, Method::Tsit45, &self.spec.options, &loss, GradientMethod::Auto)
                        .map_err(fail)?;
                    (g.loss, g.d_params, g.predictions, g.d_x0)
                } else {
                    let sol = insilico_solvers::solve(&prob, Method::Tsit45, &self.spec.options).map_err(fail)?;
                    let l = sol.outputs.iter().enumerate().map(|(j, &y)| loss(j, y).0).sum();
                    (l, Vec::new(), sol.outputs, Vec::new())
                }
            }
        };
        // x₀(θ): ∂L/∂θ_k += Σ_i ∂L/∂x₀_i · ∂x₀_i/∂θ_k.
        if let (true, Some((_, jac))) = (want_grad, &init) {
            for &(si, k, v) in jac {
                if let (Some(d), Some(g)) = (dp.get_mut(k), d_x0.get(si)) {
                    *d += g * v;
                }
            }
        }
        self.finish(i, l, dp, preds, sigma, want_grad)
    }

    /// A subject's contribution from its loss, parameter gradient and predictions.
    fn finish(
        &self,
        i: usize,
        l: f64,
        dp: Vec<f64>,
        preds: Vec<f64>,
        sigma: &[f64],
        want_grad: bool,
    ) -> Result<SubjectGrad, FitError> {
        let s = self.subjects[i];
        let err = self.spec.error;
        if !l.is_finite() {
            return Err(FitError::Solve { subject: s.id.clone(), reason: "the loss is not finite".into() });
        }
        let mut d_lnsig = [0.0; 2];
        if want_grad {
            for (j, &y) in preds.iter().enumerate() {
                let (_, _, g) = err.nll(s.dv[j], y, sigma);
                d_lnsig[0] += g[0];
                d_lnsig[1] += g[1];
            }
        }
        let m0 = self.spec.params.len();
        let (d_theta, d_w) = if want_grad { (dp[..m0].to_vec(), dp[m0..].to_vec()) } else { (Vec::new(), Vec::new()) };
        Ok(SubjectGrad { loss: l, d_theta, d_w, d_lnsig, preds })
    }

    /// Every subject's contribution by lockstep groups, in subject order.
    fn lockstep_grads(
        &self,
        ls: &dyn LockstepGradient,
        groups: &[Vec<usize>],
        phi: &[f64],
        theta: &[f64],
        sigma: &[f64],
        w_off: usize,
    ) -> Vec<Result<SubjectGrad, FitError>> {
        let err = self.spec.error;
        let per_group: Vec<Vec<(usize, Result<SubjectGrad, FitError>)>> = groups
            .par_iter()
            .map(|g| {
                LockWorkspace::with_thread_local(|ws| {
                    let ps: Vec<Vec<f64>> =
                        g.iter().map(|&i| self.subject_params(phi, theta, w_off, i, self.with_eta)).collect();
                    let prefs: Vec<&[f64]> = ps.iter().map(|v| v.as_slice()).collect();
                    let plans: Option<Vec<&Plan>> = g.iter().map(|&i| self.plans[i].as_ref()).collect();
                    let mk = |i: usize| {
                        let s = self.subjects[i];
                        move |j: usize, y: f64| {
                            let (l, d, _) = err.nll(s.dv[j], y, sigma);
                            (l, d)
                        }
                    };
                    let losses: Vec<_> = g.iter().map(|&i| mk(i)).collect();
                    let lrefs: Vec<&insilico_solvers::Loss> =
                        losses.iter().map(|f| f as &insilico_solvers::Loss).collect();
                    let res = match plans {
                        Some(plans) => ls.gradient(&plans, &prefs, &self.x0, &self.spec.options, &lrefs, ws),
                        None => Err(crate::fast::FastError::Unsupported("a subject is not on the fast path".into())),
                    };
                    match res {
                        Ok(gs) => g
                            .iter()
                            .zip(gs)
                            .map(|(&i, r)| (i, self.finish(i, r.loss, r.d_params, r.predictions, sigma, true)))
                            .collect(),
                        Err(e) => g
                            .iter()
                            .map(|&i| {
                                (
                                    i,
                                    Err(FitError::Solve {
                                        subject: self.subjects[i].id.clone(),
                                        reason: e.to_string(),
                                    }),
                                )
                            })
                            .collect(),
                    }
                })
            })
            .collect();
        let mut per: Vec<Option<Result<SubjectGrad, FitError>>> = (0..self.subjects.len()).map(|_| None).collect();
        for (i, r) in per_group.into_iter().flatten() {
            per[i] = Some(r);
        }
        per.into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|| {
                    Err(FitError::Solve {
                        subject: self.subjects[i].id.clone(),
                        reason: "not in a lockstep group".into(),
                    })
                })
            })
            .collect()
    }

    /// Objective value and gradient at `φ`.
    pub fn value_grad(&self, phi: &[f64]) -> Result<(f64, Vec<f64>), FitError> {
        self.value_grad_terms(phi, true)
    }

    /// Value and gradient of the data NLL plus the η prior terms only
    /// (`Σ_i Σ_k [η_ik²/(2ω_k²) + ln ω_k + ½ ln 2π]`): without parameter
    /// priors, weight prior, ω hyperprior or penalty. The individual
    /// (conditional) objective summed over subjects.
    pub fn conditional_value_grad(&self, phi: &[f64]) -> Result<(f64, Vec<f64>), FitError> {
        self.value_grad_terms(phi, false)
    }

    /// `all`: every term of the objective; else data and η prior only.
    fn value_grad_terms(&self, phi: &[f64], all: bool) -> Result<(f64, Vec<f64>), FitError> {
        if phi.len() != self.dim() {
            return Err(FitError::Spec(format!("φ has {} entries, the objective {}", phi.len(), self.dim())));
        }
        let (theta, sigma, omega, w_off) = self.decode(phi);
        let lockstep = self.model.fast.and_then(|f| f.lockstep());
        let per: Vec<Result<SubjectGrad, FitError>> = match (&self.groups, lockstep) {
            (Some(groups), Some(ls)) => self.lockstep_grads(ls.as_ref(), groups, phi, &theta, &sigma, w_off),
            _ => (0..self.subjects.len())
                .into_par_iter()
                .map_init(FastWorkspace::default, |ws, i| {
                    let p = self.subject_params(phi, &theta, w_off, i, self.with_eta);
                    self.subject_grad(i, &p, &sigma, true, ws)
                })
                .collect(),
        };
        let mut g = vec![0.0; self.dim()];
        let mut f = 0.0;
        let nfree = self.free_params.len();
        for (i, r) in per.into_iter().enumerate() {
            let sg = r?;
            f += sg.loss;
            // θ_ik = θ_k exp(η_ik): ∂/∂φ_k = ∂L/∂θ_ik · θ_ik / θ_k · dθ_k/dφ_k.
            let p = self.subject_params(phi, &theta, w_off, i, self.with_eta);
            for (o, &k) in self.free_params.iter().enumerate() {
                let t = &self.spec.params[k].transform;
                g[o] += sg.d_theta[k] * (p[k] / theta[k]) * t.deriv(theta[k]);
            }
            if !self.spec.sigma_fixed {
                for r in 0..self.n_sigma_free {
                    g[nfree + r] += sg.d_lnsig[r];
                }
            }
            for (a, b) in g[w_off..w_off + self.model.n_weights].iter_mut().zip(&sg.d_w) {
                *a += b;
            }
            if self.with_eta {
                let e0 = self.eta_offset(i);
                for (r, &k) in self.eta_params.iter().enumerate() {
                    g[e0 + r] += sg.d_theta[k] * p[k];
                }
            }
        }
        f += if all {
            self.penalties(phi, &theta, &omega, w_off, Some(&mut g))
        } else {
            self.eta_prior(phi, &omega, &mut g)
        };
        Ok((f, g))
    }

    /// The η prior terms `Σ_i Σ_k [η_ik²/(2ω_k²) + ln ω_k + ½ ln 2π]` (0
    /// without η); adds their η gradient into `g`.
    fn eta_prior(&self, phi: &[f64], omega: &[f64], g: &mut [f64]) -> f64 {
        const HALF_LN2PI: f64 = 0.918_938_533_204_672_8;
        if !self.with_eta {
            return 0.0;
        }
        let mut f = 0.0;
        for (r, &om) in omega.iter().enumerate() {
            let om2 = om * om;
            for i in 0..self.subjects.len() {
                let e = phi[self.eta_offset(i) + r];
                f += 0.5 * e * e / om2;
                g[self.eta_offset(i) + r] += e / om2;
            }
            f += self.subjects.len() as f64 * (om.ln() + HALF_LN2PI);
        }
        f
    }

    /// The conditional (post-hoc) loss of these subjects at the shared
    /// parameters `phi_shared` (first [`Objective::n_shared`] entries used):
    /// `min_η` of [`Objective::conditional_value_grad`], θ, σ, ω and the
    /// weights held fixed. `eta` (length `dim() − n_shared()`) is the start
    /// and receives the MAP estimate; L-BFGS runs for at most `iterations`
    /// iterations, stopping once every η gradient entry is below
    /// [`ETA_MAP_GTOL`]. Subjects' η are independent, so the joint minimum is
    /// each subject's own MAP. If the start cannot be evaluated (a solver
    /// failure), it restarts from `η = 0`. Needs an objective built with
    /// random effects.
    pub fn conditional_loss(&self, phi_shared: &[f64], eta: &mut [f64], iterations: usize) -> Result<f64, FitError> {
        let ns = self.n_shared;
        if !self.with_eta || phi_shared.len() < ns || eta.len() != self.dim() - ns {
            return Err(FitError::Spec(format!(
                "conditional loss: needs an objective with random effects, {ns} shared values and {} η values",
                self.dim() - ns
            )));
        }
        let mut full = phi_shared[..ns].to_vec();
        full.extend_from_slice(eta);
        let gmax = std::cell::Cell::new(f64::INFINITY);
        let mut run = |eta: &mut [f64]| {
            let mut fg = |e: &[f64]| {
                full[ns..].copy_from_slice(e);
                let (f, g) = self.conditional_value_grad(&full)?;
                gmax.set(g[ns..].iter().fold(0.0f64, |m, v| m.max(v.abs())));
                Ok((f, g[ns..].to_vec()))
            };
            lbfgs(&mut fg, eta, iterations, &mut |_, _| gmax.get() >= ETA_MAP_GTOL)
        };
        match run(eta) {
            Ok(f) => Ok(f),
            Err(_) if eta.iter().any(|&e| e != 0.0) => {
                eta.iter_mut().for_each(|e| *e = 0.0);
                run(eta)
            }
            Err(e) => Err(e),
        }
    }

    /// Objective value only.
    pub fn value(&self, phi: &[f64]) -> Result<f64, FitError> {
        Ok(self.value_grad(phi)?.0)
    }

    /// The same objective with `penalty` added (at the typical parameters).
    pub fn with_penalty(mut self, penalty: &'a dyn Penalty) -> Self {
        self.penalty = Some(penalty);
        self
    }

    /// Priors, random-effect terms and the added penalty; adds their gradient into `g`.
    fn penalties(&self, phi: &[f64], theta: &[f64], omega: &[f64], w_off: usize, g: Option<&mut Vec<f64>>) -> f64 {
        let mut dummy = Vec::new();
        let g = match g {
            Some(g) => g,
            None => {
                dummy.resize(phi.len(), 0.0);
                &mut dummy
            }
        };
        let mut f = 0.0;
        for (o, &k) in self.free_params.iter().enumerate() {
            let p = &self.spec.params[k];
            if let Some((mu, sd)) = p.prior {
                let z = (phi[o] - mu) / sd;
                f += 0.5 * z * z;
                g[o] += z / sd;
            }
        }
        if let Some(pen) = self.penalty {
            let nw = self.model.n_weights;
            let mut gt = vec![0.0; theta.len()];
            let mut gw = vec![0.0; nw];
            f += pen.value_grad(theta, &phi[w_off..w_off + nw], &mut gt, &mut gw);
            for (o, &k) in self.free_params.iter().enumerate() {
                g[o] += gt[k] * self.spec.params[k].transform.deriv(theta[k]);
            }
            for (a, b) in g[w_off..w_off + nw].iter_mut().zip(&gw) {
                *a += b;
            }
        }
        if let Some(sd) = self.model.weight_prior_sd {
            for (a, &w) in g[w_off..w_off + self.model.n_weights].iter_mut().zip(&phi[w_off..]) {
                f += 0.5 * w * w / (sd * sd);
                *a += w / (sd * sd);
            }
        }
        if self.with_eta && !self.eta_params.is_empty() {
            let nsub = self.subjects.len() as f64;
            let mut om_o = self.free_params.len() + self.n_sigma_free;
            f += self.eta_prior(phi, omega, g);
            for (r, &k) in self.eta_params.iter().enumerate() {
                let om = omega[r];
                let om2 = om * om;
                let sum_e2: f64 = (0..self.subjects.len()).map(|i| phi[self.eta_offset(i) + r].powi(2)).sum();
                if let Some((om0, false)) = self.spec.params[k].eta {
                    // ∂/∂ln ω of Σ η²/(2ω²) + N ln ω + (ν/2+1) ln ω² + ν ω0²/(2ω²), ν = 1.
                    let nu = 1.0;
                    f += (nu / 2.0 + 1.0) * om2.ln() + nu * om0 * om0 / (2.0 * om2);
                    g[om_o] += -sum_e2 / om2 + nsub + (nu + 2.0) - nu * om0 * om0 / om2;
                    om_o += 1;
                }
            }
        }
        f
    }

    /// Validation-style loss: the data term only, predictions at `η = 0`.
    pub fn data_loss_typical(&self, phi_shared: &[f64]) -> Result<f64, FitError> {
        let (theta, sigma, _, w_off) = self.decode(phi_shared);
        let per: Vec<Result<f64, FitError>> = (0..self.subjects.len())
            .into_par_iter()
            .map_init(FastWorkspace::default, |ws, i| {
                let p = self.subject_params(phi_shared, &theta, w_off, i, false);
                self.subject_grad(i, &p, &sigma, false, ws).map(|s| s.loss)
            })
            .collect();
        let mut f = 0.0;
        for r in per {
            f += r?;
        }
        Ok(f)
    }

    /// Predictions for every subject: `(PRED, IPRED)` (IPRED uses each
    /// subject's η when the objective carries them).
    #[allow(clippy::type_complexity)]
    pub fn predictions(&self, phi: &[f64]) -> Result<Vec<(Vec<f64>, Vec<f64>)>, FitError> {
        let (theta, sigma, _, w_off) = self.decode(phi);
        (0..self.subjects.len())
            .into_par_iter()
            .map_init(FastWorkspace::default, |ws, i| {
                let p0 = self.subject_params(phi, &theta, w_off, i, false);
                let pred = self.subject_grad(i, &p0, &sigma, false, ws)?.preds;
                let ipred = if self.with_eta && !self.eta_params.is_empty() {
                    let p1 = self.subject_params(phi, &theta, w_off, i, true);
                    self.subject_grad(i, &p1, &sigma, false, ws)?.preds
                } else {
                    pred.clone()
                };
                Ok((pred, ipred))
            })
            .collect()
    }
}

/// A [`Problem`] for subject `s` with parameters `p`.
pub fn problem<'s>(sys: &'s dyn System, p: Vec<f64>, x0: &[f64], s: &FitSubject) -> Problem<'s> {
    let mut prob = Problem::new(sys, p).with_schedule(s.schedule.clone()).with_x0(x0.to_vec());
    prob.t0 = s.t0;
    prob.observations = s
        .times
        .iter()
        .enumerate()
        .map(|(j, &time)| ObservationPoint { time, output: s.outputs.get(j).copied().unwrap_or(0) })
        .collect();
    prob
}

/// Fits `model` to `subjects`; `progress` is called after every iteration.
/// `with_eta`: estimate per-subject random effects.
pub fn fit(
    model: &Model,
    spec: &FitSpec,
    subjects: &[FitSubject],
    with_eta: bool,
    progress: &dyn Fn(Progress),
) -> Result<FitResult, FitError> {
    fit_with_penalty(model, spec, subjects, with_eta, None, progress)
}

/// [`fit`] with an added [`Penalty`] in the training objective (the
/// validation loss, a data loss, does not include it).
pub fn fit_with_penalty(
    model: &Model,
    spec: &FitSpec,
    subjects: &[FitSubject],
    with_eta: bool,
    penalty: Option<&dyn Penalty>,
    progress: &dyn Fn(Progress),
) -> Result<FitResult, FitError> {
    let start = Instant::now();
    if subjects.is_empty() {
        return Err(FitError::Spec("no subjects with observations to fit".into()));
    }
    // Seeded validation split by subject.
    let mut order: Vec<usize> = (0..subjects.len()).collect();
    let n_val = ((spec.validation_fraction.clamp(0.0, 0.9) * subjects.len() as f64).round() as usize)
        .min(subjects.len().saturating_sub(1));
    if n_val > 0 {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(spec.seed));
    }
    let mut val_idx: Vec<usize> = order[..n_val].to_vec();
    val_idx.sort_unstable();
    let train: Vec<&FitSubject> = (0..subjects.len()).filter(|i| !val_idx.contains(i)).map(|i| &subjects[i]).collect();
    let val: Vec<&FitSubject> = val_idx.iter().map(|&i| &subjects[i]).collect();
    let obj = Objective::new(model, spec, train, with_eta)?;
    let obj = match penalty {
        Some(p) => obj.with_penalty(p),
        None => obj,
    };
    // Held-out subjects are scored conditionally (their own MAP η) when the
    // fit has random effects, else by the typical prediction (module docs).
    let conditional = with_eta && !obj.eta_params.is_empty();
    let mut val_set = if val.is_empty() {
        None
    } else {
        let vo = Objective::new(model, spec, val, conditional)?;
        let eta = vec![0.0; vo.dim() - vo.n_shared];
        let criterion = if conditional { ValidationCriterion::Conditional } else { ValidationCriterion::Typical };
        Some(Validation { obj: vo, criterion, eta })
    };
    let n_shared = obj.n_shared;

    let mut phi = obj.initial();
    let total: usize = spec
        .stages
        .iter()
        .map(|s| match s {
            Stage::Adam { iterations, .. } | Stage::Lbfgs { iterations } => *iterations,
        })
        .sum();
    let mut tr = Tracker { history: Vec::new(), best: None, since_best: 0, last_val: None };
    let mut n_grad = 0usize;
    let mut iteration = 0usize;
    let mut current = f64::NAN;
    let check_every = spec.check_every.max(1);
    for stage in &spec.stages {
        tr.since_best = 0;
        match *stage {
            Stage::Adam { iterations, lr } => {
                let (b1, b2, eps) = (0.9, 0.999, 1e-8);
                let mut m = vec![0.0; phi.len()];
                let mut v = vec![0.0; phi.len()];
                for t in 1..=iterations {
                    let (f, g) = obj.value_grad(&phi)?;
                    n_grad += 1;
                    current = f;
                    iteration += 1;
                    tr.history.push(HistoryPoint { iteration, loss: f, validation: None });
                    if tr.check(val_set.as_mut(), &phi, n_shared, iteration, check_every, spec.patience)? {
                        break;
                    }
                    let (c1, c2) = (1.0 - b1f(b1, t), 1.0 - b1f(b2, t));
                    for k in 0..phi.len() {
                        m[k] = b1 * m[k] + (1.0 - b1) * g[k];
                        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
                        phi[k] -= lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps);
                    }
                    progress(Progress { iteration, total, loss: f, validation: tr.last_val });
                }
            }
            Stage::Lbfgs { iterations } => {
                let mut evals = 0usize;
                let mut failure = None;
                let res = lbfgs(
                    &mut |x: &[f64]| {
                        evals += 1;
                        obj.value_grad(x)
                    },
                    &mut phi,
                    iterations,
                    &mut |x: &[f64], f: f64| {
                        iteration += 1;
                        current = f;
                        tr.history.push(HistoryPoint { iteration, loss: f, validation: None });
                        let stop = match tr.check(val_set.as_mut(), x, n_shared, iteration, check_every, spec.patience)
                        {
                            Ok(s) => s,
                            Err(e) => {
                                failure = Some(e);
                                true
                            }
                        };
                        progress(Progress { iteration, total, loss: f, validation: tr.last_val });
                        !stop
                    },
                );
                n_grad += evals;
                res?;
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
    }
    // Keep the best validation parameters (shared part), re-optimising nothing.
    if let Some((_, bphi, beta)) = &tr.best {
        phi[..n_shared].copy_from_slice(&bphi[..n_shared]);
        if with_eta {
            phi[n_shared..].copy_from_slice(&bphi[n_shared..]);
        }
        if let Some(vs) = val_set.as_mut() {
            vs.eta.clone_from(beta);
        }
    }
    let (f, _) = obj.value_grad(&phi)?;
    n_grad += 1;
    current = if f.is_finite() { f } else { current };
    let validation_loss = match val_set.as_mut() {
        Some(vs) => Some(vs.loss(&phi[..n_shared])?),
        None => None,
    };
    let (theta, sigma, omega, w_off) = obj.decode(&phi);
    let etas = if with_eta {
        obj.subjects
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let e0 = obj.eta_offset(i);
                (s.id.clone(), phi[e0..e0 + obj.eta_params.len()].to_vec())
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(FitResult {
        theta,
        sigma,
        omega,
        eta_params: obj.eta_params.clone(),
        etas,
        weights: phi[w_off..w_off + model.n_weights].to_vec(),
        loss: current,
        validation_loss,
        validation_criterion: val_set.as_ref().map(|v| v.criterion),
        validation_ids: val_idx.iter().map(|&i| subjects[i].id.clone()).collect(),
        history: tr.history,
        n_gradients: n_grad,
        wall_s: start.elapsed().as_secs_f64(),
        phi_names: obj.names(),
        phi,
        engine_used: if obj.all_fast() && obj.lockstep_groups() > 0 {
            format!("fast (DOPRI5 discrete adjoint, subjects in lockstep groups of up to {})", crate::lockstep::LANES)
        } else if obj.all_fast() {
            "fast (DOPRI5 discrete adjoint)".into()
        } else {
            "generic (solvers::gradient, auto)".into()
        },
    })
}

/// The held-out subjects, their criterion and (conditional) their last η.
struct Validation<'a> {
    obj: Objective<'a>,
    criterion: ValidationCriterion,
    /// η of the held-out subjects at the last check (the next one's start).
    eta: Vec<f64>,
}

impl Validation<'_> {
    fn loss(&mut self, phi_shared: &[f64]) -> Result<f64, FitError> {
        match self.criterion {
            ValidationCriterion::Typical => self.obj.data_loss_typical(phi_shared),
            ValidationCriterion::Conditional => {
                self.obj.conditional_loss(phi_shared, &mut self.eta, ETA_MAP_ITERATIONS)
            }
        }
    }
}

/// Loss history, validation checks and the best parameters so far.
struct Tracker {
    history: Vec<HistoryPoint>,
    /// Best validation loss, the parameters there and the held-out η there.
    best: Option<(f64, Vec<f64>, Vec<f64>)>,
    since_best: usize,
    last_val: Option<f64>,
}

impl Tracker {
    /// Checks the validation loss every `every` iterations; true when the
    /// stage should stop (no improvement in `patience` checks).
    fn check(
        &mut self,
        val: Option<&mut Validation>,
        phi: &[f64],
        n_shared: usize,
        it: usize,
        every: usize,
        patience: usize,
    ) -> Result<bool, FitError> {
        let Some(vs) = val else { return Ok(false) };
        if !it.is_multiple_of(every) {
            return Ok(false);
        }
        let v = vs.loss(&phi[..n_shared])?;
        self.last_val = Some(v);
        if let Some(h) = self.history.last_mut() {
            if h.iteration == it {
                h.validation = Some(v);
            }
        }
        if v.is_finite() && self.best.as_ref().is_none_or(|b| v < b.0) {
            self.best = Some((v, phi.to_vec(), vs.eta.clone()));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        Ok(patience > 0 && self.since_best >= patience)
    }
}

fn b1f(b: f64, t: usize) -> f64 {
    b.powi(t.min(i32::MAX as usize) as i32)
}

/// Compact L-BFGS (memory 10) with Armijo backtracking. `f` returns value
/// and gradient; `on_iter(x, f)` is called after each accepted step and
/// returns false to stop. Stops on a tiny gradient or no progress.
#[allow(clippy::type_complexity)]
pub fn lbfgs(
    f: &mut dyn FnMut(&[f64]) -> Result<(f64, Vec<f64>), FitError>,
    x: &mut [f64],
    iterations: usize,
    on_iter: &mut dyn FnMut(&[f64], f64) -> bool,
) -> Result<f64, FitError> {
    let n = x.len();
    let mem = 10;
    let (mut fx, mut g) = f(x)?;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut stall = 0;
    for _ in 0..iterations {
        let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        if gnorm < 1e-9 || !gnorm.is_finite() {
            break;
        }
        // Two-loop recursion.
        let mut d: Vec<f64> = g.iter().map(|v| -v).collect();
        let k = s_hist.len();
        let mut alpha = vec![0.0; k];
        for i in (0..k).rev() {
            let rho = 1.0 / dotv(&y_hist[i], &s_hist[i]);
            alpha[i] = rho * dotv(&s_hist[i], &d);
            for j in 0..n {
                d[j] -= alpha[i] * y_hist[i][j];
            }
        }
        let gamma = if k > 0 {
            dotv(&s_hist[k - 1], &y_hist[k - 1]) / dotv(&y_hist[k - 1], &y_hist[k - 1])
        } else {
            1.0 / gnorm.max(1.0)
        };
        d.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..k {
            let rho = 1.0 / dotv(&y_hist[i], &s_hist[i]);
            let beta = rho * dotv(&y_hist[i], &d);
            for j in 0..n {
                d[j] += s_hist[i][j] * (alpha[i] - beta);
            }
        }
        let mut slope = dotv(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: restart with steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = g.iter().map(|v| -v / gnorm.max(1.0)).collect();
            slope = dotv(&g, &d);
        }
        // Armijo backtracking.
        let mut step = 1.0;
        let mut accepted = None;
        let mut xn = vec![0.0; n];
        for _ in 0..40 {
            for j in 0..n {
                xn[j] = x[j] + step * d[j];
            }
            match f(&xn) {
                Ok((fn_, gn)) if fn_.is_finite() && fn_ <= fx + 1e-4 * step * slope => {
                    accepted = Some((fn_, gn));
                    break;
                }
                _ => step *= 0.5,
            }
        }
        let Some((fn_, gn)) = accepted else {
            if s_hist.is_empty() {
                break;
            }
            s_hist.clear();
            y_hist.clear();
            continue;
        };
        let s: Vec<f64> = (0..n).map(|j| xn[j] - x[j]).collect();
        let y: Vec<f64> = (0..n).map(|j| gn[j] - g[j]).collect();
        let sy = dotv(&s, &y);
        if sy > 1e-12 * dotv(&s, &s).sqrt() * dotv(&y, &y).sqrt() {
            if s_hist.len() == mem {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
        }
        let rel = (fx - fn_).abs() / fx.abs().max(1.0);
        x.copy_from_slice(&xn);
        fx = fn_;
        g = gn;
        if !on_iter(x, fx) {
            break;
        }
        stall = if rel < 1e-12 { stall + 1 } else { 0 };
        if stall >= 5 {
            break;
        }
    }
    Ok(fx)
}

fn dotv(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Standard errors from the inverse Hessian of the objective, the Hessian
/// by central finite differences of the exact gradient. Returns one SE per
/// entry of `φ` (NaN where the Hessian is not positive definite).
pub fn standard_errors(obj: &Objective, phi: &[f64]) -> Result<Vec<f64>, FitError> {
    let n = phi.len();
    let mut h = nalgebra::DMatrix::<f64>::zeros(n, n);
    for j in 0..n {
        let step = 1e-4 * phi[j].abs().max(1.0);
        let mut xp = phi.to_vec();
        xp[j] += step;
        let mut xm = phi.to_vec();
        xm[j] -= step;
        let (_, gp) = obj.value_grad(&xp)?;
        let (_, gm) = obj.value_grad(&xm)?;
        for i in 0..n {
            h[(i, j)] = (gp[i] - gm[i]) / (2.0 * step);
        }
    }
    let hs = (&h + h.transpose()) * 0.5;
    match hs.clone().cholesky() {
        Some(c) => {
            let inv = c.inverse();
            Ok((0..n).map(|i| inv[(i, i)].max(0.0).sqrt()).collect())
        }
        None => Ok(match hs.try_inverse() {
            Some(inv) => (0..n).map(|i| if inv[(i, i)] > 0.0 { inv[(i, i)].sqrt() } else { f64::NAN }).collect(),
            None => vec![f64::NAN; n],
        }),
    }
}

/// The subjects of a NONMEM-layout dataset as fit subjects: each subject's
/// schedule, and its observation records with a value (`MDV = 0`). Subjects
/// without such records are kept (they still have a schedule) but carry no
/// data. Observation CMT is ignored (the model's output 0 is observed).
pub fn subjects_from_dataset(
    ds: &insilico_solvers::Dataset,
    map: &insilico_solvers::DoseMapping,
) -> Result<Vec<FitSubject>, insilico_solvers::DataError> {
    subjects_from_dataset_outputs(ds, map, 0, &[])
}

/// [`subjects_from_dataset`] with the observed output chosen by the
/// observation's CMT: `(cmt, output)` pairs of `by_cmt`, else `default`.
pub fn subjects_from_dataset_outputs(
    ds: &insilico_solvers::Dataset,
    map: &insilico_solvers::DoseMapping,
    default: usize,
    by_cmt: &[(usize, usize)],
) -> Result<Vec<FitSubject>, insilico_solvers::DataError> {
    let mut out = Vec::with_capacity(ds.subjects.len());
    for subj in &ds.subjects {
        let (schedule, obs) = subj.to_schedule(ds, map)?;
        let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
        let mut times = Vec::new();
        let mut dv = Vec::new();
        let mut outputs = Vec::new();
        for o in &obs {
            if let (false, Some(v)) = (o.mdv, o.dv) {
                times.push(o.time);
                dv.push(v);
                outputs.push(by_cmt.iter().find(|(c, _)| *c == o.cmt).map_or(default, |(_, k)| *k));
            }
        }
        out.push(FitSubject { id: subj.id.clone(), schedule, t0, times, dv, outputs });
    }
    Ok(out)
}
