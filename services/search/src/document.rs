//! The search document of a message: a pure mapping, no I/O.
//!
//! | field | type | why |
//! |---|---|---|
//! | `_id` | the message id (decimal) | idempotent writes: a re-delivered record overwrites its document |
//! | `_routing` | the conversation id (required by the mapping) | a conversation's messages share a shard; a search in one conversation asks one shard |
//! | `message_id` | `long` | the unique tie-breaker of every sort, and the time order (Snowflake ids sort by time) |
//! | `conversation_id`, `sender_id` | `keyword` | exact filters (authorization, `sender_id`) |
//! | `client_msg_id` | `keyword` | lookups when debugging a client's retries |
//! | `ts` | `date` (`epoch_millis`) | `since`/`until` ranges |
//! | `body` | `text`, `standard` analyzer | words of Latin, Cyrillic, Greek… scripts; CJK as single characters |
//! | `body.cjk` | `text`, `standard` tokenizer + `cjk_width` + `lowercase` + `cjk_bigram` (indexed with unigrams too; searched with bigrams only) | Chinese/Japanese/Korean as overlapping bigrams, which match words far better than single characters (`東京` must not match `京都と東北`), while a one-character query still finds its unigram; built in on both engines (ICU is a plugin that OpenSearch does not ship). Queries holding CJK characters go to this field, others to `body` |
//! | `edge_id` | stored only | tracing |
//! | `reply_to` | stored only (absent unless a reply) | the message a reply answers, shown with search hits |

use chatpipe_core::frames::MessageView;
use chatpipe_core::records::MessageRecord;
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, MessageId, UserId};
use serde::{Deserialize, Serialize};

/// The `_source` of a message document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDocument {
    /// A JSON number here (the engine's `long`); clients see it as a string.
    pub message_id: u64,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Unix milliseconds.
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<EdgeId>,
    /// The message this one replies to (stored, not indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
}

impl MessageDocument {
    pub fn from_record(record: &MessageRecord) -> Self {
        Self {
            message_id: record.message_id.as_u64(),
            conversation_id: record.conversation_id.clone(),
            sender_id: record.sender_id.clone(),
            client_msg_id: record.client_msg_id.clone(),
            body: record.body.clone(),
            ts: record.ts,
            edge_id: Some(record.edge_id.clone()),
            reply_to: record.reply_to.map(MessageId::as_u64),
        }
    }

    /// The document id: the message id in decimal.
    pub fn document_id(&self) -> String {
        self.message_id.to_string()
    }

    /// The message as clients see it. `None` for a document whose id is not
    /// a valid message id (never written by chatpipe).
    pub fn into_view(self) -> Option<MessageView> {
        let message_id = MessageId::parse(&self.message_id.to_string()).ok()?;
        Some(MessageView {
            message_id,
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id,
            body: self.body,
            ts: self.ts,
            reply_to: self
                .reply_to
                .and_then(|id| MessageId::parse(&id.to_string()).ok()),
            mentions: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_to_views() {
        let record = MessageRecord::builder(
            MessageId::from_u64(9_007_199_254_740_993),
            &ConversationId::parse("c1").unwrap(),
        )
        .client_msg_id("m1")
        .body("hello")
        .ts(1_700_000_000_000)
        .build();
        let document = MessageDocument::from_record(&record);
        let json = serde_json::to_value(&document).unwrap();
        // Above 2^53: must stay an exact integer, not a float.
        assert_eq!(json["message_id"].as_u64(), Some(9_007_199_254_740_993));
        assert_eq!(document.document_id(), "9007199254740993");
        let view = serde_json::from_value::<MessageDocument>(json)
            .unwrap()
            .into_view()
            .unwrap();
        assert_eq!(view, MessageView::from(&record));
    }
}
