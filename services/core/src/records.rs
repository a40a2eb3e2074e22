//! The records chatpipe writes to Kafka, one JSON document per record.
//!
//! These are a public interface: analytics teams read the topics. Each type
//! has a JSON Schema in `schemas/kafka/` (checked against this code by the
//! `schemas` test), and every record carries `schema_version`. A change that
//! breaks readers bumps the version; additive changes keep it.
//!
//! | topic | key | value |
//! |---|---|---|
//! | `chat.messages` | conversation id | [`MessageRecord`] |
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

    #[test]
    fn event_records_are_flat() {
        let record = EventRecord {
            schema_version: SCHEMA_VERSION,
            event: Event::Presence {
                user_id: UserId::parse("bob").unwrap(),
                status: PresenceStatus::Online,
            },
            ts: 1,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "presence");
        assert_eq!(json["status"], "online");
        assert_eq!(serde_json::from_value::<EventRecord>(json).unwrap(), record);
    }
}
