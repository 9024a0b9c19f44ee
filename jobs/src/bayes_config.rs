//! The config shared by `insilico assimilate` and `insilico forecast`: the
//! model, the dataset (doses so far and observations), the fixed population
//! (θ, Ω, σ; from an `insilico fit` FOCE-I output folder and/or the config),
//! the posterior's sampling options, sequential updating and the forecast
//! (horizon, grid, summaries, candidate regimens).
//!
//! # The config file
//! ```toml
//! name = "mapbayr-example"          # optional label
//! model = "pk-2cmt-iv"              # zoo model or a .model file relative to this config
//! data = "mapbayr.csv"              # NONMEM dataset relative to this config
//! population = "../fit-out"         # optional: an `insilico fit` FOCE-I output folder (its fit.json);
//!                                   # θ, Ω and σ come from it and the keys below override them
//! dose_cmt = 1                      # optional, as in the FOCE-I fit config
//! obs_cmt = 1
//! error = "combined2"               # single observed output: error model and σ (SDs)
//! sigma = [0.316, 0.2236]
//! output = "cp"                     # the observed output (default: the model's first)
//! rtol = 1e-6                       # optional ODE tolerances and step limit
//! atol = 1e-9
//! max_steps = 100000
//! ignore_columns = []               # optional, as in `fit`
//! [columns]                         # optional: NONMEM columns under another name
//! [theta]                           # typical values (fixed)
//! CL = 0.9
//! [fixed]                           # other parameters held at a value
//! [omega2]                          # variances: a model parameter (log-normal η named ETA_<param>)
//! CL = 0.3                          #   or a declared `random:` name
//! [omega]                           # or SDs (one of the two per parameter)
//! [[outputs]]                       # instead of error/sigma/output: several observed outputs
//! name = "cp"                       # a model output
//! cmt = 2                           # its observation records: this CMT (or `dvid = 1` with a DVID column)
//! error = "proportional"
//! sigma = [0.1]
//! lloq = 0.05                       # optional: M3 for DV < LLOQ
//! [posterior]
//! method = "auto"                   # laplace | sir | mcmc | auto
//! hessian = "observed"             # Laplace covariance from the observed (full) Hessian, or "expected"
//!                                   # (Gauss–Newton: NONMEM's conditional covariance, ~40% fewer solves)
//! draws = 1000
//! seed = 20261207
//! ess_min = 200                     # auto: MCMC when the importance sampler's ESS is below this
//! [sequential]                      # optional: prospective evaluation (sequential.csv)
//! half_life = 48                    # optional down-weighting of old observations (time units)
//! [filter]                          # optional, for models with `noise:` declarations: filtered.csv, filter.json
//! method = "ekf"                    # ekf (default) | ukf | particle; at each subject's MAP parameters
//! particles = 10000                 # particle filter only
//! seed = 20261207
//! estimate_noise = false            # true: a common scale of the declared noise SDs by the filter likelihood
//! [forecast]
//! start = 24                        # optional: default the subject's last record time
//! horizon = 48
//! step = 0.5                        # reported grid (forecast.csv); default horizon / 96
//! summary_step = 0.125              # grid of the summaries (AUC, CMAX, TIME_ABOVE); default step / 4
//! outputs = ["cp"]                  # default: the observed outputs
//! residual = true                   # residual error in forecast.csv's bands (default true)
//! auc = [[0, 24], [24, 48]]         # windows relative to start (default: the whole horizon)
//! threshold = { cp = 2.0 }          # TIME_ABOVE_<x> per output
//! regimens = "regimens.csv"         # NONMEM-style doses with a REGIMEN column (TIME relative to start)
//! [[regimen]]                       # and/or inline regimens (times relative to start)
//! name = "100mg-q12h"
//! doses = [ { time = 0, amt = 100, cmt = 1, ii = 12, addl = 3 } ]   # also rate, ss = 0
//! ```
//! Unknown keys are errors naming the file and the key; a bad regimen
//! record names the file, line (or regimen and dose number) and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::estimation::filter::FilterMethod;
use crate::estimation::posterior::{LaplaceHessian, PosteriorOptions, SamplingMethod};
use crate::estimation::{ErrorModel, ObservedOutput, Omega, PopulationSpec, RandomEffect};
use crate::fit_focei::{omega_variances, sort_by_model_order};
use crate::model::{Model, ParamKind};
use crate::solvers::data::{Record, Subject};
use crate::solvers::{Dataset, Options, ReadOptions};

/// Errors of `assimilate` and `forecast`. Every message names the file
/// (config, dataset, regimen CSV, posterior folder) and, where it can, the
/// key, line, subject and field.
#[derive(Debug, thiserror::Error)]
pub enum BayesError {
    /// The config (or a file it names) is malformed.
    #[error("{file}: {reason}")]
    Config {
        /// Config (or regimen, fit.json) file.
        file: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Reading or mapping the dataset (or a regimen CSV) failed.
    #[error(transparent)]
    Data(#[from] crate::solvers::DataError),
    /// The posterior could not be built (Ω, data outside the model's outputs, ...).
    #[error("{0}")]
    Estimation(#[from] crate::estimation::EstimationError),
    /// A forecast failed for one subject and regimen.
    #[error("subject `{subject}`, regimen `{regimen}`: {reason}")]
    Forecast {
        /// Subject ID.
        subject: String,
        /// Regimen name.
        regimen: String,
        /// Why.
        reason: String,
    },
    /// A posterior folder (`forecast --posterior DIR`) is missing or inconsistent.
    #[error("{dir}: {reason}")]
    Posterior {
        /// The folder.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An output file could not be written (atomically: nothing partial is left).
    #[error(transparent)]
    Write(#[from] crate::atomic::WriteError),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    model: String,
    data: String,
    population: Option<String>,
    dose_cmt: Option<usize>,
    obs_cmt: Option<usize>,
    error: Option<String>,
    sigma: Option<Vec<f64>>,
    output: Option<String>,
    rtol: Option<f64>,
    atol: Option<f64>,
    max_steps: Option<usize>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    #[serde(default)]
    theta: BTreeMap<String, f64>,
    #[serde(default)]
    fixed: BTreeMap<String, f64>,
    #[serde(default)]
    omega2: BTreeMap<String, f64>,
    #[serde(default)]
    omega: BTreeMap<String, f64>,
    #[serde(default)]
    outputs: Vec<RawOutput>,
    posterior: Option<RawPosterior>,
    sequential: Option<RawSequential>,
    filter: Option<RawFilter>,
    forecast: Option<RawForecast>,
    #[serde(default)]
    regimen: Vec<RawRegimen>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    method: Option<String>,
    particles: Option<usize>,
    seed: Option<u64>,
    estimate_noise: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    cmt: Option<usize>,
    dvid: Option<f64>,
    error: String,
    sigma: Vec<f64>,
    lloq: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosterior {
    method: Option<String>,
    hessian: Option<String>,
    draws: Option<usize>,
    seed: Option<u64>,
    ess_min: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSequential {
    half_life: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForecast {
    start: Option<f64>,
    horizon: f64,
    step: Option<f64>,
    summary_step: Option<f64>,
    outputs: Option<Vec<String>>,
    residual: Option<bool>,
    #[serde(default)]
    auc: Vec<[f64; 2]>,
    #[serde(default)]
    threshold: BTreeMap<String, f64>,
    regimens: Option<String>,
    #[serde(default)]
    regimen: Vec<RawRegimen>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegimen {
    name: String,
    doses: Vec<RawDose>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDose {
    time: f64,
    amt: f64,
    cmt: Option<usize>,
    #[serde(default)]
    rate: f64,
    #[serde(default)]
    ii: f64,
    #[serde(default)]
    addl: u32,
    #[serde(default)]
    ss: u8,
}

/// A candidate regimen: dose records with times relative to the forecast start.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateRegimen {
    /// Its name (the REGIMEN column of the outputs).
    pub name: String,
    /// Dose records (TIME relative to the forecast's start; `line` is the
    /// regimen CSV's line, or the dose's number for inline regimens).
    pub records: Vec<Record>,
    /// Where it was defined (for messages).
    pub source: String,
}

/// `[filter]`: latent-state filtering of models with declared process noise
/// (`noise: state ~ SD`), at each subject's MAP parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSettings {
    /// EKF (default), UKF or particle filter.
    pub method: FilterMethod,
    /// Particles of the particle filter (default 10,000).
    pub particles: usize,
    /// Seed of the particle filter.
    pub seed: u64,
    /// Also estimate a common scale of the declared noise SDs by the
    /// filter's likelihood over all subjects (EKF/UKF only).
    pub estimate_noise: bool,
}

/// `[forecast]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastSettings {
    /// Start (absolute time); `None`: each subject's last record time.
    pub start: Option<f64>,
    /// Length of the forecast.
    pub horizon: f64,
    /// Reported grid step (forecast.csv).
    pub step: f64,
    /// Grid step of the summaries (AUC, CMAX, TIME_ABOVE); divides `step`.
    pub summary_step: f64,
    /// Model outputs forecast.
    pub outputs: Vec<String>,
    /// Residual error in the bands of forecast.csv.
    pub residual: bool,
    /// AUC windows, relative to the start.
    pub auc: Vec<(f64, f64)>,
    /// Thresholds of TIME_ABOVE per output.
    pub threshold: Vec<(String, f64)>,
    /// The candidate regimens (`forecast` needs at least one).
    pub regimens: Vec<CandidateRegimen>,
}

/// A validated assimilate/forecast config.
#[derive(Debug, Clone)]
pub struct BayesConfig {
    /// Config file name (for messages).
    pub source: String,
    /// Label (`name`, else the model's).
    pub name: String,
    /// The model key as written (zoo name or file).
    pub model_key: String,
    /// The compiled model.
    pub model: Model,
    /// Dataset path (resolved against the config's folder).
    pub data: PathBuf,
    /// How the dataset is read.
    pub read: ReadOptions,
    /// The fixed population (single-output fields from the first observed output).
    pub spec: PopulationSpec,
    /// The observed outputs with their error models.
    pub observed: Vec<ObservedOutput>,
    /// ODE options of the forecast (default rtol 1e-6, atol 1e-9).
    pub ode: Options,
    /// `[posterior]` (and `[sequential]`'s half-life, the ODE tolerances when given).
    pub posterior: PosteriorOptions,
    /// `[sequential]` when present: its half-life (`Some(None)` without down-weighting).
    pub sequential: Option<Option<f64>>,
    /// `[filter]` when present.
    pub filter: Option<FilterSettings>,
    /// `[forecast]` when present.
    pub forecast: Option<ForecastSettings>,
    /// Where the population came from (`population = DIR`'s fit.json), if anywhere.
    pub population_from: Option<PathBuf>,
}

/// θ, Ω (with the η targets) and σ read from a FOCE-I `fit.json`.
#[derive(Debug, Clone, PartialEq)]
struct FittedPopulation {
    theta: Vec<(String, f64)>,
    /// η target parameter names (model order) and Ω.
    eta_targets: Vec<String>,
    omega: Vec<Vec<f64>>,
    error: Option<ErrorModel>,
    sigma: Vec<f64>,
}

impl BayesConfig {
    /// Reads a config file.
    pub fn from_path(path: &Path) -> Result<BayesConfig, BayesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BayesError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses a config; relative paths (model, data, population, regimens)
    /// resolve against `base`.
    ///
    /// ```
    /// use insilico_jobs::bayes_config::BayesConfig;
    /// let toml = r#"
    ///     model = "pk-2cmt-oral"
    ///     data = "d.csv"
    ///     error = "proportional"
    ///     sigma = [0.1]
    ///     [theta]
    ///     ka = 1.0
    ///     CL = 5.0
    ///     V1 = 30.0
    ///     Q = 10.0
    ///     V2 = 50.0
    ///     [omega2]
    ///     CL = 0.1
    ///     [forecast]
    ///     horizon = 24
    ///     [[regimen]]
    ///     name = "qd"
    ///     doses = [ { time = 0, amt = 100, cmt = 1 } ]
    /// "#;
    /// let cfg = BayesConfig::from_toml_str(toml, "b.toml", None)?;
    /// assert_eq!(cfg.spec.random[0].name, "ETA_CL");
    /// assert_eq!(cfg.forecast.unwrap().regimens[0].name, "qd");
    /// let bad = BayesConfig::from_toml_str(&toml.replace("horizon", "horizn"), "b.toml", None).unwrap_err();
    /// assert!(bad.to_string().contains("b.toml") && bad.to_string().contains("horizn"));
    /// # Ok::<(), insilico_jobs::bayes_config::BayesError>(())
    /// ```
    pub fn from_toml_str(text: &str, name: &str, base: Option<&Path>) -> Result<BayesConfig, BayesError> {
        let cfg = |reason: String| BayesError::Config { file: name.to_string(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| cfg(e.to_string().trim_end().to_string()))?;
        let resolve = |p: &str| match base {
            Some(b) => b.join(p),
            None => PathBuf::from(p),
        };
        let model = crate::models_zoo::resolve(&raw.model, base).map_err(|e| cfg(format!("key `model`: {e}")))?;
        let pop_dir = raw.population.as_deref().map(resolve);
        let fitted = match &pop_dir {
            Some(dir) => Some(read_fit_json(dir, &model)?),
            None => None,
        };
        for (k, v) in raw.theta.iter().chain(&raw.fixed) {
            if !v.is_finite() {
                return Err(cfg(format!("parameter `{k}` = {v}: must be a finite number")));
            }
        }
        // θ: the fit's, overridden by [theta].
        let mut theta: Vec<(String, f64)> = fitted.as_ref().map(|f| f.theta.clone()).unwrap_or_default();
        for (k, v) in &raw.theta {
            match theta.iter_mut().find(|(n, _)| n == k) {
                Some(e) => e.1 = *v,
                None => theta.push((k.clone(), *v)),
            }
        }
        let params = model.params();
        sort_by_model_order(&model, &mut theta);
        // Ω: the fit's, with [omega2] / [omega] overriding or adding diagonal entries.
        let (mut targets, mut omega) = match &fitted {
            Some(f) => (f.eta_targets.clone(), f.omega.clone()),
            None => (Vec::new(), Vec::new()),
        };
        let mut set = |k: &str, v: f64| {
            let i = match targets.iter().position(|t| t == k) {
                Some(i) => i,
                None => {
                    targets.push(k.to_string());
                    for r in omega.iter_mut() {
                        r.push(0.0);
                    }
                    omega.push(vec![0.0; targets.len()]);
                    targets.len() - 1
                }
            };
            omega[i][i] = v;
        };
        for (k, v) in omega_variances(&raw.omega2, &raw.omega).map_err(&cfg)? {
            set(&k, v);
        }
        if targets.is_empty() {
            return Err(cfg(
                "no random effect: give [omega2] (variances) or [omega] (SDs) per parameter, or `population`".into(),
            ));
        }
        let mut random = Vec::with_capacity(targets.len());
        for t in &targets {
            let p = params.iter().find(|p| &p.name == t).ok_or_else(|| {
                cfg(format!(
                    "[omega2]: `{t}` is not a parameter of model {} (parameters: {})",
                    model.name(),
                    model.scalar_param_names().join(", ")
                ))
            })?;
            random.push(if p.kind == ParamKind::Random {
                RandomEffect::declared(t)
            } else {
                RandomEffect { name: format!("ETA_{t}"), ..RandomEffect::log_normal(t) }
            });
        }
        let omega = if omega.iter().enumerate().all(|(i, r)| r.iter().enumerate().all(|(j, v)| i == j || *v == 0.0)) {
            Omega::diagonal(&(0..omega.len()).map(|i| omega[i][i]).collect::<Vec<_>>())
        } else {
            Omega::block(&omega)
        }
        .map_err(|e| cfg(format!("Ω: {e}")))?;
        // Observed outputs.
        let names = model.output_names();
        let check_output = |o: &str, key: &str| {
            if names.contains(&o) {
                Ok(())
            } else {
                Err(cfg(format!(
                    "{key} = `{o}`: model {} has no such output (outputs: {})",
                    model.name(),
                    names.join(", ")
                )))
            }
        };
        let parse_error = |s: &str, key: &str| {
            ErrorModel::parse(s.trim()).ok_or_else(|| {
                cfg(format!("{key} = `{s}` (use additive, proportional, combined1, combined2 or exponential)"))
            })
        };
        let check_sigma = |e: ErrorModel, s: &[f64], key: &str| {
            let n = e.sigma_names().len();
            if s.len() != n || s.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                Err(cfg(format!(
                    "{key} = {s:?}: the {} error model takes {n} positive SD(s) ({})",
                    e.name(),
                    e.sigma_names().join(", ")
                )))
            } else {
                Ok(())
            }
        };
        let observed: Vec<ObservedOutput> = if raw.outputs.is_empty() {
            let error = match (&raw.error, fitted.as_ref().and_then(|f| f.error)) {
                (Some(e), _) => parse_error(e, "key `error`")?,
                (None, Some(e)) => e,
                (None, None) => return Err(cfg("key `error` is missing (or give [[outputs]])".into())),
            };
            let sigma = match (&raw.sigma, &fitted) {
                (Some(s), _) => s.clone(),
                (None, Some(f)) if raw.error.is_none() => f.sigma.clone(),
                _ => return Err(cfg("key `sigma` is missing (the residual SDs of the error model)".into())),
            };
            check_sigma(error, &sigma, "key `sigma`")?;
            let output = match &raw.output {
                Some(o) => {
                    check_output(o, "key `output`")?;
                    o.clone()
                }
                None => names.first().map(|s| s.to_string()).ok_or_else(|| cfg("the model has no output".into()))?,
            };
            let mut o = ObservedOutput::new(&output, error, &sigma);
            o.cmt = raw.obs_cmt;
            vec![o]
        } else {
            for key in ["error", "sigma", "output"] {
                let given = match key {
                    "error" => raw.error.is_some(),
                    "sigma" => raw.sigma.is_some(),
                    _ => raw.output.is_some(),
                };
                if given {
                    return Err(cfg(format!(
                        "key `{key}` and [[outputs]] both given: use one (each output has its own)"
                    )));
                }
            }
            let mut out = Vec::new();
            for (i, o) in raw.outputs.iter().enumerate() {
                let key = format!("[[outputs]] #{} (`{}`)", i + 1, o.name);
                check_output(&o.name, &key)?;
                let error = parse_error(&o.error, &format!("{key} error"))?;
                check_sigma(error, &o.sigma, &format!("{key} sigma"))?;
                if o.cmt.is_some() == o.dvid.is_some() && raw.outputs.len() > 1 {
                    return Err(cfg(format!("{key}: give exactly one of `cmt` and `dvid`")));
                }
                if let Some(c) = o.cmt {
                    if c == 0 || c > model.nstates() {
                        return Err(cfg(format!(
                            "{key} cmt = {c}: the model has compartments 1..={}",
                            model.nstates()
                        )));
                    }
                }
                if let Some(l) = o.lloq {
                    if !(l.is_finite() && l > 0.0) {
                        return Err(cfg(format!("{key} lloq = {l}: must be > 0")));
                    }
                }
                if out.iter().any(|p: &ObservedOutput| p.name == o.name) {
                    return Err(cfg(format!("{key}: output `{}` listed twice", o.name)));
                }
                out.push(ObservedOutput {
                    name: o.name.clone(),
                    cmt: o.cmt,
                    dvid: o.dvid,
                    error,
                    sigma: o.sigma.clone(),
                    lloq: o.lloq,
                });
            }
            out
        };
        for (key, c) in [("dose_cmt", raw.dose_cmt), ("obs_cmt", raw.obs_cmt)] {
            if let Some(c) = c {
                if c == 0 || c > model.nstates() {
                    return Err(cfg(format!("key `{key}` = {c}: the model has compartments 1..={}", model.nstates())));
                }
            }
        }
        let first = &observed[0];
        let single = raw.outputs.is_empty();
        let spec = PopulationSpec {
            theta,
            fixed: raw.fixed.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            random,
            omega,
            error: first.error,
            sigma: first.sigma.clone(),
            output: single.then(|| first.name.clone()),
            dose_cmt: raw.dose_cmt,
            obs_cmt: raw.obs_cmt,
            outputs: if single { Vec::new() } else { observed.clone() },
        };
        let ode = Options {
            rtol: raw.rtol.unwrap_or(1e-6),
            atol: raw.atol.unwrap_or(1e-9),
            max_steps: raw.max_steps.unwrap_or(100_000),
        };
        crate::limits::check_tolerances(ode.rtol, ode.atol).map_err(|e| cfg(format!("key {e}")))?;
        if ode.max_steps == 0 {
            return Err(cfg("key `max_steps` must be at least 1".into()));
        }
        let rp = raw.posterior.clone().unwrap_or(RawPosterior {
            method: None,
            hessian: None,
            draws: None,
            seed: None,
            ess_min: None,
        });
        let defaults = PosteriorOptions::default();
        let method = match &rp.method {
            None => SamplingMethod::Auto,
            Some(m) => SamplingMethod::parse(m.trim())
                .ok_or_else(|| cfg(format!("[posterior] method = `{m}` (use laplace, sir, mcmc or auto)")))?,
        };
        let hessian = match rp.hessian.as_deref().map(|h| h.trim().to_ascii_lowercase()) {
            None => defaults.hessian,
            Some(h) if h == "observed" => LaplaceHessian::Observed,
            Some(h) if h == "expected" => LaplaceHessian::Expected,
            Some(h) => return Err(cfg(format!("[posterior] hessian = `{h}` (use observed or expected)"))),
        };
        let draws = rp.draws.unwrap_or(1000);
        if draws == 0 {
            return Err(cfg("[posterior] draws must be at least 1".into()));
        }
        crate::limits::check_alloc(draws as f64 * 64.0, 8, "posterior draws", "[posterior] draws").map_err(&cfg)?;
        let ess_min = rp.ess_min.unwrap_or(defaults.ess_min.min(draws as f64 / 2.0));
        if !(ess_min.is_finite() && ess_min >= 0.0) {
            return Err(cfg(format!("[posterior] ess_min = {ess_min}: must be ≥ 0")));
        }
        let sequential = match &raw.sequential {
            None => None,
            Some(s) => {
                if let Some(h) = s.half_life {
                    if !(h.is_finite() && h > 0.0) {
                        return Err(cfg(format!("[sequential] half_life = {h}: must be > 0")));
                    }
                }
                Some(s.half_life)
            }
        };
        let posterior = PosteriorOptions {
            method,
            draws,
            seed: rp.seed.unwrap_or(defaults.seed),
            ess_min,
            hessian,
            half_life: sequential.flatten(),
            ode: Options {
                rtol: raw.rtol.unwrap_or(defaults.ode.rtol),
                atol: raw.atol.unwrap_or(defaults.ode.atol),
                max_steps: raw.max_steps.unwrap_or(defaults.ode.max_steps),
            },
            ..defaults
        };
        let filter = match &raw.filter {
            None => None,
            Some(f) => {
                let method = match &f.method {
                    None => FilterMethod::Ekf,
                    Some(m) => FilterMethod::parse(m.trim())
                        .ok_or_else(|| cfg(format!("[filter] method = `{m}` (use ekf, ukf or particle)")))?,
                };
                if model.noise().iter().all(|g| g.is_none()) {
                    return Err(cfg(format!(
                        "[filter]: model {} declares no process noise; add `noise: <state> ~ <SD per unit time>` to filter its states",
                        model.name()
                    )));
                }
                if observed.iter().any(|o| o.dvid.is_some()) {
                    return Err(cfg(
                        "[filter] maps observations to outputs by CMT; DVID mapping is not supported there".into(),
                    ));
                }
                let particles = f.particles.unwrap_or(10_000);
                if particles < 2 {
                    return Err(cfg(format!("[filter] particles = {particles}: use at least 2")));
                }
                let estimate_noise = f.estimate_noise.unwrap_or(false);
                if estimate_noise && method == FilterMethod::Particle {
                    return Err(cfg("[filter] estimate_noise needs method = \"ekf\" or \"ukf\"".into()));
                }
                Some(FilterSettings { method, particles, seed: f.seed.unwrap_or(20261207), estimate_noise })
            }
        };
        let forecast = match &raw.forecast {
            None => {
                if !raw.regimen.is_empty() {
                    return Err(cfg("[[regimen]] given without [forecast] (give at least `horizon`)".into()));
                }
                None
            }
            Some(f) => Some(forecast_settings(f, &raw.regimen, &model, &observed, name, &resolve)?),
        };
        Ok(BayesConfig {
            source: name.to_string(),
            name: raw.name.clone().unwrap_or_else(|| model.name().to_string()),
            model_key: raw.model.clone(),
            model,
            data: resolve(&raw.data),
            read: ReadOptions {
                ignore: raw.ignore_columns.clone(),
                columns: raw.columns.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            spec,
            observed,
            ode,
            posterior,
            sequential,
            filter,
            forecast,
            population_from: pop_dir,
        })
    }

    /// Reads the dataset.
    pub fn load_dataset(&self) -> Result<Dataset, BayesError> {
        Ok(Dataset::from_path(&self.data, &self.read)?)
    }

    /// The `η` names in Ω's order (`ETA_<param>` for a log-normal effect, the
    /// declared name for a `random:` parameter).
    pub fn eta_names(&self) -> Vec<String> {
        self.spec.random.iter().map(|r| r.name.clone()).collect()
    }

    /// One line describing the population.
    pub fn describe(&self) -> String {
        format!(
            "model {}, θ {}, η {}, outputs {}",
            self.model.name(),
            self.spec.theta.iter().map(|(n, v)| format!("{n} = {v}")).collect::<Vec<_>>().join(", "),
            self.eta_names().join(", "),
            self.observed
                .iter()
                .map(|o| format!("{} ({} error, σ {:?})", o.name, o.error.name(), o.sigma))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `[forecast]` and the regimens.
fn forecast_settings(
    f: &RawForecast,
    top: &[RawRegimen],
    model: &Model,
    observed: &[ObservedOutput],
    file: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<ForecastSettings, BayesError> {
    let cfg = |reason: String| BayesError::Config { file: file.to_string(), reason };
    let pos = |v: f64, key: &str| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(cfg(format!("[forecast] {key} = {v}: must be > 0")))
        }
    };
    let horizon = pos(f.horizon, "horizon")?;
    let step = pos(f.step.unwrap_or(horizon / 96.0), "step")?;
    if step > horizon {
        return Err(cfg(format!("[forecast] step = {step} is longer than the horizon {horizon}")));
    }
    let summary_step = pos(f.summary_step.unwrap_or(step / 4.0), "summary_step")?;
    let refine = step / summary_step;
    if summary_step > step || (refine - refine.round()).abs() > 1e-9 * refine {
        return Err(cfg(format!("[forecast] summary_step = {summary_step} must divide step = {step}")));
    }
    let points = horizon / summary_step;
    if points > 1e6 {
        return Err(cfg(format!(
            "[forecast] {points:.0} summary grid points (horizon / summary_step): at most 1,000,000"
        )));
    }
    if let Some(s) = f.start {
        if !s.is_finite() {
            return Err(cfg(format!("[forecast] start = {s}: must be finite")));
        }
    }
    let names = model.output_names();
    let outputs = match &f.outputs {
        None => observed.iter().map(|o| o.name.clone()).collect(),
        Some(list) if list.is_empty() => return Err(cfg("[forecast] outputs is empty".into())),
        Some(list) => {
            for o in list {
                if !names.contains(&o.as_str()) {
                    return Err(cfg(format!(
                        "[forecast] outputs: model {} has no output `{o}` (outputs: {})",
                        model.name(),
                        names.join(", ")
                    )));
                }
            }
            list.clone()
        }
    };
    let mut auc = Vec::new();
    for [a, b] in &f.auc {
        if !(a.is_finite() && b.is_finite() && *a >= 0.0 && a < b && *b <= horizon * (1.0 + 1e-12)) {
            return Err(cfg(format!("[forecast] auc window [{a}, {b}]: need 0 ≤ a < b ≤ horizon ({horizon})")));
        }
        auc.push((*a, *b));
    }
    if auc.is_empty() {
        auc.push((0.0, horizon));
    }
    let mut threshold = Vec::new();
    for (o, &x) in &f.threshold {
        if !outputs.contains(o) {
            return Err(cfg(format!(
                "[forecast] threshold: `{o}` is not among the forecast outputs ({})",
                outputs.join(", ")
            )));
        }
        if !x.is_finite() {
            return Err(cfg(format!("[forecast] threshold {o} = {x}: must be finite")));
        }
        threshold.push((o.clone(), x));
    }
    let mut regimens = Vec::new();
    if let Some(path) = &f.regimens {
        regimens.extend(read_regimen_csv(&resolve(path), model)?);
    }
    for r in top.iter().chain(&f.regimen) {
        regimens.push(inline_regimen(r, model, file)?);
    }
    for (i, r) in regimens.iter().enumerate() {
        if regimens[..i].iter().any(|p| p.name == r.name) {
            return Err(cfg(format!(
                "regimen `{}` is defined twice ({} and {})",
                r.name,
                regimens[i - 1].source,
                r.source
            )));
        }
    }
    Ok(ForecastSettings {
        start: f.start,
        horizon,
        step,
        summary_step,
        outputs,
        residual: f.residual.unwrap_or(true),
        auc,
        threshold,
        regimens,
    })
}

/// An inline `[[regimen]]`: its doses as dataset records (line = dose number).
fn inline_regimen(r: &RawRegimen, model: &Model, file: &str) -> Result<CandidateRegimen, BayesError> {
    let n = model.nstates();
    let name = r.name.trim();
    let cfg = |reason: String| BayesError::Config { file: file.to_string(), reason };
    if name.is_empty() || name.contains([',', '"', '\n']) {
        return Err(cfg(format!("[[regimen]] name `{}`: give a non-empty name without commas or quotes", r.name)));
    }
    if r.doses.is_empty() {
        return Err(cfg(format!("[[regimen]] `{name}`: `doses` is empty")));
    }
    let mut records = Vec::new();
    for (i, d) in r.doses.iter().enumerate() {
        let bad = |field: &str, reason: String| {
            cfg(format!("[[regimen]] `{name}`, dose {}, field `{field}`: {reason}", i + 1))
        };
        if !(d.time.is_finite() && d.time >= 0.0) {
            return Err(bad("time", format!("{} (times are relative to the forecast start, ≥ 0)", d.time)));
        }
        if !(d.amt.is_finite() && d.amt >= 0.0) {
            return Err(bad("amt", format!("{} (an amount must be ≥ 0)", d.amt)));
        }
        if let Some(c) = d.cmt {
            if c == 0 || c > n {
                return Err(bad("cmt", format!("{c} (model {} has compartments 1..={n})", model.name())));
            }
        }
        if !(d.rate.is_finite() && (d.rate >= 0.0 || d.rate == -1.0 || d.rate == -2.0)) {
            return Err(bad("rate", format!("{} (≥ 0, or -1 / -2 for a modelled rate / duration)", d.rate)));
        }
        if !(d.ii.is_finite() && d.ii >= 0.0) || (d.addl > 0 && d.ii <= 0.0) {
            return Err(bad("ii", format!("{} (an interval > 0 is needed with addl = {})", d.ii, d.addl)));
        }
        if d.ss != 0 {
            return Err(bad("ss", format!("{}: steady-state doses are not candidate doses (use ii and addl)", d.ss)));
        }
        if i > 0 && d.time < r.doses[i - 1].time {
            return Err(bad(
                "time",
                format!("{} is before the previous dose's {}: sort the doses", d.time, r.doses[i - 1].time),
            ));
        }
        records.push(Record {
            line: i + 1,
            time: d.time,
            amt: d.amt,
            dv: None,
            evid: 1,
            cmt: d.cmt,
            mdv: true,
            rate: d.rate,
            ii: d.ii,
            addl: d.addl,
            ss: 0,
            covariates: Vec::new(),
        });
    }
    Ok(CandidateRegimen { name: name.to_string(), records, source: format!("{file} [[regimen]] `{name}`") })
}

/// Regimens from a NONMEM-style CSV with a REGIMEN column (instead of ID):
/// `REGIMEN,TIME,AMT,CMT,RATE,II,ADDL` (EVID 1 where given); every row a dose.
fn read_regimen_csv(path: &Path, model: &Model) -> Result<Vec<CandidateRegimen>, BayesError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| BayesError::Io { path: file.clone(), reason: e.to_string() })?;
    let header: Vec<String> =
        text.lines().next().unwrap_or("").split(',').map(|c| c.trim().trim_matches('"').to_ascii_uppercase()).collect();
    let cfg = |reason: String| BayesError::Config { file: file.clone(), reason };
    if !header.iter().any(|c| c == "REGIMEN") {
        return Err(cfg(format!("line 1: no REGIMEN column (columns: {})", header.join(","))));
    }
    if header.iter().any(|c| c == "ID") {
        return Err(cfg("line 1: an ID column: a regimen file names regimens in REGIMEN, not subjects".into()));
    }
    for c in ["DV", "MDV"] {
        if header.iter().any(|h| h == c) {
            return Err(cfg(format!("line 1: column {c}: a regimen file holds dose records only")));
        }
    }
    let opts = ReadOptions { ignore: Vec::new(), columns: vec![("ID".into(), "REGIMEN".into())] };
    let ds = Dataset::from_str(&file, &text, &opts)?;
    let n = model.nstates();
    let mut out = Vec::new();
    for s in &ds.subjects {
        for r in &s.records {
            let field = |column: &str, reason: String| crate::solvers::DataError::Field {
                file: file.clone(),
                line: r.line,
                column: column.to_string(),
                reason,
            };
            if r.evid != 1 {
                return Err(field(
                    "EVID",
                    format!(
                        "regimen `{}`: every record must be a dose (EVID 1, AMT > 0 or RATE ≠ 0), found EVID {}",
                        s.id, r.evid
                    ),
                )
                .into());
            }
            if let Some(c) = r.cmt {
                if c == 0 || c > n {
                    return Err(field(
                        "CMT",
                        format!("dose into compartment {c}, but model {} has compartments 1..={n}", model.name()),
                    )
                    .into());
                }
            }
            if r.time < 0.0 {
                return Err(field("TIME", format!("{} (times are relative to the forecast start, ≥ 0)", r.time)).into());
            }
            if r.ss != 0 {
                return Err(field("SS", "steady-state doses are not candidate doses (use II and ADDL)".into()).into());
            }
        }
        if out.iter().any(|c: &CandidateRegimen| c.name == s.id) {
            return Err(cfg(format!(
                "regimen `{}` appears in two separate runs of rows: keep its rows together",
                s.id
            )));
        }
        out.push(CandidateRegimen {
            name: s.id.clone(),
            records: s.records.iter().map(|r| Record { covariates: Vec::new(), ..r.clone() }).collect(),
            source: file.clone(),
        });
    }
    if out.is_empty() {
        return Err(cfg("no regimen rows".into()));
    }
    Ok(out)
}

/// A subject's records followed by a candidate regimen's doses shifted to
/// absolute time `start` (the forecast continues the subject's history).
pub fn with_regimen(subject: &Subject, regimen: &CandidateRegimen, start: f64, n_covariates: usize) -> Subject {
    let mut records: Vec<Record> = subject.records.iter().filter(|r| r.evid != 0).cloned().collect();
    for r in &regimen.records {
        records.push(Record { time: start + r.time, covariates: vec![None; n_covariates], ..r.clone() });
    }
    records.sort_by(|a, b| a.time.total_cmp(&b.time));
    Subject { id: subject.id.clone(), records }
}

/// θ, Ω and σ from a FOCE-I `fit.json` (`insilico fit` with `estimation = "focei"`).
fn read_fit_json(dir: &Path, model: &Model) -> Result<FittedPopulation, BayesError> {
    let path = dir.join("fit.json");
    let file = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| BayesError::Io {
        path: file.clone(),
        reason: format!("{e} (`population` names an `insilico fit` output folder with fit.json)"),
    })?;
    let bad = |reason: String| BayesError::Config { file: file.clone(), reason };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v.get("estimation").and_then(|e| e.as_str()) != Some("focei") {
        return Err(bad("not a FOCE-I fit (key `estimation` is not \"focei\"); `population` reads FOCE-I fits".into()));
    }
    let estimates =
        v.get("estimates").and_then(|e| e.as_object()).ok_or_else(|| bad("no `estimates` object".into()))?;
    let order: Vec<&str> = model.params().iter().map(|p| p.name.as_str()).collect();
    let rank = |n: &str| order.iter().position(|p| *p == n).unwrap_or(usize::MAX);
    let mut theta = Vec::new();
    for (k, e) in estimates {
        if k.starts_with("omega") || k.starts_with("sigma_") {
            continue;
        }
        let value = e
            .get("value")
            .and_then(|x| x.as_f64())
            .ok_or_else(|| bad(format!("estimates.{k}.value is not a number")))?;
        if rank(k) == usize::MAX {
            return Err(bad(format!(
                "θ `{k}` is not a parameter of model {} (is `model` the fitted one?)",
                model.name()
            )));
        }
        theta.push((k.clone(), value));
    }
    theta.sort_by_key(|(n, _)| rank(n));
    let omega2 = v.get("omega2").and_then(|e| e.as_object()).ok_or_else(|| bad("no `omega2` object".into()))?;
    // η names `eta_<param>` / `ETA_<param>` (log-normal) or a declared name; Ω rows in model order.
    let mut targets: Vec<String> = omega2
        .keys()
        .map(|k| {
            let stripped = k.strip_prefix("eta_").or_else(|| k.strip_prefix("ETA_")).unwrap_or(k);
            if rank(stripped) != usize::MAX {
                stripped.to_string()
            } else {
                k.clone()
            }
        })
        .collect();
    for t in &targets {
        if rank(t) == usize::MAX {
            return Err(bad(format!("random effect `{t}` acts on no parameter of model {}", model.name())));
        }
    }
    targets.sort_by_key(|n| rank(n));
    let q = targets.len();
    let matrix: Vec<Vec<f64>> = match v.get("omega_matrix").and_then(|m| m.as_array()) {
        Some(rows) => rows
            .iter()
            .map(|r| {
                r.as_array().map(|r| r.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()).unwrap_or_default()
            })
            .collect(),
        None => Vec::new(),
    };
    if matrix.len() != q || matrix.iter().any(|r| r.len() != q) {
        return Err(bad(format!("`omega_matrix` is not {q} × {q} (the number of entries of `omega2`)")));
    }
    let error = v.get("error").and_then(|e| e.as_str()).and_then(ErrorModel::parse);
    let sig = v.get("sigma").and_then(|s| s.as_object());
    let sigma = match (error, sig) {
        (Some(e), Some(s)) => e
            .sigma_names()
            .iter()
            .map(|n| {
                s.get(*n)
                    .and_then(|x| x.get("sd"))
                    .and_then(|x| x.as_f64())
                    .ok_or_else(|| bad(format!("sigma.{n}.sd is missing")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    Ok(FittedPopulation { theta, eta_targets: targets, omega: matrix, error, sigma })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
model = "pk-2cmt-oral"
data = "d.csv"
error = "proportional"
sigma = [0.1]
[theta]
ka = 1.0
CL = 5.0
V1 = 30.0
Q = 10.0
V2 = 50.0
[omega2]
CL = 0.1
V1 = 0.05
[forecast]
horizon = 24
step = 1
[[regimen]]
name = "qd"
doses = [ { time = 0, amt = 100, cmt = 1 } ]
"#;

    #[test]
    fn parses_and_orders_random_effects_by_model() {
        let c = BayesConfig::from_toml_str(BASE, "b.toml", None).unwrap();
        assert_eq!(c.eta_names(), vec!["ETA_CL", "ETA_V1"]);
        let f = c.forecast.unwrap();
        assert_eq!((f.step, f.summary_step, f.auc.clone()), (1.0, 0.25, vec![(0.0, 24.0)]));
        assert!(f.residual);
    }

    #[test]
    fn unknown_keys_name_file_and_key() {
        for (from, to) in [("step = 1", "stepp = 1"), ("[omega2]", "[omega3]"), ("amt = 100", "amount = 100")] {
            let e = BayesConfig::from_toml_str(&BASE.replace(from, to), "cfg.toml", None).unwrap_err().to_string();
            let key = to.split([' ', '[', ']']).find(|s| !s.is_empty()).unwrap();
            assert!(e.contains("cfg.toml") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn bad_inline_doses_name_regimen_dose_and_field() {
        let e =
            BayesConfig::from_toml_str(&BASE.replace("amt = 100", "amt = -5"), "c.toml", None).unwrap_err().to_string();
        assert!(e.contains("`qd`, dose 1, field `amt`"), "{e}");
        let e = BayesConfig::from_toml_str(&BASE.replace("cmt = 1 }", "cmt = 9 }"), "c.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `cmt`") && e.contains("1..=4"), "{e}");
    }

    #[test]
    fn regimen_csv_errors_name_file_line_and_column() {
        let dir = std::env::temp_dir().join(format!("insilico-bayes-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = BASE
            .replace("[[regimen]]\nname = \"qd\"\ndoses = [ { time = 0, amt = 100, cmt = 1 } ]\n", "")
            .replace("step = 1", "step = 1\nregimens = \"r.csv\"");
        let run = |csv: &str| {
            std::fs::write(dir.join("r.csv"), csv).unwrap();
            BayesConfig::from_toml_str(&cfg, "c.toml", Some(&dir))
        };
        let ok = run("REGIMEN,TIME,AMT,CMT,II,ADDL\nA,0,100,1,12,3\nB,0,200,1,24,1\n").unwrap();
        let regs = ok.forecast.unwrap().regimens;
        assert_eq!(regs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["A", "B"]);
        assert_eq!(regs[0].records[0].addl, 3);
        let e = run("REGIMEN,TIME,AMT,CMT\nA,0,100,1\nA,12,-100,1\n").unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("line 3") && e.contains("AMT"), "{e}");
        let e = run("REGIMEN,TIME,AMT,CMT\nA,0,100,7\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("CMT"), "{e}");
        let e = run("ID,TIME,AMT\n1,0,100\n").unwrap_err().to_string();
        assert!(e.contains("REGIMEN"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn population_from_a_focei_fit_json_with_overrides() {
        let dir = std::env::temp_dir().join(format!("insilico-bayes-pop-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fit")).unwrap();
        let fit = serde_json::json!({
            "estimation": "focei", "error": "combined2",
            "estimates": {"CL": {"value": 4.0}, "V1": {"value": 20.0}, "ka": {"value": 1.5}, "Q": {"value": 3.0},
                          "V2": {"value": 40.0}, "omega2(eta_CL)": {"value": 0.2}, "sigma_a": {"value": 0.1}},
            "omega2": {"eta_CL": 0.2, "eta_V1": 0.04},
            "omega_matrix": [[0.2, 0.0], [0.0, 0.04]],
            "sigma": {"a": {"sd": 0.1}, "b": {"sd": 0.2}},
        });
        std::fs::write(dir.join("fit/fit.json"), fit.to_string()).unwrap();
        let cfg = "model = \"pk-2cmt-oral\"\ndata = \"d.csv\"\npopulation = \"fit\"\n[theta]\nka = 2.0\n[omega2]\nV1 = 0.09\n";
        let c = BayesConfig::from_toml_str(cfg, "c.toml", Some(&dir)).unwrap();
        let th: Vec<(&str, f64)> = c.spec.theta.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(th, vec![("ka", 2.0), ("CL", 4.0), ("V1", 20.0), ("Q", 3.0), ("V2", 40.0)]);
        assert_eq!(c.eta_names(), vec!["ETA_CL", "ETA_V1"]);
        let om = c.spec.omega.matrix();
        assert!((om[(0, 0)] - 0.2).abs() < 1e-12 && (om[(1, 1)] - 0.09).abs() < 1e-12);
        assert_eq!((c.spec.error, c.spec.sigma.clone()), (ErrorModel::Combined2, vec![0.1, 0.2]));
        std::fs::remove_dir_all(&dir).ok();
    }
}
