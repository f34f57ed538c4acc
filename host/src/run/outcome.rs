//! How a step ended, as pure functions: the worker's answer (or the trap,
//! the exit, the interruption that replaced it) becomes a [`Report`], and
//! [`classify`] names the limit or policy behind a failure from the
//! [`StepEnd`] facts. No I/O here; every rule has a unit test below.

use wasmtime::Trap;

use crate::bounds;
use crate::capabilities::subprocess::Denial;
use crate::config::Capabilities;
use crate::contracts::{
    FailureReason, FailureRecord, PluginRecord, StepArtifact, StepExecutionOutcome, StepKind,
    SuggestedFollowup,
};
use crate::worker::{ExecuteError, WorkerOutcome, WorkerStatus};

/// How a worker run ended, before it becomes a `StepExecutionResult`.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub outcome: StepExecutionOutcome,
    pub summary: String,
    pub needs_human: bool,
    pub exit_code: Option<i32>,
    pub followups: Vec<SuggestedFollowup>,
    pub failure: Option<FailureRecord>,
    pub artifacts: Vec<StepArtifact>,
    pub plugin: Option<PluginRecord>,
    /// How the step's subprocesses were confined (for the metadata).
    pub sandbox: Option<crate::contracts::ConfinementRecord>,
}

impl Report {
    pub(crate) fn failed(reason: FailureReason, message: impl Into<String>) -> Self {
        let message = message.into();
        Report {
            outcome: StepExecutionOutcome::Failed,
            summary: message.clone(),
            needs_human: false,
            exit_code: None,
            followups: Vec::new(),
            failure: Some(FailureRecord {
                reason,
                message,
                trap_code: None,
            }),
            artifacts: Vec::new(),
            plugin: None,
            sandbox: None,
        }
    }

    /// A step that was only prepared.
    pub(crate) fn prepared(summary: String) -> Self {
        Report {
            outcome: StepExecutionOutcome::Prepared,
            summary,
            needs_human: false,
            exit_code: None,
            followups: Vec::new(),
            failure: None,
            artifacts: Vec::new(),
            plugin: None,
            sandbox: None,
        }
    }

    /// The step was cancelled by its embedder.
    pub(crate) fn interrupted(message: impl Into<String>) -> Self {
        Report::failed(FailureReason::Interrupted, message)
    }

    /// The worker trapped (or exited) with `code`.
    fn trapped(code: String, message: impl Into<String>) -> Self {
        let mut report = Report::failed(FailureReason::Trap, message);
        if let Some(failure) = report.failure.as_mut() {
            failure.trap_code = Some(code);
        }
        report
    }

    /// What the worker answered `execute`.
    pub(crate) fn answered(answer: Result<WorkerOutcome, ExecuteError>) -> Self {
        let outcome = match answer {
            Ok(outcome) => outcome,
            Err(ExecuteError::InvalidRequest(why)) => {
                return Report::failed(FailureReason::InvalidRequest, why)
            }
            Err(ExecuteError::Failed(why)) => {
                return Report::failed(FailureReason::WorkerFailed, why)
            }
        };
        let (step_outcome, needs_human) = match outcome.status {
            WorkerStatus::Completed => (StepExecutionOutcome::Completed, outcome.needs_human),
            WorkerStatus::Failed => (StepExecutionOutcome::Failed, outcome.needs_human),
            WorkerStatus::Blocked => (StepExecutionOutcome::Blocked, true),
        };
        let followups = outcome
            .followups
            .into_iter()
            .filter_map(|f| {
                Some(SuggestedFollowup {
                    step_kind: StepKind::parse(&f.step_kind).ok()?,
                    step_name: f.step_name,
                    reason: f.reason,
                })
            })
            .collect();
        Report {
            outcome: step_outcome,
            failure: None,
            summary: outcome.summary,
            needs_human,
            exit_code: outcome.exit_code,
            followups,
            artifacts: Vec::new(),
            plugin: None,
            sandbox: None,
        }
    }

    /// A guest call that ended in an error instead of an answer: an exit,
    /// a trap, or an interruption at the deadline.
    pub(crate) fn guest_error(e: &wasmtime::Error, during: &str) -> Self {
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            let mut report = Report::trapped(
                format!("exit({})", exit.0),
                format!(
                    "the worker exited with code {} {during} instead of returning an outcome",
                    exit.0
                ),
            );
            report.exit_code = Some(exit.0);
            return report;
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                Report::failed(FailureReason::Timeout, format!("interrupted {during}"))
            }
            Some(trap) => Report::trapped(
                trap_code(trap).into(),
                format!("the worker trapped {during}: {trap}"),
            ),
            None => Report::trapped(
                "host call error".into(),
                format!("the worker failed {during}: {e:#}"),
            ),
        }
    }

    /// A kind that requests more than it is granted: blocked, with the
    /// exact lines the operator would add.
    pub(crate) fn blocked_on(
        missing: &Capabilities,
        kind: &str,
        name: &str,
        version: &str,
    ) -> Self {
        let wanted = missing.config_lines().join(", ");
        let message = format!(
            "{name} {version} requests more than the operator granted: {wanted}; widen [kinds.{kind}] in the config to run it"
        );
        let mut report = Report::failed(FailureReason::PolicyDenied, message.clone());
        report.outcome = StepExecutionOutcome::Blocked;
        report.needs_human = true;
        report.followups.push(SuggestedFollowup {
            step_name: format!("grant [kinds.{kind}] {wanted}"),
            step_kind: StepKind::Review,
            reason: message,
        });
        report
    }
}

/// A trap's machine-readable code.
pub(crate) fn trap_code(trap: &Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack-overflow",
        Trap::MemoryOutOfBounds => "memory-out-of-bounds",
        Trap::HeapMisaligned => "heap-misaligned",
        Trap::TableOutOfBounds => "table-out-of-bounds",
        Trap::IndirectCallToNull => "indirect-call-to-null",
        Trap::BadSignature => "bad-signature",
        Trap::IntegerOverflow => "integer-overflow",
        Trap::IntegerDivisionByZero => "integer-division-by-zero",
        Trap::BadConversionToInteger => "bad-conversion-to-integer",
        Trap::UnreachableCodeReached => "unreachable-code-reached",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out-of-fuel",
        Trap::AtomicWaitNonSharedMemory => "atomic-wait-non-shared-memory",
        Trap::NullReference => "null-reference",
        Trap::ArrayOutOfBounds => "array-out-of-bounds",
        Trap::AllocationTooLarge => "allocation-too-large",
        Trap::CastFailure => "cast-failure",
        Trap::CannotEnterComponent => "cannot-enter-component",
        Trap::CannotLeaveComponent => "cannot-leave-component",
        Trap::NoAsyncResult => "no-async-result",
        Trap::UnhandledTag => "unhandled-tag",
        Trap::ContinuationAlreadyConsumed => "continuation-already-consumed",
        Trap::DisabledOpcode => "disabled-opcode",
        Trap::InvalidChar => "invalid-char",
        Trap::StringOutOfBounds => "string-out-of-bounds",
        Trap::ListOutOfBounds => "list-out-of-bounds",
        Trap::InvalidDiscriminant => "invalid-discriminant",
        Trap::UnalignedPointer => "unaligned-pointer",
        Trap::UncaughtException => "uncaught-exception",
        // Traps of component-model concurrency, which this engine disables.
        _ => "other",
    }
}

/// The facts of a step's end that decide its outcome besides the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepEnd {
    /// The step's deadline fired before the guest returned.
    pub timed_out: bool,
    /// The guest asked for more memory than its limit.
    pub memory: bool,
    /// A subprocess exceeded its output cap, or the logs were truncated.
    pub output: bool,
    /// The step's disk budget is used up.
    pub disk: bool,
    /// The spawns the policy refused.
    pub denials: Vec<Denial>,
    /// `timeoutSec`, `limits.step-disk-mib`, `limits.memory-mib`: for messages.
    pub timeout_sec: f64,
    pub disk_mib: u64,
    pub memory_mib: u64,
}

/// Name the limit or policy behind a failure: timeout (whatever the guest
/// returned after the deadline), the disk budget, memory, output, or a
/// policy denial, in that order; otherwise the worker's own failure.
pub(crate) fn classify(mut report: Report, end: &StepEnd) -> Report {
    let reason = report.failure.as_ref().map(|f| f.reason);
    let forced = (end.timed_out && reason != Some(FailureReason::InvalidPlugin))
        || (end.disk && reason != Some(FailureReason::Timeout));
    if forced && report.outcome != StepExecutionOutcome::Failed {
        // What the guest claimed after its time or budget ran out does not count.
        report.outcome = StepExecutionOutcome::Failed;
        report.needs_human = false;
        report.failure = None;
    }
    if report.outcome != StepExecutionOutcome::Failed {
        return report;
    }
    let trap_code = report.failure.as_ref().and_then(|f| f.trap_code.clone());
    match limit_hit(&report, end) {
        Some((reason, message)) => {
            report.summary = format!("{message}: {}", report.summary);
            report.failure = Some(FailureRecord {
                reason,
                message: report.summary.clone(),
                trap_code,
            });
        }
        None => match denied(&mut report, end) {
            true => {
                report.failure = Some(FailureRecord {
                    reason: FailureReason::PolicyDenied,
                    message: report.summary.clone(),
                    trap_code,
                })
            }
            false if report.failure.is_none() => {
                report.failure = Some(FailureRecord {
                    reason: FailureReason::WorkerFailed,
                    message: report.summary.clone(),
                    trap_code: None,
                });
            }
            false => {}
        },
    }
    report
}

/// The limit a failed step ran into, with the message its summary starts with.
fn limit_hit(report: &Report, end: &StepEnd) -> Option<(FailureReason, String)> {
    let reason = report.failure.as_ref().map(|f| f.reason);
    let trapped_or_failed = matches!(
        reason,
        None | Some(FailureReason::WorkerFailed) | Some(FailureReason::Trap)
    );
    if end.timed_out && reason != Some(FailureReason::InvalidPlugin) {
        Some((
            FailureReason::Timeout,
            format!("timed out after {}s", end.timeout_sec),
        ))
    } else if end.disk {
        Some((
            FailureReason::DiskLimit,
            format!(
                "exceeded the step's disk budget of {} MiB (limits.step-disk-mib)",
                end.disk_mib
            ),
        ))
    } else if end.memory && reason == Some(FailureReason::Trap) {
        Some((
            FailureReason::MemoryLimit,
            format!("exceeded the memory limit of {} MiB", end.memory_mib),
        ))
    } else if end.output && trapped_or_failed {
        Some((
            FailureReason::OutputLimit,
            "exceeded an output limit".to_string(),
        ))
    } else {
        None
    }
}

/// Whether the policy's denials explain a failure. When the operator
/// could lift every one of them, the step is blocked for a human instead,
/// with a follow-up naming the grants.
fn denied(report: &mut Report, end: &StepEnd) -> bool {
    let reason = report.failure.as_ref().map(|f| f.reason);
    let denials = &end.denials;
    if denials.is_empty() || !matches!(reason, None | Some(FailureReason::WorkerFailed)) {
        return false;
    }
    let messages: Vec<&str> = denials.iter().map(|d| d.message.as_str()).collect();
    let grants: Vec<&str> = denials.iter().filter_map(|d| d.grant.as_deref()).collect();
    if grants.len() == denials.len() {
        report.outcome = StepExecutionOutcome::Blocked;
        report.needs_human = true;
        report.summary = bounds::cut(
            &format!("blocked by policy: {}", messages.join("; ")),
            bounds::SUMMARY,
        );
        report.followups.push(SuggestedFollowup {
            step_name: bounds::cut(
                &format!("grant: {}", grants.join("; ")),
                bounds::FOLLOWUP_REASON,
            ),
            step_kind: StepKind::Review,
            reason: bounds::cut(
                &format!(
                    "the worker was denied what the operator may allow: {}",
                    messages.join("; ")
                ),
                bounds::FOLLOWUP_REASON,
            ),
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::subprocess::DenialReason;
    use crate::worker::Followup;

    fn completed() -> Report {
        Report::answered(Ok(WorkerOutcome {
            status: WorkerStatus::Completed,
            summary: "done".into(),
            needs_human: false,
            exit_code: Some(0),
            followups: vec![],
        }))
    }

    fn end() -> StepEnd {
        StepEnd {
            timeout_sec: 5.0,
            disk_mib: 10,
            memory_mib: 64,
            ..Default::default()
        }
    }

    fn denial(grant: Option<&str>) -> Denial {
        Denial {
            reason: DenialReason::Program,
            message: "program `curl` is not allowed".into(),
            grant: grant.map(Into::into),
        }
    }

    fn reason(report: &Report) -> Option<FailureReason> {
        report.failure.as_ref().map(|f| f.reason)
    }

    #[test]
    fn a_completed_step_within_its_limits_stays_completed() {
        let report = classify(completed(), &end());
        assert_eq!(report.outcome, StepExecutionOutcome::Completed);
        assert!(report.failure.is_none());
    }

    #[test]
    fn a_late_answer_is_a_timeout_whatever_it_claims() {
        let report = classify(
            completed(),
            &StepEnd {
                timed_out: true,
                ..end()
            },
        );
        assert_eq!(report.outcome, StepExecutionOutcome::Failed);
        assert_eq!(reason(&report), Some(FailureReason::Timeout));
        assert_eq!(report.summary, "timed out after 5s: done");
        // A plugin that never loaded is not late.
        let invalid = Report::failed(FailureReason::InvalidPlugin, "bad");
        let report = classify(
            invalid,
            &StepEnd {
                timed_out: true,
                ..end()
            },
        );
        assert_eq!(reason(&report), Some(FailureReason::InvalidPlugin));
    }

    #[test]
    fn the_disk_budget_comes_before_memory_and_output() {
        let trapped = Report::trapped("unreachable-code-reached".into(), "trap");
        let all = StepEnd {
            disk: true,
            memory: true,
            output: true,
            ..end()
        };
        let report = classify(trapped.clone(), &all);
        assert_eq!(reason(&report), Some(FailureReason::DiskLimit));
        assert_eq!(
            report.failure.unwrap().trap_code.as_deref(),
            Some("unreachable-code-reached")
        );
        let report = classify(
            trapped.clone(),
            &StepEnd {
                disk: false,
                ..all.clone()
            },
        );
        assert_eq!(reason(&report), Some(FailureReason::MemoryLimit));
        let report = classify(
            trapped,
            &StepEnd {
                output: true,
                ..end()
            },
        );
        assert_eq!(reason(&report), Some(FailureReason::OutputLimit));
    }

    #[test]
    fn memory_counts_only_for_a_trap() {
        let failed = Report::failed(FailureReason::WorkerFailed, "gave up");
        let report = classify(
            failed,
            &StepEnd {
                memory: true,
                ..end()
            },
        );
        assert_eq!(reason(&report), Some(FailureReason::WorkerFailed));
    }

    #[test]
    fn denials_the_operator_can_lift_block_the_step_for_a_human() {
        let failed = Report::failed(FailureReason::WorkerFailed, "curl failed");
        let liftable = StepEnd {
            denials: vec![denial(Some("install `curl`"))],
            ..end()
        };
        let report = classify(failed.clone(), &liftable);
        assert_eq!(report.outcome, StepExecutionOutcome::Blocked);
        assert!(report.needs_human);
        assert_eq!(reason(&report), Some(FailureReason::PolicyDenied));
        assert_eq!(report.followups[0].step_name, "grant: install `curl`");
        // One denial no grant lifts: failed, not blocked.
        let never = StepEnd {
            denials: vec![denial(Some("install `curl`")), denial(None)],
            ..end()
        };
        let report = classify(failed, &never);
        assert_eq!(report.outcome, StepExecutionOutcome::Failed);
        assert_eq!(reason(&report), Some(FailureReason::PolicyDenied));
        assert!(report.followups.is_empty());
    }

    #[test]
    fn a_failed_answer_without_a_reason_is_the_workers_failure() {
        let report = Report::answered(Ok(WorkerOutcome {
            status: WorkerStatus::Failed,
            summary: "tests fail".into(),
            needs_human: false,
            exit_code: Some(1),
            followups: vec![Followup {
                step_name: "fix".into(),
                step_kind: "not-a-kind!".into(),
                reason: "r".into(),
            }],
        }));
        // A follow-up of an unknown kind is dropped.
        assert!(report.followups.is_empty());
        let report = classify(report, &end());
        assert_eq!(reason(&report), Some(FailureReason::WorkerFailed));
        assert_eq!(report.failure.unwrap().message, "tests fail");
    }

    #[test]
    fn a_blocked_answer_needs_a_human() {
        let report = Report::answered(Ok(WorkerOutcome {
            status: WorkerStatus::Blocked,
            summary: "which branch?".into(),
            needs_human: false,
            exit_code: None,
            followups: vec![],
        }));
        assert!(report.needs_human);
        assert_eq!(
            classify(report, &end()).outcome,
            StepExecutionOutcome::Blocked
        );
    }

    #[test]
    fn traps_have_stable_codes() {
        assert_eq!(trap_code(&Trap::StackOverflow), "stack-overflow");
        assert_eq!(
            trap_code(&Trap::UnreachableCodeReached),
            "unreachable-code-reached"
        );
        let report = Report::guest_error(&wasmtime::Error::from(Trap::Interrupt), "in execute");
        assert_eq!(reason(&report), Some(FailureReason::Timeout));
        let exit = wasmtime::Error::from(wasmtime_wasi::I32Exit(3));
        let report = Report::guest_error(&exit, "in execute");
        assert_eq!(report.exit_code, Some(3));
        assert_eq!(
            report.failure.unwrap().trap_code.as_deref(),
            Some("exit(3)")
        );
    }

    #[test]
    fn a_kind_asking_beyond_its_grant_is_blocked_with_the_lines_to_add() {
        let missing = Capabilities {
            programs: vec!["curl".into()],
            env: vec![],
            network: true,
        };
        let report = Report::blocked_on(&missing, "fetch", "fetch", "1.0.0");
        assert_eq!(report.outcome, StepExecutionOutcome::Blocked);
        assert!(report
            .summary
            .contains("programs = [\"curl\"], network = true"));
        assert!(report.summary.contains("[kinds.fetch]"));
    }
}
