//! A conductor's side of the cluster: [`Cluster::start`] queues a step and
//! returns a [`ClusterStep`] shaped like the local [`crate::StepHandle`]:
//! its live events, `cancel()` (wherever it runs), and its one answer.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::nats::{nats_error, Connection};
use super::record::{Answer, Reply, ReplyError, StepRecord};
use super::topology::{self as names, check_token, StepIdentity};
use super::ClusterError;
use crate::contracts::{StepExecutionRequest, StepExecutionResult};
use crate::logs::Stream;
use crate::run::{StepEvent, StepEventBody};

/// Most bytes of an event message: the server's default message size (a
/// host's output chunk as text, a lifecycle entry, fit in it).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The [`ReplyError::kind`] of a step cancelled before any host took it.
pub const CANCELLED: &str = "cancelled";

/// A conductor's connection to the cluster.
#[derive(Clone)]
pub struct Cluster {
    connection: Connection,
}

/// A live event of a step running somewhere in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterEvent {
    /// The host that runs the step, and which delivery it runs: a step
    /// taken over by another host starts numbering again.
    pub host: String,
    pub delivery: u64,
    pub event: StepEvent,
}

/// What [`Cluster::hosts`] lists for each live host.
pub type HostStatus = Value;

impl Cluster {
    /// Connect to the cluster's NATS server (its streams and buckets are
    /// created when missing).
    pub async fn connect(url: &str) -> Result<Self, ClusterError> {
        Ok(Cluster {
            connection: Connection::open(url).await?,
        })
    }

    /// The connection (streams, buckets) for tools that look inside.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Queue `request` for a host serving its kind and follow it. A step
    /// already submitted (same `taskId/stepId/runId/attempt`) is not queued
    /// twice: the handle follows the first submission.
    pub async fn start(&self, request: &StepExecutionRequest) -> Result<ClusterStep, ClusterError> {
        check_queueable(request)?;
        let id = StepIdentity::of(request);
        let client = &self.connection.client;
        let events = client
            .subscribe(names::events_subject(&id))
            .await
            .map_err(|e| nats_error("following a step's events")(Box::new(e)))?;
        let answers = self
            .connection
            .results
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: names::result_subject(&id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("following a step's answer")(Box::new(e)))?
            .messages()
            .await
            .map_err(|e| nats_error("following a step's answer")(Box::new(e)))?;
        let duplicate = self.submit(request).await?;
        Ok(ClusterStep {
            connection: self.connection.clone(),
            id,
            worker_kind: request.worker_kind.to_string(),
            duplicate,
            events: Some(events),
            answers: Box::pin(answers),
            answer: None,
        })
    }

    /// Queue `request` without following it (its answer arrives on the
    /// results stream). `true` when it had been queued before (same
    /// `taskId/stepId/runId/attempt`): it is not queued twice.
    pub async fn submit(&self, request: &StepExecutionRequest) -> Result<bool, ClusterError> {
        check_queueable(request)?;
        let kind = request.worker_kind.as_str();
        let id = StepIdentity::of(request);
        let payload = Bytes::from(serde_json::to_vec(request).unwrap_or_default());
        let first = self.check_same_request(&id, request).await?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id.key());
        let ack = self
            .connection
            .jetstream
            .send_publish(names::steps_subject(kind), publish)
            .await
            .map_err(|e| nats_error("queueing a step")(Box::new(e)))?
            .await
            .map_err(|e| nats_error("queueing a step")(Box::new(e)))?;
        Ok(ack.duplicate || !first)
    }

    /// A step submitted again must be the same request: otherwise its
    /// submitter would follow (and be answered by) another one. `true` for
    /// the first submission of the step.
    async fn check_same_request(
        &self,
        id: &StepIdentity,
        request: &StepExecutionRequest,
    ) -> Result<bool, ClusterError> {
        let digest = Bytes::from(request_digest(request));
        let store = &self.connection.submissions;
        let created = store.create(id.key(), digest.clone()).await;
        match created {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats_error("recording a submission")(Box::new(e))),
        }
        let stored = store
            .get(id.key())
            .await
            .map_err(|e| nats_error("reading a submission")(Box::new(e)))?;
        if stored.is_some_and(|stored| stored != digest) {
            return Err(crate::Error::InvalidRequest {
                field: "attempt".into(),
                message: format!(
                    "step {id} was already submitted with a different request; submit this one as a new attempt"
                ),
            }
            .into());
        }
        Ok(false)
    }

    /// Every answer in the results stream, oldest first, then each new one
    /// as it is published: a conductor's feed of finished steps.
    pub async fn answers(&self) -> Result<AnswerFeed, ClusterError> {
        let messages = self
            .connection
            .results
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: names::all_results(),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("following answers")(Box::new(e)))?
            .messages()
            .await
            .map_err(|e| nats_error("following answers")(Box::new(e)))?;
        Ok(AnswerFeed {
            messages: Box::pin(messages),
        })
    }

    /// The hosts that said they are alive in the last two minutes.
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, ClusterError> {
        let store = &self.connection.hosts;
        let mut keys = store
            .keys()
            .await
            .map_err(|e| nats_error("listing hosts")(Box::new(e)))?;
        let mut hosts = Vec::new();
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = store.get(&key).await {
                if let Ok(status) = serde_json::from_slice::<Value>(&value) {
                    hosts.push(status);
                }
            }
        }
        Ok(hosts)
    }

    /// The cluster at a glance: live hosts, and per kind the steps queued,
    /// waiting for a host, running, redelivered, and who serves it.
    pub async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        let hosts = self.hosts().await?;
        let mut kinds: BTreeMap<String, KindQueue> = BTreeMap::new();
        let mut subjects = self
            .connection
            .steps
            .info_with_subjects(names::all_steps())
            .await
            .map_err(|e| nats_error("reading the queue")(Box::new(e)))?;
        let state = subjects.info.state.clone();
        while let Some(Ok((subject, count))) = subjects.next().await {
            if let Some(kind) = names::kind_of_subject(&subject) {
                kinds
                    .entry(kind.clone())
                    .or_insert_with(|| KindQueue::new(kind))
                    .queued = count as u64;
            }
        }
        for host in &hosts {
            for kind in host["kinds"].as_array().into_iter().flatten() {
                if let (Some(kind), Some(name)) = (kind.as_str(), host["host"].as_str()) {
                    let queue = kinds
                        .entry(kind.to_owned())
                        .or_insert_with(|| KindQueue::new(kind.to_owned()));
                    queue.hosts.push(name.to_owned());
                }
            }
        }
        for queue in kinds.values_mut() {
            let consumer = self
                .connection
                .steps
                .consumer_info(names::consumer_name(&queue.kind))
                .await;
            (queue.waiting, queue.running, queue.redelivered) = match consumer {
                Ok(info) => (
                    info.num_pending,
                    info.num_ack_pending as u64,
                    info.num_redelivered as u64,
                ),
                // No host ever served the kind: everything queued waits.
                Err(_) => (queue.queued, 0, 0),
            };
            queue.out_of_deliveries = queue.queued.saturating_sub(queue.waiting + queue.running);
        }
        let oldest_queued_at = (state.messages > 0)
            .then(|| {
                state
                    .first_timestamp
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .flatten();
        Ok(ClusterStatus {
            hosts,
            kinds: kinds.into_values().collect(),
            queued: state.messages,
            oldest_queued_at,
        })
    }

    /// The contents of an artifact an answer lists (its `object`).
    pub async fn artifact(&self, object: &str) -> Result<Vec<u8>, ClusterError> {
        super::nats::read_object(
            &self.connection.payloads,
            object,
            crate::capabilities::events::MAX_ARTIFACT_BYTES,
        )
        .await
    }

    /// Whether a live host serves `kind`.
    pub async fn served(&self, kind: &str) -> Result<bool, ClusterError> {
        Ok(self.hosts().await?.iter().any(|host| {
            host["kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        }))
    }
}

/// The digest of what a request asks a host to do: not when it was made
/// (`createdAt`) nor where its conductor would keep records (a host uses
/// its own runs directory), so a conductor resubmitting after a restart is
/// recognised.
fn request_digest(request: &StepExecutionRequest) -> String {
    let mut request = request.clone();
    request.created_at = None;
    request.runtime.runs_root_dir = None;
    crate::fsutil::sha256_hex(&serde_json::to_vec(&request).unwrap_or_default())
}

/// A request that can be queued: its kind is a subject token, its ids
/// name directories (and so keys) one to one.
fn check_queueable(request: &StepExecutionRequest) -> Result<(), ClusterError> {
    check_token(request.worker_kind.as_str()).map_err(|why| {
        ClusterError::Step(crate::Error::InvalidRequest {
            field: "workerKind".into(),
            message: why,
        })
    })?;
    use crate::run::validate::check_id;
    check_id("taskId", &request.task_id)?;
    check_id("stepId", &request.step_id)?;
    check_id("runId", &request.run_id)?;
    if request.attempt == 0 {
        return Err(crate::Error::InvalidRequest {
            field: "attempt".into(),
            message: "attempts are numbered from 1".into(),
        }
        .into());
    }
    Ok(())
}

type Answers = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<jetstream::Message, consumer::pull::OrderedError>>
            + Send,
    >,
>;

/// What [`Cluster::status`] reports.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The live hosts' heartbeats: host, pid, kinds, capacity, running.
    pub hosts: Vec<HostStatus>,
    pub kinds: Vec<KindQueue>,
    /// Steps in the queue (waiting or running, not yet answered).
    pub queued: u64,
    /// When the oldest of them was queued.
    pub oldest_queued_at: Option<String>,
}

/// One kind's queue.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KindQueue {
    pub kind: String,
    /// In the queue: waiting or running.
    pub queued: u64,
    /// Not yet delivered to any host.
    pub waiting: u64,
    /// Delivered and not yet answered.
    pub running: u64,
    /// Delivered more than once (a host died, stalled or gave it back).
    pub redelivered: u64,
    /// In the queue but neither waiting nor running: the queue stopped
    /// delivering them and no host has answered them yet.
    pub out_of_deliveries: u64,
    /// The live hosts that serve it.
    pub hosts: Vec<String>,
}

impl KindQueue {
    fn new(kind: String) -> Self {
        KindQueue {
            kind,
            queued: 0,
            waiting: 0,
            running: 0,
            redelivered: 0,
            out_of_deliveries: 0,
            hosts: Vec::new(),
        }
    }
}

/// Answers as they are published (see [`Cluster::answers`]).
pub struct AnswerFeed {
    messages: Answers,
}

impl AnswerFeed {
    /// The next answer with its step's key ([`StepIdentity::key`]).
    pub async fn next(&mut self) -> Result<(String, Answer), ClusterError> {
        loop {
            match self.messages.next().await {
                Some(Ok(message)) => {
                    let key = names::key_of_result(message.subject.as_str())
                        .unwrap_or_default()
                        .to_owned();
                    let answer = serde_json::from_slice(&message.payload).map_err(|e| {
                        ClusterError::Corrupt {
                            what: format!("the answer of step {key}"),
                            message: e.to_string(),
                        }
                    })?;
                    return Ok((key, answer));
                }
                Some(Err(e)) => {
                    tracing::debug!("following answers: {e}; resuming");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    return Err(ClusterError::Nats {
                        doing: "following answers",
                        message: "the connection closed".into(),
                    })
                }
            }
        }
    }
}

/// A step queued in the cluster.
pub struct ClusterStep {
    connection: Connection,
    id: StepIdentity,
    worker_kind: String,
    duplicate: bool,
    events: Option<async_nats::Subscriber>,
    answers: Answers,
    answer: Option<Answer>,
}

impl ClusterStep {
    /// `taskId/stepId/runId/attempt`.
    pub fn identity(&self) -> &StepIdentity {
        &self.id
    }

    /// The step had been submitted before: this handle follows that one.
    pub fn duplicate(&self) -> bool {
        self.duplicate
    }

    /// The next live event, wherever the step runs; `None` once it is
    /// answered (the answer is then kept for [`ClusterStep::answer`]).
    pub async fn next_event(&mut self) -> Result<Option<ClusterEvent>, ClusterError> {
        loop {
            if self.answer.is_some() {
                return Ok(None);
            }
            let Some(events) = self.events.as_mut() else {
                self.answer = Some(self.wait_answer().await?);
                return Ok(None);
            };
            // Events first: those a host sent before its answer are read
            // before the answer ends the step.
            tokio::select! {
                biased;
                message = events.next() => match message {
                    Some(message) => {
                        if let Some(event) = parse_event(&message.payload) {
                            return Ok(Some(event));
                        }
                    }
                    None => self.events = None,
                },
                answer = next_answer(&mut self.answers, &self.id) => {
                    self.answer = Some(answer?);
                    return Ok(None);
                }
            }
        }
    }

    /// Wait for the step's answer (see [`ClusterStep::answer`]).
    pub async fn wait_answer(&mut self) -> Result<Answer, ClusterError> {
        match self.answer.take() {
            Some(answer) => Ok(answer),
            None => next_answer(&mut self.answers, &self.id).await,
        }
    }

    /// The answer, if [`ClusterStep::next_event`] has read it.
    pub fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }

    /// Cancel the step wherever it runs, or when a host picks it up if it
    /// is still queued: its result then says `interrupted`. The future
    /// owns what it needs: another task may cancel while this one follows.
    pub fn cancel(
        &self,
    ) -> impl std::future::Future<Output = Result<(), ClusterError>> + Send + 'static {
        let (connection, id) = (self.connection.clone(), self.id.clone());
        let worker_kind = self.worker_kind.clone();
        async move { cancel_step(&connection, &id, worker_kind).await }
    }

    /// The step's answer: its result, or why it could not run, and every
    /// host that took it.
    pub async fn answer(mut self) -> Result<Answer, ClusterError> {
        self.wait_answer().await
    }

    /// The step's result ([`ClusterError::Rejected`] when no host could
    /// run it: an invalid request names its field).
    pub async fn result(self) -> Result<StepExecutionResult, ClusterError> {
        match self.answer().await?.reply {
            Reply::Result(result) => Ok(*result),
            Reply::Error(error) => Err(ClusterError::Rejected(error)),
        }
    }
}

/// See [`ClusterStep::cancel`].
async fn cancel_step(
    connection: &Connection,
    id: &StepIdentity,
    worker_kind: String,
) -> Result<(), ClusterError> {
    let key = id.key();
    let note = Bytes::from(json!({ "at": crate::fsutil::now_rfc3339() }).to_string());
    connection
        .cancels
        .put(&key, note)
        .await
        .map_err(|e| nats_error("cancelling a step")(Box::new(e)))?;
    connection
        .client
        .publish(names::cancel_subject(id), Bytes::new())
        .await
        .map_err(|e| nats_error("cancelling a step")(Box::new(e)))?;
    let _ = connection.client.flush().await;
    // A step no host has taken is answered here, and no host will run
    // it: the record is created only if none exists (a host that took
    // it meanwhile was told above, and answers it itself).
    let reply = Reply::Error(ReplyError {
        kind: CANCELLED.into(),
        message: format!("step {id} was cancelled before any host started it"),
        field: None,
    });
    let record = StepRecord {
        step: id.to_string(),
        worker_kind,
        owner: String::new(),
        delivery: 0,
        sequence: 0,
        runs: Vec::new(),
        checkpoints: Vec::new(),
        artifacts: Vec::new(),
        reply: Some(reply.clone()),
    };
    let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
    match connection.records.create(&key, value).await {
        Ok(_) => {
            let answer = Answer {
                reply,
                runs: Vec::new(),
                artifacts: Vec::new(),
            };
            connection.publish_answer(id, &answer).await
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(nats_error("cancelling a step")(Box::new(e))),
    }
}

async fn next_answer(answers: &mut Answers, id: &StepIdentity) -> Result<Answer, ClusterError> {
    loop {
        match answers.next().await {
            Some(Ok(message)) => {
                return serde_json::from_slice(&message.payload).map_err(|e| {
                    ClusterError::Corrupt {
                        what: format!("the answer of step {id}"),
                        message: e.to_string(),
                    }
                })
            }
            Some(Err(e)) => {
                tracing::debug!("following the answer of {id}: {e}; resuming");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                return Err(ClusterError::Nats {
                    doing: "following a step's answer",
                    message: "the connection closed".into(),
                })
            }
        }
    }
}

/// A worker's event message as a [`ClusterEvent`] (`None` if it is not one).
fn parse_event(payload: &[u8]) -> Option<ClusterEvent> {
    if payload.len() > MAX_EVENT_BYTES {
        return None; // no host sends one this large
    }
    let message: Value = serde_json::from_slice(payload).ok()?;
    let body = match message["type"].as_str()? {
        "event" => StepEventBody::Lifecycle(serde_json::from_value(message["event"].clone()).ok()?),
        "output" => StepEventBody::Output {
            stream: match message["stream"].as_str()? {
                "stderr" => Stream::Stderr,
                _ => Stream::Stdout,
            },
            bytes: Bytes::from(message["text"].as_str()?.to_owned()),
        },
        _ => return None,
    };
    Some(ClusterEvent {
        host: message["host"].as_str()?.to_owned(),
        delivery: message["delivery"].as_u64()?,
        event: StepEvent {
            seq: message["seq"].as_u64()?,
            body,
        },
    })
}
