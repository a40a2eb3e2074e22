//! Client-side frame handling, cheap enough to keep up with hundreds of
//! thousands of deliveries per second: server frames are parsed with
//! borrowed serde (no copies of bodies), client frames are formatted by hand.
//!
//! Message bodies written by the load generator carry the sender's send
//! time: `t<unix µs> q<token> <padding>`, so any worker process can compute
//! send → deliver latency, and `q<token>` is a unique word to search for.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The server frames the load generator looks at.
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
    /// An object in `message` frames, a string in `error` frames.
    #[serde(default, borrow)]
    pub message: Option<&'a RawValue>,
}

/// The `message` object of a `message` frame (and of history items).
#[derive(Debug, Deserialize)]
pub struct MessageFields<'a> {
    #[serde(borrow)]
    pub message_id: Cow<'a, str>,
    #[serde(borrow)]
    pub conversation_id: Cow<'a, str>,
    #[serde(borrow)]
    pub sender_id: Cow<'a, str>,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
}

pub fn parse_server_frame(text: &str) -> Option<ServerFrame<'_>> {
    serde_json::from_str(text).ok()
}

pub fn parse_message(raw: &RawValue) -> Option<MessageFields<'_>> {
    serde_json::from_str(raw.get()).ok()
}

/// A message body: send time, a unique search token, padding up to `bytes`.
pub fn message_body(sent_unix_us: u64, token: &str, bytes: usize) -> String {
    let mut body = format!("t{sent_unix_us} q{token} lg");
    const FILLER: &str = " the quick brown fox jumps over the lazy dog";
    while body.len() < bytes {
        let missing = bytes - body.len();
        body.push_str(&FILLER[..missing.min(FILLER.len())]);
    }
    body
}

/// The send time written by [`message_body`] (or by a baseline sender at
/// the start of a payload), if any.
pub fn sent_time_us(body: &str) -> Option<u64> {
    let rest = body.strip_prefix('t')?;
    let end = rest
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The search token written by [`message_body`] (without its `q`).
pub fn search_token(body: &str) -> Option<&str> {
    body.split(' ').find_map(|word| word.strip_prefix('q'))
}

/// A `send` frame. Ids are `[A-Za-z0-9_.:@-]`, and bodies generated here
/// need no escaping, but escape anyway for bodies from elsewhere.
pub fn send_frame(conversation_id: &str, client_msg_id: &str, body: &str) -> String {
    let body = serde_json::to_string(body).expect("strings serialize");
    format!(
        r#"{{"op":"send","conversation_id":"{conversation_id}","client_msg_id":"{client_msg_id}","body":{body}}}"#
    )
}

/// The same `send` frame marked as a retry (`"resend":true`), so that the
/// edge acks it with the original `message_id` wherever it lands.
pub fn mark_resend(send_frame: &str) -> String {
    match send_frame.strip_prefix(r#"{"op":"send","#) {
        Some(rest) if !send_frame.contains(r#""resend":true"#) => {
            format!(r#"{{"op":"send","resend":true,{rest}"#)
        }
        _ => send_frame.to_owned(),
    }
}

pub fn ack_seq_frame(seq: u64) -> String {
    format!(r#"{{"op":"ack_seq","seq":{seq}}}"#)
}

/// `retry_after_ms=N` from a 1013 close reason.
pub fn retry_after_ms(reason: &str) -> Option<u64> {
    let start = reason.find("retry_after_ms=")? + "retry_after_ms=".len();
    let digits: String = reason[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resends_are_marked_once() {
        let frame = super::send_frame("c1", "m1", "hi");
        let marked = super::mark_resend(&frame);
        let value: serde_json::Value = serde_json::from_str(&marked).unwrap();
        assert_eq!(value["resend"], true);
        assert_eq!(value["client_msg_id"], "m1");
        assert_eq!(super::mark_resend(&marked), marked);
    }

    use super::*;

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
        let body = message_body(1_700_000_000_123_456, "abc12", 100);
        let text = format!(
            r#"{{"op":"message","seq":7,"message":{{"message_id":"99","conversation_id":"c1","sender_id":"u1","client_msg_id":"m","body":"{body}","ts":1}}}}"#
        );
        let frame = parse_server_frame(&text).unwrap();
        assert_eq!(frame.seq, Some(7));
        let message = parse_message(frame.message.unwrap()).unwrap();
        assert_eq!(message.message_id, "99");
        assert_eq!(sent_time_us(&message.body), Some(1_700_000_000_123_456));
        assert_eq!(search_token(&message.body), Some("abc12"));
        assert_eq!(body.len(), 100);
        let presence =
            parse_server_frame(r#"{"op":"presence","seq":8,"user_id":"u","status":"online"}"#)
                .unwrap();
        assert_eq!(presence.seq, Some(8));
    }

    #[test]
    fn client_frames_are_valid_json() {
        let frame: serde_json::Value =
            serde_json::from_str(&send_frame("c1", "w0-1", "say \"hi\"")).unwrap();
        assert_eq!(frame["body"], "say \"hi\"");
        assert_eq!(ack_seq_frame(5), r#"{"op":"ack_seq","seq":5}"#);
        assert_eq!(
            retry_after_ms("rate_limited; retry_after_ms=1234"),
            Some(1234)
        );
        assert_eq!(retry_after_ms("capacity"), None);
    }
}
