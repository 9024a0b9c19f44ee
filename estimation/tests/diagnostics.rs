//! Diagnostics against simulation references: data simulated (seeded) from
//! the one-compartment oral model with log-normal random effects and
//! combined2 error; at the true parameters the CWRES (Hooker et al. 2007)
//! are close to N(0, 1), PRED is the closed-form typical curve, and IWRES is
//! `(DV − IPRED)/sqrt(a² + b²·IPRED²)`.

use insilico_estimation::focei::{self, CovarianceStep, FitOptions};
use insilico_estimation::{ErrorModel, PopulationSpec};
use insilico_solvers::data::{Dataset, ReadOptions};

/// SplitMix64 with Box–Muller normals: seeded, no dependency.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn conc(dose: f64, ka: f64, cl: f64, v: f64, t: f64) -> f64 {
    let k = cl / v;
    dose * ka / (v * (ka - k)) * ((-k * t).exp() - (-ka * t).exp())
}

const TRUE: (f64, f64, f64) = (1.0, 5.0, 30.0);
const OMEGA2: f64 = 0.09;
const SIGMA: [f64; 2] = [0.05, 0.1];
const TIMES: [f64; 7] = [0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0];

fn simulate(n: usize, seed: u64) -> String {
    let mut rng = Rng(seed);
    let mut csv = String::from("ID,TIME,AMT,DV,EVID,CMT\n");
    for id in 1..=n {
        let w = OMEGA2.sqrt();
        let (ka, cl, v) =
            (TRUE.0 * (w * rng.normal()).exp(), TRUE.1 * (w * rng.normal()).exp(), TRUE.2 * (w * rng.normal()).exp());
        csv += &format!("{id},0,100,.,1,1\n");
        for t in TIMES {
            let f = conc(100.0, ka, cl, v, t);
            let sd = (SIGMA[0].powi(2) + SIGMA[1].powi(2) * f * f).sqrt();
            csv += &format!("{id},{t},0,{},0,2\n", f + sd * rng.normal());
        }
    }
    csv
}

#[test]
fn cwres_are_standard_normal_at_the_true_parameters() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let data = Dataset::from_str("sim.csv", &simulate(200, 7), &ReadOptions::default()).unwrap();
    let spec = PopulationSpec::log_normal(
        &[("ka", TRUE.0), ("CL", TRUE.1), ("V", TRUE.2)],
        &[("ka", OMEGA2), ("CL", OMEGA2), ("V", OMEGA2)],
        ErrorModel::Combined2,
        &SIGMA,
    )
    .unwrap();
    // No outer iterations: the objective and diagnostics at the given values.
    let opts = FitOptions { max_iterations: 0, covariance: CovarianceStep::None, ..FitOptions::default() };
    let est = focei::fit(&model, &data, &spec, &opts).unwrap();
    assert_eq!(est.sdtab.len(), 200 * TIMES.len());
    let cw: Vec<f64> = est.sdtab.iter().map(|r| r.cwres).collect();
    let mean = cw.iter().sum::<f64>() / cw.len() as f64;
    let sd = (cw.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (cw.len() - 1) as f64).sqrt();
    println!("CWRES mean {mean:.4}, SD {sd:.4}; eps shrinkage {:.1}%", est.eps_shrinkage_percent);
    // 1400 values: the standard error of the mean is about 0.03.
    assert!(mean.abs() < 0.1, "CWRES mean {mean}");
    assert!((sd - 1.0).abs() < 0.1, "CWRES SD {sd}");
    for r in est.sdtab.iter().take(TIMES.len()) {
        let pred = conc(100.0, TRUE.0, TRUE.1, TRUE.2, r.time);
        assert!((r.pred - pred).abs() < 1e-4 * pred, "PRED {} vs closed form {pred}", r.pred);
        let iw = (r.dv - r.ipred) / (SIGMA[0].powi(2) + SIGMA[1].powi(2) * r.ipred * r.ipred).sqrt();
        assert!((r.iwres - iw).abs() < 1e-9);
    }
    // η shrinkage is reported for every random effect and the table writes.
    assert_eq!(est.etas.len(), 3);
    let csv = est.sdtab_csv();
    assert!(csv.starts_with("ID,TIME,DV,PRED,IPRED,CWRES,IWRES,eta_ka,eta_CL,eta_V\n"));
    assert_eq!(csv.lines().count(), 1 + 200 * TIMES.len());
}

/// A simulation–estimation smoke test with the combined2 error model: the
/// typical values come back within 10% (50 subjects, one seed).
#[test]
fn combined2_recovers_typical_values() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let data = Dataset::from_str("sim.csv", &simulate(50, 11), &ReadOptions::default()).unwrap();
    let spec = PopulationSpec::log_normal(
        &[("ka", 1.5), ("CL", 4.0), ("V", 25.0)],
        &[("ka", 0.2), ("CL", 0.2), ("V", 0.2)],
        ErrorModel::Combined2,
        &[0.1, 0.2],
    )
    .unwrap();
    let est =
        focei::fit(&model, &data, &spec, &FitOptions { covariance: CovarianceStep::None, ..FitOptions::default() })
            .unwrap();
    println!("{}", est.table());
    assert!(est.converged);
    for (k, t) in [TRUE.0, TRUE.1, TRUE.2].iter().enumerate() {
        assert!(
            (est.parameters[k].value - t).abs() < 0.1 * t,
            "{}: {}",
            est.parameters[k].name,
            est.parameters[k].value
        );
    }
}
