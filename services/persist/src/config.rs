//! The persist role's configuration.

use std::time::Duration;

use serde::Deserialize;

/// Default of [`PersistConfig::batch_linger_ms`]: long enough that at
/// tens of messages a second a write round carries several, short next to
/// how soon anyone reads history after a send.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 50;
/// Default of [`PersistConfig::commit_interval_ms`].
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1_000;

/// How the persist consumer group consumes and writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistConfig {
    /// Kafka consumer group id. Every persist instance of a deployment uses
    /// the same one; partitions of `chat.messages` are shared among them.
    pub group_id: String,
    /// Most records handed to one Cassandra write round. Under load a
    /// batch is cut here, before its linger ends.
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived, in
    /// ms: at low rates a few records share one write round instead of one
    /// round per record. Bounds the delay batching adds to history.
    #[serde(alias = "max_batch_wait_ms")]
    pub batch_linger_ms: u64,
    /// How often the offsets of written batches are committed, in ms. Only
    /// written records are ever committed; a crash re-writes at most this
    /// long's worth (idempotently).
    pub commit_interval_ms: u64,
    /// Most Cassandra write requests in flight at once (each request is a
    /// batch of up to 100 rows: one partition, or up to ten small ones
    /// that share a replica).
    pub max_in_flight_writes: usize,
    /// First delay before retrying a batch that failed with a retriable
    /// Cassandra error; doubles up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Longest delay between retries of a failing batch.
    pub max_backoff_ms: u64,
    /// How long one batch may keep retrying (Cassandra down) before Kafka
    /// evicts this member from the group (`max.poll.interval.ms`).
    pub max_poll_interval_ms: u64,
    /// The send de-duplication window W (the clients' retry window): a
    /// record with the same conversation, sender and `client_msg_id` as a
    /// first attempt at most this much older is a retry and is not written.
    /// Must equal fan-out's and index's.
    pub send_dedup_window_ms: u64,
}

impl Default for PersistConfig {
    fn default() -> Self {
        Self {
            group_id: "chatpipe-persist".to_owned(),
            max_batch_records: 1000,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            max_in_flight_writes: 64,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_poll_interval_ms: 3_600_000,
            send_dedup_window_ms: chatpipe_kafka::send_dedup::DEFAULT_SEND_DEDUP_WINDOW_MS,
        }
    }
}

impl PersistConfig {
    pub(crate) fn consumer_settings(
        &self,
        messages_topic: &str,
    ) -> chatpipe_kafka::ConsumerSettings {
        let mut settings =
            chatpipe_kafka::ConsumerSettings::new(self.group_id.clone(), &[messages_topic]);
        settings.max_batch_records = self.max_batch_records.max(1);
        settings.batch_linger = Duration::from_millis(self.batch_linger_ms);
        settings.commit_interval = Duration::from_millis(self.commit_interval_ms.max(1));
        settings.initial_backoff = Duration::from_millis(self.initial_backoff_ms);
        settings.max_backoff =
            Duration::from_millis(self.max_backoff_ms.max(self.initial_backoff_ms));
        settings.max_poll_interval = Duration::from_millis(self.max_poll_interval_ms);
        settings
    }
}
