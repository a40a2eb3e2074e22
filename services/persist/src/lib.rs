//! # chatpipe-persist
//!
//! The persist role: a Kafka consumer group (default id
//! `chatpipe-persist`) on `chat.messages` that writes every message to the
//! Cassandra history (`chatpipe-cassandra`), which the API's history
//! endpoint reads, and applies the later changes to messages (edits,
//! deletes as tombstones, reactions; records of schema version 2). The
//! same batches carry the read state: each message's mention rows and its
//! conversation's last activity, and, from the `read` events of
//! `chat.events` (the same consumer subscribes to both topics), the
//! members' read markers (see `chatpipe_cassandra::read_state`; nothing is
//! written per recipient).
//!
//! ```text
//! chat.messages ─┬▶ run_batches (at-least-once) ─▶ CassandraHistoryWriter ─▶ messages, relations,
//! chat.events ───┘   (read events only)              │                       mentions, activity,
//!                                                     │                       read markers
//!                                                     └─ undecodable message records ─▶ chat.deadletter
//! ```
//!
//! Delivery semantics: at-least-once consumption, exactly-once effect.
//! Offsets are stored only after a batch is written (or dead-lettered), so a
//! crash or rebalance re-delivers at most unconfirmed batches; the rows'
//! primary key ends in the message id and the write timestamp is the
//! message's own time, so writing a record twice leaves one identical row.
//! While Cassandra is unavailable the batch is retried with backoff, the
//! consumer stays in its group (`max_poll_interval_ms`), the component
//! reports `Degraded`, and nothing is committed past the unwritten batch.
//!
//! Batching adapts to load: a write round takes up to `max_batch_records`
//! records, or what arrived within `batch_linger_ms` of its first record,
//! whichever comes first; offsets of written rounds are committed every
//! `commit_interval_ms`, not per round.
//!
//! Order: history is ordered by message id (the clustering key), which is
//! the order of the conversation's Kafka partition; writes within a batch
//! may therefore run concurrently.

pub mod config;
pub mod metrics;
pub mod writer;

use chatpipe_cassandra::CassandraStore;
use chatpipe_core::records::TopicNames;
use chatpipe_kafka::consumer::{HandlerError, group_consumer};
use chatpipe_kafka::{ChatProducer, DeadLetterSink, KafkaAdapterError, KafkaConfig, run_batches};
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;

pub use config::PersistConfig;
pub use metrics::PersistMetrics;
pub use writer::CassandraHistoryWriter;

/// Why the persist role stopped.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The Kafka consumer could not be created or subscribed.
    #[error("kafka consumer: {0}")]
    Consumer(#[from] KafkaAdapterError),
    /// A batch failed permanently; nothing past it was committed.
    #[error("batch failed permanently: {0}")]
    Handler(#[from] HandlerError),
}

impl PersistError {
    /// Whether restarting the role may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            PersistError::Consumer(error) => error.is_retriable(),
            PersistError::Handler(error) => error.retriable,
        }
    }
}

/// The persist role, built with its metrics registered; [`PersistRole::run`]
/// consumes until shutdown.
#[derive(Debug)]
pub struct PersistRole {
    config: PersistConfig,
    kafka: KafkaConfig,
    topics: TopicNames,
    store: CassandraStore,
    dead_letter_producer: ChatProducer,
    metrics: PersistMetrics,
}

impl PersistRole {
    /// Registers the role's metrics under `chatpipe_persist_*` in
    /// `registry`. `dead_letter_producer` publishes undecodable records to
    /// `topics.dead_letter`.
    pub fn new(
        config: PersistConfig,
        kafka: KafkaConfig,
        topics: TopicNames,
        store: CassandraStore,
        dead_letter_producer: ChatProducer,
        registry: &mut Registry,
    ) -> Self {
        let metrics = PersistMetrics::new();
        metrics.register(registry.sub_registry_with_prefix("chatpipe_persist"));
        Self {
            config,
            kafka,
            topics,
            store,
            dead_letter_producer,
            metrics,
        }
    }

    /// The role's counters (shared with the registry).
    pub fn metrics(&self) -> PersistMetrics {
        self.metrics.clone()
    }

    /// Joins the consumer group and writes until `shutdown` is cancelled,
    /// then commits what was confirmed. Registers the `persist` component in
    /// `health`.
    pub async fn run(self, health: Health, shutdown: Shutdown) -> Result<(), PersistError> {
        let settings = self
            .config
            .consumer_settings(&[&self.topics.messages, &self.topics.events]);
        let component = health.component("persist");
        let consumer = group_consumer(&self.kafka, &settings, &self.metrics.consumer)?;
        let dead_letters = DeadLetterSink::new(
            self.dead_letter_producer,
            self.topics.dead_letter.clone(),
            settings.group_id.clone(),
            self.metrics.consumer.clone(),
        );
        let dedup = chatpipe_kafka::PartitionedSendDedup::new(
            &self.kafka,
            self.topics.messages.clone(),
            chatpipe_kafka::SendDedupSettings::with_window_ms(self.config.send_dedup_window_ms),
            self.metrics.send_dedup.clone(),
        );
        let writer = CassandraHistoryWriter::new(
            self.store,
            dead_letters,
            self.metrics.clone(),
            self.config.max_in_flight_writes,
            dedup,
        )
        .with_events_topic(self.topics.events.clone());
        tracing::info!(group = %settings.group_id, topic = %self.topics.messages, events = %self.topics.events, "persist consuming");
        run_batches(
            consumer,
            settings,
            writer,
            self.metrics.consumer,
            component,
            shutdown,
        )
        .await?;
        Ok(())
    }
}
