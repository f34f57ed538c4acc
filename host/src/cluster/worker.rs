//! `baa-runner worker`: a host that pulls steps of the kinds it can run
//! from the cluster's queue, claims each through its record (the fence),
//! runs it with the same runner as every other path, streams its events,
//! and publishes its one answer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::record::{self, Claim, ReplicatedCheckpoint, Reply, ReplyError, StepRecord, Taker};
use super::topology::{check_token, StepIdentity};
use super::transport::{Delivery, Transport};
use super::ClusterError;
use crate::checkpoints::history::INHERITED_DIR;
use crate::checkpoints::{record_file_name, MAX_PAYLOAD_BYTES};
use crate::config::ClusterSettings;
use crate::contracts::{EventSource, StepExecutionRequest};
use crate::fsutil::now_rfc3339;
use crate::serve::{event_json, Utf8Chunks};
use crate::Runner;

/// How long one pull waits for a step before asking again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// How often a host says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a host keeps retrying the server (restarting, say) before it
/// gives a step up to redelivery.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// A worker host: one runner, one transport, a name.
pub struct Worker {
    runner: Runner,
    transport: Arc<dyn Transport>,
    host: String,
    settings: ClusterSettings,
    /// Steps running here, by key: their cancellation.
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Worker {
    pub fn new(
        runner: Runner,
        transport: Arc<dyn Transport>,
        host: String,
        settings: ClusterSettings,
    ) -> Arc<Self> {
        Arc::new(Worker {
            runner,
            transport,
            host,
            settings,
            running: Mutex::default(),
        })
    }

    /// The kinds this host serves: every kind it can load and grants
    /// what it requests, or those of `[cluster] kinds` (each must be one).
    pub async fn kinds(&self) -> Result<Vec<String>, ClusterError> {
        let mut runnable = Vec::new();
        for kind in self.runner.list_kinds().await {
            if kind.shadowed {
                continue;
            }
            let why_not = match (&kind.error, check_token(&kind.name)) {
                (Some(error), _) => Some(error.clone()),
                (None, Err(e)) => Some(e),
                _ if !kind.missing.is_empty() => {
                    Some("it requests capabilities this host does not grant".to_owned())
                }
                _ => None,
            };
            match why_not {
                None => runnable.push(kind.name),
                Some(why) => tracing::info!(kind = %kind.name, "not served: {why}"),
            }
        }
        let Some(wanted) = &self.settings.kinds else {
            return Ok(runnable);
        };
        for kind in wanted {
            if !runnable.contains(kind) {
                return Err(ClusterError::Settings(format!(
                    "`cluster.kinds` names `{kind}`, which this host cannot run (runnable here: {}); see `baa-runner kinds`",
                    runnable.join(", ")
                )));
            }
        }
        Ok(wanted.clone())
    }

    /// Serve until `shutdown` fires; then stop taking steps and let the
    /// running ones finish (a second stop is the caller's to enforce:
    /// their deliveries then go to other hosts).
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ClusterError> {
        let kinds = self.kinds().await?;
        if kinds.is_empty() {
            return Err(ClusterError::Settings(
                "this host can run no kind: see `baa-runner kinds`".into(),
            ));
        }
        let slots = self.runner.config().concurrency.max_steps.max(1) as usize;
        let slots = Arc::new(Semaphore::new(slots));
        let steps = TaskTracker::new();
        let mut cancels = self.transport.cancellations().await?;
        let listener = {
            let worker = self.clone();
            tokio::spawn(async move {
                while let Some(key) = cancels.next().await {
                    if let Some(token) = worker.lock_running().get(&key) {
                        token.cancel();
                    }
                }
            })
        };
        let heartbeat = tokio::spawn(self.clone().heartbeats(kinds.clone()));
        tracing::info!(host = %self.host, ?kinds, "serving");
        let pullers = TaskTracker::new();
        for kind in kinds {
            let (worker, slots, steps) = (self.clone(), slots.clone(), steps.clone());
            pullers.spawn(worker.pull(kind, slots, steps, shutdown.clone()));
        }
        pullers.close();
        pullers.wait().await;
        steps.close();
        steps.wait().await;
        listener.abort();
        heartbeat.abort();
        Ok(())
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take steps of `kind` while a slot is free.
    async fn pull(
        self: Arc<Self>,
        kind: String,
        slots: Arc<Semaphore>,
        steps: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = self.transport.next_step(&kind, PULL_WAIT) => next,
            };
            match next {
                Ok(Some(delivery)) => {
                    steps.spawn(self.clone().take(Arc::from(delivery), permit));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%kind, "{e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn heartbeats(self: Arc<Self>, kinds: Vec<String>) {
        let capacity = self.runner.config().concurrency.max_steps;
        let since = now_rfc3339();
        loop {
            let status = json!({
                "host": self.host,
                "pid": std::process::id(),
                "kinds": kinds,
                "capacity": capacity,
                "running": self.lock_running().len(),
                "since": since,
                "seenAt": now_rfc3339(),
            });
            self.transport.heartbeat(&self.host, &status).await;
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    /// One delivery: claim it, run it, answer it.
    async fn take(self: Arc<Self>, delivery: Arc<dyn Delivery>, _slot: OwnedSemaphorePermit) {
        let (id, request) = match crate::contracts::parse_request(delivery.payload()) {
            Ok(request) => (StepIdentity::of(&request), Ok(request)),
            Err(e) => match identity_of(delivery.payload()) {
                Some(id) => (id, Err(e)),
                None => {
                    tracing::warn!("rejected a message of the steps queue that names no step: {e}");
                    let _ = delivery.reject().await;
                    return;
                }
            },
        };
        let kind = request
            .as_ref()
            .map(|r| r.worker_kind.to_string())
            .unwrap_or_default();
        let turn = Turn {
            worker: &self,
            id: &id,
            delivery: delivery.as_ref(),
        };
        let Some((record, revision)) = turn.retrying(|| turn.claim(&kind)).await else {
            return;
        };
        let (reply, record, revision) = match request {
            Err(e) => (Reply::Error(ReplyError::from(&e)), record, revision),
            Ok(request) => match turn.run(request, record, revision, &delivery).await {
                Some(ran) => ran,
                None => return,
            },
        };
        turn.finish(record, revision, reply).await;
    }
}

/// The identity fields of a message that is not a valid request, when
/// they are there and valid: its answer can then name what is wrong.
fn identity_of(payload: &[u8]) -> Option<StepIdentity> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let id = |field: &str| {
        let text = value.get(field)?.as_str()?;
        check_token(text).ok()?;
        (!text.starts_with('.') && text.len() <= 128).then(|| text.to_owned())
    };
    Some(StepIdentity {
        task_id: id("taskId")?,
        step_id: id("stepId")?,
        run_id: id("runId")?,
        attempt: u32::try_from(value.get("attempt")?.as_u64()?)
            .ok()
            .filter(|a| *a > 0)?,
    })
}

/// Where a delivery runs on this host: its own runs root below the
/// request's, so two deliveries of one step (a takeover, a restarted
/// host) never share a run directory.
fn local_request(
    mut request: StepExecutionRequest,
    host: &str,
    delivery: u64,
) -> StepExecutionRequest {
    let base = match request.runtime.runs_root_dir.as_deref() {
        Some(dir) if Path::new(dir).is_absolute() => Path::new(dir).to_path_buf(),
        Some(dir) => Path::new(&request.runtime.repo_root).join(dir),
        None => crate::run::validate::default_runs_root(),
    };
    let root = base
        .join("cluster")
        .join(super::topology::token(host))
        .join(format!("delivery-{delivery}"));
    request.runtime.runs_root_dir = Some(crate::fsutil::display(&root));
    request
}

/// One host's turn at one delivery of a step.
struct Turn<'a> {
    worker: &'a Worker,
    id: &'a StepIdentity,
    delivery: &'a dyn Delivery,
}

impl Turn<'_> {
    fn host(&self) -> &str {
        &self.worker.host
    }

    fn transport(&self) -> &dyn Transport {
        self.worker.transport.as_ref()
    }

    /// `attempt` until it succeeds, retrying transport failures (a server
    /// restarting) for a while; `None` when it gave up, or when there is
    /// nothing to do.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ClusterError>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(done) => return done,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(step = %self.id, "{e}; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(step = %self.id, "{e}; giving the step up to redelivery");
                    return None;
                }
            }
        }
    }

    /// Claim the step for this delivery: `None` when it is answered (the
    /// answer is published again and the delivery acknowledged) or a newer
    /// delivery holds it.
    async fn claim(&self, kind: &str) -> Result<Option<(StepRecord, u64)>, ClusterError> {
        let delivery = self.delivery.delivered();
        let step = self.id.to_string();
        loop {
            let existing = self.transport().record(self.id).await?;
            let revision = existing.as_ref().map(|(_, r)| *r);
            if let Some((record, revision)) = &existing {
                // A claim whose confirmation was lost: it is ours.
                if record.held_by(self.host(), delivery) {
                    return Ok(Some((record.clone(), *revision)));
                }
            }
            let taker = Taker {
                step: &step,
                worker_kind: kind,
                host: self.host(),
                delivery,
                now: now_rfc3339(),
            };
            match record::claim(existing.map(|(r, _)| r), &taker) {
                Claim::Run(record) => {
                    if let Some(revision) = self
                        .transport()
                        .write_record(self.id, &record, revision)
                        .await?
                    {
                        return Ok(Some((record, revision)));
                    }
                }
                Claim::Answered(answer) => {
                    self.transport().publish_answer(self.id, &answer).await?;
                    self.delivery.ack().await?;
                    return Ok(None);
                }
                Claim::Stale { owner, delivery } => {
                    tracing::info!(step = %self.id, "delivery {} is stale: {owner} holds delivery {delivery}", self.delivery.delivered());
                    return Ok(None);
                }
            }
        }
    }

    /// Run the claimed step here. `None` when the step was given back to
    /// the queue or taken over while it ran.
    async fn run(
        &self,
        request: StepExecutionRequest,
        record: StepRecord,
        revision: u64,
        delivery: &Arc<dyn Delivery>,
    ) -> Option<(Reply, StepRecord, u64)> {
        let key = self.id.key();
        let token = CancellationToken::new();
        self.worker
            .lock_running()
            .insert(key.clone(), token.clone());
        let keepalive = tokio::spawn(keep_alive(
            delivery.clone(),
            Duration::from_secs(self.worker.settings.ack_wait_sec.max(1)),
        ));
        let ran = self.execute(request, record, revision, &token).await;
        keepalive.abort();
        self.worker.lock_running().remove(&key);
        ran
    }

    async fn execute(
        &self,
        request: StepExecutionRequest,
        mut record: StepRecord,
        mut revision: u64,
        token: &CancellationToken,
    ) -> Option<(Reply, StepRecord, u64)> {
        if self
            .transport()
            .cancel_requested(self.id)
            .await
            .unwrap_or(false)
        {
            token.cancel();
        }
        let delivery = self.delivery.delivered();
        let mut local = local_request(request, self.host(), delivery);
        self.inherit(&mut local, &record).await;
        let mut handle = match self.worker.runner.start_with(local, token) {
            Ok(handle) => handle,
            Err(e) => return Some((Reply::Error(ReplyError::from(&e)), record, revision)),
        };
        let run_dir = handle.run_dir().to_owned();
        // The record names where this turn's run directory is.
        let started = record.clone().started(self.host(), delivery, &run_dir);
        match self.fenced_write(&started, revision).await {
            Ok(Some(next)) => (record, revision) = (started, next),
            Ok(None) => token.cancel(), // taken over already: stop, answer nothing
            Err(e) => {
                tracing::warn!(step = %self.id, "{e}; the run directory is not in the record")
            }
        }
        let mut text = Utf8Chunks::default();
        while let Some(event) = handle.events().next().await {
            if let Some((seq, kind)) = captured_checkpoint(&event) {
                match self
                    .replicate(&record, revision, &run_dir, seq, &kind)
                    .await
                {
                    Ok(Some(next)) => (record, revision) = next,
                    Ok(None) => token.cancel(), // taken over: stop working for nothing
                    Err(e) => {
                        tracing::warn!(step = %self.id, "checkpoint {seq} not replicated: {e}")
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
        match handle.result().await {
            Ok(result) => Some((Reply::Result(Box::new(result)), record, revision)),
            Err(e) if delivery < u64::from(self.worker.settings.max_deliver) => {
                tracing::warn!(step = %self.id, "{e}; giving the step back to the queue");
                self.release(record, revision).await;
                None
            }
            Err(e) => Some((Reply::Error(ReplyError::from(&e)), record, revision)),
        }
    }

    /// Write `next` over the record at `revision`: its new revision, or
    /// `None` when another host changed it first (a confirmation lost on
    /// the way is told apart by reading the record back).
    async fn fenced_write(
        &self,
        next: &StepRecord,
        revision: u64,
    ) -> Result<Option<u64>, ClusterError> {
        if let Some(written) = self
            .transport()
            .write_record(self.id, next, Some(revision))
            .await?
        {
            return Ok(Some(written));
        }
        Ok(match self.transport().record(self.id).await? {
            Some((now, written)) if &now == next => Some(written),
            _ => None,
        })
    }

    /// Replicate checkpoint `seq` of this turn (record and payload, from
    /// the run directory the host wrote), then add it to the step's record.
    /// `None` when the step was taken over meanwhile.
    async fn replicate(
        &self,
        record: &StepRecord,
        revision: u64,
        run_dir: &str,
        seq: u32,
        kind: &str,
    ) -> Result<Option<(StepRecord, u64)>, ClusterError> {
        let dir = Path::new(run_dir).join("checkpoints");
        let record_file = read_capped(&dir.join(record_file_name(seq)), MAX_RECORD_BYTES).await?;
        let payload_path = dir.join(payload_file_name(seq, kind));
        let payload = match tokio::fs::symlink_metadata(&payload_path).await {
            Ok(_) => Some(read_capped(&payload_path, MAX_PAYLOAD_BYTES).await?),
            Err(_) => None,
        };
        let delivery = self.delivery.delivered();
        let name = super::topology::checkpoint_name(self.id, self.host(), delivery, seq);
        let stored = payload.is_some();
        self.transport()
            .put_checkpoint(&name, record_file, payload)
            .await?;
        let next = record.clone().with_checkpoint(ReplicatedCheckpoint {
            seq,
            checkpoint_type: kind.to_owned(),
            host: self.host().to_owned(),
            delivery,
            name,
            payload: stored,
        });
        Ok(self.fenced_write(&next, revision).await?.map(|r| (next, r)))
    }

    /// Put the checkpoints earlier turns replicated where the runner finds
    /// an earlier attempt's (`<step dir>/inherited/`), and resume from the
    /// last unless the request names its own resume point.
    async fn inherit(&self, request: &mut StepExecutionRequest, record: &StepRecord) {
        let inherited = record.inherited(self.host(), self.delivery.delivered());
        let Some(last) = inherited.last() else {
            return;
        };
        let Ok(step_dir) = self.worker.runner.step_dir(request) else {
            return; // an invalid request: the run says why
        };
        let dir = step_dir.join(INHERITED_DIR).join("checkpoints");
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(step = %self.id, "cannot inherit checkpoints: {e}");
            return;
        }
        for checkpoint in &inherited {
            if let Err(e) = self.inherit_one(&dir, checkpoint).await {
                tracing::warn!(step = %self.id, "checkpoint {} not inherited: {e}", checkpoint.seq);
            }
        }
        let resume = &mut request
            .checkpoint
            .get_or_insert_with(Default::default)
            .resume_from_seq;
        if resume.is_none() {
            *resume = Some(last.seq);
        }
    }

    async fn inherit_one(
        &self,
        dir: &Path,
        checkpoint: &ReplicatedCheckpoint,
    ) -> Result<(), ClusterError> {
        check_token(&checkpoint.checkpoint_type).map_err(|why| ClusterError::Corrupt {
            what: format!("the type of replicated checkpoint {}", checkpoint.name),
            message: why,
        })?;
        let (record_file, payload) = self
            .transport()
            .get_checkpoint(&checkpoint.name, checkpoint.payload)
            .await?;
        let payload_name = payload_file_name(checkpoint.seq, &checkpoint.checkpoint_type);
        let mut files = vec![(dir.join(record_file_name(checkpoint.seq)), record_file)];
        files.extend(payload.map(|p| (dir.join(payload_name), p)));
        let written = tokio::task::spawn_blocking(move || {
            let files: Vec<(&Path, &[u8])> = files
                .iter()
                .map(|(p, b)| (p.as_path(), b.as_slice()))
                .collect();
            crate::fsutil::write_all_atomic(&files, crate::fsutil::Durability::PowerLoss)
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ClusterError::Io(e.to_string())),
            Err(e) => Err(ClusterError::Io(e.to_string())),
        }
    }

    /// Give the step back: another host (or this one, later) runs it.
    async fn release(&self, record: StepRecord, revision: u64) {
        let released = record.released(self.host(), self.delivery.delivered());
        let _ = self
            .transport()
            .write_record(self.id, &released, Some(revision))
            .await;
        let wait = Duration::from_secs(self.worker.settings.ack_wait_sec.max(1));
        let _ = self.delivery.retry(wait).await;
    }

    /// Write the answer into the record (fenced by its revision), then
    /// publish it and acknowledge the delivery. A host that lost the step
    /// meanwhile publishes nothing: its turn is recorded as superseded.
    async fn finish(&self, record: StepRecord, revision: u64, reply: Reply) {
        let delivery = self.delivery.delivered();
        let (finished, answer) = record.finished(self.host(), delivery, reply);
        let written = self
            .retrying(|| async {
                let written = self.fenced_write(&finished, revision).await?;
                Ok(Some(written.is_some()))
            })
            .await;
        match written {
            Some(true) => {
                let published = self
                    .retrying(|| async {
                        self.transport().publish_answer(self.id, &answer).await?;
                        self.delivery.ack().await.map(Some)
                    })
                    .await;
                if published.is_none() {
                    tracing::error!(step = %self.id, "answered in its record but not published: its next delivery publishes it");
                }
            }
            Some(false) => self.superseded().await,
            None => {}
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
            if let Ok(Some(_)) = self
                .transport()
                .write_record(self.id, &marked, Some(revision))
                .await
            {
                return;
            }
        }
    }
}

/// The seq and type of a checkpoint the host captured, when `event` says so.
fn captured_checkpoint(event: &crate::run::StepEvent) -> Option<(u32, String)> {
    let crate::run::StepEventBody::Lifecycle(entry) = &event.body else {
        return None;
    };
    if entry.event != "checkpoint.captured" || entry.source != EventSource::Host {
        return None;
    }
    let data = entry.data.as_ref()?;
    let seq = u32::try_from(data.get("seq")?.as_u64()?).ok()?;
    let kind = data.get("type")?.as_str()?;
    check_token(kind).ok()?;
    Some((seq, kind.to_owned()))
}

/// A checkpoint record file is small; a larger one is not the host's.
const MAX_RECORD_BYTES: usize = 256 * 1024;

fn payload_file_name(seq: u32, kind: &str) -> String {
    format!("{seq:06}.{kind}.payload")
}

/// Read at most `limit` bytes of `path` (refusing a longer file).
async fn read_capped(path: &Path, limit: usize) -> Result<Vec<u8>, ClusterError> {
    use tokio::io::AsyncReadExt;
    let failed = |e: std::io::Error| ClusterError::Io(format!("{}: {e}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(failed)?;
    if bytes.len() > limit {
        return Err(ClusterError::Io(format!(
            "{}: longer than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Tell the queue the step is still being worked on, three times per
/// `ack_wait`, until aborted.
async fn keep_alive(delivery: Arc<dyn Delivery>, ack_wait: Duration) {
    let every = (ack_wait / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = delivery.in_progress().await {
            tracing::debug!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_request_is_still_answered_when_it_names_its_step() {
        let id = identity_of(
            br#"{"taskId":"t.1","stepId":"s","runId":"r","attempt":2,"timeoutSec":-1}"#,
        );
        assert_eq!(id.map(|i| i.key()).as_deref(), Some("t=1.s.r.2"));
        assert!(identity_of(br#"{"taskId":"t","stepId":"s","runId":"r","attempt":0}"#).is_none());
        assert!(identity_of(br#"{"taskId":"a b","stepId":"s","runId":"r","attempt":1}"#).is_none());
        assert!(identity_of(b"not json").is_none());
    }
}
