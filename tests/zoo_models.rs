//! Every zoo model against what it replaces and against finite differences.
//!
//! * Parity: each PK zoo file computes the right-hand side, Jacobian
//!   products and output of the hand-written `PkModel` of the same name to
//!   round-off (1e-13 relative: the same arithmetic, possibly reordered).
//! * Derivatives: generated Jacobians and parameter derivatives of every zoo
//!   model match Richardson-extrapolated central differences to 1e-7
//!   relative, or within 1e-10 absolute, at random points.
//! * Invariants: declared invariants hold for the right-hand side to
//!   round-off at the same points.

use insilico::mechanistic::PkModel;
use insilico::model::{Model, ModelSystem};
use insilico::models_zoo;
use insilico::solvers::System;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// A random parameter point: each default (or 1) scaled by U(0.5, 1.5);
/// network weights from the seeded initialisation scaled up so the network
/// term matters.
fn random_point(m: &Model, rng: &mut Rng) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut p = m.default_params(rng.0);
    for (k, par) in m.params().iter().enumerate() {
        p[k] = match par.kind {
            insilico::model::ParamKind::Weight { .. } => p[k] * 10.0,
            _ => par.default.filter(|d| *d != 0.0).unwrap_or(1.0) * rng.uniform(0.5, 1.5),
        };
    }
    let x: Vec<f64> = (0..m.nstates()).map(|_| rng.uniform(0.1, 2.0)).collect();
    let u: Vec<f64> = m.inputs().iter().map(|_| rng.uniform(0.5, 5.0)).collect();
    let cov: Vec<f64> = m.covariates().iter().map(|c| c.default.unwrap_or(1.0) * rng.uniform(0.5, 1.5)).collect();
    (p, x, u, cov)
}

#[test]
fn pk_zoo_files_reproduce_the_hand_written_models() {
    let mut rng = Rng(11);
    for name in PkModel::names() {
        let zoo = models_zoo::load(name).unwrap();
        let hand = PkModel::from_name(name).unwrap();
        assert_eq!(zoo.scalar_param_names(), hand.param_names(), "{name}");
        assert_eq!(zoo.state_names(), hand.state_names(), "{name}");
        let sys = ModelSystem::new(&zoo, &[]).unwrap();
        let n = zoo.nstates();
        for _ in 0..20 {
            let p: Vec<f64> = (0..hand.nparams()).map(|_| rng.uniform(0.5, 20.0)).collect();
            let x: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 500.0)).collect();
            let v: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            let close = |a: &[f64], b: &[f64], what: &str| {
                let scale = b.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
                for i in 0..a.len() {
                    assert!((a[i] - b[i]).abs() <= 1e-13 * scale, "{name} {what}[{i}]: {} vs {}", a[i], b[i]);
                }
            };
            sys.rhs(0.0, &x, &[], &p, &mut a);
            hand.rhs(0.0, &x, &[], &p, &mut b);
            close(&a, &b, "rhs");
            sys.jvp(0.0, &x, &[], &p, &v, &mut a);
            hand.jvp(0.0, &x, &[], &p, &v, &mut b);
            close(&a, &b, "jvp");
            sys.vjp_state(0.0, &x, &[], &p, &v, &mut a);
            hand.vjp_state(0.0, &x, &[], &p, &v, &mut b);
            close(&a, &b, "vjp");
            let (ya, yb) = (sys.output(0, 0.0, &x, &p), hand.output(0, 0.0, &x, &p));
            assert!((ya - yb).abs() <= 1e-14 * yb.abs(), "{name} output {ya} vs {yb}");
        }
    }
}

/// Richardson-extrapolated central difference of `f` at `z` along coordinate `j`.
fn fd(f: &dyn Fn(&[f64]) -> Vec<f64>, z: &[f64], j: usize) -> Vec<f64> {
    let h = 1e-3 * z[j].abs().max(1e-2);
    let central = |h: f64| {
        let (mut zp, mut zm) = (z.to_vec(), z.to_vec());
        zp[j] += h;
        zm[j] -= h;
        let (fp, fm) = (f(&zp), f(&zm));
        fp.iter().zip(&fm).map(|(a, b)| (a - b) / (2.0 * h)).collect::<Vec<f64>>()
    };
    let (d1, d2) = (central(h), central(h / 2.0));
    d1.iter().zip(&d2).map(|(a, b)| (4.0 * b - a) / 3.0).collect()
}

#[test]
fn zoo_derivatives_match_finite_differences_and_invariants_hold() {
    let mut rng = Rng(5);
    for name in models_zoo::names() {
        let m = models_zoo::load(name).unwrap();
        let n = m.nstates();
        for _ in 0..10 {
            let (p, x, u, cov) = random_point(&m, &mut rng);
            let sys = ModelSystem::new(&m, &cov).unwrap();
            let f_of_x = |xs: &[f64]| {
                let mut d = vec![0.0; n];
                sys.rhs(0.0, xs, &u, &p, &mut d);
                d
            };
            let f_of_p = |ps: &[f64]| {
                let mut d = vec![0.0; n];
                sys.rhs(0.0, &x, &u, ps, &mut d);
                d
            };
            let check = |exact: &[f64], approx: &[f64], what: String| {
                for i in 0..exact.len() {
                    // The criterion: 1e-7 relative, or within the absolute floor 1e-10.
                    let abs = (exact[i] - approx[i]).abs();
                    assert!(
                        abs <= 1e-10 || abs <= 1e-7 * approx[i].abs(),
                        "{name} {what}[{i}]: {} vs {}",
                        exact[i],
                        approx[i]
                    );
                }
            };
            let mut col = vec![0.0; n];
            for j in 0..n {
                let mut e = vec![0.0; n];
                e[j] = 1.0;
                sys.jvp(0.0, &x, &u, &p, &e, &mut col);
                check(&col, &fd(&f_of_x, &x, j), format!("df/dx[:, {j}]"));
            }
            let np = p.len();
            // Every scalar parameter, and a sample of network weights.
            let ks: Vec<usize> = (0..np).filter(|k| *k < 12 || k % 37 == 0).collect();
            for &k in &ks {
                let mut e = vec![0.0; np];
                e[k] = 1.0;
                sys.jvp_params(0.0, &x, &u, &p, &e, &mut col);
                check(&col, &fd(&f_of_p, &p, k), format!("df/dp[:, {}]", m.params()[k].name));
                // vjp_params is the transpose of jvp_params.
                let mut row = vec![0.0; np];
                for i in 0..n {
                    let mut w = vec![0.0; n];
                    w[i] = 1.0;
                    sys.vjp_params(0.0, &x, &u, &p, &w, &mut row);
                    assert!((row[k] - col[i]).abs() <= 1e-12 * col[i].abs().max(1e-12), "{name} vjp_params");
                }
            }
            let mut d = vec![0.0; n];
            sys.rhs(0.0, &x, &u, &p, &mut d);
            for c in m.invariants() {
                let s: f64 = c.iter().zip(&d).map(|(a, b)| a * b).sum();
                let scale: f64 = c.iter().zip(&d).map(|(a, b)| (a * b).abs()).sum();
                assert!(s.abs() <= 1e-14 * scale.max(1e-300), "{name}: invariant drifts at {s}");
            }
        }
    }
}
