//! Why a step's subprocesses could not be confined: the variant names the
//! part that failed (the embedded launcher, the kernel probe, the dedicated
//! user, a lent tree, the user namespace, the self-test); the text is the message.

use std::path::PathBuf;

/// A part of the OS confinement that failed, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfinementError {
    /// The embedded launcher could not be sealed into memory or run.
    #[error("{0}")]
    Launcher(String),
    /// The launcher's report of what the kernel enforces is not valid.
    #[error("{0}")]
    Probe(String),
    /// `path`'s file system takes no idmapped view, or could not be asked.
    #[error("{message}")]
    View { path: PathBuf, message: String },
    /// The dedicated user: its state directory, lease or home, or a setting
    /// that needs a host running as root.
    #[error("{0}")]
    User(String),
    /// The processes of dedicated user `uid` could not be killed.
    #[error("{message}")]
    Sweep { uid: u32, message: String },
    /// `path` could not be lent to the step's user (or given what appeared
    /// in it since).
    #[error("{message}")]
    Lend { path: PathBuf, message: String },
    /// The step's user cannot reach `path`.
    #[error("{message}")]
    Unreachable { path: PathBuf, message: String },
    /// The step's user namespace could not be made.
    #[error("{0}")]
    Namespace(String),
    /// The self-test could not run, or its report is not valid.
    #[error("{0}")]
    SelfTest(String),
}
