//! Times the full P1 sweep (10,000 regimens) on the batched integrators and
//! the exact linear path: `cargo run --release -p insilico-kernels --example p1_sweep`.
use insilico_kernels::linear::solve_linear_grid;
use insilico_kernels::{solve_grid, solve_summaries, Batch, Regimen, Stepper, Tolerances, TwoCmtOral};
use std::time::Instant;

fn main() {
    let mut rows = Vec::new();
    let mut regs = Vec::new();
    for i in 0..50 {
        let dose = 50.0 + 950.0 * i as f64 / 49.0;
        for tau in [6.0, 8.0, 12.0, 24.0] {
            for j in 0..50 {
                let scale = (0.5f64.ln() + 4.0f64.ln() * j as f64 / 49.0).exp();
                rows.push(vec![1.2, 5.0 * scale, 30.0, 10.0, 50.0]);
                regs.push(Regimen::repeated_bolus(dose, 0, tau, 336.0).unwrap());
            }
        }
    }
    let batch = Batch::<4>::from_rows(&rows, regs).unwrap();
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    let t = Instant::now();
    let exact = solve_linear_grid(&TwoCmtOral, &batch, &times, 336.0);
    let t_exact = t.elapsed().as_secs_f64();
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let t = Instant::now();
        let r = solve_grid(&TwoCmtOral, stepper, &batch, &times, 336.0, &Tolerances::default());
        let wall = t.elapsed().as_secs_f64();
        let err =
            r.values.iter().zip(&exact).filter(|(_, e)| **e > 0.0).map(|(a, e)| (a - e).abs() / e).fold(0.0, f64::max);
        let t = Instant::now();
        let _ =
            solve_summaries(&TwoCmtOral, stepper, &batch, &times, 336.0, &Tolerances::default(), (312.0, 336.0), 1.0);
        let wall_s = t.elapsed().as_secs_f64();
        let steps: u64 = r.stats.iter().map(|s| s.steps as u64).sum();
        let rej: u64 = r.stats.iter().map(|s| s.rejected as u64).sum();
        println!("{stepper:?}: grid {wall:.3} s, summaries {wall_s:.3} s, max rel err {err:.2e}, mean steps {:.0}, mean rejected {:.0}", steps as f64 / 1e4, rej as f64 / 1e4);
    }
    println!("exact linear path: {t_exact:.3} s");
}
