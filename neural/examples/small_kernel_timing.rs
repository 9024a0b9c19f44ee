//! Times the specialised 1→16→16→1 tanh kernels through the `Residual` tape API.
//! `cargo run --release -p insilico-neural --example small_kernel_timing`
use std::hint::black_box;
use std::time::Instant;

use insilico_neural::{Activation, Mlp, Residual};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let net = Mlp::new(&[1, 16, 16, 1], Activation::Tanh)?;
    let w = net.init(1, 0.5);
    let mut tape = vec![0.0; Residual::tape_len(&net)];
    let mut y = [0.0];
    let n = 200_000;
    // Minimum over repeats: the machine is shared.
    let mut f = f64::INFINITY;
    for _ in 0..15 {
        let t0 = Instant::now();
        for i in 0..n {
            let x = [black_box(0.1 + (i % 7) as f64 * 0.01)];
            net.eval_tape(black_box(&w), &x, &mut y, &mut tape);
            black_box(&y);
        }
        f = f.min(t0.elapsed().as_secs_f64() / n as f64);
    }
    let mut gw = vec![0.0; w.len()];
    let mut gx = [0.0];
    let mut b = f64::INFINITY;
    for _ in 0..15 {
        let t1 = Instant::now();
        for _ in 0..n {
            net.backward_tape(black_box(&w), &[0.1], black_box(&tape), &[0.3], Some(&mut gx), Some(&mut gw));
            black_box(&gx);
        }
        b = b.min(t1.elapsed().as_secs_f64() / n as f64);
    }
    let t2 = Instant::now();
    for i in 0..n {
        let x = [black_box(0.1 + (i % 7) as f64 * 0.01)];
        net.eval(black_box(&w), &x, &mut y);
        black_box(&y);
    }
    let g = t2.elapsed().as_secs_f64() / n as f64;
    println!("eval_tape {:.1} ns, backward_tape {:.1} ns, generic eval {:.1} ns", f * 1e9, b * 1e9, g * 1e9);
    Ok(())
}
