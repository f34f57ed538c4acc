//! The checkpoint capability: a worker's `capture` calls and the host's own
//! checkpoints at the end of a step go through [`Checkpoints`], so both
//! fill the built-in types ([`snapshot`]) and write records the same way.

pub mod snapshot;

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::time::Instant;

use crate::capabilities::subprocess::Subprocesses;
use crate::checkpoints::{CheckpointError as StoreError, CheckpointManager, MAX_SUMMARY_BYTES};
use crate::contracts::{CheckpointRecord, CheckpointSource, CheckpointType, EventLevel, HostEvent};
use crate::logs::LogSession;

/// Why a checkpoint was not captured.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CaptureError {
    #[error("checkpoints are disabled for this step")]
    Disabled,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    /// The step's deadline (plus its grace) came before the snapshot.
    #[error("cut short by the step's deadline")]
    CutShort,
}

/// How a capture is paid for out of the step's disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Refused when it does not fit (a worker's capture).
    Charge,
    /// Counted even past the budget (the host's own records at the end).
    Record,
}

/// A built-in checkpoint's payload as the host fills it.
pub struct Snapshot {
    pub summary: String,
    pub payload: Vec<u8>,
    pub details: Value,
}

/// The checkpoint capability of one step.
pub struct Checkpoints {
    logs: Arc<LogSession>,
    manager: Arc<Mutex<CheckpointManager>>,
    /// Lines of each stream in a `log-tail` checkpoint.
    log_tail_lines: usize,
}

impl Checkpoints {
    pub fn new(
        logs: Arc<LogSession>,
        manager: Arc<Mutex<CheckpointManager>>,
        log_tail_lines: usize,
    ) -> Self {
        Checkpoints {
            logs,
            manager,
            log_tail_lines,
        }
    }

    /// A worker's capture: a built-in type without a payload is filled by
    /// the host (and is then the host's record); anything else is stored as
    /// the worker gave it. Returns the record's sequence number.
    pub async fn capture(
        &self,
        subprocesses: &mut Subprocesses,
        checkpoint_type: &str,
        summary: &str,
        payload: Option<Vec<u8>>,
    ) -> Result<u32, CaptureError> {
        let checkpoint_type = CheckpointType::parse(checkpoint_type)
            .map_err(|e| CaptureError::Invalid(e.to_string()))?;
        let host_fills = payload.is_none()
            && matches!(
                checkpoint_type,
                CheckpointType::LogTail | CheckpointType::GitDiff
            );
        let (source, payload, details) = if host_fills {
            let deadline = subprocesses.deadline_host();
            let filled = self
                .snapshot(&checkpoint_type, subprocesses, deadline)
                .await?;
            (
                CheckpointSource::Host,
                Some(filled.payload),
                Some(filled.details),
            )
        } else {
            (CheckpointSource::Worker, payload, None)
        };
        let record = self.store(
            checkpoint_type,
            summary,
            payload.as_deref(),
            details,
            source,
            Budget::Charge,
        )?;
        Ok(record.seq)
    }

    /// The payload of a built-in type: a `git-diff` of the worktree against
    /// the planned base (run as the step's user by `deadline`) or a
    /// `log-tail` of its output. Other types have none.
    pub async fn snapshot(
        &self,
        checkpoint_type: &CheckpointType,
        subprocesses: &mut Subprocesses,
        deadline: Instant,
    ) -> Result<Snapshot, CaptureError> {
        match checkpoint_type {
            CheckpointType::LogTail => Ok(self.log_tail()),
            CheckpointType::GitDiff => self.git_diff(subprocesses, deadline).await,
            other => Err(CaptureError::Invalid(format!(
                "the host fills no `{other}` checkpoint"
            ))),
        }
    }

    /// The last lines of the step's stdout and stderr.
    pub fn log_tail(&self) -> Snapshot {
        let lines = self.log_tail_lines;
        let (payload, details) = snapshot::log_tail(&self.logs, lines);
        Snapshot {
            summary: format!("last {lines} lines of stdout and stderr"),
            payload,
            details,
        }
    }

    /// The worktree's changes against the planned base, staged into a
    /// temporary index by git run as the step's user, by `deadline`.
    pub async fn git_diff(
        &self,
        subprocesses: &mut Subprocesses,
        deadline: Instant,
    ) -> Result<Snapshot, CaptureError> {
        let plan = self.git_diff_plan().ok_or_else(|| {
            CaptureError::Invalid(
                "no git-diff snapshot is planned for this step (checkpoints disabled, or the worktree is not a git repository)".into(),
            )
        })?;
        let diff = snapshot::git_diff(subprocesses, &plan, deadline)
            .await
            .map_err(|e| match e {
                snapshot::SnapshotError::CutShort => CaptureError::CutShort,
                e => CaptureError::Io(e.to_string()),
            })?;
        Ok(Snapshot {
            summary: diff.summary,
            payload: diff.patch,
            details: diff.details,
        })
    }

    /// Whether a `git-diff` snapshot is planned for this step.
    pub fn git_diff_plan(&self) -> Option<crate::contracts::GitDiffSnapshotPlan> {
        self.manager().git_diff_plan().cloned()
    }

    /// Pay for, write and announce one record: the only place a step's
    /// checkpoint records are written.
    pub fn store(
        &self,
        checkpoint_type: CheckpointType,
        summary: &str,
        payload: Option<&[u8]>,
        details: Option<Value>,
        source: CheckpointSource,
        budget: Budget,
    ) -> Result<CheckpointRecord, CaptureError> {
        let details_size = details
            .as_ref()
            .map_or(0, |d| serde_json::to_vec(d).map_or(0, |v| v.len()));
        let size =
            payload.map_or(0, <[u8]>::len) + summary.len().min(MAX_SUMMARY_BYTES) + details_size;
        match budget {
            Budget::Charge => self
                .logs
                .budget()
                .charge(size as u64)
                .map_err(|e| CaptureError::Io(e.to_string()))?,
            Budget::Record => self.logs.budget().record(size as u64),
        }
        let captured =
            self.manager()
                .capture_with_details(checkpoint_type, summary, payload, details, source);
        match captured {
            Ok(record) => {
                self.logs.host_info(
                    format!(
                        "checkpoint {} ({}): {}",
                        record.seq, record.checkpoint_type, record.summary
                    ),
                    HostEvent::CheckpointCaptured {
                        seq: record.seq,
                        checkpoint_type: record.checkpoint_type.clone(),
                        path: record.path.clone(),
                        source: record.source,
                    },
                );
                Ok(record)
            }
            Err(StoreError::Disabled) => Err(CaptureError::Disabled),
            Err(StoreError::Invalid(why)) => Err(CaptureError::Invalid(why)),
            Err(e @ StoreError::Io { .. }) => {
                let failed = HostEvent::CheckpointFailed {
                    checkpoint_type: None,
                };
                self.logs.host(EventLevel::Error, e.to_string(), failed);
                Err(CaptureError::Io(e.to_string()))
            }
        }
    }

    fn manager(&self) -> std::sync::MutexGuard<'_, CheckpointManager> {
        self.manager.lock().unwrap_or_else(|p| p.into_inner())
    }
}
