//! The subprocess capability's own vocabulary: what a worker asks to run,
//! why the host refuses, and what a running process yields. The WIT
//! boundary (`crate::worker`) converts these to and from each world version.

/// A command a worker asks to run.
#[derive(Debug, Clone, Default)]
pub struct SpawnRequest {
    /// Program name or absolute path; it must be allowed by the policy.
    pub program: String,
    pub args: Vec<String>,
    /// Working directory relative to the worktree; `None` is its root.
    pub cwd: Option<String>,
    /// Extra environment; each name must be on the policy's allow-list.
    pub env: Vec<(String, String)>,
    /// Its own timeout, capped by the step's deadline.
    pub timeout_ms: Option<u64>,
    /// Bytes written to its stdin, which is then closed.
    pub stdin: Option<Vec<u8>>,
}

pub use crate::contracts::DenialReason;

/// A refused command: why, and what the operator could grant to allow it
/// (`None` when no grant can: the host never allows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenialReason,
    pub message: String,
    pub grant: Option<String>,
}

impl Denial {
    /// A refusal no grant lifts.
    pub fn never(reason: DenialReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
            grant: None,
        }
    }
}

/// Why a subprocess could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    /// The policy or a limit refused it (a bad cwd included).
    #[error("{}", .0.message)]
    Denied(Denial),
    /// The operating system could not start it.
    #[error("{0}")]
    Io(String),
}

/// How a subprocess ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when it exited normally.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Killed because its time (or the step's) ran out.
    pub timed_out: bool,
    /// Killed because it exceeded the output cap.
    pub output_limit_exceeded: bool,
}

/// One piece of what a running process produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The process is gone and both streams are drained.
    Exited(ExitInfo),
}
