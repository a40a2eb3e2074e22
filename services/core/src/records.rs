//! The records chatpipe writes to Kafka, one JSON document per record.
//!
//! These are a public interface: analytics teams read the topics. Each type
//! has a JSON Schema in `schemas/kafka/` (checked against this code by the
//! `schemas` test), and every record carries `schema_version`. A change that
//! breaks readers bumps the version; additive changes keep it.
//!
//! | topic | key | value |
//! |---|---|---|
//! | `chat.messages` | conversation id | [`MessageRecord`] (version 1) and [`MessageChangeRecord`] (version 2), told apart by [`decode_messages_record`] |
//! | `chat.events` | conversation id (typing, read) or user id (presence) | [`EventRecord`] |
//! | `chat.membership` | conversation id | [`MembershipRecord`] |
//! | `chat.sessions` (compacted) | [`SessionKey`] | [`EdgeRecord`] / [`RouteRecord`], or a tombstone |
//! | `chat.deadletter` | the original key | [`DeadLetterRecord`] |

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, ConversationId, EdgeId, MessageId, UserId};
use crate::membership::{HistoryVisibility, Role};

/// Topic names, shared by producers, consumers and `topology apply`.
pub mod topics {
    pub const MESSAGES: &str = "chat.messages";
    pub const EVENTS: &str = "chat.events";
    pub const MEMBERSHIP: &str = "chat.membership";
    pub const SESSIONS: &str = "chat.sessions";
    pub const DEAD_LETTER: &str = "chat.deadletter";
}

/// The topic names one deployment uses. Deployments (and tests that share a
/// cluster) may prefix them; the default is the documented names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    pub messages: String,
    pub events: String,
    pub membership: String,
    pub sessions: String,
    pub dead_letter: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl TopicNames {
    /// `prefix` is prepended verbatim (`"t1."` gives `t1.chat.messages`).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            messages: format!("{prefix}{}", topics::MESSAGES),
            events: format!("{prefix}{}", topics::EVENTS),
            membership: format!("{prefix}{}", topics::MEMBERSHIP),
            sessions: format!("{prefix}{}", topics::SESSIONS),
            dead_letter: format!("{prefix}{}", topics::DEAD_LETTER),
        }
    }
}

/// The schema version written by this code for every record type.
pub const SCHEMA_VERSION: u32 = 1;

/// The schema version of [`MessageChangeRecord`]s. Change records share
/// `chat.messages` with the messages they change (same key, same partition,
/// so one order), and carry version 2 so that a reader of version 1 never
/// takes one for a new message: a v1 reader that dispatches on
/// `schema_version` skips them, and one that does not still fails to read
/// them as a message (they have no `sender_id`, `client_msg_id` or `body`
/// of a message) and dead-letters them.
pub const CHANGE_SCHEMA_VERSION: u32 = 2;

/// A chat message, as accepted by an edge. Key: `conversation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub schema_version: u32,
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Unix milliseconds at which the edge accepted the message.
    pub ts: u64,
    /// The edge that accepted it (for tracing and analytics). A marked
    /// resend's verdict is pushed back to this edge.
    pub edge_id: EdgeId,
    /// The client marked the send as a resend of a `client_msg_id` it sent
    /// before. Consumers de-duplicate every record the same way, marked or
    /// not (see [`crate::dedup`]); the mark only asks fan-out to push the
    /// partition's verdict to `edge_id`. Absent (false) on most records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend: bool,
    /// The message of the same conversation this one replies to, when it
    /// is a reply (checked by the edge). Absent on most records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// The users the message mentions (each once, never the sender, at
    /// most [`MAX_MENTIONS`](crate::read_state::MAX_MENTIONS)); absent
    /// when none. Added within version 1 (an optional field): readers of
    /// records without it see no mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

/// The most bytes of UTF-8 a reaction may hold (an emoji sequence or a
/// short name such as `+1`).
pub const MAX_REACTION_BYTES: usize = 32;

/// A later change to a message, as accepted by an edge (`schema_version`
/// [`CHANGE_SCHEMA_VERSION`]). Key: `conversation_id`, like the message it
/// changes, so that every reader sees the message before its changes and
/// the changes in one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageChangeRecord {
    pub schema_version: u32,
    /// The message changed.
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    /// Who made the change (the sender for an edit; the sender or a
    /// moderator of the conversation for a delete).
    pub actor_id: UserId,
    #[serde(flatten)]
    pub change: MessageChange,
    /// Unix milliseconds at which the edge accepted the change; always
    /// later than the message's own `ts`, so it also orders the change
    /// after the message in stores that keep the latest write.
    pub ts: u64,
    /// The edge that accepted it.
    pub edge_id: EdgeId,
}

/// What a [`MessageChangeRecord`] does, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MessageChange {
    /// The message's body is now `body`.
    Edit { body: String },
    /// The message is deleted: readers drop its body and keep a tombstone.
    Delete,
    /// `actor_id` reacted to the message with `reaction` (once per user and
    /// reaction: adding it again changes nothing).
    ReactionAdd { reaction: String },
    /// `actor_id` took `reaction` back.
    ReactionRemove { reaction: String },
}

impl MessageChange {
    /// The `kind` as written in the record.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageChange::Edit { .. } => "edit",
            MessageChange::Delete => "delete",
            MessageChange::ReactionAdd { .. } => "reaction_add",
            MessageChange::ReactionRemove { .. } => "reaction_remove",
        }
    }

    /// The reaction and whether it is added, for reaction changes.
    pub fn reaction(&self) -> Option<(&str, bool)> {
        match self {
            MessageChange::ReactionAdd { reaction } => Some((reaction, true)),
            MessageChange::ReactionRemove { reaction } => Some((reaction, false)),
            MessageChange::Edit { .. } | MessageChange::Delete => None,
        }
    }
}

/// A record of `chat.messages`, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessagesTopicRecord {
    Message(MessageRecord),
    Change(MessageChangeRecord),
}

/// Why a `chat.messages` value is neither a message nor a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagesRecordError {
    #[error("not a message record (MessageRecord): {0}")]
    Message(String),
    #[error("not a message change record (MessageChangeRecord): {0}")]
    Change(String),
    #[error("unknown schema_version {0} on the messages topic")]
    UnknownVersion(u64),
}

/// Decodes a `chat.messages` value by its `schema_version`: 1 is a
/// [`MessageRecord`], 2 a [`MessageChangeRecord`]. A message record (the
/// common case) is parsed once; the version is looked at only when that
/// parse fails or names another version.
pub fn decode_messages_record(payload: &[u8]) -> Result<MessagesTopicRecord, MessagesRecordError> {
    let message_error = match serde_json::from_slice::<MessageRecord>(payload) {
        Ok(record) if record.schema_version == SCHEMA_VERSION => {
            return Ok(MessagesTopicRecord::Message(record));
        }
        Ok(record) => {
            return Err(MessagesRecordError::UnknownVersion(
                record.schema_version.into(),
            ));
        }
        Err(error) => error,
    };
    #[derive(Deserialize)]
    struct Version {
        schema_version: Option<u64>,
    }
    match serde_json::from_slice::<Version>(payload) {
        Ok(Version {
            schema_version: Some(version),
        }) if version == u64::from(CHANGE_SCHEMA_VERSION) => {
            serde_json::from_slice::<MessageChangeRecord>(payload)
                .map(MessagesTopicRecord::Change)
                .map_err(|error| MessagesRecordError::Change(error.to_string()))
        }
        Ok(Version {
            schema_version: Some(version),
        }) if version != u64::from(SCHEMA_VERSION) => {
            Err(MessagesRecordError::UnknownVersion(version))
        }
        _ => Err(MessagesRecordError::Message(message_error.to_string())),
    }
}

impl MessageRecord {
    /// A builder of records **for tests, examples and tools** (production
    /// records come from the edge's send path). Defaults: sender `alice`,
    /// body `message {id}`, `client_msg_id` `m{id}`, `ts` the id's own
    /// millisecond, edge `edge-test`, not a resend, not a reply. The setters panic on an
    /// invalid id: they take test input.
    pub fn builder(
        message_id: MessageId,
        conversation_id: &ConversationId,
    ) -> MessageRecordBuilder {
        MessageRecordBuilder(MessageRecord {
            schema_version: SCHEMA_VERSION,
            message_id,
            conversation_id: conversation_id.clone(),
            sender_id: UserId::parse("alice").expect("a valid user id"),
            client_msg_id: ClientMsgId::parse(format!("m{message_id}"))
                .expect("a valid client_msg_id"),
            body: format!("message {message_id}"),
            ts: message_id.unix_ms(),
            edge_id: EdgeId::parse("edge-test").expect("a valid edge id"),
            resend: false,
            reply_to: None,
            mentions: Vec::new(),
        })
    }
}

/// See [`MessageRecord::builder`].
#[derive(Debug, Clone)]
pub struct MessageRecordBuilder(MessageRecord);

impl MessageRecordBuilder {
    pub fn sender(mut self, sender: &UserId) -> Self {
        self.0.sender_id = sender.clone();
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.0.body = body.into();
        self
    }

    pub fn client_msg_id(mut self, client_msg_id: impl Into<String>) -> Self {
        self.0.client_msg_id = ClientMsgId::parse(client_msg_id).expect("a valid client_msg_id");
        self
    }

    pub fn ts(mut self, ts: u64) -> Self {
        self.0.ts = ts;
        self
    }

    pub fn edge(mut self, edge_id: &str) -> Self {
        self.0.edge_id = EdgeId::parse(edge_id).expect("a valid edge id");
        self
    }

    pub fn resend(mut self, resend: bool) -> Self {
        self.0.resend = resend;
        self
    }

    pub fn reply_to(mut self, reply_to: MessageId) -> Self {
        self.0.reply_to = Some(reply_to);
        self
    }

    /// The users the message mentions (panics on an invalid id).
    pub fn mentions(mut self, users: &[&str]) -> Self {
        self.0.mentions = users
            .iter()
            .map(|user| UserId::parse(*user).expect("a valid user id"))
            .collect();
        self
    }

    pub fn build(self) -> MessageRecord {
        self.0
    }
}

/// Ephemeral events: delivered live like messages, never stored as history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub schema_version: u32,
    #[serde(flatten)]
    pub event: Event,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// `user_id` is typing in `conversation_id`. Key: conversation id.
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
    },
    /// `user_id` has read `conversation_id` up to `message_id`. Key: conversation id.
    Read {
        conversation_id: ConversationId,
        user_id: UserId,
        message_id: MessageId,
    },
    /// `user_id` came online or went offline. Key: user id. Delivered to the
    /// members of the user's conversations.
    Presence {
        user_id: UserId,
        status: PresenceStatus,
        /// The edge whose sessions of the user changed: `online` when the
        /// user's first session there opened, `offline` when the last one
        /// there ended. Fan-out reports the user offline only when no edge
        /// holds a session of them any more. Absent from older edges
        /// (their presence is delivered as it comes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        edge_id: Option<EdgeId>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
}

/// A membership change, written by the API after Cassandra confirmed it.
/// Key: `conversation_id`, so that fan-out caches see it in order with the
/// conversation's other membership changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub schema_version: u32,
    pub conversation_id: ConversationId,
    #[serde(flatten)]
    pub change: MembershipChange,
    /// Who made the change.
    pub actor_id: UserId,
    pub ts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MembershipChange {
    Created {
        members: Vec<UserId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// Absent: `shared` (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history_visibility: Option<HistoryVisibility>,
    },
    Added {
        user_id: UserId,
    },
    Removed {
        user_id: UserId,
    },
    /// `user_id`, a member, now holds `role` (a promotion, a demotion, or
    /// a handover of ownership). Membership itself did not change.
    RoleChanged {
        user_id: UserId,
        role: Role,
    },
    /// The conversation's settings changed. Membership did not.
    SettingsChanged {
        history_visibility: HistoryVisibility,
    },
}

impl MembershipChange {
    /// Whether the change adds or removes members (what member caches
    /// care about); role and settings changes do not.
    pub fn changes_members(&self) -> bool {
        matches!(
            self,
            MembershipChange::Created { .. }
                | MembershipChange::Added { .. }
                | MembershipChange::Removed { .. }
        )
    }
}

/// Keys of the compacted `chat.sessions` topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// `edge/<edge_id>`: the edge's liveness lease and push address.
    Edge(EdgeId),
    /// `route/<user_id>/<edge_id>`: the edge holds sessions of the user.
    Route(UserId, EdgeId),
}

impl SessionKey {
    pub fn encode(&self) -> String {
        match self {
            SessionKey::Edge(edge) => format!("edge/{edge}"),
            SessionKey::Route(user, edge) => format!("route/{user}/{edge}"),
        }
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.split('/');
        let key = match (parts.next()?, parts.next(), parts.next()) {
            ("edge", Some(edge), None) => SessionKey::Edge(EdgeId::parse(edge).ok()?),
            ("route", Some(user), Some(edge)) => {
                SessionKey::Route(UserId::parse(user).ok()?, EdgeId::parse(edge).ok()?)
            }
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

/// An edge's lease. Routes to an edge whose lease has expired are ignored,
/// so an edge that dies without cleaning up cannot attract traffic forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub schema_version: u32,
    pub edge_id: EdgeId,
    /// `host:port` of the edge's gRPC push service.
    pub push_addr: String,
    pub state: EdgeState,
    /// Unix ms after which the edge is presumed dead unless renewed.
    pub lease_expires_ms: u64,
    /// The message-id worker id the edge holds while its lease is live
    /// (so that no other edge takes it); absent from older edges' leases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u16>,
    pub ts: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeState {
    Serving,
    Draining,
}

/// The edge holds `sessions` live sessions of the user. A tombstone (null
/// value) removes the route when the last one goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub schema_version: u32,
    pub user_id: UserId,
    pub edge_id: EdgeId,
    pub sessions: u32,
    pub ts: u64,
}

/// A record a consumer could not process, with enough to replay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub schema_version: u32,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// The consumer group that gave up on it.
    pub consumer: String,
    pub error: String,
    /// The original payload, as UTF-8 when it was valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_utf8: Option<String>,
    /// The original payload in base64 when it was not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub ts: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_round_trip() {
        let edge = EdgeId::parse("edge-1").unwrap();
        let user = UserId::parse("alice").unwrap();
        for key in [
            SessionKey::Edge(edge.clone()),
            SessionKey::Route(user, edge),
        ] {
            assert_eq!(SessionKey::decode(&key.encode()), Some(key));
        }
        assert_eq!(SessionKey::decode("route/a"), None);
        assert_eq!(SessionKey::decode("edge/a/b"), None);
        assert_eq!(SessionKey::decode("other/a"), None);
    }

    fn change(change: MessageChange) -> MessageChangeRecord {
        MessageChangeRecord {
            schema_version: CHANGE_SCHEMA_VERSION,
            message_id: MessageId::from_u64(42),
            conversation_id: ConversationId::parse("c1").unwrap(),
            actor_id: UserId::parse("alice").unwrap(),
            change,
            ts: 7,
            edge_id: EdgeId::parse("edge-1").unwrap(),
        }
    }

    #[test]
    fn change_records_are_never_read_as_messages() {
        for record in [
            change(MessageChange::Edit {
                body: "fixed".into(),
            }),
            change(MessageChange::Delete),
            change(MessageChange::ReactionAdd {
                reaction: "👍".into(),
            }),
            change(MessageChange::ReactionRemove {
                reaction: "+1".into(),
            }),
        ] {
            let bytes = serde_json::to_vec(&record).unwrap();
            // A v1 reader that does not look at the version still fails.
            assert!(serde_json::from_slice::<MessageRecord>(&bytes).is_err());
            assert_eq!(
                decode_messages_record(&bytes),
                Ok(MessagesTopicRecord::Change(record.clone()))
            );
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["kind"], record.change.kind());
            assert_eq!(json["schema_version"], 2);
        }
        let message = MessageRecord {
            schema_version: SCHEMA_VERSION,
            message_id: MessageId::from_u64(1),
            conversation_id: ConversationId::parse("c1").unwrap(),
            sender_id: UserId::parse("bob").unwrap(),
            client_msg_id: ClientMsgId::parse("m1").unwrap(),
            body: "hi".into(),
            ts: 1,
            edge_id: EdgeId::parse("e").unwrap(),
            resend: false,
            reply_to: None,
            mentions: Vec::new(),
        };
        let bytes = serde_json::to_vec(&message).unwrap();
        assert_eq!(
            decode_messages_record(&bytes),
            Ok(MessagesTopicRecord::Message(message.clone()))
        );
        let mut future = serde_json::to_value(&message).unwrap();
        future["schema_version"] = 3.into();
        assert_eq!(
            decode_messages_record(&serde_json::to_vec(&future).unwrap()),
            Err(MessagesRecordError::UnknownVersion(3))
        );
        assert!(matches!(
            decode_messages_record(br#"{"schema_version":2,"kind":"dance"}"#),
            Err(MessagesRecordError::Change(_))
        ));
        assert!(matches!(
            decode_messages_record(b"not json"),
            Err(MessagesRecordError::Message(_))
        ));
    }

    #[test]
    fn event_records_are_flat() {
        let record = EventRecord {
            schema_version: SCHEMA_VERSION,
            event: Event::Presence {
                user_id: UserId::parse("bob").unwrap(),
                status: PresenceStatus::Online,
                edge_id: None,
            },
            ts: 1,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "presence");
        assert_eq!(json["status"], "online");
        assert_eq!(serde_json::from_value::<EventRecord>(json).unwrap(), record);
    }
}
