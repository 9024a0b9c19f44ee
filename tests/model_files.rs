//! A model in no zoo, written only as a file (examples/friberg/friberg.model):
//! it simulates a dataset through `simulate`, and its loss gradients through
//! whole solves (forward sensitivities and the adjoint) match central finite
//! differences.

use std::path::Path;

use insilico::model::{Model, ModelSystem};
use insilico::simulate::Simulation;
use insilico::solvers::{gradient, Dose, GradientMethod, Method, Options, Problem, Schedule};

fn friberg() -> Model {
    Model::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/friberg/friberg.model")).unwrap()
}

#[test]
fn friberg_simulates_a_nadir_and_recovery() {
    let sim =
        Simulation::from_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/friberg/friberg.toml")).unwrap();
    let ds = sim.load_dataset().unwrap();
    let pred = sim.run(&ds, &|| {}).unwrap();
    let by_id = |id: &str| pred.rows.iter().filter(|r| r.id == id).map(|r| (r.time, r.pred)).collect::<Vec<_>>();
    let (low, high) = (by_id("1"), by_id("4"));
    assert_eq!(high[0], (0.0, 5.0), "baseline Circ0");
    let nadir = |v: &[(f64, f64)]| {
        v.iter().filter(|r| r.0 <= 504.0).fold((0.0, f64::INFINITY), |a, r| if r.1 < a.1 { *r } else { a })
    };
    let (t_lo, n_lo) = nadir(&low);
    let (t_hi, n_hi) = nadir(&high);
    assert!(n_hi < n_lo && n_lo < 5.0, "deeper nadir at the higher dose: {n_lo} vs {n_hi}");
    // The nadir follows the dose by about the maturation time (MTT = 120 h) or more.
    assert!((100.0..400.0).contains(&t_hi) && (100.0..400.0).contains(&t_lo), "nadir times {t_lo}, {t_hi}");
    // Rebound above baseline (feedback) before the second cycle.
    assert!(high.iter().any(|r| r.0 > t_hi && r.0 <= 504.0 && r.1 > 5.0), "no rebound");
}

#[test]
fn friberg_gradients_through_whole_solves_match_finite_differences() {
    let m = friberg();
    let sys = ModelSystem::new(&m, &[]).unwrap();
    let p0 = m.default_params(0);
    let times: Vec<f64> = (1..=30).map(|d| 24.0 * d as f64).collect();
    let schedule = Schedule::new().dose(Dose::infusion(0.0, 0, 300.0, 1.0)).dose(Dose::infusion(504.0, 0, 300.0, 1.0));
    let problem = |p: &[f64]| {
        Problem::new(&sys, p.to_vec()).with_schedule(schedule.clone()).with_x0(sys.initial_state(p)).observe(0, &times)
    };
    let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let obs: Vec<f64> = times.iter().map(|t| 4.0 + (t / 200.0).sin()).collect();
    let loss = |j: usize, y: f64| ((y - obs[j]).powi(2), 2.0 * (y - obs[j]));
    let value = |p: &[f64]| gradient(&problem(p), Method::Bdf, &opts, &loss, GradientMethod::Adjoint).unwrap().loss;
    // BDF with forward sensitivities stops at t = 0 with StepSizeTooSmall on this model (and on
    // simeoni-tumour-growth), while BDF's adjoint and ESDIRK34's forward sensitivities run: an open
    // bug of the forward-sensitivity BDF path, noted on the issue. Forward runs on ESDIRK34 here.
    for (method, how) in [(Method::Esdirk34, GradientMethod::Forward), (Method::Bdf, GradientMethod::Adjoint)] {
        let g = gradient(&problem(&p0), method, &opts, &loss, how).unwrap();
        // Chain ∂L/∂x0 through the parameter-dependent initial state (Circ0).
        let mut total = g.d_params.clone();
        for (i, k, v) in sys.initial_state_jacobian(&p0) {
            total[k] += g.d_x0[i] * v;
        }
        for k in 0..p0.len() {
            let h = 1e-5 * p0[k].abs().max(1e-3);
            let (mut pp, mut pm) = (p0.clone(), p0.clone());
            pp[k] += h;
            pm[k] -= h;
            let fd = (value(&pp) - value(&pm)) / (2.0 * h);
            let err = (total[k] - fd).abs() / fd.abs().max(1e-6);
            assert!(
                err < 1e-4,
                "{how:?} dL/d{}: {} vs finite differences {fd} (rel {err:e})",
                m.params()[k].name,
                total[k]
            );
        }
    }
}
