//! The contract's WebSocket frames as a client handles them, cheap enough
//! to keep up with hundreds of thousands of deliveries per second in one
//! process: server frames are parsed into borrowed views (no copy of a
//! body), client frames are formatted by hand into one `String` each.
//!
//! The `hello` is decoded as chatpipe-core's typed
//! [`ControlFrame`](chatpipe_core::frames::ControlFrame) (see
//! [`crate::ws::Hello`]); the per-session frames are read through
//! [`ServerFrame`], which keeps only the fields a client acts on.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A server frame, borrowed from its text: the fields a client acts on
/// (`seq` to acknowledge, `ack`s and `error`s of its sends, `message`s).
#[derive(Debug, Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, borrow)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub resumed: Option<bool>,
    #[serde(default, borrow)]
    pub client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub message_id: Option<Cow<'a, str>>,
    #[serde(default, rename = "ref", borrow)]
    pub reference: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub code: Option<Cow<'a, str>>,
    /// An object in `message` frames (read it with [`parse_message`]), a
    /// string in `error` frames.
    #[serde(default, borrow)]
    pub message: Option<&'a RawValue>,
}

/// The `message` object of a `message` frame (and of a history item),
/// borrowed.
#[derive(Debug, Deserialize)]
pub struct DeliveredMessage<'a> {
    #[serde(borrow)]
    pub message_id: Cow<'a, str>,
    #[serde(borrow)]
    pub conversation_id: Cow<'a, str>,
    #[serde(borrow)]
    pub sender_id: Cow<'a, str>,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
}

/// `None` when `text` is not a JSON object with an `op`.
pub fn parse_server_frame(text: &str) -> Option<ServerFrame<'_>> {
    serde_json::from_str(text).ok()
}

/// The message of a `message` frame ([`ServerFrame::message`]).
pub fn parse_message(raw: &RawValue) -> Option<DeliveredMessage<'_>> {
    serde_json::from_str(raw.get()).ok()
}

/// A `send` frame, as one allocation for the usual ids and bodies (escaped
/// only when they hold a quote, a backslash or a control character).
pub fn send_frame(conversation_id: &str, client_msg_id: &str, body: &str) -> String {
    let mut frame =
        String::with_capacity(64 + conversation_id.len() + client_msg_id.len() + body.len());
    frame.push_str(r#"{"op":"send","conversation_id":"#);
    push_json_string(&mut frame, conversation_id);
    frame.push_str(r#","client_msg_id":"#);
    push_json_string(&mut frame, client_msg_id);
    frame.push_str(r#","body":"#);
    push_json_string(&mut frame, body);
    frame.push('}');
    frame
}

/// Appends `text` as a JSON string.
fn push_json_string(out: &mut String, text: &str) {
    if text
        .bytes()
        .any(|byte| byte == b'"' || byte == b'\\' || byte < 0x20)
    {
        out.push_str(&serde_json::to_string(text).expect("strings serialize"));
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

/// The same `send` frame marked as a retry (`"resend":true`), so that the
/// edge acks it with the original `message_id` wherever it lands. A frame
/// already marked, or not a `send` built by [`send_frame`], is returned as
/// it is.
pub fn mark_resend(send_frame: &str) -> String {
    match send_frame.strip_prefix(r#"{"op":"send","#) {
        Some(rest) if !send_frame.contains(r#""resend":true"#) => {
            format!(r#"{{"op":"send","resend":true,{rest}"#)
        }
        _ => send_frame.to_owned(),
    }
}

/// `{"op":"ack_seq","seq":N}`: every server frame up to `seq` arrived.
pub fn ack_seq_frame(seq: u64) -> String {
    format!(r#"{{"op":"ack_seq","seq":{seq}}}"#)
}

/// `retry_after_ms=N` from the reason of a `1013` close (a refused connect).
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    let start = reason.find("retry_after_ms=")? + "retry_after_ms=".len();
    let digits = reason[start..]
        .find(|character: char| !character.is_ascii_digit())
        .map_or(&reason[start..], |end| &reason[start..start + end]);
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resends_are_marked_once() {
        let frame = send_frame("c1", "m1", "hi");
        let marked = mark_resend(&frame);
        let value: serde_json::Value = serde_json::from_str(&marked).unwrap();
        assert_eq!(value["resend"], true);
        assert_eq!(value["client_msg_id"], "m1");
        assert_eq!(mark_resend(&marked), marked);
        assert_eq!(mark_resend(r#"{"op":"ping"}"#), r#"{"op":"ping"}"#);
    }

    #[test]
    fn parses_the_contract_frames() {
        let hello = parse_server_frame(
            r#"{"op":"hello","session_id":"s1","heartbeat_ms":15000,"resumed":true}"#,
        )
        .unwrap();
        assert_eq!(
            (
                hello.op.as_ref(),
                hello.session_id.as_deref(),
                hello.resumed
            ),
            ("hello", Some("s1"), Some(true))
        );
        let ack =
            parse_server_frame(r#"{"op":"ack","client_msg_id":"w0-1","message_id":"123","ts":5}"#)
                .unwrap();
        assert_eq!(
            (ack.client_msg_id.as_deref(), ack.message_id.as_deref()),
            (Some("w0-1"), Some("123"))
        );
        let error = parse_server_frame(
            r#"{"op":"error","ref":"w0-2","code":"rate_limited","message":"slow down"}"#,
        )
        .unwrap();
        assert_eq!(
            (error.reference.as_deref(), error.code.as_deref()),
            (Some("w0-2"), Some("rate_limited"))
        );
        let text = r#"{"op":"message","seq":7,"message":{"message_id":"99","conversation_id":"c1","sender_id":"u1","client_msg_id":"m","body":"say \"hi\"","ts":1}}"#;
        let frame = parse_server_frame(text).unwrap();
        assert_eq!(frame.seq, Some(7));
        let message = parse_message(frame.message.unwrap()).unwrap();
        assert_eq!(
            (
                message.message_id.as_ref(),
                message.conversation_id.as_ref(),
                message.sender_id.as_ref(),
                message.body.as_ref()
            ),
            ("99", "c1", "u1", "say \"hi\"")
        );
        let presence =
            parse_server_frame(r#"{"op":"presence","seq":8,"user_id":"u","status":"online"}"#)
                .unwrap();
        assert_eq!(presence.seq, Some(8));
        assert!(parse_server_frame("{not json").is_none());
    }

    #[test]
    fn bodies_without_escapes_are_borrowed() {
        let text = r#"{"op":"message","seq":1,"message":{"message_id":"1","conversation_id":"c","sender_id":"u","body":"plain"}}"#;
        let frame = parse_server_frame(text).unwrap();
        let message = parse_message(frame.message.unwrap()).unwrap();
        assert!(matches!(message.body, Cow::Borrowed("plain")));
    }

    #[test]
    fn client_frames_are_valid_json() {
        let frame: serde_json::Value =
            serde_json::from_str(&send_frame("c1", "w0-1", "say \"hi\"")).unwrap();
        assert_eq!(frame["body"], "say \"hi\"");
        assert_eq!(frame["op"], "send");
        let odd: serde_json::Value =
            serde_json::from_str(&send_frame("c\"1", "m\n1", "a\\b\u{1}")).unwrap();
        assert_eq!(
            (&odd["conversation_id"], &odd["client_msg_id"], &odd["body"]),
            (&json!("c\"1"), &json!("m\n1"), &json!("a\\b\u{1}"))
        );
        assert_eq!(
            send_frame("c1", "m1", "hi"),
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"hi"}"#
        );
        assert_eq!(ack_seq_frame(5), r#"{"op":"ack_seq","seq":5}"#);
        assert_eq!(
            retry_after_ms("rate_limited; retry_after_ms=1234"),
            Some(1234)
        );
        assert_eq!(retry_after_ms("retry_after_ms=77"), Some(77));
        assert_eq!(retry_after_ms("capacity"), None);
    }
}
