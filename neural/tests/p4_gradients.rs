//! The fast path against the generic `gradient` and finite differences, on
//! the P4 hybrid model (one-compartment oral PK with a learned elimination
//! flux) and on the whole fitting objective, random effects included.

use insilico_mechanistic::PkModel;
use insilico_neural::fast::{FastWorkspace, Generic, Plan};
use insilico_neural::fit::{Engine, ErrorModel, FitSpec, Model, Objective, ParamSpec, Stage};
use insilico_neural::{ChannelForm, FluxResidual, Mlp};
use insilico_solvers::{gradient, GradientMethod, Method, Options, System};

mod common;
use common::p4;

fn hybrid() -> FluxResidual<PkModel, Mlp> {
    hybrid_form(ChannelForm::Rate)
}

fn hybrid_form(form: ChannelForm) -> FluxResidual<PkModel, Mlp> {
    p4::hybrid(form).unwrap()
}

fn data() -> Vec<insilico_neural::fit::FitSubject> {
    p4::subjects().unwrap()
}

/// Both channel forms: the rate form and the saturating (bounded-flux) form
/// with its gate half-saturated at 40 mg, inside the range subject 18 reaches.
#[test]
fn fast_gradient_matches_generic_and_fd() {
    for form in [ChannelForm::Rate, ChannelForm::Saturating { half: 40.0 }] {
        fast_gradient_matches_generic_and_fd_for(form);
    }
}

fn fast_gradient_matches_generic_and_fd_for(form: ChannelForm) {
    let h = hybrid_form(form);
    let subjects = data();
    let s = &subjects[17];
    let mut p = vec![1.2, 0.0, 25.0];
    p.extend(h.net().init(3, 0.5));
    let x0 = vec![0.0; 3];
    let prob = insilico_neural::fit::problem(&h, p.clone(), &x0, s);
    let loss = |j: usize, y: f64| {
        let r = y - s.dv[j];
        (0.5 * r * r, r)
    };
    let tight = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let plan = Plan::new(&prob).unwrap();
    let mut ws = FastWorkspace::default();
    let fast = plan.gradient(&h, &p, &x0, &tight, &loss, &mut ws).unwrap();
    let generic_fast = plan.gradient(&Generic(&h), &p, &x0, &tight, &loss, &mut ws).unwrap();
    let reference = gradient(&prob, Method::Bdf, &tight, &loss, GradientMethod::Adjoint).unwrap();
    let scale = reference.d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for k in 0..p.len() {
        assert!((fast.d_params[k] - generic_fast.d_params[k]).abs() <= 1e-12 * scale, "vjp_both vs generic at {k}");
        assert!(
            (fast.d_params[k] - reference.d_params[k]).abs() <= 1e-5 * scale,
            "param {k}: fast {} vs solvers::gradient {}",
            fast.d_params[k],
            reference.d_params[k]
        );
    }
    assert!((fast.loss - reference.loss).abs() <= 1e-7 * reference.loss.abs().max(1.0));
    // Finite differences of the fast solver itself (tight tolerance) on a few coordinates.
    for &k in &[0usize, 2, 3, 20, 100, p.len() - 1] {
        let hstep = 1e-6 * p[k].abs().max(1e-2);
        let mut pp = p.clone();
        pp[k] += hstep;
        let mut pm = p.clone();
        pm[k] -= hstep;
        let lp = plan.gradient(&h, &pp, &x0, &tight, &loss, &mut ws).unwrap().loss;
        let lm = plan.gradient(&h, &pm, &x0, &tight, &loss, &mut ws).unwrap().loss;
        let fd = (lp - lm) / (2.0 * hstep);
        assert!((fd - fast.d_params[k]).abs() <= 1e-5 * scale, "FD param {k}: {fd} vs {}", fast.d_params[k]);
    }
}

fn spec(engine: Engine) -> FitSpec {
    let mut ka = ParamSpec::new("ka", 1.1);
    ka.eta = Some((0.3, false));
    let mut cl = ParamSpec::new("CL", 1.0);
    cl.fixed = true;
    cl.init = 0.0;
    cl.transform = insilico_neural::fit::Transform::Identity;
    let mut v = ParamSpec::new("V", 22.0);
    v.eta = Some((0.2, true));
    v.prior = Some(((20.0f64).ln(), 1.0));
    FitSpec {
        params: vec![ka, cl, v],
        error: ErrorModel::Combined,
        sigma_init: vec![0.05, 0.12],
        sigma_fixed: false,
        stages: vec![Stage::Adam { iterations: 1, lr: 1e-3 }],
        validation_fraction: 0.0,
        patience: 0,
        check_every: 1,
        seed: 1,
        options: Options { rtol: 1e-9, atol: 1e-11, ..Options::default() },
        engine,
        x0: None,
    }
}

#[test]
fn whole_objective_gradient_matches_fd_with_random_effects() {
    let h = hybrid();
    let subjects = data();
    let subs: Vec<_> = subjects.iter().take(6).collect();
    let model = Model {
        system: &h,
        fast: Some(&h),
        n_weights: h.net().n_params(),
        weights_init: h.net().init(5, 0.5),
        weight_prior_sd: Some(3.0),
        initial_state: None,
    };
    let sp = spec(Engine::Fast);
    let obj = Objective::new(&model, &sp, subs.clone(), true).unwrap();
    let mut phi = obj.initial();
    // Non-zero etas so their terms are exercised.
    let n = phi.len();
    for (i, v) in phi.iter_mut().enumerate().skip(n - 12) {
        *v = 0.05 * ((i % 5) as f64 - 2.0);
    }
    let (f0, g) = obj.value_grad(&phi).unwrap();
    assert!(f0.is_finite());
    let names = obj.names();
    let gscale = g.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let check: Vec<usize> = (0..6).chain([10, 50, 200, 300]).chain(n - 12..n).collect();
    for k in check {
        let hstep = 1e-6;
        let mut xp = phi.clone();
        xp[k] += hstep;
        let mut xm = phi.clone();
        xm[k] -= hstep;
        let fd = (obj.value(&xp).unwrap() - obj.value(&xm).unwrap()) / (2.0 * hstep);
        assert!((fd - g[k]).abs() <= 2e-5 * gscale.max(1.0), "{}: fd {fd} vs exact {}", names[k], g[k]);
    }
    // The generic engine gives the same objective and gradient to solver tolerance.
    let sg = spec(Engine::Generic);
    let og = Objective::new(&model, &sg, subs, true).unwrap();
    let (f1, g1) = og.value_grad(&phi).unwrap();
    assert!((f0 - f1).abs() < 1e-5 * f0.abs().max(1.0), "{f0} vs {f1}");
    for k in 0..n {
        assert!((g[k] - g1[k]).abs() <= 1e-4 * gscale.max(1.0), "{}: {} vs {}", names[k], g[k], g1[k]);
    }
    let _ = h.nparams();
}
