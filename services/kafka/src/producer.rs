//! The idempotent, `acks=all` producer.
//!
//! Built on librdkafka's producer with one polling thread per producer that
//! hands delivery reports to the waiting sends. The thread waits up to a
//! second per poll and wakes at once when a report arrives, so it costs
//! nothing idle and adds no latency. (rdkafka's `FutureProducer` polls every
//! 100 ms, and its millisecond-truncated deadline makes each poll spin for
//! up to a millisecond: ~1 % of a core per idle producer, measured.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::KafkaConfig;
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;

/// Where Kafka put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
}

/// Why [`ChatProducer::enqueue`] did not take a record.
#[derive(Debug)]
pub enum Enqueue {
    /// The bounded in-memory queue is full: try again shortly.
    Full,
    /// Any other refusal (unknown topic, record too large, ...).
    Failed(KafkaAdapterError),
}

/// A record in the producer's queue, waiting for Kafka's `acks=all`.
#[derive(Debug)]
pub struct Delivery {
    delivered: oneshot::Receiver<Result<RecordPosition, KafkaError>>,
}

impl Delivery {
    /// Waits for the confirmation until `deadline` has passed (the record
    /// may still land later: callers that retry must be idempotent).
    pub async fn wait(self, deadline: Duration) -> Result<RecordPosition, KafkaAdapterError> {
        self.wait_until(tokio::time::Instant::now() + deadline, deadline)
            .await
    }

    async fn wait_until(
        self,
        give_up: tokio::time::Instant,
        deadline: Duration,
    ) -> Result<RecordPosition, KafkaAdapterError> {
        match tokio::time::timeout_at(give_up, self.delivered).await {
            Err(_elapsed) => Err(KafkaAdapterError::Timeout(deadline)),
            // The producer went away with the record (purged).
            Ok(Err(_canceled)) => Err(KafkaError::Canceled.into()),
            Ok(Ok(Err(error))) => Err(error.into()),
            Ok(Ok(Ok(position))) => Ok(position),
        }
    }
}

/// How long the polling thread waits for a delivery report per poll; it is
/// also how long a dropped producer's thread takes to notice.
const POLL_WAIT: Duration = Duration::from_secs(1);
/// Pause before trying again when librdkafka's bounded queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

type DeliverySender = oneshot::Sender<Result<RecordPosition, KafkaError>>;

impl ProducerContext for ChatpipeContext {
    type DeliveryOpaque = Box<DeliverySender>;

    fn delivery(&self, result: &DeliveryResult<'_>, sender: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(message) => Ok(RecordPosition {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((error, _message)) => Err(error.clone()),
        };
        // The send may have given up waiting (its deadline passed).
        let _ = sender.send(outcome);
    }
}

/// Stops the polling thread when the last [`ChatProducer`] clone is gone.
struct PollingStop(Arc<AtomicBool>);

impl Drop for PollingStop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A cheaply clonable producer. With `enable.idempotence`, librdkafka's
/// internal retries never duplicate or reorder a partition's records.
#[derive(Clone)]
pub struct ChatProducer {
    inner: Arc<BaseProducer<ChatpipeContext>>,
    _stop: Arc<PollingStop>,
}

impl std::fmt::Debug for ChatProducer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ChatProducer")
    }
}

impl ChatProducer {
    /// `linger_ms` trades a little latency for batching under load.
    pub fn new(config: &KafkaConfig, linger_ms: u32) -> Result<Self, KafkaAdapterError> {
        let inner: BaseProducer<ChatpipeContext> = config
            .base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger_ms.to_string())
            .set("compression.type", "lz4")
            // Bounded in-memory queue: a send waits (up to its deadline)
            // rather than growing without limit.
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("delivery.timeout.ms", "30000")
            .create_with_context(ChatpipeContext::default())?;
        let inner = Arc::new(inner);
        let stop = Arc::new(AtomicBool::new(false));
        let polled = inner.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("chatpipe-producer-poll".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(POLL_WAIT);
                }
                // Dropping the last handle here purges what is still queued
                // (a producer dropped without `flush`).
            })
            .map_err(KafkaAdapterError::Thread)?;
        Ok(Self {
            inner,
            _stop: Arc::new(PollingStop(stop)),
        })
    }

    /// Sends one JSON record and waits until Kafka confirmed it with
    /// `acks=all`, or `deadline` passed (the record may still land later:
    /// callers that retry must be idempotent, as every chatpipe writer is).
    pub async fn send_json<T: Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
        deadline: Duration,
    ) -> Result<RecordPosition, KafkaAdapterError> {
        let payload = serde_json::to_vec(value)?;
        self.send_bytes(topic, key, Some(&payload), deadline).await
    }

    /// Sends raw bytes, or a tombstone when `payload` is `None`.
    pub async fn send_bytes(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<RecordPosition, KafkaAdapterError> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            match self.enqueue(topic, key, payload) {
                Ok(delivery) => return delivery.wait_until(give_up, deadline).await,
                Err(Enqueue::Full) => {
                    // The bounded queue is full: wait for room, within the
                    // deadline (backpressure, not growth).
                    if tokio::time::Instant::now() + QUEUE_FULL_PAUSE >= give_up {
                        return Err(KafkaAdapterError::Timeout(deadline));
                    }
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err(Enqueue::Failed(error)) => return Err(error),
            }
        }
    }

    /// Hands one record to the producer's queue without waiting: the order
    /// of `enqueue` calls is the order of the records in their partition
    /// (the idempotent producer never reorders a partition). A caller that
    /// needs a partition order matching something it assigns (the edge's
    /// message ids) assigns and enqueues under one lock.
    pub fn enqueue(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<Delivery, Enqueue> {
        let (sender, delivered) = oneshot::channel();
        let mut record: BaseRecord<'_, str, [u8], Box<DeliverySender>> =
            BaseRecord::with_opaque_to(topic, Box::new(sender)).key(key);
        if let Some(bytes) = payload {
            record = record.payload(bytes);
        }
        match self.inner.send(record) {
            Ok(()) => Ok(Delivery { delivered }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _returned)) => {
                Err(Enqueue::Full)
            }
            Err((error, _returned)) => Err(Enqueue::Failed(error.into())),
        }
    }

    /// Waits for every queued record to be confirmed (shutdown phase).
    pub fn flush(&self, deadline: Duration) -> Result<(), KafkaAdapterError> {
        self.inner.flush(deadline)?;
        Ok(())
    }

    /// Whether the client currently sees a broker (for readiness).
    pub fn fetch_metadata_ok(&self, topic: &str, deadline: Duration) -> bool {
        self.inner
            .client()
            .fetch_metadata(Some(topic), deadline)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .any(|found| found.name() == topic && found.error().is_none())
            })
            .unwrap_or(false)
    }
}
