//! The fast path's newer code paths: observations read from the dense
//! output (between steps, at dose times, during infusions), the tape that
//! keeps the network's forward pass for the backward sweep, and the
//! specialised `1 → H → H → 1` tanh kernels, each against the generic
//! `solvers::gradient`, finite differences, or the general MLP code.

use insilico_mechanistic::PkModel;
use insilico_neural::fast::{FastRhs, FastWorkspace, Generic, Plan};
use insilico_neural::{Activation, Channel, ChannelForm, Feature, FluxResidual, Mlp, Residual};
use insilico_solvers::{gradient, Dose, GradientMethod, Method, Options, Problem, Schedule};

fn hybrid(widths: &[usize], act: Activation) -> FluxResidual<PkModel, Mlp> {
    hybrid_form(widths, act, ChannelForm::Rate)
}

fn hybrid_form(widths: &[usize], act: Activation, form: ChannelForm) -> FluxResidual<PkModel, Mlp> {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let net = Mlp::new(widths, act).unwrap();
    let ch = Channel::new(1, Some(2), 0.2).with_form(form);
    FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![ch]).unwrap()
}

#[test]
fn small_kernels_match_the_general_mlp() {
    for (h1, h2) in [(16, 16), (8, 8), (32, 16), (16, 32)] {
        let net = Mlp::new(&[1, h1, h2, 1], Activation::Tanh).unwrap();
        let w = net.init(9, 1.3);
        assert_eq!(Residual::tape_len(&net), h1 + h2);
        for x in [-2.0, -0.3, 0.0, 0.7, 3.5] {
            let mut tape = vec![0.0; Residual::tape_len(&net)];
            let (mut y0, mut y1) = ([0.0], [0.0]);
            net.eval(&w, &[x], &mut y0);
            net.eval_tape(&w, &[x], &mut y1, &mut tape);
            assert!((y0[0] - y1[0]).abs() <= 1e-14 * (1.0 + y0[0].abs()), "{h1}x{h2} forward at {x}");
            let gy = [0.37];
            let (mut gx0, mut gx1) = ([0.0], [0.0]);
            let (mut gw0, mut gw1) = (vec![0.5; w.len()], vec![0.5; w.len()]);
            let mut cot = |_: &[f64], g: &mut [f64]| g[0] = gy[0];
            Residual::vjp(&net, &w, &[x], &mut y0, &mut cot, Some(&mut gx0), Some(&mut gw0));
            net.backward_tape(&w, &[x], &tape, &gy, Some(&mut gx1), Some(&mut gw1));
            assert!((gx0[0] - gx1[0]).abs() <= 1e-13 * (1.0 + gx0[0].abs()), "{h1}x{h2} gx at {x}");
            for k in 0..w.len() {
                assert!((gw0[k] - gw1[k]).abs() <= 1e-13 * (1.0 + gw0[k].abs()), "{h1}x{h2} gw[{k}] at {x}");
            }
        }
    }
}

#[test]
fn general_tape_matches_vjp() {
    // Shapes without a specialised kernel keep activations and derivatives.
    for act in [Activation::Tanh, Activation::Softplus] {
        let net = Mlp::new(&[2, 5, 3, 2], act).unwrap();
        let w = net.init(4, 1.0);
        let x = [0.3, -1.2];
        let mut tape = vec![0.0; Residual::tape_len(&net)];
        let mut y = [0.0; 2];
        net.eval_tape(&w, &x, &mut y, &mut tape);
        let gy = [0.7, -0.4];
        let (mut gx0, mut gx1) = ([0.0; 2], [0.0; 2]);
        let (mut gw0, mut gw1) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        let mut y0 = [0.0; 2];
        Residual::vjp(
            &net,
            &w,
            &x,
            &mut y0,
            &mut |_: &[f64], g: &mut [f64]| g.copy_from_slice(&gy),
            Some(&mut gx0),
            Some(&mut gw0),
        );
        net.backward_tape(&w, &x, &tape, &gy, Some(&mut gx1), Some(&mut gw1));
        assert_eq!(y, y0);
        assert_eq!(gx0, gx1);
        assert_eq!(gw0, gw1);
    }
}

#[test]
fn flux_tape_matches_vjp_both() {
    let cases = [
        (&[1usize, 16, 16, 1][..], Activation::Tanh, ChannelForm::Rate),
        (&[1, 6, 1][..], Activation::Softplus, ChannelForm::Rate),
        (&[1, 16, 16, 1][..], Activation::Tanh, ChannelForm::Saturating { half: 30.0 }),
        (&[1, 6, 1][..], Activation::Softplus, ChannelForm::Saturating { half: 30.0 }),
    ];
    for (widths, act, form) in cases {
        let h = hybrid_form(widths, act, form);
        let mut p = vec![1.1, 0.0, 23.0];
        p.extend(h.net().init(2, 1.0));
        let x = [40.0, 55.0, 12.0];
        let wv = [0.3, -0.8, 0.5];
        let mut tape = vec![0.0; FastRhs::tape_len(&h)];
        let (mut dx0, mut dx1) = ([0.0; 3], [0.0; 3]);
        FastRhs::rhs(&h, 0.5, &x, &p, &mut dx0);
        FastRhs::rhs_tape(&h, 0.5, &x, &p, &mut dx1, &mut tape);
        assert_eq!(dx0, dx1);
        let (mut gx0, mut gx1) = ([0.0; 3], [0.0; 3]);
        let (mut gp0, mut gp1) = (vec![0.1; p.len()], vec![0.1; p.len()]);
        FastRhs::vjp_both(&h, 0.5, &x, &p, &wv, &mut gx0, &mut gp0);
        FastRhs::vjp_tape(&h, 0.5, &x, &p, &wv, &mut gx1, &mut gp1, &tape);
        for i in 0..3 {
            assert!((gx0[i] - gx1[i]).abs() <= 1e-13 * (1.0 + gx0[i].abs()));
        }
        for k in 0..p.len() {
            assert!((gp0[k] - gp1[k]).abs() <= 1e-13 * (1.0 + gp0[k].abs()), "param {k}");
        }
    }
}

/// Repeated oral doses, an infusion into the central compartment, and
/// observations between steps, at dose times and during the infusion.
#[test]
fn dense_observations_match_generic_and_fd() {
    let h = hybrid(&[1, 16, 16, 1], Activation::Tanh);
    let mut p = vec![0.9, 0.0, 25.0];
    p.extend(h.net().init(3, 0.8));
    let sched =
        Schedule::new().dose(Dose::bolus(0.0, 0, 100.0).repeated(12.0, 2)).dose(Dose::infusion(5.0, 1, 50.0, 2.0));
    let times = [0.0, 0.1, 0.25, 1.0, 3.3, 5.0, 5.5, 6.0, 7.0, 7.0, 11.9, 12.0, 12.0, 13.0, 24.0, 30.0, 40.0];
    let mut prob = Problem::new(&h, p.clone()).with_schedule(sched).with_x0(vec![0.0; 3]);
    prob.observations = times.iter().map(|&time| insilico_solvers::ObservationPoint { time, output: 0 }).collect();
    let dv: Vec<f64> = times.iter().map(|t| 2.0 + 0.1 * t).collect();
    let loss = |j: usize, y: f64| {
        let r = y - dv[j];
        (0.5 * r * r, r)
    };
    let plan = Plan::new(&prob).unwrap();
    let mut ws = FastWorkspace::default();
    let tight = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let fast = plan.gradient(&h, &p, &[0.0; 3], &tight, &loss, &mut ws).unwrap();
    let generic_fast = plan.gradient(&Generic(&h), &p, &[0.0; 3], &tight, &loss, &mut ws).unwrap();
    let reference = gradient(&prob, Method::Bdf, &tight, &loss, GradientMethod::Adjoint).unwrap();
    let scale = reference.d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (j, (a, b)) in fast.predictions.iter().zip(&reference.predictions).enumerate() {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "prediction {j}: {a} vs {b}");
    }
    for k in 0..p.len() {
        assert!((fast.d_params[k] - generic_fast.d_params[k]).abs() <= 1e-12 * scale, "tape vs generic at {k}");
        assert!(
            (fast.d_params[k] - reference.d_params[k]).abs() <= 1e-5 * scale,
            "param {k}: fast {} vs solvers::gradient {}",
            fast.d_params[k],
            reference.d_params[k]
        );
    }
    // FD of the fast solver at a loose tolerance (steps frozen by a small step,
    // so the discrete adjoint is the exact derivative of what is computed).
    let loose = Options { rtol: 1e-5, atol: 1e-6, ..Options::default() };
    let g = plan.gradient(&h, &p, &[0.0; 3], &loose, &loss, &mut ws).unwrap();
    let gs = g.d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for &k in &[0usize, 2, 3, 40, 200, p.len() - 1] {
        let hstep = 1e-7 * p[k].abs().max(1e-2);
        let mut pp = p.clone();
        pp[k] += hstep;
        let mut pm = p.clone();
        pm[k] -= hstep;
        let lp = plan.gradient(&h, &pp, &[0.0; 3], &loose, &loss, &mut ws).unwrap().loss;
        let lm = plan.gradient(&h, &pm, &[0.0; 3], &loose, &loss, &mut ws).unwrap().loss;
        let fd = (lp - lm) / (2.0 * hstep);
        assert!((fd - g.d_params[k]).abs() <= 1e-6 * gs, "FD param {k}: {fd} vs {}", g.d_params[k]);
    }
    // d/dx0 by FD too (initial depot amount).
    let x0p = [1e-3, 0.0, 0.0];
    let lp = plan.gradient(&h, &p, &x0p, &loose, &loss, &mut ws).unwrap().loss;
    let x0m = [-1e-3, 0.0, 0.0];
    let lm = plan.gradient(&h, &p, &x0m, &loose, &loss, &mut ws).unwrap().loss;
    let fd = (lp - lm) / 2e-3;
    assert!((fd - g.d_x0[0]).abs() <= 1e-5 * g.d_x0[0].abs().max(1.0), "x0: {fd} vs {}", g.d_x0[0]);
}
