//! Steps no delivery will finish: the queue stopped delivering them (every
//! delivery expired, up to `max-deliver`: their hosts died or stalled), or
//! their record cannot be read or written. Each is answered `host-error`
//! once and leaves the queue, so no conductor waits for an answer forever.

use std::sync::Arc;

use futures_util::StreamExt;

use super::record::{self, Answer, GiveUp, Reply, ReplyError};
use super::topology::{kind_of_subject, StepIdentity};
use super::transport::{Delivery, Transport};
use super::turn::retrying;
use super::worker::{identity_of, Worker};
use super::ClusterError;

/// Answer each step the queue gives up on, as the server announces it.
pub(super) async fn listen(worker: Arc<Worker>) {
    let transport = worker.transport.as_ref();
    let mut exhausted = match transport.exhausted().await {
        Ok(exhausted) => exhausted,
        Err(e) => {
            tracing::warn!(
                "{e}: steps that exhaust their deliveries are not answered by this host"
            );
            return;
        }
    };
    while let Some((sequence, deliveries)) = exhausted.next().await {
        let Ok(Some((payload, subject))) = transport.queued(sequence).await else {
            continue; // answered and gone meanwhile
        };
        let Some(id) = identity_of(&payload) else {
            let _ = transport.unqueue(sequence).await;
            continue;
        };
        let kind = kind_of_subject(&subject).unwrap_or_default();
        let answered = retrying(&id, || give_up(transport, &id, &kind, sequence, deliveries)).await;
        if answered.is_ok() {
            tracing::warn!(step = %id, "no host finished it in {deliveries} deliveries: answered host-error");
        }
    }
}

/// The queue gave up on message `sequence` of step `id`: answer the step
/// (fenced by its record's revision, so a host coming back late cannot
/// answer too), then take the message out of the queue.
async fn give_up(
    transport: &dyn Transport,
    id: &StepIdentity,
    kind: &str,
    sequence: u64,
    deliveries: u64,
) -> Result<(), ClusterError> {
    for _ in 0..16 {
        let existing = match transport.record(id).await {
            Err(e @ ClusterError::Corrupt { .. }) => {
                return answer_without_record(transport, id, sequence, &e).await
            }
            existing => existing?,
        };
        let revision = existing.as_ref().map(|(_, revision)| *revision);
        let step = id.to_string();
        match record::give_up(existing.map(|(r, _)| r), &step, kind, sequence, deliveries) {
            GiveUp::Answer(record) => match transport.write_record(id, &record, revision).await {
                Ok(None) => continue, // changed meanwhile: look again
                Ok(Some(_)) => {
                    if let Some(answer) = record.answer() {
                        transport.publish_answer(id, &answer).await?;
                    }
                }
                Err(e @ ClusterError::Corrupt { .. }) => {
                    return answer_without_record(transport, id, sequence, &e).await
                }
                Err(e) => return Err(e),
            },
            GiveUp::Answered(answer) => transport.publish_answer(id, &answer).await?,
            GiveUp::Duplicate => {}
        }
        return transport.unqueue(sequence).await;
    }
    Err(ClusterError::Nats {
        doing: "answering a step no host finished",
        message: "its record kept changing".into(),
    })
}

/// A delivery whose step's record cannot be read or written (`error`):
/// the step is answered `host-error` and the message leaves the queue.
pub(super) async fn unclaimable(
    worker: &Worker,
    delivery: &dyn Delivery,
    id: &StepIdentity,
    error: &ClusterError,
) {
    let transport = worker.transport.as_ref();
    let sequence = delivery.sequence();
    let answered = retrying(id, || answer_without_record(transport, id, sequence, error)).await;
    if answered.is_ok() {
        let _ = delivery.reject().await;
    }
}

/// Answer `id` without its record (the answer stream keeps only the first
/// answer of a step, so this cannot make a second one).
async fn answer_without_record(
    transport: &dyn Transport,
    id: &StepIdentity,
    sequence: u64,
    error: &ClusterError,
) -> Result<(), ClusterError> {
    let answer = Answer {
        reply: Reply::Error(ReplyError {
            kind: "host-error".into(),
            message: format!("step {id} cannot run: {error}"),
            field: None,
        }),
        runs: Vec::new(),
        artifacts: Vec::new(),
    };
    transport.publish_answer(id, &answer).await?;
    transport.unqueue(sequence).await
}
