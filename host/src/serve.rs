//! `baa-runner serve`: step requests in, live events and results out, as
//! newline-delimited JSON over a Unix socket, for conductors not written in
//! Rust. Same runner, limits, cancellation and records as the library API.
//!
//! One JSON object per line each way. Client to server:
//! `{"op":"run","id":"ID","request":{…StepExecutionRequest…}}` and
//! `{"op":"cancel","id":"ID"}`. Server to client, each with the client's
//! `id`: `accepted` (with `runDir`), `event` (`seq`, `event`: a lifecycle
//! entry), `output` (`seq`, `stream`, `text`), `result` (`result`: the
//! StepExecutionResult), and `error` (`error`: `kind`, `message`, `field`).
//! A closed connection cancels the steps it started.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::contracts::MAX_REQUEST_BYTES;
use crate::logs::Stream;
use crate::run::{StepEvent, StepEventBody, StepHandle};
use crate::{Error, Runner};

/// Messages a connection may have queued for its client before its steps'
/// streams start skipping events (the `seq` gaps show it; the records on
/// disk keep everything).
const OUTBOX: usize = 1024;

/// What a client sends.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Incoming {
    Run { id: String, request: Box<Value> },
    Cancel { id: String },
}

/// Bind `path` (a stale socket file left by an earlier server is replaced)
/// and serve until `shutdown` fires; then every running step is cancelled
/// and its record written before this returns.
pub async fn serve(runner: Runner, path: &Path, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = listen(path)?;
    serve_on(runner, listener, path, shutdown).await
}

/// Bind `path` for [`serve_on`], mode 0600 (only this user may hand the
/// runner work). Call within a tokio runtime.
pub fn listen(path: &Path) -> Result<UnixListener, Error> {
    check_socket_path(path)?;
    let listener = UnixListener::bind(path).map_err(Error::io(path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(path))?;
    Ok(listener)
}

/// [`serve`] on a socket [`listen`] bound at `path` (removed at the end).
pub async fn serve_on(
    runner: Runner,
    listener: UnixListener,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    tracing::info!(socket = %path.display(), "serving");
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (runner, stop) = (runner.clone(), shutdown.child_token());
                    connections.spawn(connection(runner, stream, stop));
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
        }
    }
    connections.close();
    connections.wait().await;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Serve one client until it closes the connection or `stop` fires.
async fn connection(runner: Runner, stream: UnixStream, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let (outbox, mut pending) = mpsc::channel::<Value>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(message) = pending.recv().await {
            let mut line = serde_json::to_vec(&message).unwrap_or_default();
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let session = Session {
        runner,
        stop,
        outbox,
        steps: Arc::default(),
        tasks: tokio_util::task::TaskTracker::new(),
    };
    let mut lines = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::select! {
            () = session.stop.cancelled() => break,
            read = read_line(&mut lines, &mut line) => read,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(message) => {
                session.error(None, "invalid-message", &message, None).await;
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_message(&line) {
            Ok(Incoming::Cancel { id }) => session.cancel(&id).await,
            Ok(Incoming::Run { id, request }) => session.run(id, request).await,
            Err((id, e)) => {
                let message = format!("not a run or cancel message: {e}");
                let id = id.as_deref();
                session.error(id, "invalid-message", &message, None).await;
            }
        }
    }
    session.close().await;
    let _ = writer.await;
}

/// One client connection: its steps by the client's ids (their tasks end
/// with them) and the outbox of its messages.
struct Session {
    runner: Runner,
    stop: CancellationToken,
    outbox: mpsc::Sender<Value>,
    steps: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tasks: tokio_util::task::TaskTracker,
}

impl Session {
    async fn error(&self, id: Option<&str>, kind: &str, message: &str, field: Option<&str>) {
        let _ = self
            .outbox
            .send(error_message(id, kind, message, field))
            .await;
    }

    fn token(&self, id: &str) -> Option<CancellationToken> {
        let steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        steps.get(id).cloned()
    }

    async fn cancel(&self, id: &str) {
        match self.token(id) {
            Some(token) => token.cancel(),
            None => {
                let message = "no running step has this id";
                self.error(Some(id), "unknown-id", message, None).await;
            }
        }
    }

    async fn run(&self, id: String, request: Box<Value>) {
        if self.token(&id).is_some() {
            let message = "a step with this id is still running on this connection";
            self.error(Some(&id), "duplicate-id", message, None).await;
            return;
        }
        let started = serde_json::to_vec(&request)
            .map_err(|e| Error::invalid("(request)", e.to_string()))
            .and_then(|bytes| crate::contracts::parse_request(&bytes))
            .and_then(|request| self.runner.start_with(request, &self.stop));
        let handle = match started {
            Ok(handle) => handle,
            Err(e) => {
                let (kind, field) = e.wire_kind();
                self.error(Some(&id), kind, &e.to_string(), field).await;
                return;
            }
        };
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), handle.cancellation_token());
        let accepted = json!({ "id": id, "type": "accepted", "runDir": handle.run_dir() });
        let _ = self.outbox.send(accepted).await;
        let forwarded = forward(id, handle, self.outbox.clone(), self.steps.clone());
        self.tasks.spawn(forwarded);
    }

    /// The client is gone (or the server stops): its steps are cancelled,
    /// and their records written before the connection is done. Taking
    /// `self` drops the outbox, which ends the connection's writer.
    async fn close(self) {
        for token in self
            .steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            token.cancel();
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// `path` is free to listen on: nothing there, or the socket of a server
/// that stopped (removed). A live server's socket, or anything that is not
/// a socket, is refused: taking it over would cut that server off.
fn check_socket_path(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let refuse = |why: &str| {
        Err(Error::Config(crate::config::ConfigError::Setting {
            setting: "--socket".into(),
            message: format!("{}: {why}", path.display()),
        }))
    };
    if !meta.file_type().is_socket() {
        return refuse("exists and is not a socket; choose another path");
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => refuse("another server is listening on it; stop it or choose another path"),
        // No one listens: the socket of a server that stopped.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(Error::io(path))
        }
        Err(e) => refuse(&format!("cannot tell whether a server listens on it ({e})")),
    }
}

/// A client's line as a message; when it is not one, the error and the
/// line's `id` if it has one (so the client learns which message failed).
fn parse_message(line: &[u8]) -> Result<Incoming, (Option<String>, serde_json::Error)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| (None, e))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    serde_json::from_value(value).map_err(|e| (id, e))
}

/// Read one line of at most [`MAX_REQUEST_BYTES`] plus the envelope.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<usize, String> {
    let limit = MAX_REQUEST_BYTES + 64 * 1024;
    loop {
        let buf = reader.fill_buf().await.map_err(|e| e.to_string())?;
        if buf.is_empty() {
            return Ok(line.len());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(end) => {
                line.extend_from_slice(&buf[..=end]);
                reader.consume(end + 1);
                return Ok(line.len());
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                reader.consume(n);
            }
        }
        if line.len() > limit {
            return Err(format!(
                "a message is longer than {limit} bytes; the connection is closed"
            ));
        }
    }
}

/// Forward one step's events and result to its client.
async fn forward(
    id: String,
    mut handle: StepHandle,
    outbox: mpsc::Sender<Value>,
    steps: Arc<Mutex<HashMap<String, CancellationToken>>>,
) {
    let mut text = Utf8Chunks::default();
    while let Some(event) = handle.events().next().await {
        let Some(mut message) = event_json(event, &mut text) else {
            break;
        };
        message.insert("id".into(), Value::from(id.as_str()));
        let message = Value::Object(message);
        // A client that stopped reading makes this wait, and the step's
        // stream then skips events: the step itself never waits for it.
        if outbox.send(message).await.is_err() {
            break;
        }
    }
    let message = match handle.result().await {
        Ok(result) => json!({ "id": id, "type": "result", "result": result }),
        Err(e) => error_message(Some(&id), "host-error", &e.to_string(), None),
    };
    steps.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let _ = outbox.send(message).await;
}

/// A step event as the wire protocols carry it: `type` `event` (`seq`,
/// `event`: a lifecycle entry) or `output` (`seq`, `stream`, `text`);
/// `None` for the closing event, which the result stands for.
pub(crate) fn event_json(
    event: StepEvent,
    text: &mut Utf8Chunks,
) -> Option<serde_json::Map<String, Value>> {
    let message = match event.body {
        StepEventBody::Lifecycle(entry) => {
            json!({ "type": "event", "seq": event.seq, "event": entry })
        }
        StepEventBody::Output { stream, bytes } => json!({
            "type": "output",
            "seq": event.seq,
            "stream": stream.as_str(),
            "text": text.decode(stream, &bytes),
        }),
        StepEventBody::Finished(_) => return None,
    };
    match message {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Output chunks as text. A character cut between two chunks of a stream is
/// carried over to the next chunk rather than replaced; only bytes that are
/// not UTF-8 become U+FFFD.
#[derive(Default)]
pub(crate) struct Utf8Chunks {
    carried: [Vec<u8>; 2],
}

impl Utf8Chunks {
    pub(crate) fn decode(&mut self, stream: Stream, bytes: &[u8]) -> String {
        let carried = &mut self.carried[stream as usize];
        let mut joined = std::mem::take(carried);
        joined.extend_from_slice(bytes);
        let cut = joined.len() - cut_character(&joined);
        *carried = joined.split_off(cut);
        String::from_utf8_lossy(&joined).into_owned()
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that the
/// next chunk completes (0 to 3).
fn cut_character(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let lead = bytes[bytes.len() - back];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let width = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        let tail = &bytes[bytes.len() - back..];
        let incomplete = matches!(std::str::from_utf8(tail), Err(e) if e.error_len().is_none());
        return if back < width && incomplete { back } else { 0 };
    }
    0
}

fn error_message(id: Option<&str>, kind: &str, message: &str, field: Option<&str>) -> Value {
    json!({
        "id": id,
        "type": "error",
        "error": { "kind": kind, "message": message, "field": field },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_cut_between_chunks_is_carried_not_replaced() {
        let text = "é🎉x".as_bytes(); // 2 + 4 + 1 bytes
        for cut in 0..=text.len() {
            let mut chunks = Utf8Chunks::default();
            let (a, b) = text.split_at(cut);
            let joined = chunks.decode(Stream::Stdout, a) + &chunks.decode(Stream::Stdout, b);
            assert_eq!(joined, "é🎉x", "cut at {cut}");
        }
    }

    #[test]
    fn streams_carry_apart_and_invalid_bytes_are_replaced() {
        let mut chunks = Utf8Chunks::default();
        assert_eq!(chunks.decode(Stream::Stdout, &[0xF0, 0x9F]), "");
        assert_eq!(chunks.decode(Stream::Stderr, b"err"), "err");
        assert_eq!(chunks.decode(Stream::Stdout, &[0x8E, 0x89]), "🎉");
        // Not UTF-8 at all: replaced at once, never carried.
        assert_eq!(chunks.decode(Stream::Stdout, &[b'a', 0xFF]), "a\u{FFFD}");
        assert_eq!(cut_character(&[b'a', 0xE0, 0x80]), 0); // E0 80 can begin nothing
        assert_eq!(cut_character(&[0xE2, 0x82]), 2);
    }

    #[test]
    fn a_message_that_fails_names_its_id_when_it_has_one() {
        let (id, _) = parse_message(br#"{"op":"launch","id":"s7"}"#)
            .err()
            .unwrap();
        assert_eq!(id.as_deref(), Some("s7"));
        let (id, _) = parse_message(br#"{"op":"run","id":"s8","request":"\ud83c"}"#)
            .err()
            .unwrap();
        assert_eq!(id, None, "a line that is not JSON has no id to name");
        assert!(matches!(
            parse_message(br#"{"op":"cancel","id":"s9"}"#),
            Ok(Incoming::Cancel { id }) if id == "s9"
        ));
    }
}
