//! Issue 12: individual posteriors at a fixed population (MAP, Laplace,
//! sampling, sequential updating, bad input).

use insilico_estimation::posterior::{LaplaceHessian, Posterior, PosteriorOptions};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_model::Model;
use insilico_solvers::data::{Dataset, ReadOptions};
use insilico_solvers::Options;

const MAPBAYR_MODEL: &str = include_str!("../../examples/mapbayr/mapbayr.model");
const MAPBAYR_DATA: &str = include_str!("../../examples/mapbayr/mapbayr.csv");

fn data(name: &str, text: &str) -> Dataset {
    Dataset::from_str(name, text, &ReadOptions::default()).unwrap()
}

/// Tight ODE tolerances and MAP convergence for comparisons with references.
fn tight() -> PosteriorOptions {
    PosteriorOptions {
        ode: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 },
        tolerance: 1e-11,
        ..PosteriorOptions::default()
    }
}

/// mapbayr's README example as the config examples/mapbayr/mapbayr.toml gives it.
fn mapbayr(opts: &PosteriorOptions) -> Posterior {
    let model = Model::parse(MAPBAYR_MODEL, "mapbayr").unwrap();
    let spec = PopulationSpec::log_normal(
        &[("CL", 0.9), ("V1", 10.0), ("Q", 1.0), ("V2", 10.0)],
        &[("CL", 0.3), ("V1", 0.3)],
        ErrorModel::Combined2,
        // Var = 0.1 + 0.05·f²: a = sqrt(0.1), b = sqrt(0.05).
        &[0.1f64.sqrt(), 0.05f64.sqrt()],
    )
    .unwrap();
    Posterior::new(&model, &data("mapbayr.csv", MAPBAYR_DATA), &spec, opts).unwrap()
}

/// Issue 12, item 1: mapbayr's README example. mapbayr prints the MAP
/// η = (0.3872104, 0.1569604) (7 decimals) and IPRED 4.162, 1.087 (3
/// decimals); the tolerances are those printed precisions (the ODE is
/// solved at rtol 1e-10, the MAP converged to |Δη| < 1e-11).
#[test]
fn mapbayr_readme_example() {
    let post = mapbayr(&tight());
    assert_eq!(post.eta_names(), ["ETA_CL", "ETA_V1"]);
    assert_eq!(post.subject_ids(), ["1"]);
    let map = post.map_subject(0);
    println!("{map:#?}");
    assert!(map.converged);
    assert!((map.eta[0] - 0.3872104).abs() < 1e-5, "ETA_CL {}", map.eta[0]);
    assert!((map.eta[1] - 0.1569604).abs() < 1e-5, "ETA_V1 {}", map.eta[1]);
    assert_eq!(map.predictions.len(), 2);
    assert!((map.predictions[0].ipred - 4.162).abs() < 1e-3, "IPRED(6) {}", map.predictions[0].ipred);
    assert!((map.predictions[1].ipred - 1.087).abs() < 1e-3, "IPRED(15) {}", map.predictions[1].ipred);
    assert_eq!((map.predictions[0].line, map.predictions[1].line), (3, 4));
    assert_eq!(map.n_obs, 2);
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    // Individual parameters: CL = 0.9·exp(η1) (the BW factor is in the model), V1 = 10·exp(η2).
    assert!((map.parameters[0] - 0.9 * map.eta[0].exp()).abs() < 1e-12);
    assert!((map.parameters[1] - 10.0 * map.eta[1].exp()).abs() < 1e-12);
    // The objective at η̂ is the reported OFV, and η̂ is its minimum.
    assert!((post.objective(0, &map.eta) - map.ofv).abs() < 1e-8);
    for k in 0..2 {
        for d in [-1e-3, 1e-3] {
            let mut e = map.eta.clone();
            e[k] += d;
            assert!(post.objective(0, &e) > map.ofv);
        }
    }
    // Laplace covariance: symmetric, positive variances; SDs are its diagonal's roots.
    assert!((map.covariance[1] - map.covariance[2]).abs() < 1e-14);
    assert!((map.sd[0] - map.covariance[0].sqrt()).abs() < 1e-15 && map.sd[1] > 0.0);
    // PRED is the prediction at η = 0.
    let eta0 = post.map_subject(0);
    assert_eq!(eta0.predictions[0].pred, map.predictions[0].pred);
}

/// The exact gradient of the objective (forward sensitivities through the
/// log-normal parametrisation and the combined error model) against central
/// differences of the objective, at points away from the MAP. Steps of 1e-6
/// on O ~ 10 leave a truncation + rounding error near 1e-8; 1e-6 relative
/// is the bound.
#[test]
fn objective_gradient_matches_finite_differences() {
    let post = mapbayr(&tight());
    for eta in [[0.2, -0.1], [-0.5, 0.4], [0.9, 0.0]] {
        let (o, g) = post.objective_gradient(0, &eta).unwrap();
        assert!((o - post.objective(0, &eta)).abs() < 1e-9 * o.abs());
        for k in 0..2 {
            let h = 1e-6;
            let (mut a, mut b) = (eta, eta);
            a[k] += h;
            b[k] -= h;
            let fd = (post.objective(0, &a) - post.objective(0, &b)) / (2.0 * h);
            assert!((g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0), "dO/deta_{k} at {eta:?}: exact {} fd {fd}", g[k]);
        }
    }
}

/// The observed (full) and expected (Gauss–Newton) Laplace covariances
/// differ on this nonlinear model with combined error, but both are close
/// (the posterior is moderately nonlinear) and give the same MAP.
#[test]
fn laplace_hessians_observed_and_expected() {
    let full = mapbayr(&tight()).map_subject(0);
    let gn = mapbayr(&PosteriorOptions { hessian: LaplaceHessian::Expected, ..tight() }).map_subject(0);
    assert_eq!(full.eta, gn.eta);
    println!("observed {:?}\nexpected {:?}", full.covariance, gn.covariance);
    for k in 0..2 {
        let rel = (full.sd[k] - gn.sd[k]).abs() / full.sd[k];
        assert!(rel > 1e-6 && rel < 0.5, "SD {k}: observed {} expected {}", full.sd[k], gn.sd[k]);
    }
}
