//! Times single-thread batched P1 solves (dev probe).
use insilico_kernels::{integrate, Regimen, Stepper, SummaryObserver, Tolerances, TwoCmtOral};
fn main() {
    let times: Vec<f64> = (0..673).map(|i| i as f64 * 0.5).collect();
    let r = Regimen::repeated_bolus(500.0, 0, 12.0, 336.0).unwrap();
    let t = std::time::Instant::now();
    let mut steps = 0u64;
    for _ in 0..std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000) {
        let mut o = SummaryObserver::new(312.0, 336.0, 1.0);
        let st = integrate(
            &TwoCmtOral,
            Stepper::Tsit5,
            &[1.2, 5.0, 30.0, 10.0, 50.0],
            &[0.0; 4],
            &r,
            &times,
            336.0,
            &Tolerances::default(),
            &mut o,
        );
        steps += st.steps as u64;
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "{:.1} us per solve, {:.1} ns per step, {} steps per solve",
        el / 2000.0 * 1e6,
        el / steps as f64 * 1e9,
        steps / 2000
    );
}
