//! What codex says only on stderr (or in its non-terminal `error` events),
//! recognised by stable markers rather than whole sentences: codex's
//! wording changes between versions. Each finding keeps the raw line.

use baa_worker_sdk::*;
use serde_json::json;

/// Something codex reported that decides the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The model asked to run a command outside the sandbox and codex
    /// refused it (approval policy `never`): a person must run or allow it.
    RejectedEscalation { line: String },
    /// The model asked the user a question; nobody can answer in `exec`.
    Question { line: String },
    /// Codex could not start: its configuration, its home, the worktree.
    StartUp { problem: StartUp, line: String },
    /// Codex cannot reach its model provider and retries.
    NoNetwork { line: String },
}

/// An operator problem found when codex starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartUp {
    /// `config.toml` under `CODEX_HOME` is refused (e.g. `wire_api = "chat"`).
    Config,
    /// `CODEX_HOME` is not reachable from the step.
    Home,
    /// The worktree is not a git repository codex trusts.
    NotARepository,
    /// A variable the provider needs (its API key) is not set.
    MissingVariable,
}

impl StartUp {
    /// What the person must change, for the follow-up.
    pub fn remedy(self) -> &'static str {
        match self {
            StartUp::Config => "fix the Codex configuration (config.toml under the step's CODEX_HOME) as codex says",
            StartUp::Home => "set the request's runtime.env CODEX_HOME to a directory that exists and grant it to the kind ([kinds.codex] write-paths)",
            StartUp::NotARepository => "run the step in a git repository (runtime.worktreePath), or mark the directory trusted in the Codex configuration",
            StartUp::MissingVariable => "set the variable in the request's runtime.env and grant its name ([kinds.codex] env)",
        }
    }

    /// The setting to look at, in a few words.
    pub fn setting(self) -> &'static str {
        match self {
            StartUp::Config => "CODEX_HOME/config.toml",
            StartUp::Home => "CODEX_HOME",
            StartUp::NotARepository => "runtime.worktreePath",
            StartUp::MissingVariable => "runtime.env",
        }
    }
}

/// Markers, lowercase, each with what it means. The first that matches a
/// line wins.
const MARKERS: &[(&str, Kind)] = &[
    ("reject command", Kind::Escalation),
    ("escalated permissions", Kind::Escalation),
    ("request_user_input", Kind::Question),
    ("error loading config", Kind::StartUp(StartUp::Config)),
    ("finding codex home", Kind::StartUp(StartUp::Home)),
    ("codex_home points to", Kind::StartUp(StartUp::Home)),
    (
        "not inside a trusted directory",
        Kind::StartUp(StartUp::NotARepository),
    ),
    (
        "skip-git-repo-check",
        Kind::StartUp(StartUp::NotARepository),
    ),
    (
        "missing environment variable",
        Kind::StartUp(StartUp::MissingVariable),
    ),
    ("waiting for network", Kind::Network),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Escalation,
    Question,
    StartUp(StartUp),
    Network,
}

/// The longest line kept in an event or a summary.
const LINE_BYTES: usize = 600;

/// Recognise `line` (of stderr, or an `error` message of the stream).
pub fn recognise(line: &str) -> Option<Finding> {
    let lower = line.to_lowercase();
    let (_, kind) = MARKERS.iter().find(|(marker, _)| lower.contains(marker))?;
    // A refused tool call is logged as an error; a mere mention is not one.
    if matches!(kind, Kind::Escalation | Kind::Question) && !lower.contains("error") {
        return None;
    }
    let line = cut(line.trim(), LINE_BYTES);
    Some(match *kind {
        Kind::Escalation => Finding::RejectedEscalation { line },
        Kind::Question => Finding::Question { line },
        Kind::StartUp(problem) => Finding::StartUp { problem, line },
        Kind::Network => Finding::NoNetwork { line },
    })
}

/// `text` cut to at most `max` bytes (on a character boundary), marked.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What stderr and the error events said, accumulated line by line.
#[derive(Default)]
pub struct Diagnostics {
    pub findings: Vec<Finding>,
    pending: Vec<u8>,
    /// Lines after a start-up error that explain it ("How to fix: …").
    explaining: Option<usize>,
    /// The last line codex wrote on stderr that looks like an error.
    pub last_error_line: Option<String>,
    /// Times codex said it waits for the network since the turn last made
    /// progress (reset by [`Diagnostics::progress`]).
    pub network_streak: usize,
}

impl Diagnostics {
    /// Feed a chunk of codex's stderr.
    pub fn stderr(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.line(String::from_utf8_lossy(&line).trim_end());
        }
        if self.pending.len() > 64 * 1024 {
            let line = std::mem::take(&mut self.pending);
            self.line(String::from_utf8_lossy(&line).trim_end());
        }
    }

    /// The end of stderr.
    pub fn finish(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.line(String::from_utf8_lossy(&rest).trim_end());
        }
    }

    fn line(&mut self, line: &str) {
        if line.trim().is_empty() {
            self.explaining = None;
            return;
        }
        let lower = line.to_lowercase();
        if lower.contains("error") {
            self.last_error_line = Some(cut(line.trim(), LINE_BYTES));
        }
        if let Some(finding) = recognise(line) {
            self.note(finding);
            return;
        }
        // "How to fix: …" and the like belong to the start-up error above.
        if let Some(i) = self.explaining {
            if let Some(Finding::StartUp { line: first, .. }) = self.findings.get_mut(i) {
                if first.len() < 4 * LINE_BYTES {
                    first.push_str(" · ");
                    first.push_str(&cut(line.trim(), LINE_BYTES));
                }
            }
        }
    }

    /// Record a finding (from stderr or the event stream) and say so.
    pub fn note(&mut self, finding: Finding) {
        let (level, event, message, line) = match &finding {
            Finding::RejectedEscalation { line } => (
                Level::Warn,
                "codex.escalation_rejected",
                "codex refused a command the model wanted to run outside its sandbox",
                line,
            ),
            Finding::Question { line } => (
                Level::Warn,
                "codex.question",
                "the model asked a question nobody can answer in a non-interactive run",
                line,
            ),
            Finding::StartUp { line, .. } => (
                Level::Error,
                "codex.startup_failed",
                "codex could not start",
                line,
            ),
            Finding::NoNetwork { line } => (
                Level::Warn,
                "codex.network",
                "codex cannot reach its model provider: is its port in [kinds.codex] tcp-connect?",
                line,
            ),
        };
        // Repeats (a retry loop) are counted, not re-announced.
        if !self.findings.contains(&finding) {
            emit(
                level,
                event,
                message,
                Some(&json!({ "line": line }).to_string()),
            );
        }
        if matches!(finding, Finding::StartUp { .. }) {
            self.explaining = Some(self.findings.len());
        }
        if matches!(finding, Finding::NoNetwork { .. }) {
            self.network_streak += 1;
        }
        self.findings.push(finding);
    }

    /// The turn moved on: earlier waits for the network were transient.
    pub fn progress(&mut self) {
        self.network_streak = 0;
    }
}
