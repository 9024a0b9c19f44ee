//! Issue 12, item 4: the state filters against references.
//!
//! - On a linear-Gaussian model the EKF equals the exact discrete Kalman
//!   filter (transition by the matrix exponential, process covariance by
//!   Van Loan's method) to 1e-8.
//! - The particle filter equals the exact Kalman filter of its own
//!   Euler–Maruyama discretisation within its Monte-Carlo error.
//! - On a nonlinear model with multiplicative process noise the EKF's
//!   filtered moments are compared with the particle filter's.
//! - Without declared noise the EKF is plain prediction.
//! - The likelihood recovers a known noise level.

use insilico_estimation::filter::{
    estimate_dataset_noise_scale, filter_dataset, DatasetFilterOptions, DatasetOutput, Filter, FilterMethod,
    FilterOptions, FilterResult, Measurement, ObservedOutput,
};
use insilico_estimation::ErrorModel;
use insilico_model::{Model, ModelSystem};
use insilico_solvers::data::{Dataset, ReadOptions};
use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule};
use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------- linear model

const LINEAR: &str = "
parameters: k10 = 0.2, k12 = 0.3, k21 = 0.1, q = 0.4
states: a, b
d/dt(a) = -(k10 + k12) * a + k21 * b
d/dt(b) = k12 * a - k21 * b
noise: a ~ q
noise: b ~ 0.5 * q
output: y = a + 0.5 * b, a
";
const LIN_P: [f64; 4] = [0.2, 0.3, 0.1, 0.4];
const SIGMA_Y: f64 = 0.3;
const SIGMA_A: f64 = 0.2;

fn lin_a(p: &[f64]) -> DMatrix<f64> {
    DMatrix::from_row_slice(2, 2, &[-(p[0] + p[1]), p[2], p[1], -p[2]])
}
fn lin_q(p: &[f64], scale: f64) -> DMatrix<f64> {
    let q = p[3] * scale;
    DMatrix::from_diagonal(&DVector::from_vec(vec![q * q, 0.25 * q * q]))
}
fn lin_h(output: usize) -> DVector<f64> {
    if output == 0 {
        DVector::from_vec(vec![1.0, 0.5])
    } else {
        DVector::from_vec(vec![1.0, 0.0])
    }
}

/// `(Φ, Q_d)` over `dt` by Van Loan: `exp([[-A, Q], [0, Aᵀ]] dt) = [[·, Φ⁻¹Q_d], [0, Φᵀ]]`.
fn van_loan(a: &DMatrix<f64>, q: &DMatrix<f64>, dt: f64) -> (DMatrix<f64>, DMatrix<f64>) {
    let n = a.nrows();
    let mut m = DMatrix::zeros(2 * n, 2 * n);
    m.view_mut((0, 0), (n, n)).copy_from(&(-a * dt));
    m.view_mut((0, n), (n, n)).copy_from(&(q * dt));
    m.view_mut((n, n), (n, n)).copy_from(&(a.transpose() * dt));
    let e = m.exp();
    let phi = e.view((n, n), (n, n)).transpose();
    let qd = &phi * e.view((0, n), (n, n));
    (phi.clone_owned(), (&qd + qd.transpose()) * 0.5)
}

/// The linear test case: bolus doses (one between observations, one at an
/// observation time), two outputs with their own additive errors, a
/// prediction-only point.
fn linear_case() -> (Schedule, Vec<Measurement>, Vec<f64>, Vec<f64>) {
    let schedule =
        Schedule::new().dose(Dose::bolus(0.0, 0, 10.0)).dose(Dose::bolus(3.5, 0, 5.0)).dose(Dose::bolus(6.0, 1, 2.0));
    let obs = vec![
        Measurement::new(1.0, 0, 7.9),
        Measurement::new(2.0, 1, 5.2),
        Measurement::new(3.0, 0, 5.6),
        Measurement::new(4.0, 0, 8.8),
        Measurement::predict(5.0, 1),
        Measurement::new(6.0, 1, 4.4),
        Measurement::new(6.0, 0, 6.9),
        Measurement::new(8.0, 0, 4.0),
    ];
    (schedule, obs, vec![1.0, 0.5], vec![0.5, 0.1, 0.1, 0.2])
}

/// A filtered mean and covariance.
type Moments = (DVector<f64>, DMatrix<f64>);

/// The exact Kalman filter of the linear case (means, covariances and
/// log-likelihood per measurement), with an arbitrary transition.
fn exact_kalman(
    obs: &[Measurement],
    doses: &[(f64, usize, f64)],
    m0: &[f64],
    p0: &[f64],
    transition: &dyn Fn(f64) -> (DMatrix<f64>, DMatrix<f64>),
) -> (Vec<Moments>, f64) {
    let mut m = DVector::from_column_slice(m0);
    let mut p = DMatrix::from_row_slice(2, 2, p0);
    let mut t = 0.0;
    let mut di = 0;
    let mut out = Vec::new();
    let mut ll = 0.0;
    let step = |m: &mut DVector<f64>, p: &mut DMatrix<f64>, dt: f64| {
        if dt > 0.0 {
            let (phi, qd) = transition(dt);
            *m = &phi * &*m;
            *p = &phi * &*p * phi.transpose() + qd;
        }
    };
    for o in obs {
        while di < doses.len() && doses[di].0 <= o.time {
            step(&mut m, &mut p, doses[di].0 - t);
            t = doses[di].0;
            m[doses[di].1] += doses[di].2;
            di += 1;
        }
        step(&mut m, &mut p, o.time - t);
        t = o.time;
        if let Some(y) = o.value {
            let h = lin_h(o.output);
            let r = if o.output == 0 { SIGMA_Y * SIGMA_Y } else { SIGMA_A * SIGMA_A };
            let s = (h.transpose() * &p * &h)[0] + r;
            let k = &p * &h / s;
            let e = y - h.dot(&m);
            m += &k * e;
            p = &p - &k * k.transpose() * s;
            ll += -0.5 * ((2.0 * std::f64::consts::PI * s).ln() + e * e / s);
        }
        out.push((m.clone(), p.clone()));
    }
    (out, ll)
}

fn linear_filter(opts: FilterOptions) -> Filter {
    let model = Model::parse(LINEAR, "linear").unwrap();
    let outs = [
        ObservedOutput::new(&model, "y", ErrorModel::Additive, &[SIGMA_Y]).unwrap(),
        ObservedOutput::new(&model, "a", ErrorModel::Additive, &[SIGMA_A]).unwrap(),
    ];
    let (_, _, m0, p0) = linear_case();
    Filter::new(&model, &LIN_P, &[], &outs).unwrap().with_initial(&m0, &p0).unwrap().with_options(opts)
}

const LIN_DOSES: [(f64, usize, f64); 3] = [(0.0, 0, 10.0), (3.5, 0, 5.0), (6.0, 1, 2.0)];

/// Item 4, linear-Gaussian: the EKF (moment ODEs solved by Tsit45 at
/// rtol 1e-12, atol 1e-13) equals the exact discrete Kalman filter to 1e-8
/// in means, variances (every covariance entry) and log-likelihood. With
/// these tolerances the moment ODEs' global error is ~1e-11 relative, and
/// Padé's matrix exponential is accurate to ~1e-15.
#[test]
fn ekf_matches_exact_kalman_filter_on_linear_gaussian_model() {
    let opts = FilterOptions { rtol: 1e-12, atol: 1e-13, ..FilterOptions::default() };
    let f = linear_filter(opts);
    let (schedule, obs, m0, p0) = linear_case();
    let res = f.run(&schedule, &obs, FilterMethod::Ekf).unwrap();
    let (a, q) = (lin_a(&LIN_P), lin_q(&LIN_P, 1.0));
    let (exact, ll) = exact_kalman(&obs, &LIN_DOSES, &m0, &p0, &|dt| van_loan(&a, &q, dt));
    assert_eq!(res.steps.len(), exact.len());
    let mut worst: f64 = 0.0;
    for (s, (m, p)) in res.steps.iter().zip(&exact) {
        for i in 0..2 {
            worst = worst.max((s.mean[i] - m[i]).abs());
            for j in 0..2 {
                worst = worst.max((s.cov[i * 2 + j] - p[(i, j)]).abs());
            }
        }
    }
    println!(
        "EKF vs exact Kalman: max |Δ| in means and covariances {worst:.2e}, log-likelihood {} vs {ll} (Δ {:.2e})",
        res.log_likelihood,
        (res.log_likelihood - ll).abs()
    );
    assert!(worst < 1e-8, "largest difference {worst}");
    assert!((res.log_likelihood - ll).abs() < 1e-8);
    assert_eq!(res.n_obs, 7);
    // The prediction-only step carries no likelihood and leaves the state as predicted.
    let s = &res.steps[4];
    assert_eq!((s.observed, s.log_likelihood), (None, 0.0));
    assert_eq!((&s.mean, &s.cov), (&s.prior_mean, &s.prior_cov));
    // The predicted output and its variance: H m⁻ and H P⁻ Hᵀ + R.
    let s = &res.steps[3];
    let h = [1.0, 0.5];
    let pv: f64 = (0..2).map(|i| (0..2).map(|j| h[i] * s.prior_cov[i * 2 + j] * h[j]).sum::<f64>()).sum();
    assert!((s.predicted - (s.prior_mean[0] + 0.5 * s.prior_mean[1])).abs() < 1e-12);
    assert!((s.predicted_variance - (pv + SIGMA_Y * SIGMA_Y)).abs() < 1e-12);
}

/// The unscented filter is exact on linear models too (its cubature rule
/// integrates the quadratic moments exactly): 1e-8 as above.
#[test]
fn ukf_matches_exact_kalman_filter_on_linear_gaussian_model() {
    let opts = FilterOptions { rtol: 1e-12, atol: 1e-13, ..FilterOptions::default() };
    let f = linear_filter(opts);
    let (schedule, obs, m0, p0) = linear_case();
    let res = f.run(&schedule, &obs, FilterMethod::Ukf).unwrap();
    let (a, q) = (lin_a(&LIN_P), lin_q(&LIN_P, 1.0));
    let (exact, ll) = exact_kalman(&obs, &LIN_DOSES, &m0, &p0, &|dt| van_loan(&a, &q, dt));
    let mut worst: f64 = 0.0;
    for (s, (m, p)) in res.steps.iter().zip(&exact) {
        for i in 0..2 {
            worst = worst.max((s.mean[i] - m[i]).abs());
            for j in 0..2 {
                worst = worst.max((s.cov[i * 2 + j] - p[(i, j)]).abs());
            }
        }
    }
    println!("UKF vs exact Kalman: max |Δ| {worst:.2e}, Δ log-likelihood {:.2e}", (res.log_likelihood - ll).abs());
    assert!(worst < 1e-8 && (res.log_likelihood - ll).abs() < 1e-8);
}

/// The same with BDF (implicit; its Newton matrix leaves out ∂Ṗ/∂m, which
/// is zero here anyway): 1e-8 at rtol 1e-12.
#[test]
fn ekf_with_bdf_matches_exact_kalman_filter() {
    let opts = FilterOptions { method: Method::Bdf, rtol: 1e-12, atol: 1e-13, ..FilterOptions::default() };
    let f = linear_filter(opts);
    let (schedule, obs, m0, p0) = linear_case();
    let res = f.run(&schedule, &obs, FilterMethod::Ekf).unwrap();
    let (a, q) = (lin_a(&LIN_P), lin_q(&LIN_P, 1.0));
    let (exact, ll) = exact_kalman(&obs, &LIN_DOSES, &m0, &p0, &|dt| van_loan(&a, &q, dt));
    for (s, (m, p)) in res.steps.iter().zip(&exact) {
        for i in 0..2 {
            assert!((s.mean[i] - m[i]).abs() < 1e-8);
            assert!((s.cov[i * 3] - p[(i, i)]).abs() < 1e-8);
        }
    }
    assert!((res.log_likelihood - ll).abs() < 1e-8);
}

/// The particle filter on the linear model against the exact Kalman filter
/// of its own Euler–Maruyama chain (`Φ_h = I + A h`, `Q_h = h G Gᵀ`, every
/// interval here a whole number of substeps h = 0.01), so that the only
/// difference is Monte-Carlo error. That error is measured, not guessed:
/// 12 independent runs (seeds 1..=12) of 4000 particles; the average of the
/// runs must lie within 6 standard errors (their SD/√12) of the exact value
/// for every filtered mean, variance and the log-likelihood (Student t with
/// 11 d.f.: P(|t| > 6) ≈ 1e-4 per comparison; the O(1/N) bias of the
/// particle filter, ~1e-4 of an SD here, is far below the SE).
#[test]
fn particle_filter_matches_kalman_filter_of_its_discretisation() {
    let opts = FilterOptions { particles: 4000, substep: 0.01, resample_below: 1.0, ..FilterOptions::default() };
    let (schedule, obs, m0, p0) = linear_case();
    // Data from the model itself (one sample path).
    let (obs, _) = linear_filter(FilterOptions { seed: 99, ..opts }).simulate(&schedule, &obs).unwrap();
    let reps = 12;
    let runs: Vec<FilterResult> = (1..=reps)
        .map(|seed| linear_filter(FilterOptions { seed, ..opts }).run(&schedule, &obs, FilterMethod::Particle).unwrap())
        .collect();
    let a = lin_a(&LIN_P);
    let q = lin_q(&LIN_P, 1.0);
    let h = 0.01;
    let em = |dt: f64| {
        let steps = (dt / h).round() as usize;
        assert!((steps as f64 * h - dt).abs() < 1e-12);
        let phi_h = DMatrix::identity(2, 2) + &a * h;
        let mut phi = DMatrix::identity(2, 2);
        let mut qd = DMatrix::zeros(2, 2);
        for _ in 0..steps {
            phi = &phi_h * phi;
            qd = &phi_h * qd * phi_h.transpose() + &q * h;
        }
        (phi, qd)
    };
    let (exact, ll) = exact_kalman(&obs, &LIN_DOSES, &m0, &p0, &em);
    // Average over the runs and its standard error.
    let avg_se = |v: Vec<f64>| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt();
        (m, sd / n.sqrt())
    };
    let mut worst: f64 = 0.0;
    for (k, (m, p)) in exact.iter().enumerate() {
        for i in 0..2 {
            let (pm, sm) = avg_se(runs.iter().map(|r| r.steps[k].mean[i]).collect());
            let (pv, sv) = avg_se(runs.iter().map(|r| r.steps[k].cov[i * 3]).collect());
            let (zm, zv) = ((pm - m[i]) / sm, (pv - p[(i, i)]) / sv);
            println!(
                "t = {:4} state {i}: mean {pm:.4} vs {:.4} ({zm:+.1} SE), var {pv:.5} vs {:.5} ({zv:+.1} SE)",
                runs[0].steps[k].time,
                m[i],
                p[(i, i)]
            );
            worst = worst.max(zm.abs()).max(zv.abs());
        }
    }
    let (pl, sl) = avg_se(runs.iter().map(|r| r.log_likelihood).collect());
    let zl = (pl - ll) / sl;
    println!("log-likelihood {pl:.4} vs {ll:.4} ({zl:+.1} SE, SE {sl:.4}); largest deviation {worst:.1} SE");
    assert!(worst < 6.0 && zl.abs() < 6.0);
}

/// Identical particle-filter results for 1 and 3 threads (per-particle
/// streams, sequential sums).
#[test]
fn particle_filter_is_deterministic_for_any_thread_count() {
    let opts = FilterOptions { particles: 3000, substep: 0.05, ..FilterOptions::default() };
    let f = linear_filter(opts);
    let (schedule, obs, _, _) = linear_case();
    let run = |threads: usize| -> FilterResult {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| f.run(&schedule, &obs, FilterMethod::Particle).unwrap())
    };
    let (r1, r3) = (run(1), run(3));
    assert_eq!(r1, r3);
    // A different seed gives a different (but close) answer.
    let g = linear_filter(FilterOptions { seed: 1, ..opts });
    let r = g.run(&schedule, &obs, FilterMethod::Particle).unwrap();
    assert_ne!(r.log_likelihood, r1.log_likelihood);
}

// ------------------------------------------------------------ noise recovery

/// The noise level is recovered by maximum likelihood: 400 observations
/// simulated with the declared noise doubled (λ = 2); the estimate must lie
/// within 4 standard errors of the truth, the SE from the curvature of the
/// log-likelihood in ln λ at the maximum (observed Fisher information). The
/// same maximum is found over the model parameter `q` itself (the noise SDs
/// are proportional to it), to the search's precision.
#[test]
fn likelihood_recovers_noise_level() {
    let lambda_true = 2.0;
    let (schedule, obs) = simulate_linear_dose_first(lambda_true, 400, 12);
    let f = linear_filter(FilterOptions { rtol: 1e-9, atol: 1e-11, ..FilterOptions::default() });
    let est = f.estimate_noise_scale(&schedule, &obs, 0.1, 10.0).unwrap();
    let ll = |lam: f64| {
        let mut o = *f.options();
        o.noise_scale = lam;
        f.clone().with_options(o).log_likelihood(&schedule, &obs).unwrap()
    };
    let d = 0.01;
    let (u, l0) = (est.value.ln(), est.log_likelihood);
    let curv = (ll((u + d).exp()) - 2.0 * l0 + ll((u - d).exp())) / (d * d);
    assert!(curv < 0.0, "not a maximum: curvature {curv}");
    let se = (-1.0 / curv).sqrt();
    println!(
        "noise scale: true {lambda_true}, estimate {:.4} (SE of ln λ {:.4}, {} evaluations), log-likelihood {:.3}",
        est.value, se, est.evaluations, est.log_likelihood
    );
    assert!(!est.at_bound);
    assert!((est.value.ln() - lambda_true.ln()).abs() < 4.0 * se);
    assert!(se < 0.2, "the data should pin λ down (SE of ln λ {se})");
    let by_q = f.estimate_parameter("q", &schedule, &obs, 0.04, 4.0).unwrap();
    println!("q: estimate {:.5} (= {:.5} × 0.4)", by_q.value, by_q.value / 0.4);
    assert!((by_q.value / (0.4 * est.value) - 1.0).abs() < 1e-4);
    assert!((by_q.log_likelihood - est.log_likelihood).abs() < 1e-6);
}

/// Simulates the linear model exactly (discrete transition from Van Loan)
/// with noise scale `lambda`, observing `y` every 0.5 time units; a dose of
/// 10 into `a` every 12 time units (acting before the observation at its time).
fn simulate_linear_dose_first(lambda: f64, n_obs: usize, seed: u64) -> (Schedule, Vec<Measurement>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let (a, q) = (lin_a(&LIN_P), lin_q(&LIN_P, lambda));
    let (phi, qd) = van_loan(&a, &q, 0.5);
    let l = qd.cholesky().unwrap().l();
    let mut schedule = Schedule::new();
    // The filter's initial mean [1, 0.5] and covariance [[0.5, 0.1], [0.1, 0.2]]: draw x₀ from them.
    let p0 = DMatrix::from_row_slice(2, 2, &[0.5, 0.1, 0.1, 0.2]).cholesky().unwrap().l();
    let mut x = DVector::from_vec(vec![1.0, 0.5]) + p0 * DVector::from_vec(vec![normal(), normal()]);
    let mut obs = Vec::new();
    for k in 1..=n_obs {
        let t = 0.5 * k as f64;
        x = &phi * &x + &l * DVector::from_vec(vec![normal(), normal()]);
        if k % 24 == 0 {
            schedule = schedule.dose(Dose::bolus(t, 0, 10.0));
            x[0] += 10.0;
        }
        obs.push(Measurement::new(t, 0, x[0] + 0.5 * x[1] + SIGMA_Y * normal()));
    }
    (schedule, obs)
}

// ------------------------------------------------------------ nonlinear model

/// Tumour burden with logistic growth and multiplicative process noise,
/// killed by a drug given as boluses and eliminated first-order; imaging
/// observes the tumour with 10% proportional error.
pub const TUMOUR: &str = "
parameters: r = 0.25, K = 100, kkill = 0.04, ke = 0.3, s = 0.08
states: drug, tumour
tumour(0) = 20
d/dt(drug) = -ke * drug
d/dt(tumour) = r * tumour * (1 - tumour / K) - kkill * drug * tumour
noise: tumour ~ s * tumour
output: tumour
";
const TUMOUR_P: [f64; 5] = [0.25, 100.0, 0.04, 0.3, 0.08];

fn tumour_case(opts: FilterOptions) -> (Filter, Schedule, Vec<Measurement>) {
    let model = Model::parse(TUMOUR, "tumour").unwrap();
    let out = ObservedOutput::new(&model, "tumour", ErrorModel::Proportional, &[0.1]).unwrap();
    let f = Filter::new(&model, &TUMOUR_P, &[], &[out])
        .unwrap()
        .with_initial(&[0.0, 20.0], &[0.0, 0.0, 0.0, 9.0])
        .unwrap()
        .with_options(opts);
    let schedule = Schedule::new().dose(Dose::bolus(4.0, 0, 10.0).repeated(4.0, 3));
    // Ten images every 2 days, simulated from the model (its own seed).
    let times: Vec<Measurement> = (1..=10).map(|k| Measurement::predict(2.0 * k as f64, 0)).collect();
    let sim = f.clone().with_options(FilterOptions { seed: 2024, ..opts });
    let (obs, _) = sim.simulate(&schedule, &times).unwrap();
    (f, schedule, obs)
}

/// The Kalman filters' approximation gap on the tumour case, measured
/// against 10⁵ particles (docs/notes/issue-12-filter.md; EKF: max |Δmean|
/// 0.035 SD, max |Δvar| 14.4% of the variance, |Δ log-likelihood| 0.138;
/// UKF: 0.021 SD, 15.6%, 0.129; Monte-Carlo SE at 10⁵ particles ≤ 0.006 SD,
/// ≤ 0.9% and 0.014), rounded up. The variance gap sits at the images where
/// the posterior moves most (days 2 and 16), where the true posterior is skewed
/// and the proportional error's variance varies across it while the Kalman
/// update takes one Gaussian step.
const GAP_MEAN_SD: f64 = 0.1;
const GAP_VAR_REL: f64 = 0.2;
const GAP_LOGLIK: f64 = 0.2;

/// Runs EKF, UKF and `reps` particle filters (seeds 1..=reps; the default
/// seed when `reps` = 1) on the tumour case and checks, for both Kalman
/// filters at each image, `|Δmean| ≤ GAP_MEAN_SD·SD + 6·SE_mean`,
/// `|Δvar| ≤ GAP_VAR_REL·var + 6·SE_var`, and the log-likelihoods within
/// `GAP_LOGLIK + 6·SE`. The particle filter's Monte-Carlo SE is measured from
/// the spread of the runs when `reps` > 1 (SD/√reps); with one run it is the
/// usual ESS approximation (SD/√ESS, var·√(2/ESS), √(Σ 1/ESS_t)), which
/// ignores path degeneracy and is used only at 10⁵ particles where it is
/// small. Returns the smallest ESS.
fn compare_tumour(particles: usize, reps: u64) -> f64 {
    let base = FilterOptions { particles, substep: 0.01, ..FilterOptions::default() };
    let (f, schedule, obs) = tumour_case(base);
    let ekf = f.run(&schedule, &obs, FilterMethod::Ekf).unwrap();
    let ukf = f.run(&schedule, &obs, FilterMethod::Ukf).unwrap();
    let pfs: Vec<FilterResult> = (1..=reps)
        .map(|seed| {
            let seed = if reps == 1 { base.seed } else { seed };
            f.clone().with_options(FilterOptions { seed, ..base }).run(&schedule, &obs, FilterMethod::Particle).unwrap()
        })
        .collect();
    let r = reps as f64;
    let avg_se = |v: Vec<f64>| {
        let m = v.iter().sum::<f64>() / r;
        let sd = if reps > 1 { (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (r - 1.0)).sqrt() } else { 0.0 };
        (m, sd / r.sqrt())
    };
    let (mut dm, mut dv, mut um, mut uv) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut min_ess, mut inv_ess) = (f64::INFINITY, 0.0);
    println!("   t  image   mean EKF   mean UKF   mean PF   SD EKF  SD UKF   SD PF    ESS");
    for (k, (e, u)) in ekf.steps.iter().zip(&ukf.steps).enumerate() {
        let (mp, mut se_m) = avg_se(pfs.iter().map(|p| p.steps[k].mean[1]).collect());
        let (vp, mut se_v) = avg_se(pfs.iter().map(|p| p.steps[k].cov[3]).collect());
        let ess = pfs.iter().map(|p| p.steps[k].ess.unwrap_or(f64::NAN)).fold(f64::INFINITY, f64::min);
        if reps == 1 {
            (se_m, se_v) = ((vp / ess).sqrt(), vp * (2.0 / ess).sqrt());
        }
        println!(
            "{:4} {:6.2} {:10.4} {:10.4} {:9.4} {:8.4} {:7.4} {:7.4} {:7.0}",
            e.time,
            e.observed.unwrap_or(f64::NAN),
            e.mean[1],
            u.mean[1],
            mp,
            e.cov[3].sqrt(),
            u.cov[3].sqrt(),
            vp.sqrt(),
            ess
        );
        for (name, s, gm, gv) in [("EKF", e, &mut dm, &mut dv), ("UKF", u, &mut um, &mut uv)] {
            let (d_m, d_v) = ((s.mean[1] - mp).abs(), (s.cov[3] - vp).abs());
            assert!(d_m <= GAP_MEAN_SD * vp.sqrt() + 6.0 * se_m, "t = {}: {name} mean gap {d_m} (SE {se_m})", e.time);
            assert!(d_v <= GAP_VAR_REL * vp + 6.0 * se_v, "t = {}: {name} variance gap {d_v} (SE {se_v})", e.time);
            *gm = gm.max(d_m / vp.sqrt());
            *gv = gv.max(d_v / vp);
        }
        min_ess = min_ess.min(ess);
        inv_ess += 1.0 / ess;
    }
    let (lp, mut se_l) = avg_se(pfs.iter().map(|p| p.log_likelihood).collect());
    if reps == 1 {
        se_l = inv_ess.sqrt();
    }
    println!(
        "log-likelihood: EKF {:.4}, UKF {:.4}, PF {lp:.4} (SE {se_l:.4}); min ESS {min_ess:.0}",
        ekf.log_likelihood, ukf.log_likelihood
    );
    println!("EKF: max |Δmean|/SD {dm:.4}, max |Δvar|/var {dv:.4}, Δ log-likelihood {:.4}", ekf.log_likelihood - lp);
    println!("UKF: max |Δmean|/SD {um:.4}, max |Δvar|/var {uv:.4}, Δ log-likelihood {:.4}", ukf.log_likelihood - lp);
    for (name, ll) in [("EKF", ekf.log_likelihood), ("UKF", ukf.log_likelihood)] {
        assert!((ll - lp).abs() <= GAP_LOGLIK + 6.0 * se_l, "{name} log-likelihood gap {}", ll - lp);
    }
    min_ess
}

/// Item 4, nonlinear: 10⁵ particles (run with `--ignored`; ~40 s; figures
/// in docs/notes/issue-12-filter.md). The gaps that remain are the Kalman
/// filters' approximation error.
#[test]
#[ignore]
fn ekf_vs_particle_filter_nonlinear_1e5() {
    assert!(compare_tumour(100_000, 1) > 1000.0);
}

/// The fast version: 8 independent runs of 2000 particles, their spread
/// giving the Monte-Carlo SE.
#[test]
fn ekf_vs_particle_filter_nonlinear_fast() {
    assert!(compare_tumour(2000, 8) > 50.0);
}

// ----------------------------------------------------------- no noise declared

/// Without declared noise the EKF is plain prediction: the mean is the ODE
/// solution and `P(t) = Φ P₀ Φᵀ` with `Φ = ∂x(t)/∂x₀` (here by central
/// differences of `solve`, step 1e-4: truncation ~1e-8 relative, solver
/// error ~1e-10 / 1e-4 = 1e-6 on Φ at rtol 1e-12, hence 1e-5).
#[test]
fn without_noise_the_ekf_is_plain_prediction() {
    let text = "parameters: Vmax = 8, Km = 2, V = 10\nstates: central\n\
                d/dt(central) = -Vmax * (central / V) / (Km + central / V)\noutput: cp = central / V";
    let model = Model::parse(text, "mm").unwrap();
    let out = ObservedOutput::new(&model, "cp", ErrorModel::Proportional, &[0.1]).unwrap();
    let p = [8.0, 2.0, 10.0];
    let f = Filter::new(&model, &p, &[], &[out])
        .unwrap()
        .with_initial(&[30.0], &[16.0])
        .unwrap()
        .with_options(FilterOptions { rtol: 1e-12, atol: 1e-12, ..FilterOptions::default() });
    assert!(!f.has_noise());
    let schedule = Schedule::new().dose(Dose::bolus(2.0, 0, 50.0));
    let times = [1.0, 3.0, 6.0];
    let obs: Vec<Measurement> = times.iter().map(|&t| Measurement::predict(t, 0)).collect();
    let res = f.run(&schedule, &obs, FilterMethod::Ekf).unwrap();
    let sys = ModelSystem::new(&model, &[]).unwrap();
    let o = Options { rtol: 1e-12, atol: 1e-12, ..Options::default() };
    let states = |x0: f64| {
        let prob = Problem::new(&sys, p.to_vec()).with_x0(vec![x0]).with_schedule(schedule.clone()).observe(0, &times);
        solve(&prob, Method::Tsit45, &o).unwrap().states
    };
    let base = states(30.0);
    let (hp, hm) = (states(30.0 + 1e-4), states(30.0 - 1e-4));
    for (k, s) in res.steps.iter().enumerate() {
        assert!((s.mean[0] - base[k][0]).abs() < 1e-8 * base[k][0]);
        let phi = (hp[k][0] - hm[k][0]) / 2e-4;
        let pv = phi * 16.0 * phi;
        assert!((s.cov[0] - pv).abs() < 1e-5 * pv, "t = {}: P = {} vs Φ²P₀ = {pv}", s.time, s.cov[0]);
        assert_eq!(s.cov, s.prior_cov);
    }
    // With zero initial covariance it stays zero, and the innovation variance is R alone.
    let g = Filter::new(&model, &p, &[], f.outputs()).unwrap();
    let r = g.run(&schedule, &[Measurement::new(3.0, 0, 4.0)], FilterMethod::Ekf).unwrap();
    let s = &r.steps[0];
    assert_eq!(s.cov, vec![0.0]);
    assert!((s.predicted_variance - (0.1 * s.predicted).powi(2)).abs() < 1e-12);
}

// ------------------------------------------------------------------- datasets

/// `filter_dataset` filters each subject with its own covariates and doses
/// and agrees with the filter run by hand; bad records are errors naming
/// subject and line.
#[test]
fn dataset_subjects_are_filtered_like_single_runs() {
    let model = Model::parse(
        "parameters: ke = 0.3, s = 0.05\ncovariates: WT = 70\nstates: central\n\
         d/dt(central) = -ke * (WT / 70) * central\nnoise: central ~ s * central\noutput: cp = central / 10",
        "pk",
    )
    .unwrap();
    let csv = "ID,TIME,AMT,DV,EVID,CMT,WT\n1,0,100,.,1,1,70\n1,1,0,7.1,0,1,70\n1,4,0,3.0,0,1,70\n\
               2,0,100,.,1,1,90\n2,2,0,4.1,0,1,90\n2,3,0,.,0,1,90\n3,0,50,.,1,1,70\n";
    let data = Dataset::from_str("pk.csv", csv, &ReadOptions::default()).unwrap();
    let out = ObservedOutput::new(&model, "cp", ErrorModel::Proportional, &[0.1]).unwrap();
    let dout = [DatasetOutput { output: out.clone(), cmt: 1 }];
    let res = filter_dataset(&model, &data, &[vec![0.3, 0.05]], &dout, &DatasetFilterOptions::default()).unwrap();
    assert_eq!(res.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["1", "2", "3"]);
    assert_eq!(res[1].result.steps.len(), 2);
    assert_eq!(res[1].result.n_obs, 1);
    assert!(res[2].warnings[0].contains("subject `3`"));
    let f = Filter::new(&model, &[0.3, 0.05], &[90.0], &[out]).unwrap();
    let by_hand = f
        .run(
            &Schedule::new().dose(Dose::bolus(0.0, 0, 100.0)),
            &[Measurement::new(2.0, 0, 4.1), Measurement::predict(3.0, 0)],
            FilterMethod::Ekf,
        )
        .unwrap();
    assert_eq!(
        by_hand.steps.iter().map(|s| &s.mean).collect::<Vec<_>>(),
        res[1].result.steps.iter().map(|s| &s.mean).collect::<Vec<_>>()
    );
    assert_eq!(by_hand.log_likelihood, res[1].result.log_likelihood);
    // An observation in a compartment that maps to no output.
    let bad =
        Dataset::from_str("bad.csv", "ID,TIME,AMT,DV,EVID,CMT\n7,0,100,.,1,1\n7,1,0,3,0,2\n", &ReadOptions::default());
    let model2 =
        Model::parse("parameters: ke = 0.3\nstates: a, b\nd/dt(a) = -ke*a\nd/dt(b) = ke*a\noutput: a", "m2").unwrap();
    let out2 = ObservedOutput::new(&model2, "a", ErrorModel::Additive, &[0.1]).unwrap();
    let err = filter_dataset(
        &model2,
        &bad.unwrap(),
        &[vec![0.3]],
        &[DatasetOutput { output: out2, cmt: 1 }],
        &DatasetFilterOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("subject `7`") && err.contains("line 3"), "{err}");
}

// ------------------------------------------------- schedules and bad input

/// The filters' own event resolution against the solve layer's: with no
/// noise and a known initial state the EKF mean is the ODE solution, here
/// through infusions (by rate and by duration, one still running at an
/// observation), lag, bioavailability, ADDL/II, a reset (EVID 3) and an
/// exposure window of an input. Both solved at rtol 1e-10; 1e-7 relative.
#[test]
fn ekf_mean_follows_the_solve_layer_through_every_event_kind() {
    use insilico_solvers::{Attr, DoseKind, Exposure};
    let text = "parameters: ka = 1.1, CL = 2, V = 12, kin = 0.5\ninputs: C\nstates: depot, central, effect\n\
                flux depot -> central = ka * depot\nflux central -> out = CL / V * central\n\
                d/dt(effect) = kin * C - 0.3 * effect\noutput: cp = central / V";
    let model = Model::parse(text, "ev").unwrap();
    let p = [1.1, 2.0, 12.0, 0.5];
    let mut oral = Dose::bolus(0.0, 0, 100.0).repeated(6.0, 3);
    oral.lag = Attr::Value(0.4);
    oral.bioavailability = Attr::Value(0.7);
    let mut by_rate = Dose::bolus(2.0, 1, 50.0);
    by_rate.kind = DoseKind::Rate(Attr::Value(20.0));
    let schedule = Schedule::new()
        .dose(oral)
        .dose(by_rate)
        .dose(Dose::infusion(9.0, 1, 30.0, 4.0))
        .reset(20.0)
        .dose(Dose::bolus(21.0, 1, 40.0))
        .exposure(Exposure { input: 0, level: 2.0, start: 1.0, duration: 3.0, period: 10.0, repeats: 2 });
    let times = [1.0, 2.0, 3.0, 6.4, 10.0, 12.5, 19.0, 20.0, 22.0, 24.0];
    let out = ObservedOutput::new(&model, "cp", ErrorModel::Additive, &[0.1]).unwrap();
    let f = Filter::new(&model, &p, &[], &[out]).unwrap().with_options(FilterOptions {
        rtol: 1e-10,
        atol: 1e-12,
        ..FilterOptions::default()
    });
    let obs: Vec<Measurement> = times.iter().map(|&t| Measurement::predict(t, 0)).collect();
    let sys = ModelSystem::new(&model, &[]).unwrap();
    let prob = Problem::new(&sys, p.to_vec()).with_schedule(schedule.clone()).observe(0, &times);
    let o = Options { rtol: 1e-10, atol: 1e-12, ..Options::default() };
    let reference = solve(&prob, Method::Tsit45, &o).unwrap().states;
    for method in [FilterMethod::Ekf, FilterMethod::Ukf] {
        let res = f.run(&schedule, &obs, method).unwrap();
        for (s, x) in res.steps.iter().zip(&reference) {
            for (i, (m, x)) in s.mean.iter().zip(x).enumerate() {
                assert!((m - x).abs() < 1e-7 * (1.0 + x.abs()), "{method:?} t = {}: state {i} {m} vs {x}", s.time);
            }
            assert!(s.cov.iter().all(|v| *v == 0.0));
        }
    }
}

/// Bad input is an error that says what is wrong, never a panic.
#[test]
fn bad_input_is_an_error() {
    let f = linear_filter(FilterOptions::default());
    let (schedule, obs, _, _) = linear_case();
    let msg = |r: Result<FilterResult, insilico_estimation::EstimationError>| r.unwrap_err().to_string();
    // An observed-output index the filter does not have.
    let e = msg(f.run(&schedule, &[Measurement::new(1.0, 5, 1.0)], FilterMethod::Ekf));
    assert!(e.contains("observed output 5"), "{e}");
    // A non-finite value, with its line.
    let bad = Measurement { time: 1.0, output: 0, value: Some(f64::NAN), line: Some(17) };
    let e = msg(f.run(&schedule, &[bad], FilterMethod::Ekf));
    assert!(e.contains("line 17"), "{e}");
    // A measurement before the start.
    let g = f.clone().with_options(FilterOptions { t0: Some(2.0), ..*f.options() });
    let e = msg(g.run(&Schedule::new(), &obs, FilterMethod::Ekf));
    assert!(e.contains("precedes the start"), "{e}");
    // Steady-state dosing.
    let mut ss = Dose::bolus(0.0, 0, 1.0).repeated(12.0, 0);
    ss.ss = insilico_solvers::SteadyState::Reset;
    let e = msg(f.run(&Schedule::new().dose(ss), &obs, FilterMethod::Particle));
    assert!(e.contains("steady-state"), "{e}");
    // A non-positive value under the exponential error model.
    let model = Model::parse(LINEAR, "linear").unwrap();
    let out = ObservedOutput::new(&model, "y", ErrorModel::Exponential, &[0.1]).unwrap();
    let h = Filter::new(&model, &LIN_P, &[], &[out]).unwrap();
    let e = msg(h.run(&schedule, &[Measurement::new(1.0, 0, -2.0)], FilterMethod::Ekf));
    assert!(e.contains("exponential"), "{e}");
    // Initial covariance that is not positive semi-definite, wrong sizes, unknown output, bad σ.
    assert!(f.clone().with_initial(&[0.0, 0.0], &[1.0, 2.0, 2.0, 1.0]).is_err());
    assert!(f.clone().with_initial(&[0.0], &[1.0]).is_err());
    assert!(ObservedOutput::new(&model, "nope", ErrorModel::Additive, &[0.1]).is_err());
    assert!(ObservedOutput::new(&model, "y", ErrorModel::Combined2, &[0.1]).is_err());
    // Too few particles; a noise scale search on a model without noise.
    let p = f.clone().with_options(FilterOptions { particles: 1, ..*f.options() });
    assert!(p.run(&schedule, &obs, FilterMethod::Particle).is_err());
    let m2 = Model::parse("parameters: k = 1\nstates: a\nd/dt(a) = -k * a\noutput: a", "q").unwrap();
    let o2 = ObservedOutput::new(&m2, "a", ErrorModel::Additive, &[0.1]).unwrap();
    let quiet = Filter::new(&m2, &[1.0], &[], &[o2]).unwrap();
    assert!(quiet.estimate_noise_scale(&Schedule::new(), &[Measurement::new(1.0, 0, 1.0)], 0.1, 10.0).is_err());
    assert!(quiet.estimate_parameter("nope", &Schedule::new(), &[], 0.1, 10.0).is_err());
}

/// The dataset-level noise scale maximises the summed log-likelihood: on a
/// one-subject dataset it is the single-filter estimate (to the search's
/// precision, 1e-5 relative), and the summed likelihood of two copies of a
/// subject is twice one (same maximiser).
#[test]
fn dataset_noise_scale_is_the_summed_likelihood_maximiser() {
    let (schedule, obs) = simulate_linear_dose_first(1.5, 60, 5);
    let mut csv = String::from("ID,TIME,AMT,DV,EVID,CMT\n");
    for id in [1, 2] {
        // Records in time order, a dose before an observation at the same time.
        let mut rows: Vec<(f64, u8, String)> = Vec::new();
        for ev in &schedule.events {
            if let insilico_solvers::Event::Dose(d) = ev {
                rows.push((d.time, 0, format!("{id},{},{},.,1,1\n", d.time, d.amount)));
            }
        }
        for m in &obs {
            rows.push((m.time, 1, format!("{id},{},0,{},0,1\n", m.time, m.value.unwrap())));
        }
        rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        csv.extend(rows.into_iter().map(|r| r.2));
    }
    let data = Dataset::from_str("sim.csv", &csv, &ReadOptions::default()).unwrap();
    let one = Dataset { subjects: data.subjects[..1].to_vec(), ..data.clone() };
    let model = Model::parse(LINEAR, "linear").unwrap();
    let out = ObservedOutput::new(&model, "y", ErrorModel::Additive, &[SIGMA_Y]).unwrap();
    let dout = [DatasetOutput { output: out.clone(), cmt: 1 }];
    let opts = DatasetFilterOptions { initial_cov: Some(vec![0.5, 0.1, 0.1, 0.2]), ..DatasetFilterOptions::default() };
    let params = [LIN_P.to_vec()];
    let est1 = estimate_dataset_noise_scale(&model, &one, &params, &dout, &opts, 0.1, 10.0).unwrap();
    let est2 = estimate_dataset_noise_scale(&model, &data, &params, &dout, &opts, 0.1, 10.0).unwrap();
    // The initial mean: the model's x(0) = 0, as filter_dataset uses.
    let f = Filter::new(&model, &LIN_P, &[], &[out]).unwrap().with_initial(&[0.0, 0.0], &[0.5, 0.1, 0.1, 0.2]).unwrap();
    let single = f.estimate_noise_scale(&schedule, &obs, 0.1, 10.0).unwrap();
    println!("noise scale: dataset of 1 {:.6}, of 2 {:.6}, single filter {:.6}", est1.value, est2.value, single.value);
    assert!((est1.value / single.value - 1.0).abs() < 1e-5);
    assert!((est2.value / est1.value - 1.0).abs() < 1e-5);
    assert!((est2.log_likelihood - 2.0 * est1.log_likelihood).abs() < 1e-6 * est1.log_likelihood.abs());
    assert!((est1.log_likelihood - single.log_likelihood).abs() < 1e-6 * single.log_likelihood.abs());
}
