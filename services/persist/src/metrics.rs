//! What the persist role counts, under `chatpipe_persist_*`.

use chatpipe_kafka::{ConsumerMetrics, SendDedupMetrics};
use chatpipe_runtime::metrics::{Counter, CounterByReason, Histogram, latency_histogram};
use prometheus_client::registry::Registry;

/// The persist role's metrics. Clones share the same counters, so tests
/// read them directly.
#[derive(Clone, Debug)]
pub struct PersistMetrics {
    /// Records consumed, batches, retries, dead-lettered, lag
    /// (`chatpipe_persist_consumer_*`).
    pub consumer: ConsumerMetrics,
    /// Seconds to write one consumed batch to Cassandra (successful rounds).
    pub write_latency: Histogram,
    /// Message rows written (a redelivered record is written again and
    /// counted again; the write itself is idempotent).
    pub rows_written: Counter,
    /// Edits and deletes applied to history (redeliveries counted again;
    /// the writes are idempotent).
    pub changes_written: Counter,
    /// Cassandra write requests (batches of one partition, or of several
    /// small ones sharing a replica) issued.
    pub write_requests: Counter,
    /// Failed write rounds by `reason`: `retriable` (batch retried) or
    /// `non_retriable` (records isolated, failures dead-lettered).
    pub write_failures: CounterByReason,
    /// Retries of a send dropped instead of written, and window rebuilds
    /// (`chatpipe_persist_send_*`).
    pub send_dedup: SendDedupMetrics,
}

impl PersistMetrics {
    pub fn new() -> Self {
        Self {
            consumer: ConsumerMetrics::new(),
            write_latency: latency_histogram(),
            rows_written: Counter::default(),
            changes_written: Counter::default(),
            write_requests: Counter::default(),
            write_failures: CounterByReason::default(),
            send_dedup: SendDedupMetrics::default(),
        }
    }

    /// Registers everything into `registry` (give it the role's
    /// `chatpipe_persist` sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        self.consumer.register(registry);
        self.send_dedup.register(registry);
        registry.register(
            "write_latency_seconds",
            "Time to write one consumed batch to Cassandra",
            self.write_latency.clone(),
        );
        registry.register(
            "rows_written",
            "Message rows written to Cassandra",
            self.rows_written.clone(),
        );
        registry.register(
            "changes_written",
            "Edits and deletes applied to history rows",
            self.changes_written.clone(),
        );
        registry.register(
            "write_requests",
            "Cassandra write requests (batches of one partition or of small partitions sharing a replica)",
            self.write_requests.clone(),
        );
        registry.register(
            "write_failures",
            "Failed Cassandra write rounds by reason",
            self.write_failures.clone(),
        );
    }
}

impl Default for PersistMetrics {
    fn default() -> Self {
        Self::new()
    }
}
