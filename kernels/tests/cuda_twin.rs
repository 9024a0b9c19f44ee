//! GPU kernels against their CPU twin (feature `cuda`). Where no GPU is
//! present each test says so and returns: CI has no GPU; the device script
//! `scripts/gpu-check.sh` runs them on one.
#![cfg(feature = "cuda")]

mod common;
use common::p1_subset;
use insilico_kernels::cuda::{available, GpuEnsemble};
use insilico_kernels::organoid::{Organoid, OrganoidOutput, ORGANOID_DEFAULTS};
use insilico_kernels::{
    solve_grid, solve_summaries, Batch, BatchModel, HybridOneCmt, Regimen, Status, Stepper, Tolerances, TwoCmtOral,
    WindowTrain,
};

fn gpu() -> Option<String> {
    match available() {
        Ok(name) => Some(name),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs() / y.abs().max(1e-300)).filter(|v| v.is_finite()).fold(0.0, f64::max)
}

fn compare<const N: usize, M: BatchModel<N>>(model: &M, batch: &Batch<N>, times: &[f64], t_end: f64, label: &str) {
    let g = GpuEnsemble::new(model).unwrap();
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let tol = Tolerances::default();
        let cpu = solve_grid(model, stepper, batch, times, t_end, &tol);
        let (gpu, timing) = g.solve_grid(model, stepper, batch, times, t_end, &tol).unwrap();
        assert!(gpu.stats.iter().all(|s| s.status == Status::Ok), "{label} {stepper:?}: a GPU trajectory failed");
        let d = max_rel_diff(&gpu.values, &cpu.values);
        let same_steps = gpu.stats.iter().zip(&cpu.stats).filter(|(a, b)| a.steps == b.steps).count();
        eprintln!(
            "{label} {stepper:?}: {} trajectories, max rel diff GPU vs CPU {d:.2e}, same step count {same_steps}/{}, kernel {:.4} s",
            batch.n, batch.n, timing.kernel_s
        );
        assert!(d <= 1e-10, "{label} {stepper:?}: GPU and CPU differ by {d:.3e}");
        let (sg, _, _) =
            g.solve_summaries(model, stepper, batch, times, t_end, &tol, (0.75 * t_end, t_end), 1.0).unwrap();
        let (sc, _) = solve_summaries(model, stepper, batch, times, t_end, &tol, (0.75 * t_end, t_end), 1.0);
        for (a, b) in sg.iter().zip(&sc) {
            for (x, y) in [(a.max, b.max), (a.min, b.min), (a.auc, b.auc), (a.last, b.last)] {
                assert!((x - y).abs() <= 1e-10 * y.abs().max(1e-12), "{label} {stepper:?} summary: {x} vs {y}");
            }
        }
    }
}

#[test]
fn p1_gpu_matches_cpu_twin() {
    let Some(name) = gpu() else { return };
    eprintln!("GPU: {name}");
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    compare(&TwoCmtOral, &p1_subset(7), &times, 336.0, "P1");
}

#[test]
fn hybrid_mlp_gpu_matches_cpu_twin() {
    let Some(_) = gpu() else { return };
    let model = HybridOneCmt::seeded(16, 42);
    let mut rows = Vec::new();
    let mut regs = Vec::new();
    for i in 0..512 {
        let ka = 0.5 + (i % 8) as f64 * 0.2;
        let v = 10.0 + (i / 8 % 8) as f64 * 3.0;
        rows.push(vec![ka, v]);
        let dose = 50.0 + 25.0 * (i / 64) as f64;
        regs.push(Regimen::repeated_bolus(dose, 0, 12.0, 72.0).unwrap());
    }
    let batch = Batch::<3>::from_rows(&rows, regs).unwrap();
    let times: Vec<f64> = (0..=144).map(|i| i as f64 * 0.5).collect();
    compare(&model, &batch, &times, 72.0, "hybrid-MLP");
}

/// The organoid sweep model: exposure windows drive an input, a Hill-type kill
/// (`pow` on both sides), six states; dose level × exposure × period × a
/// small population of growth rates.
#[test]
fn organoid_gpu_matches_cpu_twin() {
    let Some(_) = gpu() else { return };
    let model = Organoid::new(OrganoidOutput::Viable);
    let mut rows = Vec::new();
    let mut regs = Vec::new();
    let mut x0 = Vec::new();
    for level in [0.0, 1.0, 5.0, 20.0, 50.0] {
        for exposure in [6.0f64, 24.0, 72.0] {
            for period in [72.0, 168.0] {
                for k in 0..8 {
                    let mut p = ORGANOID_DEFAULTS.to_vec();
                    p[0] *= 0.7 + 0.1 * k as f64;
                    x0.push(model.initial_state(&p));
                    rows.push(p);
                    let count = (336.0f64 / period).ceil() as u32;
                    let w = WindowTrain { start: 0.0, period, count, duration: exposure.min(period), level, input: 0 };
                    regs.push(Regimen::new().with_windows(w).unwrap());
                }
            }
        }
    }
    let mut batch = Batch::<6>::from_rows(&rows, regs).unwrap();
    let n = batch.n;
    for (i, x) in x0.iter().enumerate() {
        for (s, v) in x.iter().enumerate() {
            batch.x0[s * n + i] = *v;
        }
    }
    let times: Vec<f64> = (0..=14).map(|d| d as f64 * 24.0).collect();
    compare(&model, &batch, &times, 336.0, "organoid");
}
