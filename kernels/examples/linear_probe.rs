//! Dev probe: instruction/time cost of the exact linear path on P1.
use insilico_kernels::linear::solve_linear;
use insilico_kernels::{Regimen, TwoCmtOral};
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    let r = Regimen::repeated_bolus(500.0, 0, 12.0, 336.0).unwrap();
    let t = std::time::Instant::now();
    let mut out = vec![0.0; 673];
    for _ in 0..n {
        solve_linear(&TwoCmtOral, &[1.2, 5.0, 30.0, 10.0, 50.0], &[0.0; 4], &r, &times, 336.0, &mut out[..]);
    }
    println!("{:.2} us per solve ({})", t.elapsed().as_secs_f64() / n as f64 * 1e6, out[672]);
}
