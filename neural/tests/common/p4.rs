//! Reference problem P4's hybrid set-up, shared by the neural crate's tests,
//! its `p4_gradient` bench and its `p4_profile` example (they include this
//! file with `#[path]`): the model, the training data and the objective as
//! `examples/p4_hybrid.toml` configures them.

// Each including target uses its own subset.
#![allow(dead_code)]

use insilico_mechanistic::PkModel;
use insilico_neural::fast::FastRhs;
use insilico_neural::fit::{
    subjects_from_dataset, Engine, ErrorModel, FitSpec, FitSubject, Model, ParamSpec, Stage, Transform,
};
use insilico_neural::{Activation, Channel, ChannelForm, Feature, FluxResidual, Mlp};
use insilico_solvers::{Dataset, DoseMapping, Options, ReadOptions};

/// Errors of the set-up (a missing data file, say).
pub type Error = Box<dyn std::error::Error>;

/// One-compartment oral PK with the learned flux central → eliminated
/// `A_c · 0.2 · a(A_c) · softplus(nn(C / 5))`, `nn`: 1 → 16 → 16 → 1 tanh, and
/// the gate `a` of `form`.
pub fn hybrid(form: ChannelForm) -> Result<FluxResidual<PkModel, Mlp>, Error> {
    let pk = PkModel::from_name("pk-1cmt-oral")?;
    let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh)?;
    let channel = Channel::new(1, Some(2), 0.2).with_form(form);
    Ok(FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![channel])?)
}

/// The 24 training subjects of `../shared/data/ude_train.csv`.
pub fn subjects() -> Result<Vec<FitSubject>, Error> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ude_train.csv");
    let ds = Dataset::from_path(path, &ReadOptions::default())?;
    Ok(subjects_from_dataset(&ds, &DoseMapping::new(2, 1, 2))?)
}

/// The fitting model over `h` with gradients from `fast`, initial weights of
/// seed 1 at scale 0.5 and a weight prior of sd 1 (as the P4 config).
pub fn model<'a>(h: &'a FluxResidual<PkModel, Mlp>, fast: &'a dyn FastRhs) -> Model<'a> {
    Model {
        system: h,
        fast: Some(fast),
        n_weights: h.net().n_params(),
        weights_init: h.net().init(1, 0.5),
        weight_prior_sd: Some(1.0),
        initial_state: None,
    }
}

/// P4's objective: ka and V estimated (init 1 and 20), the linear clearance
/// fixed at 0 (all elimination learned), proportional error (σ 0.1, free).
pub fn spec(rtol: f64, atol: f64, engine: Engine, seed: u64) -> FitSpec {
    let mut cl = ParamSpec::new("CL", 0.0);
    cl.fixed = true;
    cl.transform = Transform::Identity;
    FitSpec {
        params: vec![ParamSpec::new("ka", 1.0), cl, ParamSpec::new("V", 20.0)],
        error: ErrorModel::Proportional,
        sigma_init: vec![0.1],
        sigma_fixed: false,
        stages: vec![Stage::Lbfgs { iterations: 1 }],
        validation_fraction: 0.0,
        patience: 0,
        check_every: 1,
        seed,
        options: Options { rtol, atol, ..Options::default() },
        engine,
        x0: None,
    }
}
