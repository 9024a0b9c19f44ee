//! `insilico sweep`: regimen × parameter × virtual-population sweeps of any
//! model file (or zoo model) on the batched integrators
//! ([`crate::kernels`]), streamed to Parquet in chunks that survive a kill.
//!
//! The model is compiled once for the batched engine
//! ([`LaneModel`](crate::model::LaneModel): Cranelift native code, or on
//! `--device cuda` the CUDA C printed from the same programs). The engine
//! runs models of up to [`MAX_STATES`] states without `t` in their
//! right-hand side and without networks; `simulate` (diffsol) runs the rest.
//!
//! # The config file
//!
//! ```toml
//! model = "organoid-drug-response"  # a zoo model, or a model file: "path/to/file.model"
//!                           #   (relative to this config)
//! horizon = 336.0           # > 0, in the model's time unit
//! output_step = 2.0         # > 0: outputs on 0, step, ..., horizon feed the reductions
//! stepper = "tsit5"         # optional: tsit5 (default) | rosenbrock
//! rtol = 1e-6               # optional (default 1e-6); atol default 1e-9
//! max_steps = 100000        # optional, per trajectory
//! chunk = 4096              # optional: trajectories per Parquet part (default 4096)
//! max_output_gb = 10        # optional (default 10): a sweep whose estimated Parquet output is
//!                           #   larger needs the flag --large (the estimate is printed first)
//! allow_failures = false    # optional (default false): trajectories that fail (status != ok) make
//!                           #   the command exit non-zero; true: they are reported, exit 0
//!
//! [regimen.C_med]           # exposure windows on an input declared by the model (`inputs:`):
//! level = [1, 10, 50]       #   level (>= 0) added to the input in [start + k*period, ... + exposure)
//! exposure = 24             #   window length (> 0); exposure >= period: one continuous window
//! period = { from = 24, to = 168, n = 4, log = true }   # > 0 (optional with count = 1)
//! # count = 3               #   optional: number of windows (default: while before the horizon)
//! # start = 0               #   optional: first opening (default 0)
//!
//! # [regimen.depot]         # a dose train into a state of the model:
//! # dose = [100, 200]       #   amount per dose (>= 0)
//! # interval = 12           #   time between doses (> 0; optional with count = 1)
//! # duration = 1            #   optional: zero-order infusion over this time (default 0: bolus)
//! # count = 4               #   optional: number of doses (default: while before the horizon)
//! # start = 0               #   optional: first dose (default 0)
//!
//! [params]                  # typical values by the model's parameter (or covariate) names;
//! EC50 = 5.0                #   the model file's defaults otherwise (a parameter without one must
//!                           #   be given); a list or {from, to, n, log} makes a grid axis
//!
//! [sample]                  # optional: a sampled design over ranges
//! method = "sobol"          #   sobol (points 0..n of the Joe-Kuo sequence) | lhs (Latin hypercube)
//! n = 256
//! seed = 1                  #   lhs only
//! ranges = { EC50 = [1, 20], k_in = [0.1, 1] }  # parameters or regimen columns not on the grid
//! log = ["EC50"]            #   ranges sampled on a log scale
//!
//! [population]              # optional: seeded log-normal virtual subjects
//! size = 64                 #   parameter = value * exp(omega * z), omega^2 = ln(1 + cv^2)
//! seed = 7
//! cv = { rho = 0.25, EC50 = 0.4 }   # any parameter
//!
//! [[output]]                # reductions per trajectory (default: `<output>_final` for every
//! name = "viable_final"     #   output of the model); a column name: letters, digits, '_'
//! quantity = "viable"       #   an output of the model (`output:` line)
//! stat = "final"            #   max min auc mean time_above final (aliases cmax ctrough nadir last)
//! window = [0, 336]         #   optional (default [0, horizon])
//! threshold = 0.5           #   time_above only
//!
//! [efficacy]                # optional: an `efficacy` column, 1 - final(quantity) / final(quantity)
//! quantity = "viable"       #   of the same trajectory solved without doses and exposures
//! rtol = 1e-12              #   optional: tolerances of that untreated solve (defaults 1e-12, 1e-15)
//! atol = 1e-15
//!
//! [report]                  # optional
//! rank_by = "efficacy"      #   a column: an output name, or efficacy (the default when configured)
//! descending = true         #   higher is better (default true)
//! toxicity = "toxicity_peak"   # a column shown next to it (default: one named toxicity*)
//! max_toxicity = 0.25       #   regimens above are flagged
//! heatmap = ["level", "exposure"]   # two grid axes: heat map of rank_by
//! top = 20                  #   rows of the printed ranking
//! ```
//!
//! A regimen key's column is the key itself (`level`, `dose`, ...) when the
//! config has one train; with several trains every regimen column is
//! `<state or input>_<key>` (`depot_dose`, `C_med_level`). Unknown keys, a
//! model that cannot be found or compiled, an unknown state, input,
//! parameter, output, statistic or column, non-positive durations and empty
//! grids are errors naming the file and the key.
//!
//! # Order, determinism, resumption
//!
//! The sweep's trajectories are numbered `id = group · population_size + member`
//! with `group = grid_point · sample_size + sample_point`, the grid in row-major
//! order over the regimen variables (dose trains in the model's state order,
//! then exposure trains in its input order; within a train dose, interval,
//! duration, count, start or level, exposure, period, count, start) then the
//! parameter axes (in the model's parameter order) — first outermost. Every
//! input of trajectory `id` is a pure function of the config and `id`
//! (random-access generators, counter-based random numbers), and every
//! trajectory is integrated on its own, so values do not depend on the
//! thread count or the chunking.
//!
//! Chunk `k` holds ids `[k·chunk, (k+1)·chunk)` and is written to
//! `DIR/part-{k:06}.parquet` through a temporary name and an atomic rename;
//! `DIR/manifest.json` names the config's fingerprint, `DIR/progress.json`
//! counts finished chunks. Re-running the same command after a kill keeps
//! every finished part and computes only the missing ones: no row lost or
//! duplicated. A different config (or an edited model) in the same folder
//! is refused.
//!
//! # Outputs
//!
//! * `part-*.parquet`: one row per trajectory — `id`, `member`, `sample`
//!   (with a sampled design), the regimen variables, every model parameter
//!   and covariate (as integrated), the outputs, `efficacy` (when
//!   configured), `status` (text: `ok`, or the cause: `max_steps`,
//!   `step_too_small`, `non_finite`, `singular`), `failed_at` (the last
//!   output time a failed trajectory reached) and `steps`. A failed
//!   trajectory's outputs and `efficacy` are null, never a sentinel number;
//!   a trajectory whose output is not finite has failed (`non_finite`).
//! * `summary.csv`: one row per group (regimen × grid × sample point): its
//!   factors, `n`, `failed`, then `mean`, `sd`, `min`, `max` of every output
//!   over the population.
//! * `heatmap.png` with `[report] heatmap`.
//!
//! # Example
//!
//! ```
//! use insilico_jobs::sweep::{Device, Engine, Sweep, EMBEDDED_CONFIG};
//! let sweep = Sweep::from_toml_str(EMBEDDED_CONFIG, "embedded", None)?;
//! assert_eq!(sweep.len(), 7 * 4 * 2 * 64);
//! let engine = Engine::new(&sweep, Device::Cpu)?;
//! // Trajectories 0..64: the lowest level and shortest exposure every 72 h, all 64 organoids.
//! let r = sweep.solve_chunk(&engine, 0, 64, &|_| {})?;
//! assert!(r.status.iter().all(|&s| s == 0));
//! assert!(r.efficacy.iter().all(|e| (-1e-6..0.05).contains(e)), "a weak regimen barely works");
//! # Ok::<(), insilico_jobs::sweep::SweepError>(())
//! ```

mod engine;
pub(crate) mod io;
mod regimen;
mod report;

use std::path::Path;

use serde::Deserialize;

use crate::kernels::generators::{linspace, logspace, Grid, LatinHypercube, LogNormalPopulation, Sobol};
use crate::kernels::reductions::{Reducer, Reduction, Stat};
use crate::kernels::{Stepper, Tolerances};
use crate::model::{Model, ParamKind};
use regimen::RegimenSpec;

pub(crate) use engine::{check_model as check_model_for_lanes, with_states};
pub use engine::{cuda_status, status_name, ChunkResult, Device, Engine, MAX_STATES};
pub use io::{read_parts, Table, Values};
pub use report::{GroupRow, SweepReport};

/// The organoid regimen sweep run by `insilico sweep` without arguments
/// (`examples/sweep_organoid.toml`).
pub const EMBEDDED_CONFIG: &str = include_str!("../../../examples/sweep_organoid.toml");
/// Name used for [`EMBEDDED_CONFIG`] in messages.
pub const EMBEDDED_CONFIG_NAME: &str = "examples/sweep_organoid.toml (embedded)";

/// Errors of `insilico sweep`: each names the config file and key, or the
/// output file.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The config is malformed or names something that does not exist.
    #[error("{file}: {reason}")]
    Config {
        /// Config file name as given.
        file: String,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// An output file or folder could not be written or read.
    #[error("{path}: {reason}")]
    Output {
        /// The file or folder.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The requested device cannot run the sweep.
    #[error("{0}")]
    Device(String),
}

impl SweepError {
    pub(crate) fn output(path: &Path, reason: impl std::fmt::Display) -> Self {
        SweepError::Output { path: path.display().to_string(), reason: reason.to_string() }
    }
}

/// A variable of the design: a regimen variable or a model parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Regimen(usize),
    Param(usize),
}

impl Target {
    /// Regimen variables first, then parameters, each in order.
    fn order(self) -> (u8, usize) {
        match self {
            Target::Regimen(i) => (0, i),
            Target::Param(j) => (1, j),
        }
    }
}

/// A grid axis.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    name: String,
    target: Target,
    values: Vec<f64>,
}

/// A sampled design over ranges.
#[derive(Debug, Clone, PartialEq)]
enum Sampler {
    Sobol(Sobol),
    Lhs(LatinHypercube),
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    n: u64,
    sampler: Sampler,
    /// (name, target, lo, hi, log)
    ranges: Vec<(String, Target, f64, f64, bool)>,
}

/// One per-trajectory output column.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    /// Column name.
    pub name: String,
    /// The model output it reduces.
    pub quantity: String,
    /// The reduction.
    pub reduction: Reduction,
}

/// The `efficacy` column: `1 − final(quantity) / final(quantity untreated)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficacySpec {
    /// The model output compared.
    pub quantity: String,
    /// Tolerances of the untreated solve.
    pub tol: Tolerances,
}

/// Report settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSpec {
    /// Column the regimens are ranked by.
    pub rank_by: Option<String>,
    /// Higher is better.
    pub descending: bool,
    /// Column shown as the toxicity proxy.
    pub toxicity: Option<String>,
    /// Flag regimens whose mean toxicity exceeds this.
    pub max_toxicity: Option<f64>,
    /// Two grid axes for the heat map.
    pub heatmap: Option<(String, String)>,
    /// Rows of the printed ranking.
    pub top: usize,
}

/// A validated sweep (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Config file name, for messages.
    pub source: String,
    /// The compiled model.
    pub model: Model,
    /// Horizon.
    pub horizon: f64,
    /// Output grid.
    pub times: Vec<f64>,
    /// Stepper.
    pub stepper: Stepper,
    /// Tolerances.
    pub tol: Tolerances,
    /// Trajectories per part file.
    pub chunk: u64,
    /// Largest estimated Parquet output (GB) run without `--large`.
    pub max_output_gb: f64,
    /// Failed trajectories do not fail the command.
    pub allow_failures: bool,
    /// The dose and window trains.
    regimen: RegimenSpec,
    /// Per-trajectory parameter names: the model's scalar parameters, then its covariates.
    param_names: Vec<String>,
    /// Fixed regimen variable values (axes override).
    regimen_fixed: Vec<f64>,
    /// Typical parameters (axes and samples override).
    typical: Vec<f64>,
    axes: Vec<Axis>,
    grid: Grid,
    sample: Option<Sample>,
    pop_size: u64,
    population: LogNormalPopulation,
    /// Output columns.
    pub outputs: Vec<OutputSpec>,
    /// The efficacy column, when configured.
    pub efficacy: Option<EfficacySpec>,
    /// Report settings.
    pub report: ReportSpec,
}

// ----------------------------------------------------------------------------
// Config parsing
// ----------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: String,
    horizon: f64,
    output_step: Option<f64>,
    stepper: Option<String>,
    rtol: Option<f64>,
    atol: Option<f64>,
    max_steps: Option<u32>,
    chunk: Option<u64>,
    max_output_gb: Option<f64>,
    allow_failures: Option<bool>,
    #[serde(default)]
    regimen: toml::Table,
    #[serde(default)]
    params: toml::Table,
    sample: Option<RawSample>,
    population: Option<RawPopulation>,
    #[serde(default)]
    output: Vec<RawOutput>,
    efficacy: Option<RawEfficacy>,
    #[serde(default)]
    report: RawReport,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEfficacy {
    quantity: String,
    rtol: Option<f64>,
    atol: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSample {
    method: String,
    n: u64,
    seed: Option<u64>,
    ranges: toml::Table,
    #[serde(default)]
    log: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPopulation {
    size: u64,
    seed: Option<u64>,
    #[serde(default)]
    cv: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    quantity: String,
    stat: String,
    window: Option<[f64; 2]>,
    threshold: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    rank_by: Option<String>,
    descending: Option<bool>,
    toxicity: Option<String>,
    max_toxicity: Option<f64>,
    heatmap: Option<[String; 2]>,
    top: Option<usize>,
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// A fixed value or a grid axis.
enum Spec {
    Fixed(f64),
    Axis(Vec<f64>),
}

fn parse_spec(key: &str, v: &toml::Value) -> Result<Spec, String> {
    if let Some(x) = number(v) {
        return Ok(Spec::Fixed(x));
    }
    match v {
        toml::Value::Array(a) => {
            if a.is_empty() {
                return Err(format!("{key}: empty grid (give at least one value)"));
            }
            let vals: Option<Vec<f64>> = a.iter().map(number).collect();
            vals.map(Spec::Axis).ok_or_else(|| format!("{key}: every value of the list must be a number"))
        }
        toml::Value::Table(t) => {
            for k in t.keys() {
                if !["from", "to", "n", "log"].contains(&k.as_str()) {
                    return Err(format!("{key}.{k}: unknown key (a range has from, to, n and optionally log)"));
                }
            }
            let get = |k: &str| t.get(k).and_then(number).ok_or_else(|| format!("{key}.{k}: missing or not a number"));
            let (from, to, n) = (get("from")?, get("to")?, get("n")?);
            let log = match t.get("log") {
                None => false,
                Some(toml::Value::Boolean(b)) => *b,
                Some(_) => return Err(format!("{key}.log: must be true or false")),
            };
            if n < 1.0 || n.fract() != 0.0 {
                return Err(format!("{key}.n: empty grid ({n} points; give a whole number >= 1)"));
            }
            crate::limits::check_alloc(n, 8, "the grid axis", &format!("{key}.n"))?;
            if !from.is_finite() || !to.is_finite() {
                return Err(format!("{key}: from and to must be finite"));
            }
            if log && (from <= 0.0 || to <= 0.0) {
                return Err(format!("{key}: a log range needs positive from and to"));
            }
            let n = n as usize;
            Ok(Spec::Axis(if log { logspace(from, to, n) } else { linspace(from, to, n) }))
        }
        _ => Err(format!("{key}: expected a number, a list of numbers or {{from, to, n, log}}")),
    }
}

impl Sweep {
    /// Reads and validates a config file; a model file is found relative
    /// to the config's folder.
    pub fn from_path(path: &Path) -> Result<Self, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|e| SweepError::Config {
            file: path.display().to_string(),
            reason: format!("cannot read the config: {e}"),
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses and validates a config given as text; `source` names it in
    /// messages; a relative model file path is resolved against `base_dir`
    /// (the current directory when `None`), as `simulate` does.
    pub fn from_toml_str(text: &str, source: &str, base_dir: Option<&Path>) -> Result<Self, SweepError> {
        let err = |reason: String| SweepError::Config { file: source.to_string(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let model = crate::models_zoo::resolve(&raw.model, base_dir).map_err(|e| err(format!("model: {e}")))?;
        engine::check_model(&model).map_err(|e| err(format!("model: {e}")))?;
        if !(raw.horizon.is_finite() && raw.horizon > 0.0) {
            return Err(err(format!("horizon: must be a positive duration, got {}", raw.horizon)));
        }
        let horizon = raw.horizon;
        let step = raw.output_step.unwrap_or(horizon / 168.0);
        if !(step.is_finite() && step > 0.0 && step <= horizon) {
            return Err(err(format!("output_step: must be a positive duration <= horizon, got {step}")));
        }
        // Estimate before allocating: the output grid has ceil(horizon / step) + 1 times.
        let nt = crate::limits::check_alloc((horizon / step - 1e-9).ceil() + 1.0, 8, "the output times", "output_step")
            .map_err(err)?
            - 1;
        let mut times: Vec<f64> = (0..nt).map(|k| k as f64 * step).collect();
        times.push(horizon);
        let stepper = match &raw.stepper {
            None => Stepper::Tsit5,
            Some(s) => Stepper::parse(s)
                .ok_or_else(|| err(format!("stepper: unknown stepper `{s}` (valid: tsit5, rosenbrock)")))?,
        };
        let defaults = Tolerances::default();
        let tol = Tolerances {
            rtol: raw.rtol.unwrap_or(defaults.rtol),
            atol: raw.atol.unwrap_or(defaults.atol),
            max_steps: raw.max_steps.unwrap_or(defaults.max_steps),
        };
        crate::limits::check_tolerances(tol.rtol, tol.atol).map_err(err)?;
        if tol.max_steps == 0 {
            return Err(err("max_steps: must be at least 1".into()));
        }
        let chunk = raw.chunk.unwrap_or(4096);
        if chunk == 0 {
            return Err(err("chunk: must be at least 1".into()));
        }
        // A chunk's buffers: inputs and results, a few doubles per column.
        crate::limits::check_alloc(chunk as f64, 64 * (24 + raw.output.len()), "one chunk's buffers", "chunk")
            .map_err(err)?;
        let max_output_gb = raw.max_output_gb.unwrap_or(DEFAULT_MAX_OUTPUT_GB);
        if !(max_output_gb.is_finite() && max_output_gb > 0.0) {
            return Err(err(format!("max_output_gb: must be a positive number of GB, got {max_output_gb}")));
        }
        // Parameters of a trajectory: the model's scalar parameters, then its covariates.
        let scalar: Vec<&crate::model::Param> =
            model.params().iter().filter(|p| !matches!(p.kind, ParamKind::Weight { .. })).collect();
        let names: Vec<String> =
            scalar.iter().map(|p| p.name.clone()).chain(model.covariates().iter().map(|c| c.name.clone())).collect();
        let check_param = |j: usize, v: f64| -> Result<(), String> {
            if !v.is_finite() {
                return Err("must be finite".into());
            }
            match scalar.get(j).and_then(|p| p.bounds) {
                Some(b) if !b.contains(v) => Err(format!("lies outside the model's range {b}")),
                _ => Ok(()),
            }
        };
        let find_param = |k: &str| names.iter().position(|n| n.eq_ignore_ascii_case(k));
        let (regimen, regimen_values) = RegimenSpec::parse(&raw.regimen, &model).map_err(err)?;
        let rvars = regimen.columns();
        let find_target = |k: &str| regimen.find(k).map(Target::Regimen).or(find_param(k).map(Target::Param));
        let unknown_param = |section: &str, k: &str| {
            err(format!("[{section}] {k}: unknown parameter of model `{}` (valid: {})", model.name(), names.join(", ")))
        };

        // Regimen variables.
        let mut regimen_fixed = vec![f64::NAN; rvars.len()];
        let mut axes_r: Vec<Axis> = Vec::new();
        for (i, v) in regimen_values.iter().enumerate() {
            let var = &regimen.vars[i];
            let key = &var.config_key;
            let vals = match parse_spec(key, v).map_err(err)? {
                Spec::Fixed(x) => {
                    regimen_fixed[i] = x;
                    vec![x]
                }
                Spec::Axis(vals) => {
                    axes_r.push(Axis { name: var.column.clone(), target: Target::Regimen(i), values: vals.clone() });
                    vals
                }
            };
            for x in vals {
                var.field.check(x).map_err(|why| err(format!("{key}: {why}, got {x}")))?;
            }
        }
        // Parameters: the model's defaults, then the config's values.
        let mut typical: Vec<f64> =
            scalar.iter().map(|p| p.default.unwrap_or(f64::NAN)).chain(model.default_covariates()).collect();
        let mut axes_p: Vec<Axis> = Vec::new();
        for (k, v) in &raw.params {
            let j = find_param(k).ok_or_else(|| unknown_param("params", k))?;
            let key = format!("[params] {k}");
            let vals = match parse_spec(&key, v).map_err(err)? {
                Spec::Fixed(x) => {
                    typical[j] = x;
                    vec![x]
                }
                Spec::Axis(vals) => {
                    axes_p.push(Axis { name: names[j].clone(), target: Target::Param(j), values: vals.clone() });
                    vals
                }
            };
            for x in vals {
                check_param(j, x).map_err(|why| err(format!("{key}: {why}, got {x}")))?;
            }
        }
        axes_r.sort_by_key(|a| a.target.order());
        axes_p.sort_by_key(|a| a.target.order());
        let mut axes = axes_r;
        axes.extend(axes_p);

        // Sampled design.
        let sample = match &raw.sample {
            None => None,
            Some(s) => {
                if s.n == 0 {
                    return Err(err("[sample] n: empty design (give n >= 1)".into()));
                }
                if s.ranges.is_empty() {
                    return Err(err("[sample] ranges: empty (name at least one parameter or regimen variable)".into()));
                }
                let mut ranges = Vec::new();
                for (k, v) in &s.ranges {
                    let key = format!("[sample.ranges] {k}");
                    let t = find_target(k).ok_or_else(|| {
                        err(format!(
                            "{key}: unknown parameter or regimen column of model `{}` (valid: {})",
                            model.name(),
                            rvars
                                .iter()
                                .copied()
                                .chain(names.iter().map(String::as_str))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    let canonical = match t {
                        Target::Regimen(i) => rvars[i],
                        Target::Param(j) => names[j].as_str(),
                    };
                    if let Target::Regimen(i) = t {
                        if !regimen.vars[i].field.samplable() {
                            return Err(err(format!("{key}: a whole number; give it as a list in [regimen]")));
                        }
                    }
                    if axes.iter().any(|a| a.target == t) {
                        return Err(err(format!("{key}: `{canonical}` is already a grid axis")));
                    }
                    let pair =
                        v.as_array().filter(|a| a.len() == 2).and_then(|a| Some((number(&a[0])?, number(&a[1])?)));
                    let (lo, hi) = pair.ok_or_else(|| err(format!("{key}: expected [low, high]")))?;
                    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                        return Err(err(format!("{key}: expected finite low <= high, got [{lo}, {hi}]")));
                    }
                    let log = s.log.iter().any(|l| l.eq_ignore_ascii_case(k));
                    if log && lo <= 0.0 {
                        return Err(err(format!("{key}: a log range needs a positive low end")));
                    }
                    for x in [lo, hi] {
                        let ok = match t {
                            Target::Regimen(i) => regimen.vars[i].field.check(x).map_err(String::from),
                            Target::Param(j) => check_param(j, x),
                        };
                        ok.map_err(|why| err(format!("{key}: {why}, got {x}")))?;
                    }
                    ranges.push((canonical.to_string(), t, lo, hi, log));
                }
                for l in &s.log {
                    if !s.ranges.keys().any(|k| k.eq_ignore_ascii_case(l)) {
                        return Err(err(format!("[sample] log: `{l}` is not one of the ranges")));
                    }
                }
                ranges.sort_by_key(|r| r.1.order());
                let sampler = match s.method.to_ascii_lowercase().as_str() {
                    "sobol" => {
                        Sampler::Sobol(Sobol::new(ranges.len()).map_err(|e| err(format!("[sample] ranges: {e}")))?)
                    }
                    "lhs" | "latin-hypercube" => Sampler::Lhs(
                        LatinHypercube::new(s.n, ranges.len(), s.seed.unwrap_or(0))
                            .map_err(|e| err(format!("[sample]: {e}")))?,
                    ),
                    m => return Err(err(format!("[sample] method: unknown method `{m}` (valid: sobol, lhs)"))),
                };
                Some(Sample { n: s.n, sampler, ranges })
            }
        };
        // Parameters without a default must be given somewhere.
        for (j, v) in typical.iter().enumerate() {
            let on_axis = axes.iter().any(|a| a.target == Target::Param(j));
            let sampled = sample.as_ref().is_some_and(|s| s.ranges.iter().any(|r| r.1 == Target::Param(j)));
            if v.is_nan() && !on_axis && !sampled {
                return Err(err(format!(
                    "[params] {}: missing (model `{}` gives it no default)",
                    names[j],
                    model.name()
                )));
            }
        }
        let grid_axes: Vec<Vec<f64>> =
            if axes.is_empty() { vec![vec![0.0]] } else { axes.iter().map(|a| a.values.clone()).collect() };
        let grid = Grid::new(grid_axes).map_err(|e| err(format!("grid: {e}")))?;

        // Population.
        let (pop_size, population) = match &raw.population {
            None => (1, LogNormalPopulation::new(vec![1.0; names.len()], vec![0.0; names.len()], 0)),
            Some(p) => {
                if p.size == 0 {
                    return Err(err("[population] size: empty population (give size >= 1)".into()));
                }
                let mut cv = vec![0.0; names.len()];
                for (k, v) in &p.cv {
                    let j = find_param(k).ok_or_else(|| unknown_param("population.cv", k))?;
                    let c = number(v).ok_or_else(|| err(format!("[population.cv] {k}: expected a number")))?;
                    if !(c.is_finite() && c >= 0.0) {
                        return Err(err(format!("[population.cv] {k}: a CV must be finite and >= 0, got {c}")));
                    }
                    cv[j] = c;
                }
                (p.size, LogNormalPopulation::new(vec![1.0; names.len()], cv, p.seed.unwrap_or(0)))
            }
        };
        let population = population.map_err(|e| err(format!("[population]: {e}")))?;
        let total = grid.len().checked_mul(sample.as_ref().map_or(1, |s| s.n)).and_then(|g| g.checked_mul(pop_size));
        if total.is_none_or(|t| t > (1u64 << 40)) {
            return Err(err("the sweep has more than 2^40 trajectories".into()));
        }

        // Outputs: the config's, or the final value of every model output.
        let quantities = model.output_names();
        let mut outputs = Vec::new();
        let raw_outputs = if raw.output.is_empty() {
            quantities
                .iter()
                .map(|q| RawOutput {
                    name: format!("{q}_final"),
                    quantity: q.to_string(),
                    stat: "final".into(),
                    window: None,
                    threshold: None,
                })
                .collect()
        } else {
            raw.output.clone()
        };
        let mut reserved: Vec<String> =
            ["id", "member", "sample", "status", "failed_at", "steps", "efficacy", "group", "n", "failed"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        reserved.extend(rvars.iter().map(|s| s.to_string()));
        reserved.extend(names.iter().cloned());
        for (i, o) in raw_outputs.iter().enumerate() {
            let key = format!("[[output]] #{} ({})", i + 1, o.name);
            if o.name.is_empty() || !o.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(format!("{key} name: use letters, digits and '_' only")));
            }
            if reserved.iter().any(|r| r.eq_ignore_ascii_case(&o.name))
                || outputs.iter().any(|q: &OutputSpec| q.name.eq_ignore_ascii_case(&o.name))
            {
                return Err(err(format!("{key} name: `{}` is already a column", o.name)));
            }
            let quantity = quantities.iter().find(|q| q.eq_ignore_ascii_case(&o.quantity)).ok_or_else(|| {
                err(format!(
                    "{key} quantity: unknown output `{}` of model `{}` (valid: {})",
                    o.quantity,
                    model.name(),
                    quantities.join(", ")
                ))
            })?;
            let stat = Stat::parse(&o.stat).ok_or_else(|| {
                let valid: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
                err(format!("{key} stat: unknown statistic `{}` (valid: {})", o.stat, valid.join(", ")))
            })?;
            let [a, b] = o.window.unwrap_or([0.0, horizon]);
            if !(a.is_finite() && b.is_finite() && 0.0 <= a && a < b && b <= horizon) {
                return Err(err(format!("{key} window: need 0 <= start < end <= horizon, got [{a}, {b}]")));
            }
            let threshold = o.threshold.unwrap_or(0.0);
            if stat == Stat::TimeAbove && o.threshold.is_none() {
                return Err(err(format!("{key} threshold: time_above needs a threshold")));
            }
            if !threshold.is_finite() {
                return Err(err(format!("{key} threshold: must be finite")));
            }
            outputs.push(OutputSpec {
                name: o.name.clone(),
                quantity: quantity.to_string(),
                reduction: Reduction::new(stat, a, b, threshold),
            });
        }
        // Efficacy.
        let efficacy = match &raw.efficacy {
            None => None,
            Some(e) => {
                let quantity = quantities.iter().find(|q| q.eq_ignore_ascii_case(&e.quantity)).ok_or_else(|| {
                    err(format!(
                        "[efficacy] quantity: unknown output `{}` of model `{}` (valid: {})",
                        e.quantity,
                        model.name(),
                        quantities.join(", ")
                    ))
                })?;
                let tol = Tolerances {
                    rtol: e.rtol.unwrap_or(DEFAULT_EFFICACY_RTOL),
                    atol: e.atol.unwrap_or(DEFAULT_EFFICACY_ATOL),
                    max_steps: tol.max_steps,
                };
                crate::limits::check_tolerances(tol.rtol, tol.atol).map_err(|e| err(format!("[efficacy] {e}")))?;
                Some(EfficacySpec { quantity: quantity.to_string(), tol })
            }
        };
        for q in &quantities {
            let mut reds: Vec<Reduction> = outputs.iter().filter(|o| o.quantity == *q).map(|o| o.reduction).collect();
            if efficacy.as_ref().is_some_and(|e| e.quantity == *q) {
                reds.push(Reduction::last()); // the efficacy's final treated value
            }
            Reducer::new(&reds).map_err(|e| err(format!("[[output]] quantity {q}: {e}")))?;
        }

        // Report.
        let mut columns: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
        if efficacy.is_some() {
            columns.push("efficacy".into());
        }
        let check_column = |key: &str, c: &str| -> Result<String, SweepError> {
            columns
                .iter()
                .find(|x| x.eq_ignore_ascii_case(c))
                .cloned()
                .ok_or_else(|| err(format!("[report] {key}: unknown column `{c}` (valid: {})", columns.join(", "))))
        };
        let r = &raw.report;
        let rank_by = match (&r.rank_by, &efficacy) {
            (Some(c), _) => Some(check_column("rank_by", c)?),
            (None, Some(_)) => Some("efficacy".to_string()),
            (None, None) => columns.first().cloned(),
        };
        let toxicity = match &r.toxicity {
            Some(c) => Some(check_column("toxicity", c)?),
            None => columns.iter().find(|c| c.starts_with("toxicity")).cloned(),
        };
        if let Some(m) = r.max_toxicity {
            if toxicity.is_none() {
                return Err(err("[report] max_toxicity: needs a toxicity column ([report] toxicity)".into()));
            }
            if !m.is_finite() {
                return Err(err("[report] max_toxicity: must be finite".into()));
            }
        }
        let heatmap = match &r.heatmap {
            None => None,
            Some([x, y]) => {
                let find = |k: &str| {
                    axes.iter().find(|a| a.name.eq_ignore_ascii_case(k)).map(|a| a.name.clone()).ok_or_else(|| {
                        let valid: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
                        err(format!(
                            "[report] heatmap: unknown column `{k}`: not a grid axis (grid axes: {})",
                            if valid.is_empty() { "none".to_string() } else { valid.join(", ") }
                        ))
                    })
                };
                let (x, y) = (find(x)?, find(y)?);
                if x == y {
                    return Err(err("[report] heatmap: give two different grid axes".into()));
                }
                if rank_by.is_none() {
                    return Err(err("[report] heatmap: needs [report] rank_by".into()));
                }
                Some((x, y))
            }
        };
        let report = ReportSpec {
            rank_by,
            descending: r.descending.unwrap_or(true),
            toxicity,
            max_toxicity: r.max_toxicity,
            heatmap,
            top: r.top.unwrap_or(20).max(1),
        };
        let sweep = Sweep {
            source: source.to_string(),
            model,
            regimen,
            param_names: names,
            efficacy,
            horizon,
            times,
            stepper,
            tol,
            chunk,
            max_output_gb,
            allow_failures: raw.allow_failures.unwrap_or(false),
            regimen_fixed,
            typical,
            axes,
            grid,
            sample,
            pop_size,
            population,
            outputs,
            report,
        };
        // The number of trajectories must be countable (ids are 64-bit).
        let n = sweep.grid.len() as f64 * sweep.sample_size() as f64 * sweep.pop_size as f64;
        let exact = sweep.grid.len().checked_mul(sweep.sample_size()).and_then(|g| g.checked_mul(sweep.pop_size));
        if exact.is_none() || n > 9.0e15 {
            return Err(err(format!(
                "the sweep has {} trajectories (grid x sample n x population size), more than can be numbered; \
                 shrink the grid axes, [sample] n or [population] size",
                crate::limits::fmt_count(n)
            )));
        }
        Ok(sweep)
    }
}

/// Default of the config key `max_output_gb`.
pub const DEFAULT_MAX_OUTPUT_GB: f64 = 10.0;
/// Default relative tolerance of the efficacy's untreated solve (`[efficacy] rtol`).
pub const DEFAULT_EFFICACY_RTOL: f64 = 1e-12;
/// Default absolute tolerance of the efficacy's untreated solve (`[efficacy] atol`).
pub const DEFAULT_EFFICACY_ATOL: f64 = 1e-15;

impl Sweep {
    /// Estimated bytes of Parquet output: every column at 8 bytes a row
    /// (an upper bound: Snappy usually does better on the input columns).
    pub fn estimated_output_bytes(&self) -> f64 {
        self.len() as f64 * (self.columns().len() as f64 * 8.0)
    }
    /// Refuses a sweep whose estimated output exceeds `max_output_gb`
    /// unless `large` (the `--large` flag) is given.
    pub fn check_output_size(&self, large: bool) -> Result<(), SweepError> {
        let gb = self.estimated_output_bytes() / 1e9;
        if gb > self.max_output_gb && !large {
            return Err(SweepError::Config {
                file: self.source.clone(),
                reason: format!(
                    "the sweep's {} trajectories would write about {} of Parquet, over max_output_gb = {}; \
                     pass --large to run it anyway, or raise the config key `max_output_gb`",
                    crate::limits::fmt_count(self.len() as f64),
                    crate::limits::fmt_bytes(gb * 1e9),
                    self.max_output_gb
                ),
            });
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------
// Trajectories
// ----------------------------------------------------------------------------

/// The inputs of one trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryInputs {
    /// Group index (regimen × grid × sample point).
    pub group: u64,
    /// Population member.
    pub member: u64,
    /// Sample point (0 without a sampled design).
    pub sample: u64,
    /// Regimen variables.
    pub regimen_vars: Vec<f64>,
    /// Model parameters as integrated.
    pub params: Vec<f64>,
}

impl Sweep {
    /// Number of trajectories.
    pub fn len(&self) -> u64 {
        self.groups() * self.pop_size
    }
    /// Always false (a sweep has at least one trajectory).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Number of groups (regimen × grid × sample points).
    pub fn groups(&self) -> u64 {
        self.grid.len() * self.sample_size()
    }
    /// Points of the sampled design (1 without one).
    pub fn sample_size(&self) -> u64 {
        self.sample.as_ref().map_or(1, |s| s.n)
    }
    /// Virtual subjects per group.
    pub fn population_size(&self) -> u64 {
        self.pop_size
    }
    /// Number of chunks (part files).
    pub fn chunks(&self) -> u64 {
        self.len().div_ceil(self.chunk)
    }
    /// Names of the grid axes, in grid order.
    pub fn axis_names(&self) -> Vec<&str> {
        self.axes.iter().map(|a| a.name.as_str()).collect()
    }
    /// Names of the sampled variables.
    pub fn sample_names(&self) -> Vec<&str> {
        self.sample.as_ref().map_or(vec![], |s| s.ranges.iter().map(|r| r.0.as_str()).collect())
    }

    /// The grid and sample values of group `g`: regimen variables and
    /// parameters before the population's variation.
    fn group_design(&self, g: u64, regimen: &mut [f64], params: &mut [f64]) {
        let ns = self.sample_size();
        let (gi, si) = (g / ns, g % ns);
        regimen.copy_from_slice(&self.regimen_fixed);
        params.copy_from_slice(&self.typical);
        let mut vals = vec![0.0; self.axes.len()];
        if !self.axes.is_empty() {
            self.grid.point(gi, &mut vals);
        }
        for (a, v) in self.axes.iter().zip(&vals) {
            match a.target {
                Target::Regimen(i) => regimen[i] = *v,
                Target::Param(j) => params[j] = *v,
            }
        }
        if let Some(s) = &self.sample {
            let mut u = vec![0.0; s.ranges.len()];
            match &s.sampler {
                Sampler::Sobol(q) => q.point(si, &mut u),
                Sampler::Lhs(q) => q.point(si, &mut u),
            }
            for (r, u) in s.ranges.iter().zip(&u) {
                let (lo, hi, log) = (r.2, r.3, r.4);
                let v = if log { (lo.ln() + u * (hi.ln() - lo.ln())).exp() } else { lo + u * (hi - lo) };
                match r.1 {
                    Target::Regimen(i) => regimen[i] = v,
                    Target::Param(j) => params[j] = v,
                }
            }
        }
    }

    /// The grid axis values and sampled values of group `g`, in the order of
    /// [`Sweep::axis_names`] then [`Sweep::sample_names`].
    pub fn group_key(&self, g: u64) -> Vec<f64> {
        let mut r = vec![0.0; self.regimen_fixed.len()];
        let mut p = vec![0.0; self.typical.len()];
        self.group_design(g, &mut r, &mut p);
        let pick = |t: Target| match t {
            Target::Regimen(i) => r[i],
            Target::Param(j) => p[j],
        };
        let mut out: Vec<f64> = self.axes.iter().map(|a| pick(a.target)).collect();
        if let Some(s) = &self.sample {
            out.extend(s.ranges.iter().map(|x| pick(x.1)));
        }
        out
    }

    /// The inputs of trajectory `id` (a pure function of the config and `id`).
    pub fn inputs(&self, id: u64) -> TrajectoryInputs {
        let (group, member) = (id / self.pop_size, id % self.pop_size);
        let mut regimen_vars = vec![0.0; self.regimen_fixed.len()];
        let mut params = vec![0.0; self.typical.len()];
        self.group_design(group, &mut regimen_vars, &mut params);
        for (j, p) in params.iter_mut().enumerate() {
            *p *= self.population.factor(member, j);
        }
        TrajectoryInputs { group, member, sample: group % self.sample_size(), regimen_vars, params }
    }

    /// Column names of a part file, in order.
    pub fn columns(&self) -> Vec<(String, io::Kind)> {
        let mut c = vec![("id".to_string(), io::Kind::I64), ("member".to_string(), io::Kind::I64)];
        if self.sample.is_some() {
            c.push(("sample".to_string(), io::Kind::I64));
        }
        c.extend(self.regimen.columns().iter().map(|n| (n.to_string(), io::Kind::F64)));
        c.extend(self.param_names.iter().map(|n| (n.clone(), io::Kind::F64)));
        c.extend(self.outputs.iter().map(|o| (o.name.clone(), io::Kind::F64)));
        if self.efficacy.is_some() {
            c.push(("efficacy".to_string(), io::Kind::F64));
        }
        c.push(("status".to_string(), io::Kind::Text));
        c.push(("failed_at".to_string(), io::Kind::F64));
        c.push(("steps".to_string(), io::Kind::I32));
        c
    }

    /// Names of the per-trajectory result columns summarised per group
    /// (outputs, then `efficacy` when configured).
    pub fn result_columns(&self) -> Vec<String> {
        let mut c: Vec<String> = self.outputs.iter().map(|o| o.name.clone()).collect();
        if self.efficacy.is_some() {
            c.push("efficacy".into());
        }
        c
    }

    /// A fingerprint of everything that determines the results (and the
    /// chunk size, which fixes the file layout): a different config or an
    /// edited model cannot resume another's folder.
    pub fn fingerprint(&self) -> String {
        // The model by its summary and every node of its graph (in order; an edited model differs).
        let g = self.model.graph();
        let model_nodes: Vec<&crate::model::expr::Op> =
            (0..g.len()).map(|i| g.op(i as crate::model::expr::Id)).collect();
        let model_nodes = (self.model.summary(), model_nodes);
        let desc = format!(
            "{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{:?}",
            env!("CARGO_PKG_VERSION"),
            self.model.name(),
            model_nodes,
            self.regimen,
            self.times,
            self.stepper,
            self.tol,
            self.regimen_fixed,
            self.typical,
            self.axes,
            self.sample,
            self.population,
            self.pop_size,
            self.outputs,
            self.efficacy,
            self.chunk
        );
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in desc.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        let axes: Vec<String> = self.axes.iter().map(|a| format!("{} ({})", a.name, a.values.len())).collect();
        let mut s = format!(
            "model {}, {} trajectories = grid [{}]",
            self.model.name(),
            self.len(),
            if axes.is_empty() { "1 point".to_string() } else { axes.join(" x ") }
        );
        if let Some(sm) = &self.sample {
            let kind = match sm.sampler {
                Sampler::Sobol(_) => "Sobol",
                Sampler::Lhs(_) => "Latin hypercube",
            };
            s += &format!(" x {kind} design ({} points over {})", sm.n, self.sample_names().join(", "));
        }
        if self.pop_size > 1 {
            s += &format!(" x {} virtual subjects", self.pop_size);
        }
        s += &format!(", horizon {} h, {:?}", self.horizon, self.stepper);
        s
    }
}

// ----------------------------------------------------------------------------
// Running a sweep into a folder
// ----------------------------------------------------------------------------

/// What [`Sweep::prepare`] found in the output folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Chunks still to compute, in order.
    pub todo: Vec<u64>,
    /// Chunks complete (found on disk, plus those written since).
    pub done: u64,
    /// Trajectories in the complete chunks.
    pub done_rows: u64,
    /// Parts found damaged on resume (truncated, unreadable footer, wrong
    /// row count), removed and to be recomputed: chunk and what was wrong.
    pub damaged: Vec<(u64, String)>,
}

impl Sweep {
    /// Trajectory range of chunk `k`.
    pub fn chunk_range(&self, k: u64) -> (u64, usize) {
        let start = k * self.chunk;
        (start, (self.len() - start).min(self.chunk) as usize)
    }

    /// Prepares `dir`: creates it, writes the manifest (or checks that an
    /// existing one is this config's), removes unfinished temporary files,
    /// and lists the chunks still to compute.
    pub fn prepare(&self, dir: &Path) -> Result<Plan, SweepError> {
        io::prepare(self, dir)
    }

    /// Writes chunk `k`'s results to its part file (temporary name, then an
    /// atomic rename), counts it in `plan` and updates `progress.json`.
    pub fn write_chunk(&self, dir: &Path, k: u64, r: &ChunkResult, plan: &mut Plan) -> Result<(), SweepError> {
        io::write_part(self, dir, k, r)?;
        plan.done += 1;
        plan.done_rows += r.inputs.len() as u64;
        io::write_progress(self, dir, plan)
    }

    /// Reads every part back in order and writes `summary.csv` (and
    /// `heatmap.png` when configured); returns the ranking.
    pub fn finish(&self, dir: &Path) -> Result<SweepReport, SweepError> {
        report::finish(self, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> String {
        match Sweep::from_toml_str(text, "bad.toml", None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str = "model = \"organoid-drug-response\"\nhorizon = 336.0\n[regimen.C_med]\nlevel = [1, 10]\nexposure = 24\nperiod = 72\n";

    #[test]
    fn embedded_config_is_valid() {
        let s = Sweep::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None).unwrap();
        assert_eq!(s.len(), 7 * 4 * 2 * 64);
        assert_eq!(s.axis_names(), vec!["level", "exposure", "period"]);
        assert_eq!(s.times.len(), 169);
        assert_eq!(*s.times.last().unwrap(), 336.0);
    }

    #[test]
    fn bad_configs_name_the_file_and_key() {
        let cases: Vec<(String, &str)> = vec![
            (BASE.replace("organoid-drug-response", "organoidz"), "model: organoidz: not a zoo model"),
            (BASE.replace("organoid-drug-response", "no/such.model"), "model: "),
            (format!("{BASE}[params]\nrhoo = 1\n"), "[params] rhoo: unknown parameter"),
            (BASE.replace("exposure = 24", "exposure = 0"), "[regimen.C_med] exposure: must be positive"),
            (BASE.replace("period = 72", "period = -72"), "[regimen.C_med] period: must be positive"),
            (BASE.replace("horizon = 336.0", "horizon = 0.0"), "horizon: must be a positive duration"),
            (BASE.replace("level = [1, 10]", "level = []"), "[regimen.C_med] level: empty grid"),
            (
                BASE.replace("level = [1, 10]", "level = { from = 1, to = 5, n = 0 }"),
                "[regimen.C_med] level.n: empty grid",
            ),
            (BASE.replace("exposure = 24\n", ""), "[regimen.C_med] exposure: missing"),
            (BASE.replace("[regimen.C_med]", "[regimen.C_medd]"), "`C_medd` is neither a state nor an input"),
            (BASE.replace("[regimen.C_med]\n", "[regimen]\n"), "[regimen] exposure: expected a table"),
            (BASE.replace("period = 72", "period = 72\ncount = 1.5"), "[regimen.C_med] count: must be a whole"),
            (BASE.replace("period = 72", "periods = 72"), "[regimen.C_med] periods: unknown key"),
            (format!("{BASE}[regimen.viable]\ninterval = 24\n"), "[regimen.viable] dose: missing"),
            (format!("{BASE}[efficacy]\nquantity = \"alive\"\n"), "[efficacy] quantity: unknown output `alive`"),
            (
                BASE.replace("organoid-drug-response", "pk-2cmt-oral").replace("[regimen.C_med]", "[regimen.depot]"),
                "[regimen.depot] exposure: unknown key of a dose train",
            ),
            (
                "model = \"pk-2cmt-oral\"\nhorizon = 24.0\n[regimen.depot]\ndose = 100\ninterval = 12\n".into(),
                "[params] ka: missing (model `pk-2cmt-oral` gives it no default)",
            ),
            (format!("{BASE}[report]\nrank_by = \"efficacyy\"\n"), "[report] rank_by: unknown column `efficacyy`"),
            (
                format!("{BASE}[report]\nheatmap = [\"level\", \"period\"]\n"),
                "[report] heatmap: unknown column `period`",
            ),
            (
                format!("{BASE}[[output]]\nname = \"x\"\nquantity = \"viabel\"\nstat = \"final\"\n"),
                "quantity: unknown output `viabel`",
            ),
            (
                format!("{BASE}[[output]]\nname = \"x\"\nquantity = \"viable\"\nstat = \"median\"\n"),
                "stat: unknown statistic `median`",
            ),
            (format!("{BASE}[population]\nsize = 0\n"), "[population] size: empty population"),
            (format!("{BASE}[population]\nsize = 4\ncv = {{ EC5 = 0.2 }}\n"), "[population.cv] EC5: unknown parameter"),
            (format!("colour = 1\n{BASE}"), "unknown field `colour`"),
            (format!("{BASE}colour = 1\n"), "[regimen.C_med] colour: unknown key of a train of exposure windows"),
            (
                format!("{BASE}[sample]\nmethod = \"sobol\"\nn = 8\nranges = {{ EC50 = [1, 20], rhox = [1, 2] }}\n"),
                "[sample.ranges] rhox: unknown parameter",
            ),
        ];
        for (text, want) in cases {
            let e = err_of(&text);
            assert!(e.starts_with("bad.toml: "), "{e}");
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn ids_decompose_in_the_stated_order() {
        let text =
            format!("{BASE}[params]\nEC50 = [2, 4, 8]\n[population]\nsize = 3\nseed = 1\ncv = {{ rho = 0.2 }}\n");
        let s = Sweep::from_toml_str(&text, "t.toml", None).unwrap();
        assert_eq!(s.len(), 2 * 3 * 3);
        // id = group * 3 + member; group = level index * 3 + EC50 index.
        let t = s.inputs(3 * 4 + 2);
        assert_eq!((t.group, t.member), (4, 2));
        assert_eq!(t.regimen_vars, vec![10.0, 24.0, 72.0]);
        assert_eq!(t.params[6], 4.0);
        assert_eq!(s.group_key(4), vec![10.0, 4.0]);
        // The same member is the same organoid in every group.
        assert_eq!(s.inputs(2).params[0], s.inputs(3 * 5 + 2).params[0]);
        assert_ne!(s.inputs(2).params[0], s.inputs(1).params[0]);
    }

    #[test]
    fn sampled_designs_cover_their_ranges() {
        let text = format!(
            "{BASE}[sample]\nmethod = \"lhs\"\nn = 16\nseed = 3\nranges = {{ EC50 = [1, 20], k_in = [0.1, 1] }}\nlog = [\"EC50\"]\n"
        );
        let s = Sweep::from_toml_str(&text, "t.toml", None).unwrap();
        assert_eq!(s.len(), 2 * 16);
        assert_eq!(s.sample_names(), vec!["k_in", "EC50"]);
        for id in 0..s.len() {
            let p = s.inputs(id).params;
            assert!((1.0..=20.0).contains(&p[6]) && (0.1..=1.0).contains(&p[3]));
        }
    }

    #[test]
    fn regimen_columns_trains_and_defaults() {
        // Two trains: columns are prefixed; dose trains come first (state order), then inputs.
        let text = format!(
            "{}[regimen.damaged]\ndose = [0, 0.1]\ninterval = 48\nduration = 2\ncount = 3\n",
            BASE.replace("period = 72", "period = 72\nstart = 12")
        );
        let s = Sweep::from_toml_str(&text, "t.toml", None).unwrap();
        assert_eq!(s.axis_names(), vec!["damaged_dose", "C_med_level"]);
        let cols: Vec<String> = s.columns().into_iter().map(|c| c.0).collect();
        assert_eq!(
            cols[2..10],
            [
                "damaged_dose",
                "damaged_interval",
                "damaged_duration",
                "damaged_count",
                "C_med_level",
                "C_med_exposure",
                "C_med_period",
                "C_med_start"
            ]
        );
        // Default outputs: the final value of every model output; no efficacy unless configured.
        assert_eq!(s.outputs.len(), 7);
        assert_eq!(s.outputs[2].name, "total_final");
        assert!(s.efficacy.is_none() && !cols.contains(&"efficacy".to_string()));
        // The regimen of the last group: 3 infusions of 0.1 over 2 h every 48 h, windows from 12 h.
        let t = s.inputs(s.len() - 1);
        let r = s.regimen.regimen(&t.regimen_vars, s.horizon).unwrap();
        assert_eq!((r.n_doses, r.doses[0].count, r.doses[0].duration, r.doses[0].target), (1, 3, 2.0, 2));
        assert_eq!((r.n_windows, r.windows[0].start, r.windows[0].count, r.windows[0].level), (1, 12.0, 5, 10.0));
        // Amount 0 leaves the train out; exposure >= period is one continuous window to the horizon.
        let r = s.regimen.regimen(&[0.0, 48.0, 2.0, 3.0, 5.0, 100.0, 72.0, 12.0], 336.0).unwrap();
        assert_eq!((r.n_doses, r.windows[0].count, r.windows[0].duration), (0, 1, 324.0));
    }

    #[test]
    fn model_files_resolve_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("insilico-sweep-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("decay.model"), "parameters: k = 0.1\nstates: a\nd/dt(a) = -k * a\noutput: a\n")
            .unwrap();
        let text = "model = \"decay.model\"\nhorizon = 10.0\n[regimen.a]\ndose = 1\ncount = 1\n";
        let s = Sweep::from_toml_str(text, "d.toml", Some(&dir)).unwrap();
        assert_eq!(s.model.nstates(), 1);
        let e = Sweep::from_toml_str(text, "d.toml", None).unwrap_err().to_string();
        assert!(e.starts_with("d.toml: model: ") && e.contains("decay.model"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_model_too_large_for_the_engine_names_the_limit_and_simulate() {
        let n = MAX_STATES + 1;
        let states: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let eqs: String = states.iter().map(|s| format!("d/dt({s}) = -k * {s}\n")).collect();
        let model = format!("parameters: k = 1\nstates: {}\n{eqs}output: s0\n", states.join(", "));
        let dir = std::env::temp_dir().join(format!("insilico-sweep-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big.model"), model).unwrap();
        let text = "model = \"big.model\"\nhorizon = 10.0\n[regimen.s0]\ndose = 1\ncount = 1\n";
        let e = Sweep::from_toml_str(text, "b.toml", Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("17 states") && e.contains("at most 16") && e.contains("simulate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
