//! `insilico fit` and `simulate --fitted`: fitting any model file (a zoo
//! name or a `.model` path) to NONMEM-layout data from a TOML config.
//!
//! The model is compiled like a user's (`insilico_model`), bound to the
//! subjects' covariates, and fitted through [`ModelSystem`]: the fast DOPRI5
//! discrete adjoint generated from its right-hand-side program
//! ([`ModelSystem::fast`]) where the schedule allows, else the diffsol
//! gradient. Parameters are the model's, by name; the weights of a `network`
//! declaration are fitted parameters; a model that sets initial states from
//! parameters (`s(0) = Circ0`) has its gradients chained through them. No
//! code here depends on which model it is.
//!
//! The modes (`individual`, `pooled`, `population`) are **joint-MAP fits**:
//! they maximise the joint posterior of the typical parameters and every
//! subject's η (with a hyperprior on ω against its collapse), not the
//! population likelihood, so their objective is not NONMEM's OFV. For the
//! population likelihood by FOCE-I, NONMEM-comparable, write
//! `estimation = "focei"` in the config: it is read by
//! [`crate::fit_focei`] instead.
//!
//! # The config file
//! ```toml
//! name = "p4-hybrid"                      # optional label
//! model = "pk-1cmt-oral-hybrid"           # a zoo model (models-zoo/) or a model file relative to this config
//! output = "cp"                           # optional: the output observed (default: the model's first)
//! data = "../../shared/data/ude_train.csv" # relative to the config file
//! modes = ["population"]                  # any of: individual (each subject alone), pooled, population (random effects)
//! error = "proportional"                  # additive | proportional | combined | log
//! sigma = [0.1]                           # initial σ, standard deviations (two for combined: additive, proportional)
//! rtol = 1e-5                             # solver tolerances (amounts)
//! atol = 1e-6
//! engine = "auto"                         # auto | fast | generic
//! seed = 1                                # validation split and network initialisation
//! validation_fraction = 0.0               # subjects held out for early stopping
//! patience = 10                           # validation checks without improvement before a stage stops
//! check_every = 10
//! standard_errors = true                  # SEs from the inverse Hessian (models without a network)
//! dose_cmt = 1                            # optional: CMT of doses without one (default 1)
//! obs_cmt = 2                             # optional: CMT of observations without one (default: `central`)
//!
//! [columns]                               # optional: NONMEM columns under another name (AMT = "DOSE")
//!
//! [outputs]                               # optional: the output observed, by observation CMT (number or
//! 1 = "cp"                                #   state name); other observations: `output`
//! 8 = "neutrophils"
//!
//! [params.ka]                             # a model parameter, by name; one not listed is held fixed at the
//! init = 1.0                              #   model's value (an error where the model gives none)
//! transform = "log"                       # log (default) | identity
//! fixed = false
//! prior = [0.0, 1.0]                      # optional Gaussian prior (mean, sd) on the transformed scale
//! omega = 0.3                             # optional log-normal random effect (initial value, a standard deviation)
//! omega_fixed = false
//!
//! [neural]                                # optional, for a model with a `network`: its weights
//! init_scale = 0.5                        # output-layer scale of the seeded initialisation (network k: seed + k)
//! weight_prior_sd = 3.0                   # optional Gaussian prior on the weights
//! from = "central"                        # the flux from -> to (d(to)/dt with drug only in `from`) against the
//! to = "eliminated"                       #   observed concentration: plots and the shape penalty
//! shape = "saturable"                     # none | monotone | saturable (see insilico_jobs::fit_shape)
//! shape_max = 10.0                        # the grid reaches shape_max x the largest observation
//! shape_weight = 1000.0
//!
//! [[stages]]                              # optimisers, in order
//! method = "adam"
//! iterations = 300
//! lr = 0.01
//! [[stages]]
//! method = "lbfgs"
//! iterations = 200
//!
//! [heldout]                               # optional: extrapolation check against reference models
//! reference_models = ["pk-1cmt-oral-mm", "pk-1cmt-oral-mm-linear"] # zoo names or model files, each fitted
//!                                         #   (pooled) to the same data, then simulated
//! regimens = [ { name = "400 mg", amount = 400, times = [1, 2, 4, 8, 12, 24, 36] } ]
//! ```
//!
//! # Outputs (`--out DIR`)
//! * `fit.json`: for each mode, named estimates (with standard errors where
//!   computed), σ, ω, per-subject random effects, loss history, number of
//!   gradient evaluations, wall time, time per full-data gradient, and the
//!   held-out errors; the top level repeats the last mode. With a hold-out,
//!   `validation_criterion` says how held-out subjects were scored:
//!   `typical` (η = 0 prediction; pooled) or `conditional` (each subject's
//!   MAP η; population), see `insilico_neural::fit`.
//! * `model.json`: the fitted model in reloadable form (estimates, network
//!   widths and weights, per-subject η), read by `simulate --fitted`.
//! * `predictions.csv`: `ID,TIME,DV,PRED,IPRED` for every fitted observation.
//! * PNG plots: `loss.png`, `obs_vs_pred.png`, `subjects.png` and, with a
//!   network and `[neural] from`/`to`, `rate.png` and `elimination_flux.png`
//!   (that flux, learned and mechanistic parts together, and its rate
//!   constant against concentration, up to 4x the largest observation,
//!   beside the `[heldout]` reference models) and `learned_rate.csv`.
//! * `heldout.csv` with `[heldout]`: `REFERENCE,REGIMEN,TIME,REF,PRED`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use std::sync::Arc;

use crate::fit_shape::StateFluxShape;
use crate::model::system::weight_indices;
use crate::model::{Compiled, Model as ModelFile, ModelSystem, Param, ParamKind};
use crate::neural::fit::Penalty;
use crate::neural::fit::{
    self, subjects_from_dataset_outputs, Engine, ErrorModel, FitResult, FitSpec, FitSubject, InitialState, Model,
    Objective, ParamSpec, Progress, Stage, Transform,
};
use crate::neural::shape::Shape;
use crate::plots;
use crate::solvers::{Dataset, Dose, DoseMapping, Options, ReadOptions, Schedule, System};

/// The embedded default of `insilico fit` without arguments.
pub const EMBEDDED_FIT_CONFIG: &str = include_str!("../../examples/theoph.toml");
/// Name used for [`EMBEDDED_FIT_CONFIG`] in messages.
pub const EMBEDDED_FIT_NAME: &str = "examples/theoph.toml (embedded)";
/// The dataset of the embedded default: the classic Theophylline data
/// (Boeckmann, Sheiner & Beal 1994; R's `Theoph`), a copy of
/// `../shared/data/theoph.csv` kept in the repository so that the binary builds
/// without the shared folder.
pub const EMBEDDED_FIT_DATA: &str = include_str!("../../examples/data/theoph.csv");

/// Errors of `fit` and `simulate --fitted`.
#[derive(Debug, thiserror::Error)]
pub enum FitCmdError {
    /// The config is malformed.
    #[error("{file}: {reason}")]
    Config {
        /// Config file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or mapping the dataset failed.
    #[error(transparent)]
    Data(#[from] crate::solvers::DataError),
    /// The population estimation (`estimation = "focei"`) failed or its
    /// spec does not fit the model or the data.
    #[error("estimation: {0}")]
    Estimation(#[from] insilico_estimation::EstimationError),
    /// The fit failed.
    #[error("{file}: fit ({mode}): {error}")]
    Fit {
        /// Config file.
        file: String,
        /// Mode being fitted.
        mode: String,
        /// The error.
        error: fit::FitError,
    },
    /// A result came out NaN or infinite (an objective or a prediction):
    /// never written as a number.
    #[error("non-finite result: {what}; check the priors, initial values and the data")]
    NonFinite {
        /// What was not finite.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{path}: I/O error: {reason}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> FitCmdError {
    FitCmdError::Io { path: path.display().to_string(), reason: e.to_string() }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    init: f64,
    transform: Option<String>,
    fixed: Option<bool>,
    prior: Option<[f64; 2]>,
    omega: Option<f64>,
    omega_fixed: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawNeural {
    from: Option<String>,
    to: Option<String>,
    shape: Option<String>,
    shape_max: Option<f64>,
    shape_weight: Option<f64>,
    init_scale: Option<f64>,
    weight_prior_sd: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRegimen {
    name: String,
    amount: f64,
    ii: Option<f64>,
    doses: Option<u32>,
    times: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawHeldout {
    reference_model: Option<String>,
    reference_models: Option<Vec<String>>,
    reference_random_effects: Option<Vec<String>>,
    regimens: Vec<RawRegimen>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFit {
    name: Option<String>,
    model: String,
    data: String,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    output: Option<String>,
    #[serde(default)]
    outputs: BTreeMap<String, String>,
    modes: Option<Vec<String>>,
    error: Option<String>,
    sigma: Option<Vec<f64>>,
    sigma_fixed: Option<bool>,
    rtol: Option<f64>,
    atol: Option<f64>,
    max_steps: Option<usize>,
    engine: Option<String>,
    seed: Option<u64>,
    validation_fraction: Option<f64>,
    patience: Option<usize>,
    check_every: Option<usize>,
    standard_errors: Option<bool>,
    dose_cmt: Option<usize>,
    obs_cmt: Option<usize>,
    params: BTreeMap<String, RawParam>,
    neural: Option<RawNeural>,
    stages: Option<Vec<RawStage>>,
    heldout: Option<RawHeldout>,
}

/// One `[[stages]]` table as written: every key any method takes, so that
/// a key that does not belong to the stage's method is named in an error
/// (serde's internally tagged enums do not reject unknown keys).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    method: String,
    iterations: usize,
    lr: Option<f64>,
}

impl RawStage {
    /// The optimiser stage, or why not (`k` is the stage's 1-based index).
    fn stage(&self, k: usize) -> Result<Stage, String> {
        let at = format!("[[stages]] #{k} (method = \"{}\")", self.method);
        match self.method.trim().to_ascii_lowercase().as_str() {
            "adam" => {
                let lr = self.lr.ok_or_else(|| format!("{at}: missing key `lr` (the learning rate)"))?;
                if !(lr.is_finite() && lr > 0.0) {
                    return Err(format!("{at}: lr = {lr}: must be > 0"));
                }
                Ok(Stage::Adam { iterations: self.iterations, lr })
            }
            "lbfgs" => match self.lr {
                Some(_) => Err(format!("{at}: unknown key `lr` (lbfgs takes `iterations` only)")),
                None => Ok(Stage::Lbfgs { iterations: self.iterations }),
            },
            m => Err(format!("{at}: unknown method `{m}` (use adam or lbfgs)")),
        }
    }
}

/// A validated fit config.
#[derive(Debug, Clone)]
pub struct FitConfig {
    /// Config file name (for messages).
    pub source: String,
    /// Dataset path (resolved against the config's directory).
    pub data: PathBuf,
    /// The config's directory (model files and `[heldout]` references resolve against it).
    base: Option<PathBuf>,
    raw: RawFit,
    /// The compiled model.
    model: Arc<Compiled>,
    /// The output observed where `[outputs]` names none.
    output: usize,
    /// `(CMT, output)` pairs of `[outputs]`.
    outputs_by_cmt: Vec<(usize, usize)>,
    spec: FitSpec,
    modes: Vec<String>,
    /// `[neural] from`/`to` as state indices (the flux whose shape is
    /// constrained and plotted).
    flux: Option<(usize, usize)>,
}

/// The model to fit: the compiled model file bound to the subjects'
/// covariates, a [`System`] whose parameters are the model's `θ` (declared
/// parameters and random effects, then the network weights).
pub struct FitModel {
    system: ModelSystem,
    n_weights: usize,
    /// `θ ↦ (x₀, ∂x₀/∂θ)` when the model sets an initial state.
    init: Option<Box<InitialState>>,
}

impl FitModel {
    /// As a [`System`].
    pub fn system(&self) -> &ModelSystem {
        &self.system
    }
    /// Number of network weights (0 for a mechanistic model).
    pub fn n_weights(&self) -> usize {
        self.n_weights
    }
}

impl FitConfig {
    /// Reads a config file.
    pub fn from_path(path: &Path) -> Result<FitConfig, FitCmdError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses a config; relative data and model paths resolve against `base`.
    pub fn from_toml_str(text: &str, name: &str, base: Option<&Path>) -> Result<FitConfig, FitCmdError> {
        let cfg = |reason: String| FitCmdError::Config { file: name.to_string(), reason };
        let raw: RawFit = toml::from_str(text).map_err(|e| cfg(e.to_string()))?;
        let model = crate::models_zoo::resolve(&raw.model, base).map_err(|e| cfg(format!("key `model`: {e}")))?;
        let mname = model.name().to_string();
        // The fit's layout: every θ entry that is not a network weight, then the weights.
        let weights = weight_indices(&model);
        let m0 = model.params().len() - weights.len();
        if weights.iter().enumerate().any(|(i, &k)| k != m0 + i) {
            return Err(cfg(format!("key `model`: model {mname}: network weights must follow every other parameter")));
        }
        let declared: Vec<&Param> = model.params()[..m0].iter().collect();
        let names: Vec<String> = declared.iter().map(|p| p.name.clone()).collect();
        let listed = names.iter().filter(|n| !n.is_empty()).cloned().collect::<Vec<_>>().join(", ");
        for k in raw.params.keys() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                return Err(cfg(format!("unknown parameter [params.{k}] (model {mname} has {listed})")));
            }
        }
        let mut params = Vec::new();
        for p in &declared {
            let n = &p.name;
            let Some((_, rp)) = raw.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)) else {
                // Not listed: fixed at the model's value (random effects at 0).
                let init = match (&p.kind, p.default) {
                    (ParamKind::Random, _) => 0.0,
                    (_, Some(v)) => v,
                    (_, None) => {
                        return Err(cfg(format!(
                            "missing [params.{n}]: model {mname} gives `{n}` no value (its parameters are {listed}; \
                             a parameter with a value in the model and no [params] table is held fixed at it)"
                        )))
                    }
                };
                let mut ps = ParamSpec::new(n, init);
                ps.fixed = true;
                ps.transform = Transform::Identity;
                params.push(ps);
                continue;
            };
            let transform = match rp.transform.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
                None => Transform::Log,
                Some(t) if t == "log" => Transform::Log,
                Some(t) if t == "identity" || t == "none" => Transform::Identity,
                Some(t) => return Err(cfg(format!("[params.{n}] transform `{t}`: use log or identity"))),
            };
            let fixed = rp.fixed.unwrap_or(false);
            if !rp.init.is_finite() || (transform == Transform::Log && rp.init <= 0.0 && !fixed) {
                return Err(cfg(format!(
                    "[params.{n}] init = {}: must be finite and > 0 for a log transform",
                    rp.init
                )));
            }
            if let Some(b) = p.bounds {
                if !b.contains(rp.init) {
                    return Err(cfg(format!("[params.{n}] init = {}: outside the model's range {b}", rp.init)));
                }
            }
            if let Some(o) = rp.omega {
                if !(o.is_finite() && o > 0.0) {
                    return Err(cfg(format!("[params.{n}] omega = {o}: must be > 0")));
                }
            }
            if let Some([mean, sd]) = rp.prior {
                if !mean.is_finite() {
                    return Err(cfg(format!("[params.{n}] prior mean = {mean}: must be a finite number")));
                }
                if !(sd.is_finite() && sd > 0.0) {
                    return Err(cfg(format!("[params.{n}] prior sd = {sd}: must be > 0")));
                }
            }
            params.push(ParamSpec {
                name: n.clone(),
                init: rp.init,
                transform: if fixed { Transform::Identity } else { transform },
                fixed,
                prior: rp.prior.map(|[m, s]| (m, s)),
                eta: rp.omega.map(|o| (o, rp.omega_fixed.unwrap_or(false))),
            });
        }
        let out_names = model.output_names();
        let find_output = |o: &str, key: &str| {
            out_names.iter().position(|n| n.eq_ignore_ascii_case(o.trim())).ok_or_else(|| {
                cfg(format!("{key}: model {mname} has no output `{o}` (its outputs are {})", out_names.join(", ")))
            })
        };
        let output = match &raw.output {
            None => 0,
            Some(o) => find_output(o, "key `output`")?,
        };
        let states = model.state_names();
        let find_state = |s: &str| -> Option<usize> {
            match s.trim().parse::<usize>() {
                Ok(c) if (1..=states.len()).contains(&c) => Some(c - 1),
                _ => states.iter().position(|x| x.eq_ignore_ascii_case(s.trim())),
            }
        };
        let mut outputs_by_cmt = Vec::new();
        for (cmt, o) in &raw.outputs {
            let c = find_state(cmt).ok_or_else(|| {
                cfg(format!(
                    "[outputs] `{cmt}`: not a compartment (1..={}) or state ({})",
                    states.len(),
                    states.join(", ")
                ))
            })?;
            outputs_by_cmt.push((c + 1, find_output(o, &format!("[outputs] {cmt}"))?));
        }
        let error = match &raw.error {
            None => ErrorModel::Proportional,
            Some(e) => ErrorModel::parse(e)
                .ok_or_else(|| cfg(format!("key `error`: `{e}` (use additive, proportional, combined or log)")))?,
        };
        let sigma = raw.sigma.clone().unwrap_or_else(|| match error {
            ErrorModel::Combined => vec![0.1, 0.1],
            _ => vec![0.1],
        });
        if sigma.len() != error.sigma_names().len() || sigma.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(cfg(format!(
                "key `sigma`: error model `{}` needs {} positive value(s) ({})",
                raw.error.as_deref().unwrap_or("proportional"),
                error.sigma_names().len(),
                error.sigma_names().join(", ")
            )));
        }
        let engine = match raw.engine.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
            None => Engine::Auto,
            Some(e) if e == "auto" => Engine::Auto,
            Some(e) if e == "fast" => Engine::Fast,
            Some(e) if e == "generic" => Engine::Generic,
            Some(e) => return Err(cfg(format!("key `engine`: `{e}` (use auto, fast or generic)"))),
        };
        let options = Options {
            rtol: raw.rtol.unwrap_or(1e-6),
            atol: raw.atol.unwrap_or(1e-8),
            max_steps: raw.max_steps.unwrap_or(100_000),
        };
        crate::limits::check_tolerances(options.rtol, options.atol).map_err(|e| cfg(format!("key {e}")))?;
        if options.max_steps == 0 {
            return Err(cfg("key `max_steps` must be at least 1".into()));
        }
        let stages = match &raw.stages {
            None => vec![Stage::Lbfgs { iterations: 300 }],
            Some(list) => {
                list.iter().enumerate().map(|(k, s)| s.stage(k + 1)).collect::<Result<Vec<_>, _>>().map_err(cfg)?
            }
        };
        let modes = raw.modes.clone().unwrap_or_else(|| vec!["pooled".into()]);
        if modes.is_empty() {
            return Err(cfg("key `modes` is empty: name at least one of individual, pooled, population \
                            (or leave the key out for pooled)"
                .into()));
        }
        for m in &modes {
            if !matches!(m.as_str(), "individual" | "pooled" | "population") {
                return Err(cfg(format!("key `modes`: `{m}` (use individual, pooled or population)")));
            }
        }
        if modes.iter().any(|m| m == "population") && params.iter().all(|p| p.eta.is_none()) {
            return Err(cfg("mode `population` needs at least one parameter with `omega`".into()));
        }
        let vf = raw.validation_fraction.unwrap_or(0.0);
        if !(0.0..0.9).contains(&vf) {
            return Err(cfg(format!("key `validation_fraction` = {vf}: use a value in [0, 0.9)")));
        }
        let mut flux = None;
        if let Some(n) = &raw.neural {
            if model.networks().is_empty() {
                return Err(cfg(format!(
                    "[neural]: model {mname} declares no network (write `network g: 1 -> 16 -> 1 tanh` in the model)"
                )));
            }
            let state = |key: &str, s: &Option<String>| -> Result<Option<usize>, FitCmdError> {
                match s {
                    None => Ok(None),
                    Some(s) => find_state(s)
                        .map(Some)
                        .ok_or_else(|| cfg(format!("[neural] {key} = `{s}`: states are {}", states.join(", ")))),
                }
            };
            flux = match (state("from", &n.from)?, state("to", &n.to)?) {
                (Some(a), Some(b)) => Some((a, b)),
                (None, None) => None,
                _ => return Err(cfg("[neural]: give both `from` and `to` (the flux the shape applies to)".into())),
            };
            if let Some(sh) = &n.shape {
                if !sh.trim().eq_ignore_ascii_case("none") {
                    if Shape::parse(sh).is_none() {
                        return Err(cfg(format!("[neural] shape `{sh}`: use none, monotone or saturable")));
                    }
                    if flux.is_none() {
                        return Err(cfg(format!(
                            "[neural] shape `{sh}` needs `from` and `to` (the flux it constrains)"
                        )));
                    }
                }
            }
            if let Some(m) = n.shape_max {
                if !(m.is_finite() && m > 1.0) {
                    return Err(cfg(format!(
                        "[neural] shape_max = {m}: must be > 1 (a multiple of the largest observation)"
                    )));
                }
            }
            for (k, v) in [("shape_weight", n.shape_weight), ("init_scale", n.init_scale)] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(cfg(format!("[neural] {k} = {v}: must be ≥ 0")));
                    }
                }
            }
            if let Some(sd) = n.weight_prior_sd {
                if !(sd.is_finite() && sd > 0.0) {
                    return Err(cfg(format!("[neural] weight_prior_sd = {sd}: must be > 0")));
                }
            }
        }
        let base = base.map(Path::to_path_buf);
        if let Some(h) = &raw.heldout {
            reference_names(h, base.as_deref()).map_err(|e| cfg(format!("[heldout] {e}")))?;
        }
        let spec = FitSpec {
            params,
            error,
            sigma_init: sigma,
            sigma_fixed: raw.sigma_fixed.unwrap_or(false),
            stages,
            validation_fraction: vf,
            patience: raw.patience.unwrap_or(10),
            check_every: raw.check_every.unwrap_or(10),
            seed: raw.seed.unwrap_or(1),
            options,
            engine,
            x0: None,
        };
        let data = match &base {
            Some(d) => d.join(raw.data.trim()),
            None => PathBuf::from(raw.data.trim()),
        };
        Ok(FitConfig {
            source: name.to_string(),
            data,
            base,
            raw,
            model: Compiled::new(model),
            output,
            outputs_by_cmt,
            spec,
            modes,
            flux,
        })
    }

    /// The compiled model.
    pub fn model(&self) -> &ModelFile {
        &self.model.model
    }

    /// Number of network weights of the model (0 for a mechanistic model).
    pub fn n_weights(&self) -> usize {
        weight_indices(self.model()).len()
    }

    /// Builds the model for the subjects of `ds`: the model bound to their
    /// covariates (which must be the same for every subject: per-subject
    /// covariates are not supported by `fit` yet).
    pub fn build(&self, ds: &Dataset) -> Result<FitModel, FitCmdError> {
        let bad = |reason: String| FitCmdError::Config { file: self.source.clone(), reason };
        let m = self.model();
        let mut cov: Option<(Vec<f64>, String)> = None;
        if !m.covariates().is_empty() {
            for subj in &ds.subjects {
                let c = crate::model::subject::subject_covariates(m, ds, subj).map_err(|e| bad(e.to_string()))?;
                match &cov {
                    None => cov = Some((c, subj.id.clone())),
                    Some((c0, id0)) if *c0 != c => {
                        return Err(bad(format!(
                            "model {} reads covariates ({}) that differ between subject `{id0}` and subject `{}` in \
                             {}: fit does not support per-subject covariates yet",
                            m.name(),
                            m.covariates().iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
                            subj.id,
                            ds.file
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
        let cov = cov.map(|c| c.0).unwrap_or_else(|| m.default_covariates());
        let system = ModelSystem::from_compiled(self.model.clone(), &cov).map_err(|e| bad(e.to_string()))?;
        // A model that writes `s(0) = ...`: the initial state follows each subject's parameters.
        let mut theta: Vec<f64> = self.spec.params.iter().map(|p| p.init).collect();
        theta.extend(m.default_params(self.spec.seed)[theta.len()..].iter());
        let init: Option<Box<InitialState>> = if system.initial_state(&theta).iter().any(|v| *v != 0.0)
            || !system.initial_state_jacobian(&theta).is_empty()
        {
            let sys = system.clone();
            Some(Box::new(move |p: &[f64]| (sys.initial_state(p), sys.initial_state_jacobian(p))))
        } else {
            None
        };
        Ok(FitModel { system, n_weights: self.n_weights(), init })
    }

    /// The dose mapping: `dose_cmt` (default 1), `obs_cmt` (default the
    /// state `central`, else 1), and the dose attributes the model sets.
    pub fn mapping(&self, built: &FitModel) -> DoseMapping {
        let states = self.model().state_names();
        let central = states.iter().position(|s| *s == "central").map_or(1, |k| k + 1);
        let base = DoseMapping::new(states.len(), self.raw.dose_cmt.unwrap_or(1), self.raw.obs_cmt.unwrap_or(central));
        let theta: Vec<f64> = self.spec.params.iter().map(|p| p.init).collect();
        crate::model::subject::subject_dose_mapping(&built.system, &base, &theta)
    }

    /// The fit subjects of `ds` (observations with a value; the observed
    /// output chosen by `output` and `[outputs]`).
    pub fn subjects(&self, built: &FitModel, ds: &Dataset) -> Result<Vec<FitSubject>, FitCmdError> {
        Ok(subjects_from_dataset_outputs(ds, &self.mapping(built), self.output, &self.outputs_by_cmt)?)
    }

    /// Reads the config's dataset.
    pub fn load_dataset(&self) -> Result<Dataset, FitCmdError> {
        Ok(Dataset::from_path(
            &self.data,
            &ReadOptions {
                ignore: self.raw.ignore_columns.clone(),
                columns: self.raw.columns.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
        )?)
    }

    /// One line describing the fit.
    pub fn describe(&self) -> String {
        let m = self.model();
        let nets: Vec<String> = m
            .networks()
            .iter()
            .map(|n| {
                format!(
                    "network {} {:?} {} ({} weights)",
                    n.name,
                    n.mlp.widths(),
                    n.mlp.activation().name(),
                    n.mlp.n_params()
                )
            })
            .collect();
        let neural = if nets.is_empty() { String::new() } else { format!(", {}", nets.join(", ")) };
        format!(
            "model {}{neural}; output {}; modes {}; error {:?}; engine {:?}",
            m.name(),
            m.output_names()[self.output],
            self.modes.join(", "),
            self.spec.error,
            self.spec.engine
        )
    }
}

/// Grid points of the shape penalty (geometric from 1/1000 of the largest
/// observation to `shape_max` times it).
const SHAPE_POINTS: usize = 48;

/// The `[neural] shape` penalty, if asked for.
fn shape_penalty<'a>(
    cfg: &FitConfig,
    built: &'a FitModel,
    subjects: &[FitSubject],
) -> Result<Option<StateFluxShape<'a>>, FitCmdError> {
    let (Some(n), Some((from, to))) = (&cfg.raw.neural, cfg.flux) else { return Ok(None) };
    let Some(shape) = n.shape.as_deref().and_then(Shape::parse) else { return Ok(None) };
    let dmax = subjects.iter().flat_map(|s| s.dv.iter().copied()).fold(0.0f64, f64::max);
    let (lo, hi) = (1e-3 * dmax, n.shape_max.unwrap_or(10.0) * dmax);
    StateFluxShape::new(
        &built.system,
        cfg.spec.params.len(),
        from,
        to,
        cfg.output,
        shape,
        lo,
        hi,
        SHAPE_POINTS,
        n.shape_weight.unwrap_or(1000.0),
    )
    .map(Some)
    .map_err(|reason| FitCmdError::Config { file: cfg.source.clone(), reason: format!("[neural] shape: {reason}") })
}

/// What the shape penalty is and how well the fit keeps it.
fn shape_json(cfg: &FitConfig, shape: Option<&StateFluxShape>, r: &FitResult) -> Value {
    let (Some(sh), Some(n)) = (shape, &cfg.raw.neural) else { return Value::Null };
    let grid = sh.grid();
    let range = [grid[0], grid[grid.len() - 1]];
    let (mut a, mut b) = (vec![0.0; r.theta.len()], vec![0.0; r.weights.len()]);
    let penalty = sh.value_grad(&r.theta, &r.weights, &mut a, &mut b);
    json!({
        "shape": n.shape,
        "weight": n.shape_weight.unwrap_or(1000.0),
        "concentration_range": range,
        "points": grid.len(),
        "penalty": penalty,
        "max_violation_log": sh.max_violation(&r.theta, &r.weights),
    })
}

/// Progress events sent to the caller (the CLI draws a bar from them).
pub enum FitEvent<'a> {
    /// A mode starts: its name and planned iterations.
    Start(&'a str, usize),
    /// An iteration finished.
    Iter(Progress),
    /// The mode finished.
    Done,
}

fn model_of<'a>(built: &'a FitModel, spec: &FitSpec, cfg: &FitConfig) -> Model<'a> {
    let n = cfg.raw.neural.as_ref();
    let scale = n.and_then(|n| n.init_scale).unwrap_or(0.5);
    // Network k starts from the seeded initialisation of seed + k.
    let init: Vec<f64> = cfg
        .model()
        .networks()
        .iter()
        .enumerate()
        .flat_map(|(k, net)| net.mlp.init(spec.seed.wrapping_add(k as u64), scale))
        .collect();
    Model {
        system: &built.system,
        fast: built.system.fast(),
        n_weights: built.n_weights,
        weights_init: init,
        weight_prior_sd: n.and_then(|n| n.weight_prior_sd),
        initial_state: built.init.as_deref(),
    }
}

fn no_eta(spec: &FitSpec) -> FitSpec {
    let mut s = spec.clone();
    s.params.iter_mut().for_each(|p| p.eta = None);
    s
}

fn named(names: &[String], vals: &[f64]) -> Value {
    let mut m = serde_json::Map::new();
    for (n, v) in names.iter().zip(vals) {
        m.insert(n.clone(), json!(v));
    }
    Value::Object(m)
}

/// Estimates with SEs (natural scale by the delta method) for one fit.
fn estimates_json(spec: &FitSpec, r: &FitResult, se_phi: Option<&[f64]>) -> Value {
    let se_of = |name: &str| -> Option<f64> {
        let se = se_phi?;
        r.phi_names.iter().position(|n| n == name).map(|i| se[i])
    };
    let mut est = serde_json::Map::new();
    for (k, p) in spec.params.iter().enumerate() {
        let v = r.theta[k];
        let mut e = serde_json::Map::new();
        e.insert("value".into(), json!(v));
        e.insert("fixed".into(), json!(p.fixed));
        let key = match p.transform {
            Transform::Log => format!("log {}", p.name),
            Transform::Identity => p.name.clone(),
        };
        if let Some(se) = se_of(&key).filter(|s| s.is_finite()) {
            let se_nat = if p.transform == Transform::Log { v * se } else { se };
            e.insert("se".into(), json!(se_nat));
            e.insert("rse_percent".into(), json!(100.0 * se_nat / v.abs()));
        }
        est.insert(p.name.clone(), Value::Object(e));
    }
    Value::Object(est)
}

/// Per-observation predictions of a fit over `subjects` (PRED, IPRED).
#[allow(clippy::type_complexity)]
fn predict_fit(
    model: &Model,
    spec: &FitSpec,
    r: &FitResult,
    subjects: &[FitSubject],
    with_eta: bool,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>, fit::FitError> {
    let mut s = spec.clone();
    for (k, p) in s.params.iter_mut().enumerate() {
        p.init = r.theta[k];
        if !p.fixed {
            p.transform = Transform::Identity;
            p.fixed = true;
        }
    }
    s.sigma_init = r.sigma.clone();
    let m = Model {
        system: model.system,
        fast: model.fast,
        n_weights: model.n_weights,
        weights_init: r.weights.clone(),
        weight_prior_sd: None,
        initial_state: model.initial_state,
    };
    let refs: Vec<&FitSubject> = subjects.iter().collect();
    if with_eta {
        let obj = Objective::new(&m, &s, refs, true)?;
        let mut phi = obj.initial();
        // Shared part: σ (log), ω (log), weights; then η per subject in order.
        let ne = r.eta_params.len();
        let n_shared = phi.len() - subjects.len() * ne;
        for (i, subj) in subjects.iter().enumerate() {
            if let Some((_, eta)) = r.etas.iter().find(|(id, _)| id == &subj.id) {
                phi[n_shared + i * ne..n_shared + (i + 1) * ne].copy_from_slice(eta);
            }
        }
        obj.predictions(&phi)
    } else {
        let s2 = no_eta(&s);
        let obj = Objective::new(&m, &s2, refs, false)?;
        obj.predictions(&obj.initial())
    }
}

/// A fine time grid per subject (for curves of output `output`).
fn grid_subjects(subjects: &[FitSubject], points: usize, output: usize) -> Vec<FitSubject> {
    subjects
        .iter()
        .map(|s| {
            let tmax = s.times.iter().copied().fold(1.0f64, f64::max);
            let times: Vec<f64> = (0..=points).map(|k| s.t0 + (tmax - s.t0) * k as f64 / points as f64).collect();
            FitSubject {
                id: s.id.clone(),
                schedule: s.schedule.clone(),
                t0: s.t0,
                dv: vec![0.0; times.len()],
                outputs: vec![output; times.len()],
                times,
            }
        })
        .collect()
}

/// Runs every mode of the config and writes the outputs into `out`.
/// Returns a short human-readable summary.
pub fn run_fit(
    cfg: &FitConfig,
    ds: &Dataset,
    out: &Path,
    on: &(dyn Fn(FitEvent) + Sync),
) -> Result<String, FitCmdError> {
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let built = cfg.build(ds)?;
    let subjects: Vec<FitSubject> = cfg.subjects(&built, ds)?.into_iter().filter(|s| !s.times.is_empty()).collect();
    let shape = shape_penalty(cfg, &built, &subjects)?;
    let pen: Option<&dyn Penalty> = shape.as_ref().map(|p| p as &dyn Penalty);
    let fail =
        |mode: &str, error: fit::FitError| FitCmdError::Fit { file: cfg.source.clone(), mode: mode.into(), error };
    let mut by_mode = serde_json::Map::new();
    let mut summary = String::new();
    let mut last: Option<(String, FitSpec, FitResult, bool)> = None;
    for mode in &cfg.modes {
        let with_eta = mode == "population";
        let spec = if with_eta { cfg.spec.clone() } else { no_eta(&cfg.spec) };
        let model = model_of(&built, &spec, cfg);
        let start = Instant::now();
        if mode == "individual" {
            let total: usize = spec
                .stages
                .iter()
                .map(|s| match s {
                    Stage::Adam { iterations, .. } | Stage::Lbfgs { iterations } => *iterations,
                })
                .sum();
            on(FitEvent::Start("individual", subjects.len() * total));
            type One = Result<(FitResult, Option<Vec<f64>>), FitCmdError>;
            let results: Vec<One> = subjects
                .par_iter()
                .map(|s| {
                    let one = std::slice::from_ref(s);
                    let mut sp = spec.clone();
                    sp.validation_fraction = 0.0;
                    // σ is not identifiable from one subject's few samples (a pre-dose zero makes
                    // the additive part run to 0): individual fits keep the config's σ fixed.
                    sp.sigma_fixed = true;
                    let r = fit::fit_with_penalty(&model, &sp, one, false, pen, &|p| on(FitEvent::Iter(p)))
                        .map_err(|e| fail(mode, e))?;
                    let se = if cfg.raw.standard_errors.unwrap_or(true) && model.n_weights == 0 {
                        let obj = Objective::new(&model, &sp, vec![s], false).map_err(|e| fail(mode, e))?;
                        fit::standard_errors(&obj, &r.phi).ok()
                    } else {
                        None
                    };
                    Ok((r, se))
                })
                .collect();
            on(FitEvent::Done);
            let mut rows = Vec::new();
            let mut table: Vec<Vec<f64>> = Vec::new();
            let mut n_grad = 0;
            let mut total_loss = 0.0;
            for (s, r) in subjects.iter().zip(results) {
                let (r, se) = r?;
                finite_objective(cfg, &format!("{mode}, subject `{}`", s.id), r.loss)?;
                n_grad += r.n_gradients;
                total_loss += r.loss;
                table.push(r.theta.clone());
                rows.push(json!({
                    "id": s.id,
                    "estimates": estimates_json(&spec, &r, se.as_deref()),
                    "sigma": named(&spec.error.sigma_names().iter().map(|s| s.to_string()).collect::<Vec<_>>(), &r.sigma),
                    "loss": r.loss,
                    "n_gradient_evaluations": r.n_gradients,
                }));
            }
            // Summary of individual estimates: geometric mean and CV of each free parameter.
            let mut summ = serde_json::Map::new();
            for (k, p) in spec.params.iter().enumerate() {
                if p.fixed {
                    continue;
                }
                let logs: Vec<f64> = table.iter().map(|t| t[k].max(1e-300).ln()).collect();
                let m = logs.iter().sum::<f64>() / logs.len() as f64;
                let sd = (logs.iter().map(|l| (l - m).powi(2)).sum::<f64>() / (logs.len().max(2) - 1) as f64).sqrt();
                summ.insert(p.name.clone(), json!({"geometric_mean": m.exp(), "sd_log": sd}));
            }
            let wall = start.elapsed().as_secs_f64();
            summary += &format!(
                "individual: {} subjects fitted separately, total objective {:.4}, {} gradient evaluations, {:.2} s\n",
                subjects.len(),
                total_loss,
                n_grad,
                wall
            );
            by_mode.insert(
                mode.clone(),
                json!({
                    "mode": "individual",
                    "subjects": rows,
                    "summary": Value::Object(summ),
                    "loss": total_loss,
                    "n_gradient_evaluations": n_grad,
                    "wall_time_s": wall,
                }),
            );
            continue;
        }
        let total: usize = spec
            .stages
            .iter()
            .map(|s| match s {
                Stage::Adam { iterations, .. } | Stage::Lbfgs { iterations } => *iterations,
            })
            .sum();
        on(FitEvent::Start(mode, total));
        let r = fit::fit_with_penalty(&model, &spec, &subjects, with_eta, pen, &|p| on(FitEvent::Iter(p)))
            .map_err(|e| fail(mode, e))?;
        on(FitEvent::Done);
        finite_objective(cfg, mode, r.loss)?;
        // Time per full-data gradient at the optimum (training subjects).
        let train: Vec<&FitSubject> = subjects.iter().filter(|s| !r.validation_ids.contains(&s.id)).collect();
        let obj = Objective::new(&model, &spec, train, with_eta).map_err(|e| fail(mode, e))?;
        let obj = match pen {
            Some(p) => obj.with_penalty(p),
            None => obj,
        };
        // One warm-up call (per-thread workspaces are allocated on first
        // use), then the median of 5 batches of 10, so one disturbed batch
        // on a shared machine does not set the figure.
        obj.value_grad(&r.phi).map_err(|e| fail(mode, e))?;
        let mut batches = Vec::with_capacity(5);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..10 {
                obj.value_grad(&r.phi).map_err(|e| fail(mode, e))?;
            }
            batches.push(t.elapsed().as_secs_f64() * 1e3 / 10.0);
        }
        batches.sort_by(f64::total_cmp);
        let grad_ms = batches[2];
        let se = if cfg.raw.standard_errors.unwrap_or(true) && model.n_weights == 0 {
            fit::standard_errors(&obj, &r.phi).ok()
        } else {
            None
        };
        let eta_names: Vec<String> = r.eta_params.iter().map(|&k| spec.params[k].name.clone()).collect();
        let mut omega = serde_json::Map::new();
        if with_eta {
            for (i, &k) in r.eta_params.iter().enumerate() {
                let p = &spec.params[k];
                let mut e = serde_json::Map::new();
                e.insert("value".into(), json!(r.omega[i]));
                e.insert("fixed".into(), json!(p.eta.is_some_and(|e| e.1)));
                let key = format!("log omega_{}", p.name);
                if let Some(se) = se.as_ref().and_then(|se| r.phi_names.iter().position(|n| n == &key).map(|j| se[j])) {
                    e.insert("se".into(), json!(r.omega[i] * se));
                }
                omega.insert(p.name.clone(), Value::Object(e));
            }
        }
        let sigma_names: Vec<String> = spec.error.sigma_names().iter().map(|s| s.to_string()).collect();
        let mut sigma = serde_json::Map::new();
        for (i, n) in sigma_names.iter().enumerate() {
            let mut e = serde_json::Map::new();
            e.insert("value".into(), json!(r.sigma[i]));
            if let Some(se) =
                se.as_ref().and_then(|se| r.phi_names.iter().position(|x| x == &format!("log {n}")).map(|j| se[j]))
            {
                e.insert("se".into(), json!(r.sigma[i] * se));
            }
            sigma.insert(n.clone(), Value::Object(e));
        }
        let res: Vec<Value> = r
            .etas
            .iter()
            .map(|(id, eta)| {
                let ind: Vec<f64> = r.eta_params.iter().zip(eta).map(|(&k, e)| r.theta[k] * e.exp()).collect();
                json!({"id": id, "eta": named(&eta_names, eta), "params": named(&eta_names, &ind)})
            })
            .collect();
        let history: Vec<Value> = r.history.iter().map(|h| json!([h.iteration, h.loss, h.validation])).collect();
        let heldout = match &cfg.raw.heldout {
            Some(h) => {
                let (v, csv) = heldout(cfg, h, &model, &spec, &r, &subjects).map_err(|e| fail(mode, e))?;
                write_out(&out.join("heldout.csv"), csv.as_bytes())?;
                Some(v)
            }
            None => None,
        };
        summary += &format!(
            "{mode}: objective {:.4}{}, {} gradient evaluations ({}), {:.2} s, {:.3} ms per full-data gradient\n",
            r.loss,
            r.validation_loss
                .map(|v| format!(
                    ", validation {v:.4} ({})",
                    r.validation_criterion.map(|c| c.as_str()).unwrap_or("typical")
                ))
                .unwrap_or_default(),
            r.n_gradients,
            r.engine_used,
            r.wall_s,
            grad_ms
        );
        for (k, p) in spec.params.iter().enumerate() {
            summary += &format!("    {:<6} {:>12.5}{}\n", p.name, r.theta[k], if p.fixed { " (fixed)" } else { "" });
        }
        if let Some(h) = &heldout {
            summary += &format!("    held-out: {}\n", h["summary"].as_str().unwrap_or(""));
        }
        by_mode.insert(
            mode.clone(),
            json!({
                "mode": mode,
                "engine": r.engine_used,
                "estimates": estimates_json(&spec, &r, se.as_deref()),
                "sigma": Value::Object(sigma),
                "omega": Value::Object(omega),
                "random_effects": res,
                "n_weights": model.n_weights,
                "loss": r.loss,
                "validation_loss": r.validation_loss,
                "validation_criterion": r.validation_criterion,
                "validation_ids": r.validation_ids,
                "loss_history": history,
                "n_gradient_evaluations": r.n_gradients,
                "wall_time_s": r.wall_s,
                "time_per_gradient_ms": grad_ms,
                "heldout": heldout,
                "shape": shape_json(cfg, shape.as_ref(), &r),
            }),
        );
        last = Some((mode.clone(), spec, r, with_eta));
    }
    // Top level: the last mode, plus every mode.
    let mut top = match cfg.modes.last().and_then(|m| by_mode.get(m)) {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let last_heldout = top.get("heldout").filter(|v| !v.is_null()).cloned();
    top.insert("config".into(), json!(cfg.source));
    top.insert("name".into(), json!(cfg.raw.name));
    top.insert("model".into(), json!(cfg.describe()));
    top.insert("data".into(), json!(cfg.data.display().to_string()));
    top.insert("by_mode".into(), Value::Object(by_mode));
    write_json(&out.join("fit.json"), &Value::Object(top))?;
    if let Some((mode, spec, r, with_eta)) = &last {
        let model = model_of(&built, spec, cfg);
        write_model(cfg, out, mode, spec, r)?;
        outputs(cfg, out, &built, shape.as_ref(), &model, spec, r, &subjects, *with_eta, last_heldout.as_ref())?;
    }
    Ok(summary)
}

fn write_json(path: &Path, v: &Value) -> Result<(), FitCmdError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io_err(path, e))?;
    write_out(path, (text + "\n").as_bytes())
}

/// Writes an output file atomically ([`crate::atomic`]); a failure is an
/// I/O error naming the path.
fn write_out(path: &Path, bytes: &[u8]) -> Result<(), FitCmdError> {
    crate::atomic::write_bytes(path, bytes)
        .map_err(|e| FitCmdError::Io { path: path.display().to_string(), reason: e.reason })
}

/// A NaN or infinite objective is an error, never a result.
fn finite_objective(cfg: &FitConfig, mode: &str, loss: f64) -> Result<(), FitCmdError> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(FitCmdError::NonFinite { what: format!("{}: fit ({mode}): the objective is {loss}", cfg.source) })
    }
}

/// Refuses non-finite predictions before anything is written.
fn check_finite_predictions(path: &Path, dv: &[f64], pred: &[f64], ipred: &[f64]) -> Result<(), FitCmdError> {
    if let Some(k) = (0..pred.len()).find(|&k| !(pred[k].is_finite() && ipred[k].is_finite() && dv[k].is_finite())) {
        return Err(FitCmdError::NonFinite {
            what: format!("{}: row {} (PRED {}, IPRED {})", path.display(), k + 1, pred[k], ipred[k]),
        });
    }
    Ok(())
}

fn write_model(cfg: &FitConfig, out: &Path, mode: &str, spec: &FitSpec, r: &FitResult) -> Result<(), FitCmdError> {
    let names: Vec<String> = spec.params.iter().map(|p| p.name.clone()).collect();
    let eta_names: Vec<String> = r.eta_params.iter().map(|&k| spec.params[k].name.clone()).collect();
    // The first network (as before several were possible); `networks` lists every one.
    let nets: Vec<Value> = cfg
        .model()
        .networks()
        .iter()
        .map(|n| json!({"name": n.name, "widths": n.mlp.widths(), "activation": n.mlp.activation().name()}))
        .collect();
    let net = nets.first().cloned();
    let v = json!({
        "format": "insilico-fit-model/1",
        "config": cfg.source,
        "mode": mode,
        "model": cfg.model().name(),
        "networks": nets,
        "params": names,
        "theta": r.theta,
        "sigma": r.sigma,
        "omega": r.omega,
        "eta_params": eta_names,
        "etas": r.etas.iter().map(|(id, e)| json!({"id": id, "eta": e})).collect::<Vec<_>>(),
        "net": net,
        "weights": r.weights,
    });
    write_json(&out.join("model.json"), &v)
}

#[allow(clippy::too_many_arguments)]
fn outputs(
    cfg: &FitConfig,
    out: &Path,
    built: &FitModel,
    shape: Option<&StateFluxShape>,
    model: &Model,
    spec: &FitSpec,
    r: &FitResult,
    subjects: &[FitSubject],
    with_eta: bool,
    heldout_json: Option<&Value>,
) -> Result<(), FitCmdError> {
    let fail = |error: fit::FitError| FitCmdError::Fit { file: cfg.source.clone(), mode: "outputs".into(), error };
    let io = |e: String| FitCmdError::Io { path: out.display().to_string(), reason: e };
    let preds = predict_fit(model, spec, r, subjects, with_eta).map_err(fail)?;
    // predictions.csv
    let path = out.join("predictions.csv");
    let mut text = String::from("ID,TIME,DV,PRED,IPRED\n");
    let (mut dv, mut pr, mut ip) = (Vec::new(), Vec::new(), Vec::new());
    for (s, (p, i)) in subjects.iter().zip(&preds) {
        for k in 0..s.times.len() {
            text += &format!("{},{},{},{},{}\n", s.id, s.times[k], s.dv[k], p[k], i[k]);
            dv.push(s.dv[k]);
            pr.push(p[k]);
            ip.push(i[k]);
        }
    }
    check_finite_predictions(&path, &dv, &pr, &ip)?;
    write_out(&path, text.as_bytes())?;
    let title = cfg.raw.name.clone().unwrap_or_else(|| cfg.model().name().to_string());
    plots::lines(
        &out.join("loss.png"),
        &format!("{title}: objective"),
        "iteration",
        "objective (negative log posterior)",
        &[
            ("training".into(), r.history.iter().map(|h| (h.iteration as f64, h.loss)).collect()),
            (
                match r.validation_criterion {
                    Some(fit::ValidationCriterion::Conditional) => "validation (conditional, MAP eta)".into(),
                    _ => "validation (PRED)".into(),
                },
                r.history.iter().filter_map(|h| h.validation.map(|v| (h.iteration as f64, v))).collect(),
            ),
        ]
        .into_iter()
        .filter(|s: &(String, Vec<(f64, f64)>)| !s.1.is_empty())
        .collect::<Vec<_>>(),
    )
    .map_err(io)?;
    plots::obs_vs_pred(&out.join("obs_vs_pred.png"), &format!("{title}: observed vs predicted"), &dv, &pr, &ip)
        .map_err(io)?;
    let grid = grid_subjects(subjects, 120, cfg.output);
    let gp = predict_fit(model, spec, r, &grid, with_eta).map_err(fail)?;
    let panels: Vec<plots::SubjectPanel> = subjects
        .iter()
        .zip(&grid)
        .zip(&gp)
        .take(36)
        .map(|((s, g), (p, i))| plots::SubjectPanel {
            id: s.id.clone(),
            obs: s.times.iter().copied().zip(s.dv.iter().copied()).collect(),
            pred: g.times.iter().copied().zip(p.iter().copied()).collect(),
            ipred: g.times.iter().copied().zip(i.iter().copied()).collect(),
        })
        .collect();
    plots::subjects(
        &out.join("subjects.png"),
        &format!("{title}: per-subject fits (black: data, blue: PRED, red: IPRED)"),
        &panels,
    )
    .map_err(io)?;
    // With a network and `[neural] from`/`to`: the flux into `to` against the
    // concentration of `from` (mechanistic and learned parts together).
    let flux = match (cfg.n_weights() > 0, cfg.flux) {
        (true, Some((from, to))) => Some(match shape {
            Some(sh) => sh.clone(),
            None => StateFluxShape::new(
                &built.system,
                cfg.spec.params.len(),
                from,
                to,
                cfg.output,
                Shape::Monotone,
                1.0,
                2.0,
                2,
                0.0,
            )
            .map_err(io)?,
        }),
        _ => None,
    };
    if let Some(sh) = &flux {
        let dmax = subjects.iter().flat_map(|s| s.dv.iter().copied()).fold(0.0f64, f64::max);
        let cmax = 4.0 * dmax;
        let learned = |c: f64| sh.flux_at(&r.theta, &r.weights, c);
        let grid: Vec<f64> = (0..=240).map(|k| cmax * k as f64 / 240.0).collect();
        // Amount per unit concentration (V for cp = central / V).
        let per_c = learned(1.0).1;
        let mut flux_series =
            vec![("learned".to_string(), grid.iter().map(|&c| (c, learned(c).0)).collect::<Vec<_>>())];
        for (name, f) in reference_fluxes(heldout_json) {
            flux_series.push((format!("{name} (surrogate)"), grid.iter().map(|&c| (c, f(c))).collect()));
        }
        let rate_series: Vec<(String, Vec<(f64, f64)>)> = flux_series
            .iter()
            .map(|(n, pts)| {
                let k = pts.iter().skip(1).map(|&(c, j)| (c, j / (c * per_c))).collect();
                (n.clone(), k)
            })
            .collect();
        let (from, to) = cfg.flux.unwrap_or((0, 0));
        let states = cfg.model().state_names();
        let form = format!("flux {} -> {}", states[from], states[to]);
        plots::lines(
            &out.join("rate.png"),
            &format!("{title}: learned elimination rate ({form}; data up to C = {dmax:.3})"),
            "concentration C",
            "elimination rate constant k(C) = flux/(V C) (1/time)",
            &rate_series,
        )
        .map_err(io)?;
        plots::lines(
            &out.join("elimination_flux.png"),
            &format!("{title}: learned elimination flux ({form}; data up to C = {dmax:.3})"),
            "concentration C",
            "elimination flux (amount/time)",
            &flux_series,
        )
        .map_err(io)?;
        let mut csv = String::from("C,k,flux,in_data_range\n");
        for k in 0..=80 {
            let c = cmax * k as f64 / 80.0;
            let (j, _) = learned(c);
            // At C = 0 the rate constant is the limit J/x as x -> 0.
            let kk = if c > 0.0 {
                j / (c * per_c)
            } else {
                let tiny = 1e-9 * dmax.max(f64::MIN_POSITIVE);
                learned(tiny).0 / (tiny * per_c)
            };
            csv += &format!("{c},{kk},{j},{}\n", u8::from(c <= dmax));
        }
        write_out(&out.join("learned_rate.csv"), csv.as_bytes())?;
    }
    Ok(())
}

/// Elimination flux functions `C ↦ flux` of the fitted `[heldout]` reference
/// models (from their estimates in the held-out JSON), for the plots.
#[allow(clippy::type_complexity)]
fn reference_fluxes(heldout: Option<&Value>) -> Vec<(String, Box<dyn Fn(f64) -> f64>)> {
    let Some(refs) = heldout.and_then(|h| h["references"].as_array()) else { return Vec::new() };
    refs.iter()
        .filter_map(|r| {
            let name = r["label"].as_str().or_else(|| r["reference_model"].as_str())?.to_string();
            let est = &r["reference_estimates"];
            let get = |k: &str| est[k].as_f64();
            let (vmax, km, cl) = (get("VMAX"), get("KM"), get("CL"));
            let f: Box<dyn Fn(f64) -> f64> = match (vmax, km, cl) {
                (Some(vm), Some(km), cl) => {
                    let cl = cl.unwrap_or(0.0);
                    Box::new(move |c| cl * c + vm * c / (km + c))
                }
                (None, None, Some(cl)) => Box::new(move |c| cl * c),
                _ => return None,
            };
            Some((name, f))
        })
        .collect()
}

/// A surrogate truth of `[heldout]`: a zoo model or a model file, compiled
/// like the fitted model (no network; output 0 observed, doses into state 1).
struct Reference {
    name: String,
    system: ModelSystem,
}

impl Reference {
    fn parse(name: &str, base: Option<&Path>) -> Result<Reference, String> {
        let model = crate::models_zoo::resolve(name, base).map_err(|e| format!("reference model `{name}`: {e}"))?;
        if !model.networks().is_empty() {
            return Err(format!("reference model `{name}` has a network: a reference must be mechanistic"));
        }
        let system = ModelSystem::new(&model, &[]).map_err(|e| format!("reference model `{name}`: {e}"))?;
        Ok(Reference { name: model.name().to_string(), system })
    }
    fn system(&self) -> &dyn System {
        &self.system
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// The reference model names of `[heldout]` (`reference_models`, or the
/// single `reference_model`), validated (model files resolve against `base`).
fn reference_names(h: &RawHeldout, base: Option<&Path>) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = h.reference_model.iter().cloned().collect();
    names.extend(h.reference_models.iter().flatten().cloned());
    let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
    if names.is_empty() {
        return Err("give `reference_models = [...]` (or `reference_model`)".into());
    }
    for n in &names {
        Reference::parse(n, base)?;
    }
    Ok(names)
}

/// Fits a surrogate truth (pooled, the config's error model) by L-BFGS from
/// a few starts of its elimination parameters (the others from the config);
/// the best objective wins.
fn fit_reference(
    refm: &Reference,
    spec: &FitSpec,
    subjects: &[FitSubject],
    random_effects: &[String],
) -> Result<(FitSpec, FitResult), fit::FitError> {
    let with_eta = sys_has_any(refm.system(), random_effects);
    let sys = refm.system();
    // Initial values: the config's where names match; KM around the median
    // observation, VMAX and CL spread over a decade.
    let dvs: Vec<f64> = subjects.iter().flat_map(|s| s.dv.iter().copied()).collect();
    let mut sorted = dvs.clone();
    sorted.sort_by(f64::total_cmp);
    let med = sorted.get(sorted.len() / 2).copied().unwrap_or(1.0).max(1e-3);
    let starts: [(f64, f64, f64); 4] = [(5.0, 1.0, 2.0), (2.0, 0.5, 0.5), (10.0, 2.0, 0.2), (3.0, 3.0, 1.0)];
    let mut best: Option<(FitSpec, FitResult)> = None;
    for (vm, km, cl) in starts {
        let params: Vec<ParamSpec> = sys
            .param_names()
            .iter()
            .map(|n| {
                let from_cfg = spec.params.iter().find(|p| p.name.eq_ignore_ascii_case(n) && !p.fixed).map(|p| p.init);
                let init = match n.as_str() {
                    "KM" => km * med,
                    "VMAX" => vm * med,
                    "CL" => from_cfg.map_or(cl, |c| c * cl / 2.0),
                    _ => from_cfg.unwrap_or(1.0),
                };
                let mut ps = ParamSpec::new(n, init);
                if random_effects.iter().any(|r| r.eq_ignore_ascii_case(n)) {
                    ps.eta = Some((0.3, false));
                }
                ps
            })
            .collect();
        let rspec = FitSpec {
            params,
            stages: vec![Stage::Lbfgs { iterations: 400 }],
            validation_fraction: 0.0,
            engine: Engine::Auto,
            ..no_eta(spec)
        };
        let rmodel = Model {
            system: sys,
            fast: None,
            n_weights: 0,
            weights_init: Vec::new(),
            weight_prior_sd: None,
            initial_state: None,
        };
        // A start that fails to solve is skipped; the others decide.
        let Ok(rr) = fit::fit(&rmodel, &rspec, subjects, with_eta, &|_| {}) else { continue };
        if rr.loss.is_finite() && best.as_ref().is_none_or(|(_, b)| rr.loss < b.loss) {
            best = Some((rspec, rr));
        }
    }
    best.ok_or_else(|| fit::FitError::Spec(format!("[heldout] reference model {} could not be fitted", refm.name())))
}

fn sys_has_any(sys: &dyn System, names: &[String]) -> bool {
    sys.param_names().iter().any(|n| names.iter().any(|r| r.eq_ignore_ascii_case(n)))
}

/// Held-out regimens: fit each reference model (pooled, same data and error
/// model), simulate each regimen with it (a surrogate truth) and with the
/// fitted model (typical subject), and report the errors per reference.
/// The held-out check: its JSON and `heldout.csv`
/// (`REFERENCE,REGIMEN,TIME,REF,PRED`).
#[allow(clippy::too_many_arguments)]
fn heldout(
    cfg: &FitConfig,
    h: &RawHeldout,
    model: &Model,
    spec: &FitSpec,
    r: &FitResult,
    subjects: &[FitSubject],
) -> Result<(Value, String), fit::FitError> {
    let bad = |s: String| fit::FitError::Spec(format!("[heldout] {s}"));
    let names = reference_names(h, cfg.base.as_deref()).map_err(bad)?;
    let mut regs = Vec::new();
    for reg in &h.regimens {
        if !(reg.amount.is_finite() && reg.amount > 0.0) || reg.times.is_empty() {
            return Err(bad(format!("regimen `{}` needs amount > 0 and times", reg.name)));
        }
        let mut dose = Dose::bolus(0.0, 0, reg.amount);
        if let (Some(ii), Some(n)) = (reg.ii, reg.doses) {
            if n > 1 {
                dose = dose.repeated(ii, n - 1);
            }
        }
        regs.push(FitSubject {
            outputs: Vec::new(),
            id: reg.name.clone(),
            schedule: Schedule::new().dose(dose),
            t0: 0.0,
            times: reg.times.clone(),
            dv: vec![0.0; reg.times.len()],
        });
    }
    let mut csv = String::from("REFERENCE,REGIMEN,TIME,REF,PRED\n");
    let mut refs = Vec::new();
    let mut summaries = Vec::new();
    let re = h.reference_random_effects.clone().unwrap_or_default();
    let mut variants: Vec<(String, Vec<String>)> = names.iter().map(|n| (n.clone(), Vec::new())).collect();
    if !re.is_empty() {
        variants.extend(names.iter().map(|n| (n.clone(), re.clone())));
    }
    for (name, re) in &variants {
        let refm = Reference::parse(name, cfg.base.as_deref()).map_err(bad)?;
        let (rspec, rr) = fit_reference(&refm, spec, subjects, re)?;
        let population = sys_has_any(refm.system(), re);
        let label = if population {
            format!("{} (population, random effects on {})", refm.name(), re.join(", "))
        } else {
            format!("{} (pooled)", refm.name())
        };
        let rmodel = Model {
            system: refm.system(),
            fast: None,
            n_weights: 0,
            weights_init: Vec::new(),
            weight_prior_sd: None,
            initial_state: None,
        };
        let mut out = Vec::new();
        let (mut all_rel, mut all_n) = (0.0, 0usize);
        let mut mean_of_regimens = 0.0;
        for (reg, s) in h.regimens.iter().zip(&regs) {
            let truth = predict_fit(&rmodel, &rspec, &rr, std::slice::from_ref(s), false)?;
            let pred = predict_fit(model, &no_eta(spec), r, std::slice::from_ref(s), false)?;
            let (t, p) = (&truth[0].0, &pred[0].0);
            for ((time, a), b) in reg.times.iter().zip(t).zip(p) {
                csv += &format!("{},{},{time},{a},{b}\n", label.replace(',', ";"), reg.name.replace(',', ";"));
            }
            let n = t.len() as f64;
            let rmse = (t.iter().zip(p).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n).sqrt();
            let sel: Vec<(f64, f64)> = t.iter().copied().zip(p.iter().copied()).filter(|(a, _)| *a > 0.05).collect();
            let mape = 100.0 * sel.iter().map(|(a, b)| ((a - b) / a).abs()).sum::<f64>() / sel.len().max(1) as f64;
            let maxrel = 100.0 * sel.iter().map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
            all_rel += mape * sel.len() as f64;
            all_n += sel.len();
            mean_of_regimens += mape / h.regimens.len() as f64;
            out.push(json!({
                "regimen": reg.name, "amount": reg.amount, "ii": reg.ii, "doses": reg.doses.unwrap_or(1),
                "times": reg.times, "reference": t, "predicted": p,
                "rmse": rmse, "mean_abs_rel_err_percent": mape, "max_abs_rel_err_percent": maxrel,
            }));
        }
        let pnames: Vec<String> = rspec.params.iter().map(|p| p.name.clone()).collect();
        let overall = all_rel / all_n.max(1) as f64;
        summaries.push(format!("{label}: {overall:.2}% (mean of regimens {mean_of_regimens:.2}%)"));
        let eta_names: Vec<String> = rr.eta_params.iter().map(|&k| rspec.params[k].name.clone()).collect();
        refs.push(json!({
            "reference_model": refm.name(),
            "label": label,
            "fitted": if population { "population (typical subject simulated)" } else { "pooled" },
            "reference_omega": named(&eta_names, &rr.omega),
            "reference_estimates": named(&pnames, &rr.theta),
            "reference_sigma": rr.sigma,
            "reference_objective": rr.loss,
            "regimens": out,
            "mean_abs_rel_err_percent": overall,
            "mean_over_regimens_percent": mean_of_regimens,
        }));
    }
    let re = h.reference_random_effects.clone().unwrap_or_default();
    // The first reference is repeated at the top level (the layout before
    // several references were allowed).
    let first = refs.first().cloned().unwrap_or(Value::Null);
    let v = json!({
        "how": format!(
            "each reference model ({}) fitted (pooled{}, {:?} error, best of 4 starts) to the training data, then \
             simulated noise-free (typical subject) for each regimen; the fitted model's typical prediction is compared with it at \
             the listed times (relative errors over points where the reference exceeds 0.05; overall = pooled \
             over all such points)",
            names.join(", "),
            if re.is_empty() { String::new() } else { format!(", and as a population with random effects on {}", re.join(", ")) },
            spec.error
        ),
        "reference_model": first["reference_model"],
        "reference_estimates": first["reference_estimates"],
        "reference_objective": first["reference_objective"],
        "regimens": first["regimens"],
        "mean_abs_rel_err_percent": first["mean_abs_rel_err_percent"],
        "references": refs,
        "summary": format!("mean |relative error| over {} regimens: {}", h.regimens.len(), summaries.join("; ")),
    });
    Ok((v, csv))
}

/// `simulate --fitted DIR`: predictions of a fitted model for any dataset:
/// `ID,TIME,PRED,IPRED` (IPRED empty for subjects not in the fit).
pub fn simulate_fitted(cfg: &FitConfig, fitted: &Path, ds: &Dataset, out: &Path) -> Result<usize, FitCmdError> {
    let mpath = fitted.join("model.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| io_err(&mpath, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| io_err(&mpath, e))?;
    let bad = |s: &str| io_err(&mpath, s);
    let nums = |key: &str| -> Result<Vec<f64>, FitCmdError> {
        v.get(key)
            .and_then(|x| x.as_array())
            .ok_or_else(|| bad(&format!("missing `{key}`")))?
            .iter()
            .map(|x| x.as_f64().ok_or_else(|| bad(&format!("`{key}` must hold numbers"))))
            .collect()
    };
    let theta = nums("theta")?;
    let weights = nums("weights")?;
    let sigma = nums("sigma")?;
    let built = cfg.build(ds)?;
    if theta.len() != cfg.spec.params.len() || weights.len() != built.n_weights() {
        return Err(bad("the saved model does not match the config (parameter or weight count)"));
    }
    let eta_names: Vec<String> = v
        .get("eta_params")
        .and_then(|x| x.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let eta_params: Vec<usize> =
        eta_names.iter().filter_map(|n| cfg.spec.params.iter().position(|p| &p.name == n)).collect();
    let mut etas: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    if let Some(a) = v.get("etas").and_then(|x| x.as_array()) {
        for e in a {
            let id = e.get("id").and_then(|x| x.as_str()).unwrap_or_default().to_string();
            let eta: Vec<f64> = e
                .get("eta")
                .and_then(|x| x.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default();
            if eta.len() == eta_params.len() {
                etas.insert(id, eta);
            }
        }
    }
    let spec = FitSpec { sigma_init: sigma.clone(), ..no_eta(&cfg.spec) };
    let model = Model {
        system: built.system(),
        fast: built.system().fast(),
        n_weights: built.n_weights(),
        weights_init: weights.clone(),
        weight_prior_sd: None,
        initial_state: built.init.as_deref(),
    };
    // All observation records (MDV or not) get a prediction.
    let map = cfg.mapping(&built);
    let mut rows = Vec::new();
    for subj in &ds.subjects {
        let (schedule, obs) = subj.to_schedule(ds, &map)?;
        if obs.is_empty() {
            continue;
        }
        let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
        let times: Vec<f64> = obs.iter().map(|o| o.time).collect();
        let outputs = obs
            .iter()
            .map(|o| cfg.outputs_by_cmt.iter().find(|(c, _)| *c == o.cmt).map_or(cfg.output, |(_, k)| *k))
            .collect();
        let s = FitSubject { id: subj.id.clone(), schedule, t0, dv: vec![0.0; times.len()], times, outputs };
        let mk = |th: Vec<f64>| FitResult {
            theta: th,
            sigma: sigma.clone(),
            omega: Vec::new(),
            eta_params: Vec::new(),
            etas: Vec::new(),
            weights: weights.clone(),
            loss: 0.0,
            validation_loss: None,
            validation_criterion: None,
            validation_ids: Vec::new(),
            history: Vec::new(),
            n_gradients: 0,
            wall_s: 0.0,
            phi: Vec::new(),
            phi_names: Vec::new(),
            engine_used: String::new(),
        };
        let fail = |e: fit::FitError| FitCmdError::Fit { file: cfg.source.clone(), mode: "simulate".into(), error: e };
        let pred = predict_fit(&model, &spec, &mk(theta.clone()), std::slice::from_ref(&s), false).map_err(fail)?;
        let ipred = match etas.get(&subj.id) {
            Some(eta) => {
                let mut th = theta.clone();
                for (&k, e) in eta_params.iter().zip(eta) {
                    th[k] *= e.exp();
                }
                Some(predict_fit(&model, &spec, &mk(th), std::slice::from_ref(&s), false).map_err(fail)?[0].0.clone())
            }
            None => None,
        };
        for (k, &t) in s.times.iter().enumerate() {
            rows.push((subj.id.clone(), t, pred[0].0[k], ipred.as_ref().map(|v| v[k])));
        }
    }
    if let Some((id, t, ..)) = rows.iter().find(|r| !r.2.is_finite() || r.3.is_some_and(|i| !i.is_finite())) {
        return Err(FitCmdError::Config {
            file: cfg.source.clone(),
            reason: format!("subject `{id}`: the prediction at time {t} is not a finite number; nothing written"),
        });
    }
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        writeln!(w, "ID,TIME,PRED,IPRED")?;
        for (id, t, p, i) in &rows {
            match i {
                Some(i) => writeln!(w, "{id},{t},{p},{i}")?,
                None => writeln!(w, "{id},{t},{p},")?,
            }
        }
        Ok(())
    };
    crate::atomic::write_file(out, write).map_err(|e| io_err(out, e.reason))?;
    Ok(rows.len())
}
