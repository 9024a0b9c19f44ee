//! # insilico-solvers
//!
//! The core solve layer of Insilico: the [`System`] trait (a right-hand side with
//! exact derivatives), [`Schedule`]s of interventions in the NONMEM event grammar,
//! segment-by-segment solves over diffsol's methods, gradients by forward
//! sensitivities and by adjoint, and NONMEM-layout datasets.

pub mod data;
pub mod schedule;
pub mod system;

pub use data::{ColumnOrValue, DataError, Dataset, DoseMapping, ReadOptions, Record, Subject};
pub use schedule::{Attr, Dose, DoseKind, Event, Exposure, Schedule, SteadyState};
pub use system::{check_derivatives, DerivativeReport, System};

mod driver;
mod events;
pub mod gradient;
mod integrator;
mod linsolve;
pub mod solve;

pub use gradient::{gradient, sensitivities, Gradient, GradientMethod, Loss, Sensitivities};
pub use solve::{solve, Error, Method, Observation as ObservationPoint, Options, Problem, Solution, Stats};
