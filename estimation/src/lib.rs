//! # insilico-estimation
//!
//! Population estimation for models written in the model language
//! (insilico-model): the population likelihood of nonlinear mixed-effects
//! models, comparable with NONMEM, nlmixr2 and R nlme.
//!
//! | task | where |
//! |---|---|
//! | describe the population model: typical values, random effects, Ω, residual error | [`PopulationSpec`], [`RandomEffect`], [`Omega`], [`ErrorModel`] |
//! | fit it by FOCE-I (Laplace, first-order Hessian, interaction) | [`focei::fit`] → [`focei::Estimate`] |
//! | individual posteriors at a fixed population: MAP, Laplace, SIR/MCMC draws, sequential updating | [`Posterior`] ([`posterior`]) |
//! | several observed outputs, each with its error model; BLQ (M3) | [`ObservedOutput`] in [`PopulationSpec::outputs`] |
//! | filter latent states of models with process noise (EKF, particle filter, noise-level likelihood) | [`filter::Filter`], [`filter::filter_dataset`] |
//! | the FO Fisher information of a population design (PopED's reduced and full), criteria, sampling-time optimisation | [`design::Design`], [`design::optimise_times`] |
//! | point dose-finding on an individual prediction: time to a threshold, the amount that reaches a target | [`dosing::Forecast`], [`dosing::time_to_threshold`], [`dosing::dose_for_target`] |
//! | errors | [`EstimationError`] |
//!
//! Every subject is a [`ModelSystem`](insilico_model::ModelSystem) bound to
//! its covariates (the same binding `simulate` uses,
//! [`insilico_model::subject`]); the predictions' Jacobian by the random
//! effects comes from exact forward sensitivities
//! ([`insilico_solvers::sensitivities`]).
//!
//! ## Example
//! ```
//! use insilico_estimation::{focei, ErrorModel, PopulationSpec};
//! use insilico_solvers::data::{Dataset, ReadOptions};
//! let model = insilico_model::Model::parse(
//!     "parameters: ka in (0, inf), CL in (0, inf), V in (0, inf)\nstates: depot, central\n\
//!      flux depot -> central = ka * depot\nflux central -> out = CL / V * central\noutput: cp = central / V", "pk")?;
//! let mut csv = String::from("ID,TIME,AMT,DV,EVID,CMT\n");
//! for (id, cl) in [(1, 2.5f64), (2, 3.0), (3, 3.5), (4, 2.8)] {
//!     csv += &format!("{id},0,100,.,1,1\n");
//!     for t in [0.5f64, 1.0, 2.0, 4.0, 8.0, 12.0] {
//!         let (ka, v): (f64, f64) = (1.2, 30.0);
//!         let k = cl / v;
//!         let c = 100.0 * ka / (v * (ka - k)) * ((-k * t).exp() - (-ka * t).exp());
//!         csv += &format!("{id},{t},0,{:.4},0,2\n", c * (1.0 + 0.02 * (t - 5.0).sin()));
//!     }
//! }
//! let data = Dataset::from_str("pk.csv", &csv, &ReadOptions::default()).unwrap();
//! let spec = PopulationSpec::log_normal(&[("ka", 1.0), ("CL", 3.0), ("V", 25.0)], &[("CL", 0.05)],
//!                                       ErrorModel::Proportional, &[0.1])?;
//! let est = focei::fit(&model, &data, &spec, &focei::FitOptions::default())?;
//! assert!(est.converged && (est.parameters[2].value - 30.0).abs() < 2.0);
//! println!("{}", est.table());
//! # Ok::<(), insilico_estimation::EstimationError>(())
//! ```

#![warn(missing_docs)]

mod conditional;
pub mod design;
pub mod dosing;
pub mod error;
pub mod filter;
pub mod focei;
mod population;
pub mod posterior;
pub mod spec;

pub use error::EstimationError;
pub use posterior::{
    Draws, Posterior, PosteriorOptions, PredictionRow, SamplingMethod, SequentialStep, SubjectPosterior,
};
pub use spec::{ErrorModel, EtaOn, ObservedOutput, Omega, OmegaStructure, PopulationSpec, RandomEffect};
