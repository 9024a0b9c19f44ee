//! # Insilico
//!
//! Hybrid mechanistic/neural ODE simulation for pharmacometrics and
//! biomedicine. This root crate is a facade over the workspace's crates; the
//! `insilico` binary (`src/main.rs`) is a thin command line over
//! [`insilico_jobs`], whose modules are re-exported here under the same names.
//!
//! ## A tour by task
//!
//! | task | where |
//! |---|---|
//! | write a model once in the model language, compile it for every engine | [`model`], [`models_zoo`] |
//! | write a right-hand side by hand, solve it under a dosing schedule | [`solvers`] ([`solvers::System`], [`solvers::solve()`], [`solvers::Schedule`]) |
//! | read a NONMEM-layout dataset | [`solvers::data::Dataset`] |
//! | simulate a dataset from a TOML config (what `insilico simulate` does) | [`simulate`] |
//! | sweep regimens × parameters × virtual populations to Parquet (what `insilico sweep` does) | [`sweep`] |
//! | fit a PK or hybrid PK/neural model to data (what `insilico fit` does) | [`fit_cmd`], [`neural::fit`] |
//! | individual posteriors and forecasts under candidate regimens (what `insilico assimilate` and `insilico forecast` do) | [`assimilate`], [`forecast`], [`bayes_config`] |
//! | protein-ensemble perturbation studies to Parquet (what `insilico perturb` does) | [`perturb`] |
//! | reference problems P1–P3 (what `insilico bench` does) | [`p1`], [`bench_p2`], [`bench_p3`] |
//! | organoid growth, Simeoni TGI, the spheroid reaction–diffusion model | [`mechanistic::organoid`] |
//! | conformational master equations, Markov models, sensitivities | [`mechanistic::conformation`] |
//!
//! ## Example: simulate the embedded quick-start config
//! ```
//! use insilico::simulate::{Simulation, EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME};
//!
//! let sim = Simulation::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None)?;
//! let ds = sim.load_embedded_dataset()?;
//! let preds = sim.run(&ds, &|| {})?;
//! assert!(preds.rows.len() > 10);
//! # Ok::<(), insilico::Error>(())
//! ```

#![warn(missing_docs)]

pub use insilico_jobs::{
    assimilate, atomic, bayes_config, bench_p2, bench_p3, design_cmd, error, fit_cmd, fit_focei, fit_shape, forecast,
    limits, p1, perturb, plots, posterior_dir, simulate, status, sweep, Error,
};
pub use insilico_jobs::{estimation, kernels, mechanistic, model, models_zoo, neural, solvers, validation};
