//! Speed of the default organoid sweep (examples/sweep_organoid.toml, 7,168
//! trajectories) on the model-file path (zoo `organoid-drug-response` as a
//! Cranelift-compiled `LaneModel<6>`, the efficacy from an untreated solve)
//! against the hand-written path it replaced (examples/support/sweep_baseline.rs),
//! measured in the same run, chunk by chunk as `insilico sweep` solves them
//! (no Parquet writing). Prints the median of `RUNS` (default 3) alternating runs and the ratio.
//!
//! `cargo run --release --example sweep_speed`
#[path = "support/sweep_baseline.rs"]
mod baseline;

use std::time::Instant;

use insilico::sweep::{Device, Engine, Sweep, EMBEDDED_CONFIG};

fn main() {
    let t0 = Instant::now();
    let sweep = Sweep::from_toml_str(EMBEDDED_CONFIG, "embedded", None).expect("embedded config");
    std::hint::black_box(Engine::new(&sweep, Device::Cpu).expect("engine"));
    println!("config + compile: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    // The same sweep without the efficacy's untreated solves, to show their share.
    let mut bare = sweep.clone();
    bare.efficacy = None;
    let bare_engine = Engine::new(&bare, Device::Cpu).expect("engine");
    let (mut new_s, mut old_s, mut bare_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        for k in 0..bare.chunks() {
            let (start, n) = bare.chunk_range(k);
            std::hint::black_box(bare.solve_chunk(&bare_engine, start, n, &|_| {}).expect("solve"));
        }
        bare_s.push(t.elapsed().as_secs_f64());
        // A fresh engine per run (compiling takes milliseconds): its untreated references start empty.
        let t = Instant::now();
        let engine = Engine::new(&sweep, Device::Cpu).expect("engine");
        for k in 0..sweep.chunks() {
            let (start, n) = sweep.chunk_range(k);
            std::hint::black_box(sweep.solve_chunk(&engine, start, n, &|_| {}).expect("solve"));
        }
        new_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for k in 0..sweep.chunks() {
            let (start, n) = sweep.chunk_range(k);
            let inputs: Vec<_> = (start..start + n as u64).map(|id| sweep.inputs(id)).collect();
            std::hint::black_box(baseline::solve(&sweep, &inputs));
        }
        old_s.push(t.elapsed().as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (n, o, b) = (med(&mut new_s), med(&mut old_s), med(&mut bare_s));
    println!(
        "default organoid sweep, {} trajectories, {} threads: hand-written {o:.3} s, model file {n:.3} s, ratio {:.2} \
         (without the efficacy's untreated solves {b:.3} s, ratio {:.2})",
        sweep.len(),
        rayon::current_num_threads(),
        n / o,
        b / o
    );
}
