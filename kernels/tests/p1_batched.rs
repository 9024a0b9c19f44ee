//! P1 on the batched integrators against the exact matrix-exponential path,
//! and thread-count determinism.

mod common;
use common::{p1_grid, p1_subset};
use insilico_kernels::linear::solve_linear_grid;
use insilico_kernels::{solve_grid, solve_summaries, Status, Stepper, Tolerances, TwoCmtOral};

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).filter(|(_, r)| **r > 0.0).map(|(x, r)| (x - r).abs() / r).fold(0.0, f64::max)
}

/// At P1's tolerances (rtol 1e-6, atol 1e-9) both steppers stay within 1e-5
/// relative of the exact solution at every grid point with C > 0.
#[test]
fn batched_steppers_match_the_exact_solution() {
    let batch = p1_subset(37);
    let times = p1_grid();
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
fn summaries_agree_with_the_stored_p1_grid() {
    let batch = p1_subset(37);
    let times = p1_grid();
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
    let batch = p1_subset(37);
    let times = p1_grid();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| solve_grid(&TwoCmtOral, Stepper::Rosenbrock, &batch, &times, 336.0, &Tolerances::default()))
    };
    let (a, b) = (run(1), run(2));
    assert!(a.values.iter().zip(&b.values).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(a.stats, b.stats);
}
