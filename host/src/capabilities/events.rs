//! The events capability: a worker's lifecycle events (kept out of the
//! host's namespaces) and its artifacts, stored under the run's
//! `artifacts/` directory and listed in the step's result.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bounds::{self, cut, cut_owned};
use crate::contracts::{EventLevel, EventSource, HostEvent, StepArtifact, StepArtifactKind};
use crate::fsutil::{display, write_atomic};
use crate::logs::LogSession;

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

/// Why an artifact was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    /// The name or the contents are not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The host could not store it.
    #[error("{0}")]
    Io(String),
}

/// The events capability of one step.
pub struct Events {
    logs: Arc<LogSession>,
    /// Where artifacts go; `None` outside a step (a `describe`).
    artifacts_dir: Option<PathBuf>,
    artifacts: Vec<StepArtifact>,
}

impl Events {
    pub fn new(logs: Arc<LogSession>, artifacts_dir: Option<PathBuf>) -> Self {
        Events {
            logs,
            artifacts_dir,
            artifacts: Vec::new(),
        }
    }

    /// The artifacts declared so far.
    pub fn artifacts(&self) -> &[StepArtifact] {
        &self.artifacts
    }

    /// Record a worker's event: its name kept out of the host's namespaces,
    /// its message and data cut to their caps.
    pub fn emit(&self, level: EventLevel, event: &str, message: String, data_json: Option<String>) {
        crate::fault::host_panic(event);
        let data = data_json.map(|json| {
            if json.len() > bounds::EVENT_DATA {
                serde_json::json!({ "invalid": format!("data-json of {} bytes exceeds {}", json.len(), bounds::EVENT_DATA) })
            } else {
                serde_json::from_str(&json)
                    .unwrap_or_else(|e| serde_json::json!({ "invalid": format!("data-json is not JSON: {e}") }))
            }
        });
        self.logs.event(
            EventSource::Worker,
            level,
            &worker_event_name(event),
            cut_owned(message, bounds::EVENT_MESSAGE),
            data,
        );
    }

    /// Store `contents` as artifact `name`; returns its path.
    pub fn declare_artifact(
        &mut self,
        name: String,
        description: String,
        contents: Vec<u8>,
    ) -> Result<String, ArtifactError> {
        if !valid_artifact_name(&name) {
            return Err(ArtifactError::Invalid(format!(
                "artifact name `{}` must be a file name of letters, digits, `.`, `-` and `_`",
                cut(&name, 128)
            )));
        }
        let Some(dir) = &self.artifacts_dir else {
            return Err(ArtifactError::Io(format!(
                "artifact `{name}` not stored: there is no step to store it in"
            )));
        };
        if contents.len() > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::Invalid(format!(
                "artifact `{name}` is {} bytes; the limit is {MAX_ARTIFACT_BYTES}",
                contents.len()
            )));
        }
        if self.artifacts.iter().any(|a| a.name == name) {
            return Err(ArtifactError::Invalid(format!(
                "artifact `{name}` was already declared in this step"
            )));
        }
        if let Err(e) = self.logs.budget().charge(contents.len() as u64) {
            return Err(ArtifactError::Io(format!(
                "artifact `{name}` not stored: {e}"
            )));
        }
        let path = Path::new(dir).join(&name);
        if let Err(e) = write_atomic(&path, &contents) {
            return Err(ArtifactError::Io(format!("{}: {e}", path.display())));
        }
        let artifact = StepArtifact {
            name: name.clone(),
            kind: StepArtifactKind::Artifact,
            path: display(&path),
            description: cut_owned(description, bounds::ARTIFACT_DESCRIPTION),
        };
        self.logs.host_info(
            format!("stored artifact `{name}` ({} bytes)", contents.len()),
            HostEvent::ArtifactDeclared {
                name,
                path: artifact.path.clone(),
                bytes: contents.len() as u64,
            },
        );
        let path = artifact.path.clone();
        self.artifacts.push(artifact);
        Ok(path)
    }
}
