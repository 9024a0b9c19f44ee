//! Issue 11, item 1: FOCE-I on Theophylline against R nlme's maximum-likelihood
//! fit of the same custom model (scripts/theoph_nlme.R; its output is kept in
//! tests/data/theoph_nlme.txt so this test does not need R).
//!
//! Data: ../shared/data/theoph.csv as it is (AMT in mg), byte-identical to
//! the repository copy examples/data/theoph.csv read here. Model: the zoo's
//! pk-1cmt-oral; log-normal random effects on ka, CL, V (diagonal Ω);
//! additive error.

use insilico_estimation::focei::{self, CovarianceStep, Estimate, FitOptions};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_solvers::data::{Dataset, ReadOptions};

const DATA: &str = include_str!("../../examples/data/theoph.csv");
const NLME: &str = include_str!("data/theoph_nlme.txt");

fn reference(key: &str) -> f64 {
    NLME.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{key} missing from tests/data/theoph_nlme.txt"))
}

fn fit(covariance: CovarianceStep) -> Estimate {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let data = Dataset::from_str("theoph.csv", DATA, &ReadOptions::default()).unwrap();
    let spec = PopulationSpec::log_normal(
        &[("ka", 1.5), ("CL", 2.8), ("V", 32.0)],
        &[("ka", 0.3), ("CL", 0.1), ("V", 0.05)],
        ErrorModel::Additive,
        &[0.7],
    )
    .unwrap();
    focei::fit(&model, &data, &spec, &FitOptions { covariance, ..FitOptions::default() }).unwrap()
}

#[test]
fn theophylline_matches_nlme() {
    let est = fit(CovarianceStep::Sandwich);
    println!("{}", est.table());
    assert!(est.converged, "outer optimisation did not converge");
    assert!(est.nonconverged.is_empty());
    assert_eq!(est.n_observations, reference("n_obs") as usize);
    // Typical values within 2% of nlme.
    for (k, name) in ["ka", "CL", "V"].iter().enumerate() {
        let (ours, theirs) = (est.parameters[k].value, reference(name));
        let rel = (ours - theirs).abs() / theirs;
        println!("{name}: ours {ours:.5}, nlme {theirs:.5}, rel {rel:.2e}");
        assert!(rel < 0.02, "{name}: {ours} vs nlme {theirs}");
    }
    // Random-effect SDs within 10%.
    for (k, name) in ["ka", "CL", "V"].iter().enumerate() {
        let (ours, theirs) = (est.etas[k].sd, reference(&format!("omega_sd_{name}")));
        let rel = (ours - theirs).abs() / theirs;
        println!("omega SD {name}: ours {ours:.5}, nlme {theirs:.5}, rel {rel:.2e}");
        assert!(rel < 0.10, "omega SD {name}: {ours} vs nlme {theirs}");
    }
    let sigma = est.parameters.last().unwrap().value;
    println!("sigma: ours {sigma:.5}, nlme {:.5}", reference("sigma_add"));
    assert!((sigma - reference("sigma_add")).abs() / reference("sigma_add") < 0.05);
    // −2LL within 0.5, both with N·ln(2π) and without.
    println!(
        "-2LL: ours {:.4} (no const {:.4}), nlme {:.4} (no const {:.4})",
        est.ofv_with_constant,
        est.ofv,
        reference("m2ll_with_const"),
        reference("m2ll_no_const")
    );
    assert!((est.ofv_with_constant - reference("m2ll_with_const")).abs() < 0.5);
    assert!((est.ofv - reference("m2ll_no_const")).abs() < 0.5);
    // Covariance step: SEs of the log typical values close to nlme's (their
    // SEs are conditional on the variance parameters; ours are joint).
    let cov = est.covariance.as_ref().expect("covariance step");
    for (k, name) in ["ka", "CL", "V"].iter().enumerate() {
        let (ours, theirs) =
            (est.parameters[k].se.unwrap() / est.parameters[k].value, reference(&format!("se_log_{name}")));
        println!(
            "SE(log {name}): ours (sandwich) {ours:.4}, hessian {:.4}, nlme {theirs:.4}",
            cov.se_hessian[k] / est.parameters[k].value
        );
        assert!((cov.se_hessian[k] / est.parameters[k].value - theirs).abs() / theirs < 0.25);
    }
}

#[test]
fn theophylline_is_deterministic_across_thread_counts() {
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| fit(CovarianceStep::None))
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.ofv.to_bits(), b.ofv.to_bits());
    for (x, y) in a.parameters.iter().zip(&b.parameters) {
        assert_eq!(x.value.to_bits(), y.value.to_bits());
    }
}

#[test]
fn shared_copy_is_the_same_file() {
    // The file the issue names, when the shared folder sits beside the checkout.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/theoph.csv");
    if let Ok(text) = std::fs::read_to_string(path) {
        assert_eq!(text, DATA);
    }
}
