//! The at-least-once consumer loop shared by every consumer group.
//!
//! ```text
//!   recv ─▶ batch (≤ max records, ≤ linger) ─▶ handler ──ok──▶ store offsets ─▶ commit (on a cadence)
//!                                                 │
//!                                                 └─retriable error─▶ back off, retry the same batch
//! ```
//!
//! Offsets are *stored* only after the handler confirmed the whole batch,
//! and commits (librdkafka's, every [`ConsumerSettings::commit_interval`],
//! and the last one at shutdown) only ever commit stored offsets; so a crash
//! re-delivers at most the batches that were not confirmed, plus those
//! confirmed in the last commit interval. The consumer keeps its group
//! membership while a handler retries: heartbeats run on librdkafka's
//! thread, and `max.poll.interval.ms` is set long enough to ride out an
//! engine outage (see [`ConsumerSettings::max_poll_interval`]).
//!
//! Batching adapts to load: a batch is handed over when it holds
//! `max_batch_records` (under load, size fills it first) or when
//! `batch_linger` passed since its first record (at low rates the linger
//! lets a few records share one write). Nothing waits while no record is
//! there: the loop sleeps in `recv`, and the consumer long-polls the broker
//! ([`crate::config::LONG_POLL`]).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use chatpipe_runtime::metrics::{Counter, Gauge, Histogram, size_histogram};
use prometheus_client::registry::Registry;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};

use crate::config::{KafkaConfig, LONG_POLL};
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;
use crate::record::{Record, TopicInterner};

/// How one consumer group consumes.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub group_id: String,
    pub topics: Vec<String>,
    /// Most records handed to the handler at once.
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived: the
    /// bound on the latency batching adds at low rates.
    pub batch_linger: Duration,
    /// How often stored (confirmed) offsets are committed to Kafka. Never
    /// per batch: at low rates that would be a commit per record.
    pub commit_interval: Duration,
    /// How long a fetch waits at the broker for data (see [`LONG_POLL`]).
    pub fetch_wait_max: Duration,
    /// How many bytes a fetch waits for (`fetch.min.bytes`), at most
    /// `fetch_wait_max`. 1 (the default) answers on the first record: what
    /// a consumer on the latency path wants. A consumer whose output is
    /// not read within milliseconds anyway (the search index refreshes
    /// once a second) asks for more, so that under load one fetch carries
    /// many records instead of one fetch per producer batch.
    pub fetch_min_bytes: usize,
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
            batch_linger: Duration::from_millis(5),
            commit_interval: Duration::from_secs(1),
            fetch_wait_max: LONG_POLL,
            fetch_min_bytes: 1,
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
    fn handle(&mut self, batch: &[Record])
    -> impl Future<Output = Result<(), HandlerError>> + Send;
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

/// A subscribed member of a consumer group. Offsets are stored only by
/// [`run_batches`], after its handler confirmed them; a consumer used
/// directly with [`GroupConsumer::recv`] (tests, tools) commits nothing.
pub struct GroupConsumer {
    inner: StreamConsumer<ChatpipeContext>,
    topics: TopicInterner,
    group_id: String,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GroupConsumer")
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

/// The client settings of every group consumer (the at-least-once loop and
/// the per-partition loop): stored offsets committed on a cadence, long
/// polls, lag every 5 s.
pub(crate) fn group_client_config(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
) -> rdkafka::ClientConfig {
    let mut config = kafka.base();
    config
        .set("group.id", &settings.group_id)
        // librdkafka commits what was *stored* (never more), on this
        // cadence and when partitions are revoked.
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            settings.commit_interval.as_millis().max(1).to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Members learn of a rebalance at their next heartbeat: 1 s keeps
        // scaling out quick, at one small request per second.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval.as_millis().to_string(),
        )
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The lag gauge; reading it every 5 s is plenty for a gauge.
        .set("statistics.interval.ms", "5000")
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait_max.as_millis().max(1).to_string(),
        )
        .set(
            "fetch.min.bytes",
            settings.fetch_min_bytes.max(1).to_string(),
        );
    config
}

/// Creates and subscribes a group consumer.
pub fn group_consumer(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    metrics: &ConsumerMetrics,
) -> Result<GroupConsumer, KafkaAdapterError> {
    let inner: StreamConsumer<ChatpipeContext> = group_client_config(kafka, settings)
        .create_with_context(ChatpipeContext::with_lag(metrics.lag.clone()))?;
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    inner.subscribe(&topics)?;
    Ok(GroupConsumer {
        inner,
        topics: TopicInterner::new(topics),
        group_id: settings.group_id.clone(),
    })
}

impl GroupConsumer {
    /// The next record of the partitions assigned to this member; waits
    /// without a deadline (wrap it in a timeout or a `select!`).
    /// Cancel-safe: a record is never lost by dropping the future.
    pub async fn recv(&self) -> Result<Record, KafkaAdapterError> {
        let message = self.inner.recv().await?;
        Ok(self.topics.record(&message))
    }

    /// Marks every record of `batch` as processed: the next commit covers
    /// them.
    fn store_offsets(&self, batch: &[Record]) {
        for (topic, partition, next) in next_offsets(batch) {
            // `store_offset` takes the record's own offset and stores
            // offset + 1, the next record to consume.
            if let Err(error) = self.inner.store_offset(topic, partition, next - 1) {
                // The partition was revoked meanwhile; its new owner
                // re-reads from the last commit (at-least-once).
                tracing::debug!(topic, partition, %error, "offset not stored");
            }
        }
    }

    /// Commits what was stored (shutdown). Blocks for a broker round trip.
    fn commit_stored(&self) {
        if let Err(error) = self.inner.commit_consumer_state(CommitMode::Sync) {
            // Nothing stored yet, or the assignment was revoked: both
            // harmless, the records will be re-delivered.
            tracing::debug!(group = %self.group_id, %error, "final commit skipped");
        }
    }
}

/// For each (topic, partition) of `batch`, the offset to commit once the
/// batch is confirmed: one past its highest record. Pure.
pub fn next_offsets(batch: &[Record]) -> Vec<(&str, i32, i64)> {
    let mut highest: HashMap<(&str, i32), i64> = HashMap::new();
    for record in batch {
        let entry = highest
            .entry((record.topic(), record.partition()))
            .or_insert(record.offset());
        *entry = (*entry).max(record.offset());
    }
    let mut next: Vec<(&str, i32, i64)> = highest
        .into_iter()
        .map(|((topic, partition), offset)| (topic, partition, offset + 1))
        .collect();
    next.sort_unstable();
    next
}

/// Runs the at-least-once loop until `shutdown`, then commits what was
/// stored. Returns an error only for a non-retriable handler failure (then
/// nothing past the last confirmed batch is stored).
pub async fn run_batches<H: BatchHandler>(
    consumer: GroupConsumer,
    settings: ConsumerSettings,
    mut handler: H,
    metrics: ConsumerMetrics,
    component: ComponentHandle,
    shutdown: Shutdown,
) -> Result<(), HandlerError> {
    component.set(ComponentState::Ready);
    let mut batch: Vec<Record> = Vec::with_capacity(settings.max_batch_records);
    let outcome = 'consume: loop {
        batch.clear();
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break 'consume Ok(()),
            received = consumer.recv() => received,
        };
        match first {
            Ok(record) => batch.push(record),
            Err(error) => {
                tracing::warn!(group = %settings.group_id, %error, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        fill_batch(&consumer, &settings, &mut batch).await;

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
                    tracing::error!(group = %settings.group_id, error = %error.message, "batch failed permanently; stopping without storing its offsets");
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
        // Only now, after the handler confirmed: the invariant the whole
        // at-least-once promise rests on.
        consumer.store_offsets(&batch);
    };
    component.set(ComponentState::Draining);
    consumer.commit_stored();
    component.set(ComponentState::Stopped);
    outcome
}

/// Adds records to `batch` until it holds `max_batch_records` or
/// `batch_linger` has passed since its first record. Records already
/// fetched are taken without waiting, so under load the size bound ends the
/// batch first; at low rates the linger lets a few records share one write.
async fn fill_batch(
    consumer: &GroupConsumer,
    settings: &ConsumerSettings,
    batch: &mut Vec<Record>,
) {
    let fill_deadline = tokio::time::Instant::now() + settings.batch_linger;
    while batch.len() < settings.max_batch_records {
        tokio::select! {
            biased;
            received = consumer.recv() => match received {
                Ok(record) => batch.push(record),
                Err(error) => {
                    tracing::warn!(group = %settings.group_id, %error, "kafka receive failed");
                    break;
                }
            },
            _ = tokio::time::sleep_until(fill_deadline) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_consumers_long_poll_and_wait_for_the_configured_bytes() {
        let kafka = KafkaConfig::new("127.0.0.1:9092", "test");
        let mut settings = ConsumerSettings::new("g", &["t"]);
        let config = group_client_config(&kafka, &settings);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(config.get("fetch.min.bytes"), Some("1"));
        settings.fetch_min_bytes = 65_536;
        let config = group_client_config(&kafka, &settings);
        assert_eq!(config.get("fetch.min.bytes"), Some("65536"));
        // Stored offsets only, committed on the cadence.
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("auto.commit.interval.ms"), Some("1000"));
    }

    #[test]
    fn offsets_to_commit_are_one_past_each_partitions_highest_record() {
        let batch = vec![
            Record::new("m", 0, 10),
            Record::new("m", 1, 4),
            Record::new("m", 0, 12),
            Record::new("e", 0, 7),
            Record::new("m", 0, 11),
        ];
        assert_eq!(
            next_offsets(&batch),
            vec![("e", 0, 8), ("m", 0, 13), ("m", 1, 5)]
        );
        assert!(next_offsets(&[]).is_empty());
    }
}
