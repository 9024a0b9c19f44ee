//! Calibration of the posterior predictive (issue 12, item 3): virtual
//! subjects on 100 mg every 12 h, their first two samples assimilated, their
//! next four forecast; coverage of the central 50/80/90/95% intervals.
//! The design and the models are in `examples/support/calibration.rs`; the
//! full table comes from `examples/calibration.rs` (1,000 subjects, and the
//! misspecified Michaelis–Menten truth), also run here as an ignored test.

#[path = "../examples/support/mod.rs"]
mod support;

use insilico_estimation::posterior::SamplingMethod;
use support::calibration::{self as cal, Coverage, Represent, LEVELS};

/// Allowed |coverage − nominal| in points for `total` forecasts from
/// `subjects` subjects: three binomial SDs, inflated by √2 because a
/// subject's four forecasts share its posterior error (the design effect
/// of four correlated samples is at most 4; √2 assumes it is about 2), and
/// never below the issue's ±3 points.
fn tolerance(level: f64, total: usize) -> f64 {
    (3.0 * 2f64.sqrt() * cal::binomial_sd(level, total)).max(3.0)
}

fn check(c: &Coverage, tol: impl Fn(f64) -> f64) {
    for (k, &level) in LEVELS.iter().enumerate() {
        let got = c.percent(k);
        let t = tol(level);
        assert!(
            (got - 100.0 * level).abs() <= t,
            "{}: {:.0}% interval covers {got:.1}% (tolerance ±{t:.1} points)",
            c.represent.label(),
            100.0 * level
        );
    }
}

#[test]
fn forecasts_from_two_samples_are_calibrated() {
    // 200 subjects × 4 forecasts: SD 1.8/1.4/1.1/0.8 points at 50/80/90/95%
    // if independent; tolerance ±7.5/6.0/4.5/3.3 points (see `tolerance`).
    // 200 draws: the empirical 95% interval of 200 draws covers about 94.5%
    // of its own distribution (order-statistic bias), well inside that.
    let (n, draws, seed) = (200, 200, 11);
    let subjects = cal::simulate(&cal::linear_truth(), n, seed, cal::calibration_times).unwrap();
    let spec = cal::true_linear_spec().unwrap();
    let total = n * cal::FORECAST_TIMES.len();
    println!("{}", cal::TABLE_HEADER);
    for m in [Represent::Draws(SamplingMethod::Laplace), Represent::Draws(SamplingMethod::Auto)] {
        let c = cal::coverage(&spec, &subjects, m, draws, seed).unwrap();
        println!("{}", c.row("linear"));
        assert_eq!(c.total, total);
        assert_eq!(c.nonconverged, 0);
        check(&c, |p| tolerance(p, total));
    }
    // The check can fail: forecasting from the MAP alone (no parameter
    // uncertainty) covers far less (about 60% at 90%).
    let c = cal::coverage(&spec, &subjects, Represent::MapOnly, draws, seed).unwrap();
    println!("{}", c.row("linear"));
    assert!(c.percent(2) < 90.0 - 2.0 * tolerance(0.9, total), "MAP-only 90% coverage {:.1}", c.percent(2));
}

/// The full run of the example: 1,000 subjects, 500 draws, both truths
/// (about 20 minutes on 2 loaded cores).
#[test]
#[ignore]
fn full_calibration_table() {
    let (n, draws, seed) = (1000, 500, 3);
    let methods = [Represent::Draws(SamplingMethod::Laplace), Represent::Draws(SamplingMethod::Auto)];
    let linear = cal::simulate(&cal::linear_truth(), n, seed, cal::calibration_times).unwrap();
    let spec = cal::true_linear_spec().unwrap();
    let mut well = Vec::new();
    println!("{}", cal::TABLE_HEADER);
    for m in methods {
        let c = cal::coverage(&spec, &linear, m, draws, seed).unwrap();
        println!("{}", c.row("linear (well specified)"));
        well.push(c);
    }
    let mm = cal::michaelis_menten_truth();
    let training = cal::simulate(&mm, 100, seed + 1, cal::training_times).unwrap();
    let (mm_spec, text) = cal::fit_linear(&training).unwrap();
    println!("{text}");
    let subjects = cal::simulate(&mm, n, seed + 2, cal::calibration_times).unwrap();
    for (m, w) in methods.iter().zip(&well) {
        let c = cal::coverage(&mm_spec, &subjects, *m, draws, seed).unwrap();
        println!("{}", c.row("Michaelis–Menten (model linear)"));
        let loss: Vec<String> = (0..4).map(|k| format!("{:+.1}", c.percent(k) - w.percent(k))).collect();
        println!("coverage change from misspecification ({}): {}", m.label(), loss.join(" / "));
    }
    // The bound for the well-specified model: ±3 points
    // (4,000 forecasts: SD 0.8/0.6/0.5/0.3 points if independent).
    for c in &well {
        check(c, |_| 3.0);
    }
}
