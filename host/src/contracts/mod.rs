//! The conductor's step contract (`shared/reference/contracts.ts`) as Rust types.
//!
//! Every type serializes to the same camelCase JSON as its TypeScript twin. The
//! types the contract imports from the conductor's logging and checkpointing
//! packages are defined in [`logging`] and [`checkpointing`].

pub mod checkpointing;
pub mod events;
pub mod logging;
mod required;
pub mod schema;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use checkpointing::*;
pub use events::{Capabilities, DenialReason, HostEvent};
pub use logging::*;

/// Largest request body accepted; a larger one is refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Parse a step request from JSON. A body over [`MAX_REQUEST_BYTES`] is
/// refused unread; a malformed one is an error naming the field at fault
/// (`runtime.worktreePath`, `checkpoint.mode`, …). A body lacking required
/// fields names all of them, as dotted paths, the first as the error's field.
pub fn parse_request(bytes: &[u8]) -> Result<StepExecutionRequest, crate::Error> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(crate::Error::invalid(
            "(request)",
            format!(
                "the request is {} bytes; the limit is {MAX_REQUEST_BYTES}",
                bytes.len()
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let request: StepExecutionRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if let Some(missing) = required::missing_fields_error(bytes, &e) {
            return missing;
        }
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "(request)".to_string()
        } else {
            path
        };
        crate::Error::invalid(&field, e.inner().to_string())
    })?;
    de.end().map_err(|e| {
        crate::Error::invalid("(request)", format!("trailing data after the request: {e}"))
    })?;
    Ok(request)
}

/// Which kind of name a [`NameError`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    WorkerKind,
    StepKind,
    CheckpointType,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::WorkerKind => "worker kind name",
            NameKind::StepKind => "step kind",
            NameKind::CheckpointType => "checkpoint type",
        })
    }
}

/// A name that is not a valid worker kind, step kind or checkpoint type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a {kind}: {why}")]
pub struct NameError {
    pub kind: NameKind,
    /// The name as given, cut to [`NameError::MAX_NAME_BYTES`].
    pub name: String,
    /// What a valid name looks like.
    pub why: &'static str,
}

impl NameError {
    /// Bytes of the refused name kept in the error.
    pub const MAX_NAME_BYTES: usize = 64;

    fn new(kind: NameKind, name: &str, why: &'static str) -> Self {
        let max = Self::MAX_NAME_BYTES;
        let name = if name.len() <= max {
            name.to_string()
        } else {
            let mut end = max;
            while !name.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes cut)", &name[..end], name.len() - end)
        };
        NameError { kind, name, why }
    }
}

/// The worker kind a step runs on: one of the built-in kinds (`codex`,
/// `shell`, `git`) or the name of a third-party kind found in a plugins
/// directory. Names are lowercase ASCII letters, digits and `-`, starting with
/// a letter, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerKind(String);

impl WorkerKind {
    pub const CODEX: &'static str = "codex";
    pub const SHELL: &'static str = "shell";
    pub const GIT: &'static str = "git";

    /// Validate and wrap a kind name.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(WorkerKind(name.to_string()))
        } else {
            Err(NameError::new(
                NameKind::WorkerKind,
                name,
                "use lowercase letters, digits and `-`, starting with a letter (e.g. `shell`, `git`, `codex`)",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of the kinds shipped with the host.
    pub fn is_builtin(&self) -> bool {
        matches!(self.0.as_str(), Self::CODEX | Self::SHELL | Self::GIT)
    }
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WorkerKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkerKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        WorkerKind::new(&name).map_err(serde::de::Error::custom)
    }
}

/// The JSON Schema of a type serialized as a string matching `pattern`.
macro_rules! string_schema {
    ($ty:ty, $description:literal, $pattern:literal) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $description,
                    "type": "string",
                    "pattern": $pattern,
                })
            }
        }
    };
}
pub(crate) use string_schema;

string_schema!(
    WorkerKind,
    "A built-in worker kind (`codex`, `shell`, `git`) or a third-party kind's name.",
    "^[a-z][a-z0-9-]{0,63}$"
);

/// The role a step plays in the conductor's plan. `planner`, `review` and
/// `finalize` are roles that any worker kind can carry out (a `review` step
/// typically runs on `codex`); a step whose kind is a worker kind simply runs
/// that kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StepKind {
    Planner,
    Review,
    Finalize,
    Worker(WorkerKind),
}

impl StepKind {
    pub fn as_str(&self) -> &str {
        match self {
            StepKind::Planner => "planner",
            StepKind::Review => "review",
            StepKind::Finalize => "finalize",
            StepKind::Worker(kind) => kind.as_str(),
        }
    }

    pub fn parse(name: &str) -> Result<Self, NameError> {
        Ok(match name {
            "planner" => StepKind::Planner,
            "review" => StepKind::Review,
            "finalize" => StepKind::Finalize,
            other => StepKind::Worker(WorkerKind::new(other).map_err(|_| {
                NameError::new(
                    NameKind::StepKind,
                    other,
                    "use planner, review, finalize or a worker kind name",
                )
            })?),
        })
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for StepKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for StepKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        StepKind::parse(&name).map_err(serde::de::Error::custom)
    }
}

string_schema!(
    StepKind,
    "`planner`, `review`, `finalize`, or a worker kind's name.",
    "^[a-z][a-z0-9-]{0,63}$"
);

/// How a step ended (or `prepared` when it was only prepared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepExecutionOutcome {
    Prepared,
    Completed,
    Failed,
    Blocked,
}

impl StepExecutionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Blocked => "blocked",
        }
    }
}

/// Whether checkpoints are captured for a step.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointMode {
    #[default]
    Disabled,
    Capture,
}

/// What a [`StepArtifact`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepArtifactKind {
    Log,
    Metadata,
    State,
    Directory,
    Artifact,
}

/// Where a step runs: the repository, its worktree, and where records go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepExecutionRuntime {
    pub repo_root: String,
    pub worktree_path: String,
    /// Root of all run directories; defaults to `$XDG_STATE_HOME/baa-runner/runs`,
    /// else `$HOME/.local/state/baa-runner/runs` (never inside the worktree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_root_dir: Option<String>,
    /// Environment given to the step's subprocesses (never the host's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
}

/// Checkpoint settings of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepCheckpointConfig {
    pub mode: CheckpointMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from_seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_diff_base_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_git_diff_stat: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail_lines: Option<u32>,
}

/// One step for the runner to prepare and execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepExecutionRequest {
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub step_name: String,
    pub step_kind: StepKind,
    pub worker_kind: WorkerKind,
    pub timeout_sec: f64,
    pub runtime: StepExecutionRuntime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<StepCheckpointConfig>,
}

/// The checkpoint state of a step: the manager's state plus the records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepCheckpointState {
    #[serde(flatten)]
    pub manager: CheckpointManagerState,
    pub mode: CheckpointMode,
    pub last_checkpoint_seq: u32,
    pub next_checkpoint_seq: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<CheckpointRecord>,
    pub supported_types: Vec<CheckpointType>,
    pub records: Vec<CheckpointRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_diff_plan: Option<GitDiffSnapshotPlan>,
}

/// A file or directory a step produced or that describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepArtifact {
    pub name: String,
    pub kind: StepArtifactKind,
    pub path: String,
    pub description: String,
}

/// A step the worker suggests the conductor runs next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuggestedFollowup {
    pub step_name: String,
    pub step_kind: StepKind,
    pub reason: String,
}

/// What a worker reports when it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerExecutionOutcome {
    pub ok: bool,
    pub outcome: StepExecutionOutcome,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_human: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Vec<StepArtifact>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_followup: Option<Vec<SuggestedFollowup>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Counts and durations of one step execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepExecutionMetrics {
    pub duration_ms: u64,
    pub lifecycle_event_count: u64,
    pub stdout_chunk_count: u64,
    pub stderr_chunk_count: u64,
    pub checkpoint_count: u64,
}

/// Everything the conductor learns about one step execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepExecutionResult {
    pub ok: bool,
    pub outcome: StepExecutionOutcome,
    pub summary: String,
    pub needs_human: bool,
    pub blocked: bool,
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub worker_kind: WorkerKind,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub metadata: RunMetadata,
    pub state: RunStateSnapshot,
    pub log_paths: LocalRunPaths,
    pub log_session: LocalRunLogSession,
    pub log_summary: LocalRunLogSummary,
    pub lifecycle_events: Vec<WorkerLifecycleLogEntry>,
    pub checkpoint: StepCheckpointState,
    pub artifacts: Vec<StepArtifact>,
    pub suggested_followup: Vec<SuggestedFollowup>,
    pub metrics: StepExecutionMetrics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_errors_keep_their_messages() {
        assert_eq!(
            WorkerKind::new("Shell").unwrap_err().to_string(),
            "`Shell` is not a worker kind name: use lowercase letters, digits and `-`, starting with a letter (e.g. `shell`, `git`, `codex`)"
        );
        assert_eq!(
            StepKind::parse("9").unwrap_err().to_string(),
            "`9` is not a step kind: use planner, review, finalize or a worker kind name"
        );
        let refused = CheckpointType::parse("A").unwrap_err();
        assert_eq!(refused.kind, NameKind::CheckpointType);
        assert_eq!(
            refused.to_string(),
            "`A` is not a checkpoint type: use summary, git-diff, log-tail or a name of lowercase letters, digits, `-` and `.`"
        );
    }

    #[test]
    fn a_long_name_is_cut() {
        let refused = WorkerKind::new(&"é".repeat(100)).unwrap_err();
        assert_eq!(refused.name, format!("{}… (136 bytes cut)", "é".repeat(32)));
    }
}
