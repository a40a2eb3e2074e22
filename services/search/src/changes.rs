//! Edits and deletes of indexed messages: the requests as pure functions,
//! and [`EsChangeSink`], which sends them. Reactions are not indexed.
//!
//! A change names its message by id, not by backing index, and after a
//! rollover the document may sit in any index behind the search alias. So
//! changes go by query through the search alias, routed to the
//! conversation's shard: `_update_by_query` replaces the body (and sets
//! `edited_at`) of an edit, `_delete_by_query` removes a deleted message's
//! document. A by-query request sees only refreshed documents, so the sink
//! refreshes the alias before a round of changes (the message may have
//! been indexed by the batch just before), and each request refreshes
//! after itself so that a deleted message stops being found at once.
//! Changes are rare next to messages; this cost is paid only for them.
//!
//! Idempotent: applying an edit again writes the same body; deleting again
//! finds nothing. A change of a message that has no document (deleted
//! earlier, or never indexed) matches nothing and succeeds.

use elasticsearch::http::Method;
use serde_json::{Value, json};

use chatpipe_core::records::{MessageChange, MessageChangeRecord};

use crate::client::EsClient;
use crate::error::EngineError;

/// The path and body of the request applying `change` through `alias`,
/// or `None` for a change the index does not hold (reactions). Pure.
pub fn change_request(alias: &str, change: &MessageChangeRecord) -> Option<(String, Value)> {
    let query = json!({ "term": { "message_id": change.message_id.as_u64() } });
    Some(match &change.change {
        MessageChange::ReactionAdd { .. } | MessageChange::ReactionRemove { .. } => return None,
        MessageChange::Edit { body } => (
            format!("/{alias}/_update_by_query"),
            json!({
                "query": query,
                "script": {
                    "lang": "painless",
                    "source": "ctx._source.body = params.body; ctx._source.edited_at = params.edited_at",
                    "params": { "body": body, "edited_at": change.ts },
                },
            }),
        ),
        MessageChange::Delete => (
            format!("/{alias}/_delete_by_query"),
            json!({ "query": query }),
        ),
    })
}

/// Applies message changes through the search alias.
#[derive(Debug, Clone)]
pub struct EsChangeSink {
    client: EsClient,
    search_alias: String,
}

impl EsChangeSink {
    pub fn new(client: EsClient, search_alias: impl Into<String>) -> Self {
        Self {
            client,
            search_alias: search_alias.into(),
        }
    }

    /// Applies `changes` in their order; returns how many changed the
    /// index (reactions do not). `Err` says whether retrying may help; the
    /// changes before the failed one are applied (and applying them again
    /// is harmless).
    pub async fn apply(&self, changes: &[MessageChangeRecord]) -> Result<u64, EngineError> {
        let requests: Vec<(&MessageChangeRecord, (String, Value))> = changes
            .iter()
            .filter_map(|change| Some((change, change_request(&self.search_alias, change)?)))
            .collect();
        if requests.is_empty() {
            return Ok(0);
        }
        self.client.refresh(&self.search_alias).await?;
        for (change, (path, body)) in &requests {
            self.apply_one(change, path, body).await?;
        }
        Ok(requests.len() as u64)
    }

    async fn apply_one(
        &self,
        change: &MessageChangeRecord,
        path: &str,
        body: &Value,
    ) -> Result<(), EngineError> {
        let answer = self
            .client
            .request(
                Method::Post,
                path,
                &[
                    ("routing", change.conversation_id.as_str()),
                    ("refresh", "true"),
                ],
                Some(body),
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
    use chatpipe_core::{ConversationId, EdgeId, MessageId, UserId};

    fn change(change: MessageChange) -> MessageChangeRecord {
        MessageChangeRecord {
            schema_version: CHANGE_SCHEMA_VERSION,
            message_id: MessageId::from_u64(77),
            conversation_id: ConversationId::parse("c1").unwrap(),
            actor_id: UserId::parse("alice").unwrap(),
            change,
            ts: 1234,
            edge_id: EdgeId::parse("e").unwrap(),
        }
    }

    #[test]
    fn changes_go_by_query_on_the_message_id() {
        let (path, body) = change_request(
            "chat-messages-search",
            &change(MessageChange::Edit {
                body: "fixed".into(),
            }),
        )
        .unwrap();
        assert_eq!(path, "/chat-messages-search/_update_by_query");
        assert_eq!(body["query"]["term"]["message_id"], 77);
        assert_eq!(body["script"]["params"]["body"], "fixed");
        assert_eq!(body["script"]["params"]["edited_at"], 1234);
        let (path, body) = change_request("a", &change(MessageChange::Delete)).unwrap();
        assert_eq!(path, "/a/_delete_by_query");
        assert_eq!(body, json!({"query": {"term": {"message_id": 77}}}));
        let reaction = change(MessageChange::ReactionAdd {
            reaction: "👍".into(),
        });
        assert_eq!(change_request("a", &reaction), None, "not in the index");
    }
}
