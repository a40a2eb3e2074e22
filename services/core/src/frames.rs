//! The WebSocket protocol as pure functions: text in, typed frame out, and
//! typed frame in, text out. No sockets here (see `chatpipe-edge` for those).
//!
//! Client frames are decoded in two steps — JSON into a permissive raw shape,
//! then per-`op` validation — so that every refusal carries a precise
//! [`FrameError`] (and, for a `send`, the `client_msg_id` to echo as `ref`)
//! instead of a serde message.
//!
//! Server frames that belong to the per-session stream (`message`,
//! `message_edited`, `message_deleted`, `typing`, `read`, `presence`, and
//! the membership frames `conversation_created`, `member_added`,
//! `member_removed`, `member_role_changed`, `conversation_updated`) carry a
//! `seq` that differs per recipient session,
//! while their content is the same for all recipients. Fan-out therefore
//! ships the content once as a [`Deliverable`]; the edge encodes it once as
//! a [`SequencedFrame`] shared by every recipient session, each session
//! adding only its `seq` when the frame is written
//! ([`SequencedFrame::with_seq`]).

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{ClientMsgId, ConversationId, MessageId, SessionId, UserId};
use crate::membership::{HistoryVisibility, Role};
use crate::records::{
    MAX_REACTION_BYTES, MembershipChange, MembershipRecord, MessageChange, MessageChangeRecord,
    MessageRecord, PresenceStatus,
};

/// Limits applied while decoding client frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest accepted text frame, in bytes.
    pub max_frame_bytes: usize,
    /// Largest accepted message `body`, in bytes of UTF-8.
    pub max_body_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024,
            max_body_bytes: 4 * 1024,
        }
    }
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Send {
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
        /// The client sent this `client_msg_id` before (a retry). Optional
        /// on the wire, false when absent.
        resend: bool,
        /// The message of the same conversation this one replies to.
        /// Optional.
        reply_to: Option<MessageId>,
        /// Users the message mentions (at most
        /// [`MAX_MENTIONS`](crate::read_state::MAX_MENTIONS), each once).
        /// Optional on the wire, empty when absent.
        mentions: Vec<UserId>,
    },
    Typing {
        conversation_id: ConversationId,
    },
    Read {
        conversation_id: ConversationId,
        message_id: MessageId,
    },
    /// Replace the body of one of the user's own messages.
    Edit {
        conversation_id: ConversationId,
        message_id: MessageId,
        body: String,
        /// The client's id for this request, echoed in its `ack` (and as
        /// `ref` of an `error`). Optional.
        client_msg_id: Option<ClientMsgId>,
    },
    /// Delete a message (the user's own, or any as a moderator).
    Delete {
        conversation_id: ConversationId,
        message_id: MessageId,
        client_msg_id: Option<ClientMsgId>,
    },
    /// Add a reaction to a message (`react`) or take it back (`unreact`).
    React {
        conversation_id: ConversationId,
        message_id: MessageId,
        reaction: String,
        /// true for `react`, false for `unreact`.
        add: bool,
        client_msg_id: Option<ClientMsgId>,
    },
    AckSeq {
        seq: u64,
    },
    Ping,
    /// A fresh token for the same user, sent before the current one
    /// expires: the connection then lives until the new token's `exp`.
    Refresh {
        token: String,
    },
}

impl ClientFrame {
    /// What a refusal of this frame echoes as `ref`: the `client_msg_id`
    /// of a send, edit or delete, or else the `message_id` of an edit or
    /// delete.
    pub fn reference(&self) -> Option<String> {
        match self {
            ClientFrame::Send { client_msg_id, .. } => Some(client_msg_id.to_string()),
            ClientFrame::Edit {
                client_msg_id,
                message_id,
                ..
            }
            | ClientFrame::Delete {
                client_msg_id,
                message_id,
                ..
            }
            | ClientFrame::React {
                client_msg_id,
                message_id,
                ..
            } => Some(
                client_msg_id
                    .as_ref()
                    .map_or_else(|| message_id.to_string(), ToString::to_string),
            ),
            _ => None,
        }
    }
}

/// Why a client frame was refused, with the `ref` to echo when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The `client_msg_id` of a refused `send`, when it could be read.
    pub reference: Option<String>,
}

impl FrameError {
    fn invalid(message: impl Into<String>, reference: Option<String>) -> Self {
        Self {
            code: ErrorCode::Invalid,
            message: message.into(),
            reference,
        }
    }
}

#[derive(Deserialize)]
struct RawClientFrame {
    op: Option<String>,
    conversation_id: Option<serde_json::Value>,
    client_msg_id: Option<serde_json::Value>,
    body: Option<serde_json::Value>,
    message_id: Option<serde_json::Value>,
    seq: Option<serde_json::Value>,
    resend: Option<serde_json::Value>,
    reaction: Option<serde_json::Value>,
    reply_to: Option<serde_json::Value>,
    mentions: Option<serde_json::Value>,
    token: Option<serde_json::Value>,
}

fn required_string(
    field: &'static str,
    value: Option<serde_json::Value>,
    reference: &Option<String>,
) -> Result<String, FrameError> {
    match value {
        Some(serde_json::Value::String(text)) => Ok(text),
        Some(_) => Err(FrameError::invalid(
            format!("`{field}` must be a string"),
            reference.clone(),
        )),
        None => Err(FrameError::invalid(
            format!("missing field `{field}`"),
            reference.clone(),
        )),
    }
}

fn parse_field<T, E: std::fmt::Display>(
    field: &'static str,
    raw: String,
    parse: impl FnOnce(String) -> Result<T, E>,
    reference: &Option<String>,
) -> Result<T, FrameError> {
    parse(raw)
        .map_err(|error| FrameError::invalid(format!("`{field}`: {error}"), reference.clone()))
}

/// The `conversation_id` every frame about a conversation carries.
fn required_conversation_id(
    value: Option<serde_json::Value>,
    reference: &Option<String>,
) -> Result<ConversationId, FrameError> {
    parse_field(
        "conversation_id",
        required_string("conversation_id", value, reference)?,
        ConversationId::parse,
        reference,
    )
}

fn required_message_id(
    value: Option<serde_json::Value>,
    reference: &Option<String>,
) -> Result<MessageId, FrameError> {
    match value {
        Some(value) => serde_json::from_value::<MessageId>(value).map_err(|error| {
            FrameError::invalid(format!("`message_id`: {error}"), reference.clone())
        }),
        None => Err(FrameError::invalid(
            "missing field `message_id`",
            reference.clone(),
        )),
    }
}

/// A message body: not blank, at most `max_body_bytes` (`too_large`).
fn required_body(
    value: Option<serde_json::Value>,
    limits: &FrameLimits,
    reference: &Option<String>,
) -> Result<String, FrameError> {
    let body = required_string("body", value, reference)?;
    if body.len() > limits.max_body_bytes {
        return Err(FrameError {
            code: ErrorCode::TooLarge,
            message: format!("body exceeds {} bytes", limits.max_body_bytes),
            reference: reference.clone(),
        });
    }
    if body.trim().is_empty() {
        return Err(FrameError::invalid(
            "`body` must not be empty",
            reference.clone(),
        ));
    }
    Ok(body)
}

/// The optional `client_msg_id` of an edit or delete.
fn optional_client_msg_id(
    value: Option<serde_json::Value>,
    reference: &Option<String>,
) -> Result<Option<ClientMsgId>, FrameError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => parse_field(
            "client_msg_id",
            required_string("client_msg_id", Some(value), reference)?,
            ClientMsgId::parse,
            reference,
        )
        .map(Some),
    }
}

/// The optional `mentions` of a send: a list of at most
/// [`MAX_MENTIONS`](crate::read_state::MAX_MENTIONS) user ids, kept once
/// each in the order given.
fn optional_mentions(
    value: Option<serde_json::Value>,
    reference: &Option<String>,
) -> Result<Vec<UserId>, FrameError> {
    let max = crate::read_state::MAX_MENTIONS;
    let items = match value {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => {
            return Err(FrameError::invalid(
                "`mentions` must be a list of user ids",
                reference.clone(),
            ));
        }
    };
    if items.len() > max {
        return Err(FrameError::invalid(
            format!("`mentions` may name at most {max} users"),
            reference.clone(),
        ));
    }
    let mut mentions: Vec<UserId> = Vec::with_capacity(items.len());
    for item in items {
        let user = parse_field(
            "mentions",
            required_string("mentions", Some(item), reference)?,
            UserId::parse,
            reference,
        )?;
        if !mentions.contains(&user) {
            mentions.push(user);
        }
    }
    Ok(mentions)
}

/// Decodes one client text frame.
pub fn decode_client_frame(text: &str, limits: &FrameLimits) -> Result<ClientFrame, FrameError> {
    if text.len() > limits.max_frame_bytes {
        return Err(FrameError {
            code: ErrorCode::TooLarge,
            message: format!("frame exceeds {} bytes", limits.max_frame_bytes),
            reference: None,
        });
    }
    // serde's derived struct decoding also takes a JSON array of the
    // fields in declaration order (`["ping",null,null,null,null,null,null]`
    // was a ping); a frame is an object, as the schema says.
    if !text.trim_start().starts_with('{') {
        return Err(FrameError::invalid("a frame must be a JSON object", None));
    }
    let raw: RawClientFrame = serde_json::from_str(text)
        .map_err(|error| FrameError::invalid(format!("malformed JSON frame: {error}"), None))?;
    let reference = match (&raw.client_msg_id, &raw.message_id, raw.op.as_deref()) {
        (Some(serde_json::Value::String(id)), _, _) if id.len() <= ClientMsgId::MAX_LEN => {
            Some(id.clone())
        }
        // An edit or delete without its own id is referred to by the
        // message it targets.
        (
            None,
            Some(serde_json::Value::String(id)),
            Some("edit" | "delete" | "react" | "unreact"),
        ) if id.len() <= ClientMsgId::MAX_LEN => Some(id.clone()),
        _ => None,
    };
    let Some(op) = raw.op else {
        return Err(FrameError::invalid("missing field `op`", reference));
    };
    match op.as_str() {
        "send" => {
            let client_msg_id = parse_field(
                "client_msg_id",
                required_string("client_msg_id", raw.client_msg_id, &reference)?,
                ClientMsgId::parse,
                &reference,
            )?;
            let conversation_id = required_conversation_id(raw.conversation_id, &reference)?;
            let body = required_body(raw.body, limits, &reference)?;
            let resend = match raw.resend {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(marked)) => marked,
                Some(_) => {
                    return Err(FrameError::invalid("`resend` must be a boolean", reference));
                }
            };
            let reply_to = match raw.reply_to {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => {
                    Some(serde_json::from_value::<MessageId>(value).map_err(|error| {
                        FrameError::invalid(format!("`reply_to`: {error}"), reference.clone())
                    })?)
                }
            };
            let mentions = optional_mentions(raw.mentions, &reference)?;
            Ok(ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
                resend,
                reply_to,
                mentions,
            })
        }
        "typing" => Ok(ClientFrame::Typing {
            conversation_id: required_conversation_id(raw.conversation_id, &reference)?,
        }),
        "read" => {
            let conversation_id = required_conversation_id(raw.conversation_id, &reference)?;
            let message_id = match raw.message_id {
                Some(value) => serde_json::from_value::<MessageId>(value)
                    .map_err(|error| FrameError::invalid(format!("`message_id`: {error}"), None))?,
                None => return Err(FrameError::invalid("missing field `message_id`", None)),
            };
            Ok(ClientFrame::Read {
                conversation_id,
                message_id,
            })
        }
        "react" | "unreact" => {
            let conversation_id = required_conversation_id(raw.conversation_id, &reference)?;
            let message_id = required_message_id(raw.message_id, &reference)?;
            let client_msg_id = optional_client_msg_id(raw.client_msg_id, &reference)?;
            let reaction = required_string("reaction", raw.reaction, &reference)?;
            if reaction.is_empty()
                || reaction.len() > MAX_REACTION_BYTES
                || reaction.chars().any(char::is_whitespace)
            {
                return Err(FrameError::invalid(
                    format!(
                        "`reaction` must be 1 to {MAX_REACTION_BYTES} bytes without whitespace"
                    ),
                    reference,
                ));
            }
            Ok(ClientFrame::React {
                conversation_id,
                message_id,
                reaction,
                add: op == "react",
                client_msg_id,
            })
        }
        "edit" | "delete" => {
            let conversation_id = required_conversation_id(raw.conversation_id, &reference)?;
            let message_id = required_message_id(raw.message_id, &reference)?;
            let client_msg_id = optional_client_msg_id(raw.client_msg_id, &reference)?;
            if op == "delete" {
                return Ok(ClientFrame::Delete {
                    conversation_id,
                    message_id,
                    client_msg_id,
                });
            }
            let body = required_body(raw.body, limits, &reference)?;
            Ok(ClientFrame::Edit {
                conversation_id,
                message_id,
                body,
                client_msg_id,
            })
        }
        "ack_seq" => match raw.seq.as_ref().and_then(serde_json::Value::as_u64) {
            Some(seq) => Ok(ClientFrame::AckSeq { seq }),
            None => Err(FrameError::invalid(
                "`seq` must be a non-negative integer",
                None,
            )),
        },
        "ping" => Ok(ClientFrame::Ping),
        "refresh" => {
            let token = required_string("token", raw.token, &None)?;
            if token.trim().is_empty() {
                return Err(FrameError::invalid("`token` must not be empty", None));
            }
            Ok(ClientFrame::Refresh { token })
        }
        other => Err(FrameError::invalid(
            format!(
                "unknown op `{}`",
                other.chars().take(32).collect::<String>()
            ),
            reference,
        )),
    }
}

/// A server frame outside the per-session stream (no `seq`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlFrame {
    Hello {
        session_id: SessionId,
        heartbeat_ms: u64,
        resumed: bool,
    },
    /// A `send` (always with its `client_msg_id`), or an `edit` or
    /// `delete` (with the request's `client_msg_id` when it had one;
    /// `message_id` is then the changed message and `ts` the change's).
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
        message_id: MessageId,
        ts: u64,
    },
    Error {
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        code: ErrorCode,
        message: String,
    },
    Pong,
    Reconnect {
        reason: String,
    },
    /// The answer to a `refresh` that was accepted: the connection now
    /// lives until `expires_at` (Unix seconds, the new token's `exp`).
    Refreshed {
        expires_at: u64,
    },
}

impl ControlFrame {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("control frames always serialize")
    }

    pub fn error(error: &FrameError) -> Self {
        ControlFrame::Error {
            reference: error.reference.clone(),
            code: error.code,
            message: error.message.clone(),
        }
    }
}

/// A message as clients see it, inside a `message` frame and in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    pub ts: u64,
    /// The message this one replies to, for a reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// The users the message mentions; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

impl From<&MessageRecord> for MessageView {
    fn from(record: &MessageRecord) -> Self {
        Self {
            message_id: record.message_id,
            conversation_id: record.conversation_id.clone(),
            sender_id: record.sender_id.clone(),
            client_msg_id: record.client_msg_id.clone(),
            body: record.body.clone(),
            ts: record.ts,
            reply_to: record.reply_to,
            mentions: record.mentions.clone(),
        }
    }
}

/// Which per-session frame a [`Deliverable`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverableOp {
    Message,
    MessageEdited,
    MessageDeleted,
    Reaction,
    Typing,
    Read,
    Presence,
    /// A conversation the recipient is a member of was created.
    ConversationCreated,
    MemberAdded,
    MemberRemoved,
    MemberRoleChanged,
    /// A conversation's settings changed (`history_visibility`).
    ConversationUpdated,
}

impl DeliverableOp {
    /// Every op, for receivers that check what they are handed.
    pub const ALL: [DeliverableOp; 12] = [
        DeliverableOp::Message,
        DeliverableOp::MessageEdited,
        DeliverableOp::MessageDeleted,
        DeliverableOp::Reaction,
        DeliverableOp::Typing,
        DeliverableOp::Read,
        DeliverableOp::Presence,
        DeliverableOp::ConversationCreated,
        DeliverableOp::MemberAdded,
        DeliverableOp::MemberRemoved,
        DeliverableOp::MemberRoleChanged,
        DeliverableOp::ConversationUpdated,
    ];

    /// The op named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliverableOp::Message => "message",
            DeliverableOp::MessageEdited => "message_edited",
            DeliverableOp::MessageDeleted => "message_deleted",
            DeliverableOp::Reaction => "reaction",
            DeliverableOp::Typing => "typing",
            DeliverableOp::Read => "read",
            DeliverableOp::Presence => "presence",
            DeliverableOp::ConversationCreated => "conversation_created",
            DeliverableOp::MemberAdded => "member_added",
            DeliverableOp::MemberRemoved => "member_removed",
            DeliverableOp::MemberRoleChanged => "member_role_changed",
            DeliverableOp::ConversationUpdated => "conversation_updated",
        }
    }
}

/// The recipient-independent content of a per-session frame: `op` plus a
/// JSON object holding the frame's other fields (everything but `op` and
/// `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliverable {
    pub op: DeliverableOp,
    /// A serialized JSON object, e.g. `{"message":{…}}`.
    pub fields_json: String,
}

#[derive(Serialize)]
struct MessageFields<'a> {
    message: &'a MessageView,
}

#[derive(Serialize)]
struct MessageEditedFields<'a> {
    conversation_id: &'a ConversationId,
    message_id: MessageId,
    user_id: &'a UserId,
    body: &'a str,
    edited_at: u64,
}

#[derive(Serialize)]
struct MessageDeletedFields<'a> {
    conversation_id: &'a ConversationId,
    message_id: MessageId,
    user_id: &'a UserId,
    deleted_at: u64,
}

#[derive(Serialize)]
struct ReactionFields<'a> {
    conversation_id: &'a ConversationId,
    message_id: MessageId,
    user_id: &'a UserId,
    reaction: &'a str,
    /// `add` or `remove`.
    action: &'static str,
    ts: u64,
}

#[derive(Serialize)]
struct TypingFields<'a> {
    conversation_id: &'a ConversationId,
    user_id: &'a UserId,
}

#[derive(Serialize)]
struct ReadFields<'a> {
    conversation_id: &'a ConversationId,
    user_id: &'a UserId,
    message_id: MessageId,
}

#[derive(Serialize)]
struct PresenceFields<'a> {
    user_id: &'a UserId,
    status: PresenceStatus,
}

#[derive(Serialize)]
struct ConversationCreatedFields<'a> {
    conversation_id: &'a ConversationId,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    history_visibility: HistoryVisibility,
    /// How many members it was created with (the list itself is one
    /// `GET /v1/conversations/{id}` away: a 20,000-member list in a frame
    /// to each of 20,000 members would cost 20,000² ids).
    member_count: usize,
    actor_id: &'a UserId,
    ts: u64,
}

#[derive(Serialize)]
struct MemberFields<'a> {
    conversation_id: &'a ConversationId,
    user_id: &'a UserId,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    actor_id: &'a UserId,
    ts: u64,
}

#[derive(Serialize)]
struct ConversationUpdatedFields<'a> {
    conversation_id: &'a ConversationId,
    history_visibility: HistoryVisibility,
    actor_id: &'a UserId,
    ts: u64,
}

fn to_object<T: Serialize>(fields: &T) -> String {
    serde_json::to_string(fields).expect("frame fields always serialize")
}

impl Deliverable {
    pub fn message(view: &MessageView) -> Self {
        Self {
            op: DeliverableOp::Message,
            fields_json: to_object(&MessageFields { message: view }),
        }
    }

    /// The frame of a change record: `message_edited` or `message_deleted`.
    pub fn message_change(record: &MessageChangeRecord) -> Self {
        match &record.change {
            MessageChange::Edit { body } => Self {
                op: DeliverableOp::MessageEdited,
                fields_json: to_object(&MessageEditedFields {
                    conversation_id: &record.conversation_id,
                    message_id: record.message_id,
                    user_id: &record.actor_id,
                    body,
                    edited_at: record.ts,
                }),
            },
            MessageChange::ReactionAdd { reaction }
            | MessageChange::ReactionRemove { reaction } => Self {
                op: DeliverableOp::Reaction,
                fields_json: to_object(&ReactionFields {
                    conversation_id: &record.conversation_id,
                    message_id: record.message_id,
                    user_id: &record.actor_id,
                    reaction,
                    action: if matches!(record.change, MessageChange::ReactionAdd { .. }) {
                        "add"
                    } else {
                        "remove"
                    },
                    ts: record.ts,
                }),
            },
            MessageChange::Delete => Self {
                op: DeliverableOp::MessageDeleted,
                fields_json: to_object(&MessageDeletedFields {
                    conversation_id: &record.conversation_id,
                    message_id: record.message_id,
                    user_id: &record.actor_id,
                    deleted_at: record.ts,
                }),
            },
        }
    }

    pub fn typing(conversation_id: &ConversationId, user_id: &UserId) -> Self {
        Self {
            op: DeliverableOp::Typing,
            fields_json: to_object(&TypingFields {
                conversation_id,
                user_id,
            }),
        }
    }

    pub fn read(conversation_id: &ConversationId, user_id: &UserId, message_id: MessageId) -> Self {
        Self {
            op: DeliverableOp::Read,
            fields_json: to_object(&ReadFields {
                conversation_id,
                user_id,
                message_id,
            }),
        }
    }

    pub fn presence(user_id: &UserId, status: PresenceStatus) -> Self {
        Self {
            op: DeliverableOp::Presence,
            fields_json: to_object(&PresenceFields { user_id, status }),
        }
    }

    /// The frame of a membership record: the same content for every
    /// recipient (the members, and the user the change names).
    pub fn membership(record: &MembershipRecord) -> Self {
        let member = |op: DeliverableOp, user_id: &UserId, role: Option<Role>| Self {
            op,
            fields_json: to_object(&MemberFields {
                conversation_id: &record.conversation_id,
                user_id,
                role,
                actor_id: &record.actor_id,
                ts: record.ts,
            }),
        };
        match &record.change {
            MembershipChange::Created {
                members,
                title,
                history_visibility,
            } => Self {
                op: DeliverableOp::ConversationCreated,
                fields_json: to_object(&ConversationCreatedFields {
                    conversation_id: &record.conversation_id,
                    title: title.as_deref(),
                    history_visibility: history_visibility.unwrap_or_default(),
                    member_count: members.len(),
                    actor_id: &record.actor_id,
                    ts: record.ts,
                }),
            },
            MembershipChange::Added { user_id } => {
                member(DeliverableOp::MemberAdded, user_id, None)
            }
            MembershipChange::Removed { user_id } => {
                member(DeliverableOp::MemberRemoved, user_id, None)
            }
            MembershipChange::RoleChanged { user_id, role } => {
                member(DeliverableOp::MemberRoleChanged, user_id, Some(*role))
            }
            MembershipChange::SettingsChanged { history_visibility } => Self {
                op: DeliverableOp::ConversationUpdated,
                fields_json: to_object(&ConversationUpdatedFields {
                    conversation_id: &record.conversation_id,
                    history_visibility: *history_visibility,
                    actor_id: &record.actor_id,
                    ts: record.ts,
                }),
            },
        }
    }

    /// The frame text for one session: `{"op":…,"seq":N,<fields>}`.
    pub fn encode_with_seq(&self, seq: u64) -> String {
        encode_sequenced(self.op.as_str(), seq, &self.fields_json)
    }
}

/// Splices `op` and `seq` in front of the fields of a JSON object.
/// `fields_json` must be a serialized JSON object (as built by
/// [`Deliverable`]'s constructors, or received from a fan-out worker and
/// checked with [`is_json_object`]).
pub fn encode_sequenced(op: &str, seq: u64, fields_json: &str) -> String {
    debug_assert!(fields_json.starts_with('{') && fields_json.ends_with('}'));
    let inner = &fields_json[1..fields_json.len() - 1];
    let mut frame = String::with_capacity(fields_json.len() + op.len() + 32);
    frame.push_str("{\"op\":\"");
    frame.push_str(op);
    frame.push_str("\",\"seq\":");
    frame.push_str(&seq.to_string());
    if !inner.trim().is_empty() {
        frame.push(',');
        frame.push_str(inner);
    }
    frame.push('}');
    frame
}

/// A per-session frame encoded once for all the sessions that receive it:
/// the frame's text with a hole where the `seq` value goes. A session keeps
/// only its `seq` and a reference to this, and the frame's text for that
/// session is produced when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedFrame {
    /// `{"op":"<op>","seq":` then `,<fields>}` (or `}` for no fields).
    text: String,
    /// Where the `seq` digits go in `text`.
    seq_at: usize,
}

impl SequencedFrame {
    /// Encodes `op` and the fields of a JSON object (see
    /// [`encode_sequenced`] for the requirement on `fields_json`).
    pub fn new(op: &str, fields_json: &str) -> Self {
        debug_assert!(fields_json.starts_with('{') && fields_json.ends_with('}'));
        let inner = &fields_json[1..fields_json.len() - 1];
        let mut text = String::with_capacity(fields_json.len() + op.len() + 16);
        text.push_str("{\"op\":\"");
        text.push_str(op);
        text.push_str("\",\"seq\":");
        let seq_at = text.len();
        if !inner.trim().is_empty() {
            text.push(',');
            text.push_str(inner);
        }
        text.push('}');
        Self { text, seq_at }
    }

    /// The frame's text for the session that numbers it `seq`: one
    /// allocation of the exact size, two copies.
    pub fn with_seq(&self, seq: u64) -> String {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = seq;
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = std::str::from_utf8(&digits[start..]).expect("ASCII digits");
        let mut frame = String::with_capacity(self.text.len() + digits.len());
        frame.push_str(&self.text[..self.seq_at]);
        frame.push_str(digits);
        frame.push_str(&self.text[self.seq_at..]);
        frame
    }

    /// Bytes shared by every session (the frame without its `seq`).
    pub fn shared_len(&self) -> usize {
        self.text.len()
    }
}

/// Whether `text` (trimmed) is one serialized JSON object: the check on
/// fields that arrive over gRPC before they are spliced into the frame every
/// recipient reads. A full parse (without building anything), because a
/// shape check on the first and last character let `{x}` or `{}}` through
/// and the edge then sent broken JSON to every recipient (found by the
/// property tests in `tests/fuzz_frames.rs`).
pub fn is_json_object(text: &str) -> bool {
    let trimmed = text.trim();
    trimmed.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok()
}

/// Whether `text` can be the fields of a per-session frame: one JSON object
/// (see [`is_json_object`]) without `op` or `seq` at its top level, which
/// would repeat the keys the frame puts first and leave each reader to pick
/// one of two `seq`s (found by the property tests in `tests/fuzz_frames.rs`).
pub fn is_frame_fields(text: &str) -> bool {
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        return false;
    }
    match serde_json::from_str::<std::collections::HashMap<String, serde::de::IgnoredAny>>(trimmed)
    {
        Ok(fields) => !fields.contains_key("op") && !fields.contains_key("seq"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits::default()
    }

    #[test]
    fn decodes_every_client_op() {
        let send = decode_client_frame(
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"hi"}"#,
            &limits(),
        )
        .unwrap();
        assert!(matches!(send, ClientFrame::Send { ref body, resend: false, .. } if body == "hi"));
        let resend = decode_client_frame(
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"hi","resend":true}"#,
            &limits(),
        )
        .unwrap();
        assert!(matches!(resend, ClientFrame::Send { resend: true, .. }));
        let bad_mark = decode_client_frame(
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"hi","resend":"yes"}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (bad_mark.code, bad_mark.reference.as_deref()),
            (ErrorCode::Invalid, Some("m1"))
        );
        assert!(matches!(
            decode_client_frame(r#"{"op":"typing","conversation_id":"c1"}"#, &limits()),
            Ok(ClientFrame::Typing { .. })
        ));
        assert!(matches!(
            decode_client_frame(
                r#"{"op":"read","conversation_id":"c1","message_id":"42"}"#,
                &limits()
            ),
            Ok(ClientFrame::Read { .. })
        ));
        assert_eq!(
            decode_client_frame(
                r#"{"op":"edit","conversation_id":"c1","message_id":"42","body":"fixed"}"#,
                &limits()
            ),
            Ok(ClientFrame::Edit {
                conversation_id: ConversationId::parse("c1").unwrap(),
                message_id: MessageId::from_u64(42),
                body: "fixed".into(),
                client_msg_id: None,
            })
        );
        assert_eq!(
            decode_client_frame(
                r#"{"op":"delete","conversation_id":"c1","message_id":"42","client_msg_id":"r1"}"#,
                &limits()
            ),
            Ok(ClientFrame::Delete {
                conversation_id: ConversationId::parse("c1").unwrap(),
                message_id: MessageId::from_u64(42),
                client_msg_id: Some(ClientMsgId::parse("r1").unwrap()),
            })
        );
        assert_eq!(
            decode_client_frame(
                r#"{"op":"unreact","conversation_id":"c1","message_id":"42","reaction":"👍"}"#,
                &limits()
            ),
            Ok(ClientFrame::React {
                conversation_id: ConversationId::parse("c1").unwrap(),
                message_id: MessageId::from_u64(42),
                reaction: "👍".into(),
                add: false,
                client_msg_id: None,
            })
        );
        for bad in ["", "a b", "x".repeat(MAX_REACTION_BYTES + 1).as_str()] {
            let frame = serde_json::json!({"op":"react","conversation_id":"c1","message_id":"42","reaction":bad});
            let error = decode_client_frame(&frame.to_string(), &limits()).unwrap_err();
            assert_eq!(
                (error.code, error.reference.as_deref()),
                (ErrorCode::Invalid, Some("42"))
            );
        }
        assert_eq!(
            decode_client_frame(r#"{"op":"ack_seq","seq":7}"#, &limits()),
            Ok(ClientFrame::AckSeq { seq: 7 })
        );
        assert_eq!(
            decode_client_frame(r#"{"op":"ping"}"#, &limits()),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            decode_client_frame(r#"{"op":"refresh","token":"a.b.c"}"#, &limits()),
            Ok(ClientFrame::Refresh {
                token: "a.b.c".into()
            })
        );
    }

    #[test]
    fn refresh_needs_a_token_string() {
        for frame in [
            r#"{"op":"refresh"}"#,
            r#"{"op":"refresh","token":7}"#,
            r#"{"op":"refresh","token":"  "}"#,
        ] {
            let refused = decode_client_frame(frame, &limits()).unwrap_err();
            assert_eq!(refused.code, ErrorCode::Invalid, "{frame}");
            assert!(
                refused.message.contains("token"),
                "{frame}: {}",
                refused.message
            );
        }
        assert_eq!(
            ControlFrame::Refreshed {
                expires_at: 1_700_000_000
            }
            .encode(),
            r#"{"op":"refreshed","expires_at":1700000000}"#
        );
    }

    #[test]
    fn refusals_carry_codes_and_refs() {
        let malformed = decode_client_frame("{not json", &limits()).unwrap_err();
        assert_eq!(malformed.code, ErrorCode::Invalid);
        let unknown = decode_client_frame(r#"{"op":"dance"}"#, &limits()).unwrap_err();
        assert!(unknown.message.contains("unknown op"));
        let missing = decode_client_frame(
            r#"{"op":"send","client_msg_id":"m1","body":"x"}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(missing.reference.as_deref(), Some("m1"));
        assert!(missing.message.contains("conversation_id"));
        let big_body = format!(
            r#"{{"op":"send","conversation_id":"c","client_msg_id":"m2","body":"{}"}}"#,
            "x".repeat(5000)
        );
        let too_large = decode_client_frame(&big_body, &limits()).unwrap_err();
        assert_eq!(
            (too_large.code, too_large.reference.as_deref()),
            (ErrorCode::TooLarge, Some("m2"))
        );
        let huge = "x".repeat(20_000);
        assert_eq!(
            decode_client_frame(&huge, &limits()).unwrap_err().code,
            ErrorCode::TooLarge
        );
        let wrong_type = decode_client_frame(
            r#"{"op":"send","conversation_id":5,"client_msg_id":"m3","body":"x"}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(wrong_type.code, ErrorCode::Invalid);
        let blank_edit = decode_client_frame(
            r#"{"op":"edit","conversation_id":"c1","message_id":"42","body":" "}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (blank_edit.code, blank_edit.reference.as_deref()),
            (ErrorCode::Invalid, Some("42"))
        );
        let no_target = decode_client_frame(
            r#"{"op":"delete","conversation_id":"c1","client_msg_id":"r2"}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(
            (no_target.code, no_target.reference.as_deref()),
            (ErrorCode::Invalid, Some("r2"))
        );
        let bad_seq = decode_client_frame(r#"{"op":"ack_seq","seq":-1}"#, &limits()).unwrap_err();
        assert_eq!(bad_seq.code, ErrorCode::Invalid);
    }

    #[test]
    fn sequenced_frames_splice_seq() {
        let view = MessageView {
            message_id: MessageId::from_u64(99),
            conversation_id: ConversationId::parse("c").unwrap(),
            sender_id: UserId::parse("u").unwrap(),
            client_msg_id: ClientMsgId::parse("m").unwrap(),
            body: "hello \"world\"".into(),
            ts: 5,
            reply_to: None,
            mentions: Vec::new(),
        };
        let text = Deliverable::message(&view).encode_with_seq(3);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["op"], "message");
        assert_eq!(value["seq"], 3);
        assert_eq!(value["message"]["body"], "hello \"world\"");
        assert_eq!(
            encode_sequenced("presence", 1, "{}"),
            r#"{"op":"presence","seq":1}"#
        );
    }

    #[test]
    fn a_shared_frame_gives_each_session_the_same_text_as_splicing() {
        let view = MessageView {
            message_id: MessageId::from_u64(7),
            conversation_id: ConversationId::parse("c").unwrap(),
            sender_id: UserId::parse("u").unwrap(),
            client_msg_id: ClientMsgId::parse("m").unwrap(),
            body: "héllo \"x\"".into(),
            ts: 5,
            reply_to: Some(MessageId::from_u64(3)),
            mentions: Vec::new(),
        };
        let deliverable = Deliverable::message(&view);
        let shared = SequencedFrame::new(deliverable.op.as_str(), &deliverable.fields_json);
        for seq in [0, 1, 9, 10, 4242, u64::MAX] {
            assert_eq!(shared.with_seq(seq), deliverable.encode_with_seq(seq));
        }
        assert_eq!(
            SequencedFrame::new("presence", "{}").with_seq(12),
            r#"{"op":"presence","seq":12}"#
        );
        assert_eq!(
            SequencedFrame::new("typing", r#"{"conversation_id":"c","user_id":"u"}"#).with_seq(3),
            r#"{"op":"typing","seq":3,"conversation_id":"c","user_id":"u"}"#
        );
    }

    #[test]
    fn control_frames_match_the_contract() {
        let hello = ControlFrame::Hello {
            session_id: SessionId::parse("s1").unwrap(),
            heartbeat_ms: 15000,
            resumed: false,
        };
        assert_eq!(
            hello.encode(),
            r#"{"op":"hello","session_id":"s1","heartbeat_ms":15000,"resumed":false}"#
        );
        let error = ControlFrame::Error {
            reference: Some("m1".into()),
            code: ErrorCode::Forbidden,
            message: "not a member".into(),
        };
        assert_eq!(
            error.encode(),
            r#"{"op":"error","ref":"m1","code":"forbidden","message":"not a member"}"#
        );
        assert_eq!(ControlFrame::Pong.encode(), r#"{"op":"pong"}"#);
    }
}
