//! `serve --nats`: a step queued in the cluster, followed for its client as
//! a local step is. Events keep one `seq` across the hosts that run it (a
//! host taking the step over numbers from 1 again; here it continues), and
//! carry `host` and `delivery`; the answer becomes `result` or `error`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::wire::{error_message, event_json, Utf8Chunks};
use super::Steps;
use crate::bounds::cut_owned;
use crate::cluster::{ClusterEvent, ClusterStep, Reply, ReplyError};

/// How long a cancelled step's answer may take before its client is told
/// it did not come (the answer still lands on the results stream).
const ANSWER_AFTER_CANCEL: Duration = Duration::from_secs(60);
/// How long asking the cluster to cancel may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// The error kinds an answer may carry to a client; any other is reported
/// as `host-error` (the answer stream is the cluster's, not this host's).
const ANSWER_KINDS: [&str; 4] = [
    "invalid-request",
    "invalid-input",
    "host-error",
    "cancelled",
];
/// Most bytes of an answer's error message and field passed on.
const MAX_MESSAGE: usize = 4096;
const MAX_FIELD: usize = 256;

/// What the step's follower does when its client or server lets go.
pub(super) struct Following {
    /// Cancelled by the client's `cancel`, or when the connection closes
    /// or the server stops.
    pub cancel: CancellationToken,
    /// Whether closing the connection cancels the step: only for the
    /// connection that queued it (one that follows an earlier submission
    /// of the same step leaves it to its submitter).
    pub owned: bool,
    /// Fires when the connection closes or the server stops.
    pub closing: CancellationToken,
}

/// Forward a queued step's events and answer to its client; cancelling
/// cancels it wherever it runs (or answers it `cancelled` while queued).
pub(super) async fn forward(
    id: String,
    mut step: ClusterStep,
    following: Following,
    outbox: mpsc::Sender<Value>,
    steps: Steps,
) {
    let mut numbering = Numbering::default();
    let mut text = Utf8Chunks::default();
    let mut deadline = None;
    let Following {
        cancel,
        owned,
        closing,
    } = following;
    let ended = loop {
        let cancelling = cancel.cancelled();
        let next = tokio::select! {
            biased;
            () = cancelling, if deadline.is_none() => {
                deadline = Some(ask_cancel(&step).await);
                continue;
            }
            () = closing.cancelled(), if deadline.is_none() && !owned => break Ok(()),
            () = sleep_until(deadline) => break Err(format!(
                "the cluster did not answer step {} within {}s of its cancellation; \
                 its answer will still be on the results stream",
                step.identity(),
                ANSWER_AFTER_CANCEL.as_secs()
            )),
            next = step.next_event() => next,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("{e}; the step may still run in the cluster")),
        };
        let Some(message) = numbering.message(&id, event, &mut text) else {
            continue;
        };
        // A client that reads slowly makes this wait (the subscription then
        // skips events); one that is gone, or a server stopping, does not.
        let sent = tokio::select! {
            biased;
            sent = outbox.send(message) => sent.is_ok(),
            () = cancel.cancelled(), if deadline.is_none() => true,
            () = closing.cancelled() => false,
            () = sleep_until(deadline) => true, // the loop reports it
        };
        if !sent {
            if owned && deadline.is_none() {
                deadline = Some(ask_cancel(&step).await);
            }
            if !owned {
                break Ok(());
            }
        }
    };
    let message = match ended {
        Ok(()) if closing.is_cancelled() && !owned => None,
        Ok(()) => Some(answer_message(&id, &mut step, deadline).await),
        Err(why) => Some(error_message(Some(&id), "host-error", &why, None)),
    };
    steps.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    if let Some(message) = message {
        tokio::select! {
            biased;
            _ = outbox.send(message) => {}
            () = closing.cancelled() => {}
        }
    }
}

/// Ask the cluster to cancel the step; when its answer must come by.
fn ask_cancel(step: &ClusterStep) -> impl std::future::Future<Output = tokio::time::Instant> {
    // The cancel future owns what it needs: nothing of `step` is held.
    let (cancel, id) = (step.cancel(), step.identity().to_string());
    async move {
        match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cancelling step {id}: {e}"),
            Err(_) => tracing::warn!("cancelling step {id}: no word from the cluster"),
        }
        tokio::time::Instant::now() + ANSWER_AFTER_CANCEL
    }
}

/// The step's answer as its client's last message (bounded by `deadline`
/// when it was cancelled).
async fn answer_message(
    id: &str,
    step: &mut ClusterStep,
    deadline: Option<tokio::time::Instant>,
) -> Value {
    let answer = step.take_answer();
    let answer = match (answer, deadline) {
        (Some(answer), _) => Ok(answer),
        (None, Some(at)) => match tokio::time::timeout_at(at, step.wait_answer()).await {
            Ok(answer) => answer,
            Err(_) => {
                let why = format!("no answer from the cluster for step {}", step.identity());
                return error_message(Some(id), "host-error", &why, None);
            }
        },
        (None, None) => step.wait_answer().await,
    };
    match answer.map(|a| a.reply) {
        Ok(Reply::Result(result)) => json!({ "id": id, "type": "result", "result": result }),
        Ok(Reply::Error(e)) => {
            let e = bounded(e);
            error_message(Some(id), &e.kind, &e.message, e.field.as_deref())
        }
        Err(e) => {
            let (kind, field) = e.wire_kind();
            error_message(Some(id), kind, &e.to_string(), field)
        }
    }
}

/// An answer's error as a client may see it: a kind it knows, bounded text.
fn bounded(e: ReplyError) -> ReplyError {
    let known = ANSWER_KINDS.contains(&e.kind.as_str());
    ReplyError {
        kind: if known { e.kind } else { "host-error".into() },
        message: cut_owned(e.message, MAX_MESSAGE),
        field: e.field.map(|f| cut_owned(f, MAX_FIELD)),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One `seq` for the client across the turns of the hosts that run the
/// step: each turn's numbers are shifted past the previous turn's last, so
/// a gap still means skipped events and a takeover is not one.
#[derive(Default)]
struct Numbering {
    turn: Option<(String, u64)>,
    base: u64,
    last: u64,
}

/// The largest `seq` a turn's event may carry (a step's events fit well
/// below it); a larger one is not a host's.
const MAX_SEQ: u64 = 1 << 40;

impl Numbering {
    fn renumber(&mut self, host: &str, delivery: u64, seq: u64) -> Option<u64> {
        if seq > MAX_SEQ || delivery > MAX_SEQ {
            return None;
        }
        let same = matches!(&self.turn, Some((h, d)) if h == host && *d == delivery);
        if !same {
            if self.turn.as_ref().is_some_and(|(_, d)| *d >= delivery) {
                return None; // a turn not newer than the one followed
            }
            self.turn = Some((host.to_owned(), delivery));
            self.base = self.last;
        }
        let seq = self.base.saturating_add(seq);
        if seq <= self.last && self.last > 0 {
            return None; // not newer than what the client has
        }
        self.last = seq;
        Some(seq)
    }

    fn message(&mut self, id: &str, event: ClusterEvent, text: &mut Utf8Chunks) -> Option<Value> {
        let seq = self.renumber(&event.host, event.delivery, event.event.seq)?;
        let mut message = event_json(event.event, text)?;
        message.insert("id".into(), Value::from(id));
        message.insert("seq".into(), Value::from(seq));
        message.insert("host".into(), Value::from(event.host));
        message.insert("delivery".into(), Value::from(event.delivery));
        Some(Value::Object(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_continues_the_numbering_and_gaps_stay_gaps() {
        let mut n = Numbering::default();
        assert_eq!(n.renumber("a", 1, 1), Some(1));
        assert_eq!(n.renumber("a", 1, 2), Some(2));
        assert_eq!(n.renumber("a", 1, 5), Some(5), "a gap of two stays two");
        // Host b takes over (delivery 2) and numbers from 1 again.
        assert_eq!(n.renumber("b", 2, 1), Some(6));
        assert_eq!(n.renumber("b", 2, 3), Some(8));
        // A late event of host a's turn is not the client's any more, nor
        // one claiming the same delivery from another host.
        assert_eq!(n.renumber("a", 1, 6), None);
        assert_eq!(n.renumber("c", 2, 9), None);
        // A repeated event is dropped.
        assert_eq!(n.renumber("b", 2, 3), None);
        // Numbers no host makes are dropped, not wrapped.
        assert_eq!(n.renumber("b", 2, u64::MAX), None);
        assert_eq!(n.renumber("x", u64::MAX, 1), None);
        assert_eq!(n.renumber("b", 2, 4), Some(9));
    }

    #[test]
    fn an_answer_error_reaches_the_client_bounded_and_of_a_known_kind() {
        let e = bounded(ReplyError {
            kind: "unknown-id".into(),
            message: "x".repeat(10_000),
            field: Some("f".repeat(1000)),
        });
        assert_eq!(e.kind, "host-error");
        // Cut, with a note of how much.
        assert!(e.message.len() < MAX_MESSAGE + 32, "{}", e.message.len());
        assert!(e.field.unwrap().ends_with("(744 bytes cut)"));
    }
}
