//! Latent-state filtering of a tumour burden observed through noisy imaging
//! (issue 12): logistic growth with multiplicative process noise, killed by
//! a drug given every 4 days; imaging with 10% proportional error.
//!
//! Simulates one patient from the model's SDE, filters the images with the
//! extended and unscented Kalman filters and the particle filter, prints the filtered
//! trajectories side by side, then estimates the process-noise level `s`
//! by maximising the EKF likelihood.
//!
//! ```text
//! cargo run --release -p insilico-estimation --example filter_tumour [PARTICLES]
//! ```

use std::time::Instant;

use insilico_estimation::filter::{Filter, FilterMethod, FilterOptions, Measurement, ObservedOutput};
use insilico_estimation::{ErrorModel, EstimationError};
use insilico_model::Model;
use insilico_solvers::{Dose, Schedule};

const TUMOUR: &str = "
parameters: r = 0.25, K = 100, kkill = 0.04, ke = 0.3, s = 0.08
states: drug, tumour
tumour(0) = 20
d/dt(drug) = -ke * drug
d/dt(tumour) = r * tumour * (1 - tumour / K) - kkill * drug * tumour
noise: tumour ~ s * tumour
output: tumour
";

fn main() -> Result<(), EstimationError> {
    let particles: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let model = Model::parse(TUMOUR, "tumour")?;
    let truth = [0.25, 100.0, 0.04, 0.3, 0.08];
    let out = ObservedOutput::new(&model, "tumour", ErrorModel::Proportional, &[0.1])?;
    let opts = FilterOptions { particles, substep: 0.01, seed: 7, ..FilterOptions::default() };
    let filter =
        Filter::new(&model, &truth, &[], &[out])?.with_initial(&[0.0, 20.0], &[0.0, 0.0, 0.0, 9.0])?.with_options(opts);
    let schedule = Schedule::new().dose(Dose::bolus(4.0, 0, 10.0).repeated(4.0, 5));
    let times: Vec<Measurement> = (1..=20).map(|k| Measurement::predict(2.0 * k as f64, 0)).collect();
    let (images, states) = filter.simulate(&schedule, &times)?;

    let t = Instant::now();
    let ekf = filter.run(&schedule, &images, FilterMethod::Ekf)?;
    let t_ekf = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ukf = filter.run(&schedule, &images, FilterMethod::Ukf)?;
    let t_ukf = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pf = filter.run(&schedule, &images, FilterMethod::Particle)?;
    let t_pf = t.elapsed().as_secs_f64();

    println!("tumour burden: truth, image, filtered mean ± SD (EKF | UKF | particle filter, {particles} particles)");
    println!("  day    true   image |   EKF mean    SD |   UKF mean    SD |    PF mean    SD |   ESS");
    for (((e, u), p), x) in ekf.steps.iter().zip(&ukf.steps).zip(&pf.steps).zip(&states) {
        println!(
            "{:5} {:7.2} {:7.2} | {:10.3} {:5.2} | {:10.3} {:5.2} | {:10.3} {:5.2} | {:5.0}",
            e.time,
            x[1],
            e.observed.unwrap_or(f64::NAN),
            e.mean[1],
            e.sd()[1],
            u.mean[1],
            u.sd()[1],
            p.mean[1],
            p.sd()[1],
            p.ess.unwrap_or(f64::NAN)
        );
    }
    let gap_m =
        ekf.steps.iter().zip(&pf.steps).map(|(e, p)| (e.mean[1] - p.mean[1]).abs() / p.sd()[1]).fold(0.0, f64::max);
    let gap_v = ekf.steps.iter().zip(&pf.steps).map(|(e, p)| (e.cov[3] / p.cov[3] - 1.0).abs()).fold(0.0, f64::max);
    println!(
        "largest EKF-PF gap: mean {gap_m:.3} SD, variance {:.1}%; log-likelihood EKF {:.3}, UKF {:.3}, PF {:.3}",
        100.0 * gap_v,
        ekf.log_likelihood,
        ukf.log_likelihood,
        pf.log_likelihood
    );
    println!(
        "time: EKF {:.1} ms, UKF {:.1} ms, particle filter {:.1} ms (PF/EKF ratio {:.0})",
        1e3 * t_ekf,
        1e3 * t_ukf,
        1e3 * t_pf,
        t_pf / t_ekf
    );

    // The noise level from the likelihood: a longer record (nine 40-day
    // cycles of five doses then a pause, imaging every 2 days) simulated with
    // s = 0.08.
    let mut long_schedule = Schedule::new();
    for c in 0..9 {
        long_schedule = long_schedule.dose(Dose::bolus(40.0 * c as f64 + 4.0, 0, 10.0).repeated(4.0, 4));
    }
    let long_times: Vec<Measurement> = (1..=180).map(|k| Measurement::predict(2.0 * k as f64, 0)).collect();
    let (long_images, _) = filter.simulate(&long_schedule, &long_times)?;
    let est = filter.estimate_parameter("s", &long_schedule, &long_images, 0.005, 1.0)?;
    // Its standard error from the curvature of the log-likelihood in ln s.
    let ll = |s: f64| {
        let mut p = truth;
        p[4] = s;
        Filter::new(&model, &p, &[], filter.outputs())?
            .with_initial(&[0.0, 20.0], &[0.0, 0.0, 0.0, 9.0])?
            .log_likelihood(&long_schedule, &long_images)
    };
    let d = 0.01;
    let u = est.value.ln();
    let curv = (ll((u + d).exp())? - 2.0 * est.log_likelihood + ll((u - d).exp())?) / (d * d);
    println!(
        "noise level s: true 0.08, maximum-likelihood estimate {:.4} (SE of ln s {:.3}) from {} images ({} likelihood evaluations, log-likelihood {:.2})",
        est.value,
        (-1.0 / curv).sqrt(),
        long_images.len(),
        est.evaluations,
        est.log_likelihood
    );
    Ok(())
}
