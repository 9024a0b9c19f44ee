//! `insilico fit` with `estimation = "focei"`: the population likelihood by
//! FOCE-I ([`insilico_estimation::focei::fit`]), NONMEM-comparable.
//!
//! A config with the key `estimation` is read here instead of by
//! [`crate::fit_cmd`] (whose modes are joint-MAP fits).
//!
//! # The config file
//! ```toml
//! estimation = "focei"                    # the only estimator so far ("saem" is not implemented yet)
//! name = "theoph-focei"                   # optional label
//! model = "pk-1cmt-oral"                  # a zoo model or a model file relative to this config
//! data = "../../shared/data/theoph.csv"   # relative to this config
//! output = "cp"                           # optional: the output compared with DV (default: the first)
//! error = "additive"                      # additive | proportional | combined1 | combined2 | exponential
//! sigma = [0.7]                           # initial σ, SDs: [a], [b] or [a, b] for the combined models
//! covariance = "sandwich"                 # sandwich (default) | hessian | none
//! rtol = 1e-6                             # optional ODE tolerances, step limit
//! atol = 1e-9
//! max_steps = 1000000
//! max_iterations = 200                    # optional: outer (BFGS) iterations
//! dose_cmt = 1                            # optional, as in `fit`
//! obs_cmt = 2
//! ignore_columns = []                     # optional, as in `fit`
//! [columns]                               # optional: NONMEM columns under another name
//! [theta]                                 # estimated typical values (starts), by model parameter
//! ka = 1.5
//! CL = 2.8
//! V = 32
//! [fixed]                                 # optional: parameters held at a value (others: the model's)
//! [omega2]                                # log-normal random effects: initial variances ω² (diagonal Ω)
//! ka = 0.3
//! CL = 0.1
//! [omega]                                 # or initial SDs ω (one of the two per parameter)
//! V = 0.2
//! ```
//! Unknown keys are errors naming the file and the key.
//!
//! # Outputs (`--out DIR`)
//! * `fit.json`: `method` (`"focei"`), `ofv` (−2LL without `N·ln(2π)`,
//!   NONMEM's convention, stated in `ofv_convention`), `ofv_with_constant`,
//!   `estimates` (`{name: {value, se, rse_percent}}` for θ, `omega2(η)` and
//!   `sigma_*`), per random effect `omega2`, `omega_sd`, `omega_cv_percent`
//!   (`100·sqrt(exp(ω²) − 1)`) and `shrinkage_percent`, `omega_matrix`,
//!   `sigma` (SD and variance), `eps_shrinkage_percent`, `covariance`
//!   (kind, condition number, correlation, Hessian and sandwich SEs, or
//!   `covariance_error`), `iterations`, `evaluations`, `gradients`,
//!   `ode_solves`, `converged`, `nonconverged_subjects`, `wall_seconds`,
//!   `covariance_seconds`, and per-subject η̂ under `subjects`.
//! * `sdtab.csv`: `ID,TIME,DV,PRED,IPRED,CWRES,IWRES` and one column per η
//!   ([`Estimate::sdtab_csv`]).
//!
//! Both go through [`crate::atomic`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::fit_cmd::FitCmdError;
use crate::solvers::{Dataset, Options, ReadOptions};
use insilico_estimation::focei::{self, CovarianceStep, Estimate, FitOptions};
use insilico_estimation::{ErrorModel, Omega, PopulationSpec, RandomEffect};

/// The convention of `ofv` in fit.json.
pub const OFV_CONVENTION: &str = "-2LL without N*ln(2*pi) (NONMEM); ofv_with_constant adds it";

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawEstimation {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFocei {
    estimation: RawEstimation,
    name: Option<String>,
    model: String,
    data: String,
    output: Option<String>,
    error: String,
    sigma: Vec<f64>,
    covariance: Option<String>,
    rtol: Option<f64>,
    atol: Option<f64>,
    max_steps: Option<usize>,
    max_iterations: Option<usize>,
    dose_cmt: Option<usize>,
    obs_cmt: Option<usize>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    theta: BTreeMap<String, f64>,
    #[serde(default)]
    fixed: BTreeMap<String, f64>,
    #[serde(default)]
    omega2: BTreeMap<String, f64>,
    #[serde(default)]
    omega: BTreeMap<String, f64>,
}

/// True when a fit config asks for a population-likelihood estimator (has
/// the top-level key `estimation`): read it with [`FoceiConfig`].
pub fn is_estimation_config(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).map(|t| t.contains_key("estimation")).unwrap_or(false)
}

/// A validated `estimation = "focei"` config.
#[derive(Debug, Clone)]
pub struct FoceiConfig {
    /// Config file name (for messages).
    pub source: String,
    /// Label (`name`, else the model's).
    pub name: String,
    /// Dataset path (resolved against the config's directory).
    pub data: PathBuf,
    model: insilico_model::Model,
    model_key: String,
    read: ReadOptions,
    spec: PopulationSpec,
    options: FitOptions,
}

impl FoceiConfig {
    /// Reads a config file.
    pub fn from_path(path: &Path) -> Result<FoceiConfig, FitCmdError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FitCmdError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses a config; relative data and model paths resolve against `base`.
    pub fn from_toml_str(text: &str, name: &str, base: Option<&Path>) -> Result<FoceiConfig, FitCmdError> {
        let cfg = |reason: String| FitCmdError::Config { file: name.to_string(), reason };
        let raw: RawFocei = toml::from_str(text).map_err(|e| cfg(e.to_string()))?;
        let methods = match &raw.estimation {
            RawEstimation::One(s) => vec![s.clone()],
            RawEstimation::Many(v) => v.clone(),
        };
        match methods.iter().map(|m| m.trim().to_ascii_lowercase()).collect::<Vec<_>>().as_slice() {
            [m] if m == "focei" => {}
            [] => return Err(cfg("key `estimation` is empty: use \"focei\"".into())),
            list => {
                return Err(cfg(format!(
                    "key `estimation` = {list:?}: only \"focei\" is implemented (\"saem\" and chains are not yet)"
                )))
            }
        }
        let model = crate::models_zoo::resolve(&raw.model, base).map_err(|e| cfg(format!("key `model`: {e}")))?;
        let error = ErrorModel::parse(raw.error.trim()).ok_or_else(|| {
            cfg(format!(
                "key `error`: `{}` (use additive, proportional, combined1, combined2 or exponential)",
                raw.error
            ))
        })?;
        let covariance = match raw.covariance.as_deref().map(|s| s.trim().to_ascii_lowercase()) {
            None => CovarianceStep::Sandwich,
            Some(c) if c == "sandwich" => CovarianceStep::Sandwich,
            Some(c) if c == "hessian" => CovarianceStep::Hessian,
            Some(c) if c == "none" => CovarianceStep::None,
            Some(c) => return Err(cfg(format!("key `covariance`: `{c}` (use sandwich, hessian or none)"))),
        };
        if raw.theta.is_empty() {
            return Err(cfg("[theta] is empty: give the typical values to estimate and their starts".into()));
        }
        for (k, v) in raw.theta.iter().chain(&raw.fixed) {
            if !v.is_finite() {
                return Err(cfg(format!("parameter `{k}` = {v}: must be a finite number")));
            }
        }
        let mut variances = omega_variances(&raw.omega2, &raw.omega).map_err(&cfg)?;
        if variances.is_empty() {
            return Err(cfg("no random effect: give [omega2] (variances) or [omega] (SDs) per parameter".into()));
        }
        // The model's declaration order (names it lacks last; the estimator names them).
        sort_by_model_order(&model, &mut variances);
        let mut theta: Vec<(String, f64)> = raw.theta.iter().map(|(k, v)| (k.clone(), *v)).collect();
        sort_by_model_order(&model, &mut theta);
        let omega =
            Omega::diagonal(&variances.iter().map(|(_, v)| *v).collect::<Vec<_>>()).map_err(|e| cfg(e.to_string()))?;
        let spec = PopulationSpec {
            theta,
            fixed: raw.fixed.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            random: variances.iter().map(|(n, _)| RandomEffect::log_normal(n)).collect(),
            omega,
            error,
            sigma: raw.sigma.clone(),
            output: raw.output.clone(),
            dose_cmt: raw.dose_cmt,
            obs_cmt: raw.obs_cmt,
            outputs: Vec::new(),
        };
        let defaults = FitOptions::default();
        let ode = Options {
            rtol: raw.rtol.unwrap_or(defaults.ode.rtol),
            atol: raw.atol.unwrap_or(defaults.ode.atol),
            max_steps: raw.max_steps.unwrap_or(defaults.ode.max_steps),
        };
        crate::limits::check_tolerances(ode.rtol, ode.atol).map_err(|e| cfg(format!("key {e}")))?;
        if ode.max_steps == 0 {
            return Err(cfg("key `max_steps` must be at least 1".into()));
        }
        let max_iterations = raw.max_iterations.unwrap_or(defaults.max_iterations);
        if max_iterations == 0 {
            return Err(cfg("key `max_iterations` must be at least 1".into()));
        }
        let options = FitOptions { ode, covariance, max_iterations, ..defaults };
        let data = match base {
            Some(b) => b.join(&raw.data),
            None => PathBuf::from(&raw.data),
        };
        Ok(FoceiConfig {
            source: name.to_string(),
            name: raw.name.clone().unwrap_or_else(|| model.name().to_string()),
            data,
            model_key: raw.model.clone(),
            model,
            read: ReadOptions {
                ignore: raw.ignore_columns.clone(),
                columns: raw.columns.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            spec,
            options,
        })
    }

    /// Reads the dataset.
    pub fn load_dataset(&self) -> Result<Dataset, FitCmdError> {
        Ok(Dataset::from_path(&self.data, &self.read)?)
    }

    /// One line describing the fit.
    pub fn describe(&self) -> String {
        let etas: Vec<&str> = self.spec.random.iter().map(|r| r.target()).collect();
        format!(
            "FOCE-I: model {}, θ {}, log-normal η on {}, {} error, covariance step {}",
            self.model.name(),
            self.spec.theta.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            etas.join(", "),
            self.spec.error.name(),
            match self.options.covariance {
                CovarianceStep::None => "none",
                CovarianceStep::Hessian => "hessian",
                CovarianceStep::Sandwich => "sandwich",
            }
        )
    }

    /// Runs FOCE-I on `data` and writes `fit.json` and `sdtab.csv` into
    /// `out` (created if needed). Returns the estimate.
    pub fn run(&self, data: &Dataset, out: &Path) -> Result<Estimate, FitCmdError> {
        let est = focei::fit(&self.model, data, &self.spec, &self.options)?;
        std::fs::create_dir_all(out)
            .map_err(|e| FitCmdError::Io { path: out.display().to_string(), reason: e.to_string() })?;
        let json = self.to_json(&est, data);
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| FitCmdError::Io { path: out.join("fit.json").display().to_string(), reason: e.to_string() })?;
        for (file, bytes) in [("fit.json", text.into_bytes()), ("sdtab.csv", est.sdtab_csv().into_bytes())] {
            let path = out.join(file);
            crate::atomic::write_bytes(&path, &bytes)
                .map_err(|e| FitCmdError::Io { path: path.display().to_string(), reason: e.reason })?;
        }
        Ok(est)
    }

    /// fit.json's content.
    fn to_json(&self, est: &Estimate, data: &Dataset) -> Value {
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        let opt = |v: Option<f64>| v.map_or(Value::Null, num);
        let mut estimates = Map::new();
        for p in &est.parameters {
            estimates.insert(
                p.name.clone(),
                json!({"value": num(p.value), "se": opt(p.se), "rse_percent": opt(p.rse_percent)}),
            );
        }
        let mut omega2 = Map::new();
        let mut omega_sd = Map::new();
        let mut cv = Map::new();
        let mut shrink = Map::new();
        for e in &est.etas {
            omega2.insert(e.name.clone(), num(e.omega2));
            omega_sd.insert(e.name.clone(), num(e.sd));
            cv.insert(e.name.clone(), opt(e.cv_percent));
            shrink.insert(e.name.clone(), num(e.shrinkage_percent));
        }
        let mut sigma = Map::new();
        for p in est.parameters.iter().filter(|p| p.name.starts_with("sigma_")) {
            sigma.insert(
                p.name.trim_start_matches("sigma_").to_string(),
                json!({"sd": num(p.value), "variance": num(p.value * p.value), "se": opt(p.se)}),
            );
        }
        let covariance = est.covariance.as_ref().map_or(Value::Null, |c| {
            json!({
                "kind": c.kind,
                "condition_number": num(c.condition_number),
                "se_hessian": c.se_hessian.iter().map(|&v| num(v)).collect::<Vec<_>>(),
                "se_sandwich": c.se_sandwich.as_ref().map(|s| s.iter().map(|&v| num(v)).collect::<Vec<_>>()),
                "correlation": c.correlation.iter().map(|r| r.iter().map(|&v| num(v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "parameters": est.parameters.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            })
        });
        let subjects: Vec<Value> = est
            .subjects
            .iter()
            .map(|s| json!({"id": s.id, "eta": s.eta.iter().map(|&v| num(v)).collect::<Vec<_>>(), "converged": s.converged}))
            .collect();
        json!({
            "name": self.name,
            "method": est.method,
            "estimation": "focei",
            "model": self.model_key,
            "data": data.file,
            "error": self.spec.error.name(),
            "ofv": num(est.ofv),
            "ofv_convention": OFV_CONVENTION,
            "ofv_with_constant": num(est.ofv_with_constant),
            "n_observations": est.n_observations,
            "n_subjects": est.n_subjects,
            "estimates": estimates,
            "omega2": omega2,
            "omega_sd": omega_sd,
            "omega_cv_percent": cv,
            "shrinkage_percent": shrink,
            "omega_matrix": est.omega.iter().map(|r| r.iter().map(|&v| num(v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "sigma": sigma,
            "eps_shrinkage_percent": num(est.eps_shrinkage_percent),
            "covariance": covariance,
            "covariance_error": est.covariance_error,
            "converged": est.converged,
            "nonconverged_subjects": est.nonconverged,
            "iterations": est.iterations,
            "evaluations": est.evaluations,
            "gradients": est.gradients,
            "ode_solves": est.ode_solves,
            "wall_seconds": num(est.wall_seconds),
            "covariance_seconds": num(est.covariance_seconds),
            "subjects": subjects,
        })
    }
}

/// The random effects of a population config: `[omega2]` (variances) then
/// `[omega]` (SDs, squared), as `(parameter, variance)` pairs. Every value
/// must be finite and positive; a parameter in both tables is refused.
/// Shared by the FOCE-I, assimilate/forecast and design configs.
pub(crate) fn omega_variances(
    omega2: &BTreeMap<String, f64>,
    omega: &BTreeMap<String, f64>,
) -> Result<Vec<(String, f64)>, String> {
    let mut out = Vec::with_capacity(omega2.len() + omega.len());
    for (k, &v) in omega2 {
        if omega.contains_key(k) {
            return Err(format!("random effect on `{k}` given twice: in [omega2] and in [omega] (use one)"));
        }
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("[omega2] {k} = {v}: a variance must be > 0"));
        }
        out.push((k.clone(), v));
    }
    for (k, &v) in omega {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("[omega] {k} = {v}: a standard deviation must be > 0"));
        }
        out.push((k.clone(), v * v));
    }
    Ok(out)
}

/// Sorts named entries into the model's parameter declaration order (names
/// the model lacks last, in their given order: the estimator names them).
pub(crate) fn sort_by_model_order<T>(model: &insilico_model::Model, items: &mut [(String, T)]) {
    let params = model.params();
    let rank = |n: &str| params.iter().position(|p| p.name == n).unwrap_or(usize::MAX);
    items.sort_by_key(|(n, _)| rank(n));
}
