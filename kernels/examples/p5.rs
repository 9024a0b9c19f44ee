//! P5: P1 with 10⁶ parameter sets (each P1 regimen × 100 log-normal V1 draws,
//! 20% spread), summaries (Cmax, AUC, Ctrough over [312, 336]) reduced per
//! trajectory. Times the CPU (all cores) and, with `--features cuda` and a
//! GPU, the CUDA kernels; checks accuracy on a sample against the exact
//! matrix-exponential path; writes a JSON of the figures.
//!
//! `cargo run --release -p insilico-kernels --features cuda --example p5 -- [N] [OUT.json]`
use std::time::Instant;

use insilico_kernels::linear::solve_linear;
use insilico_kernels::{solve_summaries, Batch, Regimen, Stepper, Summary, SummaryObserver, Tolerances, TwoCmtOral};

/// SplitMix64: a seeded, stateless-per-index generator (results do not depend on threads).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn normal(i: u64) -> f64 {
    let u1 = ((splitmix(2 * i) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = ((splitmix(2 * i + 1) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn build(n: usize) -> Batch<4> {
    let reps = (n / 10_000).max(1);
    let mut rows = Vec::with_capacity(n);
    let mut regs = Vec::with_capacity(n);
    'outer: for i in 0..50 {
        let dose = 50.0 + 950.0 * i as f64 / 49.0;
        for tau in [6.0, 8.0, 12.0, 24.0] {
            for j in 0..50 {
                let scale = (0.5f64.ln() + 4.0f64.ln() * j as f64 / 49.0).exp();
                let reg = Regimen::repeated_bolus(dose, 0, tau, 336.0).expect("valid P1 regimen");
                for _ in 0..reps {
                    let idx = rows.len();
                    if idx == n {
                        break 'outer;
                    }
                    let v1 = 30.0 * (0.2 * normal(idx as u64)).exp();
                    rows.push(vec![1.2, 5.0 * scale, v1, 10.0, 50.0]);
                    regs.push(reg);
                }
            }
        }
    }
    Batch::from_rows(&rows, regs).expect("finite parameters")
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let out = args.get(2).cloned().unwrap_or_else(|| "p5.json".into());
    let batch = build(n);
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    let tol = Tolerances::default();
    let window = (312.0, 336.0);
    let threads = rayon::current_num_threads();
    eprintln!("P5: {} trajectories, CPU on {threads} threads ...", batch.n);

    let t = Instant::now();
    let (cpu, cpu_stats) = solve_summaries(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 336.0, &tol, window, 1.0);
    let cpu_s = t.elapsed().as_secs_f64();
    let mean_steps = cpu_stats.iter().map(|s| s.steps as f64).sum::<f64>() / batch.n as f64;
    eprintln!("CPU Tsit5: {cpu_s:.3} s, mean steps {mean_steps:.0}");

    // Accuracy on a sample against the exact path.
    let sample: Vec<usize> = (0..batch.n).step_by((batch.n / 1000).max(1)).collect();
    let mut err_cpu = 0.0f64;
    let exact: Vec<Summary> = sample
        .iter()
        .map(|&i| {
            let mut p = [0.0; 5];
            batch.params_of(i, &mut p);
            let mut o = SummaryObserver::new(window.0, window.1, 1.0);
            solve_linear(&TwoCmtOral, &p, &batch.x0_of(i), &batch.regimens[i], &times, 336.0, &mut o);
            o.s
        })
        .collect();
    for (k, &i) in sample.iter().enumerate() {
        err_cpu = err_cpu
            .max(rel(cpu[i].max, exact[k].max))
            .max(rel(cpu[i].auc, exact[k].auc))
            .max(rel(cpu[i].min, exact[k].min));
    }
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut json = [
        "\"problem\": \"p5\"".to_string(),
        format!("\"n\": {}", batch.n),
        format!("\"cpu_threads\": {threads}"),
        format!("\"cpu_tsit5_s\": {cpu_s}"),
        format!("\"mean_steps_tsit5\": {mean_steps}"),
        format!("\"cpu_max_rel_err_vs_exact_sample\": {err_cpu}"),
    ]
    .to_vec();

    #[cfg(feature = "cuda")]
    {
        use insilico_kernels::cuda::{available, GpuEnsemble};
        match available() {
            Err(e) => {
                eprintln!("GPU part skipped: {e}");
                json.push(format!("\"gpu\": \"unavailable: {e}\""));
            }
            Ok(name) => {
                let g = GpuEnsemble::new(&TwoCmtOral).expect("kernel compiles");
                json.push(format!("\"device\": \"{name}\""));
                json.push(format!("\"nvrtc_compile_s\": {}", g.compile_s));
                // Warm-up (module load, first-launch costs) on a small batch.
                let small = build(10_000);
                let _ = g.solve_summaries(&TwoCmtOral, Stepper::Tsit5, &small, &times, 336.0, &tol, window, 1.0);
                for (stepper, key) in [(Stepper::Tsit5, "tsit5"), (Stepper::Rosenbrock, "rosenbrock")] {
                    let (gs, gst, timing) = g
                        .solve_summaries(&TwoCmtOral, stepper, &batch, &times, 336.0, &tol, window, 1.0)
                        .expect("GPU run");
                    let failed = gst.iter().filter(|s| s.status != insilico_kernels::Status::Ok).count();
                    let mut err = 0.0f64;
                    for (k, &i) in sample.iter().enumerate() {
                        err = err
                            .max(rel(gs[i].max, exact[k].max))
                            .max(rel(gs[i].auc, exact[k].auc))
                            .max(rel(gs[i].min, exact[k].min));
                    }
                    eprintln!(
                        "GPU {key}: kernel {:.4} s, total {:.4} s, failed {failed}, max rel err {err:.2e}",
                        timing.kernel_s, timing.total_s
                    );
                    json.push(format!("\"gpu_{key}_kernel_s\": {}", timing.kernel_s));
                    json.push(format!("\"gpu_{key}_total_s\": {}", timing.total_s));
                    json.push(format!("\"gpu_{key}_max_rel_err_vs_exact_sample\": {err}"));
                    json.push(format!("\"gpu_{key}_failed\": {failed}"));
                    if stepper == Stepper::Tsit5 {
                        let d = gs
                            .iter()
                            .zip(&cpu)
                            .map(|(a, b)| rel(a.max, b.max).max(rel(a.auc, b.auc)))
                            .fold(0.0, f64::max);
                        json.push(format!("\"gpu_vs_cpu_tsit5_max_rel_diff\": {d}"));
                        json.push(format!("\"cpu_over_gpu_tsit5\": {}", cpu_s / timing.kernel_s));
                        // Bounds. Memory: parameters, state, regimen, summaries and
                        // status per trajectory at the 3.0 TB/s measured on this H100.
                        // Arithmetic: FP64 instructions counted from the kernel source
                        // for this 4-state model — ~370 per Tsit5 step (6 right-hand
                        // sides of 12, the stage sums 192, the error estimate 60 and
                        // its norm 40, the controller 10) and ~120 per dense output —
                        // times the measured mean step count, at the H100 SXM's FP64
                        // issue rate: 132 SMs × 64 lanes × 1.98 GHz = 16.7e12
                        // instructions/s (its 33.5 TFLOP/s counts an FMA as two; the
                        // kernel is compiled without FMA contraction to stay the
                        // bitwise twin of the CPU code, so each multiply and add is
                        // one instruction).
                        let bytes = batch.n as f64 * 8.0 * (5.0 + 4.0 + 6.0 + 5.0 + 1.5);
                        let mem_s = bytes / 3.0e12;
                        let instrs = batch.n as f64 * (370.0 * mean_steps + 120.0 * 673.0);
                        let arith_s = instrs / 16.7e12;
                        json.push(format!("\"bound_memory_s\": {mem_s}"));
                        json.push(format!("\"bound_arith_s\": {arith_s}"));
                        json.push(format!("\"kernel_over_bound\": {}", timing.kernel_s / mem_s.max(arith_s)));
                    }
                }
            }
        }
    }
    let text = format!("{{\n  {}\n}}\n", json.join(",\n  "));
    if let Err(e) = std::fs::write(&out, &text) {
        eprintln!("could not write {out}: {e}");
        std::process::exit(1);
    }
    print!("{text}");
}
