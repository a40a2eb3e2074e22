//! The WebSocket protocol as pure functions: text in, typed frame out, and
//! typed frame in, text out. No sockets here (see `chatpipe-edge` for those).
//!
//! Client frames are decoded in two steps — JSON into a permissive raw shape,
//! then per-`op` validation — so that every refusal carries a precise
//! [`FrameError`] (and, for a `send`, the `client_msg_id` to echo as `ref`)
//! instead of a serde message.
//!
//! Server frames that belong to the per-session stream (`message`, `typing`,
//! `read`, `presence`) carry a `seq` that differs per recipient session,
//! while their content is the same for all recipients. Fan-out therefore
//! ships the content once as a [`Deliverable`]; the edge encodes it once as
//! a [`SequencedFrame`] shared by every recipient session, each session
//! adding only its `seq` when the frame is written
//! ([`SequencedFrame::with_seq`]).

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{ClientMsgId, ConversationId, MessageId, SessionId, UserId};
use crate::records::{MessageRecord, PresenceStatus};

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
    },
    Typing {
        conversation_id: ConversationId,
    },
    Read {
        conversation_id: ConversationId,
        message_id: MessageId,
    },
    AckSeq {
        seq: u64,
    },
    Ping,
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
    let reference = match &raw.client_msg_id {
        Some(serde_json::Value::String(id)) if id.len() <= ClientMsgId::MAX_LEN => Some(id.clone()),
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
            let conversation_id = parse_field(
                "conversation_id",
                required_string("conversation_id", raw.conversation_id, &reference)?,
                ConversationId::parse,
                &reference,
            )?;
            let body = required_string("body", raw.body, &reference)?;
            if body.len() > limits.max_body_bytes {
                return Err(FrameError {
                    code: ErrorCode::TooLarge,
                    message: format!("body exceeds {} bytes", limits.max_body_bytes),
                    reference,
                });
            }
            if body.trim().is_empty() {
                return Err(FrameError::invalid("`body` must not be empty", reference));
            }
            let resend = match raw.resend {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(marked)) => marked,
                Some(_) => {
                    return Err(FrameError::invalid("`resend` must be a boolean", reference));
                }
            };
            Ok(ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
                resend,
            })
        }
        "typing" => Ok(ClientFrame::Typing {
            conversation_id: parse_field(
                "conversation_id",
                required_string("conversation_id", raw.conversation_id, &reference)?,
                ConversationId::parse,
                &reference,
            )?,
        }),
        "read" => {
            let conversation_id = parse_field(
                "conversation_id",
                required_string("conversation_id", raw.conversation_id, &reference)?,
                ConversationId::parse,
                &reference,
            )?;
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
        "ack_seq" => match raw.seq.as_ref().and_then(serde_json::Value::as_u64) {
            Some(seq) => Ok(ClientFrame::AckSeq { seq }),
            None => Err(FrameError::invalid(
                "`seq` must be a non-negative integer",
                None,
            )),
        },
        "ping" => Ok(ClientFrame::Ping),
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
    Ack {
        client_msg_id: ClientMsgId,
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
        }
    }
}

/// Which per-session frame a [`Deliverable`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverableOp {
    Message,
    Typing,
    Read,
    Presence,
}

impl DeliverableOp {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliverableOp::Message => "message",
            DeliverableOp::Typing => "typing",
            DeliverableOp::Read => "read",
            DeliverableOp::Presence => "presence",
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
            decode_client_frame(r#"{"op":"ack_seq","seq":7}"#, &limits()),
            Ok(ClientFrame::AckSeq { seq: 7 })
        );
        assert_eq!(
            decode_client_frame(r#"{"op":"ping"}"#, &limits()),
            Ok(ClientFrame::Ping)
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
