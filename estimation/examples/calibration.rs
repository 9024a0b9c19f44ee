//! Calibration of individual forecasts (issue 12, "What this issue must
//! show", item 3).
//!
//! ```text
//! cargo run --release -p insilico-estimation --example calibration -- [--subjects 1000] [--draws 500] [--seed 3] [--training 100]
//!     [--methods laplace,auto,map]      # any of laplace, sir, mcmc, auto, map
//! ```
//!
//! Virtual subjects receive 100 mg orally every 12 h (six doses). Their
//! first two samples (one in 1–3 h, one in 9–11.5 h) are assimilated with
//! the linear one-compartment oral model (the zoo's `pk-1cmt-oral`,
//! log-normal η on ka, CL, V, combined2 error); their next four samples
//! (23.5, 37.5, 59.5, 71.5 h) are forecast from the posterior predictive:
//! each posterior draw of η simulated through the ODE engine plus residual
//! error. The table gives how often the observation falls in the central
//! 50/80/90/95% prediction interval, for three representations of the
//! posterior: Laplace (Gaussian) draws, sampled draws (SIR from the Laplace
//! proposal, random-walk Metropolis when SIR's ESS is below half the draws)
//! and, as a reference, the MAP alone (residual error only).
//!
//! Two truths:
//! 1. well specified: the subjects come from the model itself (ka 1 /h,
//!    CL 4 L/h, V 40 L; ω² 0.2, 0.1, 0.1; a = 0.05 mg/L, b = 0.1), and the
//!    forecaster uses that population;
//! 2. misspecified: the subjects come from Michaelis–Menten elimination
//!    (`pk-1cmt-oral-mm`: VMAX 15 mg/h, KM 2 mg/L, ω² 0.1 on VMAX), while
//!    the forecaster keeps the linear model, with the population a modeller
//!    would have estimated by FOCE-I from rich data (`--training` subjects,
//!    10 samples each over the first and last dosing interval) of that truth.

#[path = "support/mod.rs"]
mod support;

use insilico_estimation::posterior::SamplingMethod;
use support::calibration::{self as cal, Represent};

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            args.get(i + 1).ok_or_else(|| format!("{name} needs a value"))?.parse().map_err(|e| format!("{name}: {e}"))
        }
    }
}

fn methods() -> Result<Vec<Represent>, String> {
    let args: Vec<String> = std::env::args().collect();
    let list = match args.iter().position(|a| a == "--methods") {
        None => "laplace,auto,map".to_string(),
        Some(i) => args.get(i + 1).cloned().ok_or("--methods needs a value")?,
    };
    list.split(',')
        .map(|m| match m.trim() {
            "map" => Ok(Represent::MapOnly),
            other => {
                SamplingMethod::parse(other).map(Represent::Draws).ok_or_else(|| format!("unknown method `{other}`"))
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = arg("--subjects", 1000)? as usize;
    let draws = arg("--draws", 500)? as usize;
    let seed = arg("--seed", 3)?;
    let n_train = arg("--training", 100)? as usize;
    println!(
        "{n} virtual subjects per truth, {draws} posterior draws each, seed {seed}, {} threads",
        rayon::current_num_threads()
    );
    let methods = methods()?;

    let linear = cal::simulate(&cal::linear_truth(), n, seed, cal::calibration_times)?;
    let spec = cal::true_linear_spec()?;
    let mut rows = Vec::new();
    for &m in &methods {
        let c = cal::coverage(&spec, &linear, m, draws, seed)?;
        println!("{}", c.row("linear (well specified)"));
        rows.push(c.row("linear (well specified)"));
    }

    let mm = cal::michaelis_menten_truth();
    let training = cal::simulate(&mm, n_train, seed + 1, cal::training_times)?;
    let (mm_spec, fit_text) = cal::fit_linear(&training)?;
    println!("{fit_text}");
    let subjects = cal::simulate(&mm, n, seed + 2, cal::calibration_times)?;
    for &m in &methods {
        let c = cal::coverage(&mm_spec, &subjects, m, draws, seed)?;
        println!("{}", c.row("Michaelis–Menten (model linear)"));
        rows.push(c.row("Michaelis–Menten (model linear)"));
    }

    let total = n * cal::FORECAST_TIMES.len();
    println!("\n{}", cal::TABLE_HEADER);
    for r in &rows {
        println!("{r}");
    }
    println!(
        "\n{total} forecast observations per row; binomial SD if independent: {:.1} / {:.1} / {:.1} / {:.1} points at 50/80/90/95%",
        cal::binomial_sd(0.5, total),
        cal::binomial_sd(0.8, total),
        cal::binomial_sd(0.9, total),
        cal::binomial_sd(0.95, total)
    );
    Ok(())
}
