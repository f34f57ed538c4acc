//! The `checkpoint` host interface: a worker captures numbered checkpoints
//! through the step's [`CheckpointManager`](crate::checkpoints::CheckpointManager).

use serde_json::json;

use crate::checkpoints::snapshot;
use crate::checkpoints::{CheckpointError as StoreError, MAX_SUMMARY_BYTES};
use crate::contracts::{CheckpointSource, CheckpointType, EventLevel, EventSource};
use crate::sandbox::bindings::baa::worker::checkpoint::{CheckpointError, Host};
use crate::sandbox::state::StepState;

impl Host for StepState {
    async fn capture(
        &mut self,
        checkpoint_type: String,
        summary: String,
        payload: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<u32, CheckpointError>> {
        let checkpoint_type = match CheckpointType::parse(&checkpoint_type) {
            Ok(t) => t,
            Err(why) => return Ok(Err(CheckpointError::Invalid(why))),
        };
        // The host fills the built-in types when the worker gives no payload:
        // then the payload is the host's, and so is the record.
        let source = match (&checkpoint_type, &payload) {
            (CheckpointType::LogTail | CheckpointType::GitDiff, None) => CheckpointSource::Host,
            _ => CheckpointSource::Worker,
        };
        let mut details = None;
        let payload = match (&checkpoint_type, payload) {
            (CheckpointType::LogTail, None) => {
                let (tail, tail_details) =
                    snapshot::log_tail(&self.host.logs, self.host.log_tail_lines);
                details = Some(tail_details);
                Some(tail)
            }
            (CheckpointType::GitDiff, None) => {
                let plan = self
                    .host
                    .checkpoints
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .git_diff_plan()
                    .cloned();
                let Some(plan) = plan else {
                    return Ok(Err(CheckpointError::Invalid(
                        "no git-diff snapshot is planned for this step (checkpoints disabled, or the worktree is not a git repository)".into(),
                    )));
                };
                let deadline = self.host.subprocesses.deadline_host();
                match snapshot::git_diff(&mut self.host.subprocesses, &plan, deadline).await {
                    Ok(diff) => {
                        details = Some(diff.details);
                        Some(diff.patch)
                    }
                    Err(why) => return Ok(Err(CheckpointError::Io(why.to_string()))),
                }
            }
            (_, payload) => payload,
        };
        let details_size = details
            .as_ref()
            .map_or(0, |d| serde_json::to_vec(d).map_or(0, |v| v.len()));
        let size = payload.as_ref().map_or(0, Vec::len)
            + summary.len().min(MAX_SUMMARY_BYTES)
            + details_size;
        if let Err(e) = self.host.logs.budget().charge(size as u64) {
            return Ok(Err(CheckpointError::Io(e.to_string())));
        }
        let captured = self
            .host
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capture_with_details(
                checkpoint_type,
                &summary,
                payload.as_deref(),
                details,
                source,
            );
        Ok(match captured {
            Ok(record) => {
                self.host.logs.event(
                    EventSource::Host,
                    EventLevel::Info,
                    "checkpoint.captured",
                    format!("checkpoint {} ({}): {}", record.seq, record.checkpoint_type, record.summary),
                    Some(json!({ "seq": record.seq, "type": record.checkpoint_type, "path": record.path, "source": record.source })),
                );
                Ok(record.seq)
            }
            Err(StoreError::Disabled) => Err(CheckpointError::Disabled),
            Err(StoreError::Invalid(why)) => Err(CheckpointError::Invalid(why)),
            Err(e @ StoreError::Io { .. }) => {
                self.host.logs.event(
                    EventSource::Host,
                    EventLevel::Error,
                    "checkpoint.failed",
                    e.to_string(),
                    None,
                );
                Err(CheckpointError::Io(e.to_string()))
            }
        })
    }
}
