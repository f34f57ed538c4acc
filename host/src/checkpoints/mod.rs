//! Checkpoints of a step: numbered records written to
//! `checkpoints/<seq:06>.json` in each attempt's run directory, each payload
//! beside its record. Numbering runs across the attempts of a step (from 1,
//! no gaps, no duplicates); a new attempt continues it and may resume from
//! any earlier record.
//!
//! A payload is written before its record and both atomically, so a visible
//! record always points at a complete payload; records carry a checksum and
//! are validated when read.

pub mod history;

use std::path::{Path, PathBuf};

use crate::contracts::{
    CheckpointManagerState, CheckpointMode, CheckpointRecord, CheckpointSource, CheckpointType,
    GitDiffSnapshotPlan, StepCheckpointState,
};
use crate::fsutil::{display, now_rfc3339, record_bytes, sha256_hex, write_all_atomic, Durability};

pub use history::{Resume, StepHistory};

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

/// The file name of record `seq`.
pub fn record_file_name(seq: u32) -> String {
    format!("{seq:06}.json")
}

/// Captures and lists the checkpoints of one attempt.
#[derive(Debug)]
pub struct CheckpointManager {
    dir: PathBuf,
    mode: CheckpointMode,
    owner: CheckpointOwner,
    /// Valid records of earlier attempts of the step.
    earlier: Vec<CheckpointRecord>,
    /// Records of this attempt.
    records: Vec<CheckpointRecord>,
    next_seq: u32,
    git_diff_plan: Option<GitDiffSnapshotPlan>,
    resumed_from: Option<CheckpointRecord>,
    durability: Durability,
}

impl CheckpointManager {
    /// A manager for an attempt whose step already has `history`.
    pub fn new(
        dir: PathBuf,
        mode: CheckpointMode,
        owner: CheckpointOwner,
        git_diff_plan: Option<GitDiffSnapshotPlan>,
        history: StepHistory,
        resumed_from: Option<CheckpointRecord>,
    ) -> Self {
        CheckpointManager {
            dir,
            mode,
            owner,
            next_seq: history.highest_seq + 1,
            earlier: history.records,
            records: Vec::new(),
            git_diff_plan,
            resumed_from,
            durability: Durability::PowerLoss,
        }
    }

    /// Whether records are fsynced (the default) or only renamed into place.
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// A manager for calls outside any step: captures nothing.
    pub fn disabled() -> Self {
        CheckpointManager::new(
            PathBuf::from("/nonexistent"),
            CheckpointMode::Disabled,
            CheckpointOwner {
                task_id: String::new(),
                step_id: String::new(),
                run_id: String::new(),
                attempt: 0,
            },
            None,
            StepHistory::default(),
            None,
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mode(&self) -> CheckpointMode {
        self.mode
    }

    pub fn git_diff_plan(&self) -> Option<&GitDiffSnapshotPlan> {
        self.git_diff_plan.as_ref()
    }

    /// Capture a checkpoint of the host's, of `checkpoint_type`, with an
    /// optional payload.
    pub fn capture(
        &mut self,
        checkpoint_type: CheckpointType,
        summary: &str,
        payload: Option<&[u8]>,
    ) -> Result<CheckpointRecord, CheckpointError> {
        self.capture_with_details(
            checkpoint_type,
            summary,
            payload,
            None,
            CheckpointSource::Host,
        )
    }

    /// [`CheckpointManager::capture`] with `details` describing the payload.
    pub fn capture_with_details(
        &mut self,
        checkpoint_type: CheckpointType,
        summary: &str,
        payload: Option<&[u8]>,
        details: Option<serde_json::Value>,
        source: CheckpointSource,
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
        let record_path = self.dir.join(record_file_name(seq));
        let io = |path: &Path| {
            let path = display(path);
            move |source| CheckpointError::Io { path, source }
        };
        crate::fault::point("checkpoint.before-payload");
        let (payload_path, payload_bytes, payload_sha256) = match payload {
            Some(bytes) => {
                let path = self
                    .dir
                    .join(format!("{seq:06}.{}.payload", checkpoint_type.as_str()));
                write_all_atomic(&[(&path, bytes)], self.durability).map_err(io(&path))?;
                (
                    Some(display(&path)),
                    Some(bytes.len() as u64),
                    Some(sha256_hex(bytes)),
                )
            }
            None => (None, None, None),
        };
        crate::fault::point("checkpoint.before-record");
        let record = CheckpointRecord {
            seq,
            checkpoint_type,
            created_at: now_rfc3339(),
            task_id: self.owner.task_id.clone(),
            step_id: self.owner.step_id.clone(),
            run_id: self.owner.run_id.clone(),
            attempt: self.owner.attempt,
            summary: summary.to_string(),
            source,
            path: display(&record_path),
            payload_path,
            payload_bytes,
            payload_sha256,
            details,
        };
        let bytes = record_bytes(&record).map_err(io(&record_path))?;
        write_all_atomic(&[(&record_path, &bytes)], self.durability).map_err(io(&record_path))?;
        crate::fault::point("checkpoint.after-record");
        self.next_seq += 1;
        self.records.push(record.clone());
        Ok(record)
    }

    /// Checkpoints captured by this attempt.
    pub fn count(&self) -> u64 {
        self.records.len() as u64
    }

    /// The state reported in the step result: every valid record of the
    /// step (earlier attempts first), numbering, plan and resume point.
    pub fn state(&self) -> StepCheckpointState {
        let records: Vec<CheckpointRecord> =
            self.earlier.iter().chain(&self.records).cloned().collect();
        StepCheckpointState {
            manager: CheckpointManagerState {
                checkpoints_dir: display(&self.dir),
                resumed_from_seq: self.resumed_from.as_ref().map(|r| r.seq),
            },
            mode: self.mode,
            last_checkpoint_seq: self.next_seq - 1,
            next_checkpoint_seq: self.next_seq,
            latest: records.last().cloned(),
            supported_types: CheckpointType::BUILTIN.to_vec(),
            records,
            git_diff_plan: self.git_diff_plan.clone(),
        }
    }
}
