//! P4: time per full-data gradient (24 subjects, 1→16→16→1 tanh elimination
//! network, 321 weights + ka, V, error model, weight prior sd 1 as in
//! `examples/p4_hybrid.toml`). Fast path (DOPRI5 discrete adjoint) on all
//! threads and on one, at the P4 config's tolerances and tighter ones,
//! against the generic diffsol-based `solvers::gradient` (adjoint and forward).
//! The fast path integrates subjects in lockstep groups
//! (`insilico_neural::lockstep`) as `fit` does; "one at a time" is the same
//! fast path without lockstep (`lockstep::OneByOne`), the reference for it.
use criterion::{criterion_group, criterion_main, Criterion};
use insilico_neural::fit::{Engine, Objective};
use insilico_neural::lockstep::OneByOne;
use insilico_neural::ChannelForm;

#[path = "../tests/common/p4.rs"]
mod p4;

fn bench(c: &mut Criterion) {
    let h = p4::hybrid(ChannelForm::Rate).unwrap();
    let subjects = p4::subjects().unwrap();
    let model = p4::model(&h, &h);
    let one = OneByOne(&h);
    let model1 = p4::model(&h, &one);
    for (name, engine, rtol, atol, model) in [
        ("fast, P4 config (rtol 1e-5, atol 1e-6)", Engine::Fast, 1e-5, 1e-6, &model),
        ("fast one at a time, P4 config", Engine::Fast, 1e-5, 1e-6, &model1),
        ("fast rtol 1e-6", Engine::Fast, 1e-6, 1e-9, &model),
        ("fast rtol 1e-8", Engine::Fast, 1e-8, 1e-9, &model),
        ("generic rtol 1e-6", Engine::Generic, 1e-6, 1e-9, &model),
    ] {
        let spec = p4::spec(rtol, atol, engine, 0);
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
