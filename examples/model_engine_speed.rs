//! Speed of a model loaded at run time on the batched engine, against the
//! hand-written models it replaces, measured in the same run (ratios, not
//! absolute times, are the result):
//!
//! * P1: the 10,000-regimen sweep, `pk-2cmt-oral` from the zoo against `TwoCmtOral`;
//! * the organoid model: 2,000 trajectories of 14 days with exposure windows.
//!
//! `cargo run --release --example model_engine_speed`
use std::time::Instant;

use insilico::kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS};
use insilico::kernels::{solve_grid, Batch, BatchModel, Regimen, Stepper, Tolerances, TwoCmtOral, WindowTrain};
use insilico::model::LaneModel;
use insilico::models_zoo;
use insilico::validation::p1;

fn time<const N: usize, M: BatchModel<N>>(m: &M, batch: &Batch<N>, times: &[f64], t_end: f64, tol: &Tolerances) -> f64 {
    let t = Instant::now();
    let r = solve_grid(m, Stepper::Tsit5, batch, times, t_end, tol);
    std::hint::black_box(r);
    t.elapsed().as_secs_f64()
}

fn main() {
    let t0 = Instant::now();
    let zoo = models_zoo::load("pk-2cmt-oral").expect("zoo model");
    let lanes = LaneModel::<4>::new(&zoo, &[], "cp").expect("lane model");
    println!("parse + compile pk-2cmt-oral: {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
    let regs = p1::sweep();
    let rows: Vec<Vec<f64>> = regs.iter().map(|r| r.params()).collect();
    let regimens = regs.iter().map(|r| Regimen::repeated_bolus(r.dose, 0, r.tau, p1::HORIZON).unwrap()).collect();
    let batch = Batch::<4>::from_rows(&rows, regimens).unwrap();
    let grid = p1::grid();
    let tol = Tolerances { rtol: 1e-6, atol: 1e-9, ..Tolerances::default() };
    let (mut hand, mut gen) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        hand.push(time(&TwoCmtOral, &batch, &grid, p1::HORIZON, &tol));
        gen.push(time(&lanes, &batch, &grid, p1::HORIZON, &tol));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (h, g) = (med(&mut hand), med(&mut gen));
    println!("P1 10,000 solves: hand-written TwoCmtOral {h:.3} s, zoo model file {g:.3} s, ratio {:.2}", g / h);

    let model = models_zoo::load("organoid-drug-response").unwrap();
    let lanes = LaneModel::<6>::new(&model, &[], "viable").unwrap();
    let n = 2000;
    let mut rows = Vec::new();
    let mut regimens = Vec::new();
    for k in 0..n {
        let mut p = ORGANOID_DEFAULTS.to_vec();
        p[0] *= 0.8 + 0.4 * (k % 10) as f64 / 10.0;
        rows.push(p);
        let level = [1.0, 2.0, 5.0, 10.0, 20.0][k % 5];
        regimens.push(
            Regimen::new()
                .with_windows(WindowTrain { input: 0, level, start: 0.0, duration: 24.0, period: 72.0, count: 5 })
                .unwrap(),
        );
    }
    let mut batch = Batch::<6>::from_rows(&rows, regimens).unwrap();
    batch.x0 = rows.iter().flat_map(|p| lanes.initial_state(p)).collect();
    let times: Vec<f64> = (0..=14).map(|d| 24.0 * d as f64).collect();
    let tol = Tolerances { rtol: 1e-6, atol: 1e-9, ..Tolerances::default() };
    let hand_model = Organoid::new(OrganoidOutput::Viable);
    let (mut hand, mut gen) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        hand.push(time(&hand_model, &batch, &times, 336.0, &tol));
        gen.push(time(&lanes, &batch, &times, 336.0, &tol));
    }
    let (h, g) = (med(&mut hand), med(&mut gen));
    println!("organoid {n} solves: hand-written {h:.3} s, zoo model file {g:.3} s, ratio {:.2}", g / h);
}
