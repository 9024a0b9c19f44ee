//! The batched forward-sensitivity right-hand side of model-language systems
//! (`System::sensitivity_rhs` of `ModelSystem`, one evaluation of `∂f/∂x` and
//! `∂f/∂θ` for all directions) against the per-direction path
//! (`jvp` + `jvp_params` per direction) that every other system takes, on the
//! zoo's `pk-2cmt-oral` with bolus and infusion doses.

use insilico_model::ModelSystem;
use insilico_solvers::gradient::sensitivities;
use insilico_solvers::{Dose, Method, Options, Problem, Schedule, System};

/// Delegates everything to the model but keeps the trait's default
/// `sensitivity_rhs` (`false`): the solver's per-direction path.
struct PerDirection<'a>(&'a ModelSystem);

impl System for PerDirection<'_> {
    fn nstates(&self) -> usize {
        self.0.nstates()
    }
    fn nparams(&self) -> usize {
        self.0.nparams()
    }
    fn ninputs(&self) -> usize {
        self.0.ninputs()
    }
    fn rhs(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], dx: &mut [f64]) {
        self.0.rhs(t, x, u, p, dx)
    }
    fn jvp(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        self.0.jvp(t, x, u, p, v, out)
    }
    fn vjp_state(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        self.0.vjp_state(t, x, u, p, w, out)
    }
    fn jvp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], v: &[f64], out: &mut [f64]) {
        self.0.jvp_params(t, x, u, p, v, out)
    }
    fn vjp_params(&self, t: f64, x: &[f64], u: &[f64], p: &[f64], w: &[f64], out: &mut [f64]) {
        self.0.vjp_params(t, x, u, p, w, out)
    }
    fn noutputs(&self) -> usize {
        self.0.noutputs()
    }
    fn output(&self, k: usize, t: f64, x: &[f64], p: &[f64]) -> f64 {
        self.0.output(k, t, x, p)
    }
    fn output_grad(&self, k: usize, t: f64, x: &[f64], p: &[f64], gx: &mut [f64], gp: &mut [f64]) {
        self.0.output_grad(k, t, x, p, gx, gp)
    }
}

fn model() -> ModelSystem {
    let model = insilico_models_zoo::load("pk-2cmt-oral").unwrap();
    ModelSystem::new(&model, &[]).unwrap()
}

/// ka, CL, V1, Q, V2.
const P: [f64; 5] = [1.3, 4.2, 31.0, 7.5, 58.0];

/// Oral bolus at 0 and 24 h, a 2-hour infusion into central at 12 h
/// (repeated every 24 h twice), observations of cp over 60 h.
fn problem<'a>(sys: &'a dyn System, p: &[f64]) -> Problem<'a> {
    let schedule = Schedule::new()
        .dose(Dose::bolus(0.0, 0, 100.0))
        .dose(Dose::infusion(12.0, 1, 80.0, 2.0).repeated(24.0, 1))
        .dose(Dose::bolus(24.0, 0, 100.0));
    let times = [0.5, 1.0, 2.0, 6.0, 12.0, 13.0, 14.0, 18.0, 24.0, 25.5, 36.5, 48.0, 60.0];
    Problem::new(sys, p.to_vec()).with_schedule(schedule).observe(0, &times)
}

#[test]
fn batched_sensitivity_rhs_equals_per_direction_products() {
    let sys = model();
    let (n, m) = (sys.nstates(), sys.nparams());
    let x = [12.0, 30.0, 17.0, 5.0];
    let s: Vec<f64> = (0..3 * n).map(|i| 0.1 * i as f64 - 0.4).collect();
    let params = [Some(0), None, Some(2)];
    let mut out = vec![0.0; 3 * n];
    assert!(sys.sensitivity_rhs(0.7, &x, &[], &P, &s, &params, &mut out));
    for (j, param) in params.iter().enumerate() {
        let mut want = vec![0.0; n];
        sys.jvp(0.7, &x, &[], &P, &s[j * n..(j + 1) * n], &mut want);
        if let Some(i) = *param {
            let mut e = vec![0.0; m];
            e[i] = 1.0;
            let mut dp = vec![0.0; n];
            sys.jvp_params(0.7, &x, &[], &P, &e, &mut dp);
            want.iter_mut().zip(&dp).for_each(|(w, d)| *w += d);
        }
        // The same products summed in the same order: equal to round-off.
        for (a, b) in out[j * n..(j + 1) * n].iter().zip(&want) {
            assert!((a - b).abs() <= 1e-14 * (1.0 + b.abs()), "direction {j}: {a} vs {b}");
        }
    }
}

#[test]
fn batched_path_matches_per_direction_path_and_finite_differences() {
    let sys = model();
    let generic = PerDirection(&sys);
    let opts = Options { rtol: 1e-8, atol: 1e-11, ..Options::default() };
    let dirs = [0, 1, 2, 3, 4];
    for method in [Method::Tsit45, Method::Bdf] {
        let fast = sensitivities(&problem(&sys, &P), method, &opts, &dirs).unwrap();
        let slow = sensitivities(&problem(&generic, &P), method, &opts, &dirs).unwrap();
        // Both paths feed the integrator the same right-hand side (to
        // round-off, see the test above), so the step sequences agree and the
        // results differ by round-off, far below the 1e-8 ODE tolerance
        // the brief's 1e-6 relative bound is derived from.
        for (a, b) in fast.predictions.iter().chain(&fast.jacobian).zip(slow.predictions.iter().chain(&slow.jacobian)) {
            assert!((a - b).abs() <= 1e-9 * b.abs() + 1e-12, "{method:?}: {a} vs {b}");
        }
        // The Jacobian against central differences of the predictions: step
        // h = 1e-4·θ gives truncation ~h² ≈ 1e-8 relative, ODE error
        // 1e-8/h ≈ 1e-4 of the scale; 1e-4 relative (+1e-7 absolute) covers both.
        let k = dirs.len();
        for &i in &dirs {
            let h = 1e-4 * P[i];
            let (mut up, mut dn) = (P, P);
            up[i] += h;
            dn[i] -= h;
            let fu = sensitivities(&problem(&sys, &up), method, &opts, &[]).unwrap().predictions;
            let fd = sensitivities(&problem(&sys, &dn), method, &opts, &[]).unwrap().predictions;
            for (o, (u, d)) in fu.iter().zip(&fd).enumerate() {
                let want = (u - d) / (2.0 * h);
                let got = fast.jacobian[o * k + i];
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs() + 1e-7,
                    "{method:?} obs {o} param {i}: {got} vs {want}"
                );
            }
        }
    }
}
