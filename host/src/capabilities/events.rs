//! The `events` host interface: worker lifecycle events and artifacts.
//! Artifacts are stored under the run's `artifacts/` directory.

use std::path::Path;

use crate::capabilities::bounds::{self, cut, cut_owned};
use crate::contracts::{EventLevel, EventSource, StepArtifact, StepArtifactKind};
use crate::fsutil::{display, write_atomic};
use crate::sandbox::bindings::baa::worker::events::{ArtifactError, Host, Level};
use crate::sandbox::state::StepState;

/// Largest artifact a worker may store.
pub const MAX_ARTIFACT_BYTES: usize = 32 * 1024 * 1024;

/// Event namespaces only the host writes in. A worker's event named in one
/// of them is recorded as `worker.<name>`: nothing a worker emits can pass
/// for a host record (`subprocess.started`, `step.finished`, …).
const HOST_NAMESPACES: &[&str] = &[
    "artifact.",
    "checkpoint.",
    "plugin.",
    "run.",
    "sandbox.",
    "step.",
    "subprocess.",
    "host.",
];

/// The name a worker's event is recorded under.
pub fn worker_event_name(event: &str) -> String {
    let name = cut(event, bounds::EVENT_NAME);
    let lower = name.to_ascii_lowercase();
    if HOST_NAMESPACES.iter().any(|ns| lower.starts_with(ns)) {
        format!("worker.{name}")
    } else {
        name
    }
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
            if json.len() > bounds::EVENT_DATA {
                serde_json::json!({ "invalid": format!("data-json of {} bytes exceeds {}", json.len(), bounds::EVENT_DATA) })
            } else {
                serde_json::from_str(&json)
                    .unwrap_or_else(|e| serde_json::json!({ "invalid": format!("data-json is not JSON: {e}") }))
            }
        });
        self.host.logs.event(
            EventSource::Worker,
            level,
            &worker_event_name(&event),
            cut_owned(message, bounds::EVENT_MESSAGE),
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
        if let Err(e) = self.host.logs.budget().charge(contents.len() as u64) {
            return Ok(Err(ArtifactError::Io(format!(
                "artifact `{name}` not stored: {e}"
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
            description: cut_owned(description, bounds::ARTIFACT_DESCRIPTION),
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
