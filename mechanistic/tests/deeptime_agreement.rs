//! Agreement of `conformation::markov` with deeptime (issue 14): reference
//! values from `scripts/deeptime_reference.py` (deeptime 0.5.0, stored in
//! `tests/data/deeptime/reference.json`) on deeptime's 100-state double
//! well (`double_well_discrete().analytic_msm`) and a reversible 300-state
//! model built by the script, read back from CSV.
//!
//! Tolerances (the issue's): stationary distribution 1e-12 absolute, the 5
//! slowest implied timescales 1e-9 relative, MFPT 1e-9 relative, committor
//! 1e-10 absolute, TPT rate 1e-9 relative.

use insilico_mechanistic::conformation::{Chain, Clock, MsmMatrix};
use serde_json::Value;

fn data(name: &str) -> String {
    format!("{}/tests/data/deeptime/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Value {
    let text = std::fs::read_to_string(data("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn sets(v: &Value, k: &str) -> Vec<usize> {
    v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn dense_chain(file: &str, clock: Clock) -> Chain {
    let m = MsmMatrix::read(data(file)).unwrap();
    let n = m.rows.len();
    let e: Vec<(usize, usize, f64)> =
        (0..n).flat_map(|i| m.rows[i].iter().enumerate().map(move |(j, &v)| (i, j, v))).collect();
    match clock {
        Clock::Discrete { lag } => Chain::from_transition_entries(n, &e, lag).unwrap(),
        Clock::Continuous => Chain::from_rates(n, &e, clock).unwrap(),
    }
}

/// Returns the worst errors (stationary abs, ITS rel, MFPT rel, committor abs, rate rel).
pub fn compare(chain: &Chain, r: &Value) -> [f64; 5] {
    let (a, b) = (sets(r, "A"), sets(r, "B"));
    let pi = chain.stationary().unwrap();
    let e_pi = pi.iter().zip(floats(&r["stationary"])).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let its = chain.implied_timescales(&pi, 5).unwrap();
    let e_its = its.iter().zip(floats(&r["its"])).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max);
    let m_ab = chain.mfpt(&pi, &a, &b).unwrap();
    let m_ba = chain.mfpt(&pi, &b, &a).unwrap();
    let rel = |x: f64, y: f64| ((x - y) / y).abs();
    let e_mfpt = rel(m_ab, r["mfpt_AB"].as_f64().unwrap()).max(rel(m_ba, r["mfpt_BA"].as_f64().unwrap()));
    let tpt = chain.tpt(&pi, &a, &b).unwrap();
    let e_q = tpt.forward.iter().zip(floats(&r["committor_AB"])).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let e_rate = rel(tpt.rate, r["rate_AB"].as_f64().unwrap());
    [e_pi, e_its, e_mfpt, e_q, e_rate]
}

fn check(name: &str, e: [f64; 5]) {
    println!(
        "{name}: stationary {:.2e}, its rel {:.2e}, mfpt rel {:.2e}, committor {:.2e}, rate rel {:.2e}",
        e[0], e[1], e[2], e[3], e[4]
    );
    assert!(e[0] <= 1e-12, "{name}: stationary {:e}", e[0]);
    assert!(e[1] <= 1e-9, "{name}: ITS {:e}", e[1]);
    assert!(e[2] <= 1e-9, "{name}: MFPT {:e}", e[2]);
    assert!(e[3] <= 1e-10, "{name}: committor {:e}", e[3]);
    assert!(e[4] <= 1e-9, "{name}: rate {:e}", e[4]);
}

#[test]
fn deeptime_double_well_100_states() {
    let r = reference();
    let r = &r["dw100"];
    let lag = r["lag"].as_f64().unwrap();
    check("dw100 (csv)", compare(&dense_chain("dw100_T.csv", Clock::Discrete { lag }), r));
}

#[test]
fn built_here_300_states_discrete() {
    let r = reference();
    let r = &r["grid300"];
    let lag = r["lag"].as_f64().unwrap();
    check("grid300 T (csv)", compare(&dense_chain("grid300_T.csv", Clock::Discrete { lag }), r));
}

use insilico_mechanistic::conformation::{Eigensolver, MatrixFile, MatrixKind};

#[test]
fn deeptime_double_well_from_npy() {
    let r = reference();
    let r = &r["dw100"];
    let lag = r["lag"].as_f64().unwrap();
    let chain =
        MatrixFile::read(data("dw100_T.npy")).unwrap().chain(MatrixKind::Transition { lag: Some(lag) }).unwrap();
    check("dw100 (npy)", compare(&chain, r));
}

#[test]
fn built_here_300_states_from_npz_discrete_and_continuous() {
    let r = reference();
    let lag = r["grid300"]["lag"].as_f64().unwrap();
    let t = MatrixFile::read(data("grid300_T.npz")).unwrap().chain(MatrixKind::Transition { lag: Some(lag) }).unwrap();
    check("grid300 T (npz)", compare(&t, &r["grid300"]));
    let q = MatrixFile::read(data("grid300_Q.npz")).unwrap().chain(MatrixKind::Rate).unwrap();
    check("grid300 Q (npz, continuous, NumPy reference)", compare(&q, &r["grid300_Q"]));
}

/// The Lanczos path (used above 1500 states) against the stored reference
/// on the 300-state model, forced.
#[test]
fn lanczos_timescales_match_the_reference() {
    let r = reference();
    for (key, file) in [("grid300_Q", "grid300_Q.npz"), ("grid300", "grid300_T.npz")] {
        let kind = if key == "grid300" {
            MatrixKind::Transition { lag: r["grid300"]["lag"].as_f64() }
        } else {
            MatrixKind::Rate
        };
        let c = MatrixFile::read(data(file)).unwrap().chain(kind).unwrap();
        let pi = c.stationary().unwrap();
        let lam = c.slowest_eigenvalues_with(&pi, 5, Eigensolver::Lanczos).unwrap();
        let its: Vec<f64> = lam.iter().map(|l| c.timescale(*l)).collect();
        let e = its.iter().zip(floats(&r[key]["its"])).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max);
        println!("{key}: Lanczos ITS rel err {e:.2e}");
        assert!(e <= 1e-9, "{key}: {e:e} {its:?}");
    }
}

/// A non-reversible chain (a driven 3-cycle) takes the LU paths: uniform
/// stationary distribution, MFPT by hand, backward committor on the
/// time-reversed chain.
#[test]
fn non_reversible_cycle() {
    // 0→1→2→0 at rate 2, backwards at rate 1
    let e = [(0, 1, 2.0), (1, 2, 2.0), (2, 0, 2.0), (1, 0, 1.0), (2, 1, 1.0), (0, 2, 1.0)];
    let c = Chain::from_rates(3, &e, Clock::Continuous).unwrap();
    assert!(c.reversible_pi().is_none());
    let pi = c.stationary().unwrap();
    assert!(pi.iter().all(|p| (p - 1.0 / 3.0).abs() < 1e-15), "{pi:?}");
    // MFPT to {2}: m0 = (1 + 2 m1)/3, m1 = (1 + m0)/3  ⇒  m0 = 5/7, m1 = 4/7
    let m = c.mfpt_vector(&[2]).unwrap();
    assert!((m[0] - 5.0 / 7.0).abs() < 1e-14 && (m[1] - 4.0 / 7.0).abs() < 1e-14, "{m:?}");
    // forward committor 0 → 2 at state 1: (2·1 + 1·0)/3; backward on the reversed
    // cycle (k̃_10 = k_01 = 2, k̃_12 = k_21 = 1): (2·1 + 1·0)/3 — so q⁺ + q⁻ ≠ 1
    // (it would be 1 for a reversible chain)
    let qf = c.committor_forward(&[0], &[2]).unwrap();
    let qb = c.committor_backward(&pi, &[0], &[2]).unwrap();
    assert!((qf[1] - 2.0 / 3.0).abs() < 1e-14 && (qb[1] - 2.0 / 3.0).abs() < 1e-14, "{qf:?} {qb:?}");
    let its = c.implied_timescales(&pi, 2).unwrap();
    // eigenvalues −4.5 ± i·√3/2: both timescales 1/4.5
    assert!(its.iter().all(|t| (t - 1.0 / 4.5).abs() < 1e-12), "{its:?}");
    assert!(c.tpt(&pi, &[0], &[2]).unwrap().rate > 0.0);
}
