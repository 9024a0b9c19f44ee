//! Errors of population estimation.

/// What can go wrong when setting up or running a population fit. Each
/// variant names what is wrong so that a config author can fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EstimationError {
    /// Ω (given or implied by a Cholesky factor) is not symmetric positive definite.
    #[error("Ω is not positive definite: {reason}")]
    OmegaNotPositiveDefinite {
        /// Why (the failing pivot, an asymmetric entry, a non-positive variance, ...).
        reason: String,
    },
    /// A random effect targets a parameter the model does not have.
    #[error("random effect `{eta}` is on parameter `{param}`, which model {model} does not have (its parameters: {available})")]
    UnknownParameter {
        /// The random effect's name.
        eta: String,
        /// The parameter asked for.
        param: String,
        /// The model's name.
        model: String,
        /// The model's scalar parameters, comma-separated.
        available: String,
    },
    /// A typical value is given for (or needed by) a parameter the model lacks or that has no value.
    #[error("parameter `{param}` of model {model}: {reason}")]
    Parameter {
        /// The parameter.
        param: String,
        /// The model's name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A subject has no usable observation (every EVID 0 record missing or MDV = 1).
    #[error(
        "subject `{subject}` of {file} has no observations (EVID 0 with a DV and MDV 0); remove it or add its data"
    )]
    NoObservations {
        /// The dataset.
        file: String,
        /// The subject's ID.
        subject: String,
    },
    /// The dataset has no subject.
    #[error("dataset {file} has no subjects")]
    EmptyDataset {
        /// The dataset.
        file: String,
    },
    /// An observation the error model cannot use (a non-positive DV under the exponential error model, say).
    #[error("subject `{subject}`, line {line} of {file}: {reason}")]
    Observation {
        /// The dataset.
        file: String,
        /// The subject's ID.
        subject: String,
        /// The record's line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The specification itself is inconsistent (sizes, values, names).
    #[error("invalid estimation spec: {0}")]
    Spec(String),
    /// The model could not be bound to a subject (covariates, engine).
    #[error(transparent)]
    Model(#[from] insilico_model::ModelError),
    /// The dataset could not be turned into a schedule.
    #[error(transparent)]
    Data(#[from] insilico_solvers::DataError),
    /// The ODE solve of a subject failed at the starting values.
    #[error("subject `{subject}`: {error}")]
    Solve {
        /// The subject's ID.
        subject: String,
        /// The solver's error.
        error: insilico_solvers::Error,
    },
    /// A subject's model could not be solved (or gave non-finite values) at the parameters asked for.
    #[error("subject `{subject}`: the model could not be solved: {reason}")]
    Prediction {
        /// The subject's ID.
        subject: String,
        /// The solver's message and the random effects.
        reason: String,
    },
    /// The objective is not finite at the initial estimates.
    #[error("the objective is not finite at the initial estimates ({reason}); check the initial θ, Ω and σ")]
    InitialObjective {
        /// Which subject or term.
        reason: String,
    },
    /// The covariance step failed: the Hessian of the objective is singular or not positive definite.
    #[error(
        "covariance step failed: the Hessian of −2LL is {reason}; the model may be unidentifiable from these data"
    )]
    Covariance {
        /// Singular, indefinite, ...
        reason: String,
    },
    /// A state filter cannot run: a schedule or measurement it cannot use, a degenerate update, ...
    #[error("filter: {0}")]
    Filter(String),
    /// Dose-finding or a threshold search cannot run: a bad target, time, bracket or grid.
    #[error("dosing: {0}")]
    Dosing(String),
    /// A dose-finding or threshold target cannot be reached in the range searched.
    #[error("{what}: the target {target} cannot be reached; the best reachable value is {best} (at {best_at})")]
    Unreachable {
        /// What was searched (the output, the range).
        what: String,
        /// The target value.
        target: f64,
        /// The reachable value closest to the target.
        best: f64,
        /// Where it is reached (the amount or the time).
        best_at: f64,
    },
}
