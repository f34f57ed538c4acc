//! How a codex run ends: the one place that reads what the stream, stderr
//! and the exit status said and decides completed, failed or blocked, with
//! the follow-up a person needs. The README's outcome table mirrors it.

use baa_worker_sdk::*;
use serde::Deserialize;

use crate::diagnose::{Diagnostics, Finding};
use crate::stream::Turn;

/// The final answer Codex is asked to give (`--output-schema`).
pub const OUTPUT_SCHEMA: &str = r#"{
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

/// Where the provider is, when the pre-flight learned it.
pub struct Provider {
    pub url: String,
    pub port: Option<u16>,
}

/// What the run of codex left to decide from.
pub struct Ended<'a> {
    pub turn: &'a Turn,
    pub diagnostics: &'a Diagnostics,
    pub status: &'a ExitStatus,
    pub provider: Option<&'a Provider>,
    /// `codex thread <id>` for the summary, so a resumed attempt finds it.
    pub thread_note: String,
}

/// The outcome of the step.
pub fn decide(ended: &Ended<'_>) -> WorkerOutcome {
    let Ended {
        turn, diagnostics, ..
    } = ended;
    let facts = format!("{}{}", turn.facts(), ended.thread_note);
    // A start-up problem decides only a turn that did not complete (a
    // warning that merely looks like one must not undo finished work).
    let findings = diagnostics.findings.iter().filter(|_| !turn.completed);
    for finding in findings {
        if let Finding::StartUp { problem, line } = finding {
            let summary = format!("codex could not start ({}): {line}", problem.setting());
            return WorkerOutcome::blocked(summary).with_followup(
                &format!("fix {}", problem.setting()),
                "review",
                &format!("{}: {line}", problem.remedy()),
            );
        }
    }
    if !turn.completed && diagnostics.network_streak > 0 {
        return no_network(ended.provider, diagnostics);
    }
    if let Some(error) = &turn.failed {
        return WorkerOutcome::failed(format!("codex turn failed: {error} ({facts})"))
            .with_exit_code(ended.status.code);
    }
    if !turn.completed || ended.status.code != Some(0) {
        let why = turn
            .last_error
            .clone()
            .or_else(|| diagnostics.last_error_line.clone())
            .unwrap_or_else(|| {
                format!(
                    "codex ended without finishing its turn ({})",
                    describe_exit(ended.status)
                )
            });
        return WorkerOutcome::failed(format!("{why} ({facts})")).with_exit_code(ended.status.code);
    }
    completed_turn(ended, &facts).with_exit_code(ended.status.code)
}

/// A turn that ran to its end: the structured answer decides, unless codex
/// refused the model something a person must now decide.
fn completed_turn(ended: &Ended<'_>, facts: &str) -> WorkerOutcome {
    let turn = ended.turn;
    let answer =
        (turn.last_message.as_deref()).and_then(|m| serde_json::from_str::<FinalAnswer>(m).ok());
    let said = match &answer {
        Some(answer) => answer.summary.clone(),
        None => {
            (turn.last_message.clone()).unwrap_or_else(|| "codex finished without a message".into())
        }
    };
    // Short enough that the facts and the thread note after it survive the
    // host's cap on summaries.
    let said = crate::diagnose::cut(&said, SAID_BYTES);
    let escalations = (ended.diagnostics.findings.iter())
        .filter(|f| matches!(f, Finding::RejectedEscalation { .. }))
        .count();
    let questions = (ended.diagnostics.findings.iter())
        .filter(|f| matches!(f, Finding::Question { .. }))
        .count();
    let mut needs = Vec::new();
    if escalations > 0 {
        needs.push(format!(
            "codex refused {escalations} command(s) the model asked to run outside its sandbox"
        ));
    }
    if !turn.declined.is_empty() {
        needs.push(format!(
            "{} command(s) were declined: {}",
            turn.declined.len(),
            turn.declined.join("; ")
        ));
    }
    if questions > 0 {
        needs.push(format!(
            "the model asked {questions} question(s) nobody could answer"
        ));
    }
    let mut outcome = if !needs.is_empty() {
        WorkerOutcome::blocked(format!("{said} — but {} ({facts})", needs.join(", and ")))
    } else {
        let summary = format!("{said} ({facts})");
        match &answer {
            Some(a) if a.status == "failed" => WorkerOutcome::failed(summary),
            Some(a) if a.status == "blocked" || a.needs_human => WorkerOutcome::blocked(summary),
            _ => WorkerOutcome::completed(summary),
        }
    };
    if escalations > 0 {
        outcome = outcome.with_followup(
            "run or allow the commands codex refused",
            "review",
            "the model asked to run commands outside the workspace sandbox; codex's approval policy is `never`, so they did not run: see the codex.escalation_rejected events and the model's last message, then run them by hand or widen what the step may do",
        );
    }
    if !turn.declined.is_empty() {
        outcome = outcome.with_followup(
            "run or allow the declined commands",
            "review",
            &format!("codex declined: {}", turn.declined.join("; ")),
        );
    }
    if questions > 0 {
        outcome = outcome.with_followup(
            "answer the model's question",
            "review",
            "the model asked the user a question (request_user_input), which a non-interactive run cannot answer: read it in the model's last message or the run's log, then re-run the step with the answer in its promptSummary",
        );
    }
    for f in answer.into_iter().flat_map(|a| a.followups) {
        outcome = outcome.with_followup(&f.step_name, &f.step_kind, &f.reason);
    }
    outcome
}

/// The most of the model's own summary a step's summary keeps.
const SAID_BYTES: usize = 4096;

/// Codex kept retrying to reach its provider: the port is most likely not
/// granted (the step was stopped instead of waiting for its timeout).
fn no_network(provider: Option<&Provider>, diagnostics: &Diagnostics) -> WorkerOutcome {
    let line = diagnostics
        .findings
        .iter()
        .find_map(|f| match f {
            Finding::NoNetwork { line } => Some(line.as_str()),
            _ => None,
        })
        .unwrap_or("waiting for network");
    let (at, grant) = match provider {
        Some(Provider {
            url,
            port: Some(port),
        }) => (
            format!(" at {url}"),
            format!("tcp-connect = [{port}] under [kinds.codex] (with network = true)"),
        ),
        Some(Provider { url, port: None }) => (
            format!(" at {url}"),
            "the provider's port in [kinds.codex] tcp-connect".to_string(),
        ),
        None => (
            String::new(),
            "the provider's port in [kinds.codex] tcp-connect".to_string(),
        ),
    };
    let summary = format!("codex cannot reach its model provider{at} ({line}); stopped instead of retrying until the timeout");
    WorkerOutcome::blocked(summary).with_followup(
        &format!("grant {grant}"),
        "review",
        &format!("the step's network grant does not let codex reach its provider{at}, or the provider is down: add {grant} in the operator config, or check the provider"),
    )
}
