//! Early stopping of population fits scores held-out subjects conditionally
//! (their own MAP η, [`Objective::conditional_loss`]): the η MAP is a
//! stationary point that improves on `η = 0`, it does not depend on the
//! thread count, and on a synthetic population a fit with a hold-out does
//! not restore undertrained parameters.

use insilico_mechanistic::PkModel;
use insilico_neural::fit::{
    fit, problem, Engine, ErrorModel, FitResult, FitSpec, FitSubject, Model, Objective, ParamSpec, Stage,
    ValidationCriterion, ETA_MAP_GTOL, ETA_MAP_ITERATIONS,
};
use insilico_solvers::{solve, Dose, Method, Options, Schedule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TIMES: [f64; 8] = [0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 24.0];
/// True typical values (ka 1/h, CL L/h, V L) and between-subject sds of ln CL, ln V.
const TRUTH: [f64; 3] = [1.0, 2.0, 20.0];
const OMEGA: [f64; 2] = [0.4, 0.3];

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `n` subjects given 100 mg orally, log-normal BSV on CL and V, 10%
/// proportional noise; returns the subjects and their true (η_CL, η_V).
fn population(pk: &PkModel, n: usize, seed: u64) -> (Vec<FitSubject>, Vec<[f64; 2]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let opts = Options { rtol: 1e-8, atol: 1e-10, ..Options::default() };
    let mut subjects = Vec::new();
    let mut etas = Vec::new();
    for i in 0..n {
        let eta = [OMEGA[0] * normal(&mut rng), OMEGA[1] * normal(&mut rng)];
        let p = vec![TRUTH[0], TRUTH[1] * eta[0].exp(), TRUTH[2] * eta[1].exp()];
        let mut s = FitSubject {
            id: format!("{}", i + 1),
            schedule: Schedule::new().dose(Dose::bolus(0.0, 0, 100.0)),
            t0: 0.0,
            times: TIMES.to_vec(),
            dv: vec![0.0; TIMES.len()],
            outputs: Vec::new(),
        };
        let sol = solve(&problem(pk, p, &[0.0; 3], &s), Method::Tsit45, &opts).unwrap();
        s.dv = sol.outputs.iter().map(|&c| c * (1.0 + 0.1 * normal(&mut rng))).collect();
        subjects.push(s);
        etas.push(eta);
    }
    (subjects, etas)
}

fn spec(validation_fraction: f64, patience: usize) -> FitSpec {
    let ka = ParamSpec::new("ka", 1.0);
    // CL starts 4x low: an undertrained model eliminates slowly, which is
    // what the typical-prediction criterion rewarded on slow subjects' tails.
    let mut cl = ParamSpec::new("CL", 0.5);
    cl.eta = Some((0.3, false));
    let mut v = ParamSpec::new("V", 30.0);
    v.eta = Some((0.3, false));
    FitSpec {
        params: vec![ka, cl, v],
        error: ErrorModel::Proportional,
        sigma_init: vec![0.2],
        sigma_fixed: false,
        stages: vec![Stage::Adam { iterations: 150, lr: 0.03 }, Stage::Lbfgs { iterations: 60 }],
        validation_fraction,
        patience,
        check_every: 5,
        seed: 7,
        options: Options { rtol: 1e-6, atol: 1e-9, ..Options::default() },
        engine: Engine::Auto,
        x0: None,
    }
}

fn model(pk: &PkModel) -> Model<'_> {
    Model { system: pk, fast: None, n_weights: 0, weights_init: Vec::new(), weight_prior_sd: None, initial_state: None }
}

/// The shared block at the truth: ln ka, ln CL, ln V, ln σ, ln ω_CL, ln ω_V.
fn truth_shared() -> Vec<f64> {
    vec![TRUTH[0].ln(), TRUTH[1].ln(), TRUTH[2].ln(), 0.1f64.ln(), OMEGA[0].ln(), OMEGA[1].ln()]
}

#[test]
fn eta_map_improves_on_eta_zero_and_is_stationary() {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let (subjects, true_eta) = population(&pk, 4, 11);
    let m = model(&pk);
    let sp = spec(0.0, 0);
    let obj = Objective::new(&m, &sp, subjects.iter().collect(), true).unwrap();
    assert_eq!(obj.n_shared(), 6);
    assert_eq!(obj.n_eta(), 2);
    let shared = truth_shared();
    let mut eta0 = vec![0.0; 8];
    let at_zero = obj.conditional_loss(&shared, &mut eta0, 0).unwrap();
    let mut eta = vec![0.0; 8];
    let at_map = obj.conditional_loss(&shared, &mut eta, ETA_MAP_ITERATIONS).unwrap();
    assert!(at_map < at_zero - 1.0, "MAP {at_map} vs η = 0 {at_zero}");
    // The returned value is the conditional objective at the returned η, and its η gradient vanishes.
    let mut full = shared.clone();
    full.extend_from_slice(&eta);
    let (f, g) = obj.conditional_value_grad(&full).unwrap();
    assert!((f - at_map).abs() <= 1e-12 * f.abs().max(1.0), "{f} vs {at_map}");
    let gmax = g[6..].iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(gmax < ETA_MAP_GTOL, "η gradient at the MAP: max |g| = {gmax}");
    // The shared-block gradient is not part of the conditional problem, but the value at η = 0 is the
    // typical data loss plus the η prior's normalising constant.
    let typical = obj.data_loss_typical(&shared).unwrap();
    let norm = 4.0 * (OMEGA[0].ln() + OMEGA[1].ln() + 2.0 * 0.918_938_533_204_672_8);
    assert!((at_zero - (typical + norm)).abs() < 1e-9 * typical.abs().max(1.0));
    // Each subject's MAP η points the way of its true η where that is large.
    for (i, t) in true_eta.iter().enumerate() {
        for r in 0..2 {
            if t[r].abs() > 0.25 {
                assert!(eta[2 * i + r] * t[r] > 0.0, "subject {i} η[{r}]: MAP {} vs true {}", eta[2 * i + r], t[r]);
            }
        }
    }
    // Warm start from the MAP: nothing left to do.
    let mut warm = eta.clone();
    let again = obj.conditional_loss(&shared, &mut warm, ETA_MAP_ITERATIONS).unwrap();
    assert!(again <= at_map + 1e-9 * at_map.abs().max(1.0));
    // Without random effects in the objective it is an error, not a panic.
    let pooled = Objective::new(&m, &sp, subjects.iter().collect(), false).unwrap();
    assert!(pooled.conditional_loss(&shared, &mut [], 10).is_err());
    assert!(obj.conditional_loss(&shared, &mut [0.0; 3], 10).is_err());
}

#[test]
fn conditional_loss_does_not_depend_on_thread_count() {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let (subjects, _) = population(&pk, 6, 5);
    let m = model(&pk);
    let sp = spec(0.0, 0);
    let obj = Objective::new(&m, &sp, subjects.iter().collect(), true).unwrap();
    let shared = truth_shared();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut eta = vec![0.0; 12];
            let f = obj.conditional_loss(&shared, &mut eta, ETA_MAP_ITERATIONS).unwrap();
            (f.to_bits(), eta.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        })
    };
    assert_eq!(run(1), run(4));
}

fn validation_curve(r: &FitResult) -> Vec<(usize, f64)> {
    r.history.iter().filter_map(|h| h.validation.map(|v| (h.iteration, v))).collect()
}

#[test]
fn population_early_stopping_keeps_trained_parameters() {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let (subjects, _) = population(&pk, 30, 3);
    let m = model(&pk);
    // With a hold-out (6 subjects) and patience.
    let held = fit(&m, &spec(0.2, 6), &subjects, true, &|_| {}).unwrap();
    assert_eq!(held.validation_ids.len(), 6);
    assert_eq!(held.validation_criterion, Some(ValidationCriterion::Conditional));
    // The same training subjects and budget without a hold-out.
    let train: Vec<FitSubject> = subjects.iter().filter(|s| !held.validation_ids.contains(&s.id)).cloned().collect();
    let full = fit(&m, &spec(0.0, 0), &train, true, &|_| {}).unwrap();
    assert_eq!(full.validation_criterion, None);
    let curve = validation_curve(&held);
    let (best_it, _) = curve.iter().copied().fold((0, f64::INFINITY), |b, c| if c.1 < b.1 { c } else { b });
    eprintln!(
        "hold-out: objective {:.3}, validation minimum at iteration {best_it} of {:?}; no hold-out: objective {:.3}; \
         CL {:.3} vs {:.3}",
        held.loss,
        curve.last().map(|c| c.0),
        full.loss,
        held.theta[1],
        full.theta[1]
    );
    // The kept parameters are trained: the training objective is within 1 unit (of ~190 observations'
    // NLL) of the full-budget fit's, and the validation minimum is not among the first checks.
    assert!(held.loss <= full.loss + 1.0, "kept objective {} vs full budget {}", held.loss, full.loss);
    assert!(best_it > 5 * 10, "validation minimum at iteration {best_it}: {curve:?}");
    assert!((held.theta[1] / TRUTH[1]).ln().abs() < 0.25, "CL {}", held.theta[1]);
    // Pooled fits keep the typical criterion.
    let pooled_spec = {
        let mut s = spec(0.2, 6);
        s.params.iter_mut().for_each(|p| p.eta = None);
        s.stages = vec![Stage::Adam { iterations: 20, lr: 0.03 }];
        s
    };
    let pooled = fit(&m, &pooled_spec, &subjects, false, &|_| {}).unwrap();
    assert_eq!(pooled.validation_criterion, Some(ValidationCriterion::Typical));
}
