//! Fixtures shared by the kernels' integration tests.
#![allow(dead_code)]

use insilico_kernels::{Batch, Regimen};

/// Every `stride`-th regimen of the P1 sweep (PROBLEMS.md: D in 50 values over
/// [50, 1000] outermost, then τ ∈ {6, 8, 12, 24}, then CL scale in 50
/// log-spaced values over [0.5, 2]), as a batch of the two-compartment model.
pub fn p1_subset(stride: usize) -> Batch<4> {
    let mut rows = Vec::new();
    let mut regs = Vec::new();
    let mut k = 0;
    for i in 0..50 {
        let dose = 50.0 + 950.0 * i as f64 / 49.0;
        for tau in [6.0, 8.0, 12.0, 24.0] {
            for j in 0..50 {
                let scale = (0.5f64.ln() + 4.0f64.ln() * j as f64 / 49.0).exp();
                if k % stride == 0 {
                    rows.push(vec![1.2, 5.0 * scale, 30.0, 10.0, 50.0]);
                    regs.push(Regimen::repeated_bolus(dose, 0, tau, 336.0).expect("valid P1 regimen"));
                }
                k += 1;
            }
        }
    }
    Batch::from_rows(&rows, regs).expect("finite parameters")
}

/// P1's output grid 0, 0.5, ..., 336.
pub fn p1_grid() -> Vec<f64> {
    (0..673).map(|i| i as f64 * 0.5).collect()
}
