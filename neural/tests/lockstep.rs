//! The lockstep path ([`insilico_neural::lockstep`]) against the one-subject
//! fast path, the generic `solvers::gradient` and finite differences on P4,
//! and the fitting objective's independence of the thread count.

use insilico_mechanistic::PkModel;
use insilico_neural::fast::{FastRhs, FastWorkspace, Plan};
use insilico_neural::fit::{problem, Engine, FitSubject, Objective};
use insilico_neural::lockstep::{self, LockWorkspace};
use insilico_neural::{ChannelForm, FluxResidual, Mlp};
use insilico_solvers::{gradient, GradientMethod, Loss, Method, Options};

mod common;
use common::p4;

fn hybrid() -> FluxResidual<PkModel, Mlp> {
    hybrid_with(ChannelForm::Rate)
}

fn hybrid_with(form: ChannelForm) -> FluxResidual<PkModel, Mlp> {
    p4::hybrid(form).unwrap()
}

fn data() -> Vec<FitSubject> {
    p4::subjects().unwrap()
}

/// Subjects of different doses and horizons, each with its own ka and V (as with random effects).
fn lanes(h: &FluxResidual<PkModel, Mlp>, subjects: &[FitSubject], ids: &[usize]) -> (Vec<Plan>, Vec<Vec<f64>>) {
    let w = h.net().init(3, 0.7);
    let mut plans = Vec::new();
    let mut ps = Vec::new();
    for (r, &i) in ids.iter().enumerate() {
        let mut p = vec![1.2 * (1.0 + 0.1 * r as f64), 0.0, 25.0 * (1.0 - 0.05 * r as f64)];
        p.extend_from_slice(&w);
        plans.push(Plan::new(&problem(h, p.clone(), &[0.0; 3], &subjects[i])).unwrap());
        ps.push(p);
    }
    (plans, ps)
}

#[test]
fn lockstep_matches_one_by_one_generic_and_fd() {
    // The rate form, and the saturating form with a half-saturation amount (30 mg)
    // inside the range these subjects reach, so the gate's curvature matters.
    for form in [ChannelForm::Rate, ChannelForm::Saturating { half: 30.0 }] {
        lockstep_matches_for(form);
    }
}

fn lockstep_matches_for(form: ChannelForm) {
    let h = hybrid_with(form);
    let ls = FastRhs::lockstep(&h).expect("P4 has a lockstep form");
    let subjects = data();
    let ids = [0usize, 9, 17, 23];
    let (plans, ps) = lanes(&h, &subjects, &ids);
    let loss_of = |i: usize| {
        let dv = subjects[i].dv.clone();
        move |j: usize, y: f64| {
            let r = y - dv[j];
            (0.5 * r * r, r)
        }
    };
    let lfs: Vec<_> = ids.iter().map(|&i| loss_of(i)).collect();
    let losses: Vec<&Loss> = lfs.iter().map(|f| f as &Loss).collect();
    let tight = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let pl: Vec<&Plan> = plans.iter().collect();
    let pp: Vec<&[f64]> = ps.iter().map(|p| p.as_slice()).collect();
    let x0 = [0.0; 3];
    let mut lws = LockWorkspace::default();
    let lock = ls.gradient(&pl, &pp, &x0, &tight, &losses, &mut lws).unwrap();
    assert_eq!(lock.len(), 4);
    let mut ws = FastWorkspace::default();
    for (l, &i) in ids.iter().enumerate() {
        let one = plans[l].gradient(&h, &ps[l], &x0, &tight, losses[l], &mut ws).unwrap();
        let prob = problem(&h, ps[l].clone(), &x0, &subjects[i]);
        let reference = gradient(&prob, Method::Bdf, &tight, losses[l], GradientMethod::Adjoint).unwrap();
        let scale = reference.d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!((lock[l].loss - one.loss).abs() <= 1e-8 * one.loss.abs().max(1.0), "lane {l} loss");
        for (a, b) in lock[l].predictions.iter().zip(&one.predictions) {
            assert!((a - b).abs() <= 1e-8 * b.abs().max(1.0), "lane {l} prediction {a} vs {b}");
        }
        for k in 0..ps[l].len() {
            let (a, b, c) = (lock[l].d_params[k], one.d_params[k], reference.d_params[k]);
            assert!((a - b).abs() <= 1e-7 * scale, "lane {l} param {k}: lockstep {a} vs one by one {b}");
            assert!((a - c).abs() <= 1e-5 * scale, "lane {l} param {k}: lockstep {a} vs solvers::gradient {c}");
        }
        for (a, b) in lock[l].d_x0.iter().zip(&one.d_x0) {
            assert!((a - b).abs() <= 1e-7 * b.abs().max(1.0), "lane {l} x0: {a} vs {b}");
        }
    }
    // Central differences of the lockstep loss itself, lane by lane (each lane's parameters moved alone).
    let np = ps[0].len();
    let sum_scale = (3..np).map(|k| lock.iter().map(|g| g.d_params[k]).sum::<f64>().abs()).fold(0.0, f64::max);
    for l in [0usize, 3] {
        let lane_scale = lock[l].d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
        for &k in &[0usize, 2, 3, 20, 100, 200, ps[l].len() - 1] {
            if k >= 3 && l != 0 {
                continue; // the weights are shared: moved for every lane below
            }
            let hstep = 1e-6 * ps[l][k].abs().max(1e-2);
            let total = |sign: f64| {
                let mut q = ps.clone();
                if k >= 3 {
                    q.iter_mut().for_each(|p| p[k] += sign * hstep);
                } else {
                    q[l][k] += sign * hstep;
                }
                let qq: Vec<&[f64]> = q.iter().map(|p| p.as_slice()).collect();
                let mut w = LockWorkspace::default();
                let r = ls.gradient(&pl, &qq, &x0, &tight, &losses, &mut w).unwrap();
                if k >= 3 {
                    r.iter().map(|g| g.loss).sum::<f64>()
                } else {
                    r[l].loss
                }
            };
            let fd = (total(1.0) - total(-1.0)) / (2.0 * hstep);
            let exact = if k >= 3 { lock.iter().map(|g| g.d_params[k]).sum::<f64>() } else { lock[l].d_params[k] };
            let scale = if k >= 3 { sum_scale } else { lane_scale };
            assert!((fd - exact).abs() <= 1e-5 * scale, "FD lane {l} param {k}: {fd} vs {exact} (scale {scale})");
        }
    }
}

#[test]
fn partial_groups_and_padding() {
    let h = hybrid();
    let ls = FastRhs::lockstep(&h).unwrap();
    let subjects = data();
    let ids = [2usize, 12, 20];
    let (plans, ps) = lanes(&h, &subjects, &ids);
    let f = |_: usize, y: f64| (y, 1.0);
    let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
    let x0 = [0.0; 3];
    let mut lws = LockWorkspace::default();
    let pl: Vec<&Plan> = plans.iter().collect();
    let pp: Vec<&[f64]> = ps.iter().map(|p| p.as_slice()).collect();
    let three = ls.gradient(&pl, &pp, &x0, &opts, &[&f, &f, &f], &mut lws).unwrap();
    let one = ls.gradient(&pl[1..2], &pp[1..2], &x0, &opts, &[&f], &mut lws).unwrap();
    let scale = one[0].d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (a, b) in three[1].d_params.iter().zip(&one[0].d_params) {
        assert!((a - b).abs() <= 1e-6 * scale, "{a} vs {b}");
    }
    // Mismatched weights and empty groups are refused, not panicked on.
    let mut q = ps[0].clone();
    q[10] += 1.0;
    assert!(ls.gradient(&pl[..2], &[pp[0], &q], &x0, &opts, &[&f, &f], &mut lws).is_err());
    assert!(ls.gradient(&[], &[], &x0, &opts, &[], &mut lws).is_err());
    // Groups: every subject once, at most LANES per group, independent of the input's grouping.
    let all: Vec<Plan> = subjects.iter().map(|s| Plan::new(&problem(&h, ps[0].clone(), &x0, s)).unwrap()).collect();
    let refs: Vec<&Plan> = all.iter().collect();
    let groups = lockstep::groups(&refs);
    let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..subjects.len()).collect::<Vec<_>>());
    assert!(groups.iter().all(|g| !g.is_empty() && g.len() <= lockstep::LANES));
}

#[test]
fn objective_is_independent_of_the_thread_count() {
    let h = hybrid();
    let subjects = data();
    let model = p4::model(&h, &h);
    let spec = p4::spec(1e-5, 1e-6, Engine::Fast, 1);
    let obj = Objective::new(&model, &spec, subjects.iter().collect(), false).unwrap();
    let phi = obj.initial();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| obj.value_grad(&phi).unwrap())
    };
    let (f1, g1) = run(1);
    let (f3, g3) = run(3);
    assert_eq!(f1.to_bits(), f3.to_bits());
    assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Lanes with different events (repeated boluses, an infusion, a reset) at
/// different times: the group stops at all of them, each lane applies its own,
/// and every lane still matches its one-subject result.
#[test]
fn lanes_with_different_events_match_one_by_one() {
    use insilico_solvers::{Dose, Problem, Schedule};
    let h = hybrid();
    let ls = FastRhs::lockstep(&h).unwrap();
    let mut p = vec![0.9, 0.0, 22.0];
    p.extend(h.net().init(9, 0.8));
    let x0 = [0.0; 3];
    let times = [0.5, 1.0, 3.0, 6.5, 10.0, 11.5, 14.0, 20.0];
    let schedules = [
        Schedule::new().dose(Dose::bolus(0.0, 0, 100.0)).dose(Dose::bolus(12.0, 0, 50.0)),
        Schedule::new().dose(Dose::infusion(0.0, 1, 80.0, 2.0)).dose(Dose::bolus(6.0, 0, 40.0)),
        Schedule::new().dose(Dose::bolus(0.0, 0, 120.0)).reset(10.0).dose(Dose::bolus(11.0, 0, 60.0)),
    ];
    let probs: Vec<Problem> =
        schedules.iter().map(|s| Problem::new(&h, p.clone()).with_schedule(s.clone()).observe(0, &times)).collect();
    let plans: Vec<Plan> = probs.iter().map(|pr| Plan::new(pr).unwrap()).collect();
    let loss = |j: usize, y: f64| (0.5 * (y - 1.0 - j as f64 * 0.1).powi(2), y - 1.0 - j as f64 * 0.1);
    let tight = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let pl: Vec<&Plan> = plans.iter().collect();
    let pp: Vec<&[f64]> = vec![&p; 3].into_iter().map(|v| v.as_slice()).collect();
    let mut lws = LockWorkspace::default();
    let lock = ls.gradient(&pl, &pp, &x0, &tight, &[&loss, &loss, &loss], &mut lws).unwrap();
    let mut ws = FastWorkspace::default();
    for (l, plan) in plans.iter().enumerate() {
        let one = plan.gradient(&h, &p, &x0, &tight, &loss, &mut ws).unwrap();
        let scale = one.d_params.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert!((lock[l].loss - one.loss).abs() <= 1e-8 * one.loss.abs().max(1.0), "lane {l} loss");
        for (a, b) in lock[l].predictions.iter().zip(&one.predictions) {
            assert!((a - b).abs() <= 1e-8 * b.abs().max(1.0), "lane {l} prediction {a} vs {b}");
        }
        for (k, (a, b)) in lock[l].d_params.iter().zip(&one.d_params).enumerate() {
            assert!((a - b).abs() <= 1e-7 * scale, "lane {l} param {k}: {a} vs {b}");
        }
        for (a, b) in lock[l].d_x0.iter().zip(&one.d_x0) {
            assert!((a - b).abs() <= 1e-7 * b.abs().max(1.0), "lane {l} x0: {a} vs {b}");
        }
    }
}
