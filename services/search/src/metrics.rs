//! What the adapter counts. The role that owns a sink or searcher registers
//! these under its own prefix (`chatpipe_index_…`, `chatpipe_api_…`); tests
//! read the values directly.

use chatpipe_runtime::metrics::{Counter, CounterByReason, Histogram, latency_histogram};
use prometheus_client::registry::Registry;

/// Counts of [`crate::EsBulkSink`].
#[derive(Clone, Debug)]
pub struct BulkMetrics {
    /// Documents the engine confirmed (created or overwritten).
    pub docs_indexed: Counter,
    /// `_bulk` HTTP requests sent (including retries).
    pub requests: Counter,
    /// Latency of one `_bulk` HTTP request, seconds.
    pub request_latency: Histogram,
    /// Failed items by reason (the engine's `error.type`, or
    /// `request:<why>` for a whole request that failed).
    pub item_failures: CounterByReason,
    /// Items re-sent after a retriable failure.
    pub item_retries: Counter,
    /// Items the engine refused for good (handed back for dead-lettering).
    pub rejected: Counter,
}

impl Default for BulkMetrics {
    fn default() -> Self {
        Self {
            docs_indexed: Counter::default(),
            requests: Counter::default(),
            request_latency: latency_histogram(),
            item_failures: CounterByReason::default(),
            item_retries: Counter::default(),
            rejected: Counter::default(),
        }
    }
}

impl BulkMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "docs_indexed",
            "Documents the engine confirmed",
            self.docs_indexed.clone(),
        );
        registry.register(
            "bulk_requests",
            "Bulk requests sent, retries included",
            self.requests.clone(),
        );
        registry.register(
            "bulk_latency_seconds",
            "Latency of one bulk request",
            self.request_latency.clone(),
        );
        registry.register(
            "bulk_item_failures",
            "Failed bulk items by reason",
            self.item_failures.clone(),
        );
        registry.register(
            "bulk_item_retries",
            "Bulk items re-sent after a retriable failure",
            self.item_retries.clone(),
        );
        registry.register(
            "bulk_rejected",
            "Bulk items refused for good",
            self.rejected.clone(),
        );
    }
}

/// Counts of [`crate::EsChangeSink`] (edits and deletes of documents).
#[derive(Clone, Debug)]
pub struct ChangeMetrics {
    /// `_bulk` requests of changes by id (one per round of changes).
    pub bulk_requests: Counter,
    /// Latency of one such `_bulk` request, seconds.
    pub bulk_latency: Histogram,
    /// Changes the write index applied by id.
    pub applied_by_id: Counter,
    /// Changes applied by query through the search alias because the write
    /// index did not hold the document (an older backing index, or none).
    pub by_query_fallbacks: Counter,
    /// Refreshes of the search alias before such fallbacks (at most one
    /// per round, and none in a round without a fallback).
    pub fallback_refreshes: Counter,
}

impl Default for ChangeMetrics {
    fn default() -> Self {
        Self {
            bulk_requests: Counter::default(),
            bulk_latency: latency_histogram(),
            applied_by_id: Counter::default(),
            by_query_fallbacks: Counter::default(),
            fallback_refreshes: Counter::default(),
        }
    }
}

impl ChangeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "change_bulk_requests",
            "Bulk requests of edits and deletes by id",
            self.bulk_requests.clone(),
        );
        registry.register(
            "change_bulk_latency_seconds",
            "Latency of one bulk request of edits and deletes",
            self.bulk_latency.clone(),
        );
        registry.register(
            "changes_applied_by_id",
            "Edits and deletes the write index applied by document id",
            self.applied_by_id.clone(),
        );
        registry.register(
            "change_by_query_fallbacks",
            "Edits and deletes applied by query because the write index lacked the document",
            self.by_query_fallbacks.clone(),
        );
        registry.register(
            "change_fallback_refreshes",
            "Refreshes of the search alias before by-query fallbacks",
            self.fallback_refreshes.clone(),
        );
    }
}

/// Counts of [`crate::MessageSearcher`].
#[derive(Clone, Debug)]
pub struct SearchMetrics {
    /// Searches answered (successfully or not).
    pub searches: Counter,
    /// Engine requests per search (more than one when split).
    pub engine_requests: Counter,
    /// End-to-end latency of a search, seconds.
    pub latency: Histogram,
    /// Failed searches by error code (`invalid`, `forbidden`, `unavailable`, `internal`).
    pub failures: CounterByReason,
}

impl Default for SearchMetrics {
    fn default() -> Self {
        Self {
            searches: Counter::default(),
            engine_requests: Counter::default(),
            latency: latency_histogram(),
            failures: CounterByReason::default(),
        }
    }
}

impl SearchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("searches", "Searches answered", self.searches.clone());
        registry.register(
            "search_engine_requests",
            "Engine requests made by searches",
            self.engine_requests.clone(),
        );
        registry.register(
            "search_latency_seconds",
            "Latency of a search",
            self.latency.clone(),
        );
        registry.register(
            "search_failures",
            "Failed searches by error code",
            self.failures.clone(),
        );
    }
}
