//! The one vocabulary of the `status` column that every command writes for
//! a trajectory or subject that may fail: `ok`, or the cause.
//!
//! | status | cause | what to change |
//! |---|---|---|
//! | `ok` | reached the horizon, every output finite | |
//! | `max_steps` | the step limit was hit | the config key `max_steps`, or `rtol`/`atol` |
//! | `step_too_small` | the step size underflowed (stiffness, a singularity) | the method or stepper, the parameters |
//! | `non_finite` | a state or an output became NaN or infinite | the parameters, `output_scale` |
//! | `singular` | a singular matrix (Rosenbrock stage, steady state) | the parameters |
//! | `invalid_dose` | a dose that cannot be given (negative amount, NaN lag, ...) | the dataset or the dose mapping |
//! | `steady_state` | the steady state could not be computed | the parameters, or ADDL instead of SS |
//! | `solver_error` | any other solver failure | |
//!
//! `insilico sweep` writes it per trajectory (with null outputs), `insilico
//! simulate` per observation row with `allow_failures = true` (with an empty
//! PRED); without `allow_failures` a failure fails the command.

/// The status of a successful trajectory.
pub const OK: &str = "ok";

/// The status of a failed solve of the solvers crate.
pub fn of_solver_error(e: &crate::solvers::Error) -> &'static str {
    use crate::solvers::Error as E;
    match e {
        E::MaxSteps { .. } => "max_steps",
        E::StepSizeTooSmall { .. } => "step_too_small",
        E::NonFinite { .. } => "non_finite",
        E::InvalidDose { .. } => "invalid_dose",
        E::SteadyState { .. } => "steady_state",
        _ => "solver_error",
    }
}

/// The status of a batched-integrator status code
/// ([`crate::kernels::Status`] as `i32`).
pub fn of_kernel_code(code: i32) -> &'static str {
    match code {
        0 => OK,
        1 => "max_steps",
        2 => "step_too_small",
        3 => "non_finite",
        _ => "singular",
    }
}
