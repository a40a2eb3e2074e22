//! The dead-letter path: a record a consumer cannot decode or write for a
//! non-retriable reason is published to `chat.deadletter` with its
//! coordinates and the error, counted, and skipped — never silently dropped,
//! never allowed to wedge its partition.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chatpipe_core::records::{DeadLetterRecord, SCHEMA_VERSION};
use chatpipe_core::time::now_unix_ms;

use crate::consumer::ConsumerMetrics;
use crate::error::KafkaAdapterError;
use crate::producer::ChatProducer;
use crate::record::Record;

/// Publishes undecodable records of one consumer group.
#[derive(Debug, Clone)]
pub struct DeadLetterSink {
    producer: ChatProducer,
    consumer_group: String,
    topic: String,
    metrics: ConsumerMetrics,
}

impl DeadLetterSink {
    /// `topic` is the deployment's dead-letter topic (`TopicNames::dead_letter`).
    pub fn new(
        producer: ChatProducer,
        topic: impl Into<String>,
        consumer_group: impl Into<String>,
        metrics: ConsumerMetrics,
    ) -> Self {
        Self {
            producer,
            consumer_group: consumer_group.into(),
            topic: topic.into(),
            metrics,
        }
    }

    /// Publishes `message` with `error` and waits for Kafka to confirm, so
    /// the caller may then commit past it. Retriable on failure.
    pub async fn publish(&self, message: &Record, error: &str) -> Result<(), KafkaAdapterError> {
        let payload = message.payload().unwrap_or_default();
        let (payload_utf8, payload_base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(BASE64.encode(payload))),
        };
        let record = DeadLetterRecord {
            schema_version: SCHEMA_VERSION,
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            consumer: self.consumer_group.clone(),
            error: error.to_owned(),
            payload_utf8,
            payload_base64,
            ts: now_unix_ms(),
        };
        let key = message.key_str().unwrap_or("");
        self.producer
            .send_json(&self.topic, key, &record, Duration::from_secs(10))
            .await?;
        self.metrics.dead_lettered.inc();
        tracing::warn!(
            group = %self.consumer_group,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error,
            "record dead-lettered"
        );
        Ok(())
    }
}
