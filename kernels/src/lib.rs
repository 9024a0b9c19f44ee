//! # insilico-kernels
//!
//! Batched integrators for ensembles of small systems (up to 32 states): the
//! organoid and PK regimen sweeps of thousands to millions of trajectories.
//!
//! * [`BatchModel`] — a small model with an exact Jacobian and its CUDA C twin.
//! * [`Regimen`] — dose trains and exposure-window trains, expanded on the fly.
//! * [`integrate()`] — one trajectory, adaptive [`Stepper::Tsit5`] or
//!   [`Stepper::Rosenbrock`] steps between breakpoints, dense output;
//!   [`integrate_lanes`] — several trajectories side by side on one core
//!   (each bit-for-bit as alone), which the batch solvers use.
//! * [`solve_grid`] / [`solve_summaries`] — a [`Batch`] in parallel on all
//!   cores (rayon), identical results for any thread count.
//! * [`generators`] — grids, Latin hypercubes, Sobol points and seeded
//!   log-normal virtual populations, random access (chunking-independent).
//! * [`reductions`] — Cmax, Ctrough, AUC, time above a threshold, final
//!   value per trajectory, in one pass ([`reductions::solve_reductions`]).
//! * [`organoid`] — a small organoid drug-response model with a toxicity proxy.
//! * [`linear`] — the exact matrix-exponential path for linear models: the
//!   limit every integrator is measured against.
//!
//! With the `cuda` feature, the `cuda` module runs the same algorithms as NVRTC-compiled
//! kernels, one trajectory per GPU thread.
//!
//! ```
//! use insilico_kernels::{solve_grid, Batch, Regimen, Stepper, Tolerances, TwoCmtOral};
//! let regimens = vec![Regimen::repeated_bolus(100.0, 0, 12.0, 48.0).unwrap(); 2];
//! let rows = vec![vec![1.2, 5.0, 30.0, 10.0, 50.0], vec![1.2, 10.0, 30.0, 10.0, 50.0]];
//! let batch = Batch::<4>::from_rows(&rows, regimens).unwrap();
//! let times: Vec<f64> = (0..=48).map(|h| h as f64).collect();
//! let r = solve_grid(&TwoCmtOral, Stepper::Tsit5, &batch, &times, 48.0, &Tolerances::default());
//! assert!(r.values[49 + 47] < r.values[47], "faster clearance, lower concentration");
//! ```

// Index loops mirror the CUDA kernels line by line; iterator rewrites would
// hide that correspondence.
#![allow(clippy::needless_range_loop)]

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod ensemble;
pub mod generators;
pub mod integrate;
pub mod linear;
pub mod model;
pub mod organoid;
pub mod reductions;
pub mod schedule;

pub use ensemble::{solve_grid, solve_summaries, Batch, BatchError, GridResult, Summary, SummaryObserver, LANES};
pub use integrate::{integrate, integrate_lanes, Observer, Status, Stepper, Tolerances, TrajectoryStats};
pub use model::{jacobian_fd_error, BatchModel, CudaSource, HybridOneCmt, LaneRhs, TwoCmtOral};
pub use schedule::{DoseTrain, Regimen, RegimenError, WindowTrain};
