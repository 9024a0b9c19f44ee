//! Reference problem P2 (tumour spheroid reaction–diffusion under a drug
//! schedule): what `insilico bench p2` runs.
//!
//! * the reference regimen (L = 10 µM, E = 24 h, P = 72 h) solved on the P2
//!   mesh (200 shells), timed (minimum and median of repeated solves), checked
//!   against the project's own reference (the same mesh at rtol 1e-10), with
//!   the drug mass balance;
//! * the 42-regimen sweep on all cores (rayon), written to `p2.csv`
//!   (`L,E,P,t,B`);
//! * the convergence of the viable burden under tolerance (rtol 1e-4 … 1e-8)
//!   and under mesh refinement (N = 100, 200, 400) with the observed order
//!   (a few seconds; `--quick` skips it).
//!
//! # Example
//! ```
//! use insilico_jobs::bench_p2::{regimens, solve_regimen, Regimen, OUTPUT_TIMES};
//! use insilico_jobs::solvers::Method;
//!
//! assert_eq!(regimens().len(), 42);
//! let r = solve_regimen(50, &Regimen { level: 10.0, duration: 24.0, period: 72.0 }, Method::Bdf, 1e-6, 1e-8).unwrap();
//! assert_eq!(r.burden.len(), OUTPUT_TIMES.len());
//! assert!(r.mass_balance_defect < 1e-8);
//! ```

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use crate::mechanistic::organoid::spheroid::output;
use crate::mechanistic::organoid::{Spheroid, SpheroidParams};
use crate::solvers::{solve, Method, Options, Problem};
use crate::Error;

/// Horizon (h).
pub const HORIZON: f64 = 336.0;
/// Spheroid radius (µm).
pub const RADIUS: f64 = 400.0;
/// Shells of the P2 mesh.
pub const SHELLS: usize = 200;
/// P2 relative tolerance.
pub const RTOL: f64 = 1e-6;
/// P2 absolute tolerance.
pub const ATOL: f64 = 1e-8;
/// Output times t = 0, 24, …, 336 h.
pub const OUTPUT_TIMES: [f64; 15] =
    [0.0, 24.0, 48.0, 72.0, 96.0, 120.0, 144.0, 168.0, 192.0, 216.0, 240.0, 264.0, 288.0, 312.0, 336.0];
/// Tolerances of the project's reference solution (same mesh).
pub const REF_RTOL: f64 = 1e-10;
/// Absolute tolerance of the reference solution.
pub const REF_ATOL: f64 = 1e-12;
/// Relative tolerance of the mesh study (absolute: 1/100 of it). At 400
/// shells and rtol 1e-10 the first step after the drug reaches the surface
/// would have to be below diffsol's minimum step (1e-13 h); 1e-9 keeps the
/// time error four orders below the mesh differences.
pub const MESH_RTOL: f64 = 1e-9;

/// A regimen: medium drug level `level` (µM) during `[k·period, k·period + duration)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regimen {
    /// Dose level L (µM).
    pub level: f64,
    /// Exposure duration E (h).
    pub duration: f64,
    /// Period P (h).
    pub period: f64,
}

/// The reference regimen: L = 10 µM, E = 24 h, P = 72 h.
pub const REFERENCE: Regimen = Regimen { level: 10.0, duration: 24.0, period: 72.0 };

/// The 42 regimens of the sweep, L outermost, then E, then P.
pub fn regimens() -> Vec<Regimen> {
    let mut v = Vec::with_capacity(42);
    for level in [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0] {
        for duration in [6.0, 24.0, 72.0] {
            for period in [72.0, 168.0] {
                v.push(Regimen { level, duration, period });
            }
        }
    }
    v
}

/// One solve of P2.
#[derive(Debug, Clone)]
pub struct RegimenResult {
    /// Viable burden at [`OUTPUT_TIMES`].
    pub burden: Vec<f64>,
    /// Relative drug mass-balance defect at the horizon.
    pub mass_balance_defect: f64,
    /// Accepted steps.
    pub steps: usize,
    /// Final state.
    pub final_state: Vec<f64>,
}

/// Solves P2 for `regimen` on `shells` shells.
pub fn solve_regimen(
    shells: usize,
    regimen: &Regimen,
    method: Method,
    rtol: f64,
    atol: f64,
) -> Result<RegimenResult, Error> {
    let model = Spheroid::new(RADIUS, shells).map_err(|e| Error::Bench(format!("P2 geometry: {e}")))?;
    let x0 = model.initial_state(1.0, 0.0, 0.5, 0.0);
    let sched = Spheroid::exposure_schedule(regimen.level, regimen.duration, regimen.period, HORIZON);
    let prob = Problem::new(&model, SpheroidParams::p2().to_vec())
        .with_x0(x0.clone())
        .with_schedule(sched)
        .observe(output::VIABLE_BURDEN, &OUTPUT_TIMES);
    let opts = Options { rtol, atol, ..Options::default() };
    let sol = solve(&prob, method, &opts)
        .map_err(|e| Error::Bench(format!("P2 {regimen:?} on {shells} shells, {}: {e}", method.name())))?;
    let mb = model.mass_balance(&x0, &sol.final_state);
    Ok(RegimenResult {
        burden: sol.outputs,
        mass_balance_defect: mb.relative_defect(),
        steps: sol.stats.steps,
        final_state: sol.final_state,
    })
}

/// Runs the 42-regimen sweep in parallel (on the current rayon pool), in sweep order.
pub fn sweep(method: Method) -> Result<Vec<RegimenResult>, Error> {
    regimens().par_iter().map(|r| solve_regimen(SHELLS, r, method, RTOL, ATOL)).collect()
}

/// Writes `L,E,P,t,B` for every regimen and output time.
pub fn write_csv(mut w: impl Write, regs: &[Regimen], results: &[RegimenResult]) -> std::io::Result<()> {
    writeln!(w, "L,E,P,t,B")?;
    for (r, res) in regs.iter().zip(results) {
        for (t, b) in OUTPUT_TIMES.iter().zip(&res.burden) {
            writeln!(w, "{},{},{},{},{:.12}", r.level, r.duration, r.period, t, b)?;
        }
    }
    Ok(())
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Convergence of the reference regimen's viable burden.
#[derive(Debug, Clone)]
pub struct Convergence {
    /// `(rtol, max_t |B − B_ref|)` at 200 shells; `atol = rtol/100`; reference rtol 1e-10.
    pub tolerance: Vec<(f64, f64)>,
    /// `(shells, B at the output times)` at rtol [`MESH_RTOL`].
    pub mesh: Vec<(usize, Vec<f64>)>,
    /// `max_t |B_N − B_2N|` for N = 100, 200.
    pub mesh_diffs: Vec<(usize, f64)>,
    /// Observed order `log2(d_100 / d_200)`.
    pub observed_order: f64,
    /// Richardson estimate of the error of the 200-shell solution, `d_200 / (2^p − 1)`.
    pub error_estimate_200: f64,
}

/// Runs the tolerance and mesh studies (a few seconds on 2 cores).
pub fn convergence(method: Method) -> Result<Convergence, Error> {
    let reference = solve_regimen(SHELLS, &REFERENCE, method, REF_RTOL, REF_ATOL)?;
    let tolerance = [1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
        .par_iter()
        .map(|&rtol| {
            let r = solve_regimen(SHELLS, &REFERENCE, method, rtol, rtol * 1e-2)?;
            Ok((rtol, max_abs_diff(&r.burden, &reference.burden)))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mesh = [100usize, 200, 400]
        .par_iter()
        .map(|&n| Ok((n, solve_regimen(n, &REFERENCE, method, MESH_RTOL, MESH_RTOL * 1e-2)?.burden)))
        .collect::<Result<Vec<_>, Error>>()?;
    let d100 = max_abs_diff(&mesh[0].1, &mesh[1].1);
    let d200 = max_abs_diff(&mesh[1].1, &mesh[2].1);
    let p = (d100 / d200).log2();
    Ok(Convergence {
        tolerance,
        mesh,
        mesh_diffs: vec![(100, d100), (200, d200)],
        observed_order: p,
        error_estimate_200: d200 / (2f64.powf(p) - 1.0),
    })
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct P2Options {
    /// Integration method (BDF by default).
    pub method: Method,
    /// Timed repetitions of the reference solve.
    pub repeats: usize,
    /// Run the convergence studies too.
    pub convergence: bool,
}

impl Default for P2Options {
    fn default() -> Self {
        P2Options { method: Method::Bdf, repeats: 7, convergence: true }
    }
}

/// Runs the benchmark, prints a summary and writes `out/bench.json` and `out/p2.csv`.
pub fn run(out: &Path, opts: &P2Options) -> Result<serde_json::Value, Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let threads = rayon::current_num_threads();
    let method = opts.method;
    println!(
        "P2: spheroid reaction-diffusion, {SHELLS} shells ({} states with the mass balance), rtol {RTOL:e}, atol {ATOL:e}, {}",
        5 * SHELLS + 1,
        method.name()
    );
    // Reference regimen, timed.
    let mut samples = Vec::new();
    let mut res = None;
    for _ in 0..opts.repeats.max(1) {
        let t = Instant::now();
        let r = solve_regimen(SHELLS, &REFERENCE, method, RTOL, ATOL)?;
        samples.push(t.elapsed().as_secs_f64());
        res = Some(r);
    }
    let Some(res) = res else { return Err(Error::Bench("no solve ran".into())) };
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let (wall_min, wall_median) = (sorted[0], sorted[sorted.len() / 2]);
    let t = Instant::now();
    let reference = solve_regimen(SHELLS, &REFERENCE, method, REF_RTOL, REF_ATOL)?;
    let reference_s = t.elapsed().as_secs_f64();
    let err = max_abs_diff(&res.burden, &reference.burden);
    println!(
        "reference regimen (L 10 uM, E 24 h, P 72 h): {:.4} s (min of {}; median {:.4} s), {} steps",
        wall_min,
        samples.len(),
        wall_median,
        res.steps
    );
    println!("  B(t): {}", res.burden.iter().map(|b| format!("{b:.5}")).collect::<Vec<_>>().join(" "));
    println!("  max |B - B_ref| = {err:.2e} (reference: same mesh, rtol {REF_RTOL:e}, {reference_s:.2} s)");
    println!(
        "  drug mass balance: relative defect {:.2e} (reference solve {:.2e})",
        res.mass_balance_defect, reference.mass_balance_defect
    );
    // Sweep.
    let t = Instant::now();
    let results = sweep(method)?;
    let sweep_wall = t.elapsed().as_secs_f64();
    let regs = regimens();
    let worst_mb = results.iter().map(|r| r.mass_balance_defect).fold(0.0, f64::max);
    println!(
        "sweep: {} regimens in {:.3} s on {} threads; worst mass-balance defect {:.2e}",
        regs.len(),
        sweep_wall,
        threads,
        worst_mb
    );
    let csv_path = out.join("p2.csv");
    crate::atomic::write_file(&csv_path, |w| write_csv(w, &regs, &results))?;
    let mut doc = serde_json::json!({
        "problem": "p2",
        "method": method.name(),
        "wall_s": wall_min,
        "wall_s_median": wall_median,
        "wall_s_samples": samples,
        "timing": format!("minimum of {} solves of the reference regimen, each building its problem", opts.repeats.max(1)),
        "steps": res.steps,
        "states": 5 * SHELLS + 1,
        "shells": SHELLS,
        "rtol": RTOL,
        "atol": ATOL,
        "sweep_wall_s": sweep_wall,
        "sweep_solves": regs.len(),
        "threads": threads,
        "max_abs_err_vs_reference": err,
        "reference": format!("same mesh, rtol {REF_RTOL:e}, atol {REF_ATOL:e}"),
        "reference_burden": reference.burden,
        "burden": res.burden,
        "mass_balance_defect": res.mass_balance_defect,
        "sweep_max_mass_balance_defect": worst_mb,
    });
    if opts.convergence {
        let t = Instant::now();
        let c = convergence(method)?;
        println!("convergence ({:.1} s):", t.elapsed().as_secs_f64());
        for (rtol, e) in &c.tolerance {
            println!("  rtol {rtol:.0e}: max |B - B_ref| = {e:.2e}");
        }
        for (n, d) in &c.mesh_diffs {
            println!("  N = {n} vs {}: max |B_N - B_2N| = {d:.3e}", 2 * n);
        }
        println!(
            "  observed order {:.2}; Richardson error estimate at N = 200: {:.2e}",
            c.observed_order, c.error_estimate_200
        );
        doc["convergence"] = serde_json::json!({
            "tolerance": c.tolerance.iter().map(|(r, e)| serde_json::json!({"rtol": r, "atol": r * 1e-2, "max_abs_err": e})).collect::<Vec<_>>(),
            "tolerance_reference": format!("200 shells, rtol {REF_RTOL:e}, atol {REF_ATOL:e}"),
            "mesh": c.mesh.iter().map(|(n, b)| serde_json::json!({"shells": n, "burden": b})).collect::<Vec<_>>(),
            "mesh_rtol": MESH_RTOL,
            "mesh_atol": MESH_RTOL * 1e-2,
            "mesh_max_abs_diff": c.mesh_diffs.iter().map(|(n, d)| serde_json::json!({"shells": n, "vs_shells": 2 * n, "max_abs_diff": d})).collect::<Vec<_>>(),
            "observed_order": c.observed_order,
            "richardson_error_estimate_200": c.error_estimate_200,
        });
    }
    let json_path = out.join("bench.json");
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Bench(format!("bench.json: {e}")))?;
    crate::atomic::write_bytes(&json_path, (text + "\n").as_bytes())?;
    println!("wrote {} and {} ({} rows)", json_path.display(), csv_path.display(), regs.len() * OUTPUT_TIMES.len());
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regimen_grid() {
        let r = regimens();
        assert_eq!(r.len(), 42);
        assert_eq!(r[0], Regimen { level: 0.0, duration: 6.0, period: 72.0 });
        assert_eq!(r[1].period, 168.0);
        assert_eq!(r[2].duration, 24.0);
        assert_eq!(r[6].level, 1.0);
        assert!(r.contains(&REFERENCE));
    }

    #[test]
    fn csv_layout() {
        let res = RegimenResult { burden: vec![0.5; 15], mass_balance_defect: 0.0, steps: 1, final_state: vec![] };
        let mut buf = Vec::new();
        write_csv(&mut buf, &[REFERENCE], &[res]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 16);
        assert_eq!(lines[0], "L,E,P,t,B");
        assert_eq!(lines[2], "10,24,72,24,0.500000000000");
    }

    /// P2 on a coarse mesh keeps the drug mass balance to round-off and is
    /// within its tolerance of a tight solve.
    #[test]
    fn coarse_p2_balances_mass_and_converges_in_tolerance() {
        let a = solve_regimen(40, &REFERENCE, Method::Bdf, RTOL, ATOL).unwrap();
        let b = solve_regimen(40, &REFERENCE, Method::Bdf, 1e-10, 1e-12).unwrap();
        assert!(a.mass_balance_defect < 1e-10, "{}", a.mass_balance_defect);
        // rtol 1e-6 on B ~ 0.3 gives a global error of ~1e-6; 1e-4 leaves room for step-size luck.
        assert!(max_abs_diff(&a.burden, &b.burden) < 1e-4);
        assert!((a.burden[0] - 0.5).abs() < 1e-15);
    }

    /// The convergence studies of P2 (a few seconds; also run by
    /// `insilico bench p2`): second order in space, and the tolerance error
    /// shrinking with rtol.
    #[test]
    #[ignore]
    fn p2_converges_in_tolerance_and_mesh() {
        let c = convergence(Method::Bdf).unwrap();
        eprintln!("{c:?}");
        assert!((c.observed_order - 2.0).abs() < 0.3, "order {}", c.observed_order);
        let errs: Vec<f64> = c.tolerance.iter().map(|t| t.1).collect();
        assert!(errs[4] < errs[2] && errs[2] < errs[0], "{errs:?}");
        assert!(errs[2] < 1e-5, "{errs:?}");
    }
}
