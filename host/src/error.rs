//! The library's error type. Expected step failures are not errors: they are
//! outcomes in the `StepExecutionResult`. Errors are bad input (the request,
//! the config, a plugin file) and host failures.

use crate::config::ConfigError;
use crate::plugins::PluginError;

/// What went wrong before or around a step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid request: `{field}`: {message}")]
    InvalidRequest { field: String, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The run directory or one of its files could not be written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another writer holds the run directory.
    #[error("{path} is held by another writer (another host, or a run still in progress); only one may write a run directory")]
    RunLocked { path: String },
    /// A checkpoint or another record is missing or corrupt.
    #[error(transparent)]
    Record(#[from] crate::fsutil::RecordError),
    /// The WebAssembly engine could not be set up.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The host itself failed (a bug): the step's task ended abnormally.
    #[error("host failure: {0}")]
    Host(String),
}

impl Error {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// How the wire protocols (`serve`, the cluster's answers) name this
    /// error: `invalid-request` (with the field), `invalid-input` or
    /// `host-error`.
    pub fn wire_kind(&self) -> (&'static str, Option<&str>) {
        match self {
            Error::InvalidRequest { field, .. } => ("invalid-request", Some(field.as_str())),
            e if e.is_invalid_input() => ("invalid-input", None),
            _ => ("host-error", None),
        }
    }

    /// Whether the caller's input (request, config, plugin) is at fault.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidRequest { .. } | Error::Config(_) | Error::Plugin(_)
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
