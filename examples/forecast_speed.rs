//! Speed of `forecast` (issue 12, item 5, second bullet): 1,000 posterior
//! draws × 100 candidate regimens of a two-compartment oral model (zoo
//! `pk-2cmt-oral`) over a 48 h horizon, summaries only (AUC over two
//! windows, CMAX, CTROUGH, TIME_ABOVE), on 2 threads, through the batched
//! ODE engine (Tsit5 lanes, rtol 1e-6). The reference, in the same run and
//! pool: the same trajectories through the plain diffsol `ModelSystem` path
//! (Tsit45, same tolerances) on a subset of regimens, scaled to the full
//! count; the summaries of that subset are compared between the two paths.
//!
//! `cargo run --release --example forecast_speed` (`THREADS`, `RUNS`, `REF_REGIMENS`, `SUMMARY_STEP`
//! (default 0.125 h), `RTOL` (default 1e-6) to change).

use std::time::Instant;

use insilico::bayes_config::CandidateRegimen;
use insilico::forecast::engine::{EngineUsed, ForecastPlan, Forecaster, OutputPlan};
use insilico::kernels::generators::counter_normal;
use insilico::solvers::data::Record;
use insilico::solvers::{Dataset, Options, ReadOptions};

fn dose(line: usize, time: f64, amt: f64, ii: f64, addl: u32) -> Record {
    Record {
        line,
        time,
        amt,
        dv: None,
        evid: 1,
        cmt: Some(1),
        mdv: true,
        rate: 0.0,
        ii,
        addl,
        ss: 0,
        covariates: Vec::new(),
    }
}

fn main() {
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let threads = env("THREADS", 2);
    let runs = env("RUNS", 3);
    let n_ref = env("REF_REGIMENS", 5);
    let model = insilico::models_zoo::resolve("pk-2cmt-oral", None).expect("zoo model");
    // One subject: 100 mg at 0 and 12 h, samples at 2, 6, 11 and 14 h; the forecast starts at 24 h.
    let ds = Dataset::from_str(
        "subject.csv",
        "ID,TIME,AMT,DV,EVID,CMT\n1,0,100,.,1,1\n1,2,0,1.9,0,2\n1,6,0,1.2,0,2\n1,11,0,0.7,0,2\n1,12,100,.,1,1\n1,14,0,2.1,0,2\n",
        &ReadOptions::default(),
    )
    .expect("dataset");
    // 1,000 parameter vectors (ka, CL, V1, Q, V2): log-normal around typical values, seeded.
    let typical = [1.0, 5.0, 30.0, 10.0, 50.0];
    let sd = [0.4, 0.3, 0.2, 0.0, 0.0];
    let draws: Vec<Vec<f64>> = (0..1000u64)
        .map(|d| {
            typical
                .iter()
                .zip(&sd)
                .enumerate()
                .map(|(k, (t, s))| t * (s * counter_normal(7, d, k as u64)).exp())
                .collect()
        })
        .collect();
    // 100 regimens: 25 amounts × 4 intervals, repeated over the horizon.
    let mut regimens = Vec::new();
    for (j, ii) in [6.0, 8.0, 12.0, 24.0].into_iter().enumerate() {
        for a in 0..25 {
            let amt = 25.0 * (a + 1) as f64;
            let addl = (48.0 / ii) as u32 - 1;
            regimens.push(CandidateRegimen {
                name: format!("{amt}mg-q{ii}h"),
                records: vec![dose(j * 25 + a + 1, 0.0, amt, ii, addl)],
                source: "forecast_speed".into(),
            });
        }
    }
    let plan = ForecastPlan {
        outputs: vec![OutputPlan { name: "cp".into(), error: None, threshold: Some(1.0) }],
        horizon: 48.0,
        step: 0.5,
        summary_step: std::env::var("SUMMARY_STEP").ok().and_then(|v| v.parse().ok()).unwrap_or(0.125),
        auc: vec![(0.0, 24.0), (24.0, 48.0)],
        residual: false,
        seed: 1,
        bands: false,
        ode: Options {
            rtol: std::env::var("RTOL").ok().and_then(|v| v.parse().ok()).unwrap_or(1e-6),
            atol: 1e-9,
            max_steps: 100_000,
        },
        dose_cmt: Some(1),
        force_diffsol: false,
    };
    let t = Instant::now();
    let lanes = Forecaster::new(&model, plan.clone()).expect("forecaster");
    let diffsol = Forecaster::new(&model, ForecastPlan { force_diffsol: true, ..plan }).expect("forecaster");
    println!(
        "compile: {:.1} ms; batched engine: {}",
        t.elapsed().as_secs_f64() * 1e3,
        lanes.lanes_unavailable().unwrap_or("yes")
    );
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    let subj = &ds.subjects[0];
    let (mut lane_s, mut ref_s) = (Vec::new(), Vec::new());
    let mut last = None;
    let mut reference = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = pool.install(|| lanes.forecast_subject(&ds, subj, 0, 24.0, &draws, &regimens)).expect("forecast");
        lane_s.push(t.elapsed().as_secs_f64());
        assert!(r.iter().all(|x| x.engine == EngineUsed::Lanes && x.failed == 0));
        last = Some(r);
        let t = Instant::now();
        let r = pool
            .install(|| diffsol.forecast_subject(&ds, subj, 0, 24.0, &draws, &regimens[..n_ref]))
            .expect("forecast");
        ref_s.push(t.elapsed().as_secs_f64() * regimens.len() as f64 / n_ref as f64);
        reference = Some(r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (tl, tr) = (median(&mut lane_s), median(&mut ref_s));
    let (last, reference) = (last.expect("a run"), reference.expect("a run"));
    // Agreement of the summaries on the reference subset (relative, over every draw).
    let mut worst = (0.0f64, String::new());
    for (a, b) in last.iter().zip(&reference) {
        for (sa, sb) in a.summaries.iter().zip(&b.summaries) {
            for (x, y) in sa.values.iter().zip(&sb.values) {
                let rel = (x - y).abs() / y.abs().max(1e-3);
                if rel > worst.0 {
                    worst = (rel, format!("{} {}", a.regimen, sa.name));
                }
            }
        }
    }
    let n = draws.len() * regimens.len();
    println!(
        "{} draws × {} regimens = {n} trajectories, 48 h, summaries only, {threads} threads, median of {runs}:",
        draws.len(),
        regimens.len()
    );
    println!(
        "  batched engine (Tsit5 lanes):   {tl:.3} s  ({:.1} µs per trajectory per thread)",
        tl * threads as f64 / n as f64 * 1e6
    );
    println!(
        "  diffsol ModelSystem (Tsit45):   {tr:.3} s  (measured on {n_ref} regimens × {} draws, scaled ×{})",
        draws.len(),
        regimens.len() as f64 / n_ref as f64
    );
    println!("  ratio diffsol / batched:        {:.1}", tr / tl);
    println!("  target < 1 s on {threads} threads:      {}", if tl < 1.0 { "met" } else { "NOT met" });
    println!("  largest relative difference of a summary between the two paths: {:.2e} ({})", worst.0, worst.1);
    let s = &last[99].summaries;
    println!(
        "  e.g. {}: {}",
        last[99].regimen,
        s.iter().map(|v| format!("{} median {:.4}", v.name, v.stats().2[2])).collect::<Vec<_>>().join(", ")
    );
}
