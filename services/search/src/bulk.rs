//! Bulk indexing: NDJSON bodies and per-item results as pure functions, and
//! [`EsBulkSink`], which sends them.
//!
//! Per-item results decide what happens to each document:
//!
//! | item status | meaning | what happens |
//! |---|---|---|
//! | 200, 201 | written | counted in `docs_indexed` |
//! | 429, 5xx, 403 (cluster block), 404 `index_not_found` | the engine is busy, down, read-only or the alias is missing | only those items are re-sent, with backoff; after `max_attempts` the whole call fails *retriably* and the caller retries the batch later |
//! | other 4xx (400 `mapper_parsing_exception`, …) | this document can never be written | handed back in [`BulkReport::rejected`] for the caller to dead-letter; counted, never dropped silently |
//!
//! A request that fails as a whole (no answer, 429, 5xx) leaves every item
//! of it pending, exactly like retriable items. A 413 (request too large)
//! halves the request size; a single document that is still too large is
//! rejected.

use std::time::{Duration, Instant};

use elasticsearch::http::Method;
use serde_json::{Value, json};

use crate::client::EsClient;
use crate::document::MessageDocument;
use crate::error::{EngineError, is_retriable_status};
use crate::metrics::BulkMetrics;
use chatpipe_runtime::metrics::ReasonLabel;

/// One document to index: id, routing and serialized `_source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkDoc {
    pub id: String,
    pub routing: String,
    /// The `_source` as compact JSON (no raw newline, as NDJSON needs).
    pub source: Vec<u8>,
}

impl BulkDoc {
    pub fn from_document(document: &MessageDocument) -> Self {
        let source = serde_json::to_vec(document).expect("a message document always serializes");
        Self {
            id: document.document_id(),
            routing: document.conversation_id.as_str().to_owned(),
            source,
        }
    }

    /// Bytes this document adds to a `_bulk` body (approximately: the
    /// action line is estimated).
    pub fn encoded_len(&self) -> usize {
        self.source.len() + self.id.len() + self.routing.len() + 64
    }
}

/// Appends the NDJSON of one `index` operation on `index` to `body`. Pure.
pub fn encode_index_op(body: &mut Vec<u8>, index: &str, doc: &BulkDoc) {
    debug_assert!(
        !doc.source.contains(&b'\n'),
        "a bulk source must be one line"
    );
    let action = json!({ "index": { "_index": index, "_id": doc.id, "routing": doc.routing } });
    serde_json::to_writer(&mut *body, &action).expect("writing to a Vec cannot fail");
    body.push(b'\n');
    body.extend_from_slice(&doc.source);
    body.push(b'\n');
}

/// The `_bulk` body indexing `docs` into `index`. Pure.
pub fn encode_bulk_body<'a>(index: &str, docs: impl IntoIterator<Item = &'a BulkDoc>) -> Vec<u8> {
    let mut body = Vec::new();
    for doc in docs {
        encode_index_op(&mut body, index, doc);
    }
    body
}

/// Splits `positions` (indices into `docs`) into consecutive requests of at
/// most `max_bytes` each (a single larger document gets a request of its
/// own). Pure.
pub fn chunk_by_bytes(docs: &[BulkDoc], positions: &[usize], max_bytes: usize) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for &position in positions {
        let size = docs[position].encoded_len();
        if !current.is_empty() && current_bytes + size > max_bytes {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current.push(position);
        current_bytes += size;
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The fate of one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    Indexed,
    /// A later retry may succeed.
    Retriable {
        status: u16,
        kind: String,
        reason: String,
    },
    /// The document can never be written as it is.
    Rejected {
        status: u16,
        kind: String,
        reason: String,
    },
}

/// One item of a 2xx `_bulk` answer: its HTTP status and, when it failed,
/// the engine's `error.type` and `error.reason` (`error` is absent for a
/// delete of a missing document, which is a plain 404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItem {
    pub status: u16,
    pub has_error: bool,
    pub kind: String,
    pub reason: String,
}

impl BulkItem {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Reads the items of a 2xx `_bulk` answer, in request order: the one
/// reader of the answer's shape for every kind of bulk request. Pure.
/// Fails if the answer does not hold exactly `expected` items.
pub fn read_bulk_items(answer: &Value, expected: usize) -> Result<Vec<BulkItem>, EngineError> {
    let items = answer
        .get("items")
        .and_then(Value::as_array)
        .ok_or_else(|| EngineError::Protocol("bulk answer without items".to_owned()))?;
    if items.len() != expected {
        return Err(EngineError::Protocol(format!(
            "bulk answer has {} items for {expected} operations",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| {
            let result = item
                .as_object()
                .and_then(|operation| operation.values().next())
                .ok_or_else(|| EngineError::Protocol("bulk item is not an object".to_owned()))?;
            let status = result
                .get("status")
                .and_then(Value::as_u64)
                .ok_or_else(|| EngineError::Protocol("bulk item without status".to_owned()))?
                as u16;
            let error = result.get("error");
            let text = |field: &str| {
                error
                    .and_then(|error| error.get(field))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(BulkItem {
                status,
                has_error: error.is_some(),
                kind: text("type"),
                reason: text("reason"),
            })
        })
        .collect()
}

/// Reads the per-item results of a 2xx `_bulk` answer, in request order.
/// Pure. Fails if the answer does not hold exactly `expected` items.
pub fn parse_bulk_items(answer: &Value, expected: usize) -> Result<Vec<ItemOutcome>, EngineError> {
    Ok(read_bulk_items(answer, expected)?
        .into_iter()
        .map(|item| {
            if item.succeeded() {
                return ItemOutcome::Indexed;
            }
            let BulkItem {
                status,
                kind,
                reason,
                ..
            } = item;
            if is_retriable_status(status, &kind) {
                ItemOutcome::Retriable {
                    status,
                    kind,
                    reason,
                }
            } else {
                ItemOutcome::Rejected {
                    status,
                    kind,
                    reason,
                }
            }
        })
        .collect())
}

/// A document the engine refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailure {
    /// Index of the document in the slice given to [`EsBulkSink::write`].
    pub position: usize,
    pub status: u16,
    /// The engine's `error.type`.
    pub kind: String,
    pub reason: String,
}

impl std::fmt::Display for ItemFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "HTTP {} {}: {}",
            self.status, self.kind, self.reason
        )
    }
}

/// What one [`EsBulkSink::write`] achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BulkReport {
    pub indexed: usize,
    /// Documents to dead-letter; every other document is indexed.
    pub rejected: Vec<ItemFailure>,
}

/// How [`EsBulkSink`] retries retriable items within one call.
#[derive(Debug, Clone)]
pub struct BulkSinkSettings {
    /// Largest `_bulk` body, in bytes (the engine's default limit is 100 MB).
    pub max_request_bytes: usize,
    /// Attempts per call before giving up retriably.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BulkSinkSettings {
    fn default() -> Self {
        Self {
            max_request_bytes: 5 * 1024 * 1024,
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Writes documents through the write alias with `_bulk`.
#[derive(Debug, Clone)]
pub struct EsBulkSink {
    client: EsClient,
    write_alias: String,
    settings: BulkSinkSettings,
    metrics: BulkMetrics,
}

impl EsBulkSink {
    pub fn new(
        client: EsClient,
        write_alias: impl Into<String>,
        settings: BulkSinkSettings,
        metrics: BulkMetrics,
    ) -> Self {
        Self {
            client,
            write_alias: write_alias.into(),
            settings,
            metrics,
        }
    }

    pub fn metrics(&self) -> &BulkMetrics {
        &self.metrics
    }

    /// Indexes `docs`. `Ok` means every document is either confirmed by the
    /// engine or listed in [`BulkReport::rejected`]. `Err` (retriable) means
    /// some documents are in neither state after `max_attempts`; the caller
    /// retries the whole call later (writes are idempotent by id).
    pub async fn write(&self, docs: &[BulkDoc]) -> Result<BulkReport, EngineError> {
        let mut report = BulkReport::default();
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        let mut max_bytes = self.settings.max_request_bytes.max(1);
        let mut backoff = self.settings.initial_backoff;
        let mut attempt = 0;
        loop {
            let mut still_pending = Vec::new();
            let mut last_error = None;
            for chunk in chunk_by_bytes(docs, &pending, max_bytes) {
                match self.send_chunk(docs, &chunk).await {
                    Ok(outcomes) => {
                        for (position, outcome) in chunk.iter().copied().zip(outcomes) {
                            match outcome {
                                ItemOutcome::Indexed => report.indexed += 1,
                                ItemOutcome::Retriable {
                                    status,
                                    kind,
                                    reason,
                                } => {
                                    self.count_failure(&kind, 1);
                                    last_error = Some(EngineError::Unavailable {
                                        status,
                                        reason: format!("{kind}: {reason}"),
                                    });
                                    still_pending.push(position);
                                }
                                ItemOutcome::Rejected {
                                    status,
                                    kind,
                                    reason,
                                } => {
                                    self.count_failure(&kind, 1);
                                    self.metrics.rejected.inc();
                                    report.rejected.push(ItemFailure {
                                        position,
                                        status,
                                        kind,
                                        reason,
                                    });
                                }
                            }
                        }
                    }
                    Err(EngineError::Rejected { status: 413, .. }) if chunk.len() > 1 => {
                        self.count_failure("request:too_large", chunk.len() as u64);
                        max_bytes = (max_bytes / 2).max(1);
                        still_pending.extend(chunk);
                    }
                    Err(EngineError::Rejected {
                        status: 413,
                        kind,
                        reason,
                    }) => {
                        self.count_failure("request:too_large", 1);
                        self.metrics.rejected.inc();
                        report.rejected.push(ItemFailure {
                            position: chunk[0],
                            status: 413,
                            kind,
                            reason,
                        });
                    }
                    Err(error) if error.is_retriable() => {
                        let reason = match &error {
                            EngineError::Unreachable(_) => "request:unreachable".to_owned(),
                            EngineError::Unavailable { status, .. } => {
                                format!("request:http_{status}")
                            }
                            _ => "request:other".to_owned(),
                        };
                        self.count_failure(&reason, chunk.len() as u64);
                        last_error = Some(error);
                        still_pending.extend(chunk);
                    }
                    Err(error) => return Err(error),
                }
            }
            if still_pending.is_empty() {
                self.metrics.docs_indexed.inc_by(report.indexed as u64);
                return Ok(report);
            }
            attempt += 1;
            if attempt >= self.settings.max_attempts {
                // Documents confirmed so far stay confirmed; the caller's
                // retry re-sends them harmlessly (same ids).
                self.metrics.docs_indexed.inc_by(report.indexed as u64);
                return Err(last_error.unwrap_or_else(|| {
                    EngineError::Unreachable("bulk retries exhausted".to_owned())
                }));
            }
            self.metrics.item_retries.inc_by(still_pending.len() as u64);
            tracing::debug!(
                pending = still_pending.len(),
                attempt,
                backoff_ms = backoff.as_millis() as u64,
                "retrying bulk items"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.settings.max_backoff);
            pending = still_pending;
        }
    }

    fn count_failure(&self, reason: &str, count: u64) {
        let reason = if reason.is_empty() { "unknown" } else { reason };
        self.metrics
            .item_failures
            .get_or_create(&ReasonLabel::new(reason))
            .inc_by(count);
    }

    async fn send_chunk(
        &self,
        docs: &[BulkDoc],
        chunk: &[usize],
    ) -> Result<Vec<ItemOutcome>, EngineError> {
        let body = encode_bulk_body(
            &self.write_alias,
            chunk.iter().map(|&position| &docs[position]),
        );
        self.metrics.requests.inc();
        let started = Instant::now();
        let answer = self
            .client
            .request_bytes(
                Method::Post,
                "/_bulk",
                &[
                    ("require_alias", "true"),
                    (
                        "filter_path",
                        "errors,items.*.status,items.*.error.type,items.*.error.reason",
                    ),
                ],
                Some(body),
                "application/json",
            )
            .await;
        self.metrics
            .request_latency
            .observe(started.elapsed().as_secs_f64());
        let answer = answer?.into_result()?;
        parse_bulk_items(&answer, chunk.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, routing: &str, body: &str) -> BulkDoc {
        BulkDoc {
            id: id.to_owned(),
            routing: routing.to_owned(),
            source: serde_json::to_vec(&json!({ "body": body })).unwrap(),
        }
    }

    #[test]
    fn bodies_are_ndjson_pairs() {
        let docs = [
            doc("1", "c1", "hi"),
            doc("2", "c\"2", "line\nbreak and \"quotes\" {\"query\":1}"),
        ];
        let body = encode_bulk_body("chat-messages", &docs);
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            json!({"index": {"_index": "chat-messages", "_id": "1", "routing": "c1"}})
        );
        assert_eq!(lines[2]["index"]["routing"], "c\"2");
        assert_eq!(lines[3]["body"], "line\nbreak and \"quotes\" {\"query\":1}");
    }

    #[test]
    fn chunks_respect_the_byte_cap_and_keep_order() {
        let docs: Vec<BulkDoc> = (0..10)
            .map(|index| doc(&index.to_string(), "c", &"x".repeat(100)))
            .collect();
        let positions: Vec<usize> = (0..10).collect();
        let size = docs[0].encoded_len();
        let chunks = chunk_by_bytes(&docs, &positions, size * 3);
        assert_eq!(
            chunks,
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
        );
        // A cap below one document still makes progress, one per request.
        assert_eq!(
            chunk_by_bytes(&docs, &positions[..2], 1),
            vec![vec![0], vec![1]]
        );
        assert!(chunk_by_bytes(&docs, &[], 100).is_empty());
    }

    #[test]
    fn items_are_classified() {
        let answer = json!({"errors": true, "items": [
            {"index": {"status": 201}},
            {"index": {"status": 200}},
            {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"index": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            {"index": {"status": 503, "error": {"type": "unavailable_shards_exception", "reason": "x"}}},
            {"index": {"status": 404, "error": {"type": "index_not_found_exception", "reason": "no alias"}}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}}
        ]});
        let outcomes = parse_bulk_items(&answer, 7).unwrap();
        assert_eq!(outcomes[0], ItemOutcome::Indexed);
        assert_eq!(outcomes[1], ItemOutcome::Indexed);
        assert!(matches!(
            outcomes[2],
            ItemOutcome::Retriable { status: 429, .. }
        ));
        assert!(
            matches!(&outcomes[3], ItemOutcome::Rejected { status: 400, kind, .. } if kind == "mapper_parsing_exception")
        );
        assert!(matches!(
            outcomes[4],
            ItemOutcome::Retriable { status: 503, .. }
        ));
        assert!(matches!(
            outcomes[5],
            ItemOutcome::Retriable { status: 404, .. }
        ));
        assert!(matches!(
            outcomes[6],
            ItemOutcome::Rejected { status: 409, .. }
        ));
    }

    #[test]
    fn answers_that_do_not_match_the_request_are_protocol_errors() {
        assert!(matches!(
            parse_bulk_items(&json!({"items": []}), 1),
            Err(EngineError::Protocol(_))
        ));
        assert!(matches!(
            parse_bulk_items(&json!({"took": 1}), 0),
            Err(EngineError::Protocol(_))
        ));
        assert!(matches!(
            parse_bulk_items(&json!({"items": [{"index": {}}]}), 1),
            Err(EngineError::Protocol(_))
        ));
    }
}
