//! Shared by the issue-12 validation examples (`map_speed`, `calibration`)
//! and their tests: seeded virtual subjects simulated through the ODE engine
//! (the model's diffsol system), and the arithmetic of prediction intervals.
#![allow(dead_code)] // each user takes part of it

pub mod calibration;

use insilico_estimation::ErrorModel;
use insilico_model::{Model, ModelSystem};
use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The seeded generator: ChaCha8 with `seed`, stream `stream` (one per
/// subject, so a subject does not depend on how many others are drawn).
pub fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// A standard normal variate (Box–Muller).
pub fn normal(r: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - r.random::<f64>();
    let u2 = r.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A uniform variate on `[lo, hi)`.
pub fn uniform(r: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * r.random::<f64>()
}

/// The model's full parameter vector from `(name, value)` pairs (every
/// scalar parameter must be named).
pub fn params(model: &Model, values: &[(&str, f64)]) -> Result<Vec<f64>, String> {
    let mut p = model.default_params(0);
    for (i, name) in model.scalar_param_names().iter().enumerate() {
        p[i] = values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("no value for parameter {name} of {}", model.name()))?;
    }
    Ok(p)
}

/// Output 0 of `sys` at `times` after the `doses` (bolus `(time, amount)`
/// into state `cmt`), at ODE tolerances `rtol` (atol 1e-10 amount units).
pub fn predict(
    sys: &ModelSystem,
    p: &[f64],
    cmt: usize,
    doses: &[(f64, f64)],
    times: &[f64],
    rtol: f64,
) -> Result<Vec<f64>, insilico_solvers::Error> {
    let mut schedule = Schedule::new();
    for &(t, amt) in doses {
        schedule = schedule.dose(Dose::bolus(t, cmt, amt));
    }
    let prob = Problem::new(sys, p.to_vec()).with_schedule(schedule).observe(0, times);
    let opts = Options { rtol, atol: 1e-10, max_steps: 1_000_000 };
    Ok(solve(&prob, Method::Tsit45, &opts)?.outputs)
}

/// An observation `f + ε`, `ε ~ N(0, V(f))` under `error` with `sigma`.
pub fn observe(r: &mut ChaCha8Rng, f: f64, error: ErrorModel, sigma: &[f64]) -> f64 {
    let (v, _) = error.variance(f, sigma);
    f + v.sqrt() * normal(r)
}

/// The `p`-quantile of sorted values (linear interpolation, R's type 7).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let (lo, frac) = (h.floor() as usize, h - h.floor());
    if lo + 1 < sorted.len() {
        sorted[lo] + frac * (sorted[lo + 1] - sorted[lo])
    } else {
        sorted[lo]
    }
}

/// Whether `y` lies in the central `level` interval of the predictive sample `sorted`.
pub fn covers(sorted: &[f64], level: f64, y: f64) -> bool {
    let a = (1.0 - level) / 2.0;
    quantile(sorted, a) <= y && y <= quantile(sorted, 1.0 - a)
}

/// CPU seconds (user + system) of this process so far, from Linux's
/// `/proc/self/stat` (NaN elsewhere): on a shared, loaded machine the
/// figure that does not depend on the other processes.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let Some(rest) = stat.rsplit(')').next() else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime and stime (fields 14, 15) are at 11 and 12, in 1/100 s.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}
