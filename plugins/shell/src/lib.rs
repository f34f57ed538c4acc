//! The `shell` worker kind: runs the request's `command` with `sh -c` through
//! the host's subprocess capability; the outcome follows the exit status.

use baa_worker_sdk::*;

/// How many trailing output lines the summary quotes.
const SUMMARY_LINES: usize = 5;
/// How much trailing output the worker keeps to build the summary.
const TAIL_BYTES: usize = 16 * 1024;

struct Shell;

impl Worker for Shell {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("shell")
            .description("Runs the step's command with sh -c in the worktree")
            .program("sh")
    }

    fn execute(request: Step) -> Result<WorkerOutcome, ExecuteError> {
        let command = request
            .command
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                ExecuteError::InvalidRequest(
                    "`command` is required for the shell worker kind: set it to the shell command to run".into(),
                )
            })?;
        emit(Level::Info, "shell.command", command, None);

        let mut tail = Vec::new();
        let status = run_streaming(&Command::new("sh", ["-c", command]), |output| {
            if let Output::Stdout(bytes) | Output::Stderr(bytes) = output {
                tail.extend_from_slice(bytes);
                if tail.len() > 2 * TAIL_BYTES {
                    tail.drain(..tail.len() - TAIL_BYTES);
                }
            }
        })
        .map_err(|e| {
            ExecuteError::Failed(format!(
                "could not run `sh -c {command}`: {}",
                describe_spawn_error(&e)
            ))
        })?;

        let text = String::from_utf8_lossy(&tail);
        let last = last_lines(&text, SUMMARY_LINES);
        let mut summary = format!("`{command}`: {}", describe_exit(&status));
        if !last.is_empty() {
            summary.push('\n');
            summary.push_str(&last.join("\n"));
        }

        if request.checkpoints_enabled {
            let _ = capture_checkpoint("summary", &summary, None);
        }
        let outcome = if status.code == Some(0) {
            WorkerOutcome::completed(summary)
        } else {
            WorkerOutcome::failed(summary)
        };
        Ok(outcome.with_exit_code(status.code))
    }
}

export_worker!(Shell);
