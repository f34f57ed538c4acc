//! Reading the checkpoints a step already has: every attempt directory
//! beside the current one, each record validated (checksum, payload digest).
//! Used to continue the numbering and to resume from a record.

use std::path::{Path, PathBuf};

use crate::contracts::CheckpointRecord;
use crate::error::Error;
use crate::fsutil::{read_record, sha256_hex, RecordError};

/// The records of a step's earlier attempts.
#[derive(Debug, Default, Clone)]
pub struct StepHistory {
    /// Valid records, by seq.
    pub records: Vec<CheckpointRecord>,
    /// The highest seq any record file carries (valid or not), so that new
    /// records never reuse a number.
    pub highest_seq: u32,
    /// Record files that failed validation, with the reason.
    pub corrupt: Vec<String>,
}

/// A checkpoint to resume from, validated.
#[derive(Debug, Clone)]
pub struct Resume {
    pub record: CheckpointRecord,
    pub payload: Option<Vec<u8>>,
}

/// Where a host that took a step over from another (a cluster's
/// redelivery) puts the checkpoints the earlier host captured for the same
/// attempt: `<step dir>/inherited/checkpoints/`. They count as an earlier
/// attempt's (number 0): resumable, and never numbered again.
pub const INHERITED_DIR: &str = "inherited";

/// `attempt-<n>` directories under a step directory, by attempt number,
/// after the [`INHERITED_DIR`] as attempt 0 when there is one.
fn attempt_dirs(step_dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir(step_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            let n = match name {
                INHERITED_DIR => 0,
                _ => name.strip_prefix("attempt-")?.parse().ok()?,
            };
            Some((n, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Record files (`NNNNNN.json`) of a checkpoints directory, by seq.
pub fn record_files(checkpoints_dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(checkpoints_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let stem = name.to_str()?.strip_suffix(".json")?;
            if stem.len() != 6 || !stem.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((stem.parse().ok()?, entry.path()))
        })
        .collect();
    files.sort();
    files
}

/// Why a checkpoint cannot be resumed from.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointReadError {
    /// The record file is missing, unreadable or corrupt.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record's seq is not the one its file name says.
    #[error("{} holds checkpoint {seq}, not the one its name says", path.display())]
    Misnamed { path: PathBuf, seq: u32 },
    /// The payload file could not be read.
    #[error("payload {} of checkpoint {seq}: {source}", path.display())]
    PayloadIo {
        path: PathBuf,
        seq: u32,
        #[source]
        source: std::io::Error,
    },
    /// The payload's digest is not the one the record holds.
    #[error("payload {} of checkpoint {seq} does not match its digest", path.display())]
    PayloadDigest { path: PathBuf, seq: u32 },
}

/// Read and validate one record file and its payload.
pub fn read_checkpoint(path: &Path) -> Result<Resume, CheckpointReadError> {
    let record: CheckpointRecord = read_record(path)?;
    let seq = record.seq;
    let expected_name = super::record_file_name(seq);
    if path.file_name().and_then(|n| n.to_str()) != Some(expected_name.as_str()) {
        return Err(CheckpointReadError::Misnamed {
            path: path.to_path_buf(),
            seq,
        });
    }
    let payload = match &record.payload_sha256 {
        None => None,
        Some(digest) => {
            // The payload sits beside its record (the runs root may have moved).
            let file = format!("{seq:06}.{}.payload", record.checkpoint_type.as_str());
            let payload_path = path.with_file_name(file);
            let bytes = match std::fs::read(&payload_path) {
                Ok(bytes) => bytes,
                Err(source) => {
                    return Err(CheckpointReadError::PayloadIo {
                        path: payload_path,
                        seq,
                        source,
                    })
                }
            };
            if &sha256_hex(&bytes) != digest {
                return Err(CheckpointReadError::PayloadDigest {
                    path: payload_path,
                    seq,
                });
            }
            Some(bytes)
        }
    };
    Ok(Resume { record, payload })
}

impl StepHistory {
    /// Read the records of every attempt in `step_dir` except `attempt`.
    pub fn load(step_dir: &Path, attempt: u32) -> Self {
        let mut history = StepHistory::default();
        for (n, dir) in attempt_dirs(step_dir) {
            // Attempt 0 is no attempt: the inherited records always count.
            if n == attempt && attempt != 0 {
                continue;
            }
            for (seq, path) in record_files(&dir.join("checkpoints")) {
                history.highest_seq = history.highest_seq.max(seq);
                match read_checkpoint(&path) {
                    Ok(resume) => history.records.push(resume.record),
                    Err(why) => {
                        tracing::warn!("ignoring a corrupt checkpoint: {why}");
                        history.corrupt.push(why.to_string());
                    }
                }
            }
        }
        history.records.sort_by_key(|r| r.seq);
        history
    }

    /// The newest valid record.
    pub fn latest_valid(&self) -> Option<&CheckpointRecord> {
        self.records.last()
    }

    /// Load checkpoint `seq` of this step for resuming; a missing or corrupt
    /// one is an error naming the seq and the file.
    pub fn resume_from(&self, step_dir: &Path, seq: u32) -> Result<Resume, Error> {
        let field = "checkpoint.resumeFromSeq";
        let file = super::record_file_name(seq);
        let found = attempt_dirs(step_dir)
            .into_iter()
            .map(|(_, dir)| dir.join("checkpoints").join(&file))
            .rfind(|p| p.exists());
        let Some(path) = found else {
            let latest = match self.latest_valid() {
                Some(r) => format!("the latest valid checkpoint is {}", r.seq),
                None => "this step has no valid checkpoint".to_string(),
            };
            return Err(Error::invalid(
                field,
                format!(
                    "checkpoint {seq} ({file}) does not exist in any attempt under {}; {latest}",
                    step_dir.display()
                ),
            ));
        };
        read_checkpoint(&path).map_err(|why| {
            Error::invalid(
                field,
                format!("checkpoint {seq} cannot be resumed from: {why}"),
            )
        })
    }
}
