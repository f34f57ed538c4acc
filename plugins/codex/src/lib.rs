//! The `codex` worker kind: drives the Codex CLI non-interactively
//! (`codex exec --json`, sandboxed to the worktree with `-s workspace-write`),
//! turns its JSON-lines events into lifecycle events, and maps its end state
//! onto completed / failed / blocked.
//!
//! How the outcome is decided (`codex exec` never stops to ask for approval):
//! 1. `turn.failed`, or a non-zero exit, is **failed** (the error message is
//!    the summary; the host adds `timeout` when the step's time ran out).
//! 2. After `turn.completed`, the final agent message is read as the
//!    structured answer requested with `--output-schema`
//!    (`{status, summary, needsHuman, followups}`): `status` decides, and
//!    `blocked` or `needsHuman: true` means **blocked / needsHuman**.
//! 3. When the final message is not such an answer, a turn in which Codex had
//!    commands declined is **blocked** (a person must grant or run them);
//!    otherwise **completed**, with the message as the summary.

use baa_worker_sdk::*;
use serde::Deserialize;
use serde_json::{json, Value};

/// The final answer Codex is asked to give.
const OUTPUT_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "status": { "type": "string", "enum": ["completed", "failed", "blocked"] },
    "summary": { "type": "string" },
    "needsHuman": { "type": "boolean" },
    "followups": {
      "type": "array",
      "items": {
        "type": "object",
        "properties": {
          "stepName": { "type": "string" },
          "stepKind": { "type": "string" },
          "reason": { "type": "string" }
        },
        "required": ["stepName", "stepKind", "reason"],
        "additionalProperties": false
      }
    }
  },
  "required": ["status", "summary", "needsHuman", "followups"],
  "additionalProperties": false
}"#;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FinalAnswer {
    status: String,
    summary: String,
    #[serde(default)]
    needs_human: bool,
    #[serde(default)]
    followups: Vec<Followup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Followup {
    step_name: String,
    step_kind: String,
    reason: String,
}

/// What the event stream said, accumulated.
#[derive(Default)]
struct Turn {
    completed: bool,
    failed: Option<String>,
    last_message: Option<String>,
    last_error: Option<String>,
    commands: u32,
    failed_commands: u32,
    declined: Vec<String>,
    files_changed: Vec<String>,
    usage: Option<Value>,
}

impl Turn {
    /// Handle one JSON line of `codex exec --json`. Unknown events and
    /// fields are ignored: Codex adds them over time.
    fn handle(&mut self, line: &str) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let kind = event["type"].as_str().unwrap_or_default();
        match kind {
            "thread.started" => emit(
                Level::Info,
                "codex.thread",
                "codex started a thread",
                Some(&json!({ "threadId": event["thread_id"] }).to_string()),
            ),
            "item.completed" => self.item(&event["item"]),
            "turn.completed" => {
                self.completed = true;
                self.usage = Some(event["usage"].clone());
                emit(
                    Level::Info,
                    "codex.usage",
                    &format!(
                        "tokens: {} in, {} out",
                        event["usage"]["input_tokens"], event["usage"]["output_tokens"]
                    ),
                    Some(&event["usage"].to_string()),
                );
            }
            "turn.failed" => {
                let message = event["error"]["message"].as_str().unwrap_or("turn failed");
                self.failed = Some(message.to_string());
                emit(Level::Error, "codex.turn_failed", message, None);
            }
            "error" => {
                let message = event["message"].as_str().unwrap_or("error");
                self.last_error = Some(message.to_string());
                emit(Level::Warn, "codex.error", message, None);
            }
            _ => {}
        }
    }

    fn item(&mut self, item: &Value) {
        let text = |key: &str| item[key].as_str().unwrap_or_default().to_string();
        match item["type"].as_str().unwrap_or_default() {
            "agent_message" => {
                let message = text("text");
                emit(Level::Info, "codex.message", &message, None);
                self.last_message = Some(message);
            }
            "reasoning" => emit(Level::Debug, "codex.reasoning", &text("text"), None),
            "command_execution" => {
                self.commands += 1;
                let command = text("command");
                let status = text("status");
                let exit_code = item["exit_code"].as_i64();
                if status == "declined" {
                    self.declined.push(command.clone());
                } else if status == "failed" || exit_code.is_some_and(|c| c != 0) {
                    self.failed_commands += 1;
                }
                emit(
                    if status == "completed" {
                        Level::Info
                    } else {
                        Level::Warn
                    },
                    "codex.command",
                    &format!(
                        "{command} ({status}, exit {})",
                        exit_code
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into())
                    ),
                    Some(
                        &json!({ "command": command, "status": status, "exitCode": exit_code })
                            .to_string(),
                    ),
                );
            }
            "file_change" => {
                let changes = item["changes"].as_array().cloned().unwrap_or_default();
                for change in &changes {
                    if let Some(path) = change["path"].as_str() {
                        if !self.files_changed.iter().any(|p| p == path) {
                            self.files_changed.push(path.to_string());
                        }
                    }
                }
                emit(
                    Level::Info,
                    "codex.file_change",
                    &format!("{} file(s) changed ({})", changes.len(), text("status")),
                    Some(&json!({ "changes": changes }).to_string()),
                );
            }
            "error" => {
                // Warnings such as missing model metadata; not terminal.
                emit(Level::Warn, "codex.warning", &text("message"), None);
            }
            "todo_list" => emit(
                Level::Info,
                "codex.plan",
                "updated its plan",
                Some(&item["items"].to_string()),
            ),
            "mcp_tool_call" | "web_search" => emit(
                Level::Info,
                "codex.tool",
                item["type"].as_str().unwrap_or_default(),
                Some(&item.to_string()),
            ),
            _ => {}
        }
    }

    fn facts(&self) -> String {
        let mut facts = format!("{} command(s) run", self.commands);
        if self.failed_commands > 0 {
            facts.push_str(&format!(", {} failed", self.failed_commands));
        }
        if !self.declined.is_empty() {
            facts.push_str(&format!(", {} declined", self.declined.len()));
        }
        if !self.files_changed.is_empty() {
            facts.push_str(&format!(
                "; files changed: {}",
                self.files_changed.join(", ")
            ));
        }
        facts
    }
}

fn build_prompt(request: &Step) -> Result<String, ExecuteError> {
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
    let mut prompt = format!(
        "You are carrying out the `{}` step \"{}\" of task {} (attempt {}).\n\nTask:\n{}\n",
        request.step_kind, request.step_name, request.task_id, request.attempt, task
    );
    if let Some(resume) = &request.resume {
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

struct Codex;

impl Worker for Codex {
    fn describe(package: WorkerInfo) -> WorkerInfo {
        package
            .named("codex")
            .description("Drives the Codex CLI (codex exec --json) in the worktree")
            .program("codex")
            .env("CODEX_HOME")
            .env("OPENAI_API_KEY")
            .env("OPENAI_BASE_URL")
            .env("BAA_CODEX_API_KEY")
            .network()
    }

    fn execute(request: Step) -> Result<WorkerOutcome, ExecuteError> {
        let prompt = build_prompt(&request)?;
        let schema =
            scratch_file("codex-output-schema.json", OUTPUT_SCHEMA.as_bytes()).map_err(|e| {
                ExecuteError::Failed(format!(
                    "cannot write the output schema: {}",
                    describe_spawn_error(&e)
                ))
            })?;
        let args = [
            "exec",
            "--json",
            "--color",
            "never",
            "-s",
            "workspace-write",
            "--output-schema",
            schema.as_str(),
            "-",
        ];
        emit(
            Level::Info,
            "codex.exec",
            &format!("codex {}", args.join(" ")),
            None,
        );

        let mut turn = Turn::default();
        let mut pending = Vec::new();
        let status = run_streaming(&Command::new("codex", args).stdin(prompt), |output| {
            if let Output::Stdout(bytes) = output {
                pending.extend_from_slice(bytes);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    turn.handle(String::from_utf8_lossy(&line).trim());
                }
            }
        })
        .map_err(|e| {
            ExecuteError::Failed(format!("could not run codex: {}", describe_spawn_error(&e)))
        })?;
        if !pending.is_empty() {
            turn.handle(String::from_utf8_lossy(&pending).trim());
        }

        let facts = turn.facts();
        if request.checkpoints_enabled {
            let _ = capture_checkpoint("log-tail", &format!("codex turn ended: {facts}"), None);
        }
        if let Some(error) = turn.failed.clone() {
            return Ok(
                WorkerOutcome::failed(format!("codex turn failed: {error} ({facts})"))
                    .with_exit_code(status.code),
            );
        }
        if !turn.completed || status.code != Some(0) {
            let why = turn.last_error.clone().unwrap_or_else(|| {
                format!(
                    "codex ended without finishing its turn ({})",
                    describe_exit(&status)
                )
            });
            return Ok(
                WorkerOutcome::failed(format!("{why} ({facts})")).with_exit_code(status.code)
            );
        }

        let answer = turn
            .last_message
            .as_deref()
            .and_then(|m| serde_json::from_str::<FinalAnswer>(m).ok());
        let outcome = match answer {
            Some(answer) => {
                let summary = format!("{} ({facts})", answer.summary);
                let mut outcome = match answer.status.as_str() {
                    "failed" => WorkerOutcome::failed(summary),
                    "blocked" => WorkerOutcome::blocked(summary),
                    _ if answer.needs_human => WorkerOutcome::blocked(summary),
                    _ => WorkerOutcome::completed(summary),
                };
                for f in answer.followups {
                    outcome = outcome.with_followup(&f.step_name, &f.step_kind, &f.reason);
                }
                outcome
            }
            None if !turn.declined.is_empty() => WorkerOutcome::blocked(format!(
                "codex was refused {} command(s) ({}); grant them or run them by hand ({facts})",
                turn.declined.len(),
                turn.declined.join("; ")
            )),
            None => WorkerOutcome::completed(format!(
                "{} ({facts})",
                turn.last_message
                    .as_deref()
                    .unwrap_or("codex finished without a message")
            )),
        };
        Ok(outcome.with_exit_code(status.code))
    }
}

export_worker!(Codex);
