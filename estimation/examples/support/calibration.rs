//! Calibration of forecasts (issue 12, item 3): virtual subjects on a
//! multiple-dose oral regimen; the posterior from their first two samples;
//! the posterior predictive (parameter and residual uncertainty) of their
//! later samples; coverage of its central 50/80/90/95% intervals.
//!
//! Used by `examples/calibration.rs` (the full table) and
//! `tests/calibration.rs` (a lighter run).

use std::time::Instant;

use insilico_estimation::focei::{self, CovarianceStep, FitOptions};
use insilico_estimation::posterior::{Posterior, PosteriorOptions, SamplingMethod};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_model::{Model, ModelSystem};
use insilico_solvers::data::{Dataset, ReadOptions};
use insilico_solvers::Options;
use rayon::prelude::*;

use super::{covers, normal, observe, params, predict, rng, uniform};

/// Nominal levels of the central prediction intervals.
pub const LEVELS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];
/// 100 mg orally every 12 h, six doses (into the depot, CMT 1).
pub const DOSES: [(f64, f64); 6] =
    [(0.0, 100.0), (12.0, 100.0), (24.0, 100.0), (36.0, 100.0), (48.0, 100.0), (60.0, 100.0)];
/// The two assimilated samples: one uniformly in each window (after the first dose).
pub const FIT_WINDOWS: [(f64, f64); 2] = [(1.0, 3.0), (9.0, 11.5)];
/// The forecast samples: troughs before the third and sixth dose, a peak
/// after the fourth, the trough 12 h after the last dose.
pub const FORECAST_TIMES: [f64; 4] = [23.5, 37.5, 59.5, 71.5];
/// Residual error of the truth and of the model: combined2, a = 0.05 mg/L, b = 0.1.
pub const ERROR: ErrorModel = ErrorModel::Combined2;
/// σ of [`ERROR`].
pub const SIGMA: [f64; 2] = [0.05, 0.1];

/// A population that generates virtual subjects: a model, typical values,
/// log-normal random effects (diagonal Ω, variances) and the residual error above.
#[derive(Debug, Clone)]
pub struct Truth {
    /// The zoo model.
    pub model: &'static str,
    /// Typical values of every scalar parameter.
    pub theta: Vec<(&'static str, f64)>,
    /// ω² of log-normal effects.
    pub omega2: Vec<(&'static str, f64)>,
}

/// The well-specified truth: the zoo's pk-1cmt-oral.
pub fn linear_truth() -> Truth {
    Truth {
        model: "pk-1cmt-oral",
        theta: vec![("ka", 1.0), ("CL", 4.0), ("V", 40.0)],
        omega2: vec![("ka", 0.2), ("CL", 0.1), ("V", 0.1)],
    }
}

/// The misspecified truth: Michaelis–Menten elimination (pk-1cmt-oral-mm),
/// VMAX/KM = 7.5 L/h at low concentration, about 5 L/h at the typical
/// steady-state average (2.5 mg/L).
pub fn michaelis_menten_truth() -> Truth {
    Truth {
        model: "pk-1cmt-oral-mm",
        theta: vec![("ka", 1.0), ("VMAX", 15.0), ("KM", 2.0), ("V", 40.0)],
        omega2: vec![("ka", 0.2), ("VMAX", 0.1), ("V", 0.1)],
    }
}

/// One virtual subject: sample times and observations (with residual error).
#[derive(Debug, Clone)]
pub struct VirtualSubject {
    /// Sample times.
    pub times: Vec<f64>,
    /// Observations at `times`.
    pub dv: Vec<f64>,
}

/// `n` subjects of `truth` with samples at `times(rng)`, seeded (stream = subject).
pub fn simulate(
    truth: &Truth,
    n: usize,
    seed: u64,
    times: impl Fn(&mut rand_chacha::ChaCha8Rng) -> Vec<f64> + Sync,
) -> Result<Vec<VirtualSubject>, String> {
    let model = insilico_models_zoo::load(truth.model).map_err(|e| e.to_string())?;
    let sys = ModelSystem::new(&model, &[]).map_err(|e| e.to_string())?;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut r = rng(seed, i as u64);
            let mut values = truth.theta.clone();
            for (name, w2) in &truth.omega2 {
                let e = w2.sqrt() * normal(&mut r);
                values.iter_mut().filter(|(n, _)| n == name).for_each(|(_, v)| *v *= e.exp());
            }
            let p = params(&model, &values)?;
            let t = times(&mut r);
            let f = predict(&sys, &p, 0, &DOSES, &t, 1e-10).map_err(|e| e.to_string())?;
            let dv = f.iter().map(|&f| observe(&mut r, f, ERROR, &SIGMA)).collect();
            Ok(VirtualSubject { times: t, dv })
        })
        .collect()
}

/// The calibration design: two samples in [`FIT_WINDOWS`], then [`FORECAST_TIMES`].
pub fn calibration_times(r: &mut rand_chacha::ChaCha8Rng) -> Vec<f64> {
    let mut t: Vec<f64> = FIT_WINDOWS.iter().map(|&(lo, hi)| (uniform(r, lo, hi) * 100.0).round() / 100.0).collect();
    t.extend(FORECAST_TIMES);
    t
}

/// A rich design for fitting a population model: 1, 2, 4, 8, 11.5 h after the
/// first dose and 0.5, 2, 4, 8, 11.5 h after the last.
pub fn training_times(_r: &mut rand_chacha::ChaCha8Rng) -> Vec<f64> {
    vec![1.0, 2.0, 4.0, 8.0, 11.5, 60.5, 62.0, 64.0, 68.0, 71.5]
}

/// A NONMEM dataset of `subjects` with the doses and the first `n_obs`
/// samples of each (all samples when `None`).
pub fn dataset(subjects: &[VirtualSubject], n_obs: Option<usize>) -> Result<Dataset, String> {
    let mut csv = String::from("ID,TIME,AMT,DV,EVID,CMT\n");
    for (i, s) in subjects.iter().enumerate() {
        let k = n_obs.unwrap_or(s.times.len()).min(s.times.len());
        let mut rows: Vec<(f64, String)> =
            DOSES.iter().map(|&(t, a)| (t, format!("{},{t},{a},.,1,1\n", i + 1))).collect();
        rows.extend((0..k).map(|j| (s.times[j], format!("{},{},0,{},0,2\n", i + 1, s.times[j], s.dv[j]))));
        // Doses first at equal times; the sort is stable.
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, r) in rows {
            csv += &r;
        }
    }
    Dataset::from_str("virtual.csv", &csv, &ReadOptions::default()).map_err(|e| e.to_string())
}

/// The population the forecaster uses: a spec on the zoo's linear
/// pk-1cmt-oral.
pub fn linear_spec(theta: [f64; 3], omega2: [f64; 3], sigma: [f64; 2]) -> Result<PopulationSpec, String> {
    let mut spec = PopulationSpec::log_normal(
        &[("ka", theta[0]), ("CL", theta[1]), ("V", theta[2])],
        &[("ka", omega2[0]), ("CL", omega2[1]), ("V", omega2[2])],
        ERROR,
        &sigma,
    )
    .map_err(|e| e.to_string())?;
    spec.dose_cmt = Some(1);
    spec.obs_cmt = Some(2);
    Ok(spec)
}

/// The true population as the forecaster's spec (well-specified case).
pub fn true_linear_spec() -> Result<PopulationSpec, String> {
    let t = linear_truth();
    let v = |list: &[(&str, f64)], k: &str| list.iter().find(|(n, _)| *n == k).map_or(f64::NAN, |(_, v)| *v);
    linear_spec(
        [v(&t.theta, "ka"), v(&t.theta, "CL"), v(&t.theta, "V")],
        [v(&t.omega2, "ka"), v(&t.omega2, "CL"), v(&t.omega2, "V")],
        SIGMA,
    )
}

/// FOCE-I fit of the linear model to `training` (the misspecified case:
/// the forecaster's population is what a modeller would have estimated from
/// rich data of the Michaelis–Menten truth). Returns the spec and a line
/// describing the estimates.
pub fn fit_linear(training: &[VirtualSubject]) -> Result<(PopulationSpec, String), String> {
    let model = insilico_models_zoo::load("pk-1cmt-oral").map_err(|e| e.to_string())?;
    let data = dataset(training, None)?;
    let start = true_linear_spec()?;
    let opts = FitOptions { covariance: CovarianceStep::None, ..FitOptions::default() };
    let t0 = Instant::now();
    let est = focei::fit(&model, &data, &start, &opts).map_err(|e| e.to_string())?;
    let theta = [est.parameters[0].value, est.parameters[1].value, est.parameters[2].value];
    let omega2 = [est.omega[0][0], est.omega[1][1], est.omega[2][2]];
    let sig = |n: &str| est.parameters.iter().find(|p| p.name == n).map(|p| p.value);
    let sigma = [sig("sigma_a").ok_or("no sigma_a")?, sig("sigma_b").ok_or("no sigma_b")?];
    let text = format!(
        "FOCE-I fit of the linear model to {} rich subjects of the MM truth ({:.1} s, {}converged): \
         ka {:.3}, CL {:.3}, V {:.2}; ω² {:.3}, {:.3}, {:.3}; σ a {:.4}, b {:.4}; OFV {:.2}",
        training.len(),
        t0.elapsed().as_secs_f64(),
        if est.converged { "" } else { "NOT " },
        theta[0],
        theta[1],
        theta[2],
        omega2[0],
        omega2[1],
        omega2[2],
        sigma[0],
        sigma[1],
        est.ofv
    );
    Ok((linear_spec(theta, omega2, sigma)?, text))
}

/// How the forecaster represents the posterior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Represent {
    /// Draws of the posterior ([`Posterior::sample`] with this method).
    Draws(SamplingMethod),
    /// The MAP alone, residual error only (no parameter uncertainty): the
    /// reference that shows what ignoring the posterior's spread costs.
    MapOnly,
}

impl Represent {
    /// Label in tables.
    pub fn label(&self) -> String {
        match self {
            Represent::Draws(SamplingMethod::Laplace) => "Laplace (Gaussian) draws".into(),
            Represent::Draws(SamplingMethod::Auto) => "SIR (MCMC when ESS low)".into(),
            Represent::Draws(SamplingMethod::Sir) => "SIR draws".into(),
            Represent::Draws(SamplingMethod::Mcmc) => "MCMC (random-walk Metropolis) draws".into(),
            Represent::MapOnly => "MAP only (no η uncertainty)".into(),
        }
    }
}

/// Coverage of one forecaster over the subjects.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// How the posterior was represented.
    pub represent: Represent,
    /// Forecast observations inside each [`LEVELS`] interval.
    pub hits: [usize; 4],
    /// Forecast observations.
    pub total: usize,
    /// Mean width of the 90% interval relative to the median.
    pub rel_width90: f64,
    /// Subjects whose Auto sampling fell back to MCMC.
    pub mcmc: usize,
    /// Mean SIR effective sample size (over subjects that used SIR).
    pub mean_ess: Option<f64>,
    /// MAP searches that did not converge.
    pub nonconverged: usize,
    /// Wall time (MAP, sampling, forecasts).
    pub seconds: f64,
}

impl Coverage {
    /// Coverage at level `k` in percent.
    pub fn percent(&self, k: usize) -> f64 {
        100.0 * self.hits[k] as f64 / self.total as f64
    }
    /// A table row.
    pub fn row(&self, scenario: &str) -> String {
        let ess = self.mean_ess.map_or("–".into(), |e| format!("{e:.0}"));
        format!(
            "| {scenario} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {ess} | {} | {:.0} s |",
            self.represent.label(),
            self.percent(0),
            self.percent(1),
            self.percent(2),
            self.percent(3),
            self.rel_width90,
            self.mcmc,
            self.seconds
        )
    }
}

/// Header of [`Coverage::row`] tables.
pub const TABLE_HEADER: &str = "| truth | posterior | 50% | 80% | 90% | 95% | 90% PI width / median | mean SIR ESS | subjects sampled by MCMC | time |\n|---|---|---|---|---|---|---|---|---|---|";

/// Assimilates the first two samples of each subject under `spec`
/// (the linear model), forecasts the others from `draws` posterior draws
/// (each simulated through the ODE engine, plus residual error) and counts
/// how often the observation falls in each central interval.
pub fn coverage(
    spec: &PopulationSpec,
    subjects: &[VirtualSubject],
    represent: Represent,
    draws: usize,
    seed: u64,
) -> Result<Coverage, String> {
    let t0 = Instant::now();
    let model: Model = insilico_models_zoo::load("pk-1cmt-oral").map_err(|e| e.to_string())?;
    let sys = ModelSystem::new(&model, &[]).map_err(|e| e.to_string())?;
    let data = dataset(subjects, Some(FIT_WINDOWS.len()))?;
    let method = match represent {
        Represent::Draws(m) => m,
        Represent::MapOnly => SamplingMethod::Laplace,
    };
    let opts = PosteriorOptions {
        method,
        draws,
        seed,
        ess_min: draws as f64 / 2.0,
        ode: Options { rtol: 1e-6, atol: 1e-9, max_steps: 1_000_000 },
        ..PosteriorOptions::default()
    };
    let post = Posterior::new(&model, &data, spec, &opts).map_err(|e| e.to_string())?;
    let n_fit = FIT_WINDOWS.len();
    // Per subject: hits per level, total, sum of relative widths, used MCMC, SIR ESS, converged.
    type Row = ([usize; 4], usize, f64, bool, Option<f64>, bool);
    let rows: Vec<Result<Row, String>> = (0..subjects.len())
        .into_par_iter()
        .map(|i| {
            let map = post.map_subject(i);
            let etas: Vec<Vec<f64>> = match represent {
                Represent::MapOnly => vec![map.eta.clone()],
                Represent::Draws(_) => {
                    let d = post.sample(i, &map);
                    if d.eta.is_empty() {
                        return Err(format!("subject {}: no posterior draws", i + 1));
                    }
                    let used_mcmc = d.method == SamplingMethod::Mcmc;
                    let ess = if d.method == SamplingMethod::Sir { d.ess } else { None };
                    return forecast(&post, &sys, i, &subjects[i], &d.eta, draws, seed, n_fit)
                        .map(|(h, n, w)| (h, n, w, used_mcmc, ess, map.converged));
                }
            };
            forecast(&post, &sys, i, &subjects[i], &etas, draws, seed, n_fit)
                .map(|(h, n, w)| (h, n, w, false, None, map.converged))
        })
        .collect();
    let mut cov = Coverage {
        represent,
        hits: [0; 4],
        total: 0,
        rel_width90: 0.0,
        mcmc: 0,
        mean_ess: None,
        nonconverged: 0,
        seconds: 0.0,
    };
    let (mut ess_sum, mut ess_n) = (0.0, 0usize);
    for r in rows {
        let (h, n, w, mcmc, ess, conv) = r?;
        for (acc, h) in cov.hits.iter_mut().zip(h) {
            *acc += h;
        }
        cov.total += n;
        cov.rel_width90 += w;
        cov.mcmc += mcmc as usize;
        cov.nonconverged += (!conv) as usize;
        if let Some(e) = ess {
            ess_sum += e;
            ess_n += 1;
        }
    }
    cov.rel_width90 /= cov.total.max(1) as f64;
    cov.mean_ess = (ess_n > 0).then(|| ess_sum / ess_n as f64);
    cov.seconds = t0.elapsed().as_secs_f64();
    Ok(cov)
}

/// The posterior predictive of subject `i`'s forecast samples: `n` draws,
/// the `d`-th from η draw `etas[d % etas.len()]` (its trajectory through the
/// ODE engine) plus one residual error per sample (seeded, stream =
/// subject). Returns hits per level, the number of samples, and the sum of
/// 90% widths over medians.
#[allow(clippy::too_many_arguments)]
fn forecast(
    post: &Posterior,
    sys: &ModelSystem,
    i: usize,
    s: &VirtualSubject,
    etas: &[Vec<f64>],
    n: usize,
    seed: u64,
    n_fit: usize,
) -> Result<([usize; 4], usize, f64), String> {
    let times = &s.times[n_fit..];
    let sigma = &post.observed_outputs()[0].sigma;
    let mut r = rng(seed ^ 0x5eed_f0ca_57ed, i as u64);
    let trajectories: Vec<Vec<f64>> = etas
        .iter()
        .map(|eta| {
            let p = post.individual_parameters(i, eta);
            predict(sys, &p, 0, &DOSES, times, 1e-6).map_err(|e| format!("subject {}: {e}", i + 1))
        })
        .collect::<Result<_, _>>()?;
    let mut samples = vec![Vec::with_capacity(n); times.len()];
    for d in 0..n {
        for (j, &f) in trajectories[d % trajectories.len()].iter().enumerate() {
            samples[j].push(observe(&mut r, f, ERROR, sigma));
        }
    }
    let mut hits = [0usize; 4];
    let mut width = 0.0;
    for (j, mut ys) in samples.into_iter().enumerate() {
        ys.sort_by(f64::total_cmp);
        let y = s.dv[n_fit + j];
        for (k, &level) in LEVELS.iter().enumerate() {
            hits[k] += covers(&ys, level, y) as usize;
        }
        let med = super::quantile(&ys, 0.5);
        width += (super::quantile(&ys, 0.95) - super::quantile(&ys, 0.05)) / med.abs().max(1e-12);
    }
    Ok((hits, times.len(), width))
}

/// Binomial standard deviation (percentage points) of a coverage estimate at
/// level `p` from `n` independent forecasts.
pub fn binomial_sd(p: f64, n: usize) -> f64 {
    100.0 * (p * (1.0 - p) / n as f64).sqrt()
}
