//! Conformational ensembles: reference problem P3 (ligand well on the
//! Mueller–Brown landscape), how the perturbation moves the equilibrium,
//! the slowest relaxation times and the mean first-passage times, and a
//! three-state Markov state model read from CSV with a ligand that binds
//! its folded state.
//!
//! Run with `cargo run --release --example conformation_mueller_brown`.

use std::time::Instant;

use insilico::mechanistic::conformation::{analysis, p3, Grid, MasterEquation, Perturbation};
use insilico::solvers::{solve, Method, Options, Problem};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- P3: 64 x 64 SQRA master equation, kT = 20, ligand well of depth 30 ---
    let model = p3::model();
    let p0 = model.boltzmann(&p3::unperturbed_params()); // equilibrium without the ligand
    let times = p3::times();
    let mut prob = Problem::new(&model, p3::perturbed_params()).with_x0(p0.clone());
    for basin in 0..3 {
        prob = prob.observe(basin, &times);
    }
    let start = Instant::now();
    let sol = solve(&prob, Method::Bdf, &Options { rtol: p3::RTOL, atol: p3::ATOL, ..Options::default() })?;
    println!(
        "P3: {} states, solved in {:.3} s ({} steps)",
        model.len(),
        start.elapsed().as_secs_f64(),
        sol.stats.steps
    );
    println!("   t            A          B          C          sum - 1");
    let k = times.len();
    for (i, t) in times.iter().enumerate() {
        let s: f64 = sol.states[i].iter().sum();
        println!(
            "   {t:<10.3e}   {:.6}   {:.6}   {:.6}   {:+.1e}",
            sol.outputs[i],
            sol.outputs[k + i],
            sol.outputs[2 * k + i],
            s - 1.0
        );
    }
    let before = model.basin_populations(&p0);
    let after = model.basin_populations(&model.boltzmann(&p3::perturbed_params()));
    println!(
        "equilibrium A/B/C: {:.4}/{:.4}/{:.4} without ligand, {:.4}/{:.4}/{:.4} with (t → ∞)",
        before[0], before[1], before[2], after[0], after[1], after[2]
    );

    // --- Relaxation and first passage on a coarser 32 x 32 grid (dense eigendecomposition: fast) ---
    let coarse = p3::model_on(Grid::new_2d(32, 32, (-1.5, 1.2), (-0.2, 2.0))?);
    let shifts = analysis::timescale_shifts(&coarse, &p3::unperturbed_params(), &p3::perturbed_params(), 3)?;
    println!("implied timescales on 32 x 32 (without → with ligand):");
    for (a, b, r) in shifts {
        println!("   {a:.4} → {b:.4}  (×{r:.3})");
    }
    let b = coarse.basins();
    for (name, p) in [("without", p3::unperturbed_params()), ("with", p3::perturbed_params())] {
        let ac = analysis::mean_first_passage_time(&coarse, &p, &b[0].1, &b[2].1)?;
        let ca = analysis::mean_first_passage_time(&coarse, &p, &b[2].1, &b[0].1)?;
        println!("MFPT {name} ligand: A → C {ac:.3}, C → A {ca:.3}");
    }

    // --- A three-state MSM from CSV, with a ligand binding the folded state ---
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/msm_three_state.csv");
    let kd = vec![f64::INFINITY, f64::INFINITY, 2.0]; // µM; only "folded" binds
    let msm = MasterEquation::read_rate_csv(path, 1.0)?
        .with_perturbation(Perturbation::Ligand { name: "ligand_uM".into(), kd })?;
    println!("MSM {path}: detailed-balance defect {:.1e}", msm.detailed_balance_defect());
    for conc in [0.0, 2.0, 18.0] {
        let p = vec![1.0, conc];
        let pi = analysis::stationary(&msm, &p)?;
        let its = analysis::implied_timescales(&msm, &p, 2)?;
        let unfold = analysis::mean_first_passage_time(&msm, &p, &[2], &[0])?;
        println!(
            "   [L] = {conc:>4} µM: equilibrium {:.3}/{:.3}/{:.3}, timescales {:.3}, {:.3} µs, MFPT folded → unfolded {:.2} µs",
            pi[0], pi[1], pi[2], its[0], its[1], unfold
        );
    }
    Ok(())
}
