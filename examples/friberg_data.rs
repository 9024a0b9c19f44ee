//! Generates `examples/friberg/fit_data.csv`: 40 subjects simulated from
//! `examples/friberg/friberg.model` at the true parameters below, with 10%
//! proportional (multiplicative Gaussian) noise on every observation, for
//! the Friberg recovery check of `insilico fit` (`examples/friberg/fit.toml`,
//! `tests/friberg_fit.rs`).
//!
//! `cargo run --release --example friberg_data` (seed 20261207: the file in
//! the repository is its output; the generator is deterministic).
//!
//! Design: four dose groups of 10 subjects (50, 100, 200, 400 mg as 1-hour
//! infusions into `central`, CMT 1, on days 0 and 21); drug concentration
//! `cp` observed at 0.5, 1, 2, 4, 8, 12 and 24 h after the first dose
//! (CMT 1) and neutrophils daily from day 0 to day 42 (CMT 8, `circ`).

use std::fmt::Write;

use insilico::model::{Model, ModelSystem};
use insilico::solvers::{solve, Dose, Method, ObservationPoint, Options, Problem, Schedule};

/// The true parameters: CL, V1, Q, V2, Circ0, MTT, gamma, slope.
pub const TRUTH: [(&str, f64); 8] = [
    ("CL", 10.0),
    ("V1", 20.0),
    ("Q", 5.0),
    ("V2", 50.0),
    ("Circ0", 5.0),
    ("MTT", 120.0),
    ("gamma", 0.17),
    ("slope", 0.3),
];
/// The generator's seed.
pub const SEED: u64 = 20261207;

/// SplitMix64: a small, well-known generator (no dependency).
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.next().max(1e-300);
        let v = self.next();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let model = Model::from_file(format!("{root}/examples/friberg/friberg.model"))?;
    let sys = ModelSystem::new(&model, &[])?;
    let mut p = model.default_params(0);
    for (name, v) in TRUTH {
        let k = model.param_index(name).ok_or(format!("no parameter {name}"))?;
        p[k] = v;
    }
    let cp_times = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0];
    let anc_times: Vec<f64> = (0..=42).map(|d| 24.0 * d as f64).collect();
    let (cp_out, anc_out) = (1, 0); // outputs: neutrophils, cp
    let mut rng = SplitMix(SEED);
    let mut csv = String::from("ID,TIME,AMT,RATE,DV,EVID,CMT\n");
    let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    for id in 1..=40 {
        let dose = [50.0, 100.0, 200.0, 400.0][(id - 1) / 10];
        let mut obs: Vec<(f64, usize, usize)> = cp_times.iter().map(|&t| (t, cp_out, 1)).collect();
        obs.extend(anc_times.iter().map(|&t| (t, anc_out, 8)));
        obs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
        let prob = Problem::new(&sys, p.clone())
            .with_schedule(
                Schedule::new().dose(Dose::infusion(0.0, 0, dose, 1.0)).dose(Dose::infusion(504.0, 0, dose, 1.0)),
            )
            .with_x0(sys.initial_state(&p));
        let mut prob = prob;
        prob.observations = obs.iter().map(|&(time, output, _)| ObservationPoint { time, output }).collect();
        let sol = solve(&prob, Method::Bdf, &opts)?;
        writeln!(csv, "{id},0,{dose},{dose},.,1,1")?;
        let mut second = false;
        for ((t, _, cmt), y) in obs.iter().zip(&sol.outputs) {
            if *t >= 504.0 && !second {
                writeln!(csv, "{id},504,{dose},{dose},.,1,1")?;
                second = true;
            }
            let dv = y * (1.0 + 0.1 * rng.normal());
            writeln!(csv, "{id},{t},0,0,{dv:.6},0,{cmt}")?;
        }
    }
    let path = format!("{root}/examples/friberg/fit_data.csv");
    std::fs::write(&path, csv)?;
    println!("wrote {path}: 40 subjects (seed {SEED})");
    Ok(())
}
