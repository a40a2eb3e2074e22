//! The index role's configuration: one typed struct, defaults from the
//! contract, units in the field names.

use std::time::Duration;

use chatpipe_core::records::TopicNames;
use chatpipe_search::SearchEngineConfig;
use chatpipe_search::bulk::BulkSinkSettings;
use chatpipe_search::template::RolloverConditions;

/// Default of [`IndexConfig::batch_linger_ms`].
pub const DEFAULT_BATCH_LINGER_MS: u64 = 50;
/// Default of [`IndexConfig::fetch_min_bytes`]: at chat rates (~300 bytes
/// a record) a fetch then carries a few hundred records, and at low rates
/// it returns after the long poll (500 ms) with what there is.
pub const DEFAULT_FETCH_MIN_BYTES: usize = 64 * 1024;
/// Default of [`IndexConfig::commit_interval_ms`].
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1_000;

/// How an index worker consumes and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexConfig {
    /// Kafka consumer group of the index workers on `chat.messages`.
    pub group_id: String,
    /// The topic names of this deployment (messages in, dead letters out).
    pub topics: TopicNames,
    /// The engine, the index prefix and the shard layout of new indices.
    pub engine: SearchEngineConfig,
    /// Most records handled as one batch. Under load a batch is cut here,
    /// before its linger ends.
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived, in
    /// ms: at low rates a few documents share one `_bulk` request instead
    /// of one request per document. Small next to the engine's refresh
    /// interval, which bounds how soon a document is searchable anyway.
    pub batch_linger_ms: u64,
    /// Bytes a Kafka fetch waits for, up to the long poll (500 ms): under
    /// load one fetch (and one `_bulk`) carries hundreds of records rather
    /// than one fetch per producer batch; at low rates a document becomes
    /// searchable up to 500 ms later, next to the engine's 1 s refresh.
    /// 1 fetches on the first record.
    pub fetch_min_bytes: usize,
    /// How often the offsets of indexed batches are committed, in ms. Only
    /// indexed records are ever committed; a crash re-indexes at most this
    /// long's worth (idempotently, by document id).
    pub commit_interval_ms: u64,
    /// Largest `_bulk` request body, in bytes; a larger batch is written as
    /// several requests.
    pub max_bulk_bytes: usize,
    /// Attempts at the retriable items of a batch inside one handler call
    /// before the whole batch is retried by the consumer loop.
    pub bulk_max_attempts: u32,
    /// First retry delay of failed items, in ms (doubles up to
    /// `bulk_max_backoff_ms`).
    pub bulk_initial_backoff_ms: u64,
    pub bulk_max_backoff_ms: u64,
    /// First and longest retry delay of a failed batch, in ms.
    pub batch_initial_backoff_ms: u64,
    pub batch_max_backoff_ms: u64,
    /// How often to ask the engine to roll the write alias over (a no-op
    /// until a condition holds), in ms; 0 disables the check.
    pub rollover_check_interval_ms: u64,
    /// Roll over when the write index holds this many documents.
    pub rollover_max_docs: Option<u64>,
    /// Roll over at this primary size (engine notation, `"50gb"`).
    pub rollover_max_size: Option<String>,
    /// Roll over at this index age (engine notation, `"30d"`).
    pub rollover_max_age: Option<String>,
    /// The send de-duplication window W (the clients' retry window): a
    /// retry of a send within W of its first attempt is not indexed. Must
    /// equal fan-out's and persist's.
    pub send_dedup_window_ms: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        let rollover = RolloverConditions::default();
        Self {
            group_id: "chatpipe-index".to_owned(),
            topics: TopicNames::default(),
            engine: SearchEngineConfig::default(),
            max_batch_records: 1_000,
            batch_linger_ms: DEFAULT_BATCH_LINGER_MS,
            fetch_min_bytes: DEFAULT_FETCH_MIN_BYTES,
            commit_interval_ms: DEFAULT_COMMIT_INTERVAL_MS,
            max_bulk_bytes: 5 * 1024 * 1024,
            bulk_max_attempts: 4,
            bulk_initial_backoff_ms: 100,
            bulk_max_backoff_ms: 2_000,
            batch_initial_backoff_ms: 200,
            batch_max_backoff_ms: 5_000,
            rollover_check_interval_ms: 600_000,
            rollover_max_docs: rollover.max_docs,
            rollover_max_size: rollover.max_size,
            rollover_max_age: rollover.max_age,
            send_dedup_window_ms: chatpipe_kafka::send_dedup::DEFAULT_SEND_DEDUP_WINDOW_MS,
        }
    }
}

impl IndexConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() {
            return Err("group_id must not be empty".to_owned());
        }
        if self.commit_interval_ms == 0 {
            return Err("commit_interval_ms must be positive".to_owned());
        }
        if self.max_batch_records == 0 || self.max_bulk_bytes == 0 || self.bulk_max_attempts == 0 {
            return Err(
                "max_batch_records, max_bulk_bytes and bulk_max_attempts must be positive"
                    .to_owned(),
            );
        }
        Ok(())
    }

    pub fn bulk_settings(&self) -> BulkSinkSettings {
        BulkSinkSettings {
            max_request_bytes: self.max_bulk_bytes,
            max_attempts: self.bulk_max_attempts,
            initial_backoff: Duration::from_millis(self.bulk_initial_backoff_ms),
            max_backoff: Duration::from_millis(self.bulk_max_backoff_ms),
        }
    }

    pub fn rollover_conditions(&self) -> RolloverConditions {
        RolloverConditions {
            max_docs: self.rollover_max_docs,
            max_size: self.rollover_max_size.clone(),
            max_age: self.rollover_max_age.clone(),
        }
    }
}
