//! The step a worker is asked to run, as plain serde types (camelCase JSON,
//! the same names as the WIT record), converted from the generated bindings.

use serde::{Deserialize, Serialize};

use crate::bindings::baa::worker::types::{ResumeCheckpoint, StepRequest};
use crate::ExecuteError;

/// What the worker sees of a step request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub step_name: String,
    /// `planner`, `review`, `finalize`, or a worker kind name.
    pub step_kind: String,
    /// The worker kind this step runs on (the kind's own name).
    pub worker_kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The whole step's budget in milliseconds; the host enforces it.
    pub timeout_ms: u64,
    /// Set when this attempt resumes from an earlier checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
    /// Whether checkpoint capture is enabled for this step.
    pub checkpoints_enabled: bool,
}

/// A resumed attempt's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resume {
    /// Sequence number of the checkpoint (from 1).
    pub seq: u32,
    /// `summary`, `git-diff`, `log-tail` or a worker-defined type.
    pub checkpoint_type: String,
    /// The checkpoint's one-line summary.
    pub summary: String,
    /// The worker-defined payload stored with the checkpoint, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Vec<u8>>,
}

impl Step {
    /// The trimmed, non-empty `command`, or an `invalid-request` error
    /// saying that this kind needs one.
    pub fn required_command(&self) -> Result<&str, ExecuteError> {
        self.command
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ExecuteError::InvalidRequest(format!(
                    "`command` is required for the {} worker kind",
                    self.worker_kind
                ))
            })
    }
}

impl From<ResumeCheckpoint> for Resume {
    fn from(c: ResumeCheckpoint) -> Self {
        Resume {
            seq: c.seq,
            checkpoint_type: c.checkpoint_type,
            summary: c.summary,
            payload: c.payload,
        }
    }
}

impl From<StepRequest> for Step {
    fn from(r: StepRequest) -> Self {
        Step {
            task_id: r.task_id,
            step_id: r.step_id,
            run_id: r.run_id,
            attempt: r.attempt,
            step_name: r.step_name,
            step_kind: r.step_kind,
            worker_kind: r.worker_kind,
            prompt_summary: r.prompt_summary,
            command: r.command,
            timeout_ms: r.timeout_ms,
            resume: r.resume.map(Resume::from),
            checkpoints_enabled: r.checkpoints_enabled,
        }
    }
}
