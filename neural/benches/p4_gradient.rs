//! P4: time per full-data gradient (24 subjects, 1→16→16→1 tanh elimination
//! network, 321 weights + ka, V, error model, weight prior sd 1 as in
//! `examples/p4_hybrid.toml`). Fast path (DOPRI5 discrete adjoint) on all
//! threads and on one, at the P4 config's tolerances and tighter ones,
//! against the generic diffsol-based `solvers::gradient` (adjoint and forward).
//! The fast path integrates subjects in lockstep groups
//! (`insilico_neural::lockstep`) as `fit` does; "one at a time" is the same
//! fast path without lockstep (`lockstep::OneByOne`), the reference for it.
use criterion::{criterion_group, criterion_main, Criterion};
use insilico_mechanistic::PkModel;
use insilico_neural::fit::{
    subjects_from_dataset, Engine, ErrorModel, FitSpec, Model, Objective, ParamSpec, Stage, Transform,
};
use insilico_neural::lockstep::OneByOne;
use insilico_neural::{Activation, Channel, Feature, FluxResidual, Mlp};
use insilico_solvers::{Dataset, DoseMapping, Options, ReadOptions};

fn bench(c: &mut Criterion) {
    let pk = PkModel::from_name("pk-1cmt-oral").unwrap();
    let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh).unwrap();
    let h = FluxResidual::new(pk, net, vec![(Feature::Output(0), 5.0)], vec![Channel::new(1, Some(2), 0.2)]).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ude_train.csv");
    let ds = Dataset::from_path(path, &ReadOptions::default()).unwrap();
    let subjects = subjects_from_dataset(&ds, &DoseMapping::new(2, 1, 2)).unwrap();
    let model = Model {
        system: &h,
        fast: Some(&h),
        n_weights: h.net().n_params(),
        weights_init: h.net().init(1, 0.5),
        weight_prior_sd: Some(1.0),
    };
    let one = OneByOne(&h);
    let model1 = Model {
        system: &h,
        fast: Some(&one),
        n_weights: h.net().n_params(),
        weights_init: h.net().init(1, 0.5),
        weight_prior_sd: Some(1.0),
    };
    let mut cl = ParamSpec::new("CL", 0.0);
    cl.fixed = true;
    cl.transform = Transform::Identity;
    for (name, engine, rtol, atol, model) in [
        ("fast, P4 config (rtol 1e-5, atol 1e-6)", Engine::Fast, 1e-5, 1e-6, &model),
        ("fast one at a time, P4 config", Engine::Fast, 1e-5, 1e-6, &model1),
        ("fast rtol 1e-6", Engine::Fast, 1e-6, 1e-9, &model),
        ("fast rtol 1e-8", Engine::Fast, 1e-8, 1e-9, &model),
        ("generic rtol 1e-6", Engine::Generic, 1e-6, 1e-9, &model),
    ] {
        let spec = FitSpec {
            params: vec![ParamSpec::new("ka", 1.0), cl.clone(), ParamSpec::new("V", 20.0)],
            error: ErrorModel::Proportional,
            sigma_init: vec![0.1],
            sigma_fixed: false,
            stages: vec![Stage::Lbfgs { iterations: 1 }],
            validation_fraction: 0.0,
            patience: 0,
            check_every: 1,
            seed: 0,
            options: Options { rtol, atol, ..Options::default() },
            engine,
            x0: None,
        };
        let obj = Objective::new(model, &spec, subjects.iter().collect(), false).unwrap();
        let phi = obj.initial();
        c.bench_function(&format!("P4 full-data gradient, {name}, {} threads", rayon::current_num_threads()), |b| {
            b.iter(|| obj.value_grad(&phi).unwrap())
        });
        if engine == Engine::Fast {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            c.bench_function(&format!("P4 full-data gradient, {name}, 1 thread"), |b| {
                b.iter(|| pool.install(|| obj.value_grad(&phi).unwrap()))
            });
        }
    }
}

criterion_group! { name = benches; config = Criterion::default().sample_size(20); targets = bench }
criterion_main!(benches);
