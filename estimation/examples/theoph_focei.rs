//! FOCE-I on Theophylline (issue 11, item 1): the zoo's pk-1cmt-oral,
//! log-normal random effects on ka, CL and V (diagonal Ω), additive error,
//! compared with R nlme's maximum-likelihood fit of the same model
//! (scripts/theoph_nlme.R, output in estimation/tests/data/theoph_nlme.txt).
//!
//! ```text
//! cargo run --release -p insilico-estimation --example theoph_focei [path/to/theoph.csv]
//! ```

use std::time::Instant;

use insilico_estimation::focei::{self, CovarianceStep, FitOptions};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_solvers::data::{Dataset, ReadOptions};

const NLME: &str = include_str!("../tests/data/theoph_nlme.txt");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = match std::env::args().nth(1) {
        Some(path) => Dataset::from_path(&path, &ReadOptions::default())?,
        None => Dataset::from_str(
            "examples/data/theoph.csv",
            include_str!("../../examples/data/theoph.csv"),
            &ReadOptions::default(),
        )?,
    };
    let model = insilico_models_zoo::load("pk-1cmt-oral")?;
    let spec = PopulationSpec::log_normal(
        &[("ka", 1.5), ("CL", 2.8), ("V", 32.0)],
        &[("ka", 0.3), ("CL", 0.1), ("V", 0.05)],
        ErrorModel::Additive,
        &[0.7],
    )?;
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    // Knobs for measuring cost and accuracy: RTOL (ODE), INNER_TOL, METHOD (bdf, tsit45, ...), GRADIENT=fd|ift.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let mut base = FitOptions::default();
    if let Some(r) = env("RTOL") {
        base.ode.rtol = r;
    }
    if let Some(t) = env("INNER_TOL") {
        base.inner_tolerance = t;
    }
    if let Some(m) = std::env::var("METHOD").ok().and_then(|m| insilico_solvers::Method::parse(&m)) {
        base.method = m;
    }
    if std::env::var("GRADIENT").is_ok_and(|g| g == "fd") {
        base.gradient = focei::OuterGradient::FiniteDifference;
    }
    let opts = FitOptions { covariance: CovarianceStep::None, ..base };
    let t = Instant::now();
    for _ in 0..reps {
        focei::fit(&model, &data, &spec, &opts)?;
    }
    let per_fit = t.elapsed().as_secs_f64() / reps as f64;
    let quick = focei::fit(&model, &data, &spec, &opts)?;
    println!("without the covariance step: {} ODE solves, {} iterations", quick.ode_solves, quick.iterations);
    let est = focei::fit(&model, &data, &spec, &base)?;
    println!("{}", est.table());
    let r = |key: &str| -> f64 {
        NLME.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|x| x.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(f64::NAN)
    };
    println!("{:<10} {:>12} {:>12} {:>9}", "", "FOCE-I", "nlme (ML)", "rel.diff");
    let row = |name: &str, ours: f64, theirs: f64| {
        println!("{name:<10} {ours:>12.5} {theirs:>12.5} {:>8.2}%", 100.0 * (ours - theirs) / theirs);
    };
    for (k, name) in ["ka", "CL", "V"].iter().enumerate() {
        row(name, est.parameters[k].value, r(name));
    }
    for (k, name) in ["ka", "CL", "V"].iter().enumerate() {
        row(&format!("omega_{name}"), est.etas[k].sd, r(&format!("omega_sd_{name}")));
    }
    row("sigma", est.parameters[6].value, r("sigma_add"));
    row("-2LL", est.ofv_with_constant, r("m2ll_with_const"));
    row("-2LL-Nl2p", est.ofv, r("m2ll_no_const"));
    println!(
        "time per fit (no covariance step, mean of {reps}): {:.1} ms; with the covariance step: {:.1} ms; nlme (scripts/theoph_nlme.R, mean of 20): {:.1} ms",
        1e3 * per_fit,
        1e3 * (est.wall_seconds + est.covariance_seconds),
        1e3 * r("fit_seconds_mean_of_20")
    );
    Ok(())
}
