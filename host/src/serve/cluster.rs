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
use crate::cluster::{ClusterEvent, ClusterStep, Reply};

/// How long a cancelled step's answer may take before its client is told
/// it did not come (the answer still lands on the results stream).
const ANSWER_AFTER_CANCEL: Duration = Duration::from_secs(60);

/// Forward a queued step's events and answer to its client; `cancel`
/// cancels it wherever it runs (or answers it `cancelled` while queued).
pub(super) async fn forward(
    id: String,
    mut step: ClusterStep,
    cancel: CancellationToken,
    outbox: mpsc::Sender<Value>,
    steps: Steps,
) {
    let mut numbering = Numbering::default();
    let mut text = Utf8Chunks::default();
    let mut deadline = None;
    let ended = loop {
        let next = tokio::select! {
            () = cancel.cancelled(), if deadline.is_none() => {
                if let Err(e) = step.cancel().await {
                    tracing::warn!("cancelling step {}: {e}", step.identity());
                }
                deadline = Some(tokio::time::Instant::now() + ANSWER_AFTER_CANCEL);
                continue;
            }
            () = sleep_until(deadline) => break Err(format!(
                "the cluster did not answer step {} within {}s of its cancellation; \
                 its answer will still be on the results stream",
                step.identity(),
                ANSWER_AFTER_CANCEL.as_secs()
            )),
            next = step.next_event() => next,
        };
        match next {
            Ok(Some(event)) => {
                let Some(message) = numbering.message(&id, event, &mut text) else {
                    continue;
                };
                // As for a local step: a client that stops reading makes
                // this wait, and the subscription then skips events.
                if outbox.send(message).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.to_string()),
        }
    };
    let message = match ended {
        Ok(()) => match step.answer().await {
            Ok(answer) => match answer.reply {
                Reply::Result(result) => json!({ "id": id, "type": "result", "result": result }),
                Reply::Error(e) => {
                    error_message(Some(&id), &e.kind, &e.message, e.field.as_deref())
                }
            },
            Err(e) => {
                let (kind, field) = e.wire_kind();
                error_message(Some(&id), kind, &e.to_string(), field)
            }
        },
        Err(why) => error_message(Some(&id), "host-error", &why, None),
    };
    steps.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let _ = outbox.send(message).await;
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

impl Numbering {
    fn renumber(&mut self, host: &str, delivery: u64, seq: u64) -> Option<u64> {
        let same = matches!(&self.turn, Some((h, d)) if h == host && *d == delivery);
        if !same {
            if self.turn.as_ref().is_some_and(|(_, d)| *d > delivery) {
                return None; // a late event of a turn already taken over
            }
            self.turn = Some((host.to_owned(), delivery));
            self.base = self.last;
        }
        let seq = self.base + seq;
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
        // A late event of host a's turn is not the client's any more.
        assert_eq!(n.renumber("a", 1, 6), None);
        // A repeated event is dropped.
        assert_eq!(n.renumber("b", 2, 3), None);
    }
}
