//! Single-thread cost of the P1 sweep through `integrate_lanes` for several
//! lane counts (minimum over repeats, interleaved, so machine load affects
//! every count alike): `cargo run --release -p insilico-kernels --example lanes_probe`.
use insilico_kernels::{integrate_lanes, Regimen, Stepper, Tolerances, TwoCmtOral};
use std::time::Instant;

fn run<const L: usize>(params: &[[f64; 5]], regs: &[Regimen], times: &[f64], out: &mut [f64]) -> f64 {
    let nt = times.len();
    let tol = Tolerances::default();
    let x0 = [0.0; 4];
    let t = Instant::now();
    for (c, (chunk, (ps, rs))) in out.chunks_mut(L * nt).zip(params.chunks(L).zip(regs.chunks(L))).enumerate() {
        let _ = c;
        let rows: Vec<&mut [f64]> = chunk.chunks_mut(nt).collect();
        let Ok(obs) = <[&mut [f64]; L]>::try_from(rows) else { continue };
        let p: [&[f64]; L] = std::array::from_fn(|l| &ps[l][..]);
        let r: [&Regimen; L] = std::array::from_fn(|l| &rs[l]);
        integrate_lanes(&TwoCmtOral, Stepper::Tsit5, p, [&x0; L], r, times, 336.0, &tol, obs);
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    let (mut params, mut regs) = (Vec::new(), Vec::new());
    // Every 5th P1 case (2,000 solves), in sweep order.
    let mut idx = 0;
    for i in 0..50 {
        let dose = 50.0 + 950.0 * i as f64 / 49.0;
        for tau in [6.0, 8.0, 12.0, 24.0] {
            for j in 0..50 {
                idx += 1;
                if idx % 5 != 0 {
                    continue;
                }
                let scale = (0.5f64.ln() + 4.0f64.ln() * j as f64 / 49.0).exp();
                params.push([1.2, 5.0 * scale, 30.0, 10.0, 50.0]);
                regs.push(Regimen::repeated_bolus(dose, 0, tau, 336.0).unwrap());
            }
        }
    }
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    let mut out = vec![0.0; params.len() * times.len()];
    let mut best = [f64::INFINITY; 5];
    for _ in 0..7 {
        best[0] = best[0].min(run::<1>(&params, &regs, &times, &mut out));
        best[1] = best[1].min(run::<2>(&params, &regs, &times, &mut out));
        best[2] = best[2].min(run::<4>(&params, &regs, &times, &mut out));
        best[3] = best[3].min(run::<8>(&params, &regs, &times, &mut out));
        best[4] = best[4].min(run::<16>(&params, &regs, &times, &mut out));
    }
    for (l, b) in [1, 2, 4, 8, 16].iter().zip(best) {
        println!("lanes {l:>2}: {:.1} us per solve (x{:.2} vs 1 lane)", b / params.len() as f64 * 1e6, best[0] / b);
    }
}
