//! `run`, `resume` and `prepare`: choose the attempt, show the step live,
//! cancel it on Ctrl-C or SIGTERM, and turn its outcome into an exit code.

use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use anyhow::Context;
use baa_runner::checkpoints::StepHistory;
use baa_runner::contracts::{StepExecutionOutcome, StepExecutionRequest, StepExecutionResult};
use baa_runner::run::AttemptState;
use baa_runner::Runner;

use crate::live::{LiveView, Verbosity};
use crate::render;
use crate::{exit, InvalidInput, RunArgs, Streams};

/// Which attempt of the step to run, and where to resume from.
pub enum Attempt {
    /// The request's own `attempt` (and its `checkpoint.resumeFromSeq`).
    AsRequested,
    /// The next free attempt; from the latest checkpoint when `resume`.
    /// Without `resume`, an attempt that `prepare` made and nothing ran is
    /// taken when `run_prepared`.
    Next { resume: bool, run_prepared: bool },
    /// The next free attempt, resuming from checkpoint `seq`.
    ResumeFrom(u32),
}

/// Point `request` at the attempt to run.
pub fn choose_attempt(
    runner: &Runner,
    request: &mut StepExecutionRequest,
    attempt: Attempt,
) -> anyhow::Result<()> {
    let seq = match attempt {
        Attempt::AsRequested => return Ok(()),
        Attempt::Next {
            resume: false,
            run_prepared,
        } => {
            let next = runner.next_attempt(request)?;
            let last = next - 1;
            request.attempt = match runner.attempt_state(request, last)? {
                AttemptState::Prepared if run_prepared && last > 0 => last,
                AttemptState::Prepared if last > 0 => {
                    return Err(InvalidInput(format!(
                        "attempt {last} of this step is prepared and has not run: `baa-runner run --next-attempt` executes it"
                    ))
                    .into())
                }
                _ => next,
            };
            return Ok(());
        }
        Attempt::Next { resume: true, .. } => {
            let last = runner.next_attempt(request)? - 1;
            if last > 0 && runner.attempt_state(request, last)? == AttemptState::Prepared {
                return Err(InvalidInput(format!(
                    "attempt {last} of this step is prepared and has not run: run it first (`baa-runner run --next-attempt`)"
                ))
                .into());
            }
            let step_dir = runner.step_dir(request)?;
            let latest = StepHistory::load(&step_dir, 0)
                .records
                .iter()
                .map(|r| r.seq)
                .max();
            Some(latest.ok_or_else(|| {
                InvalidInput(format!(
                    "--resume: the step has no checkpoints yet ({}); run it without --resume",
                    step_dir.display()
                ))
            })?)
        }
        Attempt::ResumeFrom(seq) => Some(seq),
    };
    request.attempt = runner.next_attempt(request)?;
    if let Some(seq) = seq {
        request
            .checkpoint
            .get_or_insert_with(Default::default)
            .resume_from_seq = Some(seq);
    }
    Ok(())
}

/// Run `request` (or only check it, with `--dry-run`) and return the exit code.
pub fn run(
    runner: &Runner,
    request: StepExecutionRequest,
    args: &RunArgs,
    streams: Streams,
) -> anyhow::Result<u8> {
    let tokio = runtime()?;
    if args.dry_run {
        let report = tokio.block_on(runner.dry_run(&request))?;
        if args.json {
            crate::print_json(&report)?;
        } else {
            render::dry_run(&report, streams.stdout);
        }
        return Ok(match () {
            _ if report.ready => 0,
            _ if report.attempt_state == AttemptState::Taken => exit::INVALID_INPUT,
            _ => exit::BLOCKED,
        });
    }
    let verbosity = match (args.quiet, args.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, true) => Verbosity::Verbose,
        (false, false) => Verbosity::Normal,
    };
    let title = format!("{} · {}", request.worker_kind, request.step_name);
    let paint = if args.json {
        streams.stderr
    } else {
        streams.stdout
    };
    let view = LiveView::new(&title, args.json, verbosity, paint);
    let signal = Arc::new(AtomicI32::new(0));
    let result = tokio.block_on(async {
        let prepared = runner.prepare(request, Some(view.observer()))?;
        let cancel = cancelled_on_signal(signal.clone())?;
        anyhow::Ok(runner.execute_with(prepared, &cancel).await?)
    });
    view.finish();
    let result = result?;
    // The records are written: a closed stdout loses only this copy.
    if args.json {
        let _ = crate::print_json(&result);
    } else {
        render::summary(&result, streams.stdout);
    }
    Ok(exit_after(&result, signal.load(Ordering::SeqCst)))
}

/// The exit code of a step that ended with `result`, a signal (`signal`,
/// 0 for none) having been received: 128 + the signal when it interrupted
/// the step; a signal that came after the step ended changed nothing.
pub fn exit_after(result: &StepExecutionResult, signal: i32) -> u8 {
    let interrupted = result
        .state
        .failure
        .as_ref()
        .is_some_and(|f| f.reason == baa_runner::contracts::FailureReason::Interrupted);
    match signal {
        signal if signal != 0 && interrupted => 128 + signal as u8,
        _ => exit_code(result),
    }
}

/// `prepare`: the run directory, metadata, state and logs, nothing run.
pub fn prepare(
    runner: &Runner,
    request: StepExecutionRequest,
    json: bool,
    next_attempt: bool,
) -> anyhow::Result<u8> {
    let result = runner.prepare_only(request)?;
    if json {
        crate::print_json(&result)?;
    } else {
        println!(
            "prepared {}; `baa-runner run {}REQUEST` executes it",
            result.log_paths.run_dir,
            if next_attempt { "--next-attempt " } else { "" }
        );
    }
    Ok(0)
}

fn exit_code(result: &StepExecutionResult) -> u8 {
    match result.outcome {
        StepExecutionOutcome::Completed | StepExecutionOutcome::Prepared => 0,
        StepExecutionOutcome::Failed => exit::FAILED,
        StepExecutionOutcome::Blocked => exit::BLOCKED,
    }
}

/// A multi-threaded runtime for a step.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A token cancelled at the first SIGINT or SIGTERM (within a runtime);
/// `signal` is set to its number.
pub fn cancelled_on_signal(
    signal: Arc<AtomicI32>,
) -> anyhow::Result<baa_runner::CancellationToken> {
    use tokio::signal::unix::{signal as watch, SignalKind};
    let token = baa_runner::CancellationToken::new();
    let mut interrupt = watch(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = watch(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let stop = token.clone();
    tokio::spawn(async move {
        let number = tokio::select! {
            _ = interrupt.recv() => libc::SIGINT,
            _ = terminate.recv() => libc::SIGTERM,
        };
        signal.store(number, Ordering::SeqCst);
        stop.cancel();
    });
    Ok(token)
}

/// A step directory from a step directory or one of its attempts; a
/// directory that does not exist is bad input.
pub fn step_dir_of(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    if !dir.is_dir() {
        return Err(InvalidInput(format!(
            "{} is not a directory: give a step directory (<runs root>/<task>/<run>/<step>) or one of its attempt-<n> directories",
            dir.display()
        ))
        .into());
    }
    let step_dir = match dir.parent() {
        Some(parent) if attempt_of(dir).is_some() => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    };
    // A step directory holds attempt-<n> directories and nothing else.
    let attempts = std::fs::read_dir(&step_dir)
        .map(|entries| (entries.flatten()).any(|e| attempt_of(&e.path()).is_some()))
        .unwrap_or(false);
    if !attempts {
        return Err(InvalidInput(format!(
            "{} is not a step directory (it has no attempt-<n> directories): give <runs root>/<task>/<run>/<step>",
            step_dir.display()
        ))
        .into());
    }
    Ok(step_dir)
}

/// The attempt number of an `attempt-<n>` directory.
pub fn attempt_of(dir: &Path) -> Option<u32> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("attempt-")?
        .parse()
        .ok()
}
