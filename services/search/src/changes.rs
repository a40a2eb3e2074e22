//! Edits and deletes of indexed messages: the requests as pure functions,
//! and [`EsChangeSink`], which sends them. Reactions are not indexed.
//!
//! ## By document id, with a by-query fallback
//!
//! The document id is the message id and the routing key the conversation
//! id, so a round of changes (one consumer batch) goes as **one `_bulk`
//! request** through the write alias: an `update` (partial document: the
//! new `body` and `edited_at`; every other field kept) per edit, a `delete`
//! per deletion. No refresh: like new messages, the changes become
//! searchable at the index's next scheduled refresh (`refresh_interval`,
//! 1 s). Updates and deletes by id see the latest version of a document
//! whether or not it has been refreshed, so a change right after its
//! message (the same batch, where the handler writes the documents first)
//! finds it.
//!
//! The write alias names only the newest backing index. A message indexed
//! before a rollover lives in an older one, and its change comes back as a
//! 404 (`document_missing_exception` for an update, `not_found` for a
//! delete). Only those items are then applied the old way: by query
//! through the search alias (every backing index), routed to the
//! conversation's shard, `_update_by_query` / `_delete_by_query` on
//! `message_id`. A by-query request sees only refreshed documents, so a
//! round that needs a fallback first refreshes the search alias, **once**:
//! without it, a message written to the old index in the last second before
//! a rollover would be missed (silently: the change would match nothing),
//! and a document already changed by id (a replayed round) would be seen in
//! its old version and fail with a version conflict. Rounds without a
//! fallback (every change of a message of the current write index) never
//! refresh.
//!
//! A round is first reduced to one change per message ([`net_changes`]):
//! a delete wins over every edit of the round (a deletion is final, and an
//! edit of a deleted message changes nothing), otherwise the latest edit in
//! partition order wins. This is what applying them one by one would leave,
//! and it keeps two by-query requests from racing on one document.
//!
//! Idempotent: applying an edit again writes the same body (a no-op);
//! deleting again finds nothing, falls back, and matches nothing. A change
//! of a message that has no document (deleted earlier, dropped as a
//! duplicate send, or rejected) falls back, matches nothing and succeeds.
//!
//! Limit: a record re-delivered after a rollover has a second copy in the
//! new write index (see [`crate::template`]); a change by id reaches only
//! that copy, and the first copy keeps its old body (search shows one of
//! them per page). Both are as rare as the re-delivery across a rollover.

use std::collections::HashMap;
use std::time::Instant;

use elasticsearch::http::Method;
use serde_json::{Value, json};

use chatpipe_core::records::{MessageChange, MessageChangeRecord};
use chatpipe_core::{ConversationId, MessageId};

use crate::bulk::read_bulk_items;
use crate::client::EsClient;
use crate::error::EngineError;
use crate::metrics::ChangeMetrics;

/// What the index must end up with for one message after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexChange {
    /// The document's body is `body`, edited at `edited_at` (Unix ms).
    Edit { body: String, edited_at: u64 },
    /// The document is gone.
    Delete,
}

/// The net change of a round to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub change: IndexChange,
}

impl PlannedChange {
    /// The document id (the message id in decimal).
    pub fn document_id(&self) -> String {
        self.message_id.as_u64().to_string()
    }
}

/// Reduces a round of changes, in partition order, to one change per
/// message, in the order of each message's first change: a delete if the
/// round deletes it, else its latest edit. Reactions are dropped (not
/// indexed). Pure.
pub fn net_changes(changes: &[MessageChangeRecord]) -> Vec<PlannedChange> {
    let mut planned: Vec<PlannedChange> = Vec::new();
    let mut position_of: HashMap<MessageId, usize> = HashMap::new();
    for record in changes {
        let change = match &record.change {
            MessageChange::ReactionAdd { .. } | MessageChange::ReactionRemove { .. } => continue,
            MessageChange::Edit { body } => IndexChange::Edit {
                body: body.clone(),
                edited_at: record.ts,
            },
            MessageChange::Delete => IndexChange::Delete,
        };
        match position_of.get(&record.message_id) {
            Some(&position) => {
                let earlier = &mut planned[position].change;
                if *earlier != IndexChange::Delete {
                    *earlier = change;
                }
            }
            None => {
                position_of.insert(record.message_id, planned.len());
                planned.push(PlannedChange {
                    message_id: record.message_id,
                    conversation_id: record.conversation_id.clone(),
                    change,
                });
            }
        }
    }
    planned
}

/// The `_bulk` body applying `changes` by id through `write_alias`. Pure.
pub fn encode_change_bulk_body(write_alias: &str, changes: &[PlannedChange]) -> Vec<u8> {
    let mut ndjson = Vec::new();
    let mut line = |value: &Value| {
        serde_json::to_writer(&mut ndjson, value).expect("writing to a Vec cannot fail");
        ndjson.push(b'\n');
    };
    for planned in changes {
        let id = planned.document_id();
        let routing = planned.conversation_id.as_str();
        match &planned.change {
            IndexChange::Edit { body, edited_at } => {
                // A concurrent write of the same document (a re-delivered
                // message indexed by another worker during a rebalance) is
                // retried by the engine on the newest version.
                line(&json!({ "update": {
                    "_index": write_alias, "_id": id, "routing": routing, "retry_on_conflict": 3,
                } }));
                line(&json!({ "doc": { "body": body, "edited_at": edited_at } }));
            }
            IndexChange::Delete => {
                line(
                    &json!({ "delete": { "_index": write_alias, "_id": id, "routing": routing } }),
                );
            }
        }
    }
    ndjson
}

/// The fate of one change of the `_bulk` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeItemOutcome {
    /// Updated (or a no-op: the same body again) or deleted.
    Applied,
    /// The write index does not hold the document: fall back to by-query.
    Missing,
    /// Anything else: the round fails, retriably or not as the status says.
    Failed(EngineError),
}

/// Reads the per-item results of a 2xx `_bulk` answer of changes, in
/// request order. Pure. Fails if the answer does not hold exactly
/// `expected` items.
pub fn parse_change_items(
    answer: &Value,
    expected: usize,
) -> Result<Vec<ChangeItemOutcome>, EngineError> {
    Ok(read_bulk_items(answer, expected)?
        .into_iter()
        .map(|item| {
            if item.succeeded() {
                return ChangeItemOutcome::Applied;
            }
            // A delete of an absent document is a 404 without an error
            // (`result: not_found`); an update's is `document_missing`. A
            // missing index or alias is a 404 too, but an error to retry.
            if item.status == 404 && (!item.has_error || item.kind.contains("document_missing")) {
                return ChangeItemOutcome::Missing;
            }
            ChangeItemOutcome::Failed(EngineError::from_status(
                item.status,
                &item.kind,
                &item.reason,
            ))
        })
        .collect())
}

/// The path and body of the by-query request applying `change` through
/// `search_alias` (the fallback for documents outside the write index).
/// Pure.
pub fn by_query_request(search_alias: &str, planned: &PlannedChange) -> (String, Value) {
    let query = json!({ "term": { "message_id": planned.message_id.as_u64() } });
    match &planned.change {
        IndexChange::Edit { body, edited_at } => (
            format!("/{search_alias}/_update_by_query"),
            json!({
                "query": query,
                "script": {
                    "lang": "painless",
                    "source": "ctx._source.body = params.body; ctx._source.edited_at = params.edited_at",
                    "params": { "body": body, "edited_at": edited_at },
                },
            }),
        ),
        IndexChange::Delete => (
            format!("/{search_alias}/_delete_by_query"),
            json!({ "query": query }),
        ),
    }
}

/// Applies message changes: by id through the write alias, by query
/// through the search alias for documents in older backing indices.
#[derive(Debug, Clone)]
pub struct EsChangeSink {
    client: EsClient,
    write_alias: String,
    search_alias: String,
    metrics: ChangeMetrics,
}

impl EsChangeSink {
    pub fn new(
        client: EsClient,
        write_alias: impl Into<String>,
        search_alias: impl Into<String>,
        metrics: ChangeMetrics,
    ) -> Self {
        Self {
            client,
            write_alias: write_alias.into(),
            search_alias: search_alias.into(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &ChangeMetrics {
        &self.metrics
    }

    /// Applies `changes` (in partition order; see [`net_changes`]);
    /// returns how many of them were edits or deletes (reactions are not
    /// indexed). `Err` says whether retrying may help; part of the round
    /// may be applied, and applying it again is harmless.
    pub async fn apply(&self, changes: &[MessageChangeRecord]) -> Result<u64, EngineError> {
        let planned = net_changes(changes);
        if planned.is_empty() {
            return Ok(0);
        }
        let indexed = changes
            .iter()
            .filter(|record| {
                matches!(
                    record.change,
                    MessageChange::Edit { .. } | MessageChange::Delete
                )
            })
            .count() as u64;
        let outcomes = self.apply_by_id(&planned).await?;
        let mut missing = Vec::new();
        for (planned, outcome) in planned.iter().zip(outcomes) {
            match outcome {
                ChangeItemOutcome::Applied => {
                    self.metrics.applied_by_id.inc();
                }
                ChangeItemOutcome::Missing => missing.push(planned),
                ChangeItemOutcome::Failed(error) => return Err(error),
            }
        }
        if missing.is_empty() {
            return Ok(indexed);
        }
        // See the module doc: the by-query requests must see every
        // document written so far, and this round's changes by id.
        self.metrics.fallback_refreshes.inc();
        self.client.refresh(&self.search_alias).await?;
        for planned in missing {
            self.apply_by_query(planned).await?;
            self.metrics.by_query_fallbacks.inc();
        }
        Ok(indexed)
    }

    async fn apply_by_id(
        &self,
        planned: &[PlannedChange],
    ) -> Result<Vec<ChangeItemOutcome>, EngineError> {
        let body = encode_change_bulk_body(&self.write_alias, planned);
        self.metrics.bulk_requests.inc();
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
            .bulk_latency
            .observe(started.elapsed().as_secs_f64());
        let answer = answer?.into_result()?;
        parse_change_items(&answer, planned.len())
    }

    async fn apply_by_query(&self, planned: &PlannedChange) -> Result<(), EngineError> {
        let (path, body) = by_query_request(&self.search_alias, planned);
        let answer = self
            .client
            .request(
                Method::Post,
                &path,
                &[("routing", planned.conversation_id.as_str())],
                Some(&body),
            )
            .await?;
        // A version conflict means the document was written meanwhile:
        // trying again applies the change to the newest version.
        if answer.status == 409 {
            return Err(EngineError::Unavailable {
                status: 409,
                reason: "version conflict while applying a change".to_owned(),
            });
        }
        let result = answer.into_result()?;
        let conflicts = result
            .get("version_conflicts")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let failures = result
            .get("failures")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if conflicts > 0 || failures > 0 {
            return Err(EngineError::Unavailable {
                status: 409,
                reason: format!(
                    "{conflicts} version conflicts and {failures} failures while applying a change"
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_core::records::CHANGE_SCHEMA_VERSION;
    use chatpipe_core::{EdgeId, UserId};

    fn change_of(message_id: u64, ts: u64, change: MessageChange) -> MessageChangeRecord {
        MessageChangeRecord {
            schema_version: CHANGE_SCHEMA_VERSION,
            message_id: MessageId::from_u64(message_id),
            conversation_id: ConversationId::parse("c1").unwrap(),
            actor_id: UserId::parse("alice").unwrap(),
            change,
            ts,
            edge_id: EdgeId::parse("e").unwrap(),
        }
    }

    fn edit(message_id: u64, ts: u64, body: &str) -> MessageChangeRecord {
        change_of(message_id, ts, MessageChange::Edit { body: body.into() })
    }

    fn lines(body: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_round_nets_to_one_change_per_message() {
        let reaction = change_of(
            9,
            5,
            MessageChange::ReactionAdd {
                reaction: "👍".into(),
            },
        );
        let round = [
            edit(1, 10, "first"),
            edit(2, 11, "other"),
            reaction,
            edit(1, 12, "second"),
            change_of(3, 13, MessageChange::Delete),
            edit(3, 14, "after the delete"),
            edit(2, 15, "before the delete"),
            change_of(2, 16, MessageChange::Delete),
        ];
        let planned = net_changes(&round);
        let summary: Vec<(u64, IndexChange)> = planned
            .iter()
            .map(|planned| (planned.message_id.as_u64(), planned.change.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    IndexChange::Edit {
                        body: "second".into(),
                        edited_at: 12
                    }
                ),
                (2, IndexChange::Delete),
                (3, IndexChange::Delete),
            ]
        );
        assert!(net_changes(&round[2..3]).is_empty(), "reactions only");
    }

    #[test]
    fn changes_go_by_id_through_the_write_alias() {
        let planned = net_changes(&[
            edit(77, 1234, "fixed \"quoted\"\nline"),
            change_of(78, 1235, MessageChange::Delete),
        ]);
        let body = lines(&encode_change_bulk_body("chat-messages", &planned));
        assert_eq!(body.len(), 3, "an update is two lines, a delete one");
        assert_eq!(
            body[0],
            json!({"update": {"_index": "chat-messages", "_id": "77", "routing": "c1", "retry_on_conflict": 3}})
        );
        assert_eq!(
            body[1],
            json!({"doc": {"body": "fixed \"quoted\"\nline", "edited_at": 1234}}),
            "a partial document: the other fields stay"
        );
        assert_eq!(
            body[2],
            json!({"delete": {"_index": "chat-messages", "_id": "78", "routing": "c1"}})
        );
    }

    #[test]
    fn missing_documents_are_told_apart_from_failures() {
        let answer = json!({"errors": true, "items": [
            {"update": {"status": 200}},
            {"delete": {"status": 200}},
            {"update": {"status": 404, "error": {"type": "document_missing_exception", "reason": "[77]: document missing"}}},
            {"delete": {"status": 404}},
            {"update": {"status": 404, "error": {"type": "index_not_found_exception", "reason": "no such index"}}},
            {"update": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"update": {"status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}}
        ]});
        let outcomes = parse_change_items(&answer, 7).unwrap();
        assert_eq!(outcomes[0], ChangeItemOutcome::Applied);
        assert_eq!(outcomes[1], ChangeItemOutcome::Applied);
        assert_eq!(outcomes[2], ChangeItemOutcome::Missing);
        assert_eq!(outcomes[3], ChangeItemOutcome::Missing);
        assert!(
            matches!(&outcomes[4], ChangeItemOutcome::Failed(error) if error.is_retriable()),
            "a missing alias is retried, not worked around: {:?}",
            outcomes[4]
        );
        assert!(matches!(&outcomes[5], ChangeItemOutcome::Failed(error) if error.is_retriable()));
        assert!(matches!(&outcomes[6], ChangeItemOutcome::Failed(error) if !error.is_retriable()));
        assert!(matches!(
            parse_change_items(&json!({"items": []}), 1),
            Err(EngineError::Protocol(_))
        ));
    }

    #[test]
    fn the_fallback_goes_by_query_on_the_message_id() {
        let planned = net_changes(&[edit(77, 1234, "fixed")]);
        let (path, body) = by_query_request("chat-messages-search", &planned[0]);
        assert_eq!(path, "/chat-messages-search/_update_by_query");
        assert_eq!(body["query"]["term"]["message_id"], 77);
        assert_eq!(body["script"]["params"]["body"], "fixed");
        assert_eq!(body["script"]["params"]["edited_at"], 1234);
        let planned = net_changes(&[change_of(77, 1, MessageChange::Delete)]);
        let (path, body) = by_query_request("a", &planned[0]);
        assert_eq!(path, "/a/_delete_by_query");
        assert_eq!(body, json!({"query": {"term": {"message_id": 77}}}));
    }
}
