//! One host's turn at one delivery of a step: claim it through its record,
//! run it with the runner, and answer it. Every change of the record is
//! revision-checked (the fence): a turn that loses the step changes nothing
//! more, and its late work is recorded as superseded.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::record::{self, Claim, Reply, ReplyError, StepRecord, Taker};
use super::topology::StepIdentity;
use super::transport::{Delivery, Transport};
use super::worker::{local_request, Worker};
use super::ClusterError;
use crate::contracts::StepExecutionRequest;
use crate::fsutil::now_rfc3339;
use crate::serve::{event_json, Utf8Chunks};

/// How long a host keeps retrying the server (restarting, say) before it
/// gives a step up to redelivery.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// Most bytes of an answer: the server's default message size is 1 MiB,
/// and the step's record carries the answer beside its history.
const MAX_ANSWER_BYTES: usize = 640 * 1024;

/// Retry `attempt` while it fails in a way that may pass (the server
/// restarting), for a while; the last error when it gave up.
pub(super) async fn retrying<T, F, Fut>(id: &StepIdentity, attempt: F) -> Result<T, ClusterError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ClusterError>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tracing::warn!(step = %id, "{e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(step = %id, "{e}; leaving the step");
                return Err(e);
            }
        }
    }
}

/// Claim the step for `delivery`: its record and revision, or `None` when
/// there is nothing to run (answered: the answer is published again and
/// the delivery acknowledged; a duplicate message: acknowledged; a newer
/// delivery holds it: left alone).
pub(super) async fn claim(
    worker: &Worker,
    id: &StepIdentity,
    delivery: &dyn Delivery,
    kind: &str,
) -> Result<Option<(StepRecord, u64)>, ClusterError> {
    let transport = worker.transport.as_ref();
    let (host, delivered, sequence) = (
        worker.host.as_str(),
        delivery.delivered(),
        delivery.sequence(),
    );
    let step = id.to_string();
    loop {
        let existing = transport.record(id).await?;
        let revision = existing.as_ref().map(|(_, r)| *r);
        if let Some((record, revision)) = &existing {
            // Ours already: a claim whose confirmation was lost, or the same
            // delivery again (a server restarted from its last flush can
            // repeat a delivery count). Running here: leave it be.
            if record.held_by_message(host, delivered, sequence) {
                if worker.is_running(id, delivered) {
                    return Ok(None);
                }
                return Ok(Some((record.clone(), *revision)));
            }
        }
        let taker = Taker {
            step: &step,
            worker_kind: kind,
            host,
            delivery: delivered,
            sequence,
            now: now_rfc3339(),
        };
        match record::claim(existing.map(|(r, _)| r), &taker) {
            Claim::Run(record) => {
                if let Some(revision) = transport.write_record(id, &record, revision).await? {
                    return Ok(Some((record, revision)));
                }
            }
            Claim::Answered(answer) => {
                transport.publish_answer(id, &answer).await?;
                delivery.ack().await?;
                return Ok(None);
            }
            Claim::Duplicate => {
                tracing::info!(step = %id, "dropped a duplicate submission (queue message {sequence})");
                delivery.ack().await?;
                return Ok(None);
            }
            Claim::Stale { owner, delivery } => {
                tracing::info!(step = %id, "delivery {delivered} is stale: {owner} holds delivery {delivery}");
                return Ok(None);
            }
        }
    }
}

/// A claimed step on this host.
pub(super) struct Turn<'a> {
    pub worker: &'a Worker,
    pub id: &'a StepIdentity,
    pub delivery: Arc<dyn Delivery>,
    /// The step's record as this turn last wrote it, and its revision.
    pub record: StepRecord,
    pub revision: u64,
}

impl Turn<'_> {
    pub fn host(&self) -> &str {
        &self.worker.host
    }

    pub fn transport(&self) -> &dyn Transport {
        self.worker.transport.as_ref()
    }

    /// Change the step's record with `change`, revision-checked: `false`
    /// when the step is no longer this turn's. A record another host only
    /// annotated (a late host marking its own turn) gets the change again.
    pub async fn update(
        &mut self,
        change: impl Fn(StepRecord) -> StepRecord,
    ) -> Result<bool, ClusterError> {
        let (host, delivery) = (self.worker.host.clone(), self.delivery.delivered());
        let sequence = self.delivery.sequence();
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        for _ in 0..64 {
            let next = change(self.record.clone());
            let written = self.write_and_check(&next).await;
            match written {
                Ok(Ok(revision)) => {
                    (self.record, self.revision) = (next, revision);
                    return Ok(true);
                }
                Ok(Err(Some((now, revision))))
                    if now.held_by_message(&host, delivery, sequence) =>
                {
                    (self.record, self.revision) = (now, revision);
                }
                Ok(Err(_)) => return Ok(false),
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(step = %self.id, "{e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Nats {
            doing: "writing a step's record",
            message: "it kept changing under this host".into(),
        })
    }

    /// Write `next` at this turn's revision: the new revision, or what is
    /// there instead (a confirmation lost on the way counts as written).
    async fn write_and_check(
        &self,
        next: &StepRecord,
    ) -> Result<Result<u64, Option<(StepRecord, u64)>>, ClusterError> {
        let transport = self.transport();
        if let Some(revision) = transport
            .write_record(self.id, next, Some(self.revision))
            .await?
        {
            return Ok(Ok(revision));
        }
        Ok(match transport.record(self.id).await? {
            Some((now, revision)) if self.landed(&now, next) => Ok(revision),
            other => Err(other),
        })
    }

    /// Whether `now` already holds what this turn wrote as `next` (its
    /// confirmation lost on the way, another host's note added since).
    fn landed(&self, now: &StepRecord, next: &StepRecord) -> bool {
        if now == next {
            return true;
        }
        let (host, delivery) = (self.host(), self.delivery.delivered());
        let ours = |r: &StepRecord| {
            r.runs
                .iter()
                .find(|t| t.host == host && t.delivery == delivery)
                .map(|t| (t.end, t.run_dir.clone()))
        };
        now.reply == next.reply
            && now.checkpoints == next.checkpoints
            && now.artifacts == next.artifacts
            && ours(now) == ours(next)
            && now.owner == next.owner
            && now.delivery == next.delivery
    }

    /// Run the step here. `None` when it was given back to the queue or
    /// taken over while it ran.
    /// The step stays listed as running here (heartbeats say so) until
    /// the turn ends, its answer published or not.
    pub async fn run(&mut self, request: StepExecutionRequest) -> Option<Reply> {
        let token = CancellationToken::new();
        self.worker
            .running_insert(self.id, self.delivery.delivered(), &token);
        self.execute(request, &token).await
    }

    async fn execute(
        &mut self,
        request: StepExecutionRequest,
        token: &CancellationToken,
    ) -> Option<Reply> {
        if self
            .transport()
            .cancel_requested(self.id)
            .await
            .unwrap_or(false)
        {
            token.cancel();
        }
        let delivery = self.delivery.delivered();
        let turn = format!("delivery-{delivery}-r{}", self.revision);
        let mut local = local_request(request, &self.worker.settings, self.host(), &turn);
        self.inherit(&mut local).await;
        // Preparing writes and syncs records: off the async threads.
        let (runner, cancel) = (self.worker.runner.clone(), token.clone());
        let started = tokio::task::spawn_blocking(move || runner.start_with(local, &cancel)).await;
        let mut handle = match started {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => return Some(Reply::Error(ReplyError::from(&e))),
            Err(e) => {
                let e = crate::Error::Host(format!("preparing the step: {e}"));
                return Some(Reply::Error(ReplyError::from(&e)));
            }
        };
        let run_dir = handle.run_dir().to_owned();
        let host = self.worker.host.clone();
        // The record names where this turn's run directory is.
        match self.update(|r| r.started(&host, delivery, &run_dir)).await {
            Ok(true) => {}
            Ok(false) => token.cancel(), // taken over already: stop, answer nothing
            Err(e) => {
                tracing::warn!(step = %self.id, "{e}; the run directory is not in the record")
            }
        }
        let mut text = Utf8Chunks::default();
        let mut last_seq = 0;
        while let Some(event) = handle.events().next().await {
            // Events skipped (this host read the stream late): what they
            // said is in the run directory.
            if event.seq > last_seq + 1 {
                self.catch_up_or_stop(&run_dir, token).await;
            }
            last_seq = event.seq;
            let captured = super::replication::captured_checkpoint(&event);
            // Caught up already (its event read after a gap): not again.
            if let Some((seq, kind)) = captured.filter(|(seq, _)| !self.replicated(*seq)) {
                match self.replicate(&run_dir, seq, &kind).await {
                    Ok(true) => {}
                    Ok(false) => token.cancel(), // taken over: stop working for nothing
                    Err(e) => {
                        tracing::warn!(step = %self.id, "checkpoint {seq} not replicated: {e}")
                    }
                }
            }
            let declared = super::replication::declared_artifact(&event);
            if let Some(name) = declared.filter(|name| !self.stored(name)) {
                match self.replicate_artifact(&run_dir, &name).await {
                    Ok(true) => {}
                    Ok(false) => token.cancel(),
                    Err(e) => {
                        tracing::warn!(step = %self.id, "artifact {name} not replicated: {e}")
                    }
                }
            }
            if let Some(mut message) = event_json(event, &mut text) {
                message.insert("host".into(), Value::from(self.host()));
                message.insert("delivery".into(), Value::from(delivery));
                self.transport()
                    .publish_event(self.id, &Value::Object(message))
                    .await;
            }
        }
        self.catch_up_or_stop(&run_dir, token).await;
        match handle.result().await {
            Ok(result) => Some(Reply::Result(Box::new(result))),
            Err(e) if delivery < self.delivery.max_deliver() => {
                tracing::warn!(step = %self.id, "{e}; giving the step back to the queue");
                self.release().await;
                None
            }
            Err(e) => Some(Reply::Error(ReplyError::from(&e))),
        }
    }

    /// Replicate what the stream's skipped events announced; a step taken
    /// over meanwhile is stopped.
    async fn catch_up_or_stop(&mut self, run_dir: &str, token: &CancellationToken) {
        match self.catch_up(run_dir).await {
            Ok(true) => {}
            Ok(false) => token.cancel(),
            Err(e) => tracing::warn!(step = %self.id, "catching up on replication: {e}"),
        }
    }

    /// Give the step back: another host (or this one, later) runs it.
    async fn release(&mut self) {
        let (host, delivery) = (self.worker.host.clone(), self.delivery.delivered());
        let _ = self.update(|r| r.released(&host, delivery)).await;
        let _ = self.delivery.retry(self.delivery.ack_wait()).await;
    }

    /// Write the answer into the record (fenced), then publish it and
    /// acknowledge the delivery. A turn that lost the step meanwhile
    /// publishes nothing: it is recorded as superseded.
    pub async fn finish(mut self, reply: Reply) {
        let reply = reply.fit(MAX_ANSWER_BYTES);
        let (host, delivery) = (self.worker.host.clone(), self.delivery.delivered());
        match self
            .update(|r| r.finished(&host, delivery, reply.clone()))
            .await
        {
            Ok(true) => {}
            Ok(false) => return self.superseded().await,
            Err(e) => {
                tracing::error!(step = %self.id, "{e}; its answer waits for the next delivery");
                return;
            }
        }
        let Some(answer) = self.record.answer() else {
            return;
        };
        let (transport, delivery) = (self.transport(), &self.delivery);
        let published = retrying(self.id, || async {
            transport.publish_answer(self.id, &answer).await?;
            delivery.ack().await?;
            // The queue's last delivery may have outlived its wait (the
            // queue then keeps the message): take it out.
            if delivery.delivered() >= delivery.max_deliver() {
                transport.unqueue(delivery.sequence()).await?;
            }
            Ok(())
        })
        .await;
        if published.is_err() {
            tracing::error!(step = %self.id, "answered in its record but not published: its next delivery publishes it");
        }
    }

    /// Record that this host's late work on the step was refused.
    async fn superseded(&self) {
        let delivery = self.delivery.delivered();
        tracing::warn!(step = %self.id, host = %self.host(), delivery, "taken over by another host while it ran here: this result is superseded and not published");
        for _ in 0..5 {
            let Ok(Some((record, revision))) = self.transport().record(self.id).await else {
                return;
            };
            let marked = record.superseded(self.host(), delivery);
            let written = self
                .transport()
                .write_record(self.id, &marked, Some(revision));
            if let Ok(Some(_)) = written.await {
                return;
            }
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let slot = (self.id.key(), self.delivery.delivered());
        self.worker.running_remove(&slot);
    }
}

/// Tell the queue the step is still being worked on, three times per ack
/// wait (the queue's own), until aborted.
pub(super) async fn keep_alive(delivery: Arc<dyn Delivery>) {
    let every = (delivery.ack_wait() / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = delivery.in_progress().await {
            tracing::debug!("{e}");
        }
    }
}
