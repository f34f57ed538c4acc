//! The checkpoints the host captures when a step ends in `capture` mode,
//! whatever the outcome: a `git-diff` of the worktree (when planned), a
//! `log-tail`, and a `summary` (prefixed by `summaryHint` when given). They
//! are filled and written by the same capability a worker's `capture` uses.

use serde_json::json;

use super::execute::{step_checkpoints, step_subprocesses, Deadlines};
use super::outcome::Report;
use super::prepare::PreparedStepRun;
use super::RunnerShared;
use crate::capabilities::checkpoint::{Budget, CaptureError, Checkpoints, Snapshot};
use crate::capabilities::subprocess::ExecPolicy;
use crate::contracts::{CheckpointMode, CheckpointSource, CheckpointType, EventLevel, HostEvent};

/// Capture the step's final checkpoints.
pub(crate) async fn final_checkpoints(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    report: &Report,
    deadlines: Deadlines,
) {
    if prepared.checkpoint.mode != CheckpointMode::Capture {
        return;
    }
    let checkpoints = step_checkpoints(prepared);
    let mut captures = Vec::new();
    let mut cut_short = Vec::new();
    if checkpoints.git_diff_plan().is_some() {
        match git_diff(shared, prepared, &checkpoints, deadlines).await {
            Ok(diff) => captures.push((CheckpointType::GitDiff, diff)),
            Err(CaptureError::CutShort) => {
                cut_short.push("git-diff");
                prepared.logs.host(
                    EventLevel::Warn,
                    "no git-diff snapshot: the step's deadline (timeoutSec plus limits.timeout-grace-ms) came first",
                    HostEvent::CheckpointCutShort {
                        checkpoint_type: CheckpointType::GitDiff,
                    },
                );
            }
            Err(why) => {
                prepared.logs.host(
                    EventLevel::Warn,
                    format!("no git-diff snapshot: {why}"),
                    HostEvent::CheckpointFailed {
                        checkpoint_type: Some(CheckpointType::GitDiff),
                    },
                );
            }
        }
    }
    captures.push((CheckpointType::LogTail, checkpoints.log_tail()));
    captures.push((
        CheckpointType::Summary,
        summary(prepared, report, &cut_short),
    ));
    for (kind, snapshot) in captures {
        let stored = checkpoints.store(
            kind.clone(),
            &snapshot.summary,
            Some(&snapshot.payload),
            Some(snapshot.details),
            CheckpointSource::Host,
            Budget::Record,
        );
        // An I/O error was logged where it happened; the outcome stands.
        match stored {
            Ok(_) | Err(CaptureError::Io(_)) => {}
            Err(why) => {
                prepared.logs.host(
                    EventLevel::Warn,
                    format!("no {kind} checkpoint: {why}"),
                    HostEvent::CheckpointFailed {
                        checkpoint_type: Some(kind),
                    },
                );
            }
        }
    }
}

/// The worktree's diff, from a subprocess capability of its own (the
/// worker's is gone with its store).
async fn git_diff(
    shared: &RunnerShared,
    prepared: &PreparedStepRun,
    checkpoints: &Checkpoints,
    deadlines: Deadlines,
) -> Result<Snapshot, CaptureError> {
    let mut subprocesses = step_subprocesses(shared, prepared, deadlines, ExecPolicy::default())
        .map_err(|e| CaptureError::Io(e.to_string()))?;
    checkpoints
        .git_diff(&mut subprocesses, deadlines.host)
        .await
}

/// The `summary` checkpoint: the outcome and the summary's first line.
fn summary(prepared: &PreparedStepRun, report: &Report, cut_short: &[&str]) -> Snapshot {
    let first_line = report.summary.lines().next().unwrap_or_default();
    let hint = prepared
        .request
        .checkpoint
        .as_ref()
        .and_then(|c| c.summary_hint.as_deref());
    let summary = match hint {
        Some(hint) => format!("{hint} — {}: {first_line}", report.outcome.as_str()),
        None => format!("{}: {first_line}", report.outcome.as_str()),
    };
    let payload = json!({
        "outcome": report.outcome,
        "summary": report.summary,
        "exitCode": report.exit_code,
        "failure": report.failure,
        "cutShort": cut_short,
    });
    Snapshot {
        summary: summary
            .chars()
            .take(crate::checkpoints::MAX_SUMMARY_BYTES / 4)
            .collect(),
        payload: serde_json::to_vec_pretty(&payload).unwrap_or_default(),
        details: json!({ "outcome": report.outcome }),
    }
}
