//! Many hosts, one queue: steps submitted to NATS JetStream run on any
//! host serving their kind, each answered exactly once and fenced against
//! hosts that stall and come back. The worker side is written against
//! [`transport::Transport`]; [`nats`] implements it (feature `cluster`).

pub mod client;
mod expiry;
pub mod nats;
pub mod record;
mod replication;
pub mod topology;
pub mod transport;
mod turn;
pub mod worker;

pub use client::{Cluster, ClusterEvent, ClusterStep};
pub use record::{Answer, HostRun, Reply, ReplyError, RunEnd, StepRecord};
pub use topology::StepIdentity;
pub use worker::Worker;

/// What went wrong talking to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach the NATS server at {url}: {message} (start one with `nats-server -js`, or pass --nats URL)")]
    Connect { url: String, message: String },
    #[error("NATS: {doing}: {message}")]
    Nats {
        doing: &'static str,
        message: String,
    },
    #[error("{what} is not what this host writes: {message}")]
    Corrupt { what: String, message: String },
    /// This host's own files (a run directory's checkpoint, say).
    #[error("{0}")]
    Io(String),
    #[error("cluster settings: {0}")]
    Settings(String),
    /// No host could run the step: why, as the host said it.
    #[error("{}", .0.message)]
    Rejected(ReplyError),
    #[error(transparent)]
    Step(#[from] crate::Error),
}

impl ClusterError {
    /// Whether trying again may succeed (the server restarting, a
    /// connection cut); the rest will fail the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Nats { .. } | ClusterError::Connect { .. }
        )
    }

    /// The error's `kind` and the request field at fault, as the serve
    /// protocol and the answers carry them.
    pub fn wire_kind(&self) -> (&str, Option<&str>) {
        match self {
            ClusterError::Step(e) => e.wire_kind(),
            ClusterError::Rejected(e) => (e.kind.as_str(), e.field.as_deref()),
            ClusterError::Settings(_) => ("invalid-input", None),
            _ => ("host-error", None),
        }
    }

    /// Whether the caller's input is at fault (the request, the settings).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ClusterError::Rejected(e) => {
                matches!(e.kind.as_str(), "invalid-request" | "invalid-input")
            }
            ClusterError::Settings(_) => true,
            ClusterError::Step(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}
