//! Criterion benchmarks of reference problem P1 (../shared/benchmarks/PROBLEMS.md):
//! one solve per method and the closed form on a representative regimen, and a
//! reduced sweep (every 50th regimen, 200 solves) in parallel.
//!
//! Run with `cargo bench --bench p1`; `insilico bench p1` runs the full sweep.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use insilico::p1::{self, Case};
use insilico::solvers::Method;
use std::hint::black_box;
use std::time::Duration;

/// Middle of the sweep: D = 1000 mg every 12 h, CL at its base value.
const CASE: Case = Case { dose: 1000.0, tau: 12.0, cl_scale: 1.0 };

fn single_solve(c: &mut Criterion) {
    let mut g = c.benchmark_group("p1_single_solve");
    g.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for m in Method::ALL {
        g.bench_with_input(BenchmarkId::from_parameter(m.name()), &m, |b, &m| {
            b.iter(|| p1::solve_case(black_box(&CASE), m).map(|c| c[c.len() - 1]))
        });
    }
    g.bench_function("closed-form", |b| b.iter(|| p1::closed_form_case(black_box(&CASE)).map(|c| c[c.len() - 1])));
    g.finish();
}

fn reduced_sweep(c: &mut Criterion) {
    let cases: Vec<Case> = p1::sweep().into_iter().step_by(50).collect();
    let reference = match p1::run_closed_form(&cases) {
        Ok((_, r)) => r,
        Err(e) => {
            eprintln!("closed form failed: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("p1_sweep_200");
    g.sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    for m in [Method::Tsit45, Method::Bdf] {
        g.bench_with_input(BenchmarkId::from_parameter(m.name()), &m, |b, &m| {
            b.iter(|| p1::run_method(black_box(&cases), m, &reference, &|_| {}).map(|r| r.max_rel_err))
        });
    }
    g.bench_function("closed-form", |b| b.iter(|| p1::run_closed_form(black_box(&cases)).map(|r| r.0.wall_s)));
    g.finish();
}

criterion_group!(benches, single_solve, reduced_sweep);
criterion_main!(benches);
