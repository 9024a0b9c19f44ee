//! PCCA+ against deeptime 0.5.0 (`scripts/pcca_reference.py`, stored in
//! `tests/data/deeptime/pcca_reference.json`): a 40-state three-well chain
//! built by the script (m = 3 and m = 4) and deeptime's 100-state double
//! well (m = 2). Memberships must agree to 1e-8 absolute, up to a
//! permutation of the macrostates (the same algorithm — inner simplex,
//! Nelder–Mead with SciPy `fmin`'s rules — on eigenvectors that agree to
//! ~1e-12; the optimiser's own tolerance is 1e-4, so this checks that the
//! same path is taken), and the crisp assignments must be identical.

use insilico_mechanistic::conformation::{pcca, Chain, MsmMatrix};
use serde_json::Value;

fn data(name: &str) -> String {
    format!("{}/tests/data/deeptime/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

fn chain_of(t: &[Vec<f64>]) -> Chain {
    let n = t.len();
    let e: Vec<(usize, usize, f64)> =
        (0..n).flat_map(|i| t[i].iter().enumerate().map(move |(j, &v)| (i, j, v))).collect();
    Chain::from_transition_entries(n, &e, 1.0).unwrap()
}

fn permutations(m: usize) -> Vec<Vec<usize>> {
    if m == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(m - 1) {
        for k in 0..m {
            let mut q = p.clone();
            q.insert(k, m - 1);
            out.push(q);
        }
    }
    out
}

/// Worst membership difference over the best column permutation, and the permutation.
fn compare(ours: &[Vec<f64>], reference: &[Vec<f64>]) -> (f64, Vec<usize>) {
    let m = reference[0].len();
    permutations(m)
        .into_iter()
        .map(|p| {
            let mut e = 0.0f64;
            for (a, b) in ours.iter().zip(reference) {
                for k in 0..m {
                    e = e.max((a[p[k]] - b[k]).abs());
                }
            }
            (e, p)
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

fn check(name: &str, chain: &Chain, r: &Value) {
    let m = r["m"].as_u64().unwrap() as usize;
    let pi = chain.stationary().unwrap();
    let p = pcca(chain, &pi, m).unwrap();
    let reference = matrix(&r["memberships"]);
    let (err, perm) = compare(&p.memberships, &reference);
    println!("{name}: worst membership difference {err:.3e}, crispness {:.4}", p.crispness);
    assert!(err <= 1e-8, "{name}: memberships differ by {err}");
    let ra: Vec<usize> = r["assignments"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let ours = p.assignments();
    for (i, (&a, &b)) in ours.iter().zip(&ra).enumerate() {
        assert_eq!(a, perm[b], "{name}: state {i} assigned differently");
    }
}

#[test]
fn pcca_agrees_with_deeptime() {
    let text = std::fs::read_to_string(data("pcca_reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    for name in ["wells40_m3", "wells40_m4"] {
        check(name, &chain_of(&matrix(&r[name]["T"])), &r[name]);
    }
    let dw = MsmMatrix::read(data("dw100_T.csv")).unwrap();
    check("dw100_m2", &chain_of(&dw.rows), &r["dw100_m2"]);
}
