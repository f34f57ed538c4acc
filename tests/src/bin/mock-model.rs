//! `mock-model --script FILE --codex-home DIR`: serves the scripted model
//! turns in FILE on 127.0.0.1 and writes a Codex config pointing at it into
//! DIR (used by `examples/demo.sh codex`). Runs until killed.
//!
//! FILE is a JSON array of turns: `{"command": "..."}` (run a shell command),
//! `{"answer": {"status", "summary", "needsHuman", "followups"}}` (the final
//! structured answer), `{"message": "..."}`, `{"items": [...]}` (raw Responses API
//! output items, e.g. a tool call with arguments of its own), or
//! `{"status": 500, "message": "..."}`.

use baa_runner_tests::mock_model::{MockModel, Reply};
use serde_json::Value;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or_else(|| {
                format!("usage: mock-model --script FILE --codex-home DIR (missing {flag})")
            })
    };
    let script_path = value_of("--script")?;
    let codex_home = value_of("--codex-home")?;
    let text = std::fs::read_to_string(script_path).map_err(|e| format!("{script_path}: {e}"))?;
    let turns: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| format!("{script_path}: {e}"))?;
    let replies = turns
        .iter()
        .map(|turn| {
            if let Some(cmd) = turn["command"].as_str() {
                Ok(Reply::command(cmd))
            } else if let Some(items) = turn["items"].as_array() {
                Ok(Reply::Items(items.clone()))
            } else if turn.get("answer").is_some() {
                Ok(Reply::message(&turn["answer"].to_string()))
            } else if let Some(text) = turn["message"].as_str().filter(|_| turn.get("status").is_none()) {
                Ok(Reply::message(text))
            } else if let Some(status) = turn["status"].as_u64() {
                Ok(Reply::Status(status as u16, turn["message"].as_str().unwrap_or("error").into()))
            } else {
                Err(format!("{script_path}: a turn must have `command`, `answer`, `message`, `items` or `status`: {turn}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let model = MockModel::start(replies);
    let home = model.codex_home(std::path::Path::new(codex_home));
    eprintln!(
        "mock model on 127.0.0.1:{}; CODEX_HOME={}",
        model.port,
        home.display()
    );
    loop {
        std::thread::park();
    }
}
