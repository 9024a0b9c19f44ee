//! `insilico simulate`: predictions of a PK model over a NONMEM-layout
//! dataset, configured in TOML.
//!
//! # The config file
//!
//! ```toml
//! model = "pk-1cmt-oral"      # a zoo model (models-zoo/) or the path of a model file (`*.model`)
//! output = "cp"               # optional: which of the model's outputs is PRED (default: the first)
//! data = "../../shared/data/nmtest.csv"   # relative to the config file's directory
//! ignore_columns = []         # optional: NONMEM-named columns to read as plain covariates
//! output_scale = 1000.0       # optional (default 1): PRED = output_scale * the output
//! method = "bdf"              # optional: bdf (default) | esdirk34 | tr-bdf2 | tsit45
//! rtol = 1e-8                 # optional (default 1e-8)
//! atol = 1e-10                # optional (default 1e-10), in amount units
//! max_steps = 1000000         # optional (default 1,000,000 per subject)
//! allow_failures = false      # optional (default false): a subject whose solve fails fails the
//!                             #   command; true: its rows get an empty PRED and the cause in a
//!                             #   STATUS column (ID,TIME,PRED,STATUS; see insilico_jobs::status)
//!
//! [params]                    # parameters of the model by name (compared case-insensitively);
//! ka = 1.5                    # those with a default in the model file may be left out
//! CL = 1.1
//! V = 20
//!
//! [columns]                   # optional: NONMEM columns under another name in the dataset
//! AMT = "DOSE"                #   (a dose record needs an amount: without an AMT column, or
//!                             #   this mapping, the dataset is refused)
//!
//! [dosing]                    # optional
//! dose_cmt = 1                # CMT of dose records without one (default 1: depot, or central for iv)
//! obs_cmt = 2                 # CMT of observations without one (default: central)
//!
//! [dosing.bioavailability]    # optional, per compartment: F (default 1)
//! 2 = "bioav"                 # a string: read from this dataset column on the dose record
//! [dosing.lag]                # optional, per compartment: lag time (default 0)
//! central = "lagt"            # a compartment by number (NONMEM CMT) or by state name
//! [dosing.rate]               # optional: modelled rate of RATE = -1 doses
//! 2 = "rat2"
//! [dosing.duration]           # optional: modelled duration of RATE = -2 doses
//! 2 = 2.5                     # a number: a fixed value
//! ```
//!
//! Compartments are the model's states, numbered as NONMEM's `CMT` (1-based,
//! in the order of the model's `states:` declaration): for the oral zoo
//! models `depot` = 1, `central` = 2, `peripheral1` = 3, `peripheral2` = 4;
//! for the IV ones `central` = 1, `peripheral1` = 2, `peripheral2` = 3. A key
//! of a `[dosing.*]` table is such a number or state name. Observations
//! without a CMT default to `central` where the model has such a state.
//!
//! Dose attributes written in the model (`alag(depot) = tlag`, `f(s)`,
//! `rate(s)`, `dur(s)`) apply to every dose into that state; giving the same
//! attribute for the same compartment in `[dosing.*]` too is an error.
//! Covariates declared in the model are read per subject from the dataset
//! column of that name (any case); a model default applies where the
//! dataset has no such column, and a value that changes within a subject is
//! refused (time-varying covariates are not supported by `simulate` yet).
//!
//! Unknown keys anywhere, unknown or missing parameters, an unknown model or
//! method, a compartment or column that does not exist: each is an error
//! naming the config file and the key.
//!
//! # The output
//!
//! One row per observation record (EVID 0) in dataset order: `ID,TIME,PRED`,
//! where PRED is `output_scale` times the chosen model output (for the PK zoo
//! models `cp = central / V`, V1 for multi-compartment models) at TIME. An observation at the time of
//! a dose sees the dose. The observation's CMT does not change PRED (the
//! model has one output, as a NONMEM `$ERROR` block that ignores CMT).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use std::sync::Arc;

use crate::error::Error;
use crate::model::{Compiled, DoseAttr, ModelSystem};
use crate::solvers::data::{ColumnOrValue, Dataset, DoseMapping, ReadOptions};
use crate::solvers::{solve, Method, ObservationPoint, Options, Problem, System};

/// The quick-start config run by `insilico simulate` without arguments
/// (`examples/quickstart.toml`).
pub const EMBEDDED_CONFIG: &str = include_str!("../../examples/quickstart.toml");
/// Name used for [`EMBEDDED_CONFIG`] in messages.
pub const EMBEDDED_CONFIG_NAME: &str = "examples/quickstart.toml (embedded)";
/// The dataset of the quick-start config (`examples/quickstart.csv`).
pub const EMBEDDED_DATA: &str = include_str!("../../examples/quickstart.csv");
/// Name used for [`EMBEDDED_DATA`] in messages.
pub const EMBEDDED_DATA_NAME: &str = "examples/quickstart.csv (embedded)";

/// Default relative tolerance of `simulate`.
pub const DEFAULT_RTOL: f64 = 1e-8;
/// Default absolute tolerance of `simulate` (amount units).
pub const DEFAULT_ATOL: f64 = 1e-10;

/// The config file as written (see the [module documentation](self)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: String,
    output: Option<String>,
    data: String,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    ignore_columns: Vec<String>,
    output_scale: Option<f64>,
    method: Option<String>,
    rtol: Option<f64>,
    atol: Option<f64>,
    max_steps: Option<usize>,
    allow_failures: Option<bool>,
    #[serde(default)]
    dosing: RawDosing,
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDosing {
    dose_cmt: Option<usize>,
    obs_cmt: Option<usize>,
    #[serde(default)]
    bioavailability: BTreeMap<String, Source>,
    #[serde(default)]
    lag: BTreeMap<String, Source>,
    #[serde(default)]
    rate: BTreeMap<String, Source>,
    #[serde(default)]
    duration: BTreeMap<String, Source>,
}

/// A dose attribute: a fixed number or a dataset column.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Source {
    Value(f64),
    Column(String),
}

/// A validated `simulate` config: the model with its parameters, where the
/// data is, how doses map onto the model, and the solver settings.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Config file name, for messages.
    pub source: String,
    /// The compiled model.
    pub model: Arc<Compiled>,
    /// Index of the model output written as PRED.
    pub output: usize,
    /// Factor applied to that output.
    pub output_scale: f64,
    /// Every parameter `θ` in the model's order ([`System::param_names`]).
    pub params: Vec<f64>,
    /// The dataset's path, resolved against the config file's directory.
    pub data: PathBuf,
    /// Dataset reading options (`ignore_columns`).
    pub read_options: ReadOptions,
    /// Compartments and modelled dose attributes.
    pub mapping: DoseMapping,
    /// Integration method.
    pub method: Method,
    /// Tolerances and step limit.
    pub options: Options,
    /// A subject whose solve fails is written with an empty PRED and its
    /// `STATUS` instead of failing the command (config key `allow_failures`).
    pub allow_failures: bool,
}

/// One output row.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Subject ID as written in the dataset.
    pub id: String,
    /// Observation time.
    pub time: f64,
    /// Model prediction (NaN, written empty, when `status` is not `ok`).
    pub pred: f64,
    /// `ok`, or why the subject's solve failed ([`crate::status`]).
    pub status: &'static str,
}

/// The result of [`Simulation::run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Number of subjects simulated.
    pub subjects: usize,
    /// One row per observation record, in dataset order.
    pub rows: Vec<Prediction>,
    /// Write the `STATUS` column (`allow_failures = true`).
    pub with_status: bool,
}

impl Predictions {
    /// Writes `ID,TIME,PRED` rows (numbers in Rust's shortest round-trip
    /// form), with a `STATUS` column when [`Predictions::with_status`]; a
    /// failed row's PRED is empty, never a number.
    pub fn write_csv<W: Write>(&self, mut w: W) -> std::io::Result<()> {
        writeln!(w, "{}", if self.with_status { "ID,TIME,PRED,STATUS" } else { "ID,TIME,PRED" })?;
        for r in &self.rows {
            let id = if r.id.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", r.id.replace('"', "\"\""))
            } else {
                r.id.clone()
            };
            let pred = if r.status == crate::status::OK { r.pred.to_string() } else { String::new() };
            if self.with_status {
                writeln!(w, "{id},{},{pred},{}", r.time, r.status)?;
            } else {
                writeln!(w, "{id},{},{pred}", r.time)?;
            }
        }
        w.flush()
    }

    /// Rows whose subject failed (`status` not `ok`).
    pub fn failed(&self) -> usize {
        self.rows.iter().filter(|r| r.status != crate::status::OK).count()
    }

    /// Writes the rows to the file at `path` atomically (see
    /// [`Predictions::write_csv`] and [`crate::atomic`]).
    pub fn write_csv_file(&self, path: &Path) -> Result<(), Error> {
        crate::atomic::write_file(path, |w| self.write_csv(w)).map_err(Error::Write)
    }
}

fn fmt_list<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", ")
}

impl Simulation {
    /// Reads and validates the config file at `path`; the dataset path is
    /// resolved against the file's directory.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Simulation, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or_else(|| Path::new(""));
        Self::from_toml_str(&text, &path.display().to_string(), Some(dir))
    }

    /// Parses and validates a config from `text`. `name` is the file name
    /// used in messages; a relative `data` path is resolved against
    /// `base_dir` (the current directory when `None`).
    pub fn from_toml_str(text: &str, name: &str, base_dir: Option<&Path>) -> Result<Simulation, Error> {
        let cfg_err = |reason: String| Error::Config { file: name.to_string(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| cfg_err(e.to_string()))?;

        let model =
            crate::models_zoo::resolve(&raw.model, base_dir).map_err(|e| cfg_err(format!("key `model`: {e}")))?;
        let output_scale = raw.output_scale.unwrap_or(1.0);
        if !(output_scale.is_finite() && output_scale > 0.0) {
            return Err(cfg_err(format!("key `output_scale` must be a finite number > 0, found {output_scale}")));
        }
        let outputs = model.output_names();
        let output = match &raw.output {
            None => 0,
            Some(o) => outputs.iter().position(|n| n.eq_ignore_ascii_case(o.trim())).ok_or_else(|| {
                cfg_err(format!(
                    "key `output`: model {} has no output `{o}` (its outputs are {})",
                    model.name(),
                    fmt_list(&outputs)
                ))
            })?,
        };

        // Parameters by name; the model's defaults where the config gives none.
        let names = model.scalar_param_names();
        let expected = fmt_list(&names);
        let mut params: Vec<Option<f64>> = vec![None; names.len()];
        for (key, value) in &raw.params {
            let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(key.trim())) else {
                return Err(cfg_err(format!(
                    "unknown parameter `{key}` in [params] for model {} (its parameters are {expected})",
                    model.name()
                )));
            };
            let v = match value {
                toml::Value::Float(v) => *v,
                toml::Value::Integer(v) => *v as f64,
                other => {
                    return Err(cfg_err(format!(
                        "parameter `{key}` in [params] must be a number, found a {}",
                        other.type_str()
                    )))
                }
            };
            if params[i].is_some() {
                return Err(cfg_err(format!(
                    "parameter `{}` is given twice in [params] (names are compared case-insensitively)",
                    names[i]
                )));
            }
            params[i] = Some(v);
        }
        let missing: Vec<&str> = names
            .iter()
            .zip(&params)
            .filter(|(n, v)| v.is_none() && model.param_index(n).and_then(|k| model.params()[k].default).is_none())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            return Err(cfg_err(format!(
                "missing parameter{} `{}` in [params] for model {} (its parameters are {expected})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join("`, `"),
                model.name()
            )));
        }
        let mut theta = model.default_params(0);
        for (name, v) in names.iter().zip(&params) {
            if let (Some(v), Some(k)) = (v, model.param_index(name)) {
                theta[k] = *v;
            }
        }
        model.check_params(&theta).map_err(|e| cfg_err(format!("[params]: {e}")))?;
        let params = theta;

        // Solver settings.
        let method = match &raw.method {
            None => Method::Bdf,
            Some(m) => Method::parse(m.trim()).ok_or_else(|| {
                cfg_err(format!(
                    "key `method`: unknown method `{m}` (valid: {})",
                    fmt_list(&Method::ALL.map(|m| m.name()))
                ))
            })?,
        };
        let mut options = Options {
            rtol: raw.rtol.unwrap_or(DEFAULT_RTOL),
            atol: raw.atol.unwrap_or(DEFAULT_ATOL),
            ..Options::default()
        };
        crate::limits::check_tolerances(options.rtol, options.atol).map_err(|e| cfg_err(format!("key {e}")))?;
        if let Some(m) = raw.max_steps {
            if m == 0 {
                return Err(cfg_err("key `max_steps` must be at least 1".into()));
            }
            options.max_steps = m;
        }

        // Dose mapping.
        let n = model.nstates();
        let states: Vec<String> = model.state_names().iter().map(|s| s.to_string()).collect();
        let central = states.iter().position(|s| s == "central").map_or(1, |i| i + 1);
        let model_name = model.name().to_string();
        let cmt_key = |table: &str, key: &str| -> Result<usize, Error> {
            let k = key.trim();
            let by_number = k.parse::<usize>().ok().filter(|c| (1..=n).contains(c));
            let by_name = states.iter().position(|s| s.eq_ignore_ascii_case(k)).map(|i| i + 1);
            by_number.or(by_name).ok_or_else(|| {
                let named: Vec<String> = states.iter().enumerate().map(|(i, s)| format!("{} = {s}", i + 1)).collect();
                cfg_err(format!(
                    "[dosing.{table}]: `{key}` is not a compartment of model {model_name} \
                     (use a number or a name: {})",
                    named.join(", ")
                ))
            })
        };
        let check_cmt = |key: &str, c: usize| -> Result<usize, Error> {
            if (1..=n).contains(&c) {
                Ok(c)
            } else {
                Err(cfg_err(format!("[dosing] {key} = {c}: model {model_name} has compartments 1..={n}")))
            }
        };
        let mut mapping = DoseMapping::new(
            n,
            check_cmt("dose_cmt", raw.dosing.dose_cmt.unwrap_or(1))?,
            check_cmt("obs_cmt", raw.dosing.obs_cmt.unwrap_or(central))?,
        );
        let tables = [
            ("bioavailability", &raw.dosing.bioavailability),
            ("lag", &raw.dosing.lag),
            ("rate", &raw.dosing.rate),
            ("duration", &raw.dosing.duration),
        ];
        for (table, entries) in tables {
            let mut list: Vec<(usize, ColumnOrValue)> = Vec::new();
            for (key, src) in entries {
                let c = cmt_key(table, key)?;
                if list.iter().any(|(d, _)| *d == c) {
                    return Err(cfg_err(format!(
                        "[dosing.{table}]: compartment {c} ({}) is given twice",
                        states[c - 1]
                    )));
                }
                let src = match src {
                    Source::Value(v) => {
                        let ok = match table {
                            "bioavailability" | "lag" => v.is_finite() && *v >= 0.0,
                            _ => v.is_finite() && *v > 0.0,
                        };
                        if !ok {
                            return Err(cfg_err(format!(
                                "[dosing.{table}] {key} = {v}: must be a finite number {}",
                                if matches!(table, "bioavailability" | "lag") { "≥ 0" } else { "> 0" }
                            )));
                        }
                        ColumnOrValue::Value(*v)
                    }
                    Source::Column(col) if col.trim().is_empty() => {
                        return Err(cfg_err(format!("[dosing.{table}] {key}: empty column name")))
                    }
                    Source::Column(col) => ColumnOrValue::Column(col.trim().to_string()),
                };
                list.push((c, src));
            }
            let attr = match table {
                "bioavailability" => DoseAttr::Bioavailability,
                "lag" => DoseAttr::Lag,
                "rate" => DoseAttr::Rate,
                _ => DoseAttr::Duration,
            };
            for (c, _) in &list {
                if model.has_dose_attr(c - 1, attr) {
                    return Err(cfg_err(format!(
                        "[dosing.{table}] compartment {c} ({}): the model already sets {}({}); give it in one place",
                        states[c - 1],
                        attr.keyword(),
                        states[c - 1]
                    )));
                }
            }
            match table {
                "bioavailability" => mapping.bioavailability = list,
                "lag" => mapping.lag = list,
                "rate" => mapping.rate = list,
                _ => mapping.duration = list,
            }
        }

        let data = raw.data.trim();
        if data.is_empty() {
            return Err(cfg_err("key `data` is empty: name the dataset file".into()));
        }
        let data = match base_dir {
            Some(dir) => dir.join(data),
            None => PathBuf::from(data),
        };
        Ok(Simulation {
            source: name.to_string(),
            model: Compiled::new(model),
            output,
            output_scale,
            params,
            data,
            read_options: ReadOptions { ignore: raw.ignore_columns, columns: raw.columns.into_iter().collect() },
            mapping,
            method,
            options,
            allow_failures: raw.allow_failures.unwrap_or(false),
        })
    }

    /// Reads the dataset named by the config and checks that every column
    /// the dose mapping names exists in it.
    pub fn load_dataset(&self) -> Result<Dataset, Error> {
        let ds = Dataset::from_path(&self.data, &self.read_options)?;
        self.check_columns(&ds)?;
        Ok(ds)
    }

    /// Parses the embedded quick-start dataset ([`EMBEDDED_DATA`]) with this
    /// config's reading options.
    pub fn load_embedded_dataset(&self) -> Result<Dataset, Error> {
        let ds = Dataset::from_str(EMBEDDED_DATA_NAME, EMBEDDED_DATA, &self.read_options)?;
        self.check_columns(&ds)?;
        Ok(ds)
    }

    /// Checks that the columns named in the dose mapping are covariate
    /// columns of `ds`.
    pub fn check_columns(&self, ds: &Dataset) -> Result<(), Error> {
        let m = &self.mapping;
        let lists =
            [("bioavailability", &m.bioavailability), ("lag", &m.lag), ("rate", &m.rate), ("duration", &m.duration)];
        for (table, list) in lists {
            for (c, src) in list {
                if let ColumnOrValue::Column(col) = src {
                    if ds.covariate(col).is_none() {
                        return Err(Error::Config {
                            file: self.source.clone(),
                            reason: format!(
                                "[dosing.{table}] compartment {c} reads column `{col}`, which is not a \
                                 covariate column of {} (covariate columns: {})",
                                ds.file,
                                if ds.covariate_names.is_empty() {
                                    "none".to_string()
                                } else {
                                    fmt_list(&ds.covariate_names)
                                }
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Simulates every subject of `ds` (in parallel on rayon's current pool)
    /// and returns one prediction per observation record, in dataset order.
    /// `progress` is called once per finished subject (from any thread).
    pub fn run(&self, ds: &Dataset, progress: &(dyn Fn() + Sync)) -> Result<Predictions, Error> {
        let per_subject: Vec<Vec<Prediction>> = ds
            .subjects
            .par_iter()
            .map(|subj| {
                let out = match self.run_subject(ds, subj) {
                    Err(e) if self.allow_failures => self.failed_rows(ds, subj, &e),
                    other => other,
                };
                progress();
                out
            })
            .collect::<Result<_, _>>()?;
        Ok(Predictions {
            subjects: ds.subjects.len(),
            rows: per_subject.into_iter().flatten().collect(),
            with_status: self.allow_failures,
        })
    }

    /// The rows of a subject whose solve failed with `e` (`allow_failures`):
    /// no prediction, the cause in `status`. Errors that are not the
    /// solve's (the dataset, the mapping) still fail the command.
    fn failed_rows(
        &self,
        ds: &Dataset,
        subj: &crate::solvers::data::Subject,
        e: &Error,
    ) -> Result<Vec<Prediction>, Error> {
        let status = match e {
            Error::Solve { error, .. } => crate::status::of_solver_error(error),
            Error::NonFinite { .. } => "non_finite",
            _ => return Err(self.clone_error(e)),
        };
        let (_, obs) = subj.to_schedule(ds, &self.mapping)?;
        Ok(obs.iter().map(|o| Prediction { id: subj.id.clone(), time: o.time, pred: f64::NAN, status }).collect())
    }

    /// A copy of a non-solve error (errors are not `Clone`).
    fn clone_error(&self, e: &Error) -> Error {
        Error::Config { file: self.source.clone(), reason: e.to_string() }
    }

    /// Simulates one subject of `ds`: its predictions in record order.
    pub fn run_subject(&self, ds: &Dataset, subj: &crate::solvers::data::Subject) -> Result<Vec<Prediction>, Error> {
        let covariates = self.subject_covariates(ds, subj)?;
        let sys = ModelSystem::from_compiled(self.model.clone(), &covariates)
            .map_err(|e| Error::Config { file: self.source.clone(), reason: e.to_string() })?;
        let mapping = self.subject_mapping(&sys);
        let (schedule, obs) = subj.to_schedule(ds, &mapping)?;
        let t0 = subj.records.iter().map(|r| r.time).fold(0.0f64, f64::min);
        let model: &dyn System = &sys;
        let mut prob = Problem::new(model, self.params.clone()).with_schedule(schedule);
        let x0 = sys.initial_state(&self.params);
        if x0.iter().any(|v| *v != 0.0) {
            prob = prob.with_x0(x0);
        }
        prob.t0 = t0;
        prob.observations = obs.iter().map(|o| ObservationPoint { time: o.time, output: self.output }).collect();
        let sol = solve(&prob, self.method, &self.options).map_err(|error| Error::Solve {
            file: ds.file.clone(),
            subject: subj.id.clone(),
            error,
        })?;
        let rows: Vec<Prediction> = obs
            .iter()
            .zip(&sol.outputs)
            .map(|(o, &pred)| Prediction {
                id: subj.id.clone(),
                time: o.time,
                pred: self.output_scale * pred,
                status: crate::status::OK,
            })
            .collect();
        if let Some(bad) = rows.iter().find(|r| !r.pred.is_finite()) {
            return Err(Error::NonFinite {
                file: ds.file.clone(),
                subject: subj.id.clone(),
                time: bad.time,
                value: bad.pred,
                hint: format!(
                    "check `output_scale` (now {:e}) and the parameters in {}",
                    self.output_scale, self.source
                ),
            });
        }
        Ok(rows)
    }

    /// The config's dose mapping plus the dose attributes the model itself
    /// sets for this subject ([`crate::model::subject::subject_dose_mapping`]).
    fn subject_mapping(&self, sys: &ModelSystem) -> DoseMapping {
        crate::model::subject::subject_dose_mapping(sys, &self.mapping, &self.params)
    }

    /// The model's covariates for one subject ([`crate::model::subject::subject_covariates`]).
    fn subject_covariates(&self, ds: &Dataset, subj: &crate::solvers::data::Subject) -> Result<Vec<f64>, Error> {
        crate::model::subject::subject_covariates(&self.model.model, ds, subj)
            .map_err(|e| Error::Config { file: self.source.clone(), reason: e.to_string() })
    }

    /// One line describing the model, parameters and solver settings.
    pub fn describe(&self) -> String {
        let m = &self.model.model;
        let params: Vec<String> = m
            .scalar_param_names()
            .iter()
            .filter_map(|n| m.param_index(n).map(|k| format!("{n}={}", self.params[k])))
            .collect();
        format!(
            "model {} ({}), output {} x {}, method {}, rtol {:e}, atol {:e}",
            m.name(),
            params.join(", "),
            self.output_scale,
            m.output_names()[self.output],
            self.method.name(),
            self.options.rtol,
            self.options.atol
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
model = "pk-1cmt-oral"
data = "d.csv"
[params]
ka = 1.5
CL = 1.1
V = 20
"#;

    fn parse(text: &str) -> Result<Simulation, Error> {
        Simulation::from_toml_str(text, "test.toml", Some(Path::new("/cfg")))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_config_defaults() {
        let s = parse(BASE).unwrap();
        assert_eq!(s.model.model.name(), "pk-1cmt-oral");
        assert_eq!(s.params, vec![1.5, 1.1, 20.0]);
        assert_eq!(s.data, PathBuf::from("/cfg/d.csv"));
        assert_eq!(s.method, Method::Bdf);
        assert_eq!(s.options.rtol, 1e-8);
        assert_eq!(s.options.atol, 1e-10);
        assert_eq!(s.output_scale, 1.0);
        assert_eq!(s.mapping.n_compartments, 3);
        assert_eq!(s.mapping.default_dose_cmt, 1);
        assert_eq!(s.mapping.default_obs_cmt, 2);
    }

    #[test]
    fn iv_defaults_to_central() {
        let s = parse("model = \"pk-2cmt-iv\"\ndata = \"x.csv\"\n[params]\ncl=1\nv1=2\nq=3\nv2=4\n").unwrap();
        assert_eq!(s.mapping.n_compartments, 3);
        assert_eq!(s.mapping.default_dose_cmt, 1);
        assert_eq!(s.mapping.default_obs_cmt, 1);
        assert_eq!(s.params, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn dosing_tables_by_number_and_name() {
        let s = parse(&format!(
            "{BASE}\n[dosing.bioavailability]\n2 = \"bioav\"\ndepot = 0.5\n[dosing.lag]\ncentral = \"lagt\"\n[dosing.duration]\n2 = 3\n"
        ))
        .unwrap();
        assert!(s.mapping.bioavailability.contains(&(2, ColumnOrValue::Column("bioav".into()))));
        assert!(s.mapping.bioavailability.contains(&(1, ColumnOrValue::Value(0.5))));
        assert_eq!(s.mapping.lag, vec![(2, ColumnOrValue::Column("lagt".into()))]);
        assert_eq!(s.mapping.duration, vec![(2, ColumnOrValue::Value(3.0))]);
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = err(&BASE.replace("V = 20", "V = 20\nVc = 3"));
        assert!(e.contains("test.toml") && e.contains("unknown parameter `Vc`") && e.contains("ka, CL, V"), "{e}");
        let e = err(&BASE.replace("V = 20", ""));
        assert!(e.contains("test.toml") && e.contains("missing parameter `V`"), "{e}");
        let e = err(&BASE.replace("pk-1cmt-oral", "pk-9cmt"));
        assert!(e.contains("test.toml") && e.contains("pk-9cmt: not a zoo model"), "{e}");
        let e = err(&BASE.replace("V = 20", "V = -20"));
        assert!(e.contains("test.toml") && e.contains("`V` = -20 lies outside its range (0, inf)"), "{e}");
        let e = err(&BASE.replace("V = 20", "V = \"big\""));
        assert!(e.contains("parameter `V`") && e.contains("must be a number"), "{e}");
        let e = err(&format!("method = \"rk4\"\n{BASE}"));
        assert!(e.contains("unknown method `rk4`") && e.contains("tsit45"), "{e}");
        let e = err(&format!("colour = 1\n{BASE}"));
        assert!(e.contains("test.toml") && e.contains("colour"), "{e}");
        let e = err(&format!("{BASE}\n[dosing.lag]\nperipheral1 = 1\n"));
        assert!(e.contains("peripheral1") && e.contains("1 = depot, 2 = central"), "{e}");
        let e = err(&format!("{BASE}\n[dosing.rate]\n2 = 0\n"));
        assert!(e.contains("[dosing.rate]") && e.contains("> 0"), "{e}");
        let e = err(&format!("{BASE}\n[dosing]\nobs_cmt = 4\n"));
        assert!(e.contains("obs_cmt = 4"), "{e}");
        let e = err(&format!("{BASE}\nrtol = 0\n"));
        assert!(e.contains("rtol"), "{e}");
        let e = err("model = \"pk-1cmt-oral\"\n[params]\nka=1\n");
        assert!(e.contains("test.toml") && e.contains("data"), "{e}");
        let e = err("this is not toml");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn missing_column_is_named() {
        let s = parse(&format!("{BASE}\n[dosing.lag]\n2 = \"nolag\"\n")).unwrap();
        let ds = Dataset::from_str("d.csv", "ID,TIME,AMT,ALAG\n1,0,10,1\n", &ReadOptions::default()).unwrap();
        let e = s.check_columns(&ds).unwrap_err().to_string();
        assert!(e.contains("test.toml") && e.contains("`nolag`") && e.contains("ALAG"), "{e}");
    }

    #[test]
    fn embedded_default_runs_in_order() {
        let s = Simulation::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None).unwrap();
        let ds = s.load_embedded_dataset().unwrap();
        let p = s.run(&ds, &|| {}).unwrap();
        assert_eq!(p.subjects, 4);
        let n_obs = ds.subjects.iter().flat_map(|s| &s.records).filter(|r| r.evid == 0).count();
        assert_eq!(p.rows.len(), n_obs);
        let ids: Vec<&str> = p.rows.iter().map(|r| r.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(p.rows.iter().all(|r| r.pred.is_finite() && r.pred >= 0.0));
        // Subject 1: lag 0.25 h, so the first sample (0.5 h) sees absorption.
        assert!(p.rows[0].pred > 0.0);
    }

    #[test]
    fn csv_format() {
        let p = Predictions {
            subjects: 1,
            rows: vec![
                Prediction { id: "a".into(), time: 0.5, pred: 1.25, status: "ok" },
                Prediction { id: "b,c".into(), time: 2.0, pred: 0.0, status: "ok" },
            ],
            with_status: false,
        };
        let mut out = Vec::new();
        p.write_csv(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ID,TIME,PRED\na,0.5,1.25\n\"b,c\",2,0\n");
    }

    #[test]
    fn solver_failure_names_the_subject() {
        // max_steps = 1 cannot finish.
        let s = parse(&format!("max_steps = 1\n{BASE}")).unwrap();
        let ds = Dataset::from_str("d.csv", "ID,TIME,AMT,DV\n7,0,10,.\n7,24,0,1\n", &ReadOptions::default()).unwrap();
        let e = s.run(&ds, &|| {}).unwrap_err().to_string();
        assert!(e.contains("d.csv") && e.contains("`7`"), "{e}");
    }
}
