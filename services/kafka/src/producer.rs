//! The idempotent, `acks=all` producer.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;

use crate::config::KafkaConfig;
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;

/// Where Kafka put a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
}

/// A cheaply clonable producer. With `enable.idempotence`, librdkafka's
/// internal retries never duplicate or reorder a partition's records.
#[derive(Clone)]
pub struct ChatProducer {
    inner: FutureProducer<ChatpipeContext>,
}

impl std::fmt::Debug for ChatProducer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ChatProducer")
    }
}

impl ChatProducer {
    /// `linger_ms` trades a little latency for batching under load.
    pub fn new(config: &KafkaConfig, linger_ms: u32) -> Result<Self, KafkaAdapterError> {
        let inner: FutureProducer<ChatpipeContext> = config
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
        Ok(Self { inner })
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
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(bytes) = payload {
            record = record.payload(bytes);
        }
        let delivery = tokio::time::timeout(deadline, self.inner.send(record, deadline)).await;
        match delivery {
            Err(_elapsed) => Err(KafkaAdapterError::Timeout(deadline)),
            Ok(Err((error, _message))) => Err(error.into()),
            Ok(Ok(delivery)) => Ok(RecordPosition {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
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
