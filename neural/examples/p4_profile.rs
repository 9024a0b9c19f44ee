//! P4 gradient profile: time per full-data gradient, accepted steps per
//! subject, and the gradient's error against a tight-tolerance reference,
//! for the P4 objective as `examples/p4_hybrid.toml` configures it
//! (proportional error, weight prior sd 1, rtol 1e-5 / atol 1e-6).
//!
//! The objective integrates subjects in lockstep groups ([`insilico_neural::lockstep`])
//! as `fit` does; the same objective one subject at a time (the fast path
//! before lockstep) is timed in the same run as the reference.
//!
//! `cargo run --release -p insilico-neural --example p4_profile [rtol atol]`
use std::time::Instant;

use insilico_neural::fast::{FastRhs, FastWorkspace, Plan};
use insilico_neural::fit::{problem, Engine, Objective};
use insilico_neural::lockstep::{self, LockWorkspace, OneByOne};
use insilico_neural::ChannelForm;

#[path = "../tests/common/p4.rs"]
mod p4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<f64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rtol = args.first().copied().unwrap_or(1e-5);
    let atol = args.get(1).copied().unwrap_or(1e-6);
    let h = p4::hybrid(ChannelForm::Rate)?;
    let subjects = p4::subjects()?;
    let model = p4::model(&h, &h);
    let spec = |rtol: f64, atol: f64| p4::spec(rtol, atol, Engine::Fast, 1);
    let one = OneByOne(&h);
    let model1 = p4::model(&h, &one);
    let sp = spec(rtol, atol);
    let obj = Objective::new(&model, &sp, subjects.iter().collect(), false)?;
    let obj1 = Objective::new(&model1, &sp, subjects.iter().collect(), false)?;
    let sref = spec(1e-11, 1e-13);
    let oref = Objective::new(&model1, &sref, subjects.iter().collect(), false)?;
    let ls = FastRhs::lockstep(&h).ok_or("no lockstep form")?;
    // Points: the initial one, and a few perturbed weight vectors (larger network outputs).
    let phi0 = obj.initial();
    let mut points = vec![phi0.clone()];
    for (k, s) in [(7u64, 1.0), (11, 2.0)] {
        let w = h.net().init(k, s);
        let mut phi = phi0.clone();
        let n = phi.len();
        phi[n - w.len()..].copy_from_slice(&w);
        points.push(phi);
    }
    // A fitted model (`insilico fit examples/p4_hybrid.toml --out DIR`): P4_MODEL=DIR/model.json.
    if let Some(path) = std::env::var_os("P4_MODEL") {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let num = |key: &str| -> Vec<f64> {
            v[key].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default()
        };
        let (theta, sigma, w) = (num("theta"), num("sigma"), num("weights"));
        if theta.len() == 3 && sigma.len() == 1 && w.len() == h.net().n_params() {
            let mut phi = vec![theta[0].ln(), theta[2].ln(), sigma[0].ln()];
            phi.extend_from_slice(&w);
            points.push(phi);
        }
    }
    // P4_PERF=N: only N lockstep gradients at the initial point on one thread (for `perf record`).
    if let Some(reps) = std::env::var("P4_PERF").ok().and_then(|v| v.parse::<usize>().ok()) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let t0 = Instant::now();
        pool.install(|| -> Result<(), insilico_neural::fit::FitError> {
            for _ in 0..reps {
                std::hint::black_box(obj.value_grad(std::hint::black_box(&phi0))?);
            }
            Ok(())
        })?;
        println!("{:.3} ms per gradient (mean, 1 thread)", t0.elapsed().as_secs_f64() * 1e3 / reps as f64);
        return Ok(());
    }
    for (pi, phi) in points.iter().enumerate() {
        let (f, g) = obj.value_grad(phi)?;
        let (f1, g1) = obj1.value_grad(phi)?;
        let (fr, gr) = if std::env::var_os("P4_NOREF").is_some() { (f1, g1.clone()) } else { oref.value_grad(phi)? };
        let scale = gr.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let errs = |g: &[f64]| {
            let max = g.iter().zip(&gr).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
            let l2 = (g.iter().zip(&gr).map(|(a, b)| (a - b).powi(2)).sum::<f64>()
                / gr.iter().map(|b| b * b).sum::<f64>())
            .sqrt();
            (max, l2)
        };
        let (err, l2) = errs(&g);
        let (err1, l21) = errs(&g1);
        // Steps per subject (one by one) and per lockstep group.
        let mut steps = Vec::new();
        let mut ws = FastWorkspace::default();
        let mut ps = Vec::new();
        let mut plans = Vec::new();
        for s in &subjects {
            let mut p = vec![phi[0].exp(), 0.0, phi[1].exp()];
            let n = phi.len();
            p.extend_from_slice(&phi[n - h.net().n_params()..]);
            let prob = problem(&h, p.clone(), &[0.0; 3], s);
            let plan = Plan::new(&prob)?;
            let gg = plan.gradient(&h, &p, &[0.0; 3], &sp.options, &|_, y| (y, 1.0), &mut ws)?;
            steps.push(gg.steps);
            ps.push(p);
            plans.push(plan);
        }
        let tot: usize = steps.iter().sum();
        let prefs: Vec<&Plan> = plans.iter().collect();
        let mut lws = LockWorkspace::default();
        let mut gsteps = Vec::new();
        for gr in lockstep::groups(&prefs) {
            let pl: Vec<&Plan> = gr.iter().map(|&i| &plans[i]).collect();
            let pp: Vec<&[f64]> = gr.iter().map(|&i| ps[i].as_slice()).collect();
            let lo = |_: usize, y: f64| (y, 1.0);
            let losses: Vec<&insilico_solvers::Loss> = gr.iter().map(|_| &lo as &insilico_solvers::Loss).collect();
            let r = ls.gradient(&pl, &pp, &[0.0; 3], &sp.options, &losses, &mut lws)?;
            gsteps.push((r[0].steps, gr.len()));
        }
        let lock_subject_steps: usize = gsteps.iter().map(|(s, l)| s * l).sum();
        // Minimum over batches of 10 (the machine is shared: the minimum is the least disturbed).
        // The two objectives alternate batch by batch so that both see the same load.
        let time = || -> Result<(f64, f64), insilico_neural::fit::FitError> {
            let (mut best, mut best1) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..30 {
                let t0 = Instant::now();
                for _ in 0..10 {
                    std::hint::black_box(obj.value_grad(std::hint::black_box(phi))?);
                }
                best = best.min(t0.elapsed().as_secs_f64() / 10.0);
                let t0 = Instant::now();
                for _ in 0..10 {
                    std::hint::black_box(obj1.value_grad(std::hint::black_box(phi))?);
                }
                best1 = best1.min(t0.elapsed().as_secs_f64() / 10.0);
            }
            Ok((best, best1))
        };
        let (dt, dt_ref) = time()?;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let (dt1, dt1_ref) = pool.install(time)?;
        println!(
            "point {pi}: f lockstep {f:.6}, one by one {f1:.6}, ref {fr:.6}\n  grad err vs ref: lockstep max {err:.2e} l2 {l2:.2e}; \
             one by one max {err1:.2e} l2 {l21:.2e}\n  steps one by one: per subject mean {:.1} min {} max {}; \
             lockstep: groups {:?} (steps, lanes), {:.1} subject-steps per subject\n  \
             ms/gradient lockstep: {:.3} ({} threads), {:.3} (1 thread); one by one (in-run reference): {:.3} ({} threads), {:.3} (1 thread)",
            tot as f64 / subjects.len() as f64,
            steps.iter().min().unwrap_or(&0),
            steps.iter().max().unwrap_or(&0),
            gsteps,
            lock_subject_steps as f64 / subjects.len() as f64,
            dt * 1e3,
            rayon::current_num_threads(),
            dt1 * 1e3,
            dt_ref * 1e3,
            rayon::current_num_threads(),
            dt1_ref * 1e3,
        );
    }
    Ok(())
}
