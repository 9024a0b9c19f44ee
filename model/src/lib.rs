//! # insilico-model
//!
//! The model language: a model is written once, as a plain-text file in the
//! style of rxode2's ODE syntax (or built in code), compiled to one
//! expression graph with shared subexpressions and exact symbolic
//! derivatives, and every engine consumes code generated from that graph.
//! The language reference is docs/models.md; the map of engines is
//! docs/ARCHITECTURE.md.
//!
//! ## A tour by task
//! | task | where |
//! |---|---|
//! | load a model file or text | [`Model::from_file`], [`Model::parse`] |
//! | its states, parameters, covariates, outputs, invariants | [`Model`] accessors |
//! | solve it with diffsol (every method, sensitivities, adjoint) | [`ModelSystem`] (a [`System`](insilico_solvers::System)) |
//! | the expression graph and its derivatives | [`expr::Graph`], [`Derivatives`] |
//! | evaluate any set of roots | [`tape::Program`] |
//! | the fast DOPRI5 adjoint of `fit` (reverse sweep of the rhs program) | [`ModelSystem::fast`] |
//! | run it on the batched CPU integrators (and their CUDA twins) | [`LaneModel`] (a [`BatchModel`](insilico_kernels::BatchModel)) |
//!
//! ## Example
//! ```
//! use insilico_model::{Model, ModelSystem};
//! use insilico_solvers::{solve, Dose, Method, Options, Problem, Schedule, System};
//! let model = Model::parse(r#"
//!     parameters: ka = 1.2, CL = 5, V = 30
//!     states: depot, central
//!     flux depot -> central = ka * depot
//!     flux central -> out = CL / V * central
//!     output: cp = central / V
//! "#, "one-cmt.model")?;
//! let sys = ModelSystem::new(&model, &[])?;
//! let p = model.default_params(0);
//! let prob = Problem::new(&sys, p).with_schedule(Schedule::new().dose(Dose::bolus(0.0, 0, 100.0))).observe(0, &[1.0, 4.0]);
//! let sol = solve(&prob, Method::Bdf, &Options::default()).unwrap();
//! assert!(sol.outputs[0] > sol.outputs[1]);
//! # Ok::<(), insilico_model::ModelError>(())
//! ```

#![warn(missing_docs)]

pub mod ast;
mod cuda;
pub mod error;
pub mod expr;
mod fast;
mod jit;
pub mod lanes;
mod lower;
pub mod model;
pub mod parser;
pub mod subject;
pub mod system;
pub mod tape;

pub use ast::DoseAttr;
pub use error::{ModelError, Span};
pub use lanes::{batched_engine_report, Backend, BatchedReport, LaneModel};
pub use model::{Covariate, Derivatives, Model, Network, Param, ParamKind};
pub use system::{Compiled, ModelSystem};
