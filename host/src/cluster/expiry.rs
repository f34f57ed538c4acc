//! Steps no delivery will finish: the queue stopped delivering them (every
//! delivery expired, up to `max-deliver`: their hosts died or stalled), or
//! their record cannot be read or written. Each is answered `host-error`
//! once and leaves the queue, so no conductor waits for an answer forever.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
/// How long a host that held a step has to show, by a new heartbeat that
/// lists it, that it still runs it (heartbeats come every 5 s).
const OWNER_GRACE: Duration = Duration::from_secs(15);
/// How often a host looks for steps out of deliveries that no announcement
/// reached (made while no host listened).
const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// Most announcements a host looks into at once; more are left to the
/// sweeps (a flood of forged ones costs nothing more).
const MAX_SETTLING: usize = 256;
/// At most this many looks at one announcement (a day at [`RECHECK`]).
const MAX_LOOKS: u32 = 24 * 3600 / 5;

/// Whether a step's owner still runs it, judged without clocks: within the
/// grace it may; after it, only a heartbeat newer than the one seen when
/// the last grace began, listing the step, says it does.
struct OwnerWatch {
    since: tokio::time::Instant,
    seen: Option<u64>,
    sampled: bool,
}

impl OwnerWatch {
    fn new() -> Self {
        OwnerWatch {
            since: tokio::time::Instant::now(),
            seen: None,
            sampled: false,
        }
    }

    async fn runs(
        &mut self,
        transport: &dyn Transport,
        host: &str,
        key: &str,
    ) -> Result<bool, ClusterError> {
        let beat = transport.heartbeat_of(host, key).await?;
        let revision = beat.map(|(revision, _)| revision);
        if !self.sampled {
            // The grace runs from the first heartbeat seen.
            (self.seen, self.sampled) = (revision, true);
            self.since = tokio::time::Instant::now();
            return Ok(true);
        }
        if self.since.elapsed() < OWNER_GRACE {
            return Ok(true);
        }
        let fresh = matches!(beat, Some((r, true)) if Some(r) != self.seen);
        if fresh {
            // It runs it: the next verdict needs a heartbeat newer still.
            (self.seen, self.since) = (revision, tokio::time::Instant::now());
        }
        Ok(fresh)
    }
}

/// Answer each step the queue gives up on, as the server announces it.
pub(super) async fn listen(worker: Arc<Worker>) {
    let mut exhausted = match worker.transport.exhausted().await {
        Ok(exhausted) => exhausted,
        Err(e) => {
            tracing::warn!("{e}: steps that exhaust their deliveries are answered only by the sweeps of this host");
            return;
        }
    };
    let checks = TaskTracker::new();
    let settling = Arc::new(Mutex::new(HashSet::new()));
    while let Some(advisory) = exhausted.next().await {
        {
            let mut set = settling.lock().unwrap_or_else(|p| p.into_inner());
            if set.len() >= MAX_SETTLING || !set.insert(advisory.sequence) {
                continue; // looked into already, or too many at once
            }
        }
        let (worker, settling) = (worker.clone(), settling.clone());
        checks.spawn(async move {
            settle(worker.transport.as_ref(), &advisory).await;
            let mut set = settling.lock().unwrap_or_else(|p| p.into_inner());
            set.remove(&advisory.sequence);
        });
    }
    checks.close();
    checks.wait().await;
}

/// What one announcement leads to: the step answered, or nothing (the
/// announcement was not the queue's, or the step's host still runs it and
/// answers it itself: looked at again until it has or falls silent).
async fn settle(transport: &dyn Transport, advisory: &Exhausted) {
    let mut watch = OwnerWatch::new();
    for _ in 0..MAX_LOOKS {
        match look(transport, advisory, &mut watch).await {
            Ok(Look::Done) => return,
            Ok(Look::OwnerRuns) => {}
            Err(e) => tracing::warn!("a step out of deliveries: {e}; looking again"),
        }
        tokio::time::sleep(RECHECK).await;
    }
    tracing::warn!(?advisory, "stopped looking at a step out of deliveries whose host still runs it after a day; the sweeps go on");
}

enum Look {
    Done,
    OwnerRuns,
}

/// Check the announcement against the queue, then answer the step.
async fn look(
    transport: &dyn Transport,
    advisory: &Exhausted,
    watch: &mut OwnerWatch,
) -> Result<Look, ClusterError> {
    let Some((payload, subject)) = transport.queued(advisory.sequence).await? else {
        return Ok(Look::Done); // answered and gone meanwhile
    };
    let kind = kind_of_subject(&subject).unwrap_or_default();
    // The queue's own word: its consumer, its max-deliver, a message it
    // delivered. Anything else is not believed (and deletes nothing).
    let Some((max_deliver, delivered)) = transport.queue_state(&kind).await? else {
        return Ok(not_believed(advisory));
    };
    if advisory.consumer != consumer_name(&kind)
        || advisory.deliveries < max_deliver
        || advisory.sequence > delivered
    {
        return Ok(not_believed(advisory));
    }
    let Some(id) = identity_of(&payload) else {
        return transport
            .unqueue(advisory.sequence)
            .await
            .map(|()| Look::Done);
    };
    let out = Out {
        kind: &kind,
        sequence: advisory.sequence,
        max_deliver,
    };
    let answered = give_up(transport, &id, &out, watch).await?;
    if matches!(answered, Look::Done) {
        tracing::warn!(step = %id, "no host finished it in {} deliveries: answered", advisory.deliveries);
    }
    Ok(answered)
}

fn not_believed(advisory: &Exhausted) -> Look {
    tracing::warn!(
        ?advisory,
        "ignored an announcement of a step out of deliveries that the queue does not bear out"
    );
    Look::Done
}

/// Answer the steps of `kinds` that the queue stopped delivering without
/// an announcement any host heard: a while after this host starts, then
/// every few minutes.
pub(super) async fn sweep(worker: Arc<Worker>, kinds: Vec<String>) {
    tokio::time::sleep(OWNER_GRACE).await;
    loop {
        for kind in &kinds {
            if let Err(e) = sweep_kind(worker.transport.as_ref(), kind).await {
                tracing::warn!(%kind, "looking for steps out of deliveries: {e}; the next sweep tries again");
            }
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// One kind's queue: a step whose record shows its last delivery taken, by
/// a host that has not shown since that it still runs it, is given up; one
/// answered already leaves the queue.
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
            let mut watch = OwnerWatch::new();
            if !record.owner.is_empty() {
                watch.runs(transport, &record.owner, &id.key()).await?;
            }
            candidates.push((id, sequence, watch));
        }
    }
    if candidates.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(OWNER_GRACE).await;
    for (id, sequence, mut watch) in candidates {
        let out = Out {
            kind,
            sequence,
            max_deliver,
        };
        if let Look::Done = give_up(transport, &id, &out, &mut watch).await? {
            tracing::warn!(step = %id, "out of deliveries, unannounced: answered");
        }
    }
    Ok(())
}

/// A queue message out of deliveries.
struct Out<'a> {
    kind: &'a str,
    sequence: u64,
    max_deliver: u64,
}

/// The queue gave up on message `out` of step `id`: answer the step
/// (fenced by its record's revision, so a host coming back late cannot
/// answer too), then take the message out of the queue. Only a step on its
/// last delivery is given up, and not while its host shows it still runs it
/// (its last delivery outlived the queue's wait through a server restart:
/// it answers itself).
async fn give_up(
    transport: &dyn Transport,
    id: &StepIdentity,
    out: &Out<'_>,
    watch: &mut OwnerWatch,
) -> Result<Look, ClusterError> {
    let sequence = out.sequence;
    for _ in 0..16 {
        let existing = match transport.record(id).await {
            Err(e @ ClusterError::Corrupt { .. }) => {
                answer_without_record(transport, id, sequence, &e).await?;
                return Ok(Look::Done);
            }
            existing => existing?,
        };
        match &existing {
            Some((record, _))
                if record.reply.is_none()
                    && (record.sequence == 0 || record.sequence == sequence) =>
            {
                // Its last delivery not claimed (hosts died before they
                // could): only when the queue has steps it stopped delivering.
                let unclaimed_last = record.delivery < out.max_deliver;
                if unclaimed_last && transport.out_of_deliveries(out.kind).await? == 0 {
                    return Ok(Look::Done);
                }
                let key = id.key();
                if !record.owner.is_empty() && watch.runs(transport, &record.owner, &key).await? {
                    return Ok(Look::OwnerRuns);
                }
            }
            // Never claimed: only when the queue itself has steps it
            // stopped delivering.
            None if transport.out_of_deliveries(out.kind).await? == 0 => return Ok(Look::Done),
            _ => {}
        }
        let revision = existing.as_ref().map(|(_, revision)| *revision);
        let step = id.to_string();
        let deliveries = out.max_deliver;
        match record::give_up(
            existing.map(|(r, _)| r),
            &step,
            out.kind,
            sequence,
            deliveries,
        ) {
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
