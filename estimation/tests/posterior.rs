//! Issue 12: individual posteriors at a fixed population (MAP, Laplace,
//! sampling, sequential updating, bad input).

use insilico_estimation::posterior::{LaplaceHessian, Posterior, PosteriorOptions, Proposal, SamplingMethod};
use insilico_estimation::{ErrorModel, EstimationError, ObservedOutput, Omega, PopulationSpec, RandomEffect};
use insilico_model::Model;
use insilico_solvers::data::{Dataset, ReadOptions};
use insilico_solvers::Options;

const MAPBAYR_MODEL: &str = include_str!("../../examples/mapbayr/mapbayr.model");
const MAPBAYR_DATA: &str = include_str!("../../examples/mapbayr/mapbayr.csv");

fn data(name: &str, text: &str) -> Dataset {
    Dataset::from_str(name, text, &ReadOptions::default()).unwrap()
}

/// Tight ODE tolerances and MAP convergence for comparisons with references.
fn tight() -> PosteriorOptions {
    PosteriorOptions {
        ode: Options { rtol: 1e-10, atol: 1e-12, max_steps: 1_000_000 },
        tolerance: 1e-11,
        ..PosteriorOptions::default()
    }
}

/// mapbayr's README example as the config examples/mapbayr/mapbayr.toml gives it.
fn mapbayr(opts: &PosteriorOptions) -> Posterior {
    let model = Model::parse(MAPBAYR_MODEL, "mapbayr").unwrap();
    let spec = PopulationSpec::log_normal(
        &[("CL", 0.9), ("V1", 10.0), ("Q", 1.0), ("V2", 10.0)],
        &[("CL", 0.3), ("V1", 0.3)],
        ErrorModel::Combined2,
        // Var = 0.1 + 0.05·f²: a = sqrt(0.1), b = sqrt(0.05).
        &[0.1f64.sqrt(), 0.05f64.sqrt()],
    )
    .unwrap();
    Posterior::new(&model, &data("mapbayr.csv", MAPBAYR_DATA), &spec, opts).unwrap()
}

/// Issue 12, item 1: mapbayr's README example. mapbayr prints the MAP
/// η = (0.3872104, 0.1569604) (7 decimals) and IPRED 4.162, 1.087 (3
/// decimals); the tolerances are those printed precisions (the ODE is
/// solved at rtol 1e-10, the MAP converged to |Δη| < 1e-11).
#[test]
fn mapbayr_readme_example() {
    let post = mapbayr(&tight());
    assert_eq!(post.eta_names(), ["ETA_CL", "ETA_V1"]);
    assert_eq!(post.subject_ids(), ["1"]);
    let map = post.map_subject(0);
    println!("{map:#?}");
    assert!(map.converged);
    assert!((map.eta[0] - 0.3872104).abs() < 1e-5, "ETA_CL {}", map.eta[0]);
    assert!((map.eta[1] - 0.1569604).abs() < 1e-5, "ETA_V1 {}", map.eta[1]);
    assert_eq!(map.predictions.len(), 2);
    assert!((map.predictions[0].ipred - 4.162).abs() < 1e-3, "IPRED(6) {}", map.predictions[0].ipred);
    assert!((map.predictions[1].ipred - 1.087).abs() < 1e-3, "IPRED(15) {}", map.predictions[1].ipred);
    assert_eq!((map.predictions[0].line, map.predictions[1].line), (3, 4));
    assert_eq!(map.n_obs, 2);
    assert!(map.warnings.is_empty(), "{:?}", map.warnings);
    // Individual parameters: CL = 0.9·exp(η1) (the BW factor is in the model), V1 = 10·exp(η2).
    assert!((map.parameters[0] - 0.9 * map.eta[0].exp()).abs() < 1e-12);
    assert!((map.parameters[1] - 10.0 * map.eta[1].exp()).abs() < 1e-12);
    // The objective at η̂ is the reported OFV, and η̂ is its minimum.
    assert!((post.objective(0, &map.eta) - map.ofv).abs() < 1e-8);
    for k in 0..2 {
        for d in [-1e-3, 1e-3] {
            let mut e = map.eta.clone();
            e[k] += d;
            assert!(post.objective(0, &e) > map.ofv);
        }
    }
    // Laplace covariance: symmetric, positive variances; SDs are its diagonal's roots.
    assert!((map.covariance[1] - map.covariance[2]).abs() < 1e-14);
    assert!((map.sd[0] - map.covariance[0].sqrt()).abs() < 1e-15 && map.sd[1] > 0.0);
    // PRED is the prediction at η = 0.
    let eta0 = post.map_subject(0);
    assert_eq!(eta0.predictions[0].pred, map.predictions[0].pred);
}

/// The exact gradient of the objective (forward sensitivities through the
/// log-normal parametrisation and the combined error model) against central
/// differences of the objective, at points away from the MAP. Steps of 1e-6
/// on O ~ 10 leave a truncation + rounding error near 1e-8; 1e-6 relative
/// is the bound.
#[test]
fn objective_gradient_matches_finite_differences() {
    let post = mapbayr(&tight());
    for eta in [[0.2, -0.1], [-0.5, 0.4], [0.9, 0.0]] {
        let (o, g) = post.objective_gradient(0, &eta).unwrap();
        assert!((o - post.objective(0, &eta)).abs() < 1e-9 * o.abs());
        for k in 0..2 {
            let h = 1e-6;
            let (mut a, mut b) = (eta, eta);
            a[k] += h;
            b[k] -= h;
            let fd = (post.objective(0, &a) - post.objective(0, &b)) / (2.0 * h);
            assert!((g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0), "dO/deta_{k} at {eta:?}: exact {} fd {fd}", g[k]);
        }
    }
}

/// The observed (full) and expected (Gauss–Newton) Laplace covariances
/// differ on this nonlinear model with combined error, but both are close
/// (the posterior is moderately nonlinear) and give the same MAP.
#[test]
fn laplace_hessians_observed_and_expected() {
    let full = mapbayr(&tight()).map_subject(0);
    let gn = mapbayr(&PosteriorOptions { hessian: LaplaceHessian::Expected, ..tight() }).map_subject(0);
    assert_eq!(full.eta, gn.eta);
    println!("observed {:?}\nexpected {:?}", full.covariance, gn.covariance);
    for k in 0..2 {
        let rel = (full.sd[k] - gn.sd[k]).abs() / full.sd[k];
        assert!(rel > 1e-6 && rel < 0.5, "SD {k}: observed {} expected {}", full.sd[k], gn.sd[k]);
    }
}

/// One-compartment IV bolus: `cp = 10·exp(−k t)` for dose 100, V = 10.
const IV: &str = "parameters: k = 0.2 in (0, inf), V = 10 in (0, inf)\nstates: c\nd/dt(c) = -k * c\noutput: cp = c / V";

/// Beal's M3 term against its closed form. At η = 0, f(1) = 10·e^−0.2 and
/// f(20) = 10·e^−4; the second record is censored (CENS = 1, DV = LLOQ
/// 0.5) and additive σ = 0.5, so
/// `O = (8 − f(1))²/0.25 + ln 0.25 − 2 ln Φ((0.5 − f(20))/0.5)` =
/// −0.635236449737183 (mpmath, 30 digits). The ODE at rtol 1e-12 leaves
/// ~1e-11; 1e-9 is the bound. The same limit given as the output's `lloq`
/// (no CENS column, DV below it) gives the same value.
#[test]
fn m3_term_matches_closed_form() {
    let model = Model::parse(IV, "iv").unwrap();
    let opts = PosteriorOptions { ode: Options { rtol: 1e-12, atol: 1e-14, max_steps: 1_000_000 }, ..tight() };
    let mut spec =
        PopulationSpec::log_normal(&[("k", 0.2), ("V", 10.0)], &[("k", 0.1)], ErrorModel::Additive, &[0.5]).unwrap();
    let cens = data("cens.csv", "ID,TIME,AMT,DV,CENS\n1,0,100,.,0\n1,1,0,8.0,0\n1,20,0,0.5,1\n");
    let post = Posterior::new(&model, &cens, &spec, &opts).unwrap();
    let expected = -0.635_236_449_737_182_8;
    assert!((post.objective(0, &[0.0]) - expected).abs() < 1e-9, "{}", post.objective(0, &[0.0]));
    let map = post.map_subject(0);
    assert!(map.predictions[1].censored && !map.predictions[0].censored && map.predictions[1].dv == 0.5);
    spec.outputs = vec![ObservedOutput::new("cp", ErrorModel::Additive, &[0.5]).with_lloq(0.5)];
    let lloq = data("lloq.csv", "ID,TIME,AMT,DV\n1,0,100,.\n1,1,0,8.0\n1,20,0,0.3\n");
    let post = Posterior::new(&model, &lloq, &spec, &opts).unwrap();
    assert!((post.objective(0, &[0.0]) - expected).abs() < 1e-9);
    let m2 = post.map_subject(0);
    assert!(m2.predictions[1].censored && m2.predictions[1].dv == 0.5);
    assert!((m2.eta[0] - map.eta[0]).abs() < 1e-9);
}

/// Parent and metabolite, each with its own error model, observed by CMT.
const PARENT_METABOLITE: &str = "parameters: ka = 1.2 in (0, inf), CL = 3 in (0, inf), V = 20 in (0, inf), fm = 0.4, CLm = 1.5 in (0, inf), Vm = 15 in (0, inf)\n\
    states: depot, central, metab\n\
    flux depot -> central = ka * depot\n\
    flux central -> out = (1 - fm) * CL / V * central\n\
    flux central -> metab = fm * CL / V * central\n\
    flux metab -> out = CLm / Vm * metab\n\
    output: cp = central / V, cm = metab / Vm";

const PM_DATA: &str = "ID,TIME,AMT,DV,CMT,EVID,CENS\n\
    1,0,100,.,1,1,0\n1,1,0,3.1,2,0,0\n1,1,0,0.35,3,0,0\n1,4,0,2.2,2,0,0\n1,4,0,0.9,3,0,0\n\
    1,12,0,0.7,2,0,0\n1,12,0,0.6,3,0,0\n1,36,0,0.05,2,0,1\n1,36,0,0.09,3,0,0\n";

fn pm_spec() -> PopulationSpec {
    let mut spec = PopulationSpec::log_normal(
        &[("ka", 1.2), ("CL", 3.0), ("V", 20.0), ("fm", 0.4), ("CLm", 1.5), ("Vm", 15.0)],
        &[("ka", 0.2), ("CL", 0.1), ("CLm", 0.15)],
        ErrorModel::Additive,
        &[1.0],
    )
    .unwrap();
    spec.outputs = vec![
        ObservedOutput::new("cp", ErrorModel::Proportional, &[0.12]).with_cmt(2),
        ObservedOutput::new("cm", ErrorModel::Combined2, &[0.02, 0.1]).with_cmt(3).with_lloq(0.1),
    ];
    spec
}

/// Several outputs: each observation takes its own output's error model
/// and σ; the objective is the sum of the single-output objectives (prior
/// counted once). M3 enters for the censored parent record (CENS = 1) and
/// the metabolite record below its lloq (0.09 < 0.1). The same data with a
/// DVID column selects the same records. Exact gradient vs central
/// differences (1e-6 relative: steps 1e-6 on O ~ 10–100).
#[test]
fn several_outputs_with_m3() {
    let model = Model::parse(PARENT_METABOLITE, "pm").unwrap();
    let spec = pm_spec();
    let post = Posterior::new(&model, &data("pm.csv", PM_DATA), &spec, &tight()).unwrap();
    let eta = [0.15, -0.2, 0.1];
    let both = post.objective(0, &eta);
    // Single-output views of the same records.
    let mut parent_spec = spec.clone();
    parent_spec.outputs.truncate(1);
    let keep = |cmt: &str| -> String {
        PM_DATA
            .lines()
            .filter(|l| l.starts_with("ID") || l.contains(",1,1,") || l.split(',').nth(4) == Some(cmt))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let parent = Posterior::new(&model, &data("p.csv", &keep("2")), &parent_spec, &tight()).unwrap();
    let mut metab_spec = spec.clone();
    metab_spec.outputs.remove(0);
    let metab = Posterior::new(&model, &data("m.csv", &keep("3")), &metab_spec, &tight()).unwrap();
    let prior = {
        let om = [0.2, 0.1, 0.15];
        eta.iter().zip(om).map(|(e, w)| e * e / w).sum::<f64>()
    };
    let sum = parent.objective(0, &eta) + metab.objective(0, &eta) - prior;
    assert!((both - sum).abs() < 1e-9 * both.abs(), "{both} vs {sum}");
    // Censoring flags and outputs per row.
    let map = post.map_subject(0);
    assert!(map.converged, "{:?}", map.warnings);
    let flags: Vec<(String, bool)> = map.predictions.iter().map(|r| (r.output.clone(), r.censored)).collect();
    assert_eq!(flags[6], ("cp".to_string(), true));
    assert_eq!(flags[7], ("cm".to_string(), true));
    assert_eq!(flags.iter().filter(|f| f.1).count(), 2);
    assert_eq!(map.predictions[7].dv, 0.1);
    // Exact gradient with M3 terms and two error models.
    for e in [eta, map.eta.clone().try_into().unwrap(), [-0.3, 0.25, -0.2]] {
        let (_, g) = post.objective_gradient(0, &e).unwrap();
        for k in 0..3 {
            let h = 1e-6;
            let (mut a, mut b) = (e, e);
            a[k] += h;
            b[k] -= h;
            let fd = (post.objective(0, &a) - post.objective(0, &b)) / (2.0 * h);
            assert!((g[k] - fd).abs() < 1e-6 * fd.abs().max(1.0), "k {k} at {e:?}: exact {} fd {fd}", g[k]);
        }
    }
    // DVID instead of CMT.
    let dvid_data: String = PM_DATA
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("{l},DVID\n")
            } else {
                let dvid = if l.split(',').nth(4) == Some("3") { 2 } else { 1 };
                format!("{l},{dvid}\n")
            }
        })
        .collect();
    let mut dspec = spec.clone();
    dspec.outputs[0].cmt = None;
    dspec.outputs[0].dvid = Some(1.0);
    dspec.outputs[1].cmt = None;
    dspec.outputs[1].dvid = Some(2.0);
    let post_d = Posterior::new(&model, &data("pm_dvid.csv", &dvid_data), &dspec, &tight()).unwrap();
    assert!((post_d.objective(0, &eta) - both).abs() < 1e-12 * both.abs());
}

/// FOCE-I takes one output without censoring and says so.
#[test]
fn focei_refuses_several_outputs_and_m3() {
    use insilico_estimation::focei::{fit, FitOptions};
    let model = Model::parse(PARENT_METABOLITE, "pm").unwrap();
    let e = fit(&model, &data("pm.csv", PM_DATA), &pm_spec(), &FitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("one observed output"), "{e}");
    let mut spec = pm_spec();
    spec.outputs.truncate(1);
    let parent_only: String =
        PM_DATA.lines().filter(|l| l.split(',').nth(4) != Some("3")).map(|l| format!("{l}\n")).collect();
    let e = fit(&model, &data("p.csv", &parent_only), &spec, &FitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("M3") && e.to_string().contains("line 6"), "{e}");
}

/// A model whose output is linear in two declared random effects:
/// `y = a(t) + E1 + E2·a(t)`, `a(t) = 10·e^(−k t)` after a dose of 10.
const LINEAR: &str =
    "parameters: k = 0.3 in (0, inf)\nrandom: E1, E2\nstates: a\nd/dt(a) = -k * a\noutput: y = a + E1 + E2 * a";
const LINEAR_DATA: &str = "ID,TIME,AMT,DV\n1,0,10,.\n1,0.5,0,9.4\n1,2,0,6.3\n1,5,0,2.9\n1,8,0,1.6\n";
const LINEAR_OMEGA: [[f64; 2]; 2] = [[0.5, 0.1], [0.1, 0.2]];
const LINEAR_SIGMA: f64 = 0.4;

fn linear(opts: &PosteriorOptions) -> Posterior {
    let model = Model::parse(LINEAR, "linear").unwrap();
    let spec = PopulationSpec {
        theta: vec![("k".into(), 0.3)],
        fixed: vec![],
        random: vec![RandomEffect::declared("E1"), RandomEffect::declared("E2")],
        omega: Omega::block(&[LINEAR_OMEGA[0].to_vec(), LINEAR_OMEGA[1].to_vec()]).unwrap(),
        error: ErrorModel::Additive,
        sigma: vec![LINEAR_SIGMA],
        output: None,
        dose_cmt: None,
        obs_cmt: None,
        outputs: vec![],
    };
    let opts = PosteriorOptions { ode: Options { rtol: 1e-12, atol: 1e-14, max_steps: 1_000_000 }, ..*opts };
    Posterior::new(&model, &data("linear.csv", LINEAR_DATA), &spec, &opts).unwrap()
}

/// The exact Gaussian posterior of the linear case: with `B_j = (1, a_j)`,
/// precision `P = Ω⁻¹ + BᵀB/σ²`, mean `P⁻¹Bᵀ(y − a)/σ²`, covariance `P⁻¹`.
fn linear_closed_form() -> ([f64; 2], [[f64; 2]; 2]) {
    let obs = [(0.5, 9.4), (2.0, 6.3), (5.0, 2.9), (8.0, 1.6)];
    let [[w11, w12], [_, w22]] = LINEAR_OMEGA;
    let det = w11 * w22 - w12 * w12;
    let s2 = LINEAR_SIGMA * LINEAR_SIGMA;
    let mut p = [[w22 / det, -w12 / det], [-w12 / det, w11 / det]];
    let mut r = [0.0; 2];
    for (t, y) in obs {
        let a = 10.0 * f64::exp(-0.3 * t);
        let b = [1.0, a];
        for i in 0..2 {
            r[i] += b[i] * (y - a) / s2;
            for j in 0..2 {
                p[i][j] += b[i] * b[j] / s2;
            }
        }
    }
    let d = p[0][0] * p[1][1] - p[0][1] * p[1][0];
    let cov = [[p[1][1] / d, -p[0][1] / d], [-p[1][0] / d, p[0][0] / d]];
    let mean = [cov[0][0] * r[0] + cov[0][1] * r[1], cov[1][0] * r[0] + cov[1][1] * r[1]];
    (mean, cov)
}

/// Linear in η with additive error: the posterior is exactly Gaussian, so
/// the MAP and both Laplace covariances equal the closed form. 1e-8: the ODE
/// at rtol 1e-12 and the Hessian's central differences of an exactly
/// linear gradient leave ~1e-10.
#[test]
fn linear_in_eta_matches_closed_form() {
    let (mean, cov) = linear_closed_form();
    for hessian in [LaplaceHessian::Observed, LaplaceHessian::Expected] {
        let post = linear(&PosteriorOptions { hessian, ..tight() });
        assert_eq!(post.eta_names(), ["E1", "E2"]);
        let map = post.map_subject(0);
        assert!(map.converged);
        for i in 0..2 {
            assert!((map.eta[i] - mean[i]).abs() < 1e-8, "{hessian:?} eta {i}: {} vs {}", map.eta[i], mean[i]);
            for (j, want) in cov[i].iter().enumerate() {
                let c = map.covariance[i * 2 + j];
                assert!((c - want).abs() < 1e-8, "{hessian:?} cov {i}{j}: {c} vs {want}");
            }
        }
    }
}

/// Sample mean and covariance of draws.
fn moments(d: &[Vec<f64>]) -> ([f64; 2], [[f64; 2]; 2]) {
    let n = d.len() as f64;
    let m = [d.iter().map(|e| e[0]).sum::<f64>() / n, d.iter().map(|e| e[1]).sum::<f64>() / n];
    let mut c = [[0.0; 2]; 2];
    for e in d {
        for i in 0..2 {
            for j in 0..2 {
                c[i][j] += (e[i] - m[i]) * (e[j] - m[j]) / (n - 1.0);
            }
        }
    }
    (m, c)
}

/// Monte-Carlo agreement of draws with a Gaussian `N(mean, cov)`: each mean
/// within 4.5 standard errors `sd/√n_eff`, each covariance entry within 4.5
/// of its standard errors `√((Σ_ii Σ_jj + Σ_ij²)/n_eff)` (the variance of a
/// Gaussian sample covariance). 4.5 SE: about 1 in 150,000 per check for a
/// correct sampler; the seeds are fixed, so the test is deterministic.
fn assert_matches(what: &str, draws: &[Vec<f64>], n_eff: f64, mean: [f64; 2], cov: [[f64; 2]; 2]) {
    let (m, c) = moments(draws);
    println!("{what}: n_eff {n_eff:.0}, mean {m:?} vs {mean:?}, cov {c:?} vs {cov:?}");
    for i in 0..2 {
        let se = (cov[i][i] / n_eff).sqrt();
        assert!((m[i] - mean[i]).abs() < 4.5 * se, "{what}: mean {i} {} vs {} (SE {se})", m[i], mean[i]);
        for j in 0..2 {
            let se = ((cov[i][i] * cov[j][j] + cov[i][j].powi(2)) / n_eff).sqrt();
            assert!(
                (c[i][j] - cov[i][j]).abs() < 4.5 * se,
                "{what}: cov {i}{j} {} vs {} (SE {se})",
                c[i][j],
                cov[i][j]
            );
        }
    }
}

/// On the exactly Gaussian linear case, SIR (normal and t proposals), MCMC
/// and Laplace draws match the closed-form posterior within Monte-Carlo
/// error; SIR's ESS is reported (near the number of proposals with the
/// normal proposal, whose weights are then constant up to the ODE error);
/// MCMC reports its acceptance rate; draws are reproducible per seed and
/// differ between subjects' streams.
#[test]
fn draws_match_the_gaussian_posterior() {
    let (mean, cov) = linear_closed_form();
    let base = PosteriorOptions { draws: 4000, ..tight() };
    for (method, proposal) in [
        (SamplingMethod::Sir, Proposal::Normal),
        (SamplingMethod::Sir, Proposal::StudentT { dof: 4 }),
        (SamplingMethod::Mcmc, Proposal::Normal),
        (SamplingMethod::Laplace, Proposal::Normal),
    ] {
        let post = linear(&PosteriorOptions { method, proposal, ..base });
        let map = post.map_subject(0);
        let d = post.sample(0, &map);
        assert_eq!(d.eta.len(), 4000);
        assert_eq!(d.method, method);
        let n_eff = match method {
            // Resampled draws: duplicates lower the information below both counts.
            SamplingMethod::Sir => {
                let ess = d.ess.unwrap();
                if proposal == Proposal::Normal {
                    assert!(ess > 0.999 * 20_000.0, "ESS {ess}");
                } else {
                    assert!(ess > 0.5 * 20_000.0 && ess < 20_000.0, "ESS {ess}");
                }
                1.0 / (1.0 / 4000.0 + 1.0 / ess)
            }
            SamplingMethod::Mcmc => {
                let acc = d.acceptance.unwrap();
                assert!(acc > 0.2 && acc < 0.6, "acceptance {acc}");
                d.ess.unwrap()
            }
            _ => 4000.0,
        };
        assert_matches(method.name(), &d.eta, n_eff, mean, cov);
        assert_eq!(post.sample(0, &map), d, "same seed, same draws");
    }
    let post = linear(&PosteriorOptions { method: SamplingMethod::Laplace, ..base });
    let map = post.map_subject(0);
    let other = linear(&PosteriorOptions { method: SamplingMethod::Laplace, seed: 7, ..base });
    assert_ne!(post.sample(0, &map), other.sample(0, &map));
}

/// On a nonlinear posterior (mapbayr's two observations), SIR and MCMC
/// target the same distribution: their means and covariances agree within
/// Monte-Carlo error (combined SE of both), and both sit near, but not on,
/// the Laplace approximation. Auto keeps SIR when its ESS is large enough
/// and switches to MCMC when it is asked for more ESS than SIR can give.
#[test]
fn sir_and_mcmc_agree_on_a_nonlinear_posterior() {
    let base = PosteriorOptions { draws: 4000, ..tight() };
    let sir_post = mapbayr(&PosteriorOptions { method: SamplingMethod::Auto, ess_min: 1000.0, ..base });
    let map = sir_post.map_subject(0);
    let sir = sir_post.sample(0, &map);
    assert_eq!(sir.method, SamplingMethod::Sir);
    let mcmc_post = mapbayr(&PosteriorOptions { method: SamplingMethod::Auto, ess_min: 1e9, ..base });
    let mcmc = mcmc_post.sample(0, &map);
    assert_eq!(mcmc.method, SamplingMethod::Mcmc);
    let n_sir = 1.0 / (1.0 / 4000.0 + 1.0 / sir.ess.unwrap());
    let n_mcmc = mcmc.ess.unwrap();
    println!("SIR ESS {:?}, MCMC ESS {n_mcmc:.0}, acceptance {:?}", sir.ess, mcmc.acceptance);
    let (ms, cs) = moments(&sir.eta);
    let (mm, cm) = moments(&mcmc.eta);
    println!("SIR mean {ms:?} cov {cs:?}\nMCMC mean {mm:?} cov {cm:?}\nLaplace {:?} {:?}", map.eta, map.covariance);
    // Two independent estimates: the SE of their difference combines both.
    let n_eff = 1.0 / (1.0 / n_sir + 1.0 / n_mcmc);
    assert_matches("SIR vs MCMC", &mcmc.eta, n_eff, ms, cs);
    // With two observations the posterior is skewed: its mean lies below
    // the mode (MAP) and its spread in ETA_V1 exceeds the Laplace one (SIR:
    // mean (0.300, 0.042) vs MAP (0.387, 0.157); SD(ETA_V1) 0.49 vs 0.41).
    for (m, c) in [(ms, cs), (mm, cm)] {
        assert!(m[0] < map.eta[0] && m[1] < map.eta[1] && c[1][1] > map.covariance[3]);
    }
}

/// Sequential updating on mapbayr's example: the first observation is
/// forecast by the population prediction, the second by the posterior of
/// the first; after both, η equals the full MAP (both searches converge to
/// |Δη| < 1e-11; 1e-8 allows for the different starts). The step-1 η is the
/// MAP of a dataset holding only the first observation. Down-weighting:
/// a huge half-life changes nothing, a half-life of 0.5 h leaves the first
/// observation (9 h older) a weight of 0.5^18 ≈ 4e-6, so step 2 nearly
/// equals the MAP of the second observation alone (within 1e-4).
#[test]
fn sequential_updating_mapbayr() {
    let post = mapbayr(&tight());
    let full = post.map_subject(0);
    let steps = post.sequential(0);
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].n_used, steps[1].n_used), (1, 2));
    assert_eq!((steps[0].time, steps[1].time, steps[0].dv, steps[1].dv), (6.0, 15.0, 3.9, 1.1));
    assert_eq!(steps[0].output, "cp");
    // PRED comes from the solve with sensitivities (its error control sees
    // them too), the step-1 forecast from one without: equal to the ODE tolerance.
    assert!((steps[0].predicted - full.predictions[0].pred).abs() < 1e-8);
    assert!((steps[0].error - (3.9 - steps[0].predicted)).abs() < 1e-15);
    for k in 0..2 {
        assert!((steps[1].eta[k] - full.eta[k]).abs() < 1e-8, "{:?} vs {:?}", steps[1].eta, full.eta);
        assert!((steps[1].sd[k] - full.sd[k]).abs() < 1e-6);
    }
    let only = |keep: usize| {
        let text: String = MAPBAYR_DATA
            .lines()
            .enumerate()
            .filter(|(i, _)| *i < 2 || *i == keep)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let model = Model::parse(MAPBAYR_MODEL, "mapbayr").unwrap();
        let spec = PopulationSpec::log_normal(
            &[("CL", 0.9), ("V1", 10.0), ("Q", 1.0), ("V2", 10.0)],
            &[("CL", 0.3), ("V1", 0.3)],
            ErrorModel::Combined2,
            &[0.1f64.sqrt(), 0.05f64.sqrt()],
        )
        .unwrap();
        Posterior::new(&model, &data("one.csv", &text), &spec, &tight()).unwrap()
    };
    let first = only(2);
    let m1 = first.map_subject(0);
    for k in 0..2 {
        assert!((steps[0].eta[k] - m1.eta[k]).abs() < 1e-8);
    }
    // The forecast of the second observation is the step-1 posterior's IPRED at 15 h.
    let f = post.predictions_at(0, &m1.eta).unwrap();
    assert!((steps[1].predicted - f[1]).abs() < 1e-9 && (steps[1].error - (1.1 - f[1])).abs() < 1e-9);
    let long = mapbayr(&PosteriorOptions { half_life: Some(1e12), ..tight() }).sequential(0);
    assert!((long[1].eta[0] - full.eta[0]).abs() < 1e-8);
    let short = mapbayr(&PosteriorOptions { half_life: Some(0.5), ..tight() }).sequential(0);
    let m2 = only(3).map_subject(0);
    println!("half-life 0.5 h: {:?} vs second observation alone {:?}", short[1].eta, m2.eta);
    for k in 0..2 {
        assert!((short[1].eta[k] - m2.eta[k]).abs() < 1e-4);
        assert!((short[1].eta[k] - full.eta[k]).abs() > 1e-2);
    }
}

/// Bad input (issue 12): a subject without observations gets the prior,
/// said so; an observation before any dose is a warning naming subject and
/// line; a non-positive-definite Ω is an error; an observation on a CMT
/// that maps to no observed output is an error naming subject and line.
/// Never a panic.
#[test]
fn bad_input() {
    let model = Model::parse(MAPBAYR_MODEL, "mapbayr").unwrap();
    let spec = PopulationSpec::log_normal(
        &[("CL", 0.9), ("V1", 10.0), ("Q", 1.0), ("V2", 10.0)],
        &[("CL", 0.3), ("V1", 0.3)],
        ErrorModel::Combined2,
        &[0.1f64.sqrt(), 0.05f64.sqrt()],
    )
    .unwrap();
    let text = "ID,TIME,EVID,CMT,AMT,RATE,DV,BW\n\
                1,0,1,1,100,20,.,90\n1,6,0,1,0,0,3.9,90\n\
                2,0,1,1,100,20,.,70\n2,6,0,1,0,0,.,70\n\
                3,0,0,1,0,0,0.2,70\n3,1,1,1,100,20,.,70\n3,6,0,1,0,0,4.0,70\n";
    let post = Posterior::new(&model, &data("bad.csv", text), &spec, &tight()).unwrap();
    assert_eq!(post.subject_ids(), ["1", "2", "3"]);
    let all = post.map_all();
    assert!(all[0].warnings.is_empty());
    // No observations: the prior.
    let p2 = &all[1];
    assert_eq!((p2.eta.clone(), p2.n_obs, p2.converged), (vec![0.0, 0.0], 0, true));
    for (c, e) in p2.covariance.iter().zip([0.3, 0.0, 0.0, 0.3]) {
        assert!((c - e).abs() < 1e-15, "{:?}", p2.covariance);
    }
    assert!(p2.predictions.is_empty());
    assert!(
        p2.warnings.iter().any(|w| w.contains("`2`") && w.contains("no observations") && w.contains("prior")),
        "{:?}",
        p2.warnings
    );
    let d = post.sample(1, p2);
    let (m, c) = moments(&d.eta);
    println!("prior draws: {:?} {m:?} {c:?}", d.method);
    assert!(m[0].abs() < 0.1 && (c[0][0] - 0.3).abs() < 0.1);
    assert!(post.sequential(1).is_empty());
    // Observation before the first dose: a warning naming subject and line; the fit goes on.
    let p3 = &all[2];
    assert!(
        p3.warnings.iter().any(|w| w.contains("`3`") && w.contains("line 6") && w.contains("before any dose")),
        "{:?}",
        p3.warnings
    );
    assert_eq!(p3.n_obs, 2);
    // Same results on one thread.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    assert_eq!(pool.install(|| post.map_all()), all);
    // Non-positive-definite Ω.
    let e = Omega::block(&[vec![0.3, 0.4], vec![0.4, 0.3]]).unwrap_err();
    assert!(matches!(e, EstimationError::OmegaNotPositiveDefinite { .. }), "{e}");
    // DV on a compartment that maps to no observed output.
    let pm = Model::parse(PARENT_METABOLITE, "pm").unwrap();
    let text = "ID,TIME,AMT,DV,CMT,EVID\n1,0,100,.,1,1\n1,1,0,3.1,2,0\n7,0,100,.,1,1\n7,1,0,0.35,3,0\n7,2,0,0.5,1,0\n";
    let e = Posterior::new(&pm, &data("pm_bad.csv", text), &pm_spec(), &tight()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("`7`") && msg.contains("line 6") && msg.contains("CMT 1") && msg.contains("no observed output"),
        "{msg}"
    );
    // A DVID output without a DVID column; an unknown output; bad options.
    let mut s = pm_spec();
    s.outputs[1].dvid = Some(2.0);
    let e = Posterior::new(&pm, &data("pm.csv", PM_DATA), &s, &tight()).unwrap_err();
    assert!(e.to_string().contains("DVID"), "{e}");
    let mut s = pm_spec();
    s.outputs[1].name = "cx".into();
    let e = Posterior::new(&pm, &data("pm.csv", PM_DATA), &s, &tight()).unwrap_err();
    assert!(e.to_string().contains("`cx`") && e.to_string().contains("cp, cm"), "{e}");
    let e = Posterior::new(
        &pm,
        &data("pm.csv", PM_DATA),
        &pm_spec(),
        &PosteriorOptions { half_life: Some(-1.0), ..tight() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("half_life"), "{e}");
    // A CENS value other than 0/1.
    let text = "ID,TIME,AMT,DV,CMT,EVID,CENS\n1,0,100,.,1,1,0\n1,1,0,3.1,2,0,2\n";
    let mut s = pm_spec();
    s.outputs.truncate(1);
    let e = Posterior::new(&pm, &data("c.csv", text), &s, &tight()).unwrap_err();
    assert!(e.to_string().contains("CENS = 2") && e.to_string().contains("line 3"), "{e}");
}
