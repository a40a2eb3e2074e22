//! Property tests (fuzzing on stable Rust, with `proptest`) of the
//! WebSocket protocol code: the client-frame decoder and the server frames
//! spliced for each session.
//!
//! What must hold for *any* input, not just the examples in `frames.rs` and
//! `schemas.rs`:
//!
//! - decoding arbitrary text, arbitrary bytes (as the lossy UTF-8 a text
//!   frame holds), mutated valid frames and arbitrary JSON documents never
//!   panics; a refusal is `invalid` or `too_large`, names what is wrong, never
//!   invents a `ref`, and becomes an `error` frame that follows
//!   `schemas/ws/v1/server-frame.json`;
//! - a decoded frame holds exactly what the document said (no field is
//!   altered or made up);
//! - every valid frame round-trips (encode as a client would, decode, same
//!   frame), whatever the field order, spacing and unknown fields;
//! - the decoder and `schemas/ws/v1/client-frame.json` agree on every
//!   generated document, apart from the divergences the schema documents
//!   (asserted one by one in `schemas.rs`);
//! - a fields object that passes `is_json_object` splices into a valid JSON
//!   frame for every `seq`.
//!
//! The short pass runs with every `cargo test` (proptest's default of 256
//! cases per property, or `PROPTEST_CASES`); `benches/fuzz.sh` runs the same
//! properties with millions of cases (the `properties::` tests).

use chatpipe_core::error::ErrorCode;
use chatpipe_core::frames::{
    ClientFrame, ControlFrame, FrameLimits, SequencedFrame, decode_client_frame, encode_sequenced,
    is_frame_fields, is_json_object,
};
use chatpipe_core::{ClientMsgId, ConversationId, MessageId};
use jsonschema::Validator;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const CLIENT_FRAME_SCHEMA: &str = include_str!("../../../schemas/ws/v1/client-frame.json");
const SERVER_FRAME_SCHEMA: &str = include_str!("../../../schemas/ws/v1/server-frame.json");

fn validator(text: &str) -> Validator {
    let schema: Value = serde_json::from_str(text).expect("a schema is JSON");
    jsonschema::draft202012::new(&schema).expect("a schema compiles")
}

thread_local! {
    static CLIENT_SCHEMA: Validator = validator(CLIENT_FRAME_SCHEMA);
    static SERVER_SCHEMA: Validator = validator(SERVER_FRAME_SCHEMA);
}

const FIELDS: [&str; 7] = [
    "op",
    "conversation_id",
    "client_msg_id",
    "body",
    "message_id",
    "seq",
    "resend",
];
const OPS: [&str; 5] = ["send", "typing", "read", "ack_seq", "ping"];

/// Strings that sit on the edges of what ids, bodies and numbers accept.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        // Ids, valid or one character off, up to past the 64/128-byte limits.
        "[A-Za-z0-9_.:@-]{0,130}",
        "[A-Za-z0-9_.:@ /\\\\\"\u{0}-\u{1f}é語-]{0,70}",
        // Message ids and sequence numbers as text: signs, zeros, overflow.
        "[+-]?0{0,3}[0-9]{0,20}",
        // Blank and almost blank bodies, with Unicode spaces.
        "[ \t\r\n\u{85}\u{a0}\u{1680}\u{2000}\u{2028}\u{3000}\u{feff}x]{0,6}",
        any::<String>(),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..10).prop_map(Value::from),
        any::<f64>().prop_map(|number| {
            serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)
        }),
        (0u32..100).prop_map(|number| json!(f64::from(number))),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        tricky_string().prop_map(Value::String),
    ]
}

/// Any JSON document, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ]
}

/// A value for one of the decoder's fields: mostly of the right type and
/// near the valid range, sometimes anything.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let right = match field {
        "op" => prop_oneof![
            4 => prop::sample::select(OPS.to_vec()).prop_map(|op| json!(op)),
            1 => tricky_string().prop_map(Value::String),
        ]
        .boxed(),
        "seq" => json_number().boxed(),
        "resend" => prop_oneof![any::<bool>().prop_map(Value::Bool), Just(Value::Null)].boxed(),
        "message_id" => prop_oneof![
            (1..=i64::MAX as u64).prop_map(|id| json!(id.to_string())),
            json_number(),
            tricky_string().prop_map(Value::String),
        ]
        .boxed(),
        _ => tricky_string().prop_map(Value::String).boxed(),
    };
    prop_oneof![4 => right, 1 => json_value()].boxed()
}

/// A JSON object shaped like a client frame: an `op`, each known field
/// present or not, and sometimes an unknown field.
fn frame_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| {
        let presence = if name == "op" { 0.95 } else { 0.6 };
        prop::option::weighted(presence, field_value(name))
            .prop_map(move |value| value.map(|value| (name.to_owned(), value)))
    };
    (
        (
            field("op"),
            field("conversation_id"),
            field("client_msg_id"),
            field("body"),
        ),
        (field("message_id"), field("seq"), field("resend")),
        prop::option::of(("[a-z_]{1,12}", json_value())),
    )
        .prop_map(
            |((op, conversation, client_msg_id, body), (message_id, seq, resend), unknown)| {
                let mut object: Map<String, Value> = [
                    op,
                    conversation,
                    client_msg_id,
                    body,
                    message_id,
                    seq,
                    resend,
                ]
                .into_iter()
                .flatten()
                .collect();
                if let Some((name, value)) = unknown
                    && !FIELDS.contains(&name.as_str())
                {
                    object.insert(name, value);
                }
                Value::Object(object)
            },
        )
}

/// The same fields as a JSON array, in the decoder's declaration order
/// (serde's derived decoding takes that shape too, the schema does not).
fn frame_like_array() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(OPS.to_vec()),
        field_value("conversation_id"),
        field_value("client_msg_id"),
        field_value("body"),
        field_value("message_id"),
        field_value("seq"),
        field_value("resend"),
    )
        .prop_map(
            |(op, conversation, client_msg_id, body, message_id, seq, resend)| {
                json!([
                    op,
                    conversation,
                    client_msg_id,
                    body,
                    message_id,
                    seq,
                    resend
                ])
            },
        )
}

fn conversation_id() -> impl Strategy<Value = ConversationId> {
    "[A-Za-z0-9_.:@-]{1,64}".prop_map(|raw| ConversationId::parse(raw).expect("a valid id"))
}

fn client_msg_id() -> impl Strategy<Value = ClientMsgId> {
    "[A-Za-z0-9_.:@-]{1,128}".prop_map(|raw| ClientMsgId::parse(raw).expect("a valid id"))
}

fn message_id() -> impl Strategy<Value = MessageId> {
    (1..=i64::MAX as u64).prop_map(MessageId::from_u64)
}

/// A body the decoder accepts: not blank, at most 4 KiB of UTF-8.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,300}",
        "[ \n]{0,3}[^ ]{1,40}[ \n]{0,3}"
    ]
    .prop_map(|mut body| {
        while body.len() > 4096 {
            body.pop();
        }
        if body.trim().is_empty() {
            body.push('x');
        }
        body
    })
}

/// Any frame the decoder should accept.
fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            conversation_id(),
            client_msg_id(),
            body(),
            any::<bool>(),
            prop::option::of(message_id())
        )
            .prop_map(|(conversation_id, client_msg_id, body, resend, reply_to)| {
                ClientFrame::Send {
                    conversation_id,
                    client_msg_id,
                    body,
                    resend,
                    reply_to,
                    mentions: Vec::new(),
                }
            }),
        (
            conversation_id(),
            message_id(),
            body(),
            prop::option::of(client_msg_id())
        )
            .prop_map(|(conversation_id, message_id, body, client_msg_id)| {
                ClientFrame::Edit {
                    conversation_id,
                    message_id,
                    body,
                    client_msg_id,
                }
            }),
        (
            conversation_id(),
            message_id(),
            prop::option::of(client_msg_id())
        )
            .prop_map(|(conversation_id, message_id, client_msg_id)| {
                ClientFrame::Delete {
                    conversation_id,
                    message_id,
                    client_msg_id,
                }
            }),
        conversation_id().prop_map(|conversation_id| ClientFrame::Typing { conversation_id }),
        (conversation_id(), 1..=i64::MAX as u64).prop_map(|(conversation_id, id)| {
            ClientFrame::Read {
                conversation_id,
                message_id: MessageId::from_u64(id),
            }
        }),
        any::<u64>().prop_map(|seq| ClientFrame::AckSeq { seq }),
        Just(ClientFrame::Ping),
    ]
}

/// The frame as a client writes it (the contract's field names).
fn client_json(frame: &ClientFrame, explicit_resend: bool) -> Map<String, Value> {
    let value = match frame {
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
            resend,
            reply_to,
            mentions,
        } => {
            let mut value = json!({
                "op": "send",
                "conversation_id": conversation_id.as_str(),
                "client_msg_id": client_msg_id.as_str(),
                "body": body,
            });
            if *resend || explicit_resend {
                value["resend"] = json!(resend);
            }
            if let Some(reply_to) = reply_to {
                value["reply_to"] = json!(reply_to.to_string());
            }
            if !mentions.is_empty() {
                value["mentions"] = json!(
                    mentions
                        .iter()
                        .map(|user| user.as_str())
                        .collect::<Vec<_>>()
                );
            }
            value
        }
        ClientFrame::Edit {
            conversation_id,
            message_id,
            body,
            client_msg_id,
        } => {
            let mut value = json!({
                "op": "edit",
                "conversation_id": conversation_id.as_str(),
                "message_id": message_id.to_string(),
                "body": body,
            });
            if let Some(client_msg_id) = client_msg_id {
                value["client_msg_id"] = json!(client_msg_id.as_str());
            }
            value
        }
        ClientFrame::Delete {
            conversation_id,
            message_id,
            client_msg_id,
        } => {
            let mut value = json!({
                "op": "delete",
                "conversation_id": conversation_id.as_str(),
                "message_id": message_id.to_string(),
            });
            if let Some(client_msg_id) = client_msg_id {
                value["client_msg_id"] = json!(client_msg_id.as_str());
            }
            value
        }
        ClientFrame::React {
            conversation_id,
            message_id,
            reaction,
            add,
            client_msg_id,
        } => {
            let mut value = json!({
                "op": if *add { "react" } else { "unreact" },
                "conversation_id": conversation_id.as_str(),
                "message_id": message_id.to_string(),
                "reaction": reaction,
            });
            if let Some(client_msg_id) = client_msg_id {
                value["client_msg_id"] = json!(client_msg_id.as_str());
            }
            value
        }
        ClientFrame::Typing { conversation_id } => {
            json!({"op": "typing", "conversation_id": conversation_id.as_str()})
        }
        ClientFrame::Read {
            conversation_id,
            message_id,
        } => json!({
            "op": "read",
            "conversation_id": conversation_id.as_str(),
            "message_id": message_id.to_string(),
        }),
        ClientFrame::AckSeq { seq } => json!({"op": "ack_seq", "seq": seq}),
        ClientFrame::Ping => json!({"op": "ping"}),
        ClientFrame::Refresh { token } => json!({"op": "refresh", "token": token}),
    };
    match value {
        Value::Object(map) => map,
        _ => unreachable!("frames are objects"),
    }
}

fn limits() -> FrameLimits {
    FrameLimits::default()
}

/// What every refusal must look like, whatever the input.
fn assert_typed_refusal(text: &str, refusal: &chatpipe_core::frames::FrameError) {
    assert!(
        matches!(refusal.code, ErrorCode::Invalid | ErrorCode::TooLarge),
        "{refusal:?}"
    );
    assert!(!refusal.message.is_empty());
    if text.len() > limits().max_frame_bytes {
        assert_eq!(refusal.code, ErrorCode::TooLarge);
    }
    if let Some(reference) = &refusal.reference {
        assert!(reference.len() <= ClientMsgId::MAX_LEN);
    }
    let frame: Value = serde_json::from_str(&ControlFrame::error(refusal).encode())
        .expect("an error frame is JSON");
    let errors: Vec<String> = SERVER_SCHEMA.with(|schema| {
        schema
            .iter_errors(&frame)
            .map(|error| error.to_string())
            .collect()
    });
    assert!(
        errors.is_empty(),
        "the error frame for {text:?} breaks the server-frame schema: {frame} {errors:?}"
    );
}

/// The message id a document wrote, as a string or a number.
fn written_id(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.parse::<u64>().ok(),
        other => other.as_u64(),
    }
}

/// A decoded frame says exactly what its document said.
fn assert_faithful(frame: &ClientFrame, document: &Value) {
    let op = match frame {
        ClientFrame::Send {
            conversation_id,
            client_msg_id,
            body,
            resend,
            reply_to,
            mentions,
        } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            let written: Vec<&str> = document["mentions"]
                .as_array()
                .map(|list| list.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            assert_eq!(
                mentions
                    .iter()
                    .map(|user| user.as_str())
                    .collect::<Vec<_>>(),
                written
            );
            assert_eq!(client_msg_id.as_str(), document["client_msg_id"]);
            assert_eq!(body, &document["body"]);
            assert_eq!(*resend, document["resend"].as_bool().unwrap_or(false));
            assert_eq!(
                reply_to.map(MessageId::as_u64),
                written_id(&document["reply_to"])
            );
            "send"
        }
        ClientFrame::Edit {
            conversation_id,
            message_id,
            body,
            client_msg_id,
        } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            assert_eq!(
                Some(message_id.as_u64()),
                written_id(&document["message_id"])
            );
            assert_eq!(body, &document["body"]);
            assert_eq!(
                client_msg_id.as_ref().map(ClientMsgId::as_str),
                document["client_msg_id"].as_str()
            );
            "edit"
        }
        ClientFrame::Delete {
            conversation_id,
            message_id,
            client_msg_id,
        } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            assert_eq!(
                Some(message_id.as_u64()),
                written_id(&document["message_id"])
            );
            assert_eq!(
                client_msg_id.as_ref().map(ClientMsgId::as_str),
                document["client_msg_id"].as_str()
            );
            "delete"
        }
        ClientFrame::React {
            conversation_id,
            message_id,
            reaction,
            add,
            ..
        } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            assert_eq!(
                Some(message_id.as_u64()),
                written_id(&document["message_id"])
            );
            assert_eq!(reaction, &document["reaction"]);
            if *add { "react" } else { "unreact" }
        }
        ClientFrame::Typing { conversation_id } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            "typing"
        }
        ClientFrame::Read {
            conversation_id,
            message_id,
        } => {
            assert_eq!(conversation_id.as_str(), document["conversation_id"]);
            assert_eq!(
                Some(message_id.as_u64()),
                written_id(&document["message_id"])
            );
            "read"
        }
        ClientFrame::AckSeq { seq } => {
            assert_eq!(Some(*seq), document["seq"].as_u64());
            "ack_seq"
        }
        ClientFrame::Ping => "ping",
        ClientFrame::Refresh { token } => {
            assert_eq!(token, &document["token"]);
            "refresh"
        }
    };
    assert_eq!(document["op"], op);
}

/// Documents the schema accepts and the edge refuses, as the schema's
/// descriptions say (each asserted by example in `schemas.rs`).
fn schema_valid_but_refused_by_design(document: &Value) -> bool {
    let body_over_byte_limit = document["body"]
        .as_str()
        .is_some_and(|body| body.len() > limits().max_body_bytes);
    // JSON Schema counts 7.0 as an integer.
    let integral_float_seq = document["seq"].is_f64();
    body_over_byte_limit || integral_float_seq
}

/// Documents the schema refuses and the edge tolerates, as documented.
fn schema_invalid_but_tolerated_by_design(document: &Value) -> bool {
    let numeric_message_id = document["message_id"].is_u64();
    let zero_padded_message_id = document["message_id"]
        .as_str()
        .is_some_and(|id| id.starts_with('0'));
    let null_resend = document.get("resend") == Some(&Value::Null);
    numeric_message_id || zero_padded_message_id || null_resend
}

/// A frame's text with one edit: cut short, a byte range dropped, or a
/// character put in.
fn mutated_frame() -> impl Strategy<Value = String> {
    (
        client_frame(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<char>(),
        0u8..3,
    )
        .prop_map(|(frame, at, until, character, edit)| {
            let text = Value::Object(client_json(&frame, false)).to_string();
            let boundaries: Vec<usize> = text
                .char_indices()
                .map(|(index, _)| index)
                .chain([text.len()])
                .collect();
            let from = boundaries[at.index(boundaries.len())];
            let to = boundaries[until.index(boundaries.len())].max(from);
            match edit {
                0 => text[..from].to_owned(),
                1 => format!("{}{}", &text[..from], &text[to..]),
                _ => format!("{}{character}{}", &text[..from], &text[from..]),
            }
        })
}

mod properties {
    use super::*;

    proptest! {
        #[test]
        fn arbitrary_text_is_decoded_or_refused_with_a_typed_error(text in any::<String>()) {
            if let Err(refusal) = decode_client_frame(&text, &limits()) {
                assert_typed_refusal(&text, &refusal);
            }
        }

        #[test]
        fn arbitrary_bytes_are_decoded_or_refused_with_a_typed_error(
            bytes in prop::collection::vec(any::<u8>(), 0..512)
        ) {
            // A text frame is UTF-8; the bytes a client could put in one.
            let text = String::from_utf8_lossy(&bytes);
            if let Err(refusal) = decode_client_frame(&text, &limits()) {
                assert_typed_refusal(&text, &refusal);
            }
        }

        #[test]
        fn mutated_frames_are_decoded_or_refused_with_a_typed_error(text in mutated_frame()) {
            match decode_client_frame(&text, &limits()) {
                Ok(frame) => {
                    // Whatever was accepted is faithful to the JSON it came from.
                    let document: Value = serde_json::from_str(&text).expect("accepted text is JSON");
                    assert_faithful(&frame, &document);
                }
                Err(refusal) => assert_typed_refusal(&text, &refusal),
            }
        }

        #[test]
        fn arbitrary_json_documents_are_decoded_faithfully_or_refused(document in json_value()) {
            let text = document.to_string();
            match decode_client_frame(&text, &limits()) {
                Ok(frame) => assert_faithful(&frame, &document),
                Err(refusal) => assert_typed_refusal(&text, &refusal),
            }
        }

        #[test]
        fn frame_like_documents_agree_with_the_client_schema(
            document in prop_oneof![8 => frame_like(), 1 => frame_like_array()]
        ) {
            let text = document.to_string();
            let decoded = decode_client_frame(&text, &limits());
            let schema_valid = CLIENT_SCHEMA.with(|schema| schema.is_valid(&document));
            match &decoded {
                Ok(frame) => {
                    assert_faithful(frame, &document);
                    prop_assert!(
                        schema_valid || schema_invalid_but_tolerated_by_design(&document),
                        "decoded but refused by the schema: {}", text
                    );
                }
                Err(refusal) => {
                    assert_typed_refusal(&text, refusal);
                    // Only a refused `send` echoes its `client_msg_id`.
                    if let Some(reference) = &refusal.reference {
                        prop_assert_eq!(&document["client_msg_id"], &json!(reference));
                    }
                    prop_assert!(
                        !schema_valid || schema_valid_but_refused_by_design(&document),
                        "valid per the schema but refused ({:?}): {}", refusal, text
                    );
                }
            }
        }

        #[test]
        fn valid_frames_round_trip(
            frame in client_frame(),
            explicit_resend in any::<bool>(),
            unknown in prop::option::of(("x_[a-z]{1,8}", json_value())),
            reverse in any::<bool>(),
            spaced in any::<bool>(),
        ) {
            let mut fields: Vec<(String, Value)> =
                client_json(&frame, explicit_resend).into_iter().collect();
            if let Some(unknown) = unknown {
                fields.push(unknown);
            }
            if reverse {
                fields.reverse();
            }
            // Written by hand to control field order and spacing.
            let separator = if spaced { " ,\n " } else { "," };
            let text = format!(
                "{{{}}}",
                fields
                    .iter()
                    .map(|(name, value)| format!("{}:{value}", json!(name)))
                    .collect::<Vec<_>>()
                    .join(separator)
            );
            let document: Value = serde_json::from_str(&text).expect("valid JSON");
            prop_assert!(
                CLIENT_SCHEMA.with(|schema| schema.is_valid(&document)),
                "the generator made a frame the schema refuses: {}", text
            );
            prop_assert_eq!(decode_client_frame(&text, &limits()), Ok(frame));
        }

        #[test]
        fn sequenced_frames_are_json_with_the_op_the_seq_and_the_fields(
            op in prop::sample::select(vec!["message", "typing", "read", "presence"]),
            fields in prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..5),
            seq in any::<u64>(),
        ) {
            let fields: Map<String, Value> = fields
                .into_iter()
                .filter(|(name, _)| name != "op" && name != "seq")
                .collect();
            let fields_json = Value::Object(fields.clone()).to_string();
            let shared = SequencedFrame::new(op, &fields_json);
            let text = shared.with_seq(seq);
            prop_assert_eq!(&text, &encode_sequenced(op, seq, &fields_json));
            // The fields as a reader parses them (through the same float
            // parser as the frame), plus `op` and `seq`.
            let mut expected: Map<String, Value> = serde_json::from_str(&fields_json).unwrap();
            expected.insert("op".to_owned(), json!(op));
            expected.insert("seq".to_owned(), json!(seq));
            prop_assert_eq!(serde_json::from_str::<Value>(&text).ok(), Some(Value::Object(expected)));
        }

        #[test]
        fn what_is_frame_fields_admits_splices_into_a_frame_with_that_seq(
            text in prop_oneof![
                any::<String>(),
                "[ \u{a0}]?\\{[^{}]{0,12}\\}[ \u{a0}]?",
                json_value().prop_map(|value| value.to_string()),
            ],
            seq in any::<u64>(),
        ) {
            if is_frame_fields(&text) {
                prop_assert!(is_json_object(&text));
                // The edge checks a pushed item's fields this way, then splices
                // them (trimmed) into the frame every recipient reads.
                let frame = SequencedFrame::new("typing", text.trim()).with_seq(seq);
                let parsed: Result<Value, _> = serde_json::from_str(&frame);
                prop_assert!(
                    matches!(&parsed, Ok(Value::Object(object)) if object["seq"] == json!(seq)),
                    "{:?} passed is_frame_fields but makes the frame {:?}", text, frame
                );
            }
        }
    }
}

/// Cases the properties found, kept as plain tests.
mod regressions {
    use super::*;

    #[test]
    fn a_signed_message_id_is_refused_like_the_schema_refuses_it() {
        let text = r#"{"op":"read","conversation_id":"c1","message_id":"+5"}"#;
        let refusal = decode_client_frame(text, &limits()).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Invalid);
        assert!(
            !CLIENT_SCHEMA.with(|schema| schema.is_valid(&serde_json::from_str(text).unwrap()))
        );
    }

    #[test]
    fn a_frame_written_as_an_array_is_refused() {
        let text = r#"["ping",null,null,null,null,null,null]"#;
        let refusal = decode_client_frame(text, &limits()).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Invalid);
        let send = r#"["send","c1","m1","hi",null,null,null]"#;
        assert!(decode_client_frame(send, &limits()).is_err());
        // Leading whitespace before an object is still fine.
        assert_eq!(
            decode_client_frame(" \n{\"op\":\"ping\"}", &limits()),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn fields_that_only_look_like_an_object_are_not_spliced() {
        for fields in ["{x}", "{}}", "{\"a\":1}{\"b\":2}", "{\"a\":}", "{,}"] {
            assert!(!is_json_object(fields), "{fields}");
        }
        for fields in ["{}", " {\"a\":1} ", "\u{a0}{\"a\":[1,{}]}"] {
            assert!(is_json_object(fields), "{fields}");
            assert!(is_frame_fields(fields), "{fields}");
        }
        // The frame's own keys: a second `seq` would leave readers to pick one.
        for fields in ["{\"seq\":null}", "{\"a\":1,\"op\":\"x\"}"] {
            assert!(is_json_object(fields), "{fields}");
            assert!(!is_frame_fields(fields), "{fields}");
        }
    }
}
