//! One executing step as the embedder sees it ([`StepHandle`]): a numbered
//! live stream of its lifecycle events and output chunks, cancellation (a
//! token, or dropping the handle), and its final result. The run directory
//! stays the record; the stream is a live view of it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::contracts::{
    FailureReason, StepExecutionOutcome, StepExecutionResult, WorkerLifecycleLogEntry,
};
use crate::error::Error;
use crate::logs::{LiveUpdate, Observer, Stream};

/// How many events a subscriber may fall behind by before it misses some
/// (see [`EventStream::missed`]).
pub const EVENT_BUFFER: usize = 4096;

/// One item of a step's live stream.
#[derive(Debug, Clone)]
pub struct StepEvent {
    /// 1, 2, 3, … over everything this step streamed: a gap means the
    /// subscriber fell behind and missed events (`lifecycle.jsonl` and the
    /// output logs in the run directory have all of them).
    pub seq: u64,
    pub body: StepEventBody,
}

/// What a [`StepEvent`] carries.
#[derive(Debug, Clone)]
pub enum StepEventBody {
    /// A lifecycle event, as appended to `lifecycle.jsonl`.
    Lifecycle(WorkerLifecycleLogEntry),
    /// A chunk of the worker's or its subprocesses' output, as appended to
    /// `stdout.log` or `stderr.log`.
    Output { stream: Stream, bytes: Bytes },
    /// The last event: the step's records are written.
    Finished(Finished),
}

/// How a step ended, in its stream's last event.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The outcome, when the result was written.
    pub outcome: Option<StepExecutionOutcome>,
    /// Why it failed, when it did.
    pub failure: Option<FailureReason>,
    /// When the records could not be written: why.
    pub error: Option<String>,
}

/// The sending side shared by the log session's observer and the task.
pub(crate) struct Feed {
    seq: Mutex<u64>,
    tx: broadcast::Sender<StepEvent>,
}

impl Feed {
    pub fn new() -> Arc<Self> {
        Arc::new(Feed {
            seq: Mutex::new(0),
            tx: broadcast::channel(EVENT_BUFFER).0,
        })
    }

    /// Number and send `body` (under the lock, so numbers arrive in order).
    pub fn send(&self, body: StepEventBody) {
        let mut seq = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        *seq += 1;
        // No subscriber is not an error: the run directory is the record.
        let _ = self.tx.send(StepEvent { seq: *seq, body });
    }

    pub fn subscribe(&self) -> EventStream {
        EventStream {
            rx: self.tx.subscribe(),
            missed: 0,
            done: false,
        }
    }

    /// The log session's observer: every record, as it is written.
    pub fn observer(self: &Arc<Self>) -> Observer {
        let feed = self.clone();
        Arc::new(move |update: LiveUpdate<'_>| match update {
            LiveUpdate::Event(entry) => feed.send(StepEventBody::Lifecycle(entry.clone())),
            LiveUpdate::Output(stream, bytes) => feed.send(StepEventBody::Output {
                stream,
                bytes: Bytes::copy_from_slice(bytes),
            }),
        })
    }

    /// The closing event for `result`.
    pub fn finish(&self, result: &Result<StepExecutionResult, Error>) {
        let finished = match result {
            Ok(result) => Finished {
                outcome: Some(result.outcome),
                failure: result.state.failure.as_ref().map(|f| f.reason),
                error: None,
            },
            Err(e) => Finished {
                outcome: None,
                failure: None,
                error: Some(e.to_string()),
            },
        };
        self.send(StepEventBody::Finished(finished));
    }
}

/// A subscriber to one step's live events.
pub struct EventStream {
    rx: broadcast::Receiver<StepEvent>,
    missed: u64,
    done: bool,
}

impl EventStream {
    /// The next event, as it happens; `None` after the
    /// [`StepEventBody::Finished`] event. A subscriber that falls more than
    /// [`EVENT_BUFFER`] events behind skips the oldest: the gap shows in
    /// [`StepEvent::seq`] and in [`EventStream::missed`].
    pub async fn next(&mut self) -> Option<StepEvent> {
        while !self.done {
            match self.rx.recv().await {
                Ok(event) => {
                    self.done = matches!(event.body, StepEventBody::Finished(_));
                    return Some(event);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => self.done = true,
            }
        }
        None
    }

    /// How many events this subscriber missed by falling behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// A step started by [`crate::Runner::start`]. Dropping the handle cancels
/// the step (its records are still written, ending `failed` with reason
/// `interrupted`); [`StepHandle::result`] waits for the end instead.
pub struct StepHandle {
    pub(crate) events: EventStream,
    pub(crate) feed: Arc<Feed>,
    pub(crate) cancel: CancellationToken,
    pub(crate) task: Option<JoinHandle<Result<StepExecutionResult, Error>>>,
    pub(crate) run_dir: String,
}

impl StepHandle {
    /// This attempt's run directory.
    pub fn run_dir(&self) -> &str {
        &self.run_dir
    }

    /// The handle's own subscription, which has every event from the
    /// preparation on.
    pub fn events(&mut self) -> &mut EventStream {
        &mut self.events
    }

    /// Another subscriber: it sees the events from now on.
    pub fn subscribe(&self) -> EventStream {
        self.feed.subscribe()
    }

    /// Stop the step: the guest is interrupted, its subprocesses are
    /// killed, the checkpoints and records are written, and the result says
    /// `failed` with reason `interrupted`. Idempotent; a finished step is
    /// not affected.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The step's cancellation token (cancelling it is [`StepHandle::cancel`]).
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Wait for the step's result. `Err` means its records could not be
    /// written; every failure of the step itself is an outcome.
    pub async fn result(mut self) -> Result<StepExecutionResult, Error> {
        let task = self
            .task
            .take()
            .ok_or(Error::Host("the result was already taken".into()))?;
        // Dropping this future before the end still cancels the step.
        let guard = self.cancel.clone().drop_guard();
        let finished = task.await;
        guard.disarm();
        match finished {
            Ok(result) => result,
            Err(e) => Err(Error::Host(format!(
                "the step's task ended abnormally: {e}"
            ))),
        }
    }
}

impl Drop for StepHandle {
    fn drop(&mut self) {
        // A handle dropped before its result was taken cancels the step.
        if self.task.is_some() {
            self.cancel.cancel();
        }
    }
}
