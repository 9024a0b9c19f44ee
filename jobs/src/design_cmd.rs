//! `insilico design CONFIG --out DIR`: the FO Fisher information of a
//! population design for any model file ([`insilico_estimation::design`]),
//! its D / lnD / A criteria and RSE%, and optionally the optimisation of
//! the sampling times within windows and with a minimum spacing.
//!
//! # The config file
//! ```toml
//! name = "warfarin-poped"        # optional label
//! model = "warfarin.model"       # a zoo model or a model file relative to this config
//! data = "warfarin.csv"          # NONMEM layout, one ID per group: its doses, covariates and
//!                                # sampling times (EVID 0 records; DV is not read)
//! group_size = 32                # subjects per group: one number, or a list in dataset ID order
//! fim = "reduced"                # reduced (PopED fim.calc.type 1, the default) | full (type 0)
//! criterion = "D"                # D | lnD | A: reported, and optimised under [optimise]
//! sigma2_prop = 0.01             # residual variances: proportional and/or additive
//! sigma2_add = 0.0               # (optional; one of the two must be > 0)
//! output = "cp"                  # optional: the sampled model output (default: the first)
//! dose_cmt = 1                   # optional, as in `fit`
//! obs_cmt = 2
//! rtol = 1e-10                   # optional ODE tolerances (defaults 1e-10, 1e-12)
//! atol = 1e-12
//! [theta]                        # typical values, all part of the FIM
//! CL = 0.15
//! [fixed]                        # other parameters held at a value (not in the FIM)
//! [omega2]                       # variances of exponential (log-normal) random effects
//! CL = 0.07
//! [optimise]                     # optional: optimise the sampling times
//! window = [0, 120]              # one window for every sample, or
//! # windows = [[0, 2], [0, 2], [2, 12], ...]   # one per sample (in time order, every group)
//! min_spacing = 0.25             # optional, default 0 (replicate times allowed)
//! ```
//! Unknown keys are errors naming the file and the key.
//!
//! # `DIR/design.json`
//! `fim_type` (`"reduced"` / `"full"`), `det_fim`, `ln_det_fim`, `criterion`
//! (its name) and `criterion_value`, `rse_percent` keyed by parameter name
//! (typical values by their names, variances `omega2_<name>`, residual
//! `sigma2_prop` / `sigma2_add`), `parameters` (`{name: value}`), `fim`
//! (the matrix, rows in `parameter_order`), `groups` (`id`, `size`,
//! `times`), `times` (the sampling times: a flat list for a one-group design,
//! else one list per group). With `[optimise]`: `times_before` (same shape),
//! `times` are the optimised times, `criterion_before`, `criterion_after`,
//! `det_fim_after`, `ln_det_fim_after`, `rse_percent_after`,
//! `d_efficiency_gain` (`(det after / det before)^(1/p)`), `min_spacing`,
//! `sweeps`, `evaluations`. `det_fim`, `ln_det_fim` and `rse_percent` are the
//! design as given. Written through [`crate::atomic`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::fit_focei::{omega_variances, sort_by_model_order};
use crate::solvers::{Dataset, Options, ReadOptions};
use insilico_estimation::design::{optimise_times, Criterion, Design, Fim, FimType, TimeConstraints, TimeOptimum};
use insilico_estimation::{ErrorModel, Omega, PopulationSpec, RandomEffect};

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawSizes {
    One(f64),
    Many(Vec<f64>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptimise {
    window: Option<[f64; 2]>,
    windows: Option<Vec<[f64; 2]>>,
    min_spacing: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesign {
    name: Option<String>,
    model: String,
    data: String,
    group_size: RawSizes,
    fim: Option<String>,
    criterion: Option<String>,
    sigma2_prop: Option<f64>,
    sigma2_add: Option<f64>,
    output: Option<String>,
    dose_cmt: Option<usize>,
    obs_cmt: Option<usize>,
    rtol: Option<f64>,
    atol: Option<f64>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, String>,
    theta: BTreeMap<String, f64>,
    #[serde(default)]
    fixed: BTreeMap<String, f64>,
    #[serde(default)]
    omega2: BTreeMap<String, f64>,
    optimise: Option<RawOptimise>,
}

/// Where the sampling times may go (`[optimise]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimiseSettings {
    /// One window for all samples, or one per sample.
    pub windows: Windows,
    /// Smallest gap between consecutive samples.
    pub min_spacing: f64,
}

/// Sampling windows of `[optimise]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Windows {
    /// The same `[lo, hi]` for every sample.
    Common(f64, f64),
    /// One `[lo, hi]` per sample, in time order, groups one after another.
    PerSample(Vec<(f64, f64)>),
}

/// A validated design config.
#[derive(Debug, Clone)]
pub struct DesignConfig {
    /// Config file name (for messages).
    pub source: String,
    /// Label (`name`, else the model's).
    pub name: String,
    /// The design dataset (resolved against the config's directory).
    pub data: PathBuf,
    model: insilico_model::Model,
    read: ReadOptions,
    sizes: Vec<f64>,
    spec: PopulationSpec,
    /// Which FIM.
    pub fim_type: FimType,
    /// The criterion reported and optimised.
    pub criterion: Criterion,
    options: Options,
    /// The `[optimise]` table, when present.
    pub optimise: Option<OptimiseSettings>,
}

/// What a design run computed.
#[derive(Debug, Clone)]
pub struct DesignReport {
    /// The FIM of the design as given.
    pub fim: Fim,
    /// Group IDs, sizes and (given) times.
    pub groups: Vec<(String, f64, Vec<f64>)>,
    /// The optimisation, when asked for.
    pub optimum: Option<TimeOptimum>,
}

impl DesignConfig {
    /// Reads a config file.
    pub fn from_path(path: &Path) -> Result<DesignConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses a config; relative data and model paths resolve against `base`.
    pub fn from_toml_str(text: &str, name: &str, base: Option<&Path>) -> Result<DesignConfig, Error> {
        let cfg = |reason: String| Error::Config { file: name.to_string(), reason };
        let raw: RawDesign = toml::from_str(text).map_err(|e| cfg(e.to_string()))?;
        let model = crate::models_zoo::resolve(&raw.model, base).map_err(|e| cfg(format!("key `model`: {e}")))?;
        let fim_type = match &raw.fim {
            None => FimType::Reduced,
            Some(s) => FimType::parse(s).ok_or_else(|| cfg(format!("key `fim`: `{s}` (use reduced or full)")))?,
        };
        let criterion = match &raw.criterion {
            None => Criterion::D,
            Some(s) => Criterion::parse(s).ok_or_else(|| cfg(format!("key `criterion`: `{s}` (use D, lnD or A)")))?,
        };
        if raw.theta.is_empty() {
            return Err(cfg("[theta] is empty: give the typical values of the population model".into()));
        }
        for (k, v) in raw.theta.iter().chain(&raw.fixed) {
            if !v.is_finite() {
                return Err(cfg(format!("parameter `{k}` = {v}: must be a finite number")));
            }
        }
        let mut variances = omega_variances(&raw.omega2, &BTreeMap::new()).map_err(&cfg)?;
        sort_by_model_order(&model, &mut variances);
        let mut theta: Vec<(String, f64)> = raw.theta.iter().map(|(k, v)| (k.clone(), *v)).collect();
        sort_by_model_order(&model, &mut theta);
        let (error, sigma) = residual(raw.sigma2_prop, raw.sigma2_add).map_err(cfg)?;
        let omega = if variances.is_empty() {
            Omega::diagonal(&[]).map_err(|e| cfg(e.to_string()))?
        } else {
            Omega::diagonal(&variances.iter().map(|(_, v)| *v).collect::<Vec<_>>()).map_err(|e| cfg(e.to_string()))?
        };
        let spec = PopulationSpec {
            theta,
            fixed: raw.fixed.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            random: variances.iter().map(|(n, _)| RandomEffect::log_normal(n)).collect(),
            omega,
            error,
            sigma,
            output: raw.output.clone(),
            dose_cmt: raw.dose_cmt,
            obs_cmt: raw.obs_cmt,
            outputs: Vec::new(),
        };
        let sizes = match &raw.group_size {
            RawSizes::One(n) => vec![*n],
            RawSizes::Many(v) => v.clone(),
        };
        if sizes.is_empty() || sizes.iter().any(|n| !(n.is_finite() && *n > 0.0)) {
            return Err(cfg(format!("key `group_size` = {sizes:?}: every group size must be > 0")));
        }
        let options =
            Options { rtol: raw.rtol.unwrap_or(1e-10), atol: raw.atol.unwrap_or(1e-12), max_steps: 1_000_000 };
        crate::limits::check_tolerances(options.rtol, options.atol).map_err(|e| cfg(format!("key {e}")))?;
        let optimise = match &raw.optimise {
            None => None,
            Some(o) => {
                let windows = match (o.window, &o.windows) {
                    (Some([lo, hi]), None) => Windows::Common(lo, hi),
                    (None, Some(w)) => Windows::PerSample(w.iter().map(|[a, b]| (*a, *b)).collect()),
                    (Some(_), Some(_)) => return Err(cfg("[optimise]: give `window` or `windows`, not both".into())),
                    (None, None) => {
                        return Err(cfg("[optimise] needs `window = [lo, hi]` or `windows = [[lo, hi], ...]`".into()))
                    }
                };
                let min_spacing = o.min_spacing.unwrap_or(0.0);
                if !(min_spacing.is_finite() && min_spacing >= 0.0) {
                    return Err(cfg(format!("[optimise] min_spacing = {min_spacing}: must be ≥ 0")));
                }
                Some(OptimiseSettings { windows, min_spacing })
            }
        };
        let data = match base {
            Some(b) => b.join(&raw.data),
            None => PathBuf::from(&raw.data),
        };
        Ok(DesignConfig {
            source: name.to_string(),
            name: raw.name.clone().unwrap_or_else(|| model.name().to_string()),
            data,
            model,
            read: ReadOptions {
                ignore: raw.ignore_columns.clone(),
                columns: raw.columns.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            },
            sizes,
            spec,
            fim_type,
            criterion,
            options,
            optimise,
        })
    }

    /// Reads the design dataset.
    pub fn load_dataset(&self) -> Result<Dataset, Error> {
        Ok(Dataset::from_path(&self.data, &self.read)?)
    }

    /// One line describing the design problem.
    pub fn describe(&self) -> String {
        format!(
            "FO Fisher information ({}), criterion {}: model {}, θ {}, exponential IIV on {}, {} residual error",
            self.fim_type.name(),
            self.criterion.name(),
            self.model.name(),
            self.spec.theta.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
            self.spec.random.iter().map(|r| r.target()).collect::<Vec<_>>().join(", "),
            self.spec.error.name()
        )
    }

    /// Computes the FIM of the design in `data`, optimises the times when
    /// `[optimise]` is given, and writes `design.json` into `out`.
    pub fn run(&self, data: &Dataset, out: &Path) -> Result<DesignReport, Error> {
        let cfg = |reason: String| Error::Config { file: self.source.clone(), reason };
        let sizes = match self.sizes.as_slice() {
            [n] => vec![*n; data.subjects.len()],
            s => s.to_vec(),
        };
        let mut design = Design::new(&self.model, data, &sizes, &self.spec)
            .map_err(|e| cfg(e.to_string()))?
            .with_solver(crate::solvers::Method::Tsit45, self.options);
        let fim = design.fim(self.fim_type).map_err(|e| cfg(e.to_string()))?;
        let groups: Vec<(String, f64, Vec<f64>)> = design
            .group_ids()
            .into_iter()
            .zip(sizes.iter().copied())
            .zip(design.times())
            .map(|((id, n), t)| (id, n, t))
            .collect();
        let optimum = match &self.optimise {
            None => None,
            Some(o) => {
                let times = design.times();
                let windows: Vec<Vec<(f64, f64)>> = match &o.windows {
                    Windows::Common(lo, hi) => times.iter().map(|t| vec![(*lo, *hi); t.len()]).collect(),
                    Windows::PerSample(w) => {
                        let total: usize = times.iter().map(Vec::len).sum();
                        if w.len() != total {
                            return Err(cfg(format!(
                                "[optimise] windows: {} given for {total} samples (one per sample, groups in order)",
                                w.len()
                            )));
                        }
                        let mut it = w.iter().copied();
                        times.iter().map(|t| t.iter().filter_map(|_| it.next()).collect()).collect()
                    }
                };
                let c = TimeConstraints { windows, min_spacing: o.min_spacing };
                Some(optimise_times(&mut design, self.fim_type, self.criterion, &c).map_err(|e| cfg(e.to_string()))?)
            }
        };
        let report = DesignReport { fim, groups, optimum };
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let text = serde_json::to_string_pretty(&self.to_json(&report))
            .map_err(|e| Error::Config { file: self.source.clone(), reason: e.to_string() })?;
        crate::atomic::write_bytes(&out.join("design.json"), text.as_bytes())?;
        Ok(report)
    }

    fn to_json(&self, r: &DesignReport) -> Value {
        let num = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        let keyed = |names: &[String], vals: &[f64]| -> Value {
            let mut m = Map::new();
            for (n, v) in names.iter().zip(vals) {
                m.insert(n.clone(), num(*v));
            }
            Value::Object(m)
        };
        let shape = |t: &[Vec<f64>]| -> Value {
            match t {
                [one] => json!(one),
                many => json!(many),
            }
        };
        let rse = r.fim.rse_percent().map(|v| keyed(&r.fim.names, &v)).unwrap_or(Value::Null);
        let given: Vec<Vec<f64>> = r.groups.iter().map(|g| g.2.clone()).collect();
        let mut o = json!({
            "name": self.name,
            "config": self.source,
            "model": self.model.name(),
            "fim_type": self.fim_type.name(),
            "criterion": self.criterion.name(),
            "criterion_value": num(self.criterion.value(&r.fim)),
            "det_fim": num(r.fim.det()),
            "ln_det_fim": num(r.fim.ln_det()),
            "rse_percent": rse,
            "parameters": keyed(&r.fim.names, &r.fim.values),
            "parameter_order": r.fim.names,
            "fim": (0..r.fim.matrix.nrows()).map(|i| r.fim.matrix.row(i).iter().map(|&v| num(v)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "groups": r.groups.iter().map(|(id, n, t)| json!({"id": id, "size": n, "times": t})).collect::<Vec<_>>(),
            "times": shape(&given),
        });
        if let (Some(opt), Some(map), Some(settings)) = (&r.optimum, o.as_object_mut(), &self.optimise) {
            let after_rse = opt.fim_after.rse_percent().map(|v| keyed(&opt.fim_after.names, &v)).unwrap_or(Value::Null);
            let p = opt.fim_after.names.len() as f64;
            let gain = ((opt.fim_after.ln_det() - opt.fim_before.ln_det()) / p).exp();
            map.insert("times_before".into(), shape(&opt.times_before));
            map.insert("times".into(), shape(&opt.times));
            map.insert("criterion_before".into(), num(opt.criterion_before));
            map.insert("criterion_after".into(), num(opt.criterion_after));
            map.insert("det_fim_after".into(), num(opt.fim_after.det()));
            map.insert("ln_det_fim_after".into(), num(opt.fim_after.ln_det()));
            map.insert("rse_percent_after".into(), after_rse);
            map.insert("d_efficiency_gain".into(), num(gain));
            map.insert("min_spacing".into(), num(settings.min_spacing));
            map.insert("sweeps".into(), json!(opt.sweeps));
            map.insert("evaluations".into(), json!(opt.evaluations));
        }
        o
    }
}

/// The residual error model and σ (SDs) of the given variances.
fn residual(prop: Option<f64>, add: Option<f64>) -> Result<(ErrorModel, Vec<f64>), String> {
    for (k, v) in [("sigma2_prop", prop), ("sigma2_add", add)] {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("key `{k}` = {v}: a variance must be ≥ 0"));
            }
        }
    }
    match (prop.filter(|v| *v > 0.0), add.filter(|v| *v > 0.0)) {
        (Some(p), None) => Ok((ErrorModel::Proportional, vec![p.sqrt()])),
        (None, Some(a)) => Ok((ErrorModel::Additive, vec![a.sqrt()])),
        (Some(p), Some(a)) => Ok((ErrorModel::Combined2, vec![a.sqrt(), p.sqrt()])),
        (None, None) => Err("give a residual variance: `sigma2_prop` and/or `sigma2_add` > 0".into()),
    }
}
