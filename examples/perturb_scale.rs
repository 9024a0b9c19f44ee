//! Scale runs for issue 14 (driven by `scripts/perturb_speed.py`, which
//! times the same computations in SciPy in the same run):
//!
//! * `study [N]`: a 1,000-point perturbation study on P3's landscape (64 × 64
//!   Mueller–Brown SQRA, kT = 20): ligand concentration (10 values, a Kd per
//!   basin) × 10 mutations (each shifts one basin's free energies by
//!   0.5–2 kT) × 10 temperatures; per point the basin populations, the 5
//!   slowest implied timescales (Lanczos, shift-invert on the sparse LU) and
//!   the MFPT A → C. With N, only the first N points.
//! * `big [NX]`: the same landscape on an NX × NX grid (default 316: 99,856
//!   states): stationary distribution, 5 slowest timescales, MFPT A → C,
//!   wall time and peak memory.
//!
//! Prints one JSON object to stdout.
//!
//! ```text
//! cargo run --release --example perturb_scale -- study
//! cargo run --release --example perturb_scale -- big 316
//! ```

use std::time::Instant;

use rayon::prelude::*;

use insilico::mechanistic::conformation::{p3, Chain, Clock, Grid, MasterEquation, Perturbation};

/// P3's landscape on `grid` with the study's perturbations: parameters
/// `[kT, well depth, L, mut_0 … mut_9]`.
fn model(grid: Grid) -> (MasterEquation, Vec<Vec<usize>>) {
    let base = p3::model_on(grid);
    let basins: Vec<Vec<usize>> = base.basins().iter().map(|b| b.1.clone()).collect();
    let n = base.len();
    let mut basin_of = vec![0usize; n];
    for (b, s) in basins.iter().enumerate() {
        s.iter().for_each(|&i| basin_of[i] = b);
    }
    let kd_basin = [1.0, 10.0, f64::INFINITY];
    let kd: Vec<f64> = (0..n).map(|i| kd_basin[basin_of[i]]).collect();
    let mut me =
        base.with_perturbation(Perturbation::Ligand { name: "L".into(), kd }).unwrap_or_else(|e| panic!("{e}"));
    for m in 0..10 {
        let (b, amount) = mutation(m);
        let shape: Vec<f64> = (0..n).map(|i| if basin_of[i] == b { amount * p3::KT } else { 0.0 }).collect();
        me = me
            .with_perturbation(Perturbation::Shift { name: format!("mut_{m}"), shape })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    (me, basins)
}

/// Mutation `m`: the basin it shifts and by how many kT (0.5–2).
fn mutation(m: usize) -> (usize, f64) {
    (m % 3, 0.5 + 1.5 * m as f64 / 9.0)
}

/// Axis values of point `id`: (L, mutation, kT).
fn point(id: usize) -> (f64, usize, f64) {
    let l = 10f64.powf(-2.0 + 3.0 * (id / 100) as f64 / 9.0);
    let m = (id / 10) % 10;
    let kt = 18.0 + 4.0 * (id % 10) as f64 / 9.0;
    (l, m, kt)
}

fn params(id: usize) -> Vec<f64> {
    let (l, m, kt) = point(id);
    let mut p = vec![0.0; 13];
    p[0] = kt;
    p[2] = l;
    p[3 + m] = 1.0;
    p
}

fn analyse(me: &MasterEquation, basins: &[Vec<usize>], p: &[f64]) -> Vec<f64> {
    let chain = Chain::from_master(me, p, Clock::Continuous).unwrap_or_else(|e| panic!("{e}"));
    let pi = chain.stationary().unwrap_or_else(|e| panic!("{e}"));
    let mut out: Vec<f64> = basins.iter().map(|s| s.iter().map(|&i| pi[i]).sum()).collect();
    out.extend(chain.implied_timescales(&pi, 5).unwrap_or_else(|e| panic!("{e}")));
    out.push(chain.mfpt(&pi, &basins[0], &basins[2]).unwrap_or_else(|e| panic!("{e}")));
    out
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("study");
    match mode {
        "study" => {
            let npts: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let t0 = Instant::now();
            let (me, basins) = model(Grid::p3());
            let rows: Vec<Vec<f64>> = (0..npts).into_par_iter().map(|id| analyse(&me, &basins, &params(id))).collect();
            let wall = t0.elapsed().as_secs_f64();
            let pts: Vec<(f64, usize, f64)> = (0..npts).map(point).collect();
            let json = serde_json::json!({
                "mode": "study", "states": me.len(), "points": npts, "threads": rayon::current_num_threads(),
                "wall_s": wall, "per_point_s": wall / npts as f64, "peak_rss_mib": peak_rss_mib(),
                "axes": pts.iter().map(|p| vec![p.0, p.1 as f64, p.2]).collect::<Vec<_>>(),
                "columns": ["pop_A", "pop_B", "pop_C", "its_1", "its_2", "its_3", "its_4", "its_5", "mfpt_A_C"],
                "rows": rows,
            });
            println!("{json}");
        }
        "big" => {
            let nx: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(316);
            let t0 = Instant::now();
            let grid = Grid::new_2d(nx, nx, (-1.5, 1.2), (-0.2, 2.0)).unwrap_or_else(|e| panic!("{e}"));
            let me = p3::model_on(grid);
            let basins: Vec<Vec<usize>> = me.basins().iter().map(|b| b.1.clone()).collect();
            let p = p3::unperturbed_params();
            let chain = Chain::from_master(&me, &p, Clock::Continuous).unwrap_or_else(|e| panic!("{e}"));
            let t_build = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let pi = chain.stationary().unwrap_or_else(|e| panic!("{e}"));
            let t_pi = t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let its = chain.implied_timescales(&pi, 5).unwrap_or_else(|e| panic!("{e}"));
            let t_its = t2.elapsed().as_secs_f64();
            let t3 = Instant::now();
            let mfpt = chain.mfpt(&pi, &basins[0], &basins[2]).unwrap_or_else(|e| panic!("{e}"));
            let t_mfpt = t3.elapsed().as_secs_f64();
            let boltz = me.boltzmann(&p);
            let pi_err = pi.iter().zip(&boltz).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            let json = serde_json::json!({
                "mode": "big", "nx": nx, "states": me.len(), "edges": chain.nnz(),
                "wall_s": t0.elapsed().as_secs_f64(), "build_s": t_build, "stationary_s": t_pi, "its_s": t_its,
                "mfpt_s": t_mfpt, "peak_rss_mib": peak_rss_mib(), "its": its, "mfpt_A_C": mfpt,
                "pops": basins.iter().map(|s| s.iter().map(|&i| pi[i]).sum::<f64>()).collect::<Vec<_>>(),
                "stationary_vs_boltzmann_max_abs": pi_err,
            });
            println!("{json}");
        }
        "profile" => {
            // where one study point's time goes (single thread)
            let (me, basins) = model(Grid::p3());
            let p = params(5);
            for _ in 0..2 {
                let t = Instant::now();
                let chain = Chain::from_master(&me, &p, Clock::Continuous).unwrap_or_else(|e| panic!("{e}"));
                let t_chain = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let pi = chain.stationary().unwrap_or_else(|e| panic!("{e}"));
                let t_pi = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let its = chain.implied_timescales(&pi, 5).unwrap_or_else(|e| panic!("{e}"));
                let t_its = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let m = chain.mfpt(&pi, &basins[0], &basins[2]).unwrap_or_else(|e| panic!("{e}"));
                let t_m = t.elapsed().as_secs_f64();
                println!(
                    "{{\"chain_s\": {t_chain}, \"stationary_s\": {t_pi}, \"its_s\": {t_its}, \"mfpt_s\": {t_m}, \"its\": {:?}, \"mfpt\": {m}}}",
                    its
                );
            }
        }
        m => {
            eprintln!("unknown mode {m}: use study [N] or big [NX]");
            std::process::exit(2);
        }
    }
}
