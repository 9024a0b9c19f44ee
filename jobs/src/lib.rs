//! # Insilico jobs
//!
//! The jobs behind the `insilico` command line, as library calls a Rust
//! program can make without clap: simulate a dataset, fit a model, sweep an
//! ensemble to Parquet, run a protein perturbation study, and the reference
//! benchmark problems. The binary (`src/main.rs` of the root package) only
//! parses arguments, shows progress and reports errors.
//!
//! ## A tour by task
//!
//! | task | where |
//! |---|---|
//! | write a right-hand side, solve it under a dosing schedule | [`solvers`] ([`solvers::System`], [`solvers::solve()`], [`solvers::Schedule`]) |
//! | read a NONMEM-layout dataset | [`solvers::data::Dataset`] |
//! | use a ready PK model or its closed form | [`mechanistic::pk`] |
//! | simulate a dataset from a TOML config (what `insilico simulate` does) | [`simulate`] |
//! | run reference problem P1 (what `insilico bench p1` does) | [`p1`] |
//! | run reference problems P2 (spheroid PDE) and P3 (conformational master equation): `insilico bench p2`, `insilico bench p3` | [`bench_p2`], [`bench_p3`] |
//! | organoid growth, Simeoni TGI, the spheroid reaction–diffusion model | [`mechanistic::organoid`] |
//! | conformational master equations (MSM or SQRA landscape), perturbations, analysis | [`mechanistic::conformation`] |
//! | Markov models from CSV/.npy/.npz, stationary/ITS/MFPT/committors/TPT, sensitivities | [`mechanistic::conformation::markov`], [`mechanistic::conformation::sensitivity`] |
//! | protein-ensemble perturbation studies to Parquet (what `insilico perturb` does) | [`perturb`] |
//! | sweep regimens × parameters × virtual populations to Parquet (what `insilico sweep` does) | [`sweep`] |
//! | fit a PK or hybrid PK/neural model to data (what `insilico fit` does) | [`fit_cmd`], [`neural::fit`] |
//! | population likelihood by FOCE-I (`insilico fit` with `estimation = "focei"`) | [`fit_focei`], [`estimation::focei`] |
//! | population design: FO Fisher information, RSE%, sampling-time optimisation (what `insilico design` does) | [`design_cmd`], [`estimation::design`] |
//! | individual posteriors at a fixed population, then forecasts under candidate regimens (`insilico assimilate`, `insilico forecast`) | [`assimilate`], [`forecast`], [`bayes_config`], [`posterior_dir`], [`estimation::posterior`] |
//!
//! ## Example: simulate the embedded quick-start config
//! ```
//! use insilico_jobs::simulate::{Simulation, EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME};
//!
//! let sim = Simulation::from_toml_str(EMBEDDED_CONFIG, EMBEDDED_CONFIG_NAME, None)?;
//! let ds = sim.load_embedded_dataset()?;
//! let preds = sim.run(&ds, &|| {})?;
//! assert!(preds.rows.len() > 10);
//! let mut csv = Vec::new();
//! preds.write_csv(&mut csv).unwrap();
//! assert!(csv.starts_with(b"ID,TIME,PRED\n"));
//! # Ok::<(), insilico_jobs::Error>(())
//! ```

#![warn(missing_docs)]

pub use insilico_estimation as estimation;
pub use insilico_kernels as kernels;
pub use insilico_mechanistic as mechanistic;
pub use insilico_model as model;
pub use insilico_models_zoo as models_zoo;
pub use insilico_neural as neural;
pub use insilico_solvers as solvers;
pub use insilico_validation as validation;

pub mod assimilate;
pub mod atomic;
pub mod bayes_config;
pub mod bench_p2;
pub mod bench_p3;
pub mod design_cmd;
pub mod error;
pub mod fit_cmd;
pub mod fit_focei;
pub mod fit_shape;
pub mod forecast;
pub mod limits;
pub mod p1;
pub mod perturb;
pub mod plots;
pub mod posterior_dir;
pub mod simulate;
pub mod status;
pub mod sweep;

pub use error::Error;
