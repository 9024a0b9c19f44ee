//! Issue 12, item 5 (first half): MAP + Laplace for 4,000 subjects of a
//! two-compartment oral model (the zoo's `pk-2cmt-oral`) with 4 samples
//! each, on 2 threads. Prints the time per subject and the ODE solves per
//! subject for a few settings, and writes the simulated dataset and the
//! MAP estimates (for the SciPy reference implementation).
//!
//! ```text
//! cargo run --release -p insilico-estimation --example posterior_speed [OUT_DIR] [N_SUBJECTS]
//! ```
//! OUT_DIR (default `target/posterior_speed`) receives `data.csv`
//! (ID,TIME,AMT,DV,EVID,CMT) and `map.csv` (ID,ETA_ka,ETA_CL,ETA_V1,OFV).
//!
//! Population: ka 1.0 /h, CL 4 L/h, V1 30 L, Q 8 L/h, V2 60 L; log-normal
//! η on ka, CL, V1 with ω² 0.2, 0.1, 0.1; combined2 error a = 0.05 mg/L,
//! b = 0.1; dose 100 mg into the depot; samples at 0.5, 2, 6 and 12 h.

use std::fmt::Write as _;
use std::time::Instant;

use insilico_estimation::posterior::{LaplaceHessian, Posterior, PosteriorOptions};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_solvers::data::{Dataset, ReadOptions};
use insilico_solvers::Options;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TIMES: [f64; 4] = [0.5, 2.0, 6.0, 12.0];
const OMEGA2: [f64; 3] = [0.2, 0.1, 0.1];
const SIGMA: [f64; 2] = [0.05, 0.1];

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// CPU seconds of this process so far (user + system, Linux `/proc/self/stat`;
/// NaN elsewhere): the load-independent figure on a shared machine.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the command name (which is in parentheses): utime, stime are 14 and 15 (1-based).
    let Some(rest) = stat.rsplit(')').next() else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // `rest` starts at field 3 (state), so utime (14) is index 11; clock ticks are 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn dataset(n: usize, dv: impl Fn(usize, usize) -> f64) -> String {
    let mut s = String::from("ID,TIME,AMT,DV,EVID,CMT\n");
    for i in 0..n {
        let _ = writeln!(s, "{},0,100,.,1,1", i + 1);
        for (j, t) in TIMES.iter().enumerate() {
            let _ = writeln!(s, "{},{t},0,{},0,2", i + 1, dv(i, j));
        }
    }
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out_dir = std::path::PathBuf::from(args.get(1).map_or("target/posterior_speed", |s| s.as_str()));
    let n: usize = args.get(2).map_or(Ok(4000), |s| s.parse())?;
    std::fs::create_dir_all(&out_dir)?;
    let model = insilico_models_zoo::load("pk-2cmt-oral")?;
    let spec = PopulationSpec::log_normal(
        &[("ka", 1.0), ("CL", 4.0), ("V1", 30.0), ("Q", 8.0), ("V2", 60.0)],
        &[("ka", OMEGA2[0]), ("CL", OMEGA2[1]), ("V1", OMEGA2[2])],
        ErrorModel::Combined2,
        &SIGMA,
    )?;
    // Simulate: η ~ N(0, Ω), y = f·(1 + b·ε1) + a·ε2 (seeded).
    let placeholder = Dataset::from_str("placeholder.csv", &dataset(n, |_, _| 1.0), &ReadOptions::default())?;
    let sim = Posterior::new(&model, &placeholder, &spec, &PosteriorOptions::default())?;
    let mut rng = ChaCha8Rng::seed_from_u64(20261207);
    let mut dv = vec![[0.0; 4]; n];
    for (i, row) in dv.iter_mut().enumerate() {
        let eta: Vec<f64> = OMEGA2.iter().map(|w| w.sqrt() * normal(&mut rng)).collect();
        let f = sim.predictions_at(i, &eta)?;
        for j in 0..4 {
            let y = f[j] * (1.0 + SIGMA[1] * normal(&mut rng)) + SIGMA[0] * normal(&mut rng);
            row[j] = (y.max(1e-3) * 1e6).round() / 1e6;
        }
    }
    let text = dataset(n, |i, j| dv[i][j]);
    std::fs::write(out_dir.join("data.csv"), &text)?;
    let data = Dataset::from_str("data.csv", &text, &ReadOptions::default())?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    println!("{n} subjects, pk-2cmt-oral, 4 samples each, 3 random effects, 2 threads");
    let mut reference = None;
    for (label, rtol, hessian) in [
        ("rtol 1e-8, observed Hessian (reference)", 1e-8, LaplaceHessian::Observed),
        ("rtol 1e-6, observed Hessian (default)", 1e-6, LaplaceHessian::Observed),
        ("rtol 1e-6, expected Hessian", 1e-6, LaplaceHessian::Expected),
    ] {
        let opts = PosteriorOptions {
            ode: Options { rtol, atol: rtol * 1e-3, max_steps: 1_000_000 },
            hessian,
            ..PosteriorOptions::default()
        };
        let post = Posterior::new(&model, &data, &spec, &opts)?;
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let maps = pool.install(|| post.map_all());
        let secs = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let nonconv = maps.iter().filter(|m| !m.converged).count();
        let (mut max_diff, mut ofv) = (0.0f64, 0.0);
        if let Some(r) = &reference {
            let r: &Vec<insilico_estimation::SubjectPosterior> = r;
            for (a, b) in maps.iter().zip(r) {
                for (x, y) in a.eta.iter().zip(&b.eta) {
                    max_diff = max_diff.max((x - y).abs());
                }
            }
        }
        for m in &maps {
            ofv += m.ofv;
        }
        println!(
            "{label}: wall {:.3} s = {:.3} ms per subject; CPU {:.3} ms per subject ({:.3} ms per subject if both threads had a core); {:.1} ODE solves per subject (predictions included), {:.3} ms CPU per solve; {nonconv} not converged, Σ OFV {ofv:.4}, max |Δη| vs the first setting {max_diff:.2e}",
            secs,
            1e3 * secs / n as f64,
            1e3 * cpu / n as f64,
            0.5e3 * cpu / n as f64,
            post.ode_solves() as f64 / n as f64,
            1e3 * cpu / post.ode_solves() as f64,
        );
        if reference.is_none() {
            let mut csv = String::from("ID,ETA_ka,ETA_CL,ETA_V1,OFV\n");
            for m in &maps {
                let _ = writeln!(csv, "{},{},{},{},{}", m.id, m.eta[0], m.eta[1], m.eta[2], m.ofv);
            }
            std::fs::write(out_dir.join("map.csv"), csv)?;
            reference = Some(maps);
        }
    }
    println!("wrote {} and {}", out_dir.join("data.csv").display(), out_dir.join("map.csv").display());
    Ok(())
}
