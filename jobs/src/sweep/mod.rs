//! `insilico sweep`: regimen × parameter × virtual-population sweeps of a
//! small model on the batched integrators ([`crate::kernels`]), streamed to
//! Parquet in chunks that survive a kill.
//!
//! # The config file
//!
//! ```toml
//! model = "organoid"        # organoid | pk-2cmt-oral
//! horizon = 336.0           # h, > 0
//! output_step = 2.0         # h, > 0: outputs on 0, step, ..., horizon feed the reductions
//! stepper = "tsit5"         # optional: tsit5 (default) | rosenbrock
//! rtol = 1e-6               # optional (default 1e-6); atol default 1e-9
//! max_steps = 100000        # optional, per trajectory
//! chunk = 4096              # optional: trajectories per Parquet part (default 4096)
//! max_output_gb = 10        # optional (default 10): a sweep whose estimated Parquet output is
//!                           #   larger needs the flag --large (the estimate is printed first)
//! allow_failures = false    # optional (default false): trajectories that fail (status != ok) make
//!                           #   the command exit non-zero; true: they are reported, exit 0
//!
//! [regimen]                 # organoid: level (uM, >= 0), exposure (h, > 0), period (h, > 0)
//! level = [1, 10, 50]       #   windows [k*period, k*period + exposure), continuous if exposure >= period
//! exposure = 24             # pk-2cmt-oral: dose (mg, >= 0) into the gut every interval (h, > 0)
//! period = { from = 24, to = 168, n = 4, log = true }
//!
//! [params]                  # typical values by name (model defaults otherwise);
//! EC50 = 5.0                #   a list or {from, to, n, log} makes a grid axis
//!
//! [sample]                  # optional: a sampled design over ranges
//! method = "sobol"          #   sobol (points 0..n of the Joe-Kuo sequence) | lhs (Latin hypercube)
//! n = 256
//! seed = 1                  #   lhs only
//! ranges = { EC50 = [1, 20], k_in = [0.1, 1] }  # parameters or regimen variables not on the grid
//! log = ["EC50"]            #   ranges sampled on a log scale
//!
//! [population]              # optional: seeded log-normal virtual subjects
//! size = 64                 #   parameter = value * exp(omega * z), omega^2 = ln(1 + cv^2)
//! seed = 7
//! cv = { rho = 0.25, EC50 = 0.4 }
//!
//! [[output]]                # reductions per trajectory (defaults per model if none)
//! name = "viable_final"     #   a column name: letters, digits, '_'
//! quantity = "viable"       #   organoid: viable damaged total effect healthy_drug toxicity effect_auc; pk: C
//! stat = "final"            #   max min auc mean time_above final (aliases cmax ctrough nadir last)
//! window = [0, 336]         #   optional (default [0, horizon])
//! threshold = 0.5           #   time_above only
//!
//! [report]                  # optional
//! rank_by = "efficacy"      #   a column: an output name, or efficacy (organoid)
//! descending = true         #   higher is better (default true)
//! toxicity = "toxicity_peak"   # a column shown next to it (organoid default)
//! max_toxicity = 0.25       #   regimens above are flagged
//! heatmap = ["level", "exposure"]   # two grid axes: heat map of rank_by
//! top = 20                  #   rows of the printed ranking
//! ```
//!
//! Unknown keys, an unknown model, parameter, quantity, statistic or column,
//! non-positive durations and empty grids are errors naming the file and the key.
//!
//! # Order, determinism, resumption
//!
//! The sweep's trajectories are numbered `id = group · population_size + member`
//! with `group = grid_point · sample_size + sample_point`, the grid in row-major
//! order over the regimen variables (in the model's order: organoid `level`,
//! `exposure`, `period`; pk `dose`, `interval`) then the parameter axes (in the
//! model's parameter order) — first outermost. Every input of trajectory `id`
//! is a pure function of the config and `id` (random-access generators,
//! counter-based random numbers), and every trajectory is integrated on its
//! own, so values do not depend on the thread count or the chunking.
//!
//! Chunk `k` holds ids `[k·chunk, (k+1)·chunk)` and is written to
//! `DIR/part-{k:06}.parquet` through a temporary name and an atomic rename;
//! `DIR/manifest.json` names the config's fingerprint, `DIR/progress.json`
//! counts finished chunks. Re-running the same command after a kill keeps
//! every finished part and computes only the missing ones: no row lost or
//! duplicated. A different config in the same folder is refused.
//!
//! # Outputs
//!
//! * `part-*.parquet`: one row per trajectory — `id`, `member`, `sample`
//!   (with a sampled design), the regimen variables, every model parameter
//!   (as integrated), the outputs, `efficacy` (organoid), `status` (text:
//!   `ok`, or the cause: `max_steps`, `step_too_small`, `non_finite`,
//!   `singular`), `failed_at` (the last output time a failed trajectory
//!   reached) and `steps`. A failed trajectory's outputs and `efficacy` are
//!   null, never a sentinel number; a trajectory whose output is not finite
//!   has failed (`non_finite`).
//! * `summary.csv`: one row per group (regimen × grid × sample point): its
//!   factors, `n`, `failed`, then `mean`, `sd`, `min`, `max` of every output
//!   over the population.
//! * `heatmap.png` with `[report] heatmap`.

//! # Example
//!
//! ```
//! use insilico_jobs::sweep::{Device, Engine, Sweep, EMBEDDED_CONFIG};
//! let sweep = Sweep::from_toml_str(EMBEDDED_CONFIG, "embedded")?;
//! assert_eq!(sweep.len(), 7 * 4 * 2 * 64);
//! let engine = Engine::new(&sweep, Device::Cpu)?;
//! // Trajectories 0..64: the lowest level and shortest exposure every 72 h, all 64 organoids.
//! let r = sweep.solve_chunk(&engine, 0, 64, &|_| {})?;
//! assert!(r.status.iter().all(|&s| s == 0));
//! assert!(r.efficacy.iter().all(|e| (-1e-6..0.05).contains(e)), "a weak regimen barely works");
//! # Ok::<(), insilico_jobs::sweep::SweepError>(())
//! ```

pub(crate) mod io;
mod report;

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;

use crate::kernels::generators::{linspace, logspace, Grid, LatinHypercube, LogNormalPopulation, Sobol};
use crate::kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS, ORGANOID_PARAMS};
use crate::kernels::reductions::{Reducer, Reduction, Stat};
use crate::kernels::{
    integrate, integrate_lanes, BatchModel, Regimen, Status, Stepper, Tolerances, TrajectoryStats, TwoCmtOral,
    WindowTrain, LANES,
};

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

/// The models a sweep can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepModel {
    /// [`Organoid`]: exposure windows, viable/damaged cells, toxicity proxy.
    Organoid,
    /// [`TwoCmtOral`] (P1): oral boluses every interval.
    Pk2CmtOral,
}

impl SweepModel {
    /// Names accepted in configs.
    pub const NAMES: [&'static str; 2] = ["organoid", "pk-2cmt-oral"];

    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "organoid" => Some(SweepModel::Organoid),
            "pk-2cmt-oral" | "two-cmt-oral" | "p1" => Some(SweepModel::Pk2CmtOral),
            _ => None,
        }
    }
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            SweepModel::Organoid => "organoid",
            SweepModel::Pk2CmtOral => "pk-2cmt-oral",
        }
    }
    /// Parameter names in order.
    pub fn param_names(self) -> &'static [&'static str] {
        match self {
            SweepModel::Organoid => &ORGANOID_PARAMS,
            SweepModel::Pk2CmtOral => &["ka", "CL", "V1", "Q", "V2"],
        }
    }
    fn defaults(self) -> Vec<f64> {
        match self {
            SweepModel::Organoid => ORGANOID_DEFAULTS.to_vec(),
            SweepModel::Pk2CmtOral => vec![1.2, 5.0, 30.0, 10.0, 50.0],
        }
    }
    /// Regimen variables in order.
    pub fn regimen_vars(self) -> &'static [&'static str] {
        match self {
            SweepModel::Organoid => &["level", "exposure", "period"],
            SweepModel::Pk2CmtOral => &["dose", "interval"],
        }
    }
    /// Observable quantities.
    pub fn quantities(self) -> Vec<&'static str> {
        match self {
            SweepModel::Organoid => OrganoidOutput::ALL.iter().map(|o| o.name()).collect(),
            SweepModel::Pk2CmtOral => vec!["C"],
        }
    }
    /// Checks one value of regimen variable `var`; `Err` says why not.
    fn check_regimen_value(self, var: usize, v: f64) -> Result<(), &'static str> {
        // The first regimen variable (level, dose) may be 0; the others are durations.
        let positive = var != 0;
        if !v.is_finite() {
            Err("must be finite")
        } else if positive && v <= 0.0 {
            Err("must be positive (a duration)")
        } else if v < 0.0 {
            Err("must be non-negative")
        } else {
            Ok(())
        }
    }
    /// Checks one parameter value.
    fn check_param(self, j: usize, v: f64) -> Result<(), &'static str> {
        let name = self.param_names()[j];
        if !v.is_finite() || v < 0.0 {
            return Err("must be finite and non-negative");
        }
        let positive = matches!(name, "K" | "EC50" | "EC50tox" | "V1" | "V2" | "rho" | "v0");
        if positive && v <= 0.0 {
            return Err("must be positive");
        }
        if name == "hill" && v < 1.0 {
            return Err("must be at least 1");
        }
        Ok(())
    }
    /// The regimen of one trajectory from its regimen variables.
    fn regimen(self, r: &[f64], horizon: f64) -> Regimen {
        match self {
            SweepModel::Organoid => {
                let (level, exposure, period) = (r[0], r[1], r[2]);
                let w = if level == 0.0 {
                    return Regimen::new();
                } else if exposure >= period {
                    WindowTrain { start: 0.0, period: horizon, count: 1, duration: horizon, level, input: 0 }
                } else {
                    let count = (horizon / period).ceil().max(1.0) as u32;
                    WindowTrain { start: 0.0, period, count, duration: exposure, level, input: 0 }
                };
                // Validated at config time: positive durations, finite level.
                Regimen::new().with_windows(w).unwrap_or_default()
            }
            SweepModel::Pk2CmtOral => Regimen::repeated_bolus(r[0], 0, r[1], horizon).unwrap_or_default(),
        }
    }
}

/// A variable of the design: a regimen variable or a model parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Regimen(usize),
    Param(usize),
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
    /// Observable quantity.
    pub quantity: String,
    /// The reduction.
    pub reduction: Reduction,
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
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// Config file name, for messages.
    pub source: String,
    /// The model.
    pub model: SweepModel,
    /// Horizon (h).
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
    #[serde(default)]
    report: RawReport,
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

#[derive(Debug, Deserialize)]
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
    /// Reads and validates a config file.
    pub fn from_path(path: &Path) -> Result<Self, SweepError> {
        let text = std::fs::read_to_string(path).map_err(|e| SweepError::Config {
            file: path.display().to_string(),
            reason: format!("cannot read the config: {e}"),
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates a config given as text; `source` names it in messages.
    pub fn from_toml_str(text: &str, source: &str) -> Result<Self, SweepError> {
        let err = |reason: String| SweepError::Config { file: source.to_string(), reason };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        let model = SweepModel::parse(&raw.model).ok_or_else(|| {
            err(format!("model: unknown model `{}` (valid: {})", raw.model, SweepModel::NAMES.join(", ")))
        })?;
        if !(raw.horizon.is_finite() && raw.horizon > 0.0) {
            return Err(err(format!("horizon: must be a positive duration (h), got {}", raw.horizon)));
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
        let names = model.param_names();
        let find_param = |k: &str| names.iter().position(|n| n.eq_ignore_ascii_case(k));
        let rvars = model.regimen_vars();
        let find_target = |k: &str| {
            rvars
                .iter()
                .position(|n| n.eq_ignore_ascii_case(k))
                .map(Target::Regimen)
                .or(find_param(k).map(Target::Param))
        };
        let unknown_param = |section: &str, k: &str| {
            err(format!("[{section}] {k}: unknown parameter of model `{}` (valid: {})", model.name(), names.join(", ")))
        };

        // Regimen variables: all required.
        let mut regimen_fixed = vec![f64::NAN; rvars.len()];
        let mut axes_r: Vec<Axis> = Vec::new();
        for (k, v) in &raw.regimen {
            let i = rvars.iter().position(|n| n.eq_ignore_ascii_case(k)).ok_or_else(|| {
                err(format!(
                    "[regimen] {k}: unknown regimen variable of model `{}` (valid: {})",
                    model.name(),
                    rvars.join(", ")
                ))
            })?;
            let key = format!("[regimen] {k}");
            let vals = match parse_spec(&key, v).map_err(err)? {
                Spec::Fixed(x) => {
                    regimen_fixed[i] = x;
                    vec![x]
                }
                Spec::Axis(vals) => {
                    axes_r.push(Axis { name: rvars[i].to_string(), target: Target::Regimen(i), values: vals.clone() });
                    vals
                }
            };
            for x in vals {
                model.check_regimen_value(i, x).map_err(|why| err(format!("{key}: {why}, got {x}")))?;
            }
        }
        // Parameters.
        let mut typical = model.defaults();
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
                    axes_p.push(Axis { name: names[j].to_string(), target: Target::Param(j), values: vals.clone() });
                    vals
                }
            };
            for x in vals {
                model.check_param(j, x).map_err(|why| err(format!("{key}: {why}, got {x}")))?;
            }
        }
        axes_r.sort_by_key(|a| a.target_index());
        axes_p.sort_by_key(|a| a.target_index());
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
                            "{key}: unknown parameter or regimen variable of model `{}` (valid: {}, {})",
                            model.name(),
                            rvars.join(", "),
                            names.join(", ")
                        ))
                    })?;
                    let canonical = match t {
                        Target::Regimen(i) => rvars[i],
                        Target::Param(j) => names[j],
                    };
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
                            Target::Regimen(i) => model.check_regimen_value(i, x),
                            Target::Param(j) => model.check_param(j, x),
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
                ranges.sort_by_key(|r| match r.1 {
                    Target::Regimen(i) => i,
                    Target::Param(j) => 100 + j,
                });
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
        // Regimen variables must be given somewhere.
        for (i, v) in regimen_fixed.iter().enumerate() {
            let on_axis = axes.iter().any(|a| a.target == Target::Regimen(i));
            let sampled = sample.as_ref().is_some_and(|s| s.ranges.iter().any(|r| r.1 == Target::Regimen(i)));
            if v.is_nan() && !on_axis && !sampled {
                return Err(err(format!(
                    "[regimen] {}: missing (model `{}` needs {})",
                    rvars[i],
                    model.name(),
                    rvars.join(", ")
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

        // Outputs.
        let quantities = model.quantities();
        let mut outputs = Vec::new();
        if raw.output.is_empty() {
            outputs = default_outputs(model, horizon);
        }
        let reserved = reserved_columns(model);
        for (i, o) in raw.output.iter().enumerate() {
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
                    "{key} quantity: unknown quantity `{}` of model `{}` (valid: {})",
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
        for q in &quantities {
            let mut reds: Vec<Reduction> = outputs.iter().filter(|o| o.quantity == *q).map(|o| o.reduction).collect();
            if model == SweepModel::Organoid && *q == "viable" {
                reds.push(Reduction::last()); // the efficacy's final viable burden
            }
            Reducer::new(&reds).map_err(|e| err(format!("[[output]] quantity {q}: {e}")))?;
        }

        // Report.
        let mut columns: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
        if model == SweepModel::Organoid {
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
        let rank_by = match (&r.rank_by, model) {
            (Some(c), _) => Some(check_column("rank_by", c)?),
            (None, SweepModel::Organoid) => Some("efficacy".to_string()),
            (None, _) => columns.first().cloned(),
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

impl Axis {
    fn target_index(&self) -> usize {
        match self.target {
            Target::Regimen(i) => i,
            Target::Param(j) => 100 + j,
        }
    }
}

fn default_outputs(model: SweepModel, horizon: f64) -> Vec<OutputSpec> {
    let o = |name: &str, quantity: &str, reduction: Reduction| OutputSpec {
        name: name.to_string(),
        quantity: quantity.to_string(),
        reduction,
    };
    match model {
        SweepModel::Organoid => vec![
            o("viable_final", "viable", Reduction::last()),
            o("viable_nadir", "viable", Reduction::ctrough(0.0, horizon)),
            o("toxicity_peak", "toxicity", Reduction::cmax(0.0, horizon)),
        ],
        SweepModel::Pk2CmtOral => {
            let a = (horizon - 24.0).max(0.0);
            vec![
                o("cmax", "C", Reduction::cmax(a, horizon)),
                o("ctrough", "C", Reduction::ctrough(a, horizon)),
                o("auc", "C", Reduction::auc(a, horizon)),
            ]
        }
    }
}

fn reserved_columns(model: SweepModel) -> Vec<String> {
    let mut r: Vec<String> =
        ["id", "member", "sample", "status", "failed_at", "steps", "efficacy", "group", "n", "failed"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    r.extend(model.regimen_vars().iter().map(|s| s.to_string()));
    r.extend(model.param_names().iter().map(|s| s.to_string()));
    r
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
        c.extend(self.model.regimen_vars().iter().map(|n| (n.to_string(), io::Kind::F64)));
        c.extend(self.model.param_names().iter().map(|n| (n.to_string(), io::Kind::F64)));
        c.extend(self.outputs.iter().map(|o| (o.name.clone(), io::Kind::F64)));
        if self.model == SweepModel::Organoid {
            c.push(("efficacy".to_string(), io::Kind::F64));
        }
        c.push(("status".to_string(), io::Kind::Text));
        c.push(("failed_at".to_string(), io::Kind::F64));
        c.push(("steps".to_string(), io::Kind::I32));
        c
    }

    /// Names of the per-trajectory result columns summarised per group
    /// (outputs, then `efficacy` for the organoid).
    pub fn result_columns(&self) -> Vec<String> {
        let mut c: Vec<String> = self.outputs.iter().map(|o| o.name.clone()).collect();
        if self.model == SweepModel::Organoid {
            c.push("efficacy".into());
        }
        c
    }

    /// A fingerprint of everything that determines the results (not the
    /// chunk size's effect on file layout, which is part of it too): a
    /// different config cannot resume another's folder.
    pub fn fingerprint(&self) -> String {
        let desc = format!(
            "{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{:?}",
            env!("CARGO_PKG_VERSION"),
            self.model,
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
// Solving a chunk
// ----------------------------------------------------------------------------

/// Where the trajectories are integrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// All CPU cores (rayon).
    Cpu,
    /// The CUDA kernels (feature `cuda`).
    Cuda,
}

/// One pass: the model reporting one quantity, its reductions and where
/// each reduction's value goes (output column, or the efficacy's final viable).
struct Pass<M> {
    model: M,
    reductions: Vec<Reduction>,
    /// Output index per reduction; `usize::MAX` = final viable for efficacy.
    dest: Vec<usize>,
}

fn passes_for<M: Copy>(sweep: &Sweep, models: &[(&str, M)], efficacy: bool) -> Vec<Pass<M>> {
    let mut passes = Vec::new();
    for &(q, m) in models {
        let mut reductions = Vec::new();
        let mut dest = Vec::new();
        for (k, o) in sweep.outputs.iter().enumerate() {
            if o.quantity == q {
                reductions.push(o.reduction);
                dest.push(k);
            }
        }
        if efficacy && q == "viable" {
            reductions.push(Reduction::last());
            dest.push(usize::MAX);
        }
        if !reductions.is_empty() {
            passes.push(Pass { model: m, reductions, dest });
        }
    }
    passes
}

/// Results of one chunk, columnar.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkResult {
    /// First trajectory id.
    pub start: u64,
    /// Per-trajectory inputs.
    pub inputs: Vec<TrajectoryInputs>,
    /// `n × outputs` (trajectory-major).
    pub outputs: Vec<f64>,
    /// Efficacy per trajectory (organoid), else empty.
    pub efficacy: Vec<f64>,
    /// Status code per trajectory (worst over the passes; 0 = ok, see
    /// [`status_name`]). A trajectory that reached the horizon with a
    /// non-finite output is [`Status::NonFinite`] too.
    pub status: Vec<i32>,
    /// Last output time each trajectory reached (the horizon when it
    /// succeeded; NaN where the device does not report it).
    pub reached: Vec<f64>,
    /// Accepted steps per trajectory (first pass).
    pub steps: Vec<i32>,
}

/// A compiled device context for a sweep (CPU: nothing to hold).
pub struct Engine {
    device: Device,
    #[cfg(feature = "cuda")]
    gpu: Vec<crate::kernels::cuda::GpuEnsemble>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({:?})", self.device)
    }
}

/// Whether this build can use CUDA and, if so, the GPU's name (or why not).
pub fn cuda_status() -> Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        crate::kernels::cuda::available().map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build of insilico has no CUDA support (rebuild with `--features cuda`)".to_string())
    }
}

impl Engine {
    /// An engine on `device`: CUDA compiles the kernels of every pass.
    pub fn new(sweep: &Sweep, device: Device) -> Result<Self, SweepError> {
        match device {
            Device::Cpu => Ok(Engine {
                device,
                #[cfg(feature = "cuda")]
                gpu: vec![],
            }),
            Device::Cuda => {
                cuda_status().map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
                #[cfg(feature = "cuda")]
                {
                    use crate::kernels::cuda::GpuEnsemble;
                    let dev = |e: crate::kernels::cuda::CudaError| SweepError::Device(format!("--device cuda: {e}"));
                    let gpu = match sweep.model {
                        SweepModel::Organoid => organoid_passes(sweep)
                            .iter()
                            .map(|p| GpuEnsemble::new(&p.model).map_err(dev))
                            .collect::<Result<Vec<_>, _>>()?,
                        SweepModel::Pk2CmtOral => pk_passes(sweep)
                            .iter()
                            .map(|p| GpuEnsemble::new(&p.model).map_err(dev))
                            .collect::<Result<Vec<_>, _>>()?,
                    };
                    Ok(Engine { device, gpu })
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = sweep;
                    Err(SweepError::Device("--device cuda: no CUDA support in this build".into()))
                }
            }
        }
    }
    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }
}

fn organoid_passes(sweep: &Sweep) -> Vec<Pass<Organoid>> {
    let models: Vec<(&str, Organoid)> = OrganoidOutput::ALL.iter().map(|o| (o.name(), Organoid::new(*o))).collect();
    passes_for(sweep, &models, true)
}

fn pk_passes(sweep: &Sweep) -> Vec<Pass<TwoCmtOral>> {
    passes_for(sweep, &[("C", TwoCmtOral)], false)
}

fn worst(a: Status, b: Status) -> Status {
    if a as u8 >= b as u8 {
        a
    } else {
        b
    }
}

impl Sweep {
    /// Integrates trajectories `[start, start + n)` on `engine`, calling
    /// `tick(k)` as `k` more trajectories finish (from worker threads).
    pub fn solve_chunk(
        &self,
        engine: &Engine,
        start: u64,
        n: usize,
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<ChunkResult, SweepError> {
        let inputs: Vec<TrajectoryInputs> = (0..n as u64).into_par_iter().map(|i| self.inputs(start + i)).collect();
        let nout = self.outputs.len();
        let mut outputs = vec![0.0; n * nout];
        let mut fin = vec![f64::NAN; n];
        let mut status = vec![0i32; n];
        let mut steps = vec![0i32; n];
        let mut reached = vec![f64::INFINITY; n];
        match self.model {
            SweepModel::Organoid => {
                let passes = organoid_passes(self);
                let x0 = |p: &[f64]| Organoid::default().initial_state(p);
                self.run_passes(
                    engine,
                    &passes,
                    &inputs,
                    &x0,
                    &mut outputs,
                    &mut fin,
                    (&mut status, &mut steps, &mut reached),
                    tick,
                )?
            }
            SweepModel::Pk2CmtOral => {
                let passes = pk_passes(self);
                let x0 = |_: &[f64]| [0.0; 4];
                self.run_passes(
                    engine,
                    &passes,
                    &inputs,
                    &x0,
                    &mut outputs,
                    &mut fin,
                    (&mut status, &mut steps, &mut reached),
                    tick,
                )?
            }
        }
        let efficacy = if self.model == SweepModel::Organoid {
            let t = *self.times.last().unwrap_or(&self.horizon);
            inputs.iter().zip(&fin).map(|(inp, v)| 1.0 - v / Organoid::untreated_viable(&inp.params, t)).collect()
        } else {
            vec![]
        };
        // A trajectory that finished with a non-finite output failed: its
        // numbers are never written (the part holds nulls and the cause).
        for i in 0..n {
            let bad_out = outputs[i * nout..(i + 1) * nout].iter().any(|v| !v.is_finite());
            let bad_eff = efficacy.get(i).is_some_and(|v| !v.is_finite());
            if status[i] == 0 && (bad_out || bad_eff) {
                status[i] = Status::NonFinite as i32;
            }
        }
        Ok(ChunkResult { start, inputs, outputs, efficacy, status, steps, reached })
    }

    #[allow(clippy::too_many_arguments)]
    fn run_passes<const N: usize, M: BatchModel<N> + Copy>(
        &self,
        engine: &Engine,
        passes: &[Pass<M>],
        inputs: &[TrajectoryInputs],
        x0: &(dyn Fn(&[f64]) -> [f64; N] + Sync),
        outputs: &mut [f64],
        fin: &mut [f64],
        (status, steps, reached): (&mut [i32], &mut [i32], &mut [f64]),
        tick: &(dyn Fn(u64) + Sync),
    ) -> Result<(), SweepError> {
        let nout = self.outputs.len();
        match engine.device {
            Device::Cpu => {
                let reducers: Vec<Reducer> = passes
                    .iter()
                    .map(|p| Reducer::new(&p.reductions))
                    .collect::<Result<_, _>>()
                    .map_err(|e| SweepError::Config { file: self.source.clone(), reason: e.to_string() })?;
                let row_len = nout.max(1);
                let mut scratch = vec![0.0; inputs.len() * row_len];
                // `LANES` trajectories at a time through the lane-interleaved
                // integrator (each result bit-for-bit what it gets alone).
                scratch
                    .par_chunks_mut(row_len * LANES)
                    .zip(fin.par_chunks_mut(LANES))
                    .zip(status.par_chunks_mut(LANES).zip(steps.par_chunks_mut(LANES)))
                    .zip(inputs.par_chunks(LANES).zip(reached.par_chunks_mut(LANES)))
                    .for_each(|(((out, fin), (st, sp)), (inp, reach))| {
                        let m = inp.len();
                        let regimens: Vec<Regimen> =
                            inp.iter().map(|i| self.model.regimen(&i.regimen_vars, self.horizon)).collect();
                        let xs: Vec<[f64; N]> = inp.iter().map(|i| x0(&i.params)).collect();
                        let mut worst_status = vec![Status::Ok; m];
                        let mut vals = [0.0; 64];
                        for (k, (pass, red)) in passes.iter().zip(&reducers).enumerate() {
                            let mut rs: Vec<Traced> = (0..m)
                                .map(|_| {
                                    let mut r = red.clone();
                                    r.reset();
                                    Traced { reducer: r, last_t: f64::NAN }
                                })
                                .collect();
                            let ts: Vec<TrajectoryStats> =
                                match <[&mut Traced; LANES]>::try_from(rs.iter_mut().collect::<Vec<_>>()) {
                                    Ok(obs) => integrate_lanes(
                                        &pass.model,
                                        self.stepper,
                                        std::array::from_fn(|l| &inp[l].params[..]),
                                        std::array::from_fn(|l| &xs[l]),
                                        std::array::from_fn(|l| &regimens[l]),
                                        &self.times,
                                        self.horizon,
                                        &self.tol,
                                        obs,
                                    )
                                    .to_vec(),
                                    Err(rest) => rest
                                        .into_iter()
                                        .enumerate()
                                        .map(|(l, r)| {
                                            integrate(
                                                &pass.model,
                                                self.stepper,
                                                &inp[l].params,
                                                &xs[l],
                                                &regimens[l],
                                                &self.times,
                                                self.horizon,
                                                &self.tol,
                                                r,
                                            )
                                        })
                                        .collect(),
                                };
                            for (l, (r, t)) in rs.iter().zip(&ts).enumerate() {
                                if k == 0 {
                                    sp[l] = t.steps as i32;
                                }
                                worst_status[l] = worst(worst_status[l], t.status);
                                reach[l] = reach[l].min(if r.last_t.is_nan() { f64::NEG_INFINITY } else { r.last_t });
                                r.reducer.values(&mut vals[..pass.reductions.len()]);
                                for (d, v) in pass.dest.iter().zip(&vals) {
                                    if *d == usize::MAX {
                                        fin[l] = *v;
                                    } else {
                                        out[l * row_len + *d] = *v;
                                    }
                                }
                            }
                        }
                        for (s, w) in st.iter_mut().zip(&worst_status) {
                            *s = *w as i32;
                        }
                        tick(m as u64);
                    });
                if nout > 0 {
                    outputs.copy_from_slice(&scratch[..outputs.len()]);
                }
                Ok(())
            }
            Device::Cuda => {
                #[cfg(feature = "cuda")]
                {
                    use crate::kernels::reductions::summaries_needed;
                    use crate::kernels::Batch;
                    let rows: Vec<Vec<f64>> = inputs.iter().map(|i| i.params.clone()).collect();
                    let regs: Vec<Regimen> =
                        inputs.iter().map(|i| self.model.regimen(&i.regimen_vars, self.horizon)).collect();
                    let mut batch = Batch::<N>::from_rows(&rows, regs)
                        .map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
                    let n = inputs.len();
                    for (i, inp) in inputs.iter().enumerate() {
                        let x = x0(&inp.params);
                        for (s, xs) in x.iter().enumerate() {
                            batch.x0[s * n + i] = *xs;
                        }
                    }
                    for (k, (pass, gpu)) in passes.iter().zip(&engine.gpu).enumerate() {
                        let (windows, slots) = summaries_needed(&pass.reductions)
                            .map_err(|e| SweepError::Config { file: self.source.clone(), reason: e.to_string() })?;
                        for (w, &(a, b, thr)) in windows.iter().enumerate() {
                            let (sums, stats, _) = gpu
                                .solve_summaries(
                                    &pass.model,
                                    self.stepper,
                                    &batch,
                                    &self.times,
                                    self.horizon,
                                    &self.tol,
                                    (a, b),
                                    thr,
                                )
                                .map_err(|e| SweepError::Device(format!("--device cuda: {e}")))?;
                            for i in 0..n {
                                if k == 0 && w == 0 {
                                    steps[i] = stats[i].steps as i32;
                                    reached[i] = f64::NAN;
                                }
                                status[i] = worst(Status::from_code(status[i]), stats[i].status) as i32;
                                for ((red, d), slot) in pass.reductions.iter().zip(&pass.dest).zip(&slots) {
                                    if *slot == w {
                                        let v = red.of(&sums[i]);
                                        if *d == usize::MAX {
                                            fin[i] = v;
                                        } else {
                                            outputs[i * nout + d] = v;
                                        }
                                    }
                                }
                            }
                        }
                    }
                    tick(n as u64);
                    Ok(())
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = (passes, inputs, x0, outputs, fin, status, steps, reached, tick, nout);
                    Err(SweepError::Device("--device cuda: no CUDA support in this build".into()))
                }
            }
        }
    }
}

/// A reducer that also remembers the last output time it saw (where a
/// failed trajectory stopped).
struct Traced<'a> {
    reducer: Reducer<'a>,
    last_t: f64,
}

impl crate::kernels::Observer for Traced<'_> {
    fn observe(&mut self, k: usize, t: f64, y: f64) {
        self.last_t = t;
        self.reducer.observe(k, t, y);
    }
}

/// The `status` text of a status code: `ok`, `max_steps` (raise
/// `max_steps`), `step_too_small`, `non_finite` (a NaN or infinite state or
/// output) or `singular` (a singular Rosenbrock matrix).
pub fn status_name(code: i32) -> &'static str {
    crate::status::of_kernel_code(code)
}

#[cfg(feature = "cuda")]
trait FromCode {
    fn from_code(c: i32) -> Status;
}

#[cfg(feature = "cuda")]
impl FromCode for Status {
    fn from_code(c: i32) -> Status {
        match c {
            0 => Status::Ok,
            1 => Status::MaxSteps,
            2 => Status::StepTooSmall,
            3 => Status::NonFinite,
            _ => Status::Singular,
        }
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
        match Sweep::from_toml_str(text, "bad.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const BASE: &str =
        "model = \"organoid\"\nhorizon = 336.0\n[regimen]\nlevel = [1, 10]\nexposure = 24\nperiod = 72\n";

    #[test]
    fn embedded_config_is_valid() {
        let s = Sweep::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME).unwrap();
        assert_eq!(s.len(), 7 * 4 * 2 * 64);
        assert_eq!(s.axis_names(), vec!["level", "exposure", "period"]);
        assert_eq!(s.times.len(), 169);
        assert_eq!(*s.times.last().unwrap(), 336.0);
    }

    #[test]
    fn bad_configs_name_the_file_and_key() {
        let cases: Vec<(String, &str)> = vec![
            (BASE.replace("organoid", "organoidz"), "model: unknown model `organoidz`"),
            (format!("{BASE}[params]\nrhoo = 1\n"), "[params] rhoo: unknown parameter"),
            (BASE.replace("exposure = 24", "exposure = 0"), "[regimen] exposure: must be positive"),
            (BASE.replace("period = 72", "period = -72"), "[regimen] period: must be positive"),
            (BASE.replace("horizon = 336.0", "horizon = 0.0"), "horizon: must be a positive duration"),
            (BASE.replace("level = [1, 10]", "level = []"), "[regimen] level: empty grid"),
            (BASE.replace("level = [1, 10]", "level = { from = 1, to = 5, n = 0 }"), "[regimen] level.n: empty grid"),
            (BASE.replace("exposure = 24\n", ""), "[regimen] exposure: missing"),
            (format!("{BASE}[report]\nrank_by = \"efficacyy\"\n"), "[report] rank_by: unknown column `efficacyy`"),
            (
                format!("{BASE}[report]\nheatmap = [\"level\", \"period\"]\n"),
                "[report] heatmap: unknown column `period`",
            ),
            (
                format!("{BASE}[[output]]\nname = \"x\"\nquantity = \"viabel\"\nstat = \"final\"\n"),
                "quantity: unknown quantity `viabel`",
            ),
            (
                format!("{BASE}[[output]]\nname = \"x\"\nquantity = \"viable\"\nstat = \"median\"\n"),
                "stat: unknown statistic `median`",
            ),
            (format!("{BASE}[population]\nsize = 0\n"), "[population] size: empty population"),
            (format!("{BASE}[population]\nsize = 4\ncv = {{ EC5 = 0.2 }}\n"), "[population.cv] EC5: unknown parameter"),
            (format!("colour = 1\n{BASE}"), "unknown field `colour`"),
            (format!("{BASE}colour = 1\n"), "[regimen] colour: unknown regimen variable"),
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
        let s = Sweep::from_toml_str(&text, "t.toml").unwrap();
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
        let s = Sweep::from_toml_str(&text, "t.toml").unwrap();
        assert_eq!(s.len(), 2 * 16);
        assert_eq!(s.sample_names(), vec!["k_in", "EC50"]);
        for id in 0..s.len() {
            let p = s.inputs(id).params;
            assert!((1.0..=20.0).contains(&p[6]) && (0.1..=1.0).contains(&p[3]));
        }
    }
}
