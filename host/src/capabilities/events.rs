//! The `events` host interface: worker lifecycle events and artifacts.
//! Artifacts are stored under the run's `artifacts/` directory.

use std::path::Path;

use crate::contracts::{EventLevel, EventSource, StepArtifact, StepArtifactKind};
use crate::fsutil::{display, write_atomic};
use crate::sandbox::bindings::baa::worker::events::{ArtifactError, Host, Level};
use crate::sandbox::state::StepState;

/// Longest event name or message a worker may write; longer ones are cut.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Largest `data-json` a worker may attach to an event.
const MAX_DATA_BYTES: usize = 64 * 1024;
/// Largest artifact a worker may store.
pub const MAX_ARTIFACT_BYTES: usize = 32 * 1024 * 1024;

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

/// Whether `name` is a valid artifact name: a file name of letters, digits,
/// `.`, `-` and `_`, not starting with `.`.
fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl Host for StepState {
    async fn emit(
        &mut self,
        level: Level,
        event: String,
        message: String,
        data_json: Option<String>,
    ) -> wasmtime::Result<()> {
        crate::fault::host_panic(&event);
        let level = match level {
            Level::Debug => EventLevel::Debug,
            Level::Info => EventLevel::Info,
            Level::Warn => EventLevel::Warn,
            Level::Error => EventLevel::Error,
        };
        let data = data_json.map(|json| {
            if json.len() > MAX_DATA_BYTES {
                serde_json::json!({ "invalid": format!("data-json of {} bytes exceeds {MAX_DATA_BYTES}", json.len()) })
            } else {
                serde_json::from_str(&json)
                    .unwrap_or_else(|e| serde_json::json!({ "invalid": format!("data-json is not JSON: {e}") }))
            }
        });
        self.host.logs.event(
            EventSource::Worker,
            level,
            &cut(&event, 128),
            cut(&message, MAX_MESSAGE_BYTES),
            data,
        );
        Ok(())
    }

    async fn declare_artifact(
        &mut self,
        name: String,
        description: String,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<String, ArtifactError>> {
        if !valid_artifact_name(&name) {
            return Ok(Err(ArtifactError::Invalid(format!(
                "artifact name `{}` must be a file name of letters, digits, `.`, `-` and `_`",
                cut(&name, 128)
            ))));
        }
        if contents.len() > MAX_ARTIFACT_BYTES {
            return Ok(Err(ArtifactError::Invalid(format!(
                "artifact `{name}` is {} bytes; the limit is {MAX_ARTIFACT_BYTES}",
                contents.len()
            ))));
        }
        if self.host.artifacts.iter().any(|a| a.name == name) {
            return Ok(Err(ArtifactError::Invalid(format!(
                "artifact `{name}` was already declared in this step"
            ))));
        }
        let path = Path::new(&self.host.artifacts_dir).join(&name);
        if let Err(e) = write_atomic(&path, &contents) {
            return Ok(Err(ArtifactError::Io(format!("{}: {e}", path.display()))));
        }
        let artifact = StepArtifact {
            name: name.clone(),
            kind: StepArtifactKind::Artifact,
            path: display(&path),
            description: cut(&description, 1024),
        };
        self.host.logs.event(
            EventSource::Host,
            EventLevel::Info,
            "artifact.declared",
            format!("stored artifact `{name}` ({} bytes)", contents.len()),
            Some(
                serde_json::json!({ "name": name, "path": artifact.path, "bytes": contents.len() }),
            ),
        );
        self.host.artifacts.push(artifact.clone());
        Ok(Ok(artifact.path))
    }
}
