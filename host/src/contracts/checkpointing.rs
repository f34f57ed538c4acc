//! Types the contract imports from `@baa-conductor/checkpointing`: the
//! numbered checkpoint records and the checkpoint manager's state.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a checkpoint holds: a worker-written `summary`, a `git-diff`
/// snapshot of the worktree, a `log-tail` of stdout/stderr, or a
/// worker-defined type (lowercase letters, digits, `-` and `.`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckpointType {
    Summary,
    GitDiff,
    LogTail,
    Custom(String),
}

impl CheckpointType {
    /// The types the host knows how to capture itself.
    pub const BUILTIN: [CheckpointType; 3] = [
        CheckpointType::Summary,
        CheckpointType::GitDiff,
        CheckpointType::LogTail,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Summary => "summary",
            Self::GitDiff => "git-diff",
            Self::LogTail => "log-tail",
            Self::Custom(name) => name,
        }
    }

    pub fn parse(name: &str) -> Result<Self, super::NameError> {
        Ok(match name {
            "summary" => Self::Summary,
            "git-diff" => Self::GitDiff,
            "log-tail" => Self::LogTail,
            other => {
                let valid = !other.is_empty()
                    && other.len() <= 64
                    && other.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
                    });
                if !valid {
                    return Err(super::NameError::new(
                        super::NameKind::CheckpointType,
                        other,
                        "use summary, git-diff, log-tail or a name of lowercase letters, digits, `-` and `.`",
                    ));
                }
                Self::Custom(other.to_string())
            }
        })
    }
}

impl fmt::Display for CheckpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckpointType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CheckpointType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        CheckpointType::parse(&name).map_err(serde::de::Error::custom)
    }
}

super::string_schema!(
    CheckpointType,
    "`summary`, `git-diff`, `log-tail`, or a worker-defined type.",
    "^[a-z0-9.-]{1,64}$"
);

/// Who wrote a checkpoint's payload. A worker may capture the built-in
/// types with a payload of its own; only the host's are its snapshots.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointSource {
    /// Captured by the host (its git-diff snapshots, log tails, summaries).
    Host,
    /// Captured by the worker, with the worker's own payload (or none). A
    /// record without a source (older versions) counts as the worker's.
    #[default]
    Worker,
}

/// One checkpoint: `checkpoints/<seq:06>.json`, its payload beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRecord {
    /// From 1, no gaps, no duplicates within a step's attempts.
    pub seq: u32,
    #[serde(rename = "type")]
    pub checkpoint_type: CheckpointType,
    pub created_at: String,
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
    pub summary: String,
    /// Who captured it: `host` or `worker`.
    #[serde(default)]
    pub source: CheckpointSource,
    /// The record file itself.
    pub path: String,
    /// The payload file (`<seq:06>.<type>.payload`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// SHA-256 of the payload, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// What the payload holds, by type: for `git-diff` the base ref, the
    /// changed files and (when asked) the diff stat; for `log-tail` the line
    /// counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The checkpoint manager's own state, shared by every step state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointManagerState {
    /// Where this attempt's records are written.
    pub checkpoints_dir: String,
    /// The seq this attempt resumed from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_seq: Option<u32>,
}

/// What a `git-diff` checkpoint will capture, decided before anything is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitDiffSnapshotPlan {
    /// The ref the worktree is compared against.
    pub base_ref: String,
    /// Whether `git diff --stat` is recorded too.
    pub include_stat: bool,
    pub worktree_path: String,
}
