//! The `codex` worker kind: drives the Codex CLI non-interactively
//! (`codex exec --json`, sandboxed to the worktree with `-s workspace-write`),
//! turns its JSON-lines events into lifecycle events, and decides the
//! outcome from them and from what codex says only on stderr
//! (`outcome.rs`: the table in the README). A resumed attempt continues
//! codex's own thread (`codex exec resume`) when it can.

mod diagnose;
mod diff;
mod outcome;
mod preflight;
mod stream;

use baa_worker_sdk::*;
use serde_json::json;

use diagnose::Diagnostics;
use outcome::{decide, Ended, OUTPUT_SCHEMA};
use stream::Turn;

/// Checkpoint type recording codex's thread, payload its id.
const THREAD_CHECKPOINT: &str = "codex-thread";
/// How a summary names the thread (a resumed attempt looks for it there
/// when it resumes from a checkpoint of another type).
const THREAD_NOTE: &str = "codex thread ";
/// Times in a row (without progress between) codex may say it waits for
/// the network before it is stopped.
const NETWORK_WAITS: usize = 2;

fn build_prompt(request: &Step, continuing: bool) -> Result<String, ExecuteError> {
    let task = request
        .prompt_summary
        .as_deref()
        .or(request.command.as_deref())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ExecuteError::InvalidRequest(
                "`promptSummary` (or `command`) is required for the codex worker kind: it is the task given to Codex".into(),
            )
        })?;
    let mut prompt = if continuing {
        format!(
            "This is attempt {} of the `{}` step \"{}\"; continue where the earlier attempt stopped.\n\nTask:\n{}\n",
            request.attempt, request.step_kind, request.step_name, task
        )
    } else {
        format!(
            "You are carrying out the `{}` step \"{}\" of task {} (attempt {}).\n\nTask:\n{}\n",
            request.step_kind, request.step_name, request.task_id, request.attempt, task
        )
    };
    if let (Some(resume), false) = (&request.resume, continuing) {
        prompt.push_str(&format!(
            "\nAn earlier attempt got this far (checkpoint {}): {}\n",
            resume.seq, resume.summary
        ));
    }
    prompt.push_str(
        "\nWork only inside the current directory. When you are done, answer with the JSON object \
         the output schema describes: status `completed` when the task is done, `failed` when it \
         cannot be done, `blocked` when a person must decide or act first (then say what in the \
         summary and set needsHuman); suggest follow-up steps if any.\n",
    );
    Ok(prompt)
}

/// The thread an earlier attempt left: its `codex-thread` checkpoint's
/// payload, else the last thread note of the step's summary (a host
/// `summary` checkpoint carries the whole summary in its payload; its own
/// summary line may be cut).
fn earlier_thread(resume: &Resume) -> Option<String> {
    if resume.checkpoint_type == THREAD_CHECKPOINT {
        let payload = resume.payload.as_deref()?;
        return uuid(String::from_utf8_lossy(payload).trim());
    }
    let payload_summary = (resume.payload.as_deref())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .and_then(|v| v["summary"].as_str().map(str::to_string));
    let found = [payload_summary.as_deref(), Some(resume.summary.as_str())]
        .into_iter()
        .flatten()
        .find_map(|text| {
            // The kind's note ends its summary; a model's words before it
            // may say anything, so the last mention is the one.
            let at = text.rfind(THREAD_NOTE)? + THREAD_NOTE.len();
            uuid(text[at..].get(..36)?)
        });
    found
}

/// `text` when it is a UUID (8-4-4-4-12 hexadecimal digits).
fn uuid(text: &str) -> Option<String> {
    let groups: Vec<&str> = text.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    shaped.then(|| text.to_string())
}

/// One run of codex and what it said.
struct Run {
    turn: Turn,
    diagnostics: Diagnostics,
    status: ExitStatus,
}

/// Run codex with `args`, the prompt on stdin; stop it when it keeps
/// waiting for a network it cannot reach.
fn run_codex(args: &[&str], prompt: &str) -> Result<Run, ExecuteError> {
    emit(
        Level::Info,
        "codex.exec",
        &format!("codex {}", args.join(" ")),
        None,
    );
    let process =
        spawn(&Command::new("codex", args.iter().copied()).stdin(prompt)).map_err(|e| {
            ExecuteError::Failed(format!("could not run codex: {}", describe_spawn_error(&e)))
        })?;
    let (mut turn, mut diagnostics) = (Turn::default(), Diagnostics::default());
    let status = loop {
        match process.next() {
            Output::Stdout(bytes) => turn.stdout(&bytes, &mut diagnostics),
            Output::Stderr(bytes) => diagnostics.stderr(&bytes),
            Output::Exited(status) => break status,
        }
        if diagnostics.network_streak >= NETWORK_WAITS && !turn.completed {
            emit(
                Level::Warn,
                "codex.stopped",
                "codex keeps waiting for a network it cannot reach: stopped",
                None,
            );
            process.kill();
            break ExitStatus {
                code: None,
                signal: Some(9),
                timed_out: false,
                output_limit_exceeded: false,
            };
        }
    };
    turn.finish(&mut diagnostics);
    diagnostics.finish();
    Ok(Run {
        turn,
        diagnostics,
        status,
    })
}

fn exec_args(schema: &str) -> Vec<&str> {
    vec![
        "exec",
        "--json",
        "--color",
        "never",
        "-s",
        "workspace-write",
        "--output-schema",
        schema,
        "-",
    ]
}

fn resume_args<'a>(schema: &'a str, thread: &'a str) -> Vec<&'a str> {
    vec![
        "exec",
        "resume",
        "--json",
        "-c",
        "sandbox_mode=\"workspace-write\"",
        "--output-schema",
        schema,
        thread,
        "-",
    ]
}

/// A resume codex refused because it has no record of the thread.
fn thread_unknown(run: &Run) -> bool {
    !run.turn.started
        && (run.diagnostics.last_error_line.as_deref())
            .is_some_and(|l| l.contains("no rollout found") || l.contains("thread/resume"))
}

fn drive(step: Step) -> Result<WorkerOutcome, ExecuteError> {
    let schema =
        scratch_file("codex-output-schema.json", OUTPUT_SCHEMA.as_bytes()).map_err(|e| {
            ExecuteError::Failed(format!(
                "cannot write the output schema: {}",
                describe_spawn_error(&e)
            ))
        })?;
    let pre = preflight::check();
    let base = diff::head();
    if let Some(problem) = pre.problem {
        let mut diagnostics = Diagnostics::default();
        diagnostics.note(problem);
        let none = ExitStatus {
            code: None,
            signal: None,
            timed_out: false,
            output_limit_exceeded: false,
        };
        return Ok(decide(&Ended {
            turn: &Turn::default(),
            diagnostics: &diagnostics,
            status: &none,
            provider: pre.provider.as_ref(),
            thread_note: String::new(),
        }));
    }
    let earlier = step.resume.as_ref().and_then(earlier_thread);
    let run = match &earlier {
        Some(thread) => {
            let run = run_codex(&resume_args(&schema, thread), &build_prompt(&step, true)?)?;
            if thread_unknown(&run) {
                emit(
                    Level::Warn,
                    "codex.resume",
                    &format!("codex has no record of thread {thread} (another CODEX_HOME?): starting a new thread with the checkpoint's summary"),
                    Some(&json!({ "threadId": thread, "continued": false }).to_string()),
                );
                run_codex(&exec_args(&schema), &build_prompt(&step, false)?)?
            } else {
                emit(
                    Level::Info,
                    "codex.resume",
                    &format!("continued codex thread {thread}"),
                    Some(&json!({ "threadId": thread, "continued": true }).to_string()),
                );
                run
            }
        }
        None => run_codex(&exec_args(&schema), &build_prompt(&step, false)?)?,
    };
    if let Some(base) = &base {
        diff::declare(base);
    }
    let thread_note = match &run.turn.thread_id {
        Some(id) => {
            if step.checkpoints_enabled {
                let recorded = capture_checkpoint(
                    THREAD_CHECKPOINT,
                    &format!("{THREAD_NOTE}{id}"),
                    Some(id.as_bytes()),
                );
                if let Err(e) = recorded {
                    emit(
                        Level::Warn,
                        "codex.thread",
                        &format!("the thread was not recorded: {e:?}"),
                        None,
                    );
                }
            }
            format!("; {THREAD_NOTE}{id}")
        }
        None => String::new(),
    };
    Ok(decide(&Ended {
        turn: &run.turn,
        diagnostics: &run.diagnostics,
        status: &run.status,
        provider: pre.provider.as_ref(),
        thread_note,
    }))
}

struct Codex;

impl Worker for Codex {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("codex")
            .description("Drives the Codex CLI (codex exec --json) in the worktree")
            .program("codex")
            .program("git")
            .env("GIT_INDEX_FILE")
            .env("CODEX_HOME")
            .env("OPENAI_API_KEY")
            .env("OPENAI_BASE_URL")
            .env("BAA_CODEX_API_KEY")
            .network()
    }

    fn execute(step: Step) -> Result<WorkerOutcome, ExecuteError> {
        drive(step)
    }

    fn resume(step: Step, _from: Resume) -> Result<WorkerOutcome, ExecuteError> {
        drive(step)
    }
}

export_worker!(Codex);
