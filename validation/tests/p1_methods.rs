//! P1 against its closed form for every diffsol method, and P1 gradients
//! (forward sensitivities and adjoint) against finite differences.

use insilico_solvers::{gradient, solve, GradientMethod, Method, Options};
use insilico_validation::p1;

/// The corners of the sweep: smallest/largest dose, shortest/longest interval,
/// slowest/fastest clearance.
fn corners() -> Vec<p1::Regimen> {
    let mut v = Vec::new();
    for dose in [50.0, 1000.0] {
        for tau in [6.0, 24.0] {
            for cl_scale in [0.5, 2.0] {
                v.push(p1::Regimen { dose, tau, cl_scale });
            }
        }
    }
    v
}

/// Every method at P1's stated tolerances (rtol 1e-6, atol 1e-9) against the
/// closed form at every grid point with C > 0. BDF, ESDIRK34 and Tsit45 stay
/// within 1e-5 relative. TR-BDF2, a second-order method, takes 8-19 thousand
/// steps per solve at these tolerances and its global error reaches 1.5e-5
/// (measured): it misses 1e-5 at the stated tolerances — a documented
/// shortfall (docs/notes/issue-2.md), checked here at 2e-5 — and meets it with
/// rtol 1e-7.
#[test]
fn every_method_matches_the_closed_form() {
    let model = p1::model();
    for method in Method::ALL {
        let mut worst = 0.0f64;
        for r in corners() {
            let sol = solve(&p1::problem(&model, &r), method, &p1::options()).unwrap();
            let reference = p1::closed_form(&r).unwrap();
            worst = worst.max(p1::max_rel_err(&sol.outputs, &reference));
        }
        eprintln!("{}: max rel err {worst:.2e}", method.name());
        let bound = if method == Method::TrBdf2 { 2e-5 } else { 1e-5 };
        assert!(worst <= bound, "{}: max rel err {worst:.3e} > {bound:e}", method.name());
    }
    let tighter = insilico_solvers::Options { rtol: 1e-7, ..p1::options() };
    let mut worst = 0.0f64;
    for r in corners() {
        let sol = solve(&p1::problem(&model, &r), Method::TrBdf2, &tighter).unwrap();
        worst = worst.max(p1::max_rel_err(&sol.outputs, &p1::closed_form(&r).unwrap()));
    }
    eprintln!("tr-bdf2 at rtol 1e-7: max rel err {worst:.2e}");
    assert!(worst <= 1e-5, "tr-bdf2 at rtol 1e-7: {worst:.3e}");
}

/// Loss: squared log-error against a shifted closed form at 24 sampling times,
/// so every parameter matters and the residuals are not zero.
#[test]
fn p1_gradients_match_finite_differences() {
    let model = p1::model();
    let r = p1::Regimen { dose: 300.0, tau: 12.0, cl_scale: 1.3 };
    let times: Vec<f64> = (1..=24).map(|k| k as f64 * 13.7 + 0.25).collect();
    let mut prob = p1::problem(&model, &r);
    prob.observations.clear();
    prob = prob.observe(0, &times);
    prob.x0 = vec![10.0, 5.0, 2.0, 0.0];
    let target: Vec<f64> = times.iter().map(|t| 2.0 + (t / 50.0).sin()).collect();
    let loss = |j: usize, y: f64| {
        let d = y.ln() - target[j].ln();
        (d * d, 2.0 * d / y)
    };
    let tight = Options { rtol: 1e-11, atol: 1e-12, ..Options::default() };
    let total = |p: &insilico_solvers::Problem| -> f64 {
        solve(p, Method::Bdf, &tight).unwrap().outputs.iter().enumerate().map(|(j, &y)| loss(j, y).0).sum()
    };
    // Fourth-order central differences. Steps are large (1e-2 relative for parameters,
    // 0.05 mg for initial amounts) because some derivatives are small (~1e-4) while the
    // solver's noise in the loss is ~1e-10: noise/h must stay below 1e-5 relative;
    // truncation ~h⁴ (1e-8) does too.
    let fd = |perturb: &dyn Fn(&mut insilico_solvers::Problem, f64), h: f64| {
        let at = |k: f64| {
            let mut q = p1::problem(&model, &r);
            q.observations = prob.observations.clone();
            q.x0 = prob.x0.clone();
            perturb(&mut q, k * h);
            total(&q)
        };
        (-at(2.0) + 8.0 * at(1.0) - 8.0 * at(-1.0) + at(-2.0)) / (12.0 * h)
    };
    let fd_p: Vec<f64> = (0..5).map(|i| fd(&|q, d| q.params[i] += d, 1e-2 * prob.params[i])).collect();
    let fd_x: Vec<f64> = (0..4).map(|i| fd(&|q, d| q.x0[i] += d, 0.05)).collect();
    let opts = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    for how in [GradientMethod::Forward, GradientMethod::Adjoint] {
        for method in [Method::Bdf, Method::Tsit45] {
            let g = gradient(&prob, method, &opts, &loss, how).unwrap();
            let scale = fd_p.iter().chain(&fd_x).map(|v| v.abs()).fold(0.0, f64::max);
            for (k, (a, b)) in g.d_params.iter().zip(&fd_p).chain(g.d_x0.iter().zip(&fd_x)).enumerate() {
                // The eliminated-amount state does not feed back: its exact
                // gradient is 0, and finite differences only see solver noise
                // (~1e-10, from step sizes that depend on it); require that
                // noise to be small. Every other component: 1e-5 relative.
                let rel = if *a == 0.0 { b.abs() / (1e-5 * scale) } else { (a - b).abs() / b.abs() };
                eprintln!("{how:?} {}: #{k} {a:.10e} fd {b:.10e} rel {rel:.1e}", method.name());
                assert!(rel < 1e-5, "{how:?} {} component {k}: {a} vs {b}", method.name());
            }
        }
    }
}
