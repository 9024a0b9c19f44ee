//! The error type of the root crate's library code.

use std::path::PathBuf;

use crate::mechanistic::PkError;
use crate::solvers::data::DataError;

/// Errors of [`crate::simulate`] and [`crate::p1`]. Every message names the
/// file it concerns (config, dataset or output) and, where it can, the key,
/// line or column. Each message is complete: the underlying error's text is
/// part of it (none is chained as a `source`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is malformed or names something that does not exist.
    #[error("{file}: {reason}")]
    Config {
        /// Config file name as given.
        file: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The dataset could not be read or mapped onto the model (the message
    /// names the dataset file, line and column).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The solver failed for one subject of a dataset.
    #[error("{file}: subject `{subject}`: {error}")]
    Solve {
        /// Dataset file name.
        file: String,
        /// The subject's ID.
        subject: String,
        /// The solver's error.
        error: crate::solvers::Error,
    },
    /// A prediction came out NaN or infinite: never written as a number.
    #[error("{file}: subject `{subject}`: the prediction at time {time} is {value}, not a finite number; {hint}")]
    NonFinite {
        /// Dataset file name.
        file: String,
        /// The subject's ID.
        subject: String,
        /// Observation time.
        time: f64,
        /// The non-finite value.
        value: f64,
        /// What to check.
        hint: String,
    },
    /// A PK model or closed form refused its input.
    #[error("{context}: {error}")]
    Model {
        /// What was being done (config file, benchmark case, ...).
        context: String,
        /// The model's error.
        error: PkError,
    },
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// An output file could not be written (atomically: nothing partial is left).
    #[error(transparent)]
    Write(#[from] crate::atomic::WriteError),
    /// A benchmark failed (bad arguments, a solve that did not finish, ...).
    #[error("{0}")]
    Bench(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }
}
