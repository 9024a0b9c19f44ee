//! `insilico assimilate CONFIG --out DIR`: the individual posterior of each
//! subject of a dataset under a fixed population model
//! ([`insilico_estimation::posterior`]): MAP (NONMEM's POSTHOC objective),
//! Laplace covariance, equal-weight draws (Laplace, importance resampling or
//! MCMC), and optionally prospective evaluation (`[sequential]`).
//!
//! Config: [`crate::bayes_config`].
//!
//! # Outputs (`DIR`)
//! * `estimates.csv`: `ID`, one column per random effect (`ETA_<param>` or
//!   the declared name), one per scalar model parameter (individual values
//!   at η̂; declared `random:` parameters are the η columns), `OFV` (the
//!   POSTHOC objective at η̂, no constants), `SD_<η name>` (Laplace), then
//!   `N_OBS,CONVERGED,METHOD,ESS`;
//! * `predictions.csv`: `ID,TIME,DV,PRED,IPRED,OUTPUT,CENS,LINE`;
//! * `draws.csv`: `ID,DRAW,<η names>`; `posterior.json` ([`crate::posterior_dir`]);
//! * `sequential.csv` with `[sequential]`: `ID,STEP,TIME,OUTPUT,DV,PREDICTED,ERROR,<η names>`
//!   (PREDICTED: the observation's individual prediction before it was seen);
//! * with `[filter]` (models with `noise:` declarations): `filtered.csv`
//!   ([`filtered_csv`]) and `filter.json` ([`filter_subjects`]);
//! * `subject_<ID>.png`: data, the individual fit (IPRED at η̂ on a fine
//!   grid) and the 90% band of the draws' predictions (parameter
//!   uncertainty), one panel per observed output.
//!
//! Warnings (a subject without observations: the prior is its posterior; an
//! observation before any dose) are returned, listed in posterior.json, and
//! printed by the CLI.
//!
//! # As a library call
//! ```no_run
//! use insilico_jobs::bayes_config::BayesConfig;
//! let cfg = BayesConfig::from_path("examples/mapbayr/mapbayr.toml".as_ref())?;
//! let res = insilico_jobs::assimilate::run(&cfg, "assim-out".as_ref(), &|_, _| {})?;
//! println!("η̂ of {}: {:?}", res.subjects[0].map.id, res.subjects[0].map.eta);
//! // then forecast from the same folder:
//! let fc = insilico_jobs::forecast::run(&cfg, "assim-out".as_ref(), "forecast-out".as_ref(), &|_, _| {})?;
//! # Ok::<(), insilico_jobs::bayes_config::BayesError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::bayes_config::{BayesConfig, BayesError, CandidateRegimen};
use crate::estimation::filter::{
    estimate_dataset_noise_scale, filter_dataset, DatasetFilterOptions, DatasetOutput, FilterMethod, FilterOptions,
    NoiseEstimate, ObservedOutput as FilterOutput, SubjectFilter,
};
use crate::estimation::posterior::{Draws, Posterior, SequentialStep, SubjectPosterior};
use crate::estimation::EstimationError;
use crate::forecast::engine::{ForecastPlan, Forecaster, OutputPlan};
use crate::model::ParamKind;
use crate::plots::BandPanel;
use crate::posterior_dir::{OutputJson, PopulationJson, PosteriorJson, SubjectJson};
use crate::solvers::Dataset;

/// One subject's posterior.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectResult {
    /// MAP, Laplace covariance, predictions, warnings.
    pub map: SubjectPosterior,
    /// Equal-weight draws.
    pub draws: Draws,
    /// The model's full parameter vector of each draw.
    pub draw_parameters: Vec<Vec<f64>>,
    /// Prospective evaluation steps (with `[sequential]`).
    pub sequential: Vec<SequentialStep>,
}

/// What `assimilate` computed.
#[derive(Debug, Clone, PartialEq)]
pub struct AssimilateResult {
    /// η names, in Ω's order.
    pub eta_names: Vec<String>,
    /// The model's scalar parameter names (leading entries of the parameter vectors).
    pub parameter_names: Vec<String>,
    /// Per subject, dataset order.
    pub subjects: Vec<SubjectResult>,
    /// Every subject's warnings, each naming the subject.
    pub warnings: Vec<String>,
    /// ODE solves.
    pub ode_solves: usize,
}

/// The individual posteriors of every subject of `ds` (no files written),
/// calling `progress(done, total)` as subjects finish (from worker threads).
/// Results are in subject order and identical for any thread count.
pub fn assimilate(
    cfg: &BayesConfig,
    ds: &Dataset,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<AssimilateResult, BayesError> {
    let post = Posterior::new(&cfg.model, ds, &cfg.spec, &cfg.posterior)?;
    let n = ds.subjects.len();
    let done = AtomicUsize::new(0);
    let subjects: Vec<SubjectResult> = (0..n)
        .into_par_iter()
        .map(|i| {
            let map = post.map_subject(i);
            let draws = post.sample(i, &map);
            let draw_parameters = draws.eta.iter().map(|e| post.individual_parameters(i, e)).collect();
            let sequential = if cfg.sequential.is_some() { post.sequential(i) } else { Vec::new() };
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, n);
            SubjectResult { map, draws, draw_parameters, sequential }
        })
        .collect();
    let warnings = subjects
        .iter()
        .flat_map(|s| {
            s.map.warnings.iter().map(move |w| {
                if w.contains(&s.map.id) {
                    w.clone()
                } else {
                    format!("subject `{}`: {w}", s.map.id)
                }
            })
        })
        .collect();
    Ok(AssimilateResult {
        eta_names: post.eta_names().to_vec(),
        parameter_names: post.parameter_names().to_vec(),
        subjects,
        warnings,
        ode_solves: post.ode_solves(),
    })
}

/// Reads the dataset, runs [`assimilate`] and writes every output file into `out`.
pub fn run(
    cfg: &BayesConfig,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<AssimilateResult, BayesError> {
    let ds = cfg.load_dataset()?;
    let res = assimilate(cfg, &ds, progress)?;
    write_outputs(cfg, &ds, &res, out)?;
    Ok(res)
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "NaN".into()
    }
}

/// The scalar parameters reported in estimates.csv (declared `random:` ones are the η columns).
fn reported_parameters(cfg: &BayesConfig, res: &AssimilateResult) -> Vec<(usize, String)> {
    res.parameter_names
        .iter()
        .enumerate()
        .filter(|(_, n)| cfg.model.params().iter().any(|p| &p.name == *n && p.kind != ParamKind::Random))
        .map(|(i, n)| (i, n.clone()))
        .collect()
}

/// `estimates.csv`'s text.
pub fn estimates_csv(cfg: &BayesConfig, res: &AssimilateResult) -> String {
    let params = reported_parameters(cfg, res);
    let mut s = String::from("ID");
    for n in &res.eta_names {
        s += &format!(",{n}");
    }
    for (_, n) in &params {
        s += &format!(",{n}");
    }
    s += ",OFV";
    for n in &res.eta_names {
        s += &format!(",SD_{n}");
    }
    s += ",N_OBS,CONVERGED,METHOD,ESS\n";
    for r in &res.subjects {
        let m = &r.map;
        let mut row = vec![m.id.clone()];
        row.extend(m.eta.iter().map(|v| num(*v)));
        row.extend(params.iter().map(|(i, _)| num(m.parameters.get(*i).copied().unwrap_or(f64::NAN))));
        row.push(num(m.ofv));
        row.extend(m.sd.iter().map(|v| num(*v)));
        row.push(m.n_obs.to_string());
        row.push(u8::from(m.converged).to_string());
        row.push(r.draws.method.name().to_string());
        row.push(r.draws.ess.map_or(String::new(), num));
        let _ = writeln!(s, "{}", row.join(","));
    }
    s
}

/// `predictions.csv`'s text.
pub fn predictions_csv(res: &AssimilateResult) -> String {
    let mut s = String::from("ID,TIME,DV,PRED,IPRED,OUTPUT,CENS,LINE\n");
    for r in &res.subjects {
        for p in &r.map.predictions {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{}",
                r.map.id,
                p.time,
                num(p.dv),
                num(p.pred),
                num(p.ipred),
                p.output,
                u8::from(p.censored),
                p.line
            );
        }
    }
    s
}

/// `sequential.csv`'s text.
pub fn sequential_csv(res: &AssimilateResult) -> String {
    let mut s = format!("ID,STEP,TIME,OUTPUT,DV,PREDICTED,ERROR,{}\n", res.eta_names.join(","));
    for r in &res.subjects {
        for st in &r.sequential {
            let eta: Vec<String> = st.eta.iter().map(|v| num(*v)).collect();
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{}",
                r.map.id,
                st.n_used,
                st.time,
                st.output,
                num(st.dv),
                num(st.predicted),
                num(st.error),
                eta.join(",")
            );
        }
    }
    s
}

/// `posterior.json`'s content.
pub fn posterior_json(cfg: &BayesConfig, ds: &Dataset, res: &AssimilateResult) -> PosteriorJson {
    let q = res.eta_names.len();
    let om = cfg.spec.omega.matrix();
    let params = reported_parameters(cfg, res);
    PosteriorJson {
        name: cfg.name.clone(),
        model: cfg.model_key.clone(),
        data: ds.file.clone(),
        method: cfg.posterior.method.name().to_string(),
        seed: cfg.posterior.seed,
        eta_names: res.eta_names.clone(),
        population: PopulationJson {
            theta: cfg.spec.theta.iter().cloned().collect(),
            fixed: cfg.spec.fixed.iter().cloned().collect(),
            omega: (0..q).map(|i| (0..q).map(|j| om[(i, j)]).collect()).collect(),
            outputs: cfg
                .observed
                .iter()
                .map(|o| OutputJson {
                    name: o.name.clone(),
                    error: o.error.name().into(),
                    sigma: o.sigma.clone(),
                    lloq: o.lloq,
                })
                .collect(),
        },
        subjects: res
            .subjects
            .iter()
            .map(|r| {
                let m = &r.map;
                SubjectJson {
                    id: m.id.clone(),
                    eta: m.eta.clone(),
                    covariance: (0..q).map(|i| m.covariance[i * q..(i + 1) * q].to_vec()).collect(),
                    sd: m.sd.clone(),
                    ofv: m.ofv.is_finite().then_some(m.ofv),
                    converged: m.converged,
                    n_obs: m.n_obs,
                    method: r.draws.method.name().into(),
                    ess: r.draws.ess,
                    acceptance: r.draws.acceptance,
                    draws: r.draws.eta.len(),
                    parameters: params
                        .iter()
                        .map(|(i, n)| (n.clone(), m.parameters.get(*i).copied().unwrap_or(f64::NAN)))
                        .collect::<BTreeMap<_, _>>(),
                    warnings: m.warnings.clone(),
                }
            })
            .collect(),
        warnings: res.warnings.clone(),
    }
}

/// A file-name-safe form of a subject ID.
pub fn file_id(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

/// Writes estimates.csv, predictions.csv, draws.csv, posterior.json,
/// sequential.csv (with `[sequential]`) and `subject_<ID>.png` into `out`.
pub fn write_outputs(cfg: &BayesConfig, ds: &Dataset, res: &AssimilateResult, out: &Path) -> Result<(), BayesError> {
    std::fs::create_dir_all(out)
        .map_err(|e| BayesError::Io { path: out.display().to_string(), reason: e.to_string() })?;
    let write = |name: &str, text: &str| crate::atomic::write_bytes(&out.join(name), text.as_bytes());
    write("estimates.csv", &estimates_csv(cfg, res))?;
    write("predictions.csv", &predictions_csv(res))?;
    let draws: Vec<(String, Vec<Vec<f64>>)> =
        res.subjects.iter().map(|r| (r.map.id.clone(), r.draws.eta.clone())).collect();
    write("draws.csv", &crate::posterior_dir::draws_csv(&res.eta_names, &draws))?;
    let json = serde_json::to_string_pretty(&posterior_json(cfg, ds, res)).map_err(|e| BayesError::Io {
        path: out.join("posterior.json").display().to_string(),
        reason: e.to_string(),
    })?;
    write("posterior.json", &json)?;
    if cfg.sequential.is_some() {
        write("sequential.csv", &sequential_csv(res))?;
    }
    if let Some(f) = filter_subjects(cfg, ds, res)? {
        write("filtered.csv", &filtered_csv(cfg, &f))?;
        let json = serde_json::to_string_pretty(&filter_json(&f)).map_err(|e| BayesError::Io {
            path: out.join("filter.json").display().to_string(),
            reason: e.to_string(),
        })?;
        write("filter.json", &json)?;
    }
    subject_plots(cfg, ds, res, out)
}

/// What `[filter]` computed: per subject, the filter at its MAP parameters.
#[derive(Debug, Clone)]
pub struct FilterOutcome {
    /// The filter used.
    pub method: FilterMethod,
    /// Per subject, dataset order.
    pub subjects: Vec<SubjectFilter>,
    /// The common noise scale by maximum filter likelihood (`estimate_noise`).
    pub noise: Option<NoiseEstimate>,
}

/// Filters every subject's latent states at its MAP parameters (`[filter]`;
/// `None` without it): the model's declared process noise, the observed
/// outputs' error models, doses from the dataset.
pub fn filter_subjects(
    cfg: &BayesConfig,
    ds: &Dataset,
    res: &AssimilateResult,
) -> Result<Option<FilterOutcome>, BayesError> {
    let Some(settings) = &cfg.filter else { return Ok(None) };
    let central = cfg.model.state_names().iter().position(|s| *s == "central").map_or(1, |i| i + 1);
    let default_obs = cfg.spec.obs_cmt.unwrap_or(central);
    let outputs: Vec<DatasetOutput> = cfg
        .observed
        .iter()
        .map(|o| {
            Ok(DatasetOutput {
                output: FilterOutput::new(&cfg.model, &o.name, o.error, &o.sigma)?,
                cmt: o.cmt.unwrap_or(default_obs),
            })
        })
        .collect::<Result<_, EstimationError>>()?;
    let params: Vec<Vec<f64>> = res.subjects.iter().map(|r| r.map.parameters.clone()).collect();
    let opts = DatasetFilterOptions {
        method: settings.method,
        filter: FilterOptions { particles: settings.particles, seed: settings.seed, ..FilterOptions::default() },
        dose_cmt: cfg.spec.dose_cmt.unwrap_or(1),
        initial_cov: None,
    };
    let noise = if settings.estimate_noise {
        Some(estimate_dataset_noise_scale(&cfg.model, ds, &params, &outputs, &opts, 1e-3, 1e3)?)
    } else {
        None
    };
    let subjects = filter_dataset(&cfg.model, ds, &params, &outputs, &opts)?;
    Ok(Some(FilterOutcome { method: settings.method, subjects, noise }))
}

/// `filtered.csv`: `ID,TIME,LINE,OUTPUT,DV,PREDICTED,PREDICTED_SD,<state>...,SD_<state>...,LOGLIK`
/// (one row per observation record; PREDICTED and its SD before the
/// observation is assimilated, SD on the comparison scale; the states'
/// filtered mean and SD after it; LOGLIK the subject's total).
pub fn filtered_csv(cfg: &BayesConfig, f: &FilterOutcome) -> String {
    let states = cfg.model.state_names();
    let mut s = String::from("ID,TIME,LINE,OUTPUT,DV,PREDICTED,PREDICTED_SD");
    for n in &states {
        s += &format!(",{n}");
    }
    for n in &states {
        s += &format!(",SD_{n}");
    }
    s += ",LOGLIK\n";
    let n = states.len();
    for sub in &f.subjects {
        for st in &sub.result.steps {
            let mut row = vec![
                sub.id.clone(),
                num(st.time),
                st.line.map_or(String::new(), |l| l.to_string()),
                cfg.observed.get(st.output).map_or(String::new(), |o| o.name.clone()),
                st.observed.map_or(String::new(), num),
                num(st.predicted),
                num(st.predicted_variance.sqrt()),
            ];
            row.extend(st.mean.iter().map(|v| num(*v)));
            row.extend((0..n).map(|k| num(st.cov.get(k * n + k).copied().unwrap_or(f64::NAN).max(0.0).sqrt())));
            row.push(num(sub.result.log_likelihood));
            let _ = writeln!(s, "{}", row.join(","));
        }
    }
    s
}

/// `filter.json`: method, per-subject log-likelihood and warnings, the total,
/// and the noise-scale estimate when asked for.
fn filter_json(f: &FilterOutcome) -> serde_json::Value {
    let fin = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null };
    let total: f64 = f.subjects.iter().map(|s| s.result.log_likelihood).sum();
    serde_json::json!({
        "method": format!("{:?}", f.method).to_ascii_lowercase(),
        "log_likelihood": fin(total),
        "subjects": f.subjects.iter().map(|s| serde_json::json!({
            "id": s.id, "log_likelihood": fin(s.result.log_likelihood), "steps": s.result.steps.len(), "warnings": s.warnings,
        })).collect::<Vec<_>>(),
        "noise_scale": f.noise.as_ref().map(|n| serde_json::json!({
            "value": fin(n.value), "log_likelihood": fin(n.log_likelihood), "evaluations": n.evaluations, "at_bound": n.at_bound,
        })),
    })
}

/// `subject_<ID>.png`: data, IPRED on a fine grid and the draws' 90% band.
fn subject_plots(cfg: &BayesConfig, ds: &Dataset, res: &AssimilateResult, out: &Path) -> Result<(), BayesError> {
    let outputs: Vec<OutputPlan> =
        cfg.observed.iter().map(|o| OutputPlan { name: o.name.clone(), error: None, threshold: None }).collect();
    for (i, (subj, r)) in ds.subjects.iter().zip(&res.subjects).enumerate() {
        let t0 = subj.records.iter().map(|r| r.time).fold(f64::INFINITY, f64::min).min(0.0);
        let t1 = subj.records.iter().map(|r| r.time).fold(f64::NEG_INFINITY, f64::max);
        let horizon = if t1 > t0 { (t1 - t0) * 1.1 } else { 24.0 };
        let plan = ForecastPlan {
            outputs: outputs.clone(),
            horizon,
            step: horizon / 200.0,
            summary_step: horizon / 200.0,
            auc: vec![(0.0, horizon)],
            residual: false,
            seed: cfg.posterior.seed,
            bands: true,
            ode: cfg.ode,
            dose_cmt: cfg.spec.dose_cmt,
            force_diffsol: false,
        };
        let fc = Forecaster::new(&cfg.model, plan)
            .map_err(|reason| BayesError::Config { file: cfg.source.clone(), reason })?;
        let none = CandidateRegimen { name: "history".into(), records: Vec::new(), source: String::new() };
        // The MAP alone (its line), then the draws (their band).
        let fit = fc
            .forecast_subject(ds, subj, i, t0, std::slice::from_ref(&r.map.parameters), std::slice::from_ref(&none))
            .map_err(|(regimen, reason)| BayesError::Forecast { subject: subj.id.clone(), regimen, reason })?;
        let band = fc
            .forecast_subject(ds, subj, i, t0, &r.draw_parameters, std::slice::from_ref(&none))
            .map_err(|(regimen, reason)| BayesError::Forecast { subject: subj.id.clone(), regimen, reason })?;
        let (fit, band) = (&fit[0], &band[0]);
        let panels: Vec<BandPanel> = cfg
            .observed
            .iter()
            .enumerate()
            .map(|(o, out)| BandPanel {
                title: format!("ID {} · {}", subj.id, out.name),
                obs: r.map.predictions.iter().filter(|p| p.output == out.name).map(|p| (p.time, p.dv)).collect(),
                lines: vec![fit.times.iter().zip(&fit.bands[o]).map(|(t, q)| (*t, q[2])).collect()],
                bands: vec![band.times.iter().zip(&band.bands[o]).map(|(t, q)| (*t, q[0], q[4])).collect()],
            })
            .collect();
        let path = out.join(format!("subject_{}.png", file_id(&subj.id)));
        crate::plots::band_panels(
            &path,
            &format!("{}: subject {} (individual fit, 90% band of the posterior)", cfg.name, subj.id),
            &panels,
        )
        .map_err(|reason| BayesError::Write(crate::atomic::WriteError { path, reason }))?;
    }
    Ok(())
}
