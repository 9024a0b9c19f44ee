//! P1 on the batched integrators against the exact matrix-exponential path,
//! and thread-count determinism.

use insilico_kernels::linear::solve_linear_grid;
use insilico_kernels::{solve_grid, solve_summaries, Batch, Regimen, Status, Stepper, Tolerances, TwoCmtOral};

/// Every 37th regimen of the P1 sweep (D outermost, then τ, then CL scale),
/// 271 trajectories spanning all doses, intervals and clearances.
fn p1_subset() -> Batch<4> {
    let mut rows = Vec::new();
    let mut regs = Vec::new();
    let mut k = 0;
    for i in 0..50 {
        let dose = 50.0 + 950.0 * i as f64 / 49.0;
        for tau in [6.0, 8.0, 12.0, 24.0] {
            for j in 0..50 {
                let scale = (0.5f64.ln() + (4.0f64).ln() * j as f64 / 49.0).exp();
                if k % 37 == 0 {
                    rows.push(vec![1.2, 5.0 * scale, 30.0, 10.0, 50.0]);
                    regs.push(Regimen::repeated_bolus(dose, 0, tau, 336.0).unwrap());
                }
                k += 1;
            }
        }
    }
    Batch::from_rows(&rows, regs).unwrap()
}

fn grid() -> Vec<f64> {
    (0..673).map(|i| i as f64 * 0.5).collect()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).filter(|(_, r)| **r > 0.0).map(|(x, r)| (x - r).abs() / r).fold(0.0, f64::max)
}

/// At P1's tolerances (rtol 1e-6, atol 1e-9) both steppers stay within 1e-5
/// relative of the exact solution at every grid point with C > 0.
#[test]
fn batched_steppers_match_the_exact_solution() {
    let batch = p1_subset();
    let times = grid();
    let exact = solve_linear_grid(&TwoCmtOral, &batch, &times, 336.0);
    for stepper in [Stepper::Tsit5, Stepper::Rosenbrock] {
        let r = solve_grid(&TwoCmtOral, stepper, &batch, &times, 336.0, &Tolerances::default());
        assert!(r.stats.iter().all(|s| s.status == Status::Ok));
        let err = max_rel(&r.values, &exact);
        let steps: u32 = r.stats.iter().map(|s| s.steps).sum();
        eprintln!("{stepper:?}: max rel err {err:.2e}, mean steps {:.0}", steps as f64 / batch.n as f64);
        assert!(err <= 1e-5, "{stepper:?}: {err:.3e}");
    }
}

/// Summaries reduced on the fly equal those computed from the stored grid.
#[test]
fn summaries_agree_with_the_stored_grid() {
    let batch = p1_subset();
    let times = grid();
    let tol = Tolerances::default();
    let g = solve_grid(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 336.0, &tol);
    let (s, _) = solve_summaries(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 336.0, &tol, (312.0, 336.0), 1.0);
    for (i, si) in s.iter().enumerate() {
        let row = &g.values[i * 673..(i + 1) * 673];
        let tail = &row[624..];
        let cmax = tail.iter().copied().fold(f64::MIN, f64::max);
        let auc: f64 = tail.windows(2).map(|w| 0.25 * (w[0] + w[1])).sum();
        assert_eq!(si.max, cmax);
        assert!((si.auc - auc).abs() <= 1e-12 * auc);
    }
}

/// Results are bit-for-bit identical on 1 and 2 threads.
#[test]
fn identical_for_any_thread_count() {
    let batch = p1_subset();
    let times = grid();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| solve_grid(&TwoCmtOral, Stepper::Rosenbrock, &batch, &times, 336.0, &Tolerances::default()))
    };
    let (a, b) = (run(1), run(2));
    assert!(a.values.iter().zip(&b.values).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(a.stats, b.stats);
}
