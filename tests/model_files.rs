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

/// Declared invariants over whole solves: with doses and infusions counted as
/// inputs, `c · x(t)` equals the amount given so far to round-off, on every
/// diffsol method, for the PK zoo models and the transit chain.
#[test]
fn declared_invariants_hold_over_whole_solves() {
    use insilico::models_zoo;
    let schedule = Schedule::new()
        .dose(Dose::bolus(0.0, 0, 100.0).repeated(12.0, 3))
        .dose(Dose::infusion(30.0, 1, 50.0, 2.0))
        .dose(Dose::bolus(40.0, 1, 25.0));
    let times: Vec<f64> = (0..=60).map(|h| h as f64 + 0.5).collect();
    let given = |t: f64| {
        let boluses =
            (0..4).filter(|k| 12.0 * *k as f64 <= t).count() as f64 * 100.0 + if t >= 40.0 { 25.0 } else { 0.0 };
        boluses + 50.0 * ((t - 30.0) / 2.0).clamp(0.0, 1.0)
    };
    for name in ["pk-2cmt-oral", "pk-3cmt-oral-mm", "pk-1cmt-oral-mm-linear", "pk-1cmt-transit"] {
        let m = models_zoo::load(name).unwrap();
        let sys = ModelSystem::new(&m, &[]).unwrap();
        let p: Vec<f64> = m.default_params(0).iter().map(|v| if v.is_nan() { 2.0 } else { *v }).collect();
        let c = &m.invariants()[0];
        for method in [Method::Bdf, Method::Esdirk34, Method::TrBdf2, Method::Tsit45] {
            let prob = Problem::new(&sys, p.clone()).with_schedule(schedule.clone()).observe(0, &times);
            let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
            let sol = insilico::solvers::solve(&prob, method, &opts).unwrap();
            for (t, x) in sol.times.iter().zip(&sol.states) {
                let total: f64 = c.iter().zip(x).map(|(a, b)| a * b).sum();
                let err = (total - given(*t)).abs() / given(*t);
                assert!(err < 1e-12, "{name} {method:?} t = {t}: c·x = {total}, given {} (rel {err:e})", given(*t));
            }
        }
    }
}

/// Derivatives with respect to a modelled lag time and a modelled infusion
/// duration, through whole solves (the dose-time jump terms), against central
/// differences.
#[test]
fn lag_and_duration_derivatives_through_whole_solves() {
    let text = "parameters: ka = 1.1, CL = 4, V = 25, tlag = 0.7, D = 1.5\nstates: depot, central, eliminated\n\
                cp = central / V\nflux depot -> central = ka * depot\nflux central -> eliminated = CL * cp\n\
                alag(depot) = tlag\ndur(central) = D\noutput: cp\n";
    let m = Model::parse(text, "lagdur.model").unwrap();
    let sys = ModelSystem::new(&m, &[]).unwrap();
    let p0 = m.default_params(0);
    let lag = match sys.dose_attribute(0, insilico::model::DoseAttr::Lag, &p0) {
        Some(insilico::solvers::data::ColumnOrValue::Param(i)) => i,
        other => panic!("{other:?}"),
    };
    let dur = match sys.dose_attribute(1, insilico::model::DoseAttr::Duration, &p0) {
        Some(insilico::solvers::data::ColumnOrValue::Param(i)) => i,
        other => panic!("{other:?}"),
    };
    let mut oral = Dose::bolus(0.0, 0, 100.0).repeated(8.0, 2);
    oral.lag = insilico::solvers::Attr::Param(lag);
    let mut inf = Dose::bolus(10.0, 1, 40.0);
    inf.kind = insilico::solvers::DoseKind::Duration(insilico::solvers::Attr::Param(dur));
    let schedule = Schedule::new().dose(oral).dose(inf);
    let times = [0.5, 1.0, 2.0, 8.5, 10.5, 11.2, 12.0, 16.0, 24.0];
    let problem = |p: &[f64]| Problem::new(&sys, p.to_vec()).with_schedule(schedule.clone()).observe(0, &times);
    let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let loss = |_: usize, y: f64| (y * y, 2.0 * y);
    let value = |p: &[f64]| gradient(&problem(p), Method::Bdf, &opts, &loss, GradientMethod::Adjoint).unwrap().loss;
    for how in [GradientMethod::Forward, GradientMethod::Adjoint] {
        let g = gradient(&problem(&p0), Method::Bdf, &opts, &loss, how).unwrap();
        for k in [lag, dur] {
            let h = 1e-5;
            let (mut pp, mut pm) = (p0.clone(), p0.clone());
            pp[k] += h;
            pm[k] -= h;
            let fd = (value(&pp) - value(&pm)) / (2.0 * h);
            let err = (g.d_params[k] - fd).abs() / fd.abs();
            assert!(err < 1e-5, "{how:?} dL/d{}: {} vs {fd} (rel {err:e})", m.params()[k].name, g.d_params[k]);
        }
    }
}
