//! The at-least-once consumer loop shared by every consumer group.
//!
//! ```text
//!   recv ─▶ batch (≤ max records, ≤ max wait) ─▶ handler ──ok──▶ store offsets ─▶ (auto-commit)
//!                                                   │
//!                                                   └─retriable error─▶ back off, retry the same batch
//! ```
//!
//! Offsets are *stored* only after the handler confirmed the whole batch,
//! and librdkafka's auto-commit only ever commits stored offsets; so a crash
//! re-delivers at most the batches that were not confirmed. The consumer
//! keeps its group membership while a handler retries: heartbeats run on
//! librdkafka's thread, and `max.poll.interval.ms` is set long enough to
//! ride out an engine outage (see [`ConsumerSettings::max_poll_interval`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use chatpipe_runtime::metrics::{Counter, Gauge, Histogram, size_histogram};
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;

use crate::config::KafkaConfig;
use crate::error::KafkaAdapterError;

/// How one consumer group consumes.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
    pub topics: Vec<String>,
    /// Most records handed to the handler at once.
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived.
    pub max_batch_wait: Duration,
    /// First retry delay of a failed batch; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a handler may keep retrying one batch before the broker
    /// evicts this member from the group.
    pub max_poll_interval: Duration,
}

impl ConsumerSettings {
    pub fn new(group_id: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.iter().map(|topic| (*topic).to_owned()).collect(),
            max_batch_records: 500,
            max_batch_wait: Duration::from_millis(5),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(3600),
        }
    }
}

/// What a consumer group's handler must do with a batch.
pub trait BatchHandler: Send {
    /// Processes `batch` (in partition order). `Ok` means every record is
    /// durably handled: written, dead-lettered, or deliberately skipped.
    fn handle(
        &mut self,
        batch: &[OwnedMessage],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A batch failure. Retriable failures are retried with backoff forever
/// (until shutdown); others stop the consumer without committing.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub retriable: bool,
    pub message: String,
}

impl HandlerError {
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            message: message.into(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            message: message.into(),
        }
    }
}

/// Counters every consumer group exposes, labelled by the registry prefix.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    pub records: Counter,
    pub batches: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    /// Sum over assigned partitions of (high watermark − committed offset),
    /// from librdkafka's statistics.
    pub lag: Gauge,
    pub batch_size: Histogram,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerMetrics {
    pub fn new() -> Self {
        Self {
            records: Counter::default(),
            batches: Counter::default(),
            retries: Counter::default(),
            dead_lettered: Counter::default(),
            lag: Gauge::default(),
            batch_size: size_histogram(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("consumer_records", "Records consumed", self.records.clone());
        registry.register("consumer_batches", "Batches handled", self.batches.clone());
        registry.register(
            "consumer_retries",
            "Batch retries after a retriable failure",
            self.retries.clone(),
        );
        registry.register(
            "consumer_dead_lettered",
            "Records sent to the dead-letter topic",
            self.dead_lettered.clone(),
        );
        registry.register(
            "consumer_lag_records",
            "Records behind the partitions' high watermarks",
            self.lag.clone(),
        );
        registry.register(
            "consumer_batch_size",
            "Records per handled batch",
            self.batch_size.clone(),
        );
    }
}

/// librdkafka context that publishes consumer lag from its statistics.
pub struct LagContext {
    lag: Gauge,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let lag: i64 = statistics
            .topics
            .values()
            .flat_map(|topic| topic.partitions.values())
            .filter(|partition| partition.partition >= 0 && partition.consumer_lag >= 0)
            .map(|partition| partition.consumer_lag)
            .sum();
        self.lag.set(lag);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(facility, message, "librdkafka")
            }
            _ => tracing::debug!(facility, message, "librdkafka"),
        }
    }
}

impl ConsumerContext for LagContext {}

/// A group consumer configured for the at-least-once loop.
pub type GroupConsumer = StreamConsumer<LagContext>;

/// Creates and subscribes a group consumer.
pub fn group_consumer(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    metrics: &ConsumerMetrics,
) -> Result<GroupConsumer, KafkaAdapterError> {
    let consumer: GroupConsumer = kafka
        .base()
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval.as_millis().to_string(),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", "2000")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(LagContext {
            lag: metrics.lag.clone(),
        })?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Runs the at-least-once loop until `shutdown`, then commits what was
/// stored. Returns an error only for a non-retriable handler failure.
pub async fn run_batches<H: BatchHandler>(
    consumer: GroupConsumer,
    settings: ConsumerSettings,
    mut handler: H,
    metrics: ConsumerMetrics,
    component: ComponentHandle,
    shutdown: Shutdown,
) -> Result<(), HandlerError> {
    component.set(ComponentState::Ready);
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(settings.max_batch_records);
    let outcome = 'consume: loop {
        batch.clear();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'consume Ok(()),
            received = consumer.recv() => received,
        };
        match first {
            Ok(message) => batch.push(message.detach()),
            Err(error) => {
                tracing::warn!(group = %settings.group_id, %error, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let fill_deadline = tokio::time::Instant::now() + settings.max_batch_wait;
        while batch.len() < settings.max_batch_records {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(fill_deadline) => break,
                received = consumer.recv() => match received {
                    Ok(message) => batch.push(message.detach()),
                    Err(error) => {
                        tracing::warn!(group = %settings.group_id, %error, "kafka receive failed");
                        break;
                    }
                },
            }
        }

        let mut backoff = settings.initial_backoff;
        loop {
            match handler.handle(&batch).await {
                Ok(()) => break,
                Err(error) if error.retriable => {
                    metrics.retries.inc();
                    component.set(ComponentState::Degraded(error.message.clone()));
                    tracing::warn!(group = %settings.group_id, error = %error.message, backoff_ms = backoff.as_millis() as u64, "batch failed, retrying");
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break 'consume Ok(()),
                        _ = tokio::time::sleep(backoff) => {},
                    }
                    backoff = (backoff * 2).min(settings.max_backoff);
                }
                Err(error) => {
                    component.set(ComponentState::Failed(error.message.clone()));
                    tracing::error!(group = %settings.group_id, error = %error.message, "batch failed permanently; stopping without committing");
                    break 'consume Err(error);
                }
            }
        }
        if component.state() != ComponentState::Ready {
            component.set(ComponentState::Ready);
        }
        metrics.records.inc_by(batch.len() as u64);
        metrics.batches.inc();
        metrics.batch_size.observe(batch.len() as f64);
        store_batch_offsets(&consumer, &batch);
    };
    component.set(ComponentState::Draining);
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored yet, or the assignment was revoked: both harmless,
        // the records will be re-delivered.
        tracing::debug!(group = %settings.group_id, %error, "final commit skipped");
    }
    component.set(ComponentState::Stopped);
    outcome
}

fn store_batch_offsets(consumer: &GroupConsumer, batch: &[OwnedMessage]) {
    let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
    for message in batch {
        let entry = highest
            .entry((message.topic(), message.partition()))
            .or_insert(message.offset());
        *entry = (*entry).max(message.offset());
    }
    for ((topic, partition), offset) in highest {
        // `store_offset` stores offset + 1, the next record to consume.
        if let Err(error) = consumer.store_offset(topic, partition, offset) {
            // The partition was revoked meanwhile; its new owner re-reads
            // from the last commit (at-least-once).
            tracing::debug!(topic, partition, %error, "offset not stored");
        }
    }
}
