//! `insilico perturb`: protein-ensemble perturbation studies on a Markov
//! model (rate or transition matrix) — a grid over ligand concentration,
//! mutations, temperature and force; per point the stationary macrostate
//! populations, the slowest implied timescales, MFPTs and TPT rates between
//! macrostates, observable expectations and the relaxation after a jump;
//! streamed to Parquet in chunks that survive a kill (the `sweep` writer).
//!
//! # The config file
//!
//! ```toml
//! [model]
//! matrix = "protein_rates.csv"   # .csv | .npy | .npz (scipy.sparse.save_npz), relative to this file
//! kind = "rate"                  # rate (continuous time) | transition (discrete time, needs lag)
//! # lag = 0.1                    # transition matrices: lag time, in the time unit of the outputs
//! kT = 1.0                       # the model's temperature (energy unit of ΔΔG and kT axes; default 1)
//! # names = ["I1", "I2", …]      # state names (default: the CSV header, else S0, S1, …)
//!
//! [[macrostate]]                 # in order; states by name or 0-based index
//! name = "inactive"
//! states = ["I1", "I2"]
//!
//! # [macrostates]               # instead of [[macrostate]]: PCCA+ on the unperturbed model
//! # pcca = 3                     #   m1 … m3 by decreasing stationary population (crisp sets);
//! #                              #   memberships in pcca.csv; needs a reversible model
//!
//! [[observable]]                 # per-state values: a list, or a table of state/macrostate -> value
//! name = "fret"
//! values = { inactive = 0.2, active = 0.7, pocket = 0.5 }
//!
//! [ligand]                       # ΔG_i = −kT ln(1 + L/Kd_i)
//! kd = { pocket = 0.05 }         #   Kd per state or macrostate (others do not bind)
//! concentration = { from = 0.001, to = 10, n = 9, log = true }   # or a list
//!
//! [[mutation]]                   # ΔΔG per state or macrostate; or mutations_file below
//! name = "Y42A"
//! ddg = { active = 1.5 }
//! # [mutations] file = "ddg.csv" # long CSV: mutation,state,ddg
//!
//! [temperature]
//! kT = [0.9, 1.0, 1.1]
//!
//! [force]                        # ΔG_i = −F·x_i
//! displacement = { active = 0.4 }
//! values = [0, 1, 2]
//!
//! [analysis]
//! timescales = 5                 # its_1 … its_k
//! pairs = [["inactive", "active"]]   # mfpt_<A>_<B> and rate_<A>_<B> for each pair
//! relaxation = [0.1, 1, 10]      # relax_<macrostate>_<k>, relax_obs_<name>_<k> at these times
//! sensitivities = true           # d_<output>__<parameter> columns (exact; default false)
//! hotspots = 10                  # hotspots.csv: top states by |∂y/∂G| per output (0: none)
//! chunk = 256                    # points per Parquet part
//! ```
//!
//! # Design and order
//! Axes in this order, each present when configured: `ligand`
//! (concentration), `mutation` (`wt` then each mutation), `kT`, `force`.
//! Points are numbered row-major, the first axis outermost. Point `id` is
//! a pure function of the config and `id`, so results do not depend on the
//! thread count or the chunking.
//!
//! ```toml
//! [design]                       # optional: a sampled design
//! method = "sobol"               # sobol | lhs (the generators of `insilico sweep`)
//! n = 256                        # samples
//! seed = 1                       # lhs only (default 0)
//! ```
//! With `[design]`, every axis given as a range `{ from, to, log }` (no
//! `n`) is sampled: sample `u ∈ [0,1)^d` from `kernels::generators`,
//! mapped linearly (or in log with `log = true`) onto the range. Axes given
//! as lists, and `mutation`, stay a grid, crossed outermost: point
//! `id = grid index × n + sample index`. Line plots are skipped for a
//! sampled design.
//!
//! # Outputs (`--out DIR`)
//! * `part-NNNNNN.parquet`: one row per point — `id`, the axis values
//!   (`mutation` as its index, 0 = wild type), `status` (0 = ok, 1 = the
//!   analysis failed: values NaN), then the results.
//! * `summary.csv`: the same rows (`mutation` by name), without `id`/`status`.
//! * `manifest.json`, `progress.json`: resumption, as `insilico sweep`.
//! * `hotspots.csv`: at the unperturbed point, for every output, the states
//!   whose free energy moves it most: `output,rank,state,dy_dG` (exact
//!   sensitivities; needs a reversible model).
//! * `populations.png`, `timescales.png`, `relaxation.png`.
//! * `population_shift.png`: heat map over two grid axes (`[report]
//!   heatmap = ["ligand", "kT"]`, default the first two grid axes) of the
//!   shift of one macrostate's population (`[report] macrostate`, default
//!   the first) from its unperturbed value; other axes at their first value.
//! * `pcca.csv` (with `[macrostates] pcca`): `state,macrostate,chi_m1,…`,
//!   the PCCA+ memberships of the unperturbed model and the crisp set.
//!
//! With `sensitivities = true`, every output except the relaxation gets
//! `d_<output>__<parameter>` columns, the exact derivative with respect to
//! each model parameter `kT`, `ligand`, `mut_<name>` (the mutation's
//! amplitude: 1 = the full ΔΔG) and `force`, by adjoint solves
//! ([`crate::mechanistic::conformation::sensitivity`]).
//!
//! Result columns: `pop_<macrostate>`, `its_1` … `its_k` (slowest first),
//! `mfpt_<A>_<B>`, `rate_<A>_<B>` (per configured pair), `obs_<name>`,
//! then the relaxation columns. Relaxation starts from the stationary
//! distribution of the unperturbed model (`kT` of `[model]`, no ligand,
//! wild type, no force) and runs under the point's perturbation: a
//! stopped-flow or temperature-jump experiment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use crate::mechanistic::conformation::sensitivity::{self, RateGradient};
use crate::mechanistic::conformation::{
    Chain, Clock, ConformationError, MasterEquation, MatrixFile, MatrixKind, Perturbation,
};
use crate::solvers::{solve, Method, Options, Problem};
use crate::sweep::io::{self as pio, Column};
use crate::sweep::SweepError;

/// Errors of `insilico perturb`: each names the config file and key, the
/// model file, or the output file.
#[derive(Debug, thiserror::Error)]
pub enum PerturbError {
    /// The config is malformed or names something that does not exist.
    #[error("{file}: {reason}")]
    Config {
        /// Config file.
        file: String,
        /// What is wrong, naming the key.
        reason: String,
    },
    /// The Markov model cannot be read or analysed.
    #[error(transparent)]
    Model(#[from] ConformationError),
    /// An output file or folder could not be written or read.
    #[error(transparent)]
    Output(#[from] SweepError),
}

/// Default number of points per Parquet part.
pub const DEFAULT_CHUNK: u64 = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    model: RawModel,
    #[serde(default)]
    macrostate: Vec<RawMacro>,
    macrostates: Option<RawMacrostates>,
    #[serde(default)]
    observable: Vec<RawObservable>,
    ligand: Option<RawLigand>,
    #[serde(default)]
    mutation: Vec<RawMutation>,
    mutations: Option<RawMutationsFile>,
    temperature: Option<RawTemperature>,
    force: Option<RawForce>,
    #[serde(default)]
    analysis: RawAnalysis,
    design: Option<RawDesign>,
    report: Option<RawReport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    heatmap: Option<(String, String)>,
    macrostate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesign {
    method: String,
    n: u64,
    seed: Option<u64>,
}

/// Quasi-random or stratified sampler of a sampled design.
#[derive(Debug)]
enum Sampler {
    Sobol(crate::kernels::generators::Sobol),
    Lhs(crate::kernels::generators::LatinHypercube),
}

/// A sampled design: `n` points over the axes given as ranges, crossed
/// with the other (grid) axes.
#[derive(Debug)]
struct Sampled {
    sampler: Sampler,
    n: u64,
    /// `(axis index, from, to, log)`.
    ranges: Vec<(usize, f64, f64, bool)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    matrix: String,
    kind: String,
    lag: Option<f64>,
    #[serde(rename = "kT")]
    kt: Option<f64>,
    names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum StateRef {
    Index(usize),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMacro {
    name: String,
    states: Vec<StateRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMacrostates {
    pcca: usize,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PerState {
    List(Vec<f64>),
    Map(BTreeMap<String, f64>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObservable {
    name: String,
    values: PerState,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Values {
    List(Vec<f64>),
    One(f64),
    Range { from: f64, to: f64, n: Option<usize>, log: Option<bool> },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLigand {
    kd: PerState,
    concentration: Values,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMutation {
    name: String,
    ddg: PerState,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMutationsFile {
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemperature {
    #[serde(rename = "kT")]
    kt: Values,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForce {
    displacement: PerState,
    values: Values,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    timescales: Option<usize>,
    #[serde(default)]
    pairs: Vec<(String, String)>,
    #[serde(default)]
    relaxation: Vec<f64>,
    chunk: Option<u64>,
    sensitivities: Option<bool>,
    hotspots: Option<usize>,
}

/// One axis of the design.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Column name: `ligand`, `mutation`, `kT` or `force`.
    pub name: String,
    /// Values (for `mutation`, the indices 0 = wild type, 1… the mutations).
    pub values: Vec<f64>,
}

/// A loaded, validated perturbation study.
#[derive(Debug)]
pub struct Study {
    /// The config file, for messages and the manifest.
    pub source: String,
    /// The base model with its perturbations: parameters
    /// `[kT, ligand?, mutation amplitudes…, force?]`.
    pub model: MasterEquation,
    /// The clock of the analysis.
    pub clock: Clock,
    /// State names.
    pub names: Vec<String>,
    /// Macrostates `(name, states)`.
    pub macrostates: Vec<(String, Vec<usize>)>,
    /// Observables `(name, per-state values)`.
    pub observables: Vec<(String, Vec<f64>)>,
    /// Mutation names (axis index − 1).
    pub mutations: Vec<String>,
    /// The design axes, first outermost.
    pub axes: Vec<Axis>,
    /// Number of implied timescales.
    pub timescales: usize,
    /// Macrostate pairs `(A, B)` (indices into `macrostates`).
    pub pairs: Vec<(usize, usize)>,
    /// Relaxation times.
    pub relaxation: Vec<f64>,
    /// Points per Parquet part.
    pub chunk: u64,
    /// Whether `d_<output>__<parameter>` columns are written.
    pub sensitivities: bool,
    /// Rows per output of `hotspots.csv` (0: none).
    pub hotspots: usize,
    /// With `[macrostates] pcca = m`: the PCCA+ memberships of every state
    /// (one row per state, columns in the order of `macrostates`).
    pub pcca: Option<Vec<Vec<f64>>>,
    ligand: bool,
    force: bool,
    fingerprint_text: String,
    sampled: Option<Sampled>,
    /// Heat map `(x axis, y axis, macrostate)`, indices into `axes` and `macrostates`.
    heatmap: Option<(usize, usize, usize)>,
}

fn cfg(file: &str, reason: impl Into<String>) -> PerturbError {
    PerturbError::Config { file: file.to_string(), reason: reason.into() }
}

fn column_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn values_of(v: &Values, file: &str, key: &str) -> Result<Vec<f64>, PerturbError> {
    let out = match v {
        Values::List(l) => l.clone(),
        Values::One(x) => vec![*x],
        Values::Range { from, to, n, log } => {
            let Some(n) = n else {
                return Err(cfg(file, format!("{key}: a range needs n (or [design] method = \"sobol\" | \"lhs\")")));
            };
            if *n == 0 {
                return Err(cfg(file, format!("{key}: n = 0 gives an empty axis")));
            }
            // Estimated before allocating (found by fuzzing: n = 2^32 asked for 34 GB).
            crate::limits::check_alloc(*n as f64, std::mem::size_of::<f64>(), "the axis", key)
                .map_err(|e| cfg(file, e))?;
            if log.unwrap_or(false) {
                if !(*from > 0.0 && *to > 0.0) {
                    return Err(cfg(file, format!("{key}: a log range needs positive ends")));
                }
                crate::kernels::generators::logspace(*from, *to, *n)
            } else {
                crate::kernels::generators::linspace(*from, *to, *n)
            }
        }
    };
    if out.is_empty() {
        return Err(cfg(file, format!("{key}: empty axis")));
    }
    if let Some(x) = out.iter().find(|x| !x.is_finite()) {
        return Err(cfg(file, format!("{key}: value {x} is not finite")));
    }
    Ok(out)
}

impl Study {
    /// Reads a config file (paths inside it are relative to it).
    pub fn from_path(path: &Path) -> Result<Self, PerturbError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| cfg(&source, format!("cannot read the config: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_toml_str(&text, &source, &base)
    }

    /// Parses a config; relative file names are taken from `base`.
    pub fn from_toml_str(text: &str, source: &str, base: &Path) -> Result<Self, PerturbError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| cfg(source, e.to_string()))?;
        let file = source;
        let matrix_path: PathBuf = base.join(&raw.model.matrix);
        let kind = match raw.model.kind.to_ascii_lowercase().as_str() {
            "rate" => MatrixKind::Rate,
            "transition" => MatrixKind::Transition { lag: raw.model.lag },
            k => return Err(cfg(file, format!("model.kind = `{k}`: use rate or transition"))),
        };
        if kind == MatrixKind::Rate && raw.model.lag.is_some() {
            return Err(cfg(file, "model.lag is for transition matrices (kind = \"transition\")"));
        }
        let m = MatrixFile::read(&matrix_path)?;
        let n = m.n;
        let names: Vec<String> = match (&raw.model.names, &m.names) {
            (Some(v), _) if v.len() != n => {
                return Err(cfg(file, format!("model.names has {} names for {n} states", v.len())))
            }
            (Some(v), _) => v.clone(),
            (None, Some(v)) => v.clone(),
            (None, None) => (0..n).map(|i| format!("S{i}")).collect(),
        };
        let mut m = m;
        m.names = Some(names.clone());
        let chain = m.chain(kind)?;
        let clock = chain.clock();
        let kt = raw.model.kt.unwrap_or(1.0);
        if !(kt.is_finite() && kt > 0.0) {
            return Err(cfg(file, format!("model.kT = {kt} must be positive")));
        }
        let mut model = MasterEquation::from_chain(&chain, kt)?;
        // Macrostates.
        let state = |r: &StateRef, what: &str| -> Result<usize, PerturbError> {
            match r {
                StateRef::Index(i) if *i < n => Ok(*i),
                StateRef::Index(i) => Err(cfg(file, format!("{what}: state {i} is outside the model's {n} states"))),
                StateRef::Name(s) => names.iter().position(|x| x == s).ok_or_else(|| {
                    cfg(file, format!("{what}: unknown state `{s}` (the model's states: {})", preview(&names)))
                }),
            }
        };
        let mut macrostates: Vec<(String, Vec<usize>)> = Vec::new();
        let mut pcca_memberships = None;
        if let Some(ms) = &raw.macrostates {
            if !raw.macrostate.is_empty() {
                return Err(cfg(file, "[macrostates] pcca and [[macrostate]] sets exclude each other: use one"));
            }
            let (sets, chi) = pcca_macrostates(&chain, ms.pcca)
                .map_err(|e| cfg(file, format!("macrostates.pcca = {}: {e}", ms.pcca)))?;
            macrostates = sets;
            pcca_memberships = Some(chi);
        }
        for mac in &raw.macrostate {
            let what = format!("macrostate `{}`", mac.name);
            if !column_safe(&mac.name) {
                return Err(cfg(file, format!("{what}: a name of letters, digits and _ is needed (a column name)")));
            }
            if macrostates.iter().any(|(n, _)| *n == mac.name) {
                return Err(cfg(file, format!("{what} is defined twice")));
            }
            let mut s: Vec<usize> = mac.states.iter().map(|r| state(r, &what)).collect::<Result<_, _>>()?;
            s.sort_unstable();
            s.dedup();
            if s.is_empty() {
                return Err(cfg(file, format!("{what} has no states")));
            }
            macrostates.push((mac.name.clone(), s));
        }
        if macrostates.is_empty() {
            macrostates = names.iter().enumerate().map(|(i, s)| (s.clone(), vec![i])).collect();
            if let Some((s, _)) = macrostates.iter().find(|(s, _)| !column_safe(s)) {
                return Err(cfg(
                    file,
                    format!("no [[macrostate]]: state `{s}` is not a column name; define macrostates"),
                ));
            }
        }
        // Per-state tables keyed by state or macrostate name.
        let per_state = |p: &PerState, what: &str, default: f64| -> Result<Vec<f64>, PerturbError> {
            match p {
                PerState::List(v) if v.len() == n => Ok(v.clone()),
                PerState::List(v) => Err(cfg(file, format!("{what}: {} values for {n} states", v.len()))),
                PerState::Map(map) => {
                    let mut out = vec![default; n];
                    for (k, &v) in map {
                        if let Some((_, s)) = macrostates.iter().find(|(m, _)| m == k) {
                            s.iter().for_each(|&i| out[i] = v);
                        } else {
                            let i = names.iter().position(|x| x == k).ok_or_else(|| {
                                cfg(file, format!("{what}: `{k}` is neither a state nor a macrostate"))
                            })?;
                            out[i] = v;
                        }
                    }
                    Ok(out)
                }
            }
        };
        let mut observables = Vec::new();
        for o in &raw.observable {
            if !column_safe(&o.name) {
                return Err(cfg(file, format!("observable `{}`: a name of letters, digits and _ is needed", o.name)));
            }
            let v = per_state(&o.values, &format!("observable `{}`", o.name), 0.0)?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(cfg(file, format!("observable `{}`: value {x} is not finite", o.name)));
            }
            observables.push((o.name.clone(), v));
        }
        let mut axes = Vec::new();
        // With [design], axes given as ranges are sampled: (axis index, from, to, log).
        let mut ranges: Vec<(usize, f64, f64, bool)> = Vec::new();
        let design = raw.design.as_ref();
        let mut axis_values = |v: &Values, key: &str, axes_len: usize| -> Result<Vec<f64>, PerturbError> {
            if let (Some(_), Values::Range { from, to, log, .. }) = (design, v) {
                let log = log.unwrap_or(false);
                if !(from.is_finite() && to.is_finite()) || (log && !(*from > 0.0 && *to > 0.0)) {
                    return Err(cfg(file, format!("{key}: a sampled range needs finite (log: positive) ends")));
                }
                ranges.push((axes_len, *from, *to, log));
                return Ok(vec![*from, *to]);
            }
            values_of(v, file, key)
        };
        // Ligand.
        let ligand = raw.ligand.is_some();
        if let Some(l) = &raw.ligand {
            let kd = per_state(&l.kd, "ligand.kd", f64::INFINITY)?;
            if let Some(i) = kd.iter().position(|k| k.is_nan() || *k <= 0.0) {
                return Err(cfg(file, format!("ligand.kd: state `{}` has Kd = {} (> 0 needed)", names[i], kd[i])));
            }
            let conc = axis_values(&l.concentration, "ligand.concentration", axes.len())?;
            if let Some(c) = conc.iter().find(|c| **c < 0.0) {
                return Err(cfg(file, format!("ligand.concentration: {c} is negative")));
            }
            model = model.with_perturbation(Perturbation::Ligand { name: "ligand".into(), kd })?;
            axes.push(Axis { name: "ligand".into(), values: conc });
        }
        // Mutations.
        let mut muts: Vec<(String, Vec<f64>)> = Vec::new();
        for mu in &raw.mutation {
            muts.push((mu.name.clone(), per_state(&mu.ddg, &format!("mutation `{}`", mu.name), 0.0)?));
        }
        if let Some(mf) = &raw.mutations {
            let p = base.join(&mf.file);
            muts.extend(read_mutations(&p, &names, &macrostates)?);
        }
        for (k, (name, ddg)) in muts.iter().enumerate() {
            if !column_safe(name) || name.eq_ignore_ascii_case("wt") || muts[..k].iter().any(|m| m.0 == *name) {
                return Err(cfg(
                    file,
                    format!("mutation `{name}`: names must be unique, of letters, digits and _, and not `wt`"),
                ));
            }
            if let Some(x) = ddg.iter().find(|x| !x.is_finite()) {
                return Err(cfg(file, format!("mutation `{name}`: ΔΔG {x} is not finite")));
            }
            model = model.with_perturbation(Perturbation::Shift { name: format!("mut_{name}"), shape: ddg.clone() })?;
        }
        if !muts.is_empty() {
            axes.push(Axis { name: "mutation".into(), values: (0..=muts.len()).map(|i| i as f64).collect() });
        }
        if let Some(t) = &raw.temperature {
            let v = axis_values(&t.kt, "temperature.kT", axes.len())?;
            if let Some(x) = v.iter().find(|x| **x <= 0.0) {
                return Err(cfg(file, format!("temperature.kT: {x} must be positive")));
            }
            axes.push(Axis { name: "kT".into(), values: v });
        }
        let force = raw.force.is_some();
        if let Some(f) = &raw.force {
            let x = per_state(&f.displacement, "force.displacement", 0.0)?;
            model = model.with_perturbation(Perturbation::Shift {
                name: "force".into(),
                shape: x.iter().map(|v| -v).collect(),
            })?;
            let v = axis_values(&f.values, "force.values", axes.len())?;
            axes.push(Axis { name: "force".into(), values: v });
        }
        let sampled = match design {
            None => None,
            Some(d) => {
                if ranges.is_empty() {
                    return Err(cfg(file, "[design]: no axis is a range {from, to, log}; nothing to sample"));
                }
                if d.n == 0 {
                    return Err(cfg(file, "design.n must be positive"));
                }
                let gen = |e: crate::kernels::generators::GeneratorError| cfg(file, format!("[design]: {e}"));
                let sampler = match d.method.to_ascii_lowercase().as_str() {
                    "sobol" => Sampler::Sobol(crate::kernels::generators::Sobol::new(ranges.len()).map_err(gen)?),
                    "lhs" => Sampler::Lhs(
                        crate::kernels::generators::LatinHypercube::new(d.n, ranges.len(), d.seed.unwrap_or(0))
                            .map_err(gen)?,
                    ),
                    m => return Err(cfg(file, format!("design.method = `{m}`: use sobol or lhs"))),
                };
                Some(Sampled { sampler, n: d.n, ranges })
            }
        };
        let report = raw.report.as_ref();
        let heatmap = {
            let grid_axes: Vec<usize> = (0..axes.len())
                .filter(|k| !sampled.as_ref().is_some_and(|s| s.ranges.iter().any(|r| r.0 == *k)))
                .collect();
            let pair = match report.and_then(|r| r.heatmap.as_ref()) {
                Some((x, y)) => {
                    let find = |a: &str| -> Result<usize, PerturbError> {
                        let k = axes
                            .iter()
                            .position(|ax| ax.name == a)
                            .ok_or_else(|| cfg(file, format!("report.heatmap: `{a}` is not an axis of the design")))?;
                        if !grid_axes.contains(&k) {
                            return Err(cfg(file, format!("report.heatmap: axis `{a}` is sampled, not a grid axis")));
                        }
                        Ok(k)
                    };
                    let (kx, ky) = (find(x)?, find(y)?);
                    if kx == ky {
                        return Err(cfg(file, "report.heatmap: two different axes are needed"));
                    }
                    Some((kx, ky))
                }
                None if grid_axes.len() >= 2 => Some((grid_axes[0], grid_axes[1])),
                None => None,
            };
            let mac = match report.and_then(|r| r.macrostate.as_ref()) {
                Some(m) => macrostates
                    .iter()
                    .position(|(n, _)| n == m)
                    .ok_or_else(|| cfg(file, format!("report.macrostate: unknown macrostate `{m}`")))?,
                None => 0,
            };
            pair.map(|(x, y)| (x, y, mac))
        };
        let mac_index = |s: &str| -> Result<usize, PerturbError> {
            macrostates
                .iter()
                .position(|(m, _)| m == s)
                .ok_or_else(|| cfg(file, format!("analysis.pairs: unknown macrostate `{s}`")))
        };
        let mut pairs = Vec::new();
        for (a, b) in &raw.analysis.pairs {
            let (ia, ib) = (mac_index(a)?, mac_index(b)?);
            if macrostates[ia].1.iter().any(|i| macrostates[ib].1.contains(i)) {
                return Err(cfg(file, format!("analysis.pairs: macrostates `{a}` and `{b}` overlap")));
            }
            pairs.push((ia, ib));
        }
        let relaxation = raw.analysis.relaxation.clone();
        if let Some(t) = relaxation.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(cfg(file, format!("analysis.relaxation: time {t} must be finite and >= 0")));
        }
        if let (Clock::Discrete { lag }, Some(t)) = (
            clock,
            relaxation.iter().find(|t| {
                let k = **t / lag_of(clock);
                (k - k.round()).abs() > 1e-9 * k.max(1.0)
            }),
        ) {
            return Err(cfg(file, format!("analysis.relaxation: time {t} is not a multiple of the lag {lag}")));
        }
        let chunk = raw.analysis.chunk.unwrap_or(DEFAULT_CHUNK);
        if chunk == 0 {
            return Err(cfg(file, "analysis.chunk must be positive"));
        }
        let timescales = raw.analysis.timescales.unwrap_or(5).min(n - 1);
        let fingerprint_text = format!(
            "{}|{text}|{}|{}",
            env!("CARGO_PKG_VERSION"),
            m.entries.len(),
            m.entries.iter().map(|e| e.2).sum::<f64>()
        );
        Ok(Study {
            source: source.to_string(),
            model,
            clock,
            names,
            macrostates,
            observables,
            mutations: muts.into_iter().map(|m| m.0).collect(),
            axes,
            timescales,
            pairs,
            relaxation,
            chunk,
            sensitivities: raw.analysis.sensitivities.unwrap_or(false),
            pcca: pcca_memberships,
            hotspots: raw.analysis.hotspots.unwrap_or(10),
            ligand,
            force,
            fingerprint_text,
            sampled,
            heatmap,
        })
    }

    /// Number of points.
    pub fn len(&self) -> u64 {
        match &self.sampled {
            None => self.axes.iter().map(|a| a.values.len() as u64).product(),
            Some(s) => {
                s.n * self
                    .axes
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| !s.ranges.iter().any(|r| r.0 == *k))
                    .map(|(_, a)| a.values.len() as u64)
                    .product::<u64>()
            }
        }
    }

    /// Whether the design is sampled (`[design]`): the axes given as
    /// ranges take `n` Sobol or Latin-hypercube points, crossed with the
    /// grid axes (outermost); point `id` = grid index × n + sample index.
    pub fn is_sampled(&self) -> bool {
        self.sampled.is_some()
    }

    /// Whether the design is empty (never, for a loaded study).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of Parquet parts.
    pub fn chunks(&self) -> u64 {
        self.len().div_ceil(self.chunk)
    }

    /// Axis values of point `id`.
    pub fn point(&self, id: u64) -> Vec<f64> {
        let mut out = vec![0.0; self.axes.len()];
        let mut rem = id;
        if let Some(s) = &self.sampled {
            let si = id % s.n;
            rem = id / s.n;
            let mut u = vec![0.0; s.ranges.len()];
            match &s.sampler {
                Sampler::Sobol(q) => q.point(si, &mut u),
                Sampler::Lhs(q) => q.point(si, &mut u),
            }
            for (&(k, lo, hi, log), u) in s.ranges.iter().zip(&u) {
                out[k] = if log { (lo.ln() + u * (hi.ln() - lo.ln())).exp() } else { lo + u * (hi - lo) };
            }
        }
        for (k, a) in self.axes.iter().enumerate().rev() {
            if self.sampled.as_ref().is_some_and(|s| s.ranges.iter().any(|r| r.0 == k)) {
                continue;
            }
            let m = a.values.len() as u64;
            out[k] = a.values[(rem % m) as usize];
            rem /= m;
        }
        out
    }

    /// The model parameters `[kT, ligand?, mutation amplitudes…, force?]`
    /// of point `id`.
    pub fn params(&self, id: u64) -> Vec<f64> {
        let x = self.point(id);
        self.params_of(&x)
    }

    /// Parameters from axis values.
    pub fn params_of(&self, x: &[f64]) -> Vec<f64> {
        let mut p = self.model.default_params();
        let get = |name: &str| self.axes.iter().position(|a| a.name == name).map(|k| x[k]);
        if let Some(t) = get("kT") {
            p[0] = t;
        }
        let mut k = 1;
        if self.ligand {
            p[k] = get("ligand").unwrap_or(0.0);
            k += 1;
        }
        if let Some(m) = get("mutation") {
            let m = m as usize;
            if m >= 1 {
                p[k + m - 1] = 1.0;
            }
        }
        k += self.mutations.len();
        if self.force {
            p[k] = get("force").unwrap_or(0.0);
        }
        p
    }

    /// Result column names, in order.
    pub fn result_columns(&self) -> Vec<String> {
        // The differentiable outputs come first, then the relaxation and the sensitivities.
        let mut c = self.differentiable_columns();
        for k in 0..self.relaxation.len() {
            c.extend(self.macrostates.iter().map(|(m, _)| format!("relax_{m}_{k}")));
            c.extend(self.observables.iter().map(|(o, _)| format!("relax_obs_{o}_{k}")));
        }
        if self.sensitivities {
            let params = crate::solvers::System::param_names(&self.model);
            for o in self.differentiable_columns() {
                c.extend(params.iter().map(|p| format!("d_{o}__{p}")));
            }
        }
        c
    }

    /// The outputs with exact sensitivities: populations, timescales, MFPTs,
    /// rates, observables (not the relaxation).
    pub fn differentiable_columns(&self) -> Vec<String> {
        let mut c: Vec<String> = self.macrostates.iter().map(|(m, _)| format!("pop_{m}")).collect();
        c.extend((1..=self.timescales).map(|k| format!("its_{k}")));
        for &(a, b) in &self.pairs {
            c.push(format!("mfpt_{}_{}", self.macrostates[a].0, self.macrostates[b].0));
        }
        for &(a, b) in &self.pairs {
            c.push(format!("rate_{}_{}", self.macrostates[a].0, self.macrostates[b].0));
        }
        c.extend(self.observables.iter().map(|(o, _)| format!("obs_{o}")));
        c
    }

    /// The chain at `p` and the rate gradients of
    /// [`Study::differentiable_columns`], in order.
    pub fn rate_gradients(&self, p: &[f64]) -> Result<(Chain, Vec<RateGradient>), ConformationError> {
        let chain = Chain::from_master_checked(&self.model, p, self.clock)?;
        let pi = chain.stationary()?;
        let n = chain.len();
        let mut g = Vec::new();
        for (_, s) in &self.macrostates {
            let mut c = vec![0.0; n];
            s.iter().for_each(|&i| c[i] = 1.0);
            g.push(sensitivity::stationary_linear(&chain, &pi, &c)?);
        }
        g.extend(sensitivity::timescales(&chain, &pi, self.timescales)?);
        for &(a, b) in &self.pairs {
            g.push(sensitivity::mfpt(&chain, &pi, &self.macrostates[a].1, &self.macrostates[b].1)?);
        }
        for &(a, b) in &self.pairs {
            g.push(sensitivity::tpt_rate(&chain, &pi, &self.macrostates[a].1, &self.macrostates[b].1)?);
        }
        for (_, v) in &self.observables {
            g.push(sensitivity::stationary_linear(&chain, &pi, v)?);
        }
        Ok((chain, g))
    }

    /// `∂y/∂θ` of every differentiable output (rows) for every parameter
    /// `[kT, ligand?, mut_…, force?]` (columns) at `p`.
    pub fn sensitivities_at(&self, p: &[f64]) -> Result<Vec<Vec<f64>>, ConformationError> {
        let (chain, g) = self.rate_gradients(p)?;
        Ok(g.iter().map(|g| sensitivity::parameter_gradient(&self.model, p, &chain, g)).collect())
    }

    /// The hot-spot table at `p`: for each differentiable output, the
    /// `top` states whose free energy moves it most, `(output, rank, state,
    /// ∂y/∂G_state)`.
    pub fn hotspots_at(&self, p: &[f64], top: usize) -> Result<Vec<(String, usize, String, f64)>, ConformationError> {
        let (chain, g) = self.rate_gradients(p)?;
        let mut out = Vec::new();
        for (name, gi) in self.differentiable_columns().into_iter().zip(&g) {
            let dg = sensitivity::free_energy_gradient(&chain, p[0], gi);
            let mut order: Vec<usize> = (0..dg.len()).collect();
            order.sort_by(|&a, &b| dg[b].abs().total_cmp(&dg[a].abs()).then(a.cmp(&b)));
            for (rank, &m) in order.iter().take(top).enumerate() {
                out.push((name.clone(), rank + 1, self.names[m].clone(), dg[m]));
            }
        }
        Ok(out)
    }

    /// A fingerprint of everything that determines the results.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.fingerprint_text.bytes().chain(self.chunk.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    /// One-line description.
    pub fn describe(&self) -> String {
        let axes: Vec<String> = self.axes.iter().map(|a| format!("{} ({})", a.name, a.values.len())).collect();
        let clock = match self.clock {
            Clock::Continuous => "rate matrix, continuous time".to_string(),
            Clock::Discrete { lag } => format!("transition matrix, lag {lag}, discrete time"),
        };
        format!(
            "{} states ({clock}), {} macrostates, {} points = grid [{}]",
            self.model.len(),
            self.macrostates.len(),
            self.len(),
            axes.join(" x ")
        )
    }

    /// The analysis at parameters `p`, in [`Study::result_columns`] order.
    pub fn analyse(&self, p: &[f64]) -> Result<Vec<f64>, ConformationError> {
        let chain = Chain::from_master_checked(&self.model, p, self.clock)?;
        let pi = chain.stationary()?;
        let mut out: Vec<f64> = self.macrostates.iter().map(|(_, s)| s.iter().map(|&i| pi[i]).sum()).collect();
        let mut its = chain.implied_timescales(&pi, self.timescales)?;
        its.resize(self.timescales, f64::NAN);
        out.extend(its);
        let mut rates = Vec::new();
        for &(a, b) in &self.pairs {
            let (sa, sb) = (&self.macrostates[a].1, &self.macrostates[b].1);
            out.push(chain.mfpt(&pi, sa, sb)?);
            rates.push(chain.tpt(&pi, sa, sb)?.rate);
        }
        out.extend(rates);
        out.extend(self.observables.iter().map(|(_, v)| v.iter().zip(&pi).map(|(a, b)| a * b).sum::<f64>()));
        if !self.relaxation.is_empty() {
            let p0 = self.reference_equilibrium()?;
            for q in self.relax(&chain, &pi, p, &p0)? {
                out.extend(self.macrostates.iter().map(|(_, s)| s.iter().map(|&i| q[i]).sum::<f64>()));
                out.extend(self.observables.iter().map(|(_, v)| v.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>()));
            }
        }
        if self.sensitivities {
            for row in self.sensitivities_at(p)? {
                out.extend(row);
            }
        }
        Ok(out)
    }

    /// The stationary distribution of the unperturbed model.
    pub fn reference_equilibrium(&self) -> Result<Vec<f64>, ConformationError> {
        let p0 = self.model.default_params();
        Chain::from_master(&self.model, &p0, self.clock)?.stationary()
    }

    /// Distributions at the relaxation times, from `p0` under `chain`
    /// (stationary distribution `pi`): powers of `T` in discrete time; in
    /// continuous time the shift-and-invert Krylov propagator for a
    /// reversible chain (error ~1e-12, a few factorisations per point), the
    /// solve layer's BDF (rtol 1e-8) otherwise.
    fn relax(&self, chain: &Chain, pi: &[f64], p: &[f64], p0: &[f64]) -> Result<Vec<Vec<f64>>, ConformationError> {
        match self.clock {
            Clock::Discrete { lag } => {
                let mut order: Vec<usize> = (0..self.relaxation.len()).collect();
                order.sort_by(|&a, &b| self.relaxation[a].total_cmp(&self.relaxation[b]));
                let mut out = vec![Vec::new(); self.relaxation.len()];
                let (mut q, mut steps) = (p0.to_vec(), 0u64);
                for k in order {
                    let target = (self.relaxation[k] / lag).round() as u64;
                    while steps < target {
                        q = chain.step(&q);
                        steps += 1;
                    }
                    out[k] = q.clone();
                }
                Ok(out)
            }
            Clock::Continuous if chain.reversibility_defect(pi) <= 1e-8 => {
                Ok(chain.propagate(pi, p0, &self.relaxation, 1e-12)?.0)
            }
            Clock::Continuous => {
                let mut times: Vec<f64> = self.relaxation.clone();
                times.sort_by(|a, b| a.total_cmp(b));
                let prob = Problem::new(&self.model, p.to_vec()).with_x0(p0.to_vec()).observe(0, &times);
                let sol = solve(&prob, Method::Bdf, &Options { rtol: 1e-8, atol: 1e-12, ..Options::default() })
                    .map_err(|e| ConformationError::Invalid(format!("relaxation: {e}")))?;
                Ok(self
                    .relaxation
                    .iter()
                    .map(|t| {
                        let k = times.iter().position(|x| x == t).unwrap_or(0);
                        sol.states[k].clone()
                    })
                    .collect())
            }
        }
    }

    /// Prepares `dir` (manifest, resumption); returns the chunks still to do.
    pub fn prepare(&self, dir: &Path) -> Result<Vec<u64>, PerturbError> {
        let cols: Vec<String> = self.columns().into_iter().map(|c| c.0).collect();
        let manifest = serde_json::json!({
            "format": "insilico-perturb/1",
            "config": self.source,
            "fingerprint": self.fingerprint(),
            "points": self.len(),
            "chunk": self.chunk,
            "chunks": self.chunks(),
            "axes": self.axes.iter().map(|a| serde_json::json!({"name": a.name, "values": a.values})).collect::<Vec<_>>(),
            "mutations": self.mutations,
            "relaxation_times": self.relaxation,
            "columns": cols,
        });
        let done = pio::prepare_folder(dir, &manifest, &self.fingerprint(), self.chunks())?;
        Ok((0..self.chunks()).filter(|&k| !done[k as usize]).collect())
    }

    /// All Parquet columns `(name, is_integer)`.
    fn columns(&self) -> Vec<(String, bool)> {
        let mut c = vec![("id".to_string(), true)];
        c.extend(self.axes.iter().map(|a| (a.name.clone(), a.name == "mutation")));
        c.push(("status".to_string(), true));
        c.extend(self.result_columns().into_iter().map(|n| (n, false)));
        c
    }

    /// Computes chunk `k` (points in parallel) and writes its part file.
    /// Returns the number of failed points.
    pub fn run_chunk(&self, dir: &Path, k: u64) -> Result<usize, PerturbError> {
        let start = k * self.chunk;
        let end = (start + self.chunk).min(self.len());
        let ncol = self.result_columns().len();
        let rows: Vec<Result<Vec<f64>, ConformationError>> =
            (start..end).into_par_iter().map(|id| self.analyse(&self.params(id))).collect();
        let failed = rows.iter().filter(|r| r.is_err()).count();
        let mut cols: Vec<Column> = vec![Column::I64((start..end).map(|i| i as i64).collect())];
        let pts: Vec<Vec<f64>> = (start..end).map(|id| self.point(id)).collect();
        for (a, axis) in self.axes.iter().enumerate() {
            if axis.name == "mutation" {
                cols.push(Column::I64(pts.iter().map(|x| x[a] as i64).collect()));
            } else {
                cols.push(Column::F64(pts.iter().map(|x| x[a]).collect()));
            }
        }
        cols.push(Column::I32(rows.iter().map(|r| i32::from(r.is_err())).collect()));
        for c in 0..ncol {
            cols.push(Column::F64(rows.iter().map(|r| r.as_ref().map(|v| v[c]).unwrap_or(f64::NAN)).collect()));
        }
        let names: Vec<String> = self.columns().into_iter().map(|c| c.0).collect();
        pio::write_parquet(&dir.join(pio::part_name(k)), &names, cols)?;
        Ok(failed)
    }

    /// Writes `progress.json`.
    pub fn write_progress(&self, dir: &Path, done: u64) -> Result<(), PerturbError> {
        let v = serde_json::json!({"chunks_done": done, "chunks": self.chunks(), "points": self.len()});
        pio::atomic_write(&dir.join("progress.json"), (v.to_string() + "\n").as_bytes())?;
        Ok(())
    }

    /// Reads the parts back, writes `summary.csv` and the plots; returns
    /// the table.
    pub fn finish(&self, dir: &Path) -> Result<crate::sweep::Table, PerturbError> {
        let t = crate::sweep::read_parts(dir)?;
        if t.len() as u64 != self.len() {
            return Err(SweepError::Output {
                path: dir.display().to_string(),
                reason: format!("{} of {} points found: the study is not complete", t.len(), self.len()),
            }
            .into());
        }
        let mut csv = String::new();
        let mut header: Vec<String> = self.axes.iter().map(|a| a.name.clone()).collect();
        header.extend(self.result_columns());
        csv += &header.join(",");
        csv.push('\n');
        for r in 0..t.len() {
            let mut f: Vec<String> = Vec::with_capacity(header.len());
            for a in &self.axes {
                if a.name == "mutation" {
                    let m = t.ints("mutation").map(|v| v[r]).unwrap_or(0) as usize;
                    f.push(if m == 0 { "wt".to_string() } else { self.mutations[m - 1].clone() });
                } else {
                    f.push(format!("{}", t.floats(&a.name).map(|v| v[r]).unwrap_or(f64::NAN)));
                }
            }
            for c in self.result_columns() {
                f.push(format!("{:e}", t.floats(&c).map(|v| v[r]).unwrap_or(f64::NAN)));
            }
            csv += &f.join(",");
            csv.push('\n');
        }
        pio::atomic_write(&dir.join("summary.csv"), csv.as_bytes())?;
        if self.hotspots > 0 {
            let p0 = self.model.default_params();
            let mut h = String::from("output,rank,state,dy_dG\n");
            match self.hotspots_at(&p0, self.hotspots) {
                Ok(rows) => {
                    for (o, r, st, d) in rows {
                        h += &format!("{o},{r},{st},{d:e}\n");
                    }
                }
                Err(e) => h += &format!("# not available: {e}\n"),
            }
            pio::atomic_write(&dir.join("hotspots.csv"), h.as_bytes())?;
        }
        if let Some(chi) = &self.pcca {
            let mut h = String::from("state,macrostate");
            for (m, _) in &self.macrostates {
                h += &format!(",chi_{m}");
            }
            h.push('\n');
            for (i, row) in chi.iter().enumerate() {
                let m = self.macrostates.iter().find(|(_, s)| s.contains(&i)).map_or("", |(m, _)| m.as_str());
                h += &format!("{},{m}", self.names[i]);
                for c in row {
                    h += &format!(",{c:e}");
                }
                h.push('\n');
            }
            pio::atomic_write(&dir.join("pcca.csv"), h.as_bytes())?;
        }
        self.plots(dir, &t);
        Ok(t)
    }

    /// Plots (best effort: a plot that fails is skipped).
    fn plots(&self, dir: &Path, t: &crate::sweep::Table) {
        self.heatmap_plot(dir, t);
        if self.sampled.is_some() {
            return; // line plots along a grid axis only
        }
        let Some(first) = self.axes.first() else { return };
        // rows where every other axis is at its first value
        let n0 = first.values.len();
        let stride = (self.len() / n0 as u64) as usize;
        // log10 x for a positive axis spanning more than two decades
        let log_axis = |v: &[f64]| {
            let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            lo > 0.0 && hi / lo > 100.0
        };
        let log_x = log_axis(&first.values);
        let xs: Vec<f64> = first.values.iter().map(|&x| if log_x { x.log10() } else { x }).collect();
        let rows: Vec<usize> = (0..n0).map(|i| i * stride).collect();
        let series = |cols: Vec<String>| -> Vec<(String, Vec<(f64, f64)>)> {
            cols.into_iter()
                .filter_map(|c| {
                    let v = t.floats(&c)?;
                    Some((c, rows.iter().zip(&xs).map(|(&r, &x)| (x, v[r])).filter(|p| p.1.is_finite()).collect()))
                })
                .collect()
        };
        let xlabel = if log_x { format!("log10 {}", first.name) } else { first.name.clone() };
        let at_rest = if self.axes.len() > 1 {
            let rest: Vec<String> = self.axes[1..]
                .iter()
                .map(|a| {
                    if a.name == "mutation" {
                        "mutation = wt".to_string()
                    } else {
                        format!("{} = {}", a.name, a.values[0])
                    }
                })
                .collect();
            format!(" ({})", rest.join(", "))
        } else {
            String::new()
        };
        let pops = series(self.macrostates.iter().map(|(m, _)| format!("pop_{m}")).collect());
        let _ = crate::plots::lines(
            &dir.join("populations.png"),
            &format!("Macrostate populations{at_rest}"),
            &xlabel,
            "population",
            &pops,
        );
        let its = series((1..=self.timescales).map(|k| format!("its_{k}")).collect());
        let its: Vec<(String, Vec<(f64, f64)>)> =
            its.into_iter().map(|(n, v)| (n, v.into_iter().map(|(x, y)| (x, y.log10())).collect())).collect();
        let _ = crate::plots::lines(
            &dir.join("timescales.png"),
            &format!("Implied timescales{at_rest}"),
            &xlabel,
            "log10 timescale",
            &its,
        );
        if !self.relaxation.is_empty() {
            // relaxation curves of the last point along the first axis
            let r = rows.last().copied().unwrap_or(0);
            let mut order: Vec<usize> = (0..self.relaxation.len()).collect();
            order.sort_by(|&a, &b| self.relaxation[a].total_cmp(&self.relaxation[b]));
            let pos: Vec<f64> = self.relaxation.iter().copied().filter(|t| *t > 0.0).collect();
            let log_t = pos.len() > 1 && log_axis(&pos);
            let curves: Vec<(String, Vec<(f64, f64)>)> = self
                .macrostates
                .iter()
                .filter_map(|(m, _)| {
                    let pts = order
                        .iter()
                        .filter(|&&k| !log_t || self.relaxation[k] > 0.0)
                        .map(|&k| {
                            let x = if log_t { self.relaxation[k].log10() } else { self.relaxation[k] };
                            Some((x, t.floats(&format!("relax_{m}_{k}"))?[r]))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    Some((m.clone(), pts))
                })
                .collect();
            let _ = crate::plots::lines(
                &dir.join("relaxation.png"),
                &format!("Relaxation after the jump to {} = {}{at_rest}", first.name, first.values[n0 - 1]),
                if log_t { "log10 time" } else { "time" },
                "population",
                &curves,
            );
        }
    }
}

/// PCCA+ macrostates of the unperturbed chain: `m1 … mk` in decreasing
/// stationary population of their crisp sets (ties: the set holding the
/// lower state index first), and the memberships with columns in that order.
#[allow(clippy::type_complexity)]
fn pcca_macrostates(chain: &Chain, m: usize) -> Result<(Vec<(String, Vec<usize>)>, Vec<Vec<f64>>), ConformationError> {
    let pi = chain.stationary()?;
    let p = crate::mechanistic::conformation::pcca(chain, &pi, m)?;
    let sets = p.sets();
    if let Some(k) = sets.iter().position(Vec::is_empty) {
        return Err(ConformationError::Invalid(format!(
            "PCCA+ macrostate {} has no state under the crisp assignment (fewer metastable sets than {m}?); \
             choose a smaller m",
            k + 1
        )));
    }
    let pop: Vec<f64> = sets.iter().map(|s| s.iter().map(|&i| pi[i]).sum()).collect();
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| pop[b].total_cmp(&pop[a]).then(sets[a][0].cmp(&sets[b][0])));
    let named = order.iter().enumerate().map(|(k, &c)| (format!("m{}", k + 1), sets[c].clone())).collect();
    let chi = p.memberships.iter().map(|r| order.iter().map(|&c| r[c]).collect()).collect();
    Ok((named, chi))
}

impl Study {
    /// `population_shift.png`: shift of the chosen macrostate's population
    /// from its unperturbed value over two grid axes, the other axes at
    /// their first value (the first sample of a sampled design).
    fn heatmap_plot(&self, dir: &Path, t: &crate::sweep::Table) {
        let Some((kx, ky, mac)) = self.heatmap else { return };
        let (name, set) = &self.macrostates[mac];
        let Ok(p0) = self.reference_equilibrium() else { return };
        let base: f64 = set.iter().map(|&i| p0[i]).sum();
        let Some(pop) = t.floats(&format!("pop_{name}")) else { return };
        let Some(ids) = t.ints("id") else { return };
        // stride of each axis in the id (sampled axes: none)
        let n_s = self.sampled.as_ref().map_or(1, |s| s.n);
        let mut strides = vec![0u64; self.axes.len()];
        let mut acc = n_s;
        for k in (0..self.axes.len()).rev() {
            if self.sampled.as_ref().is_some_and(|s| s.ranges.iter().any(|r| r.0 == k)) {
                continue;
            }
            strides[k] = acc;
            acc *= self.axes[k].values.len() as u64;
        }
        let row_of: BTreeMap<i64, usize> = ids.iter().enumerate().map(|(r, &id)| (id, r)).collect();
        let (xs, ys) = (&self.axes[kx].values, &self.axes[ky].values);
        let mut vals = Vec::with_capacity(xs.len() * ys.len());
        for yi in 0..ys.len() {
            for xi in 0..xs.len() {
                let id = xi as u64 * strides[kx] + yi as u64 * strides[ky];
                vals.push(row_of.get(&(id as i64)).map_or(f64::NAN, |&r| pop[r] - base));
            }
        }
        let _ = crate::plots::heatmap(
            &dir.join("population_shift.png"),
            &format!("pop_{name} − unperturbed ({base:.4})"),
            (self.axes[kx].name.as_str(), xs),
            (self.axes[ky].name.as_str(), ys),
            &vals,
        );
    }
}

fn lag_of(c: Clock) -> f64 {
    match c {
        Clock::Discrete { lag } => lag,
        Clock::Continuous => 1.0,
    }
}

fn preview(names: &[String]) -> String {
    let mut s: Vec<String> = names.iter().take(8).cloned().collect();
    if names.len() > 8 {
        s.push(format!("… {} in all", names.len()));
    }
    s.join(", ")
}

/// Reads a long mutation CSV `mutation,state,ddg` (state or macrostate by
/// name, or a 0-based index); errors name the file and line.
fn read_mutations(
    path: &Path,
    names: &[String],
    macrostates: &[(String, Vec<usize>)],
) -> Result<Vec<(String, Vec<f64>)>, PerturbError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| cfg(&file, format!("cannot read: {e}")))?;
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || (k == 0 && l.to_ascii_lowercase().starts_with("mutation")) {
            continue;
        }
        let at = |r: String| cfg(&file, format!("line {}: {r}", k + 1));
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() != 3 {
            return Err(at(format!("{} fields; expected mutation,state,ddg", f.len())));
        }
        let v: f64 = f[2].parse().map_err(|_| at(format!("`{}` is not a number", f[2])))?;
        let states: Vec<usize> = if let Some((_, s)) = macrostates.iter().find(|(m, _)| m == f[1]) {
            s.clone()
        } else if let Some(i) = names.iter().position(|x| x == f[1]) {
            vec![i]
        } else if let Ok(i) = f[1].parse::<usize>() {
            if i >= names.len() {
                return Err(at(format!("state {i} is outside the model's {} states", names.len())));
            }
            vec![i]
        } else {
            return Err(at(format!("unknown state `{}`", f[1])));
        };
        let idx = match out.iter().position(|(m, _)| m == f[0]) {
            Some(i) => i,
            None => {
                out.push((f[0].to_string(), vec![0.0; names.len()]));
                out.len() - 1
            }
        };
        for i in states {
            out[idx].1[i] += v;
        }
    }
    Ok(out)
}
