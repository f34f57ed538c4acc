//! The `checkpoint` host interface: a worker captures numbered checkpoints
//! through the step's [`CheckpointManager`](crate::checkpoints::CheckpointManager).

use serde_json::json;

use crate::checkpoints::CheckpointError as StoreError;
use crate::contracts::{CheckpointType, EventLevel, EventSource};
use crate::sandbox::bindings::baa::worker::checkpoint::{CheckpointError, Host};
use crate::sandbox::state::StepState;

/// Lines of each stream a `log-tail` checkpoint holds when the step's
/// configuration does not say.
pub const DEFAULT_LOG_TAIL_LINES: usize = 50;

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
        // The host fills a `log-tail` checkpoint that carries no payload.
        let payload = match (&checkpoint_type, payload) {
            (CheckpointType::LogTail, None) => {
                let (stdout, stderr) = self.host.logs.tail_lines(DEFAULT_LOG_TAIL_LINES);
                Some(serde_json::to_vec_pretty(
                    &json!({ "stdout": stdout, "stderr": stderr }),
                )?)
            }
            (_, payload) => payload,
        };
        let captured = self
            .host
            .checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capture(checkpoint_type, &summary, payload.as_deref());
        Ok(match captured {
            Ok(record) => {
                self.host.logs.event(
                    EventSource::Worker,
                    EventLevel::Info,
                    "checkpoint.captured",
                    format!("checkpoint {} ({}): {}", record.seq, record.checkpoint_type, record.summary),
                    Some(json!({ "seq": record.seq, "type": record.checkpoint_type, "path": record.path })),
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
