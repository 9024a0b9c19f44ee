//! The posterior folder `insilico assimilate` writes and `insilico forecast
//! --posterior DIR` reads: `posterior.json` (the population used, per-subject
//! η̂, covariance, method, ESS, warnings) and `draws.csv` (`ID,DRAW,<η names>`,
//! equal-weight posterior draws).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::bayes_config::{BayesConfig, BayesError};

/// One observed output of the population (error model and σ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputJson {
    /// Model output.
    pub name: String,
    /// Error model name.
    pub error: String,
    /// σ (SDs).
    pub sigma: Vec<f64>,
    /// LLOQ (M3), if any.
    pub lloq: Option<f64>,
}

/// The fixed population the posterior was computed under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopulationJson {
    /// Typical values.
    pub theta: BTreeMap<String, f64>,
    /// Fixed parameters.
    pub fixed: BTreeMap<String, f64>,
    /// Ω (rows in the order of `eta_names`).
    pub omega: Vec<Vec<f64>>,
    /// Observed outputs.
    pub outputs: Vec<OutputJson>,
}

/// One subject's posterior summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectJson {
    /// Subject ID.
    pub id: String,
    /// MAP η̂.
    pub eta: Vec<f64>,
    /// Laplace covariance of η (q × q).
    pub covariance: Vec<Vec<f64>>,
    /// Posterior SDs.
    pub sd: Vec<f64>,
    /// POSTHOC objective at η̂ (NaN written as null).
    pub ofv: Option<f64>,
    /// Whether the MAP search converged.
    pub converged: bool,
    /// Observations used.
    pub n_obs: usize,
    /// Sampling method that produced the draws.
    pub method: String,
    /// Effective sample size of importance resampling, if used.
    pub ess: Option<f64>,
    /// MCMC acceptance rate, if used.
    pub acceptance: Option<f64>,
    /// Number of draws.
    pub draws: usize,
    /// Individual parameters at η̂.
    pub parameters: BTreeMap<String, f64>,
    /// Warnings about this subject.
    pub warnings: Vec<String>,
}

/// `posterior.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PosteriorJson {
    /// Config label.
    pub name: String,
    /// Model key.
    pub model: String,
    /// Dataset file.
    pub data: String,
    /// Sampling method asked for.
    pub method: String,
    /// Seed.
    pub seed: u64,
    /// η names, in Ω's order.
    pub eta_names: Vec<String>,
    /// The population used.
    pub population: PopulationJson,
    /// Per subject, dataset order.
    pub subjects: Vec<SubjectJson>,
    /// Every warning (subjects without observations, observations before any dose, ...).
    pub warnings: Vec<String>,
}

/// `draws.csv`'s text: `ID,DRAW,<η names>`, DRAW from 1.
pub fn draws_csv(eta_names: &[String], subjects: &[(String, Vec<Vec<f64>>)]) -> String {
    let mut s = format!("ID,DRAW,{}\n", eta_names.join(","));
    for (id, draws) in subjects {
        for (k, eta) in draws.iter().enumerate() {
            let vals: Vec<String> = eta.iter().map(|v| format!("{v}")).collect();
            let _ = writeln!(s, "{id},{},{}", k + 1, vals.join(","));
        }
    }
    s
}

/// A posterior folder read back: `posterior.json` and the draws per subject ID.
#[derive(Debug, Clone, PartialEq)]
pub struct PosteriorDir {
    /// `posterior.json`.
    pub json: PosteriorJson,
    /// Draws of η per subject, in `json.subjects` order.
    pub draws: Vec<Vec<Vec<f64>>>,
}

/// Reads `DIR/posterior.json` and `DIR/draws.csv` and checks them against `cfg`
/// (same η names).
pub fn read(dir: &Path, cfg: &BayesConfig) -> Result<PosteriorDir, BayesError> {
    let d = dir.display().to_string();
    let bad = |reason: String| BayesError::Posterior { dir: d.clone(), reason };
    let path = dir.join("posterior.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(format!("cannot read posterior.json ({e}); run `insilico assimilate CONFIG --out {d}` first"))
    })?;
    let json: PosteriorJson = serde_json::from_str(&text).map_err(|e| bad(format!("posterior.json: {e}")))?;
    if json.eta_names != cfg.eta_names() {
        return Err(bad(format!(
            "posterior.json has random effects {:?}, the config {} has {:?}: assimilate with this config first",
            json.eta_names,
            cfg.source,
            cfg.eta_names()
        )));
    }
    let path = dir.join("draws.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read draws.csv: {e}")))?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|l| l.1).unwrap_or("");
    let expect = format!("ID,DRAW,{}", json.eta_names.join(","));
    if header.trim() != expect {
        return Err(bad(format!("draws.csv line 1: header `{header}`, expected `{expect}`")));
    }
    let q = json.eta_names.len();
    let mut draws: Vec<Vec<Vec<f64>>> = vec![Vec::new(); json.subjects.len()];
    let index: BTreeMap<&str, usize> = json.subjects.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    for (ln, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(|x| x.trim()).collect();
        if f.len() != q + 2 {
            return Err(bad(format!("draws.csv line {}: {} fields, expected {}", ln + 1, f.len(), q + 2)));
        }
        let i = *index
            .get(f[0])
            .ok_or_else(|| bad(format!("draws.csv line {}: subject `{}` is not in posterior.json", ln + 1, f[0])))?;
        let eta = f[2..]
            .iter()
            .zip(&json.eta_names)
            .map(|(x, n)| {
                x.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    bad(format!("draws.csv line {}, column `{n}`: `{x}` is not a finite number", ln + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        draws[i].push(eta);
    }
    Ok(PosteriorDir { json, draws })
}
