//! Steps no delivery will finish: the queue stopped delivering them (every
//! delivery expired, up to `max-deliver`: their hosts died or stalled), or
//! their record cannot be read or written. Each is answered `host-error`
//! once and leaves the queue, so no conductor waits for an answer forever.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::task::TaskTracker;

use super::record::{self, Answer, GiveUp, Reply, ReplyError};
use super::topology::{consumer_name, kind_of_subject, StepIdentity};
use super::transport::{Delivery, Exhausted, Transport};
use super::turn::retrying;
use super::worker::{identity_of, Worker};
use super::ClusterError;

/// How often a step whose owner still says it runs it is looked at again.
const RECHECK: Duration = Duration::from_secs(5);
/// How long after the announcement a step's owner is taken to run it
/// whatever its heartbeat says.
const OWNER_GRACE: Duration = Duration::from_secs(15);

/// Answer each step the queue gives up on, as the server announces it.
pub(super) async fn listen(worker: Arc<Worker>) {
    let mut exhausted = match worker.transport.exhausted().await {
        Ok(exhausted) => exhausted,
        Err(e) => {
            tracing::warn!(
                "{e}: steps that exhaust their deliveries are not answered by this host"
            );
            return;
        }
    };
    let checks = TaskTracker::new();
    while let Some(advisory) = exhausted.next().await {
        checks.spawn(settle(worker.clone(), advisory));
    }
    checks.close();
    checks.wait().await;
}

/// How often a host looks for steps out of deliveries that no announcement
/// reached (made while no host listened).
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Answer the steps of `kinds` that the queue stopped delivering without
/// an announcement any host heard: a while after this host starts, then
/// every few minutes.
pub(super) async fn sweep(worker: Arc<Worker>, kinds: Vec<String>) {
    tokio::time::sleep(OWNER_GRACE).await;
    loop {
        for kind in &kinds {
            if let Err(e) = sweep_kind(worker.transport.as_ref(), kind).await {
                tracing::warn!(%kind, "looking for steps out of deliveries: {e}");
            }
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// One kind's queue: a step whose last delivery its record shows taken,
/// by a host that does not say it runs it (looked at twice, a grace
/// apart), is given up; one answered already leaves the queue.
async fn sweep_kind(transport: &dyn Transport, kind: &str) -> Result<(), ClusterError> {
    if transport.out_of_deliveries(kind).await? == 0 {
        return Ok(());
    }
    let Some((max_deliver, delivered)) = transport.queue_state(kind).await? else {
        return Ok(());
    };
    let mut candidates = Vec::new();
    let mut from = 1;
    while let Some((sequence, payload)) = transport.next_queued(kind, from).await? {
        if sequence > delivered {
            break; // not delivered yet: waiting, not out of deliveries
        }
        from = sequence + 1;
        let Some(id) = identity_of(&payload) else {
            continue;
        };
        let Ok(Some((record, _))) = transport.record(&id).await else {
            continue;
        };
        let last_taken = record.sequence == sequence && record.delivery >= max_deliver;
        if record.reply.is_some() || last_taken {
            candidates.push((id, sequence, record.delivery));
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(OWNER_GRACE).await;
    for (id, sequence, deliveries) in candidates {
        if let Look::Done = give_up(transport, &id, kind, (sequence, deliveries), false).await? {
            tracing::warn!(step = %id, "out of deliveries, unannounced: answered");
        }
    }
    Ok(())
}

/// What one announcement leads to: the step answered, or nothing (the
/// announcement was not the queue's, or the step's host still runs it and
/// answers it itself: looked at again until it has or falls silent).
async fn settle(worker: Arc<Worker>, advisory: Exhausted) {
    let transport = worker.transport.as_ref();
    let announced = tokio::time::Instant::now();
    for _ in 0..MAX_LOOKS {
        // A host that held the step gets a while to say it still runs it
        // (its heartbeats resume within seconds of a server restart).
        let patient = announced.elapsed() < OWNER_GRACE;
        match look(transport, &advisory, patient).await {
            Ok(Look::Done) => return,
            Ok(Look::OwnerRuns) => {}
            Err(e) => tracing::warn!("a step out of deliveries: {e}; looking again"),
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// At most this many looks at one announcement (a day at [`RECHECK`]).
const MAX_LOOKS: u32 = 24 * 3600 / 5;

enum Look {
    Done,
    OwnerRuns,
}

/// Check the announcement against the queue, then answer the step.
async fn look(
    transport: &dyn Transport,
    advisory: &Exhausted,
    patient: bool,
) -> Result<Look, ClusterError> {
    let Some((payload, subject)) = transport.queued(advisory.sequence).await? else {
        return Ok(Look::Done); // answered and gone meanwhile
    };
    let kind = kind_of_subject(&subject).unwrap_or_default();
    // The queue's own word: its consumer, its max-deliver, a message it
    // delivered. Anything else is not believed (and deletes nothing).
    let Some((max_deliver, delivered)) = transport.queue_state(&kind).await? else {
        tracing::warn!(
            ?advisory,
            "ignored an announcement of a step out of deliveries for a kind no host served"
        );
        return Ok(Look::Done);
    };
    if advisory.consumer != consumer_name(&kind)
        || advisory.deliveries < max_deliver
        || advisory.sequence > delivered
    {
        tracing::warn!(
            ?advisory,
            "ignored an announcement of a step out of deliveries that the queue does not bear out"
        );
        return Ok(Look::Done);
    }
    let Some(id) = identity_of(&payload) else {
        return transport
            .unqueue(advisory.sequence)
            .await
            .map(|()| Look::Done);
    };
    let (sequence, deliveries) = (advisory.sequence, advisory.deliveries);
    let answered = give_up(transport, &id, &kind, (sequence, deliveries), patient).await?;
    if matches!(answered, Look::Done) {
        tracing::warn!(step = %id, "no host finished it in {} deliveries: answered", advisory.deliveries);
    }
    Ok(answered)
}

/// The queue gave up on message `sequence` of step `id`: answer the step
/// (fenced by its record's revision, so a host coming back late cannot
/// answer too), then take the message out of the queue. A host that still
/// says it runs the step (its last delivery outlived the queue's wait: a
/// server restart lost its signs of life) is left to answer it.
async fn give_up(
    transport: &dyn Transport,
    id: &StepIdentity,
    kind: &str,
    (sequence, deliveries): (u64, u64),
    patient: bool,
) -> Result<Look, ClusterError> {
    for _ in 0..16 {
        let existing = match transport.record(id).await {
            Err(e @ ClusterError::Corrupt { .. }) => {
                answer_without_record(transport, id, sequence, &e).await?;
                return Ok(Look::Done);
            }
            existing => existing?,
        };
        if let Some((record, _)) = &existing {
            let open = record.reply.is_none() && !record.owner.is_empty();
            if open && (patient || transport.host_runs(&record.owner, &id.key()).await?) {
                return Ok(Look::OwnerRuns);
            }
        }
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
                    answer_without_record(transport, id, sequence, &e).await?;
                    return Ok(Look::Done);
                }
                Err(e) => return Err(e),
            },
            GiveUp::Answered(answer) => transport.publish_answer(id, &answer).await?,
            GiveUp::Duplicate => {}
        }
        transport.unqueue(sequence).await?;
        return Ok(Look::Done);
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
