//! Embedding baa-runner in a conductor: one runner, three shell steps
//! started at once, their events streamed live, the slow one cancelled as
//! soon as it reports progress, and every result collected.
//!
//! `cargo run -p baa-embed-example -- [WORKTREE [RUNS_ROOT]]` (default: a
//! new scratch git repository; the runs root defaults to
//! `$XDG_STATE_HOME/baa-runner/runs`). Exits 0 when two steps completed and
//! the cancelled one ended `failed` / `interrupted`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use baa_runner::contracts::{FailureReason, StepExecutionOutcome, StepExecutionRequest};
use baa_runner::{Runner, RunnerConfig, StepEventBody, StepHandle};

/// A step request for the built-in `shell` kind.
fn request(
    worktree: &Path,
    runs: Option<&Path>,
    step: &str,
    command: &str,
) -> anyhow::Result<StepExecutionRequest> {
    let json = serde_json::json!({
        "taskId": "embed-demo",
        "runId": run_id(),
        "stepId": step,
        "attempt": 1,
        "stepName": step,
        "stepKind": "shell",
        "workerKind": "shell",
        "timeoutSec": 60,
        "runtime": { "repoRoot": worktree, "worktreePath": worktree, "runsRootDir": runs },
        "command": command,
        "checkpoint": { "mode": "capture" },
    });
    Ok(serde_json::from_value(json)?)
}

/// A run id no earlier run of this example used.
fn run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("run-{}-{}", now.as_secs(), std::process::id())
}

/// A scratch git repository with one commit.
fn scratch_repo() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("baa-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("README.md"), "# embed demo\n")?;
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README.md"],
        &[
            "-c",
            "user.name=demo",
            "-c",
            "user.email=demo@example.test",
            "commit",
            "-q",
            "-m",
            "start",
        ],
    ] {
        let status = Command::new("git").args(args).current_dir(&dir).status()?;
        if !status.success() {
            bail!("git {args:?} failed in {}", dir.display());
        }
    }
    Ok(dir)
}

/// Print a step's events as they happen; cancel it at its first output
/// when `cancel_on_output`. Returns how many events it saw.
async fn follow(name: &str, handle: &mut StepHandle, cancel_on_output: bool) -> u64 {
    let mut seen = 0;
    while let Some(event) = handle.events().next().await {
        seen += 1;
        match &event.body {
            StepEventBody::Lifecycle(entry) => {
                println!("[{name} #{}] {}: {}", event.seq, entry.event, entry.message)
            }
            StepEventBody::Output { stream, bytes } => {
                let stream = stream.as_str();
                for line in String::from_utf8_lossy(bytes).lines() {
                    println!("[{name} #{}] {stream}: {line}", event.seq);
                }
                if cancel_on_output {
                    println!("[{name}] cancelling");
                    handle.cancel();
                }
            }
            StepEventBody::Finished(finished) => {
                println!("[{name} #{}] finished: {:?}", event.seq, finished.outcome)
            }
        }
    }
    seen
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let worktree = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => scratch_repo()?,
    };
    let runs = std::env::args_os().nth(2).map(PathBuf::from);
    let worktree = worktree
        .canonicalize()
        .with_context(|| format!("{} is not a directory", worktree.display()))?;
    // Built once: engine, plugins, policy and limits; shared by every step.
    let runner = Runner::new(RunnerConfig::default())?;

    let steps = [
        (
            "count",
            "for i in 1 2 3; do echo tick $i; sleep 0.1; done",
            false,
        ),
        ("status", "git status --short; echo clean", false),
        ("slow", "echo working; sleep 600; echo never", true),
    ];
    let mut tasks = Vec::new();
    for (name, command, cancel) in steps {
        let mut handle = runner.start(request(&worktree, runs.as_deref(), name, command)?)?;
        tasks.push(tokio::spawn(async move {
            let events = follow(name, &mut handle, cancel).await;
            (name, events, handle.result().await)
        }));
    }

    let mut ok = true;
    for task in tasks {
        let (name, events, result) = task.await?;
        let result = result?;
        let reason = result.state.failure.as_ref().map(|f| f.reason);
        println!(
            "{name}: {} after {} ms, {events} live events; record in {}",
            result.outcome.as_str(),
            result.duration_ms,
            result.log_paths.run_dir
        );
        let expected = if name == "slow" {
            result.outcome == StepExecutionOutcome::Failed
                && reason == Some(FailureReason::Interrupted)
        } else {
            result.ok
        };
        ok &= expected;
    }
    if !ok {
        bail!("a step did not end as expected");
    }
    println!("two steps completed; the cancelled one is recorded as interrupted");
    Ok(())
}
