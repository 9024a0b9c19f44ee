//! Parity of the model-file sweep with the hand-written organoid path it
//! replaced (issue 10, item 1): the default embedded sweep
//! (examples/sweep_organoid.toml, zoo model `organoid-drug-response` on the
//! Cranelift-compiled `LaneModel<6>`) against the `Organoid` `BatchModel`
//! with the closed-form untreated growth (examples/support/sweep_baseline.rs).
//!
//! Tolerance: every output column (viable_final, viable_nadir,
//! toxicity_peak) within 1e-9 relative; the efficacy compared through the
//! surviving fraction `1 − efficacy = viable / untreated` within 1e-9
//! relative (the efficacy itself is a small difference of two numbers near
//! 1 for weak regimens, so its own relative error says nothing about the
//! solve). By default 8 of the 64 organoids of each of the 56 regimens
//! (448 trajectories); `SWEEP_PARITY_MEMBERS=64` runs the whole table.

#[path = "../examples/support/sweep_baseline.rs"]
mod baseline;

use insilico::sweep::{Device, Engine, Sweep, EMBEDDED_CONFIG};

#[test]
fn default_organoid_sweep_matches_the_hand_written_path() {
    let sweep = Sweep::from_toml_str(EMBEDDED_CONFIG, "embedded", None).unwrap();
    let engine = Engine::new(&sweep, Device::Cpu).unwrap();
    let pop = sweep.population_size();
    let members: u64 = std::env::var("SWEEP_PARITY_MEMBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(8).min(pop);
    let (mut worst_out, mut worst_surv, mut worst_eff_abs) = (0.0f64, 0.0f64, 0.0f64);
    let (mut n, mut steps_differ) = (0usize, 0usize);
    for g in 0..sweep.groups() {
        let new = sweep.solve_chunk(&engine, g * pop, members as usize, &|_| {}).unwrap();
        let old = baseline::solve(&sweep, &new.inputs);
        for (i, o) in old.iter().enumerate() {
            assert_eq!(new.status[i], 0, "new path failed at id {}", g * pop + i as u64);
            assert_eq!(o.status, 0, "hand-written path failed at id {}", g * pop + i as u64);
            for (k, want) in o.outputs.iter().enumerate() {
                let got = new.outputs[i * sweep.outputs.len() + k];
                worst_out = worst_out.max((got - want).abs() / want.abs());
            }
            let (got, want) = (new.efficacy[i], o.efficacy);
            worst_surv = worst_surv.max(((1.0 - got) - (1.0 - want)).abs() / (1.0 - want).abs());
            worst_eff_abs = worst_eff_abs.max((got - want).abs());
            steps_differ += (new.steps[i] != o.steps as i32) as usize;
            n += 1;
        }
    }
    println!(
        "organoid sweep parity over {n} trajectories: outputs max rel diff {worst_out:.2e}, \
         surviving fraction (1 - efficacy) max rel diff {worst_surv:.2e}, efficacy max abs diff {worst_eff_abs:.2e}, \
         step counts differ on {steps_differ}"
    );
    assert!(worst_out <= 1e-9, "outputs differ by {worst_out:e} relative");
    assert!(worst_surv <= 1e-9, "surviving fractions differ by {worst_surv:e} relative");
}
