//! The persist role's configuration.

use std::time::Duration;

use serde::Deserialize;

/// Default of [`PersistConfig::batch_linger_ms`]: long enough that at
/// tens of messages a second a write round carries several, short next to
/// how soon anyone reads history after a send.
pub const DEFAULT_BATCH_LINGER_MS: u64 = 50;
/// Default of [`PersistConfig::commit_interval_ms`].
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1_000;
/// Default of [`PersistConfig::fetch_min_bytes`]: ~50 chat records.
pub const DEFAULT_FETCH_MIN_BYTES: usize = 16 * 1024;
/// Default of [`PersistConfig::fetch_wait_max_ms`]: with the linger and the
/// write, a message reaches history within ~300 ms at any rate, under the
/// 500 ms persist lag clients' catch-up waits out (the SDK's
/// `persistLagMs`).
pub const DEFAULT_FETCH_WAIT_MAX_MS: u64 = 200;

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
    /// Bytes a Kafka fetch waits for, up to `fetch_wait_max_ms`. The
    /// consumer fetches ahead of the write rounds, so with 1 it fetches
    /// once per producer batch (~200 fetches a second at chat rates, each
    /// a request Kafka serves); with 16 KiB a fetch carries about a write
    /// round's worth. 1 fetches on the first record.
    pub fetch_min_bytes: usize,
    /// Longest wait of a fetch at the broker, in ms: the idle long poll,
    /// and at low rates the most a message waits for `fetch_min_bytes`
    /// before it is written. Shorter than other consumers' 500 ms because
    /// history must trail the ack by less than the persist lag clients
    /// wait out after a failed resume.
    pub fetch_wait_max_ms: u64,
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
            fetch_min_bytes: DEFAULT_FETCH_MIN_BYTES,
            fetch_wait_max_ms: DEFAULT_FETCH_WAIT_MAX_MS,
            max_in_flight_writes: 64,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            max_poll_interval_ms: 3_600_000,
            send_dedup_window_ms: chatpipe_kafka::send_dedup::DEFAULT_SEND_DEDUP_WINDOW_MS,
        }
    }
}

impl PersistConfig {
    /// Settings of the group's consumer of `topics` (`chat.messages`, and
    /// `chat.events` for the read markers).
    pub(crate) fn consumer_settings(&self, topics: &[&str]) -> chatpipe_kafka::ConsumerSettings {
        let mut settings = chatpipe_kafka::ConsumerSettings::new(self.group_id.clone(), topics);
        settings.max_batch_records = self.max_batch_records.max(1);
        settings.batch_linger = Duration::from_millis(self.batch_linger_ms);
        settings.commit_interval = Duration::from_millis(self.commit_interval_ms.max(1));
        settings.fetch_min_bytes = self.fetch_min_bytes.max(1);
        settings.fetch_wait_max = Duration::from_millis(self.fetch_wait_max_ms.max(1));
        settings.initial_backoff = Duration::from_millis(self.initial_backoff_ms);
        settings.max_backoff =
            Duration::from_millis(self.max_backoff_ms.max(self.initial_backoff_ms));
        settings.max_poll_interval = Duration::from_millis(self.max_poll_interval_ms);
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_gets_the_batching_and_fetch_settings() {
        let config = PersistConfig {
            batch_linger_ms: 20,
            commit_interval_ms: 0,
            fetch_min_bytes: 0,
            ..PersistConfig::default()
        };
        let settings = config.consumer_settings(&["m", "e"]);
        assert_eq!(settings.batch_linger, Duration::from_millis(20));
        // Zero would disable a commit cadence or a fetch threshold: both
        // are clamped to their smallest meaningful value.
        assert_eq!(settings.commit_interval, Duration::from_millis(1));
        assert_eq!(settings.fetch_min_bytes, 1);
        let defaults = PersistConfig::default().consumer_settings(&["m"]);
        assert_eq!(defaults.fetch_min_bytes, DEFAULT_FETCH_MIN_BYTES);
        assert_eq!(
            defaults.fetch_wait_max,
            Duration::from_millis(DEFAULT_FETCH_WAIT_MAX_MS)
        );
    }
}
