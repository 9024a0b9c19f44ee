//! Bad input gets an error naming what is wrong (issue 11): a non-positive
//! definite Ω, a random effect on a parameter the model lacks, a subject
//! without observations; and the σ count of each error model.

use insilico_estimation::focei::{self, FitOptions};
use insilico_estimation::{ErrorModel, EstimationError, Omega, PopulationSpec, RandomEffect};
use insilico_solvers::data::{Dataset, ReadOptions};

fn data(text: &str) -> Dataset {
    Dataset::from_str("d.csv", text, &ReadOptions::default()).unwrap()
}

const TWO: &str = "ID,TIME,AMT,DV,EVID,CMT\n1,0,100,.,1,1\n1,1,0,2.5,0,2\n1,4,0,2.0,0,2\n2,0,100,.,1,1\n2,1,0,2.7,0,2\n2,4,0,1.8,0,2\n";

fn spec() -> PopulationSpec {
    PopulationSpec::log_normal(&[("ka", 1.0), ("CL", 3.0), ("V", 30.0)], &[("CL", 0.1)], ErrorModel::Additive, &[0.2])
        .unwrap()
}

#[test]
fn omega_not_positive_definite() {
    let e = Omega::block(&[vec![0.1, 0.2], vec![0.2, 0.1]]).unwrap_err();
    assert!(matches!(e, EstimationError::OmegaNotPositiveDefinite { .. }), "{e}");
    assert!(e.to_string().contains("not positive definite"));
    let e = Omega::block(&[vec![0.1, 0.01], vec![0.02, 0.1]]).unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
    assert!(Omega::diagonal(&[0.1, 0.0]).is_err());
}

#[test]
fn random_effect_on_missing_parameter() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let mut s = spec();
    s.random = vec![RandomEffect::log_normal("Q")];
    let e = focei::fit(&model, &data(TWO), &s, &FitOptions::default()).unwrap_err();
    assert!(matches!(e, EstimationError::UnknownParameter { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("`Q`") && msg.contains("ka, CL, V"), "{msg}");
}

#[test]
fn subject_without_observations() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let text = format!("{TWO}3,0,100,.,1,1\n3,2,0,.,0,2\n");
    let e = focei::fit(&model, &data(&text), &spec(), &FitOptions::default()).unwrap_err();
    assert_eq!(e, EstimationError::NoObservations { file: "d.csv".into(), subject: "3".into() });
    assert!(e.to_string().contains("subject `3`"));
}

#[test]
fn sigma_count_and_unknown_theta() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let mut s = spec();
    s.error = ErrorModel::Combined2;
    let e = focei::fit(&model, &data(TWO), &s, &FitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("combined2 error model takes 2"), "{e}");
    let mut s = spec();
    s.theta.push(("KM".into(), 1.0));
    let e = focei::fit(&model, &data(TWO), &s, &FitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`KM`"), "{e}");
}

#[test]
fn exponential_error_refuses_non_positive_dv() {
    let model = insilico_models_zoo::load("pk-1cmt-oral").unwrap();
    let mut s = spec();
    s.error = ErrorModel::Exponential;
    let text = TWO.replace("1,4,0,2.0,0,2", "1,4,0,0,0,2");
    let e = focei::fit(&model, &data(&text), &s, &FitOptions::default()).unwrap_err();
    assert!(matches!(e, EstimationError::Observation { line: 4, .. }), "{e}");
}
