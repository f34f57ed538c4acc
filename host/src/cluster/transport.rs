//! What a worker needs from the cluster's substrate, as a trait: a queue
//! of deliveries per kind, revision-checked step records, answers published
//! once, live events and cancellations. [`super::nats`] implements it on
//! NATS JetStream.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use super::record::{Answer, StepRecord};
use super::topology::StepIdentity;
use super::ClusterError;

/// A host's view of the cluster.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The next step queued for `kind`, waiting at most `wait`.
    async fn next_step(
        &self,
        kind: &str,
        wait: Duration,
    ) -> Result<Option<Box<dyn Delivery>>, ClusterError>;

    /// A step's record and its revision.
    async fn record(&self, id: &StepIdentity) -> Result<Option<(StepRecord, u64)>, ClusterError>;

    /// Write `record` if the stored one is still at `revision` (`None`:
    /// if there is none). The new revision, or `None` when another writer
    /// came first: the fence every change of a step goes through.
    async fn write_record(
        &self,
        id: &StepIdentity,
        record: &StepRecord,
        revision: Option<u64>,
    ) -> Result<Option<u64>, ClusterError>;

    /// Publish a step's answer: only the first one per step is kept.
    async fn publish_answer(&self, id: &StepIdentity, answer: &Answer) -> Result<(), ClusterError>;

    /// Store a checkpoint's record file (and payload) under `name`.
    async fn put_checkpoint(
        &self,
        name: &str,
        record: Vec<u8>,
        payload: Option<Vec<u8>>,
    ) -> Result<(), ClusterError>;

    /// A checkpoint stored by [`Transport::put_checkpoint`]: its record
    /// file, and its payload when `payload`.
    async fn get_checkpoint(
        &self,
        name: &str,
        payload: bool,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), ClusterError>;

    /// Store an artifact's contents as `object`.
    async fn put_artifact(&self, object: &str, contents: Vec<u8>) -> Result<(), ClusterError>;

    /// Publish one of a step's live events (nothing keeps it).
    async fn publish_event(&self, id: &StepIdentity, event: &serde_json::Value);

    /// Whether a cancellation of the step was asked for.
    async fn cancel_requested(&self, id: &StepIdentity) -> Result<bool, ClusterError>;

    /// The keys of steps whose cancellation is asked for from now on.
    async fn cancellations(&self) -> Result<BoxStream<'static, String>, ClusterError>;

    /// Messages of the steps queue that the queue says it stopped
    /// delivering (`max-deliver` reached). Each is told to one of the hosts
    /// listening; anyone who may publish the announcement can forge one.
    async fn exhausted(&self) -> Result<BoxStream<'static, Exhausted>, ClusterError>;

    /// The queue of `kind` as its consumer sees it: the most deliveries it
    /// makes of a message, and the last queue sequence it delivered (`None`
    /// when no host ever served the kind).
    async fn queue_state(&self, kind: &str) -> Result<Option<(u64, u64)>, ClusterError>;

    /// The first message queued for `kind` at or after queue sequence
    /// `from`: its sequence and payload.
    async fn next_queued(
        &self,
        kind: &str,
        from: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, ClusterError>;

    /// Messages queued for `kind` that its consumer neither waits to
    /// deliver nor awaits an answer for: the queue stopped delivering them.
    async fn out_of_deliveries(&self, kind: &str) -> Result<u64, ClusterError>;

    /// `host`'s last heartbeat: its revision (each heartbeat has a new
    /// one) and whether it lists step `key` as running there.
    async fn heartbeat_of(
        &self,
        host: &str,
        key: &str,
    ) -> Result<Option<(u64, bool)>, ClusterError>;

    /// A message still in the steps queue: its payload and subject.
    async fn queued(&self, sequence: u64) -> Result<Option<(Vec<u8>, String)>, ClusterError>;

    /// Take a message out of the steps queue (gone already: fine).
    async fn unqueue(&self, sequence: u64) -> Result<(), ClusterError>;

    /// Tell the cluster this host is alive, what it serves and how busy it
    /// is (`status`: a JSON document: host, pid, kinds, capacity, running).
    async fn heartbeat(&self, host: &str, status: &serde_json::Value);
}

/// The server's announcement that a steps consumer stopped delivering a
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The message's place in the steps queue.
    pub sequence: u64,
    /// The deliveries made.
    pub deliveries: u64,
    /// The consumer that gave up (`steps-<kind>`).
    pub consumer: String,
}

/// One delivery of a queued step to this host.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// The submitted StepExecutionRequest, as JSON.
    fn payload(&self) -> &[u8];
    /// 1 for the first delivery, 2 for the first redelivery, …
    fn delivered(&self) -> u64;
    /// The message's place in the queue (the same for every delivery of
    /// it; another message naming the same step has another).
    fn sequence(&self) -> u64;
    /// The subject it was queued on (`baa.steps.<kind>`).
    fn subject(&self) -> &str;
    /// How long the queue waits for a sign of life before it delivers the
    /// message again (the consumer's, whichever host created it).
    fn ack_wait(&self) -> Duration;
    /// The most deliveries the queue makes of one message (its own).
    fn max_deliver(&self) -> u64;
    /// The step is still being worked on: postpone redelivery.
    async fn in_progress(&self) -> Result<(), ClusterError>;
    /// Done: the queue forgets the step.
    async fn ack(&self) -> Result<(), ClusterError>;
    /// Give it back, to be delivered again after `delay`.
    async fn retry(&self, delay: Duration) -> Result<(), ClusterError>;
    /// Never deliver it again (it is not a step request at all).
    async fn reject(&self) -> Result<(), ClusterError>;
}
