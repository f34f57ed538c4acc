//! The checkpoint manager of one attempt: numbered records written to
//! `checkpoints/<seq:06>.json`, each payload beside its record.
//!
//! A record is written after its payload, atomically, so a visible record
//! always points at a complete payload.

use std::path::{Path, PathBuf};

use crate::contracts::{
    CheckpointManagerState, CheckpointMode, CheckpointRecord, CheckpointType, GitDiffSnapshotPlan,
    StepCheckpointState,
};
use crate::fsutil::{display, now_rfc3339, sha256_hex, write_atomic, write_json_atomic};

/// Largest payload a checkpoint may carry.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Longest summary a checkpoint may carry.
pub const MAX_SUMMARY_BYTES: usize = 4 * 1024;

/// Why a checkpoint was not captured.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoints are disabled for this step (checkpoint.mode is `disabled`)")]
    Disabled,
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write checkpoint {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which step and attempt the records belong to.
#[derive(Debug, Clone)]
pub struct CheckpointOwner {
    pub task_id: String,
    pub step_id: String,
    pub run_id: String,
    pub attempt: u32,
}

/// Captures and lists the checkpoints of one attempt.
#[derive(Debug)]
pub struct CheckpointManager {
    dir: PathBuf,
    mode: CheckpointMode,
    owner: CheckpointOwner,
    records: Vec<CheckpointRecord>,
    next_seq: u32,
    git_diff_plan: Option<GitDiffSnapshotPlan>,
}

impl CheckpointManager {
    pub fn new(
        dir: PathBuf,
        mode: CheckpointMode,
        owner: CheckpointOwner,
        git_diff_plan: Option<GitDiffSnapshotPlan>,
    ) -> Self {
        CheckpointManager {
            dir,
            mode,
            owner,
            records: Vec::new(),
            next_seq: 1,
            git_diff_plan,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mode(&self) -> CheckpointMode {
        self.mode
    }

    /// Capture a checkpoint of `checkpoint_type` with an optional payload.
    pub fn capture(
        &mut self,
        checkpoint_type: CheckpointType,
        summary: &str,
        payload: Option<&[u8]>,
    ) -> Result<CheckpointRecord, CheckpointError> {
        if self.mode == CheckpointMode::Disabled {
            return Err(CheckpointError::Disabled);
        }
        if summary.len() > MAX_SUMMARY_BYTES {
            return Err(CheckpointError::Invalid(format!(
                "checkpoint summary is {} bytes; the limit is {MAX_SUMMARY_BYTES}",
                summary.len()
            )));
        }
        if let Some(payload) = payload {
            if payload.len() > MAX_PAYLOAD_BYTES {
                return Err(CheckpointError::Invalid(format!(
                    "checkpoint payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                    payload.len()
                )));
            }
        }
        let seq = self.next_seq;
        let record_path = self.dir.join(format!("{seq:06}.json"));
        let io = |path: &Path| {
            let path = display(path);
            move |source| CheckpointError::Io { path, source }
        };
        let (payload_path, payload_bytes, payload_sha256) = match payload {
            Some(bytes) => {
                let path = self
                    .dir
                    .join(format!("{seq:06}.{}.payload", checkpoint_type.as_str()));
                write_atomic(&path, bytes).map_err(io(&path))?;
                (
                    Some(display(&path)),
                    Some(bytes.len() as u64),
                    Some(sha256_hex(bytes)),
                )
            }
            None => (None, None, None),
        };
        let record = CheckpointRecord {
            seq,
            checkpoint_type,
            created_at: now_rfc3339(),
            task_id: self.owner.task_id.clone(),
            step_id: self.owner.step_id.clone(),
            run_id: self.owner.run_id.clone(),
            attempt: self.owner.attempt,
            summary: summary.to_string(),
            path: display(&record_path),
            payload_path,
            payload_bytes,
            payload_sha256,
        };
        write_json_atomic(&record_path, &record).map_err(io(&record_path))?;
        self.next_seq += 1;
        self.records.push(record.clone());
        Ok(record)
    }

    pub fn count(&self) -> u64 {
        self.records.len() as u64
    }

    /// The state reported in the step result and the state snapshot.
    pub fn state(&self) -> StepCheckpointState {
        StepCheckpointState {
            manager: CheckpointManagerState {
                checkpoints_dir: display(&self.dir),
                resumed_from_seq: None,
            },
            mode: self.mode,
            last_checkpoint_seq: self.next_seq - 1,
            next_checkpoint_seq: self.next_seq,
            latest: self.records.last().cloned(),
            supported_types: CheckpointType::BUILTIN.to_vec(),
            records: self.records.clone(),
            git_diff_plan: self.git_diff_plan.clone(),
        }
    }
}
