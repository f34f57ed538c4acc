//! Recovery after a host crash: attempts left `running` with no writer
//! holding their lock are found, and their state and metadata are marked
//! `interrupted` with the last valid checkpoint seq. Running recovery again
//! changes nothing.
//!
//! Recovery kills no process named in a run's records: a worker could
//! have written any pid there. A step's processes stop on their own when
//! the host dies (each supervisor watches its lifeline), and what a
//! dedicated user left is swept by uid from the host-only lease records
//! (`user::recover_abandoned`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::lock::RunLock;
use crate::checkpoints::StepHistory;
use crate::contracts::{
    EventLevel, EventSource, FailureReason, FailureRecord, HostEvent, RunMetadata,
    RunStateSnapshot, RunStatus, StepExecutionOutcome, WorkerLifecycleLogEntry,
};
use crate::fsutil::{now_rfc3339, read_json_lines, read_record, write_record_atomic};

/// One attempt that recovery closed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveredRun {
    pub run_dir: String,
    /// The latest valid checkpoint of the step, 0 when there is none.
    pub last_checkpoint_seq: u32,
}

/// What a recovery pass found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryReport {
    pub recovered: Vec<RecoveredRun>,
    /// Attempts marked running whose writer is alive: left alone.
    pub live: Vec<String>,
    /// Attempts that could not be examined or closed, with the reason.
    pub errors: Vec<String>,
    /// Trees a stopped host had lent to a dedicated sandbox user, handed
    /// back to their owners.
    pub handed_back: Vec<std::path::PathBuf>,
}

/// The attempt directories under `dir`: `dir` itself, or every one below it
/// (runs root → task → run → step → `attempt-<n>`).
fn attempt_dirs(dir: &Path) -> Vec<PathBuf> {
    let is_attempt = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("attempt-"))
    };
    if is_attempt(dir) {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((path, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if is_attempt(&child) {
                out.push(child);
            } else if depth < 4 {
                stack.push((child, depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// Recover every crashed attempt at or below `dir` (a runs root, a task,
/// run or step directory, or one attempt).
pub fn recover(dir: &Path) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    for run_dir in attempt_dirs(dir) {
        let state_path = run_dir.join("state.json");
        let state: RunStateSnapshot = match read_record(&state_path) {
            Ok(state) => state,
            Err(e) => {
                if state_path.exists() {
                    report.errors.push(e.to_string());
                }
                continue;
            }
        };
        if state.status != RunStatus::Running {
            continue;
        }
        let _lock = match RunLock::acquire(&run_dir) {
            Ok(lock) => lock,
            Err(_) => {
                report.live.push(run_dir.display().to_string());
                continue;
            }
        };
        match recover_attempt(&run_dir, state) {
            Ok(recovered) => report.recovered.push(recovered),
            Err(why) => report.errors.push(format!("{}: {why}", run_dir.display())),
        }
    }
    report
}

fn recover_attempt(
    run_dir: &Path,
    mut state: RunStateSnapshot,
) -> Result<RecoveredRun, crate::Error> {
    let lifecycle = run_dir.join("logs/lifecycle.jsonl");
    let (events, _) = read_json_lines::<WorkerLifecycleLogEntry>(&lifecycle)?;

    let step_dir = run_dir.parent().unwrap_or(run_dir);
    let last_seq = StepHistory::load(step_dir, 0)
        .latest_valid()
        .map(|r| r.seq)
        .unwrap_or(0);
    let now = now_rfc3339();
    let failure = FailureRecord {
        reason: FailureReason::Interrupted,
        message: format!(
            "the host stopped while this step was running; recovered at {now}; the latest valid checkpoint is {}",
            if last_seq == 0 { "none".to_string() } else { last_seq.to_string() }
        ),
        trap_code: None,
    };
    let recovered = HostEvent::RunRecovered {
        run_dir: run_dir.display().to_string(),
        last_checkpoint_seq: last_seq,
    };
    append_event(
        &lifecycle,
        events.len() as u64 + 1,
        &failure.message,
        recovered,
    )
    .map_err(crate::Error::io(&lifecycle))?;

    state.status = RunStatus::Interrupted;
    state.updated_at = now.clone();
    state.finished_at = Some(now.clone());
    state.summary = Some(failure.message.clone());
    state.failure = Some(failure.clone());
    state.last_checkpoint_seq = last_seq;
    state.lifecycle_event_count = events.len() as u64 + 1;
    let state_path = run_dir.join("state.json");
    write_record_atomic(&state_path, &state).map_err(crate::Error::io(&state_path))?;

    let metadata_path = run_dir.join("metadata.json");
    if let Ok(mut metadata) = read_record::<RunMetadata>(&metadata_path) {
        metadata.outcome = Some(StepExecutionOutcome::Failed);
        metadata.failure = Some(failure);
        metadata.finished_at = Some(now);
        write_record_atomic(&metadata_path, &metadata).map_err(crate::Error::io(&metadata_path))?;
    }
    Ok(RecoveredRun {
        run_dir: run_dir.display().to_string(),
        last_checkpoint_seq: last_seq,
    })
}

/// Append a `run.recovered` event, first cutting a torn last line (a record
/// the crash cut short) so that the log stays one JSON object per line.
fn append_event(path: &Path, seq: u64, message: &str, event: HostEvent) -> std::io::Result<()> {
    let text = std::fs::read(path)?;
    let keep = text
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    if keep < text.len() {
        file.set_len(keep as u64)?;
    }
    let (name, data) = event.into_parts();
    let entry = WorkerLifecycleLogEntry {
        seq,
        timestamp: now_rfc3339(),
        event: name,
        level: EventLevel::Warn,
        source: EventSource::Host,
        message: message.to_string(),
        data,
    };
    let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(&line)?;
    file.sync_all()
}
