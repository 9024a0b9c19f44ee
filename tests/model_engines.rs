//! One model, several engines: a zoo model file on the batched CPU
//! integrators against the closed form (P1), against the hand-written
//! `TwoCmtOral` it replaces, and against diffsol through `ModelSystem`.

use insilico::kernels::{solve_grid, Batch, Regimen, Stepper, Tolerances, TwoCmtOral};
use insilico::model::{LaneModel, ModelSystem};
use insilico::models_zoo;
use insilico::solvers::{solve, Method, Problem};
use insilico::validation::p1;

fn p1_batch(regs: &[p1::Regimen]) -> Batch<4> {
    let rows: Vec<Vec<f64>> = regs.iter().map(|r| r.params()).collect();
    let regimens =
        regs.iter().map(|r| Regimen::repeated_bolus(r.dose, 0, r.tau, p1::HORIZON).expect("P1 regimen")).collect();
    Batch::from_rows(&rows, regimens).expect("P1 batch")
}

/// P1 regimens spread over the sweep (every 97th of the 10,000).
fn sample() -> Vec<p1::Regimen> {
    p1::sweep().into_iter().step_by(97).collect()
}

#[test]
fn p1_zoo_model_on_the_batched_engine_matches_the_closed_form() {
    let model = models_zoo::load("pk-2cmt-oral").unwrap();
    let lanes = LaneModel::<4>::new(&model, &[], "cp").unwrap();
    let regs = sample();
    let batch = p1_batch(&regs);
    let grid = p1::grid();
    let tol = Tolerances { rtol: 1e-6, atol: 1e-9, ..Tolerances::default() };
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let zoo = solve_grid(&lanes, stepper, &batch, &grid, p1::HORIZON, &tol);
        let hand = solve_grid(&TwoCmtOral, stepper, &batch, &grid, p1::HORIZON, &tol);
        let mut worst: f64 = 0.0;
        let mut vs_hand: f64 = 0.0;
        for (k, r) in regs.iter().enumerate() {
            let exact = p1::closed_form(r).unwrap();
            let got = &zoo.values[k * grid.len()..(k + 1) * grid.len()];
            worst = worst.max(p1::max_rel_err(got, &exact));
            vs_hand = vs_hand.max(p1::max_rel_err(got, &hand.values[k * grid.len()..(k + 1) * grid.len()]));
        }
        println!("P1 sample on {stepper:?}: zoo model vs closed form {worst:e}, vs TwoCmtOral {vs_hand:e}");
        // The acceptance bar of P1 (1e-6 against the closed form).
        assert!(worst <= 1e-6, "{stepper:?}: max rel err {worst:e}");
        // Same model, arithmetic written differently: agreement at the tolerance level.
        assert!(vs_hand <= 1e-6, "{stepper:?}: against TwoCmtOral {vs_hand:e}");
    }
}

#[test]
fn batched_engine_and_diffsol_agree_on_a_nonlinear_model() {
    let model = models_zoo::load("pk-1cmt-oral-mm-linear").unwrap();
    let lanes = LaneModel::<3>::new(&model, &[], "cp").unwrap();
    let p = vec![1.1, 40.0, 2.0, 1.5, 25.0];
    let times: Vec<f64> = (0..=96).map(|h| h as f64).collect();
    let regimen = Regimen::repeated_bolus(300.0, 0, 12.0, 96.0).unwrap();
    let batch = Batch::<3>::from_rows(std::slice::from_ref(&p), vec![regimen]).unwrap();
    let tol = Tolerances { rtol: 1e-10, atol: 1e-12, ..Tolerances::default() };
    let lane = solve_grid(&lanes, Stepper::Tsit5, &batch, &times, 96.0, &tol);
    let sys = ModelSystem::new(&model, &[]).unwrap();
    let mut schedule = insilico::solvers::Schedule::new();
    for k in 0..8 {
        schedule = schedule.dose(insilico::solvers::Dose::bolus(12.0 * k as f64, 0, 300.0));
    }
    let prob = Problem::new(&sys, p).with_schedule(schedule).observe(0, &times);
    let opts = insilico::solvers::Options { rtol: 1e-10, atol: 1e-12, ..Default::default() };
    let sol = solve(&prob, Method::Bdf, &opts).unwrap();
    let err = p1::max_rel_err(&lane.values, &sol.outputs);
    assert!(err < 1e-6, "batched vs diffsol: {err:e}");
}

#[test]
fn organoid_zoo_model_matches_the_hand_written_one() {
    use insilico::kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS};
    use insilico::kernels::WindowTrain;
    let model = models_zoo::load("organoid-drug-response").unwrap();
    let lanes = LaneModel::<6>::new(&model, &[], "viable").unwrap();
    let times: Vec<f64> = (0..=14).map(|d| 24.0 * d as f64).collect();
    let regimen = Regimen::new()
        .with_windows(WindowTrain { input: 0, level: 10.0, start: 0.0, duration: 24.0, period: 72.0, count: 5 })
        .unwrap();
    let p = ORGANOID_DEFAULTS.to_vec();
    let mut batch = Batch::<6>::from_rows(std::slice::from_ref(&p), vec![regimen]).unwrap();
    batch.x0 = lanes.initial_state(&p).to_vec();
    let tol = Tolerances { rtol: 1e-8, atol: 1e-10, ..Tolerances::default() };
    let zoo = solve_grid(&lanes, Stepper::Tsit5, &batch, &times, 336.0, &tol);
    let hand = solve_grid(&Organoid::new(OrganoidOutput::Viable), Stepper::Tsit5, &batch, &times, 336.0, &tol);
    let err = p1::max_rel_err(&zoo.values, &hand.values);
    println!("organoid: zoo model vs hand-written {err:e}");
    assert!(err <= 1e-9, "organoid zoo vs hand-written: {err:e}");
}

#[test]
fn jit_and_interpreter_agree_bit_for_bit() {
    use insilico::kernels::BatchModel;
    use insilico::model::Backend;
    for name in models_zoo::names() {
        let model = models_zoo::load(name).unwrap();
        macro_rules! check {
            ($n:literal) => {{
                let weights: Vec<f64> = model.default_params(3)[model.scalar_param_names().len()..].to_vec();
                let out = model.output_names()[0].to_string();
                let jit = LaneModel::<$n>::with_backend(&model, &weights, &out, Backend::Jit).unwrap();
                let tape = LaneModel::<$n>::with_backend(&model, &weights, &out, Backend::Interpreter).unwrap();
                assert!(jit.jit_error().is_none(), "{name}: {:?}", jit.jit_error());
                if model.networks().is_empty() {
                    assert!(jit.native_programs() >= 3, "{name}: only {} native programs", jit.native_programs());
                }
                let np = jit.nparams();
                let mut s = 1u64;
                for _ in 0..50 {
                    let mut r = || {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        0.1 + 2.0 * ((s >> 11) as f64 / (1u64 << 53) as f64)
                    };
                    let p: Vec<f64> = (0..np).map(|_| r()).collect();
                    let x: [f64; $n] = std::array::from_fn(|_| r() - 0.5);
                    let u: Vec<f64> = (0..jit.ninputs()).map(|_| r()).collect();
                    let mut d = vec![0.0; jit.nderived()];
                    jit.prepare(&p, &mut d);
                    let (mut a, mut b) = ([0.0; $n], [0.0; $n]);
                    jit.rhs(&x, &d, &u, &mut a);
                    tape.rhs(&x, &d, &u, &mut b);
                    assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "{name} rhs");
                    let (mut ja, mut jb) = ([[0.0; $n]; $n], [[0.0; $n]; $n]);
                    jit.jacobian(&x, &d, &u, &mut ja);
                    tape.jacobian(&x, &d, &u, &mut jb);
                    assert_eq!(format!("{ja:?}"), format!("{jb:?}"), "{name} jacobian");
                    assert_eq!(jit.output(&x, &d).to_bits(), tape.output(&x, &d).to_bits(), "{name} output");
                }
            }};
        }
        match model.nstates() {
            2 => check!(2),
            3 => check!(3),
            4 => check!(4),
            5 => check!(5),
            6 => check!(6),
            n => panic!("{name}: add a case for {n} states"),
        }
    }
}

#[test]
fn one_dataset_on_diffsol_and_on_the_batched_engine() {
    // NONMEM's event-grammar suite through the zoo model: every subject whose schedule the
    // batched integrators can run (no steady state or reset) is solved by both engines.
    use insilico::simulate::Simulation;
    let cfg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nmtest.toml");
    let sim = Simulation::from_path(&cfg).unwrap();
    let ds = sim.load_dataset().unwrap();
    let model = &sim.model.model;
    let lanes = LaneModel::<3>::new(model, &[], "cp").unwrap();
    let tol = Tolerances { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 };
    let (mut both, mut refused, mut worst) = (0, 0, 0.0f64);
    for subj in &ds.subjects {
        let (schedule, obs) = subj.to_schedule(&ds, &sim.mapping).unwrap();
        let regimen = match Regimen::from_schedule(&schedule, &sim.params) {
            Ok(r) => r,
            Err(e) => {
                let e = e.to_string();
                // Only what the batched integrators cannot run is refused.
                assert!(e.contains("steady-state") || e.contains("reset"), "subject {}: {e}", subj.id);
                refused += 1;
                continue;
            }
        };
        if subj.records.iter().any(|r| r.time < 0.0) {
            continue;
        }
        let diffsol: Vec<f64> = sim.run_subject(&ds, subj).unwrap().iter().map(|p| p.pred).collect();
        let times: Vec<f64> = obs.iter().map(|o| o.time).collect();
        let t_end = times.last().copied().unwrap_or(0.0);
        let batch = Batch::<3>::from_rows(std::slice::from_ref(&sim.params), vec![regimen]).unwrap();
        let lane = solve_grid(&lanes, Stepper::Tsit5, &batch, &times, t_end, &tol);
        for (a, b) in lane.values.iter().map(|v| v * sim.output_scale).zip(&diffsol) {
            let err = (a - b).abs() / b.abs().max(1e-3);
            worst = worst.max(err);
        }
        both += 1;
    }
    println!(
        "nmtest: {both} subjects on both engines, {refused} refused by the batched engine; worst rel diff {worst:e}"
    );
    // 54 scenarios, most of them steady state or resets; the rest run on both engines.
    assert!(both >= 12, "only {both} subjects converted");
    assert!(worst < 1e-6, "batched vs diffsol: {worst:e}");
}
