//! What a worker records in the run: lifecycle events and progress,
//! artifacts, checkpoints. All of it lands in the run directory and the
//! step result; none of it is visible to other steps.

use serde::Serialize;

use crate::bindings::baa::worker::{checkpoint, events};
use crate::{ArtifactError, CheckpointError, Level};

/// Append an event to the run's lifecycle log.
pub fn emit(level: Level, event: &str, message: &str, data_json: Option<&str>) {
    events::emit(level, event, message, data_json);
}

/// Report progress: a `worker.progress` event whose data is `data` as JSON.
pub fn progress(message: &str, data: &impl Serialize) {
    match serde_json::to_string(data) {
        Ok(json) => emit(Level::Info, "worker.progress", message, Some(&json)),
        Err(_) => emit(Level::Info, "worker.progress", message, None),
    }
}

/// Store `contents` as an artifact of this run (`artifacts/<name>` of the run
/// directory, listed in the step result); returns its path. `name` is a file
/// name of letters, digits, `.`, `-` and `_` (not starting with `.`),
/// declared once per step.
pub fn declare_artifact(
    name: &str,
    description: &str,
    contents: &[u8],
) -> Result<String, ArtifactError> {
    events::declare_artifact(name, description, contents)
}

/// Capture a checkpoint; returns its sequence number.
/// `checkpoint_type` is `summary`, `git-diff`, `log-tail` (the host fills
/// these payloads) or a worker-defined name carrying `payload`. A step whose
/// checkpoints are off (`!step.checkpoints_enabled`) gets
/// [`CheckpointError::Disabled`]. A later attempt resumed from it receives
/// it as [`Resume`](crate::Resume), payload included.
pub fn capture_checkpoint(
    checkpoint_type: &str,
    summary: &str,
    payload: Option<&[u8]>,
) -> Result<u32, CheckpointError> {
    checkpoint::capture(checkpoint_type, summary, payload)
}
