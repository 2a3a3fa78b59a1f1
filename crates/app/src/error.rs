//! The one error type of the assembly: what failed, in words a user can act
//! on, with the underlying error as its source.

use std::path::PathBuf;

/// An assembly or start-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Configuration could not be resolved.
    #[error("invalid configuration")]
    Config(#[from] esb_config::ConfigError),
    /// The template does not load (the diagnostics are in the message).
    #[error("invalid template {path}: {message}")]
    Template {
        /// The template file.
        path: PathBuf,
        /// The located diagnostics.
        message: String,
    },
    /// Another `esb up` serves this data directory.
    #[error(
        "another esb up ({}) is running on data dir {data_dir}; stop it with `esb down --data-dir {data_dir}` or pick another --data-dir",
        pid.map_or_else(|| "still starting".to_string(), |p| format!("pid {p}"))
    )]
    AlreadyRunning {
        /// Its process id (`None` while it has not recorded itself yet).
        pid: Option<u32>,
        /// The data directory.
        data_dir: PathBuf,
    },
    /// A step failed; `what` says which, the source why.
    #[error("{what}")]
    Failed {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request was refused or malformed (no underlying error).
    #[error("{0}")]
    Refused(String),
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    /// Wraps the error in [`AppError::Failed`].
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AppError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, AppError> {
        self.map_err(|e| AppError::Failed {
            what: what(),
            source: Box::new(e),
        })
    }
}
