//! MLP forward / VJP timings (4→32→32→3 tanh, the design's yardstick, and P4's 1→16→16→1).
use criterion::{criterion_group, criterion_main, Criterion};
use insilico_neural::{Activation, Mlp, Workspace};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    for widths in [vec![4, 32, 32, 3], vec![1, 16, 16, 1]] {
        let net = Mlp::new(&widths, Activation::Tanh).unwrap();
        let w = net.init(1, 1.0);
        let mut ws = Workspace::new(&net);
        let x: Vec<f64> = (0..net.n_inputs()).map(|i| 0.1 + 0.2 * i as f64).collect();
        let mut y = vec![0.0; net.n_outputs()];
        let gy = vec![1.0; net.n_outputs()];
        let mut gx = vec![0.0; net.n_inputs()];
        let mut gw = vec![0.0; net.n_params()];
        let name = format!("{widths:?}");
        c.bench_function(&format!("forward {name}"), |b| {
            b.iter(|| net.forward(black_box(&w), black_box(&x), &mut ws, &mut y))
        });
        c.bench_function(&format!("vjp (forward+backward, input+params) {name}"), |b| {
            b.iter(|| {
                net.vjp(black_box(&w), black_box(&x), black_box(&gy), &mut ws, &mut y, Some(&mut gx), Some(&mut gw))
            })
        });
        net.forward(&w, &x, &mut ws, &mut y);
        c.bench_function(&format!("backward only {name}"), |b| {
            b.iter(|| net.backward(black_box(&w), black_box(&gy), &mut ws, Some(&mut gx), Some(&mut gw)))
        });
        let v = vec![1.0; net.n_inputs()];
        let mut jv = vec![0.0; net.n_outputs()];
        c.bench_function(&format!("jvp input {name}"), |b| {
            b.iter(|| net.jvp_input(black_box(&w), black_box(&x), black_box(&v), &mut ws, &mut y, &mut jv))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
