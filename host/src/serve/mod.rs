//! `baa-runner serve`: step requests in, live events and results out, as
//! newline-delimited JSON over a Unix socket, for conductors not written in
//! Rust. Same runner, limits, cancellation and records as the library API;
//! with a [`Backend::Cluster`], the same protocol queues steps in a cluster.
//!
//! One JSON object per line each way. Client to server:
//! `{"op":"run","id":"ID","request":{…StepExecutionRequest…}}` and
//! `{"op":"cancel","id":"ID"}`. Server to client, each with the client's
//! `id`: `accepted` (with `runDir`, or `step` for a queued step), `event`
//! (`seq`, `event`: a lifecycle entry), `output` (`seq`, `stream`, `text`),
//! `result` (`result`: the StepExecutionResult), and `error` (`error`:
//! `kind`, `message`, `field`). A closed connection cancels its steps.

#[cfg(feature = "cluster")]
mod cluster;
mod wire;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::run::StepHandle;
use crate::{Error, Runner};
use wire::{error_message, parse_message, read_line, Incoming};
pub(crate) use wire::{event_json, Utf8Chunks};

/// Messages a connection may have queued for its client before its steps'
/// streams start skipping events (the `seq` gaps show it; the records on
/// disk keep everything).
const OUTBOX: usize = 1024;

/// Where a server's steps run.
#[derive(Clone)]
pub enum Backend {
    /// Here, by this runner.
    Local(Runner),
    /// Queued in a cluster, run by a host serving the step's kind.
    #[cfg(feature = "cluster")]
    Cluster(Box<crate::cluster::Cluster>),
}

impl From<Runner> for Backend {
    fn from(runner: Runner) -> Self {
        Backend::Local(runner)
    }
}

#[cfg(feature = "cluster")]
impl From<crate::cluster::Cluster> for Backend {
    fn from(cluster: crate::cluster::Cluster) -> Self {
        Backend::Cluster(Box::new(cluster))
    }
}

/// A connection's running steps by the client's ids.
type Steps = Arc<Mutex<HashMap<String, Running>>>;

/// A step a connection follows.
struct Running {
    /// Cancelling it cancels the step.
    cancel: CancellationToken,
    /// Whether the connection closing cancels it (a step queued by another
    /// submission is only followed).
    cancel_on_close: bool,
}

/// How long a closing connection's steps may wait for a client that does
/// not read before their messages are dropped (their records are kept).
const WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Bind `path` (a stale socket file left by an earlier server is replaced)
/// and serve until `shutdown` fires; then every running step is cancelled
/// and its record written before this returns.
pub async fn serve(
    backend: impl Into<Backend>,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = listen(path)?;
    serve_on(backend, listener, path, shutdown).await
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
    backend: impl Into<Backend>,
    listener: UnixListener,
    path: &Path,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let backend = backend.into();
    tracing::info!(socket = %path.display(), "serving");
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (backend, stop) = (backend.clone(), shutdown.child_token());
                    connections.spawn(connection(backend, stream, stop));
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
async fn connection(backend: Backend, stream: UnixStream, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let (outbox, mut pending) = mpsc::channel::<Value>(OUTBOX);
    let mut writer = tokio::spawn(async move {
        while let Some(message) = pending.recv().await {
            let mut line = serde_json::to_vec(&message).unwrap_or_default();
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let session = Session {
        backend,
        closing: stop.child_token(),
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
    let outbox = session.outbox.downgrade();
    let closing = session.close();
    tokio::pin!(closing);
    loop {
        tokio::select! {
            () = &mut closing => break,
            () = tokio::time::sleep(WRITE_GRACE) => {
                // A client that stopped reading (its messages queue up and
                // none leaves): let the steps' messages fail.
                if outbox.upgrade().is_some_and(|o| o.capacity() == 0) {
                    writer.abort();
                }
            }
        }
    }
    // A client that neither reads nor closes does not hold the server.
    if tokio::time::timeout(WRITE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// One client connection: its steps by the client's ids (their tasks end
/// with them) and the outbox of its messages.
struct Session {
    backend: Backend,
    stop: CancellationToken,
    /// Fires when the connection closes (or the server stops).
    closing: CancellationToken,
    outbox: mpsc::Sender<Value>,
    steps: Steps,
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
        steps.get(id).map(|running| running.cancel.clone())
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
        let request = match serde_json::to_vec(&request)
            .map_err(|e| Error::invalid("(request)", e.to_string()))
            .and_then(|bytes| crate::contracts::parse_request(&bytes))
        {
            Ok(request) => request,
            Err(e) => return self.refuse(&id, &e).await,
        };
        match &self.backend {
            Backend::Local(runner) => match runner.start_with(request, &self.stop) {
                Ok(handle) => self.follow(id, handle).await,
                Err(e) => self.refuse(&id, &e).await,
            },
            #[cfg(feature = "cluster")]
            Backend::Cluster(cluster) => match cluster.start(&request).await {
                Ok(step) => self.follow_queued(id, step).await,
                Err(e) => {
                    let (kind, field) = e.wire_kind();
                    self.error(Some(&id), kind, &e.to_string(), field).await;
                }
            },
        }
    }

    async fn refuse(&self, id: &str, e: &Error) {
        let (kind, field) = e.wire_kind();
        self.error(Some(id), kind, &e.to_string(), field).await;
    }

    fn register(&self, id: &str, cancel: CancellationToken, cancel_on_close: bool) {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let running = Running {
            cancel,
            cancel_on_close,
        };
        steps.insert(id.to_owned(), running);
    }

    /// A step started here: accepted with its run directory, then followed.
    async fn follow(&self, id: String, handle: StepHandle) {
        self.register(&id, handle.cancellation_token(), true);
        let accepted = json!({ "id": id, "type": "accepted", "runDir": handle.run_dir() });
        let _ = self.outbox.send(accepted).await;
        let forwarded = forward(id, handle, self.outbox.clone(), self.steps.clone());
        self.tasks.spawn(forwarded);
    }

    /// A step queued in the cluster: accepted with its key, then followed
    /// wherever it runs; cancelling the token cancels it cluster-wide.
    #[cfg(feature = "cluster")]
    async fn follow_queued(&self, id: String, step: crate::cluster::ClusterStep) {
        let cancel = CancellationToken::new();
        let owned = !step.duplicate();
        self.register(&id, cancel.clone(), owned);
        let accepted = json!({
            "id": id,
            "type": "accepted",
            "step": step.identity().key(),
            "duplicate": step.duplicate(),
        });
        let _ = self.outbox.send(accepted).await;
        let (outbox, steps) = (self.outbox.clone(), self.steps.clone());
        let following = cluster::Following {
            cancel,
            owned,
            closing: self.closing.clone(),
        };
        let forwarded = cluster::forward(id, step, following, outbox, steps);
        self.tasks.spawn(forwarded);
    }

    /// The client is gone (or the server stops): its steps are cancelled,
    /// and their records written before the connection is done. Taking
    /// `self` drops the outbox, which ends the connection's writer.
    async fn close(self) {
        {
            let steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
            for running in steps.values().filter(|r| r.cancel_on_close) {
                running.cancel.cancel();
            }
        }
        self.closing.cancel();
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

/// Forward one step's events and result to its client.
async fn forward(id: String, mut handle: StepHandle, outbox: mpsc::Sender<Value>, steps: Steps) {
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
