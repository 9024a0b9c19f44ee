//! `insilico forecast CONFIG --posterior DIR --out DIR2`: the predictive
//! distribution of every requested output under each candidate regimen,
//! from the posterior draws that `insilico assimilate` wrote to `DIR`
//! (`draws.csv`, `posterior.json`), on the batched ODE engine ([`engine`]).
//!
//! Config: [`crate::bayes_config`] (`[forecast]`, `[[regimen]]`, `regimens = FILE.csv`).
//!
//! # Outputs (`DIR2`)
//! * `forecast.csv`: `ID,REGIMEN,TIME,OUTPUT,Q05,Q25,Q50,Q75,Q95`, TIME absolute
//!   (the dataset's clock), the reported grid `start + k·step`;
//! * `summaries.csv`: `ID,REGIMEN,OUTPUT,SUMMARY,MEAN,SD,Q05,Q25,Q50,Q75,Q95`,
//!   SUMMARY one of `AUC_<a>_<b>` (window relative to the start), `CMAX`,
//!   `CTROUGH` (value at the end of the horizon), `TIME_ABOVE_<x>`
//!   (definitions: [`engine`]);
//! * `forecast.png`: median and 50%/90% bands of the first output, one panel
//!   per subject and regimen (at most 16 panels).
//!
//! # As a library call
//! ```no_run
//! use insilico_jobs::bayes_config::BayesConfig;
//! let cfg = BayesConfig::from_path("examples/mapbayr/mapbayr.toml".as_ref())?;
//! let result = insilico_jobs::forecast::run(&cfg, "assim-out".as_ref(), "forecast-out".as_ref(), &|_, _| {})?;
//! for s in &result.subjects {
//!     for r in &s.regimens {
//!         let cmax = r.summaries.iter().find(|v| v.name == "CMAX").unwrap();
//!         println!("{} {}: median Cmax {}", s.id, r.regimen, cmax.stats().2[2]);
//!     }
//! }
//! # Ok::<(), insilico_jobs::bayes_config::BayesError>(())
//! ```

pub mod engine;

use std::fmt::Write as _;
use std::path::Path;

use crate::bayes_config::{BayesConfig, BayesError, ForecastSettings};
use crate::plots::BandPanel;
use crate::solvers::Dataset;
use engine::{EngineUsed, ForecastPlan, Forecaster, OutputPlan, RegimenForecast};

/// The forecast of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectForecast {
    /// Subject ID.
    pub id: String,
    /// Forecast start (absolute time).
    pub start: f64,
    /// One forecast per candidate regimen, in config order.
    pub regimens: Vec<RegimenForecast>,
}

/// What `forecast` computed.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastResult {
    /// Per subject, dataset order.
    pub subjects: Vec<SubjectForecast>,
    /// Warnings (failed draws, regimens run on diffsol and why).
    pub warnings: Vec<String>,
}

/// The engine plan of a config's `[forecast]` (summaries and bands).
pub fn plan(cfg: &BayesConfig, f: &ForecastSettings, bands: bool) -> ForecastPlan {
    let outputs = f
        .outputs
        .iter()
        .map(|name| OutputPlan {
            name: name.clone(),
            error: cfg.observed.iter().find(|o| &o.name == name).map(|o| (o.error, o.sigma.clone())),
            threshold: f.threshold.iter().find(|(o, _)| o == name).map(|(_, x)| *x),
        })
        .collect();
    ForecastPlan {
        outputs,
        horizon: f.horizon,
        step: f.step,
        summary_step: f.summary_step,
        auc: f.auc.clone(),
        residual: f.residual,
        seed: cfg.posterior.seed,
        bands,
        ode: cfg.ode,
        dose_cmt: cfg.spec.dose_cmt,
        force_diffsol: false,
    }
}

/// The config's `[forecast]`, or an error saying it is missing.
pub fn settings(cfg: &BayesConfig) -> Result<&ForecastSettings, BayesError> {
    let bad = |reason: &str| BayesError::Config { file: cfg.source.clone(), reason: reason.to_string() };
    let f = cfg.forecast.as_ref().ok_or_else(|| {
        bad("no [forecast] section: give at least `horizon` and a regimen ([[regimen]] or `regimens = \"FILE.csv\"`)")
    })?;
    if f.regimens.is_empty() {
        return Err(bad("[forecast]: no candidate regimen: give `regimens = \"FILE.csv\"` or [[regimen]] entries"));
    }
    Ok(f)
}

/// Forecasts every subject of `ds` from its parameter draws
/// (`draws[i]`: subject `i`'s full model parameter vectors), calling
/// `progress(done, total)` after each subject.
pub fn forecast_parameters(
    cfg: &BayesConfig,
    ds: &Dataset,
    draws: &[Vec<Vec<f64>>],
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ForecastResult, BayesError> {
    let f = settings(cfg)?;
    let fc = Forecaster::new(&cfg.model, plan(cfg, f, true))
        .map_err(|reason| BayesError::Config { file: cfg.source.clone(), reason })?;
    let mut warnings = Vec::new();
    if let Some(why) = fc.lanes_unavailable() {
        warnings.push(format!("the batched engine does not run this model ({why}); every forecast runs on diffsol"));
    }
    // The bands of one subject and regimen: draws × outputs × reported times.
    let most = draws.iter().map(|d| d.len()).max().unwrap_or(0) as f64;
    let per_draw = f.outputs.len() as f64 * ((f.horizon / f.step).floor() + 2.0);
    crate::limits::check_alloc(most * per_draw, 8, "the forecast bands of one subject and regimen", "[forecast] step")
        .map_err(|reason| BayesError::Config { file: cfg.source.clone(), reason })?;
    let mut subjects = Vec::with_capacity(ds.subjects.len());
    for (i, subj) in ds.subjects.iter().enumerate() {
        let start = f.start.unwrap_or_else(|| subj.records.iter().map(|r| r.time).fold(f64::NEG_INFINITY, f64::max));
        let d = draws.get(i).filter(|d| !d.is_empty()).ok_or_else(|| BayesError::Forecast {
            subject: subj.id.clone(),
            regimen: String::new(),
            reason: "no posterior draws for this subject".into(),
        })?;
        let regimens = fc
            .forecast_subject(ds, subj, i, start, d, &f.regimens)
            .map_err(|(regimen, reason)| BayesError::Forecast { subject: subj.id.clone(), regimen, reason })?;
        for r in &regimens {
            if r.failed > 0 {
                warnings.push(format!(
                    "subject `{}`, regimen `{}`: {} of {} draws failed to integrate (left out of the bands and summaries)",
                    subj.id,
                    r.regimen,
                    r.failed,
                    d.len()
                ));
            }
            if let (EngineUsed::Diffsol(why), None) = (&r.engine, fc.lanes_unavailable()) {
                warnings.push(format!("subject `{}`, regimen `{}`: ran on diffsol ({why})", subj.id, r.regimen));
            }
        }
        subjects.push(SubjectForecast { id: subj.id.clone(), start, regimens });
        progress(i + 1, ds.subjects.len());
    }
    Ok(ForecastResult { subjects, warnings })
}

/// Runs `forecast` from the posterior folder `posterior` (written by
/// [`crate::assimilate::run`] with the same config) and writes
/// forecast.csv, summaries.csv and forecast.png into `out`.
pub fn run(
    cfg: &BayesConfig,
    posterior: &Path,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ForecastResult, BayesError> {
    settings(cfg)?;
    let ds = cfg.load_dataset()?;
    let post = crate::posterior_dir::read(posterior, cfg)?;
    let bound = crate::estimation::posterior::Posterior::new(&cfg.model, &ds, &cfg.spec, &cfg.posterior)?;
    let mut draws = Vec::with_capacity(ds.subjects.len());
    for (k, subj) in ds.subjects.iter().enumerate() {
        let i = post.json.subjects.iter().position(|s| s.id == subj.id).ok_or_else(|| BayesError::Posterior {
            dir: posterior.display().to_string(),
            reason: format!("subject `{}` of {} has no posterior (assimilate this dataset first)", subj.id, ds.file),
        })?;
        draws.push(post.draws[i].iter().map(|eta| bound.individual_parameters(k, eta)).collect::<Vec<_>>());
    }
    let result = forecast_parameters(cfg, &ds, &draws, progress)?;
    write_outputs(cfg, &result, out)?;
    Ok(result)
}

/// `forecast.csv`'s text.
pub fn forecast_csv(cfg: &BayesConfig, result: &ForecastResult) -> String {
    let mut s = String::from("ID,REGIMEN,TIME,OUTPUT,Q05,Q25,Q50,Q75,Q95\n");
    let outputs: &[String] = cfg.forecast.as_ref().map_or(&[], |f| &f.outputs[..]);
    for subj in &result.subjects {
        for r in &subj.regimens {
            for (o, name) in outputs.iter().enumerate() {
                let Some(band) = r.bands.get(o) else { continue };
                for (t, q) in r.times.iter().zip(band) {
                    let _ = writeln!(s, "{},{},{},{},{}", subj.id, r.regimen, t, name, join(q));
                }
            }
        }
    }
    s
}

/// `summaries.csv`'s text.
pub fn summaries_csv(result: &ForecastResult) -> String {
    let mut s = String::from("ID,REGIMEN,OUTPUT,SUMMARY,MEAN,SD,Q05,Q25,Q50,Q75,Q95\n");
    for subj in &result.subjects {
        for r in &subj.regimens {
            for v in &r.summaries {
                let (mean, sd, q) = v.stats();
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{}",
                    subj.id,
                    r.regimen,
                    v.output,
                    v.name,
                    num(mean),
                    num(sd),
                    join(&q)
                );
            }
        }
    }
    s
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".into()
    }
}

fn join(q: &[f64]) -> String {
    q.iter().map(|v| num(*v)).collect::<Vec<_>>().join(",")
}

/// Writes forecast.csv, summaries.csv and forecast.png into `out`.
pub fn write_outputs(cfg: &BayesConfig, result: &ForecastResult, out: &Path) -> Result<(), BayesError> {
    std::fs::create_dir_all(out)
        .map_err(|e| BayesError::Io { path: out.display().to_string(), reason: e.to_string() })?;
    crate::atomic::write_bytes(&out.join("forecast.csv"), forecast_csv(cfg, result).as_bytes())?;
    crate::atomic::write_bytes(&out.join("summaries.csv"), summaries_csv(result).as_bytes())?;
    let first = cfg.forecast.as_ref().and_then(|f| f.outputs.first()).cloned().unwrap_or_default();
    let mut panels = Vec::new();
    'outer: for subj in &result.subjects {
        for r in &subj.regimens {
            if panels.len() == 16 {
                break 'outer;
            }
            let Some(band) = r.bands.first() else { continue };
            let pts = |i: usize, j: usize| r.times.iter().zip(band).map(|(t, q)| (*t, q[i], q[j])).collect::<Vec<_>>();
            panels.push(BandPanel {
                title: format!("ID {} · {}", subj.id, r.regimen),
                obs: Vec::new(),
                lines: vec![r.times.iter().zip(band).map(|(t, q)| (*t, q[2])).collect()],
                bands: vec![pts(0, 4), pts(1, 3)],
            });
        }
    }
    let path = out.join("forecast.png");
    crate::plots::band_panels(
        &path,
        &format!("{}: forecast of {first} (median, 50% and 90% bands)", cfg.name),
        &panels,
    )
    .map_err(|reason| BayesError::Write(crate::atomic::WriteError { path, reason }))?;
    Ok(())
}
