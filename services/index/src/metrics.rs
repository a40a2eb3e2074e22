//! What the index role counts, under `chatpipe_index_…`.

use chatpipe_kafka::{ConsumerMetrics, SendDedupMetrics};
use chatpipe_runtime::metrics::{Counter, Histogram, latency_histogram};
use chatpipe_search::{BulkMetrics, ChangeMetrics};
use prometheus_client::registry::Registry;

/// Shared handles: clones keep counting into the same series.
#[derive(Clone, Debug)]
pub struct IndexMetrics {
    /// Records, batches, retries, dead letters and lag of the consumer group.
    pub consumer: ConsumerMetrics,
    /// Documents indexed, bulk requests and their latency, item failures by
    /// reason, rejected documents.
    pub bulk: BulkMetrics,
    /// Records that were neither a message nor a change record
    /// (dead-lettered).
    pub undecodable: Counter,
    /// Edits and deletes applied to the index (redeliveries counted again;
    /// reactions are not indexed).
    pub changes_applied: Counter,
    /// How the changes went: bulk requests by id, by-query fallbacks and
    /// the refreshes before them (`chatpipe_index_change_*`).
    pub changes: ChangeMetrics,
    /// Documents the engine refused for good (dead-lettered).
    pub rejected_documents: Counter,
    /// Time to handle one batch end to end (decode, bulk, dead letters), seconds.
    pub batch_latency: Histogram,
    /// Retries of a send dropped instead of indexed, and window rebuilds
    /// (`chatpipe_index_send_*`).
    pub send_dedup: SendDedupMetrics,
}

impl Default for IndexMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IndexMetrics {
    pub fn new() -> Self {
        Self {
            consumer: ConsumerMetrics::new(),
            bulk: BulkMetrics::default(),
            undecodable: Counter::default(),
            changes_applied: Counter::default(),
            changes: ChangeMetrics::default(),
            rejected_documents: Counter::default(),
            batch_latency: latency_histogram(),
            send_dedup: SendDedupMetrics::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let index = registry.sub_registry_with_prefix("chatpipe_index");
        self.consumer.register(index);
        self.send_dedup.register(index);
        self.bulk.register(index);
        self.changes.register(index);
        index.register(
            "undecodable",
            "Records that were not a message record",
            self.undecodable.clone(),
        );
        index.register(
            "changes_applied",
            "Edits and deletes applied to indexed messages",
            self.changes_applied.clone(),
        );
        index.register(
            "rejected_documents",
            "Documents the engine refused for good",
            self.rejected_documents.clone(),
        );
        index.register(
            "batch_latency_seconds",
            "Time to handle one batch",
            self.batch_latency.clone(),
        );
    }
}
