//! Exact sensitivities (`conformation::sensitivity`) against central finite
//! differences, on random perturbation points (issue 14): every output
//! (macrostate population, observable, 3 slowest implied timescales, MFPT,
//! TPT rate) with respect to every parameter (kT, ligand concentration, a
//! mutation amplitude, a force) and to single-state free energies, in
//! continuous and discrete time. Tolerance: 1e-6 relative (to
//! max(|exact|, 1e-3·scale of the output's gradient)). The differences are
//! Richardson-extrapolated central differences, `(4D(h/2) − D(h))/3` with
//! `h = 1e-3·max(1, |θ|)`: truncation O(h⁴) ~ 1e-12, and round-off of the
//! outputs (~1e-12 relative: LU solves, eigensolver) over `h` ~ 1e-9.

use insilico_mechanistic::conformation::sensitivity::{self, RateGradient};
use insilico_mechanistic::conformation::{Chain, Clock, MasterEquation, MatrixFile, MatrixKind, Perturbation};

fn data(name: &str) -> String {
    format!("{}/tests/data/deeptime/{name}", env!("CARGO_MANIFEST_DIR"))
}

struct Setup {
    me: MasterEquation,
    a: Vec<usize>,
    b: Vec<usize>,
    obs: Vec<f64>,
}

fn setup(file: &str, kind: MatrixKind) -> Setup {
    let chain = MatrixFile::read(data(file)).unwrap().chain(kind).unwrap();
    let n = chain.len();
    let (nx, ny) = (15, 20);
    let a: Vec<usize> = (0..n).filter(|i| i % nx < 4).collect();
    let b: Vec<usize> = (0..n).filter(|i| i % nx >= nx - 4).collect();
    assert_eq!(n, nx * ny);
    let kd: Vec<f64> = (0..n).map(|i| if i % nx >= 6 && i % nx < 10 { 0.5 } else { f64::INFINITY }).collect();
    let ddg: Vec<f64> = (0..n).map(|i| if (i / nx) % 4 == 1 { 0.7 } else { 0.0 }).collect();
    let x: Vec<f64> = (0..n).map(|i| -((i % nx) as f64) / nx as f64).collect();
    let me = MasterEquation::from_chain(&chain, 1.0)
        .unwrap()
        .with_perturbation(Perturbation::Ligand { name: "L".into(), kd })
        .unwrap()
        .with_perturbation(Perturbation::Shift { name: "mut".into(), shape: ddg })
        .unwrap()
        .with_perturbation(Perturbation::Shift { name: "force".into(), shape: x })
        .unwrap();
    let obs: Vec<f64> = (0..n).map(|i| ((i as f64) * 0.37).sin()).collect();
    Setup { me, a, b, obs }
}

/// The outputs at `p`, and their rate gradients.
fn outputs(s: &Setup, p: &[f64], clock: Clock) -> (Chain, Vec<RateGradient>) {
    let chain = Chain::from_master_checked(&s.me, p, clock).unwrap();
    let pi = chain.stationary().unwrap();
    let n = chain.len();
    let ind: Vec<f64> = (0..n).map(|i| if s.a.contains(&i) { 1.0 } else { 0.0 }).collect();
    let mut g = vec![
        sensitivity::stationary_linear(&chain, &pi, &ind).unwrap(),
        sensitivity::stationary_linear(&chain, &pi, &s.obs).unwrap(),
    ];
    g.extend(sensitivity::timescales(&chain, &pi, 3).unwrap());
    g.push(sensitivity::mfpt(&chain, &pi, &s.a, &s.b).unwrap());
    g.push(sensitivity::tpt_rate(&chain, &pi, &s.a, &s.b).unwrap());
    // the values agree with the analysis functions
    let its = chain.implied_timescales(&pi, 3).unwrap();
    for k in 0..3 {
        // two eigensolver calls (values only / with vectors): round-off apart
        assert!((g[2 + k].value - its[k]).abs() <= 1e-10 * its[k], "{k}: {} vs {}", g[2 + k].value, its[k]);
    }
    let m = chain.mfpt(&pi, &s.a, &s.b).unwrap();
    assert!((g[5].value - m).abs() <= 1e-12 * m);
    let r = chain.tpt(&pi, &s.a, &s.b).unwrap().rate;
    assert!((g[6].value - r).abs() <= 1e-12 * r, "{} vs {r}", g[6].value);
    (chain, g)
}

const NAMES: [&str; 7] = ["pop_A", "obs", "its_1", "its_2", "its_3", "mfpt_A_B", "rate_A_B"];

fn check(s: &Setup, clock: Clock, points: &[Vec<f64>]) -> f64 {
    let mut worst: f64 = 0.0;
    for p in points {
        let (chain, g) = outputs(s, p, clock);
        let exact: Vec<Vec<f64>> = g.iter().map(|g| sensitivity::parameter_gradient(&s.me, p, &chain, g)).collect();
        for k in 0..p.len() {
            let h = 1e-3 * p[k].abs().max(1.0);
            let central = |h: f64| -> Vec<f64> {
                let (mut pp, mut pm) = (p.clone(), p.clone());
                pp[k] += h;
                pm[k] -= h;
                let (_, gp) = outputs(s, &pp, clock);
                let (_, gm) = outputs(s, &pm, clock);
                gp.iter().zip(&gm).map(|(a, b)| (a.value - b.value) / (2.0 * h)).collect()
            };
            let (d1, d2) = (central(h), central(h / 2.0));
            for o in 0..g.len() {
                let fd = (4.0 * d2[o] - d1[o]) / 3.0;
                let scale = exact[o].iter().map(|v| v.abs()).fold(0.0, f64::max);
                let rel = (fd - exact[o][k]).abs() / exact[o][k].abs().max(1e-3 * scale).max(1e-300);
                worst = worst.max(rel);
                assert!(
                    rel < 1e-6,
                    "{clock:?} p = {p:?}: d{}/dθ{k}: exact {} fd {fd} rel {rel:e}",
                    NAMES[o],
                    exact[o][k]
                );
            }
        }
    }
    worst
}

fn points() -> Vec<Vec<f64>> {
    // deterministic "random" points: kT, L, mutation amplitude, force
    let mut seed: u64 = 14;
    let mut u = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..3).map(|_| vec![0.8 + 0.4 * u(), 2.0 * u(), u(), 2.0 * u() - 1.0]).collect()
}

#[test]
fn parameter_sensitivities_match_central_differences_continuous() {
    let s = setup("grid300_Q.npz", MatrixKind::Rate);
    let w = check(&s, Clock::Continuous, &points());
    println!("continuous: worst relative error {w:.2e}");
}

#[test]
fn parameter_sensitivities_match_central_differences_discrete() {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("reference.json")).unwrap()).unwrap();
    let lag = r["grid300"]["lag"].as_f64().unwrap();
    let s = setup("grid300_T.npz", MatrixKind::Transition { lag: Some(lag) });
    // small amplitudes keep T = I + τK stochastic
    let pts: Vec<Vec<f64>> = points()
        .into_iter()
        .map(|p| vec![0.9 + 0.2 * (p[0] - 0.8) / 0.4, 0.3 * p[1], 0.3 * p[2], 0.3 * p[3]])
        .collect();
    let w = check(&s, Clock::Discrete { lag }, &pts);
    println!("discrete: worst relative error {w:.2e}");
}

/// Hot spots: `∂y/∂G_m` against central differences of a unit shift of one
/// state's free energy, for the 3 states with the largest exact gradient
/// and the last state (relative to max(|exact|, 1e-2·largest)).
#[test]
fn free_energy_sensitivities_match_central_differences() {
    let base = setup("grid300_Q.npz", MatrixKind::Rate);
    let p = vec![1.0, 0.3, 0.5, 0.2];
    let (chain, g) = outputs(&base, &p, Clock::Continuous);
    let n = chain.len();
    for (o, go) in g.iter().enumerate() {
        let dg = sensitivity::free_energy_gradient(&chain, p[0], go);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| dg[y].abs().total_cmp(&dg[x].abs()));
        let scale = dg[order[0]].abs();
        for &m in order.iter().take(3).chain([&n.saturating_sub(1)]) {
            let mut shape = vec![0.0; n];
            shape[m] = 1.0;
            let me = base.me.clone().with_perturbation(Perturbation::Shift { name: "dG".into(), shape }).unwrap();
            let s = Setup { me, a: base.a.clone(), b: base.b.clone(), obs: base.obs.clone() };
            let central = |h: f64| {
                let mut pp = p.clone();
                pp.push(h);
                let mut pm = p.clone();
                pm.push(-h);
                (outputs(&s, &pp, Clock::Continuous).1[o].value - outputs(&s, &pm, Clock::Continuous).1[o].value)
                    / (2.0 * h)
            };
            let fd = (4.0 * central(5e-4) - central(1e-3)) / 3.0;
            // floor 1e-2 of the largest state gradient: for a single state's ΔG
            // the outputs' round-off over the step (~1e-12·y/h) is that large
            let rel = (fd - dg[m]).abs() / dg[m].abs().max(1e-2 * scale);
            assert!(rel < 1e-6, "d{}/dG_{m}: exact {} fd {fd} rel {rel:e}", NAMES[o], dg[m]);
        }
    }
}
