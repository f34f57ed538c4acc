//! The cluster on NATS JetStream: the streams, buckets and consumers of
//! [`super::topology`], created when missing, and [`NatsTransport`], a
//! worker's [`Transport`] over them.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::record::{Answer, StepRecord};
use super::topology::{self as names, StepIdentity};
use super::transport::{Delivery, Exhausted, Transport};
use super::ClusterError;
use crate::config::ClusterSettings;

/// Most bytes of a step's record (the server's default message size is
/// 1 MiB); a larger one is refused as a permanent error.
const MAX_RECORD_BYTES: usize = 1000 * 1024;
/// See [`Connection::open`].
const SUBSCRIPTION_CAPACITY: usize = 1024;
/// How long answers and step records are kept.
const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// Within this window a resubmitted step (same identity) is dropped by the
/// queue itself; after it, by its record.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);

/// A connection to the cluster's NATS server, with its streams and buckets.
#[derive(Clone)]
pub struct Connection {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub steps: stream::Stream,
    pub results: stream::Stream,
    pub records: kv::Store,
    pub cancels: kv::Store,
    pub submissions: kv::Store,
    pub hosts: kv::Store,
    pub checkpoints: kv::Store,
    pub payloads: object_store::ObjectStore,
}

pub(crate) fn nats_error(doing: &'static str) -> impl FnOnce(async_nats::Error) -> ClusterError {
    move |e| ClusterError::Nats {
        doing,
        message: e.to_string(),
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> async_nats::Error {
    Box::new(e)
}

impl Connection {
    /// Connect to `url` and make sure the cluster's streams and buckets
    /// exist (creating them is idempotent: every host and client may).
    pub async fn open(url: &str) -> Result<Self, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name("baa-runner")
            .connection_timeout(Duration::from_secs(5))
            // Messages a subscription holds for a reader that is behind
            // (a step's events, most): then the server drops them.
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connect(url)
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let jetstream = jetstream::new(client.clone());
        let steps = jetstream
            .get_or_create_stream(stream::Config {
                name: names::STEPS_STREAM.into(),
                description: Some("baa-runner: steps waiting for a host, per kind".into()),
                subjects: vec![names::all_steps()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: KEEP,
                max_message_size: crate::contracts::MAX_REQUEST_BYTES as i32,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("opening the steps stream")(boxed(e)))?;
        let results = jetstream
            .get_or_create_stream(stream::Config {
                name: names::RESULTS_STREAM.into(),
                description: Some("baa-runner: one answer per step".into()),
                subjects: vec![names::all_results()],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: KEEP,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("opening the results stream")(boxed(e)))?;
        let records = bucket(&jetstream, names::STEPS_BUCKET, 16, KEEP).await?;
        let cancels = bucket(&jetstream, names::CANCELS_BUCKET, 1, KEEP).await?;
        let submissions = bucket(&jetstream, names::SUBMISSIONS_BUCKET, 1, KEEP).await?;
        let hosts = bucket(&jetstream, names::HOSTS_BUCKET, 1, Duration::from_secs(120)).await?;
        let checkpoints = bucket(&jetstream, names::CHECKPOINTS_BUCKET, 1, KEEP).await?;
        let payloads = match jetstream.get_object_store(names::PAYLOADS_STORE).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: names::PAYLOADS_STORE.into(),
                    max_age: KEEP,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_error("opening the payload store")(boxed(e)))?,
        };
        Ok(Connection {
            client,
            jetstream,
            steps,
            results,
            records,
            cancels,
            submissions,
            hosts,
            checkpoints,
            payloads,
        })
    }

    /// Publish a step's answer: only the first one per step is kept (by
    /// message id, and by the subject's last sequence, which must be none).
    pub async fn publish_answer(
        &self,
        id: &StepIdentity,
        answer: &Answer,
    ) -> Result<(), ClusterError> {
        let payload = Bytes::from(serde_json::to_vec(answer).unwrap_or_default());
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id.key())
            .expected_last_subject_sequence(0);
        let sent = self
            .jetstream
            .send_publish(names::result_subject(id), publish)
            .await
            .map_err(|e| nats_error("publishing an answer")(boxed(e)))?;
        match sent.await {
            Ok(_) => Ok(()),
            // The step has its answer already: this one is a duplicate.
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(()),
            Err(e) => Err(nats_error("publishing an answer")(boxed(e))),
        }
    }

    /// The durable consumer the hosts serving `kind` share.
    pub async fn kind_consumer(
        &self,
        kind: &str,
        settings: &ClusterSettings,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, ClusterError> {
        let name = names::consumer_name(kind);
        let ack_wait = Duration::from_secs(settings.ack_wait_sec.max(1));
        let max_deliver = settings.max_deliver.max(1);
        // Redeliveries after silence back off: one, two, then four waits.
        let backoff = [1, 2, 4]
            .iter()
            .map(|n| ack_wait * *n)
            .take((max_deliver as usize).saturating_sub(1))
            .collect();
        self.steps
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("baa-runner hosts serving `{kind}`")),
                    filter_subject: names::steps_subject(kind),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: i64::from(max_deliver),
                    backoff,
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| nats_error("opening a kind's consumer")(boxed(e)))
    }
}

/// Read object `name` of `store`, refusing one longer than `limit`.
pub(crate) async fn read_object(
    store: &object_store::ObjectStore,
    name: &str,
    limit: usize,
) -> Result<Vec<u8>, ClusterError> {
    use tokio::io::AsyncReadExt;
    let object = store
        .get(name)
        .await
        .map_err(|e| nats_error("fetching an object")(boxed(e)))?;
    let mut bytes = Vec::new();
    object
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| nats_error("fetching an object")(boxed(e)))?;
    if bytes.len() > limit {
        return Err(ClusterError::Corrupt {
            what: format!("object {name}"),
            message: format!("longer than {limit} bytes"),
        });
    }
    Ok(bytes)
}

async fn bucket(
    jetstream: &jetstream::Context,
    name: &'static str,
    history: i64,
    max_age: Duration,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = jetstream.get_key_value(name).await {
        return Ok(store);
    }
    jetstream
        .create_key_value(kv::Config {
            bucket: name.into(),
            history,
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error("opening a bucket")(boxed(e)))
}

/// A worker's [`Transport`] over a [`Connection`].
pub struct NatsTransport {
    connection: Connection,
    settings: ClusterSettings,
    consumers: Mutex<HashMap<String, consumer::Consumer<consumer::pull::Config>>>,
}

impl NatsTransport {
    pub fn new(connection: Connection, settings: ClusterSettings) -> Self {
        NatsTransport {
            connection,
            settings,
            consumers: Mutex::default(),
        }
    }

    async fn consumer(
        &self,
        kind: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, ClusterError> {
        let mut consumers = self.consumers.lock().await;
        if let Some(consumer) = consumers.get(kind) {
            return Ok(consumer.clone());
        }
        let consumer = self.connection.kind_consumer(kind, &self.settings).await?;
        let actual = consumer.cached_info().config.ack_wait;
        if actual != Duration::from_secs(self.settings.ack_wait_sec.max(1)) {
            tracing::warn!(
                %kind,
                "the queue of `{kind}` waits {}s for a sign of life (set by the host that created it), not this host's ack-wait-sec {}: this host follows the queue",
                actual.as_secs(),
                self.settings.ack_wait_sec
            );
        }
        let max_deliver = consumer.cached_info().config.max_deliver;
        if max_deliver != i64::from(self.settings.max_deliver.max(1)) {
            tracing::warn!(
                %kind,
                "the queue of `{kind}` makes {max_deliver} deliveries of a step (set by the host that created it), not this host's max-deliver {}: this host follows the queue",
                self.settings.max_deliver
            );
        }
        consumers.insert(kind.to_owned(), consumer.clone());
        Ok(consumer)
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn next_step(
        &self,
        kind: &str,
        wait: Duration,
    ) -> Result<Option<Box<dyn Delivery>>, ClusterError> {
        let consumer = self.consumer(kind).await?;
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| nats_error("asking for a step")(boxed(e)))?;
        match batch.next().await {
            None => Ok(None),
            Some(Err(e)) => Err(nats_error("receiving a step")(e)),
            Some(Ok(message)) => {
                let (delivered, sequence) = message
                    .info()
                    .map(|info| (info.delivered.max(1) as u64, info.stream_sequence))
                    .unwrap_or((1, 0));
                let config = &consumer.cached_info().config;
                Ok(Some(Box::new(NatsDelivery {
                    message,
                    delivered,
                    sequence,
                    ack_wait: config.ack_wait,
                    max_deliver: config.max_deliver.max(1) as u64,
                })))
            }
        }
    }

    async fn record(&self, id: &StepIdentity) -> Result<Option<(StepRecord, u64)>, ClusterError> {
        let entry = self
            .connection
            .records
            .entry(id.key())
            .await
            .map_err(|e| nats_error("reading a step's record")(boxed(e)))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&entry.value).map_err(|e| ClusterError::Corrupt {
            what: format!("the record of step {id}"),
            message: e.to_string(),
        })?;
        Ok(Some((record, entry.revision)))
    }

    async fn write_record(
        &self,
        id: &StepIdentity,
        record: &StepRecord,
        revision: Option<u64>,
    ) -> Result<Option<u64>, ClusterError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        let store = &self.connection.records;
        if value.len() > MAX_RECORD_BYTES {
            return Err(ClusterError::Corrupt {
                what: format!("the record of step {id}"),
                message: format!("{} bytes, more than a record may be", value.len()),
            });
        }
        let written = match revision {
            None => store.create(id.key(), value).await.map_err(|e| {
                (e.kind() == kv::CreateErrorKind::AlreadyExists)
                    .then_some(())
                    .ok_or_else(|| nats_error("writing a step's record")(boxed(e)))
            }),
            Some(revision) => store.update(id.key(), value, revision).await.map_err(|e| {
                (e.kind() == kv::UpdateErrorKind::WrongLastRevision)
                    .then_some(())
                    .ok_or_else(|| nats_error("writing a step's record")(boxed(e)))
            }),
        };
        match written {
            Ok(revision) => Ok(Some(revision)),
            Err(Ok(())) => Ok(None),
            Err(Err(e)) => Err(e),
        }
    }

    async fn publish_answer(&self, id: &StepIdentity, answer: &Answer) -> Result<(), ClusterError> {
        self.connection.publish_answer(id, answer).await
    }

    async fn put_checkpoint(
        &self,
        name: &str,
        record: Vec<u8>,
        payload: Option<Vec<u8>>,
    ) -> Result<(), ClusterError> {
        // The payload first: a record never names a payload not stored.
        if let Some(payload) = payload {
            let mut reader = std::io::Cursor::new(payload);
            self.connection
                .payloads
                .put(name, &mut reader)
                .await
                .map_err(|e| nats_error("replicating a checkpoint payload")(boxed(e)))?;
        }
        self.connection
            .checkpoints
            .put(name, Bytes::from(record))
            .await
            .map_err(|e| nats_error("replicating a checkpoint")(boxed(e)))?;
        Ok(())
    }

    async fn get_checkpoint(
        &self,
        name: &str,
        payload: bool,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), ClusterError> {
        let record = self
            .connection
            .checkpoints
            .get(name)
            .await
            .map_err(|e| nats_error("fetching a checkpoint")(boxed(e)))?
            .ok_or_else(|| ClusterError::Corrupt {
                what: format!("checkpoint {name}"),
                message: "its record is missing".into(),
            })?;
        if !payload {
            return Ok((record.to_vec(), None));
        }
        let payload = read_object(
            &self.connection.payloads,
            name,
            crate::checkpoints::MAX_PAYLOAD_BYTES,
        )
        .await?;
        Ok((record.to_vec(), Some(payload)))
    }

    async fn put_artifact(&self, object: &str, contents: Vec<u8>) -> Result<(), ClusterError> {
        let mut reader = std::io::Cursor::new(contents);
        self.connection
            .payloads
            .put(object, &mut reader)
            .await
            .map_err(|e| nats_error("replicating an artifact")(boxed(e)))?;
        Ok(())
    }

    async fn publish_event(&self, id: &StepIdentity, event: &serde_json::Value) {
        let payload = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        if let Err(e) = self
            .connection
            .client
            .publish(names::events_subject(id), payload)
            .await
        {
            tracing::debug!("an event of step {id} was not published: {e}");
        }
    }

    async fn cancel_requested(&self, id: &StepIdentity) -> Result<bool, ClusterError> {
        let entry = self
            .connection
            .cancels
            .get(id.key())
            .await
            .map_err(|e| nats_error("reading a step's cancellation")(boxed(e)))?;
        Ok(entry.is_some())
    }

    async fn cancellations(&self) -> Result<BoxStream<'static, String>, ClusterError> {
        let subscriber = self
            .connection
            .client
            .subscribe(names::all_cancels())
            .await
            .map_err(|e| nats_error("listening for cancellations")(boxed(e)))?;
        Ok(subscriber
            .filter_map(|message| async move {
                names::key_of_cancel(message.subject.as_str()).map(str::to_owned)
            })
            .boxed())
    }

    async fn exhausted(&self) -> Result<BoxStream<'static, Exhausted>, ClusterError> {
        let subscriber = self
            .connection
            .client
            .queue_subscribe(
                names::max_deliveries_advisories(),
                names::EXPIRY_GROUP.into(),
            )
            .await
            .map_err(|e| nats_error("listening for steps out of deliveries")(boxed(e)))?;
        Ok(subscriber
            .filter_map(|message| async move {
                let advisory: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
                Some(Exhausted {
                    sequence: advisory.get("stream_seq")?.as_u64()?,
                    deliveries: advisory.get("deliveries")?.as_u64()?,
                    consumer: advisory.get("consumer")?.as_str()?.to_owned(),
                })
            })
            .boxed())
    }

    async fn queue_state(&self, kind: &str) -> Result<Option<(u64, u64)>, ClusterError> {
        let info = match self
            .connection
            .steps
            .consumer_info(names::consumer_name(kind))
            .await
        {
            Ok(info) => info,
            Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(nats_error("reading a kind's queue")(boxed(e))),
        };
        let max_deliver = u64::try_from(info.config.max_deliver).unwrap_or(u64::MAX);
        Ok(Some((max_deliver, info.delivered.stream_sequence)))
    }

    async fn next_queued(
        &self,
        kind: &str,
        from: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, ClusterError> {
        let next = self
            .connection
            .steps
            .raw_message_builder()
            .sequence(from.max(1))
            .next_by_subject(names::steps_subject(kind))
            .send()
            .await;
        match next {
            Ok(message) => Ok(Some((message.sequence, message.payload.to_vec()))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_error("reading the queue")(boxed(e))),
        }
    }

    async fn out_of_deliveries(&self, kind: &str) -> Result<u64, ClusterError> {
        let subject = names::steps_subject(kind);
        let mut counts = (self.connection.steps)
            .info_with_subjects(&subject)
            .await
            .map_err(|e| nats_error("reading the queue")(boxed(e)))?;
        let mut queued = 0;
        while let Some(Ok((_, count))) = counts.next().await {
            queued += count as u64;
        }
        let info = self
            .connection
            .steps
            .consumer_info(names::consumer_name(kind))
            .await
            .map_err(|e| nats_error("reading a kind's queue")(boxed(e)))?;
        Ok(queued.saturating_sub(info.num_pending + info.num_ack_pending as u64))
    }

    async fn heartbeat_of(
        &self,
        host: &str,
        key: &str,
    ) -> Result<Option<(u64, bool)>, ClusterError> {
        let entry = self
            .connection
            .hosts
            .entry(names::token(host))
            .await
            .map_err(|e| nats_error("reading a host's heartbeat")(boxed(e)))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let status: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or_default();
        let listed = status["steps"]
            .as_array()
            .is_some_and(|steps| steps.iter().any(|s| s == key));
        Ok(Some((entry.revision, listed)))
    }

    async fn queued(&self, sequence: u64) -> Result<Option<(Vec<u8>, String)>, ClusterError> {
        match self.connection.steps.get_raw_message(sequence).await {
            Ok(message) => Ok(Some((
                message.payload.to_vec(),
                message.subject.to_string(),
            ))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_error("reading a queued step")(boxed(e))),
        }
    }

    async fn unqueue(&self, sequence: u64) -> Result<(), ClusterError> {
        match self.connection.steps.delete_message(sequence).await {
            Ok(_) => Ok(()),
            // Gone already (acknowledged, deleted by another host).
            Err(e)
                if matches!(e.kind(), stream::DeleteMessageErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(nats_error("taking a step out of the queue")(boxed(e))),
        }
    }

    async fn heartbeat(&self, host: &str, status: &serde_json::Value) {
        let value = Bytes::from(serde_json::to_vec(status).unwrap_or_default());
        if let Err(e) = self.connection.hosts.put(names::token(host), value).await {
            tracing::debug!("heartbeat not written: {e}");
        }
    }
}

/// One JetStream message of the steps stream.
struct NatsDelivery {
    message: jetstream::Message,
    delivered: u64,
    sequence: u64,
    ack_wait: Duration,
    max_deliver: u64,
}

#[async_trait]
impl Delivery for NatsDelivery {
    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn delivered(&self) -> u64 {
        self.delivered
    }

    fn sequence(&self) -> u64 {
        self.sequence
    }

    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    fn max_deliver(&self) -> u64 {
        self.max_deliver
    }

    async fn in_progress(&self) -> Result<(), ClusterError> {
        let ack = self.message.ack_with(jetstream::AckKind::Progress);
        ack.await.map_err(nats_error("extending a delivery"))
    }

    async fn ack(&self) -> Result<(), ClusterError> {
        // Confirmed by the server: an ack lost on the way would deliver
        // the step again (harmless, its record answers it, but slower).
        self.message
            .double_ack()
            .await
            .map_err(nats_error("acknowledging a step"))
    }

    async fn retry(&self, delay: Duration) -> Result<(), ClusterError> {
        let nak = self.message.ack_with(jetstream::AckKind::Nak(Some(delay)));
        nak.await.map_err(nats_error("giving a step back"))
    }

    async fn reject(&self) -> Result<(), ClusterError> {
        let term = self.message.ack_with(jetstream::AckKind::Term);
        term.await.map_err(nats_error("rejecting a message"))
    }
}
