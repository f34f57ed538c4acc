//! The end of a step's records: the `step.finished` event, the log session
//! closed, the dedicated user and namespace released, then the final state,
//! metadata and `result.json` written in one go ([`super::records`]).

use super::execute::record_artifacts;
use super::outcome::Report;
use super::prepare::PreparedStepRun;
use super::records::{self, Record};
use crate::contracts::{
    EventLevel, HostEvent, LocalRunLogSummary, RunStateSnapshot, RunStatus, StepCheckpointState,
    StepExecutionMetrics, StepExecutionOutcome, StepExecutionResult,
};
use crate::error::Error;
use crate::fsutil::now_rfc3339;

/// When the step ran: its start and its end.
struct Span {
    started_at: String,
    finished_at: String,
    duration_ms: u64,
}

/// Write the final state, metadata and result of a step.
pub(crate) fn finish(
    mut prepared: PreparedStepRun,
    report: Report,
    started_at: String,
    started: std::time::Instant,
) -> Result<StepExecutionResult, Error> {
    let span = Span {
        started_at,
        finished_at: now_rfc3339(),
        duration_ms: started.elapsed().as_millis() as u64,
    };
    let checkpoint = prepared
        .checkpoint_manager
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .state();
    let logs = prepared.logs.clone();
    finished_event(&prepared, &report, span.duration_ms);
    if let Some(error) = logs.write_error() {
        tracing::error!("a log write failed: {error}");
    }
    let log_session = logs.close();
    let log_summary = logs.summary();
    let state = final_state(&report, &span, &checkpoint, &log_summary);
    // The dedicated user's processes are killed and its trees handed back
    // before the record says the step is over.
    final_metadata(&mut prepared, &report, &span);
    let result = StepExecutionResult {
        log_session,
        lifecycle_events: logs.events(),
        ..result_of(&prepared, report, span, state, log_summary, checkpoint)
    };
    records::write(
        &prepared.log_paths,
        prepared.durability,
        &[
            Record::State(&result.state),
            Record::Metadata(&prepared.metadata),
            Record::Result(&result),
        ],
    )?;
    Ok(result)
}

/// The `step.finished` event of an executed step.
fn finished_event(prepared: &PreparedStepRun, report: &Report, duration_ms: u64) {
    let level = match report.outcome {
        StepExecutionOutcome::Completed | StepExecutionOutcome::Prepared => EventLevel::Info,
        StepExecutionOutcome::Blocked => EventLevel::Warn,
        StepExecutionOutcome::Failed => EventLevel::Error,
    };
    if report.outcome == StepExecutionOutcome::Prepared {
        return;
    }
    prepared.logs.host(
        level,
        format!(
            "{}: {}",
            report.outcome.as_str(),
            report.summary.lines().next().unwrap_or("")
        ),
        HostEvent::StepFinished {
            outcome: report.outcome,
            exit_code: report.exit_code,
            failure: report.failure.clone(),
            duration_ms,
        },
    );
}

fn final_state(
    report: &Report,
    span: &Span,
    checkpoint: &StepCheckpointState,
    log_summary: &LocalRunLogSummary,
) -> RunStateSnapshot {
    let status = match report.outcome {
        StepExecutionOutcome::Prepared => RunStatus::Prepared,
        StepExecutionOutcome::Completed => RunStatus::Completed,
        StepExecutionOutcome::Failed => RunStatus::Failed,
        StepExecutionOutcome::Blocked => RunStatus::Blocked,
    };
    let executed = report.outcome != StepExecutionOutcome::Prepared;
    RunStateSnapshot {
        status,
        updated_at: span.finished_at.clone(),
        started_at: executed.then(|| span.started_at.clone()),
        finished_at: executed.then(|| span.finished_at.clone()),
        summary: Some(report.summary.clone()),
        exit_code: report.exit_code,
        failure: report.failure.clone(),
        last_checkpoint_seq: checkpoint.last_checkpoint_seq,
        lifecycle_event_count: log_summary.lifecycle_event_count,
    }
}

/// The metadata's final fields; the step's user and namespace are released.
fn final_metadata(prepared: &mut PreparedStepRun, report: &Report, span: &Span) {
    let mut sandbox = report.sandbox.clone();
    if let (Some(record), Some(id)) = (sandbox.as_mut(), prepared.sandbox_user.uid()) {
        if let crate::contracts::StepUserRecord::Dedicated { uid, gid, .. } = &mut record.user {
            (*uid, *gid) = (Some(id), Some(id));
        }
    }
    prepared.sandbox_user.release();
    prepared.sandbox_namespace.release();
    let executed = report.outcome != StepExecutionOutcome::Prepared;
    let metadata = &mut prepared.metadata;
    metadata.sandbox = sandbox;
    metadata.plugin = report.plugin.clone();
    metadata.outcome = Some(report.outcome);
    metadata.failure = report.failure.clone();
    metadata.finished_at = executed.then(|| span.finished_at.clone());
}

/// The result (its log session and events are filled in by the caller).
fn result_of(
    prepared: &PreparedStepRun,
    report: Report,
    span: Span,
    state: RunStateSnapshot,
    log_summary: LocalRunLogSummary,
    checkpoint: StepCheckpointState,
) -> StepExecutionResult {
    let request = &prepared.request;
    let mut artifacts = record_artifacts(prepared);
    artifacts.extend(report.artifacts);
    StepExecutionResult {
        ok: matches!(
            report.outcome,
            StepExecutionOutcome::Completed | StepExecutionOutcome::Prepared
        ),
        outcome: report.outcome,
        summary: report.summary,
        needs_human: report.needs_human,
        blocked: report.outcome == StepExecutionOutcome::Blocked,
        task_id: request.task_id.clone(),
        step_id: request.step_id.clone(),
        run_id: request.run_id.clone(),
        attempt: request.attempt,
        worker_kind: request.worker_kind.clone(),
        started_at: span.started_at,
        finished_at: span.finished_at,
        duration_ms: span.duration_ms,
        metadata: prepared.metadata.clone(),
        state,
        log_paths: prepared.log_paths.clone(),
        log_session: prepared.log_session.clone(),
        lifecycle_events: Vec::new(),
        metrics: StepExecutionMetrics {
            duration_ms: span.duration_ms,
            lifecycle_event_count: log_summary.lifecycle_event_count,
            stdout_chunk_count: log_summary.stdout_chunk_count,
            stderr_chunk_count: log_summary.stderr_chunk_count,
            // This attempt's (`checkpoint.records` lists the step's).
            checkpoint_count: (checkpoint.records.iter())
                .filter(|r| r.attempt == request.attempt)
                .count() as u64,
        },
        log_summary,
        checkpoint,
        artifacts,
        suggested_followup: report.followups,
    }
}
