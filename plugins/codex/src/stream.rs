//! The JSON lines of `codex exec --json` on stdout, turned into lifecycle
//! events as they arrive and accumulated into what the turn did. Unknown
//! events and fields are ignored: codex adds them over time.

use baa_worker_sdk::*;
use serde_json::{json, Value};

use crate::diagnose::{recognise, Diagnostics};

/// What the event stream said, accumulated.
#[derive(Default)]
pub struct Turn {
    pub thread_id: Option<String>,
    pub started: bool,
    pub completed: bool,
    pub failed: Option<String>,
    pub last_message: Option<String>,
    pub last_error: Option<String>,
    /// Commands that ran (whatever their exit code), failed, were declined.
    pub commands_run: u32,
    pub commands_failed: u32,
    pub declined: Vec<String>,
    pub files_changed: Vec<String>,
    pending: Vec<u8>,
}

impl Turn {
    /// Feed a chunk of codex's stdout.
    pub fn stdout(&mut self, bytes: &[u8], diagnostics: &mut Diagnostics) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.handle(String::from_utf8_lossy(&line).trim(), diagnostics);
        }
    }

    /// The end of stdout.
    pub fn finish(&mut self, diagnostics: &mut Diagnostics) {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.handle(String::from_utf8_lossy(&rest).trim(), diagnostics);
        }
    }

    /// Handle one JSON line.
    fn handle(&mut self, line: &str, diagnostics: &mut Diagnostics) {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return;
        };
        match event["type"].as_str().unwrap_or_default() {
            "thread.started" => {
                self.thread_id = event["thread_id"].as_str().map(str::to_string);
                emit(
                    Level::Info,
                    "codex.thread",
                    &format!(
                        "codex started thread {}",
                        self.thread_id.as_deref().unwrap_or("?")
                    ),
                    Some(&json!({ "threadId": event["thread_id"] }).to_string()),
                );
            }
            "turn.started" => {
                self.started = true;
                diagnostics.progress();
            }
            "item.started" => {
                diagnostics.progress();
                self.item_started(&event["item"]);
            }
            "item.completed" => {
                diagnostics.progress();
                self.item(&event["item"], diagnostics);
            }
            "turn.completed" => {
                self.completed = true;
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
                if let Some(finding) = recognise(message) {
                    diagnostics.note(finding);
                }
                emit(Level::Error, "codex.turn_failed", message, None);
            }
            "error" => {
                // Not terminal: codex sends one on each retry.
                let message = event["message"].as_str().unwrap_or("error");
                self.last_error = Some(message.to_string());
                match recognise(message) {
                    Some(finding) => diagnostics.note(finding),
                    None => emit(Level::Warn, "codex.error", message, None),
                }
            }
            _ => {}
        }
    }

    /// A command starts: visible at once, not only when it ends.
    fn item_started(&mut self, item: &Value) {
        if item["type"] == "command_execution" {
            let command = item["command"].as_str().unwrap_or_default();
            emit(
                Level::Info,
                "codex.command.started",
                command,
                Some(&json!({ "command": command, "id": item["id"] }).to_string()),
            );
        }
    }

    fn item(&mut self, item: &Value, diagnostics: &mut Diagnostics) {
        let text = |key: &str| item[key].as_str().unwrap_or_default().to_string();
        match item["type"].as_str().unwrap_or_default() {
            "agent_message" => {
                let message = text("text");
                emit(Level::Info, "codex.message", &message, None);
                self.last_message = Some(message);
            }
            "reasoning" => emit(Level::Debug, "codex.reasoning", &text("text"), None),
            "command_execution" => self.command(item),
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
                let message = text("message");
                match recognise(&message) {
                    Some(finding) => diagnostics.note(finding),
                    None => emit(Level::Warn, "codex.warning", &message, None),
                }
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

    fn command(&mut self, item: &Value) {
        let command = item["command"].as_str().unwrap_or_default().to_string();
        let status = item["status"].as_str().unwrap_or_default().to_string();
        let exit_code = item["exit_code"].as_i64();
        if status == "declined" {
            self.declined.push(command.clone());
        } else {
            self.commands_run += 1;
            if status == "failed" || exit_code.is_some_and(|c| c != 0) {
                self.commands_failed += 1;
            }
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
                &json!({ "command": command, "status": status, "exitCode": exit_code }).to_string(),
            ),
        );
    }

    /// The turn in numbers, for summaries.
    pub fn facts(&self) -> String {
        let mut facts = format!("{} command(s) run", self.commands_run);
        if self.commands_failed > 0 {
            facts.push_str(&format!(", {} failed", self.commands_failed));
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
