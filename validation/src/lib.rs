//! # insilico-validation
//!
//! The reference problems of `shared/benchmarks/PROBLEMS.md` as code, with their
//! analytic references, so that tests, benchmarks and examples all use exactly the
//! same definitions.
//!
//! * [`p1`] — two-compartment oral PK regimen sweep (10,000 solves), with the
//!   closed-form reference and the summary metrics (Cmax, AUC, Ctrough).

pub mod p1;
