//! A small OpenAI-Responses-compatible model server for the Codex CLI, on
//! 127.0.0.1: each `POST /v1/responses` gets the next scripted reply (tool
//! calls, a final message, or an HTTP error) as server-sent events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted answer of the model.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A streamed response made of these output items.
    Items(Vec<Value>),
    /// An HTTP error with this status and body.
    Status(u16, String),
}

impl Reply {
    /// The model asks Codex to run a shell command.
    pub fn command(cmd: &str) -> Reply {
        Reply::Items(vec![json!({
            "type": "function_call",
            "id": "fc_1",
            "call_id": format!("call_{}", cmd.len()),
            "name": "exec_command",
            "arguments": json!({ "cmd": cmd }).to_string(),
        })])
    }

    /// The model asks to run `cmd` outside the sandbox (an escalation,
    /// which `codex exec` with approval policy `never` refuses).
    pub fn escalation(cmd: &str, justification: &str) -> Reply {
        Reply::Items(vec![json!({
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_escalation",
            "name": "exec_command",
            "arguments": json!({
                "cmd": cmd,
                "sandbox_permissions": "require_escalated",
                "justification": justification,
            }).to_string(),
        })])
    }

    /// The model asks the user `question` (`request_user_input`).
    pub fn question(question: &str) -> Reply {
        Reply::Items(vec![json!({
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_question",
            "name": "request_user_input",
            "arguments": json!({ "questions": [{
                "id": "q1",
                "header": "Choice",
                "question": question,
                "options": [
                    { "label": "yes", "description": "go ahead" },
                    { "label": "no", "description": "stop" },
                ],
            }]}).to_string(),
        })])
    }

    /// The model answers with `text` and ends its turn.
    pub fn message(text: &str) -> Reply {
        Reply::Items(vec![json!({
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "content": [{ "type": "output_text", "text": text }],
        })])
    }

    /// The structured final answer the codex kind asks for.
    pub fn answer(status: &str, summary: &str, needs_human: bool, followups: Value) -> Reply {
        Reply::message(
            &json!({ "status": status, "summary": summary, "needsHuman": needs_human, "followups": followups })
                .to_string(),
        )
    }
}

/// A running mock model server; stops when dropped.
pub struct MockModel {
    pub port: u16,
    requests: Arc<Mutex<Vec<Value>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl MockModel {
    /// Serve `replies` in order; after the last one, every request gets a 500.
    pub fn start(replies: Vec<Reply>) -> MockModel {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(
            replies
                .into_iter()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = requests.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((conn, _)) = accepted else { continue };
                            tokio::spawn(serve(conn, script.clone(), seen.clone()));
                        }
                    }
                }
            });
        });
        MockModel {
            port,
            requests,
            _stop: stop,
        }
    }

    /// The JSON bodies of the requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// A `CODEX_HOME` under `dir` whose config points Codex at this server.
    pub fn codex_home(&self, dir: &Path) -> PathBuf {
        let home = dir.join("codex-home");
        std::fs::create_dir_all(&home).unwrap();
        // Written last, atomically: its presence means the server is up.
        let config = format!(
            r#"model = "mock-model"
model_provider = "mock"
approval_policy = "never"

[model_providers.mock]
name = "mock"
base_url = "http://127.0.0.1:{}/v1"
wire_api = "responses"
env_key = "BAA_CODEX_API_KEY"
request_max_retries = 0
stream_max_retries = 0
"#,
            self.port
        );
        let tmp = home.join(".config.toml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(tmp, home.join("config.toml")).unwrap();
        home
    }
}

async fn serve(
    mut conn: TcpStream,
    script: Arc<Mutex<std::collections::VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Value>>>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request: headers, then Content-Length bytes of body.
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < header_end + length {
            let mut chunk = [0u8; 65536];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..header_end + length).skip(header_end).collect();
        let response = if head.starts_with("POST") && head.contains("/responses") {
            seen.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            let reply = script.lock().unwrap().pop_front().unwrap_or(Reply::Status(
                500,
                "the mock model's script is exhausted".into(),
            ));
            render(reply, seen.lock().unwrap().len())
        } else {
            http(404, "application/json", "{}")
        };
        if conn.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn http(status: u16, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn render(reply: Reply, n: usize) -> String {
    match reply {
        Reply::Status(status, message) => http(
            status,
            "application/json",
            &json!({ "error": { "message": message, "type": "server_error" } }).to_string(),
        ),
        Reply::Items(items) => {
            let id = format!("resp_{n}");
            let mut events = vec![json!({ "type": "response.created", "response": { "id": id } })];
            for item in items {
                events.push(json!({ "type": "response.output_item.done", "item": item }));
            }
            events.push(json!({
                "type": "response.completed",
                "response": { "id": id, "usage": {
                    "input_tokens": 120, "input_tokens_details": { "cached_tokens": 0 },
                    "output_tokens": 30, "output_tokens_details": { "reasoning_tokens": 0 },
                    "total_tokens": 150 } }
            }));
            let body: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            http(200, "text/event-stream", &body)
        }
    }
}

/// The Codex CLI's native binary: `$BAA_CODEX_BIN`, else the one
/// `scripts/setup.sh` installed (`$BAA_TOOLS_DIR`, default `/var/cache/baa-runner` as root, else `~/.cache/baa-runner`).
pub fn codex_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("BAA_CODEX_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let tools = crate::tools_dir();
    let scope = tools.join(format!("codex-{CODEX_VERSION}/node_modules/@openai"));
    let found = std::fs::read_dir(&scope).ok().and_then(|entries| {
        entries.flatten().find_map(|pkg| {
            std::fs::read_dir(pkg.path().join("vendor"))
                .ok()?
                .flatten()
                .find_map(|triple| {
                    let bin = triple.path().join("bin/codex");
                    bin.is_file().then_some(bin)
                })
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "the Codex CLI is not installed under {}: run scripts/setup.sh (or set BAA_CODEX_BIN)",
            scope.display()
        )
    })
}

/// The Codex CLI version the set-up installs (`scripts/tools.sh`).
pub const CODEX_VERSION: &str = "0.169.0";
