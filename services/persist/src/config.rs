//! The persist role's configuration.

use std::time::Duration;

use serde::Deserialize;

/// How the persist consumer group consumes and writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistConfig {
    /// Kafka consumer group id. Every persist instance of a deployment uses
    /// the same one; partitions of `chat.messages` are shared among them.
    pub group_id: String,
    /// Most records handed to one Cassandra write round.
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived.
    pub max_batch_wait_ms: u64,
    /// Most Cassandra write requests in flight at once (each request is a
    /// single-partition batch of up to 100 rows).
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
            max_batch_wait_ms: 20,
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
        settings.max_batch_wait = Duration::from_millis(self.max_batch_wait_ms);
        settings.initial_backoff = Duration::from_millis(self.initial_backoff_ms);
        settings.max_backoff =
            Duration::from_millis(self.max_backoff_ms.max(self.initial_backoff_ms));
        settings.max_poll_interval = Duration::from_millis(self.max_poll_interval_ms);
        settings
    }
}
