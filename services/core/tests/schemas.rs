//! The published JSON Schemas (`schemas/kafka/v1/`, `schemas/kafka/v2/`,
//! `schemas/ws/v1/`) held
//! against the Rust types that produce and consume those documents.
//!
//! The schemas are a public contract (analytics teams read the Kafka topics,
//! client authors read the WebSocket protocol), and they leave
//! `additionalProperties` open so that readers ignore unknown fields. An open
//! schema alone cannot notice a field the code writes but the schema does
//! not describe, so every example here is also validated against a *closed*
//! copy of its schema (each `additionalProperties: true` turned into
//! `unevaluatedProperties: false`). Together with the checks below, adding,
//! renaming or making optional a field of a record or frame fails this test
//! until the schema says the same:
//!
//! - every example built from the real Rust types validates, open and closed;
//! - removing any field the Rust type always writes makes it invalid (the
//!   `required` lists are complete), while the examples with optional
//!   fields absent stay valid (they are not too strict);
//! - every property the schema describes appears in some example (no stale
//!   properties);
//! - client frames: what the schema accepts `decode_client_frame` accepts,
//!   and a set of wrong frames is refused by both (the known, documented
//!   divergences are asserted as such, so that they stay known).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chatpipe_core::error::ErrorCode;
use chatpipe_core::frames::{
    ClientFrame, ControlFrame, Deliverable, FrameLimits, MessageView, decode_client_frame,
};
use chatpipe_core::membership::{HistoryVisibility, Role};
use chatpipe_core::records::{
    CHANGE_SCHEMA_VERSION, DeadLetterRecord, EdgeRecord, EdgeState, Event, EventRecord,
    MembershipChange, MembershipRecord, MessageChange, MessageChangeRecord, MessageRecord,
    MessagesTopicRecord, PresenceStatus, RouteRecord, SCHEMA_VERSION, SessionKey,
    decode_messages_record, topics,
};
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, MessageId, SessionId, UserId};
use jsonschema::Validator;
use serde_json::{Value, json};

const ID_BASE: &str = "https://chatpipe.example/schemas/";
const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

const MESSAGE_SCHEMA: &str = "kafka/v1/message.json";
const EVENT_SCHEMA: &str = "kafka/v1/event.json";
const MEMBERSHIP_SCHEMA: &str = "kafka/v1/membership.json";
const SESSION_EDGE_SCHEMA: &str = "kafka/v1/session-edge.json";
const SESSION_ROUTE_SCHEMA: &str = "kafka/v1/session-route.json";
const DEAD_LETTER_SCHEMA: &str = "kafka/v1/dead-letter.json";
/// Version 2 of the messages topic: change records, next to version 1's
/// messages.
const MESSAGE_CHANGE_SCHEMA: &str = "kafka/v2/message-change.json";
const CLIENT_FRAME_SCHEMA: &str = "ws/v1/client-frame.json";
const SERVER_FRAME_SCHEMA: &str = "ws/v1/server-frame.json";

const KAFKA_SCHEMAS: [&str; 6] = [
    MESSAGE_SCHEMA,
    EVENT_SCHEMA,
    MEMBERSHIP_SCHEMA,
    SESSION_EDGE_SCHEMA,
    SESSION_ROUTE_SCHEMA,
    DEAD_LETTER_SCHEMA,
];
const WS_SCHEMAS: [&str; 2] = [CLIENT_FRAME_SCHEMA, SERVER_FRAME_SCHEMA];

/// A field name no schema describes, to probe open and closed validation.
const UNKNOWN_FIELD: &str = "x_field_from_the_future";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read_json(relative: &str) -> Value {
    let path = schemas_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
}

/// The schema with every `additionalProperties: true` replaced by
/// `unevaluatedProperties: false`: valid documents may then hold only the
/// properties the schema describes (including those of the `oneOf` branch
/// that matched).
fn closed_copy(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut closed = serde_json::Map::new();
            for (key, value) in map {
                if key == "additionalProperties" && *value == Value::Bool(true) {
                    closed.insert("unevaluatedProperties".to_owned(), Value::Bool(false));
                } else {
                    closed.insert(key.clone(), closed_copy(value));
                }
            }
            Value::Object(closed)
        }
        Value::Array(items) => Value::Array(items.iter().map(closed_copy).collect()),
        other => other.clone(),
    }
}

/// One published schema, compiled as published and closed.
struct Schema {
    path: &'static str,
    document: Value,
    published: Validator,
    closed: Validator,
}

impl Schema {
    fn load(path: &'static str) -> Self {
        let document = read_json(path);
        let published = jsonschema::draft202012::new(&document)
            .unwrap_or_else(|error| panic!("{path} does not compile: {error}"));
        let closed = jsonschema::draft202012::new(&closed_copy(&document))
            .unwrap_or_else(|error| panic!("closed copy of {path} does not compile: {error}"));
        Self {
            path,
            document,
            published,
            closed,
        }
    }

    fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
        validator
            .iter_errors(instance)
            .map(|error| format!("at `{}`: {error}", error.instance_path))
            .collect()
    }

    fn is_valid(&self, instance: &Value) -> bool {
        self.published.is_valid(instance)
    }

    /// `instance` is valid as published, and holds nothing the schema does
    /// not describe.
    fn assert_conforms(&self, instance: &Value) {
        let published_errors = Self::errors(&self.published, instance);
        assert!(
            published_errors.is_empty(),
            "{} rejects {instance}: {published_errors:#?}",
            self.path
        );
        let closed_errors = Self::errors(&self.closed, instance);
        assert!(
            closed_errors.is_empty(),
            "{instance} holds properties that {} does not describe: {closed_errors:#?}",
            self.path
        );
    }

    fn assert_rejects(&self, instance: &Value, why: &str) {
        assert!(
            !self.published.is_valid(instance),
            "{} accepts {instance}, but it should not ({why})",
            self.path
        );
    }

    /// The full check of one document the code produced:
    /// - it conforms (open and closed);
    /// - an unknown field, at the top or in a nested object, is tolerated by
    ///   the published schema (readers ignore unknown fields) and refused by
    ///   the closed copy (the test would notice a new Rust field);
    /// - removing any field whose path is not in `optional_paths` makes it
    ///   invalid (the `required` lists are complete).
    fn assert_produced_document(&self, instance: &Value, optional_paths: &[&str]) {
        self.assert_conforms(instance);
        for object_path in object_paths(instance) {
            let mut extended = instance.clone();
            object_at(&mut extended, &object_path).insert(UNKNOWN_FIELD.to_owned(), json!(1));
            assert!(
                self.published.is_valid(&extended),
                "{} must tolerate an unknown field at `{object_path}`: {extended}",
                self.path
            );
            assert!(
                !self.closed.is_valid(&extended),
                "the closed copy of {} must refuse an unknown field at `{object_path}`",
                self.path
            );
        }
        for field_path in field_paths(instance) {
            let mut reduced = instance.clone();
            remove_at(&mut reduced, &field_path);
            let still_valid = self.published.is_valid(&reduced);
            if optional_paths.contains(&field_path.as_str()) {
                assert!(
                    still_valid,
                    "{}: `{field_path}` is optional in Rust, the schema must not require it",
                    self.path
                );
            } else {
                assert!(
                    !still_valid,
                    "{}: `{field_path}` is always written by the Rust type, the schema must require it: {reduced}",
                    self.path
                );
            }
        }
    }

    /// Every property the schema describes (at any depth) appears in at least
    /// one of `examples`, and vice versa.
    fn assert_properties_covered_by(&self, examples: &[Value]) {
        let mut described = BTreeSet::new();
        collect_described_properties(&self.document, &mut described);
        let mut produced = BTreeSet::new();
        for example in examples {
            collect_keys(example, &mut produced);
        }
        assert_eq!(
            described, produced,
            "{}: the properties it describes differ from the fields the code writes",
            self.path
        );
    }

    /// The schema of the Kafka record key, `x-kafka-key`.
    fn key_validator(&self) -> Validator {
        let key_schema = self
            .document
            .get("x-kafka-key")
            .unwrap_or_else(|| panic!("{} has no x-kafka-key", self.path));
        jsonschema::draft202012::new(key_schema)
            .unwrap_or_else(|error| panic!("{}: x-kafka-key does not compile: {error}", self.path))
    }

    fn assert_key_conforms(&self, key: &str) {
        assert!(
            self.key_validator().is_valid(&json!(key)),
            "{}: the key `{key}` does not match x-kafka-key",
            self.path
        );
    }
}

/// Dotted paths of every object in `value` ("" for the root), arrays skipped.
fn object_paths(value: &Value) -> Vec<String> {
    fn walk(value: &Value, path: String, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                walk(child, join(&path, key), out);
            }
            out.push(path);
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

/// Dotted paths of every field of every object in `value`.
fn field_paths(value: &Value) -> Vec<String> {
    fn walk(value: &Value, path: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let child_path = join(path, key);
                walk(child, &child_path, out);
                out.push(child_path);
            }
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn object_at<'a>(value: &'a mut Value, path: &str) -> &'a mut serde_json::Map<String, Value> {
    let mut current = value;
    if !path.is_empty() {
        for segment in path.split('.') {
            current = current.get_mut(segment).expect("path exists");
        }
    }
    current.as_object_mut().expect("path names an object")
}

fn remove_at(value: &mut Value, path: &str) {
    let (parent, field) = match path.rsplit_once('.') {
        Some((parent, field)) => (parent, field),
        None => ("", path),
    };
    object_at(value, parent).remove(field);
}

fn collect_described_properties(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "properties"
                    && let Value::Object(properties) = value
                {
                    out.extend(properties.keys().cloned());
                }
                collect_described_properties(value, out);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_described_properties(item, out)),
        _ => {}
    }
}

fn collect_keys(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                out.insert(key.clone());
                collect_keys(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_keys(item, out)),
        _ => {}
    }
}

fn without(instance: &Value, field: &str) -> Value {
    let mut reduced = instance.clone();
    remove_at(&mut reduced, field);
    reduced
}

fn with(instance: &Value, field: &str, replacement: Value) -> Value {
    let mut changed = instance.clone();
    let (parent, name) = match field.rsplit_once('.') {
        Some((parent, name)) => (parent, name),
        None => ("", field),
    };
    object_at(&mut changed, parent).insert(name.to_owned(), replacement);
    changed
}

fn to_value<T: serde::Serialize>(record: &T) -> Value {
    serde_json::to_value(record).expect("records serialize")
}

fn parse_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON: {text}: {error}"))
}

fn user(raw: &str) -> UserId {
    UserId::parse(raw).unwrap()
}

fn conversation(raw: &str) -> ConversationId {
    ConversationId::parse(raw).unwrap()
}

fn edge(raw: &str) -> EdgeId {
    EdgeId::parse(raw).unwrap()
}

fn client_msg_id(raw: &str) -> ClientMsgId {
    ClientMsgId::parse(raw).unwrap()
}

/// The largest id the 64-bit signed columns downstream can hold.
const MAX_MESSAGE_ID: u64 = i64::MAX as u64;

// ---------------------------------------------------------------------------
// The schema files themselves.

fn collect_json_files(directory: &Path, base: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_json_files(&path, base, out);
        } else if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            let relative = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(relative);
        }
    }
}

fn assert_every_property_described(path: &str, schema: &Value, location: &str) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "properties" {
                    for (name, property) in value.as_object().expect("properties is an object") {
                        let description = property.get("description").and_then(Value::as_str);
                        assert!(
                            description.is_some_and(|text| !text.trim().is_empty()),
                            "{path}: property `{name}` at `{location}` has no description"
                        );
                    }
                }
                assert_every_property_described(path, value, &format!("{location}/{key}"));
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                assert_every_property_described(path, item, &format!("{location}/{index}"));
            }
        }
        _ => {}
    }
}

fn assert_no_closed_objects(path: &str, schema: &Value) {
    match schema {
        Value::Object(map) => {
            assert_ne!(
                map.get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{path}: readers must ignore unknown fields, so no object is closed"
            );
            map.values()
                .for_each(|value| assert_no_closed_objects(path, value));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| assert_no_closed_objects(path, item)),
        _ => {}
    }
}

#[test]
fn every_schema_file_is_a_described_draft_2020_12_schema() {
    let mut found = BTreeSet::new();
    for directory in ["kafka", "ws"] {
        collect_json_files(&schemas_dir().join(directory), &schemas_dir(), &mut found);
    }
    let expected: BTreeSet<String> = KAFKA_SCHEMAS
        .iter()
        .chain([MESSAGE_CHANGE_SCHEMA].iter())
        .chain(WS_SCHEMAS.iter())
        .map(|path| (*path).to_owned())
        .collect();
    assert_eq!(
        found, expected,
        "every schema file must be checked by this test"
    );

    let mut definitions: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for path in KAFKA_SCHEMAS
        .iter()
        .chain([MESSAGE_CHANGE_SCHEMA].iter())
        .chain(WS_SCHEMAS.iter())
    {
        let document = read_json(path);
        if let Err(error) = jsonschema::draft202012::meta::validate(&document) {
            panic!("{path} is not a valid draft 2020-12 schema: {error}");
        }
        Schema::load(path);
        assert_eq!(document["$schema"], DRAFT_2020_12, "{path}: $schema");
        assert_eq!(document["$id"], format!("{ID_BASE}{path}"), "{path}: $id");
        for metadata in ["title", "description"] {
            let text = document[metadata].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{path}: {metadata} is missing");
        }
        assert_eq!(document["type"], "object", "{path}: documents are objects");
        assert_eq!(
            document["additionalProperties"],
            Value::Bool(true),
            "{path}: the open-world policy is stated explicitly"
        );
        assert_every_property_described(path, &document, "");
        assert_no_closed_objects(path, &document);
        // A shared definition (an id, a timestamp) means the same in every file.
        for (name, definition) in document["$defs"].as_object().into_iter().flatten() {
            if let Some((first_path, first)) = definitions.get(name) {
                assert_eq!(
                    first, definition,
                    "$defs/{name} differs between {first_path} and {path}"
                );
            } else {
                definitions.insert(name.clone(), ((*path).to_owned(), definition.clone()));
            }
        }
    }

    let topic_names = [
        topics::MESSAGES,
        topics::EVENTS,
        topics::MEMBERSHIP,
        topics::SESSIONS,
        topics::DEAD_LETTER,
    ];
    for path in KAFKA_SCHEMAS {
        let document = read_json(path);
        let topic = document["x-kafka-topic"].as_str().unwrap_or_default();
        assert!(
            topic_names.contains(&topic),
            "{path}: x-kafka-topic `{topic}` is not a chatpipe topic"
        );
        assert!(
            document.get("x-kafka-key").is_some(),
            "{path}: x-kafka-key is missing"
        );
        assert_eq!(
            document["properties"]["schema_version"]["$ref"],
            "#/$defs/schema_version"
        );
        assert_eq!(
            document["$defs"]["schema_version"]["const"],
            json!(SCHEMA_VERSION)
        );
        let required = document["required"].as_array().expect("required");
        assert!(
            required.contains(&json!("schema_version")),
            "{path}: schema_version is required"
        );
    }

    // Version 2 of the messages topic says so in its own definition (a
    // shared `$defs/schema_version` means the same in every file).
    let change = read_json(MESSAGE_CHANGE_SCHEMA);
    assert_eq!(change["x-kafka-topic"], topics::MESSAGES);
    assert_eq!(
        change["x-kafka-key"],
        read_json(MESSAGE_SCHEMA)["x-kafka-key"]
    );
    assert_eq!(
        change["properties"]["schema_version"]["$ref"],
        "#/$defs/change_schema_version"
    );
    assert_eq!(
        change["$defs"]["change_schema_version"]["const"],
        json!(CHANGE_SCHEMA_VERSION)
    );
    let required = change["required"].as_array().expect("required");
    assert!(required.contains(&json!("schema_version")));
    assert!(required.contains(&json!("kind")));
}

// ---------------------------------------------------------------------------
// Kafka records.

fn message_record(message_id: u64, body: &str) -> MessageRecord {
    MessageRecord {
        schema_version: SCHEMA_VERSION,
        message_id: MessageId::from_u64(message_id),
        conversation_id: conversation("conv:team_a.b@example-1"),
        sender_id: user("alice"),
        client_msg_id: client_msg_id(&"m".repeat(ClientMsgId::MAX_LEN)),
        body: body.to_owned(),
        ts: 1_767_225_600_123,
        edge_id: edge("edge-1"),
        resend: false,
        reply_to: None,
        mentions: Vec::new(),
    }
}

#[test]
fn message_records_match_their_schema() {
    let schema = Schema::load(MESSAGE_SCHEMA);
    let records = [
        message_record(1, "hi"),
        message_record(MAX_MESSAGE_ID, "héllo \"world\" 👋\nline two"),
        MessageRecord {
            resend: true,
            reply_to: Some(MessageId::from_u64(1)),
            ..message_record(2, "a marked retry of a reply")
        },
        MessageRecord {
            mentions: vec![user("bob"), user("carol.c@x")],
            ..message_record(3, "@bob @carol.c@x lunch?")
        },
    ];
    let mut examples = Vec::new();
    for record in &records {
        let value = to_value(record);
        // `resend` is written only when true, `reply_to` only for a reply,
        // `mentions` only when there are some.
        schema.assert_produced_document(&value, &["resend", "reply_to", "mentions"]);
        schema.assert_key_conforms(record.conversation_id.as_str());
        assert_eq!(
            &serde_json::from_value::<MessageRecord>(value.clone()).unwrap(),
            record
        );
        examples.push(value);
    }
    schema.assert_properties_covered_by(&examples);

    let good = &examples[0];
    schema.assert_rejects(
        &with(good, "schema_version", json!(2)),
        "another schema version",
    );
    schema.assert_rejects(
        &with(good, "message_id", json!(1)),
        "message ids are strings",
    );
    schema.assert_rejects(
        &with(good, "message_id", json!("0")),
        "message ids start at 1",
    );
    schema.assert_rejects(
        &with(good, "message_id", json!("9223372036854775808")),
        "beyond i64",
    );
    schema.assert_rejects(&with(good, "message_id", json!("0042")), "leading zeros");
    schema.assert_rejects(
        &with(good, "sender_id", json!("alice smith")),
        "space in an id",
    );
    schema.assert_rejects(
        &with(good, "conversation_id", json!("c".repeat(65))),
        "id too long",
    );
    schema.assert_rejects(&with(good, "conversation_id", json!("")), "empty id");
    schema.assert_rejects(&with(good, "ts", json!(-1)), "negative time");
    schema.assert_rejects(&with(good, "body", json!("")), "empty body");
    schema.assert_rejects(&json!([good]), "not an object");
    assert!(
        !schema.key_validator().is_valid(&json!("conv 1")),
        "keys are conversation ids"
    );
}

fn change_record(change: MessageChange) -> MessageChangeRecord {
    MessageChangeRecord {
        schema_version: CHANGE_SCHEMA_VERSION,
        message_id: MessageId::from_u64(MAX_MESSAGE_ID),
        conversation_id: conversation("conv:team_a.b@example-1"),
        actor_id: user("alice"),
        change,
        ts: 1_767_225_700_000,
        edge_id: edge("edge-2"),
    }
}

#[test]
fn message_change_records_match_their_schema() {
    let schema = Schema::load(MESSAGE_CHANGE_SCHEMA);
    let message_schema = Schema::load(MESSAGE_SCHEMA);
    let records = [
        change_record(MessageChange::Edit {
            body: "fixed 👋\nline two".to_owned(),
        }),
        change_record(MessageChange::Delete),
        change_record(MessageChange::ReactionAdd {
            reaction: "👍🏽".to_owned(),
        }),
        change_record(MessageChange::ReactionRemove {
            reaction: "+1".to_owned(),
        }),
    ];
    let mut examples = Vec::new();
    for record in &records {
        let value = to_value(record);
        schema.assert_produced_document(&value, &[]);
        schema.assert_key_conforms(record.conversation_id.as_str());
        assert_eq!(
            decode_messages_record(value.to_string().as_bytes()),
            Ok(MessagesTopicRecord::Change(record.clone()))
        );
        // What a reader of version 1 sees: not a message.
        message_schema.assert_rejects(&value, "a change is not a message");
        assert!(serde_json::from_value::<MessageRecord>(value.clone()).is_err());
        examples.push(value);
    }
    schema.assert_properties_covered_by(&examples);
    let (edit, delete) = (&examples[0], &examples[1]);
    schema.assert_rejects(&without(edit, "body"), "an edit has a body");
    schema.assert_rejects(&with(delete, "body", json!("x")), "a delete has no body");
    schema.assert_rejects(&with(edit, "body", json!("")), "empty body");
    schema.assert_rejects(&with(edit, "schema_version", json!(1)), "version 1");
    schema.assert_rejects(&with(edit, "kind", json!("react")), "unknown kind");
    let reaction = &examples[2];
    schema.assert_rejects(&without(reaction, "reaction"), "a reaction names it");
    schema.assert_rejects(
        &with(reaction, "body", json!("x")),
        "a reaction has no body",
    );
    schema.assert_rejects(&with(reaction, "reaction", json!("a b")), "whitespace");
    schema.assert_rejects(
        &with(edit, "reaction", json!("x")),
        "an edit has no reaction",
    );
    schema.assert_rejects(
        &with(delete, "reaction", json!("x")),
        "a delete has no reaction",
    );
    // And a message is not a change.
    schema.assert_rejects(&to_value(&message_record(1, "hi")), "a message");
}

#[test]
fn event_records_match_their_schema() {
    let schema = Schema::load(EVENT_SCHEMA);
    let events = [
        Event::Typing {
            conversation_id: conversation("c1"),
            user_id: user("alice"),
        },
        Event::Read {
            conversation_id: conversation("c1"),
            user_id: user("bob"),
            message_id: MessageId::from_u64(123_456_789),
        },
        Event::Presence {
            user_id: user("carol"),
            status: PresenceStatus::Online,
            edge_id: Some(edge("edge-1")),
        },
        Event::Presence {
            user_id: user("carol"),
            status: PresenceStatus::Offline,
            edge_id: None,
        },
    ];
    let mut examples = Vec::new();
    for event in events {
        let key = match &event {
            Event::Typing {
                conversation_id, ..
            }
            | Event::Read {
                conversation_id, ..
            } => conversation_id.to_string(),
            Event::Presence { user_id, .. } => user_id.to_string(),
        };
        let record = EventRecord {
            schema_version: SCHEMA_VERSION,
            event,
            ts: 1_767_225_600_000,
        };
        let value = to_value(&record);
        schema.assert_produced_document(&value, &["edge_id"]);
        schema.assert_key_conforms(&key);
        assert_eq!(
            serde_json::from_value::<EventRecord>(value.clone()).unwrap(),
            record
        );
        examples.push(value);
    }
    schema.assert_properties_covered_by(&examples);

    let typing = &examples[0];
    let read = &examples[1];
    let presence = &examples[2];
    schema.assert_rejects(&with(typing, "type", json!("dance")), "unknown event type");
    schema.assert_rejects(
        &with(typing, "type", json!("presence")),
        "typing fields under another type",
    );
    schema.assert_rejects(&without(typing, "type"), "no discriminator");
    schema.assert_rejects(&with(read, "message_id", json!("abc")), "bad message id");
    schema.assert_rejects(&with(presence, "status", json!("away")), "unknown status");
    schema.assert_rejects(&with(presence, "user_id", json!("bob/1")), "bad user id");
    schema.assert_rejects(
        &with(presence, "schema_version", json!("1")),
        "version is a number",
    );
}

/// One membership record of every kind (optional fields present and
/// absent), for the record schema and the frames made from them.
fn membership_records() -> Vec<MembershipRecord> {
    [
        MembershipChange::Created {
            members: vec![user("alice"), user("bob")],
            title: Some("Team ☕".to_owned()),
            history_visibility: Some(HistoryVisibility::Joined),
        },
        MembershipChange::Created {
            members: vec![user("alice")],
            title: None,
            history_visibility: None,
        },
        MembershipChange::Added {
            user_id: user("carol"),
        },
        MembershipChange::Removed {
            user_id: user("bob"),
        },
        MembershipChange::RoleChanged {
            user_id: user("bob"),
            role: Role::Admin,
        },
        MembershipChange::SettingsChanged {
            history_visibility: HistoryVisibility::Shared,
        },
    ]
    .into_iter()
    .map(|change| MembershipRecord {
        schema_version: SCHEMA_VERSION,
        conversation_id: conversation("c1"),
        change,
        actor_id: user("alice"),
        ts: 1_767_225_600_000,
    })
    .collect()
}

#[test]
fn membership_records_match_their_schema() {
    let schema = Schema::load(MEMBERSHIP_SCHEMA);
    let mut examples = Vec::new();
    for record in membership_records() {
        let value = to_value(&record);
        // Optional on `created`; required on `settings_changed`.
        let optional: &[&str] = match &record.change {
            MembershipChange::Created { .. } => &["title", "history_visibility"],
            _ => &[],
        };
        schema.assert_produced_document(&value, optional);
        schema.assert_key_conforms(record.conversation_id.as_str());
        assert_eq!(
            serde_json::from_value::<MembershipRecord>(value.clone()).unwrap(),
            record
        );
        examples.push(value);
    }
    assert!(
        examples[1].get("title").is_none(),
        "an absent title is skipped, not null"
    );
    schema.assert_properties_covered_by(&examples);

    let created = &examples[0];
    let added = &examples[2];
    schema.assert_rejects(&with(created, "op", json!("renamed")), "unknown op");
    schema.assert_rejects(
        &with(created, "title", Value::Null),
        "title is absent, never null",
    );
    schema.assert_rejects(
        &with(created, "members", json!(["ok", "not ok"])),
        "bad member id",
    );
    schema.assert_rejects(
        &with(added, "op", json!("created")),
        "created needs members",
    );
    schema.assert_rejects(&without(added, "actor_id"), "no actor");
}

#[test]
fn session_records_and_keys_match_their_schemas() {
    let edge_schema = Schema::load(SESSION_EDGE_SCHEMA);
    let route_schema = Schema::load(SESSION_ROUTE_SCHEMA);

    let mut edge_examples = Vec::new();
    for state in [EdgeState::Serving, EdgeState::Draining] {
        let record = EdgeRecord {
            schema_version: SCHEMA_VERSION,
            edge_id: edge("edge-1"),
            push_addr: "10.0.0.7:9100".to_owned(),
            state,
            lease_expires_ms: 1_767_225_630_000,
            worker_id: Some(1023),
            ts: 1_767_225_600_000,
        };
        let value = to_value(&record);
        edge_schema.assert_produced_document(&value, &["worker_id"]);
        assert_eq!(
            serde_json::from_value::<EdgeRecord>(value.clone()).unwrap(),
            record
        );
        edge_examples.push(value);
    }
    edge_schema.assert_properties_covered_by(&edge_examples);

    let route = RouteRecord {
        schema_version: SCHEMA_VERSION,
        user_id: user("alice"),
        edge_id: edge("edge-1"),
        sessions: 1,
        ts: 1_767_225_600_000,
    };
    let route_value = to_value(&route);
    route_schema.assert_produced_document(&route_value, &[]);
    assert_eq!(
        serde_json::from_value::<RouteRecord>(route_value.clone()).unwrap(),
        route
    );
    route_schema.assert_properties_covered_by(std::slice::from_ref(&route_value));

    // The keys, as `SessionKey::encode` writes them, and only those.
    let edge_key = SessionKey::Edge(edge("edge-1")).encode();
    let route_key = SessionKey::Route(user("user:42@example.org"), edge("edge-1")).encode();
    edge_schema.assert_key_conforms(&edge_key);
    route_schema.assert_key_conforms(&route_key);
    assert!(!edge_schema.key_validator().is_valid(&json!(route_key)));
    assert!(!route_schema.key_validator().is_valid(&json!(edge_key)));
    for bad_key in [
        "edge/",
        "edge/a/b",
        "route/a",
        "route/a/b/c",
        "route/a b/c",
        "other/a",
    ] {
        let valid_somewhere = edge_schema.key_validator().is_valid(&json!(bad_key))
            || route_schema.key_validator().is_valid(&json!(bad_key));
        assert!(
            !valid_somewhere,
            "key `{bad_key}` must not match a session key schema"
        );
        assert_eq!(
            SessionKey::decode(bad_key),
            None,
            "key `{bad_key}` must not decode"
        );
    }

    edge_schema.assert_rejects(
        &with(&edge_examples[0], "state", json!("dead")),
        "unknown state",
    );
    edge_schema.assert_rejects(
        &with(&edge_examples[0], "push_addr", json!("")),
        "no address",
    );
    route_schema.assert_rejects(
        &with(&route_value, "sessions", json!(0)),
        "empty route is a tombstone",
    );
    route_schema.assert_rejects(
        &with(&route_value, "edge_id", json!("edge 1")),
        "bad edge id",
    );
    // A route does not pass as an edge lease, nor the other way round.
    edge_schema.assert_rejects(&route_value, "a route is not an edge lease");
    route_schema.assert_rejects(&edge_examples[0], "an edge lease is not a route");
}

#[test]
fn dead_letter_records_match_their_schema() {
    let schema = Schema::load(DEAD_LETTER_SCHEMA);
    let base = DeadLetterRecord {
        schema_version: SCHEMA_VERSION,
        source_topic: "t1.chat.messages".to_owned(),
        source_partition: 3,
        source_offset: 42,
        consumer: "chatpipe-persist".to_owned(),
        error: "invalid record: missing field `body`".to_owned(),
        payload_utf8: None,
        payload_base64: None,
        ts: 1_767_225_600_000,
    };
    let records = [
        DeadLetterRecord {
            payload_utf8: Some("{\"not\":\"a message\"}".to_owned()),
            ..base.clone()
        },
        DeadLetterRecord {
            payload_utf8: Some(String::new()),
            ..base.clone()
        },
        DeadLetterRecord {
            payload_base64: Some("/w==".to_owned()),
            ..base.clone()
        },
        DeadLetterRecord {
            payload_base64: Some("AAECAwQF".to_owned()),
            ..base.clone()
        },
    ];
    let mut examples = Vec::new();
    for record in &records {
        let value = to_value(record);
        // Each payload field is optional in Rust, but the writer always
        // writes exactly one of them: removing it must fail, which the
        // generic check expects of a required field.
        schema.assert_produced_document(&value, &[]);
        assert_eq!(
            &serde_json::from_value::<DeadLetterRecord>(value.clone()).unwrap(),
            record
        );
        examples.push(value);
    }
    schema.assert_properties_covered_by(&examples);
    schema.assert_key_conforms("");
    schema.assert_key_conforms("c1");

    schema.assert_rejects(&to_value(&base), "neither payload field");
    let both = DeadLetterRecord {
        payload_utf8: Some("x".to_owned()),
        payload_base64: Some("eA==".to_owned()),
        ..base.clone()
    };
    schema.assert_rejects(&to_value(&both), "both payload fields");
    schema.assert_rejects(
        &with(&examples[2], "payload_base64", json!("not base64!")),
        "bad base64",
    );
    schema.assert_rejects(
        &with(&examples[0], "source_partition", json!(-1)),
        "negative partition",
    );
    schema.assert_rejects(
        &with(&examples[0], "source_offset", json!("42")),
        "offset is a number",
    );
}

// ---------------------------------------------------------------------------
// WebSocket frames.

fn op_name(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Send { .. } => "send",
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Read { .. } => "read",
        ClientFrame::Edit { .. } => "edit",
        ClientFrame::Delete { .. } => "delete",
        ClientFrame::React { add: true, .. } => "react",
        ClientFrame::React { add: false, .. } => "unreact",
        ClientFrame::AckSeq { .. } => "ack_seq",
        ClientFrame::Ping => "ping",
        ClientFrame::Refresh { .. } => "refresh",
    }
}

fn send_frame(conversation_id: &str, client_msg_id: &str, body: &str) -> String {
    json!({
        "op": "send",
        "conversation_id": conversation_id,
        "client_msg_id": client_msg_id,
        "body": body,
    })
    .to_string()
}

#[test]
fn client_frames_valid_per_schema_decode() {
    let schema = Schema::load(CLIENT_FRAME_SCHEMA);
    let limits = FrameLimits::default();
    let max_body = "b".repeat(limits.max_body_bytes);
    let long_conversation = "c".repeat(ConversationId::MAX_LEN);
    let long_client_msg_id = "m".repeat(ClientMsgId::MAX_LEN);
    let valid = [
        send_frame("c1", "m1", "hi"),
        send_frame("conv:team_a.b@example-1", "m-1.2:3@x_y", "  padded  "),
        send_frame(&long_conversation, &long_client_msg_id, &max_body),
        send_frame("c1", "m2", "héllo \"world\" 👋\nline two"),
        r#"{"op":"send","conversation_id":"c1","client_msg_id":"m3","body":"x","from_a_newer_client":true}"#
            .to_owned(),
        r#"{"op":"send","conversation_id":"c1","client_msg_id":"m4","body":"again","resend":true}"#
            .to_owned(),
        r#"{"op":"send","conversation_id":"c1","client_msg_id":"m5","body":"yes","reply_to":"42"}"#
            .to_owned(),
        r#"{"op":"send","conversation_id":"c1","client_msg_id":"m6","body":"@bob","mentions":["bob","carol.c@x"]}"#
            .to_owned(),
        format!(
            r#"{{"op":"send","conversation_id":"c1","client_msg_id":"m7","body":"all","mentions":[{}]}}"#,
            (0..20).map(|index| format!("\"u{index}\"")).collect::<Vec<_>>().join(",")
        ),
        r#"{"op":"typing","conversation_id":"c1"}"#.to_owned(),
        r#"{"op":"edit","conversation_id":"c1","message_id":"42","body":"fixed"}"#.to_owned(),
        format!(
            r#"{{"op":"edit","conversation_id":"c1","message_id":"{MAX_MESSAGE_ID}","body":"{max_body}","client_msg_id":"e-1"}}"#
        ),
        r#"{"op":"delete","conversation_id":"c1","message_id":"42"}"#.to_owned(),
        r#"{"op":"delete","conversation_id":"c1","message_id":"42","client_msg_id":"d-1"}"#
            .to_owned(),
        r#"{"op":"react","conversation_id":"c1","message_id":"42","reaction":"👍"}"#.to_owned(),
        r#"{"op":"unreact","conversation_id":"c1","message_id":"42","reaction":"+1","client_msg_id":"u-1"}"#
            .to_owned(),
        r#"{"op":"read","conversation_id":"c1","message_id":"1"}"#.to_owned(),
        format!(r#"{{"op":"read","conversation_id":"c1","message_id":"{MAX_MESSAGE_ID}"}}"#),
        r#"{"op":"ack_seq","seq":0}"#.to_owned(),
        r#"{"op":"ack_seq","seq":7}"#.to_owned(),
        format!(r#"{{"op":"ack_seq","seq":{}}}"#, u64::MAX),
        r#"{"op":"ping"}"#.to_owned(),
        r#"{"op":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}"#.to_owned(),
    ];
    let mut examples = Vec::new();
    for text in &valid {
        let value = parse_text(text);
        let errors = Schema::errors(&schema.published, &value);
        assert!(
            errors.is_empty(),
            "{CLIENT_FRAME_SCHEMA} rejects {text}: {errors:#?}"
        );
        let frame = decode_client_frame(text, &limits)
            .unwrap_or_else(|error| panic!("valid per the schema but refused: {text}: {error:?}"));
        assert_eq!(op_name(&frame), value["op"], "{text}");
        match &frame {
            ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
                resend,
                reply_to,
                mentions,
            } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
                let listed: Vec<&str> = value["mentions"]
                    .as_array()
                    .map(|list| list.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert_eq!(
                    mentions
                        .iter()
                        .map(|user| user.as_str())
                        .collect::<Vec<_>>(),
                    listed
                );
                assert_eq!(client_msg_id.as_str(), value["client_msg_id"]);
                assert_eq!(body, &value["body"]);
                assert_eq!(*resend, value["resend"].as_bool().unwrap_or(false));
                assert_eq!(
                    reply_to.map(|id| json!(id.to_string())),
                    value.get("reply_to").cloned()
                );
            }
            ClientFrame::Typing { conversation_id } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
            }
            ClientFrame::Read {
                conversation_id,
                message_id,
            } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
                assert_eq!(message_id.to_string(), value["message_id"]);
            }
            ClientFrame::Edit {
                conversation_id,
                message_id,
                body,
                client_msg_id,
            } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
                assert_eq!(message_id.to_string(), value["message_id"]);
                assert_eq!(body, &value["body"]);
                assert_eq!(
                    client_msg_id.as_ref().map(|id| json!(id.as_str())),
                    value.get("client_msg_id").cloned()
                );
            }
            ClientFrame::Delete {
                conversation_id,
                message_id,
                client_msg_id,
            } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
                assert_eq!(message_id.to_string(), value["message_id"]);
                assert_eq!(
                    client_msg_id.as_ref().map(|id| json!(id.as_str())),
                    value.get("client_msg_id").cloned()
                );
            }
            ClientFrame::React {
                conversation_id,
                message_id,
                reaction,
                add: _,
                client_msg_id,
            } => {
                assert_eq!(conversation_id.as_str(), value["conversation_id"]);
                assert_eq!(message_id.to_string(), value["message_id"]);
                assert_eq!(reaction, &value["reaction"]);
                assert_eq!(
                    client_msg_id.as_ref().map(|id| json!(id.as_str())),
                    value.get("client_msg_id").cloned()
                );
            }
            ClientFrame::AckSeq { seq } => assert_eq!(json!(seq), value["seq"]),
            ClientFrame::Ping => {}
            ClientFrame::Refresh { token } => assert_eq!(token, &value["token"]),
        }
        if !text.contains("from_a_newer_client") {
            examples.push(value);
        }
    }
    // The frames clients are told to send hold exactly what the schema describes.
    for example in &examples {
        schema.assert_conforms(example);
    }
    schema.assert_properties_covered_by(&examples);
}

#[test]
fn client_frames_invalid_per_schema_are_refused() {
    let schema = Schema::load(CLIENT_FRAME_SCHEMA);
    let server_schema = Schema::load(SERVER_FRAME_SCHEMA);
    let limits = FrameLimits::default();
    let too_long_body = "b".repeat(limits.max_body_bytes + 1);
    let too_long_id = "c".repeat(ConversationId::MAX_LEN + 1);
    let too_long_client_msg_id = "m".repeat(ClientMsgId::MAX_LEN + 1);
    let invalid = [
        ("null".to_owned(), "not an object"),
        ("[]".to_owned(), "not an object"),
        (r#""ping""#.to_owned(), "not an object"),
        ("{}".to_owned(), "no op"),
        (r#"{"op":"dance"}"#.to_owned(), "unknown op"),
        (r#"{"op":"refresh"}"#.to_owned(), "refresh without a token"),
        (r#"{"op":"refresh","token":""}"#.to_owned(), "empty token"),
        (r#"{"op":"refresh","token":" "}"#.to_owned(), "blank token"),
        (
            r#"{"op":"refresh","token":42}"#.to_owned(),
            "token is not a string",
        ),
        (r#"{"op":5}"#.to_owned(), "op is not a string"),
        (
            r#"{"op":"SEND","conversation_id":"c1","client_msg_id":"m1","body":"x"}"#.to_owned(),
            "ops are lower case",
        ),
        (
            r#"{"op":"send","client_msg_id":"m1","body":"x"}"#.to_owned(),
            "no conversation_id",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","body":"x"}"#.to_owned(),
            "no client_msg_id",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1"}"#.to_owned(),
            "no body",
        ),
        (send_frame("c1", "m1", ""), "empty body"),
        (send_frame("c1", "m1", " \n\t "), "blank body"),
        (send_frame("c1", "m1", &too_long_body), "body too long"),
        (send_frame("c 1", "m1", "x"), "space in conversation id"),
        (send_frame("c/1", "m1", "x"), "slash in conversation id"),
        (send_frame("", "m1", "x"), "empty conversation id"),
        (
            send_frame(&too_long_id, "m1", "x"),
            "conversation id too long",
        ),
        (send_frame("c1", "m 1", "x"), "space in client_msg_id"),
        (
            send_frame("c1", &too_long_client_msg_id, "x"),
            "client_msg_id too long",
        ),
        (send_frame("c1", "ｍ1", "x"), "non-ASCII client_msg_id"),
        (
            r#"{"op":"send","conversation_id":5,"client_msg_id":"m1","body":"x"}"#.to_owned(),
            "id is a number",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":5}"#.to_owned(),
            "body is a number",
        ),
        (
            r#"{"op":"typing"}"#.to_owned(),
            "typing without conversation",
        ),
        (
            r#"{"op":"typing","conversation_id":"c\u0000"}"#.to_owned(),
            "control character in id",
        ),
        (
            r#"{"op":"read","conversation_id":"c1"}"#.to_owned(),
            "read without message_id",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"0"}"#.to_owned(),
            "message id 0",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"-1"}"#.to_owned(),
            "negative message id",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"abc"}"#.to_owned(),
            "message id not a number",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"9223372036854775808"}"#.to_owned(),
            "message id beyond i64",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"18446744073709551616"}"#
                .to_owned(),
            "message id beyond u64",
        ),
        (
            r#"{"op":"read","message_id":"1"}"#.to_owned(),
            "read without conversation",
        ),
        (
            r#"{"op":"edit","conversation_id":"c1","body":"x"}"#.to_owned(),
            "edit without message_id",
        ),
        (
            r#"{"op":"edit","conversation_id":"c1","message_id":"42"}"#.to_owned(),
            "edit without body",
        ),
        (
            r#"{"op":"edit","conversation_id":"c1","message_id":"42","body":"  "}"#.to_owned(),
            "edit with a blank body",
        ),
        (
            r#"{"op":"edit","message_id":"42","body":"x"}"#.to_owned(),
            "edit without conversation",
        ),
        (
            r#"{"op":"delete","conversation_id":"c1"}"#.to_owned(),
            "delete without message_id",
        ),
        (
            r#"{"op":"delete","conversation_id":"c1","message_id":"0"}"#.to_owned(),
            "delete of message id 0",
        ),
        (
            r#"{"op":"delete","conversation_id":"c1","message_id":"42","client_msg_id":"a b"}"#
                .to_owned(),
            "space in a change's client_msg_id",
        ),
        (
            r#"{"op":"react","conversation_id":"c1","message_id":"42"}"#.to_owned(),
            "react without reaction",
        ),
        (
            r#"{"op":"react","conversation_id":"c1","message_id":"42","reaction":""}"#.to_owned(),
            "empty reaction",
        ),
        (
            r#"{"op":"unreact","conversation_id":"c1","message_id":"42","reaction":"thumbs up"}"#
                .to_owned(),
            "space in a reaction",
        ),
        (
            format!(
                r#"{{"op":"react","conversation_id":"c1","message_id":"42","reaction":"{}"}}"#,
                "x".repeat(33)
            ),
            "reaction too long",
        ),
        (
            r#"{"op":"unreact","conversation_id":"c1","reaction":"x"}"#.to_owned(),
            "unreact without message_id",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"x","reply_to":"0"}"#
                .to_owned(),
            "reply to message id 0",
        ),
        (
            format!(
                r#"{{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"x","mentions":[{}]}}"#,
                (0..21).map(|index| format!("\"u{index}\"")).collect::<Vec<_>>().join(",")
            ),
            "21 mentions",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"x","mentions":"bob"}"#
                .to_owned(),
            "mentions not a list",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"x","mentions":["b o b"]}"#
                .to_owned(),
            "mention of an invalid user id",
        ),
        (r#"{"op":"ack_seq"}"#.to_owned(), "ack_seq without seq"),
        (r#"{"op":"ack_seq","seq":-1}"#.to_owned(), "negative seq"),
        (
            r#"{"op":"ack_seq","seq":"7"}"#.to_owned(),
            "seq is a string",
        ),
        (r#"{"op":"ack_seq","seq":1.5}"#.to_owned(), "fractional seq"),
        (
            r#"{"op":"ack_seq","seq":18446744073709551616}"#.to_owned(),
            "seq beyond u64",
        ),
    ];
    for (text, why) in &invalid {
        let value: Option<Value> = serde_json::from_str(text).ok();
        if let Some(value) = &value {
            schema.assert_rejects(value, why);
        }
        let error = match decode_client_frame(text, &limits) {
            Ok(frame) => panic!("refused by the schema ({why}) but decoded: {text} -> {frame:?}"),
            Err(error) => error,
        };
        // The refusal goes back to the client as an `error` frame, which must
        // itself follow the server-frame schema.
        server_schema.assert_conforms(&parse_text(&ControlFrame::error(&error).encode()));
    }
    // Malformed JSON is not a document at all; the edge still answers it.
    let malformed = decode_client_frame("{\"op\":\"send\",", &limits).unwrap_err();
    assert_eq!(malformed.code, ErrorCode::Invalid);
    server_schema.assert_conforms(&parse_text(&ControlFrame::error(&malformed).encode()));
}

/// What JSON Schema cannot say, or what the edge tolerates beyond the
/// published contract. Asserted so that a change on either side is noticed
/// (and the schema descriptions, which mention each case, are updated).
#[test]
fn known_divergences_between_client_schema_and_decoder() {
    let schema = Schema::load(CLIENT_FRAME_SCHEMA);
    let limits = FrameLimits::default();

    // Valid per the schema, refused by the edge.
    let two_byte_body = "é".repeat(limits.max_body_bytes); // 4096 characters, 8192 bytes
    let padded_frame = format!(
        r#"{{"op":"ping","padding":"{}"}}"#,
        "p".repeat(limits.max_frame_bytes)
    );
    let refused_by_the_edge = [
        (
            send_frame("c1", "m1", &two_byte_body),
            ErrorCode::TooLarge,
            "maxLength counts characters, the limit is in bytes",
        ),
        (
            padded_frame,
            ErrorCode::TooLarge,
            "the frame size limit is not expressible",
        ),
        (
            r#"{"op":"ack_seq","seq":7.0}"#.to_owned(),
            ErrorCode::Invalid,
            "JSON Schema counts 7.0 as an integer",
        ),
    ];
    for (text, code, why) in &refused_by_the_edge {
        assert!(
            schema.is_valid(&parse_text(text)),
            "expected schema-valid ({why})"
        );
        let error = decode_client_frame(text, &limits).expect_err(why);
        assert_eq!(error.code, *code, "{why}");
    }

    // Refused by the schema, tolerated by the edge.
    let tolerated_by_the_edge = [
        (
            r#"{"op":"read","conversation_id":"c1","message_id":42}"#,
            "a message id as a JSON number",
        ),
        (
            r#"{"op":"read","conversation_id":"c1","message_id":"0042"}"#,
            "leading zeros in a message id",
        ),
        (
            r#"{"op":"send","conversation_id":"c1","client_msg_id":"m1","body":"x","resend":null}"#,
            "resend: null read as absent",
        ),
    ];
    for (text, why) in tolerated_by_the_edge {
        assert!(
            !schema.is_valid(&parse_text(text)),
            "expected schema-invalid ({why})"
        );
        assert!(
            decode_client_frame(text, &limits).is_ok(),
            "expected the edge to tolerate it ({why})"
        );
    }
}

/// The error codes an `error` frame may carry on the WebSocket. Exhaustive on
/// purpose: a new `ErrorCode` variant must be placed here, and the schema's
/// enum follows this list.
fn is_websocket_error_code(code: ErrorCode) -> bool {
    match code {
        ErrorCode::Invalid
        | ErrorCode::Forbidden
        | ErrorCode::TooLarge
        | ErrorCode::RateLimited
        | ErrorCode::Unavailable => true,
        // Token problems close the socket (4001) before any frame; membership
        // refusals say `forbidden` whether or not the conversation exists;
        // internal failures of a send are reported as `unavailable`;
        // `conflict` answers HTTP membership changes only.
        ErrorCode::Unauthorized
        | ErrorCode::NotFound
        | ErrorCode::Conflict
        | ErrorCode::Internal => false,
    }
}

const ALL_ERROR_CODES: [ErrorCode; 9] = [
    ErrorCode::Invalid,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

#[test]
fn server_frames_match_their_schema() {
    let schema = Schema::load(SERVER_FRAME_SCHEMA);
    let mut examples = Vec::new();
    let mut check = |text: String, optional_paths: &[&str]| {
        let value = parse_text(&text);
        schema.assert_produced_document(&value, optional_paths);
        examples.push(value);
    };

    let mut control_frames = vec![
        ControlFrame::Hello {
            session_id: SessionId::parse("s-0f3a").unwrap(),
            heartbeat_ms: 15_000,
            resumed: false,
        },
        ControlFrame::Hello {
            session_id: SessionId::parse("s-0f3a").unwrap(),
            heartbeat_ms: 15_000,
            resumed: true,
        },
        ControlFrame::Ack {
            client_msg_id: Some(client_msg_id("m1")),
            message_id: MessageId::from_u64(MAX_MESSAGE_ID),
            ts: 1_767_225_600_000,
        },
        // The ack of an edit or delete sent without a `client_msg_id`.
        ControlFrame::Ack {
            client_msg_id: None,
            message_id: MessageId::from_u64(42),
            ts: 1_767_225_700_000,
        },
        ControlFrame::Pong,
        ControlFrame::Refreshed {
            expires_at: 1_767_225_600,
        },
        ControlFrame::Reconnect {
            reason: "edge draining; reconnect and resume".to_owned(),
        },
        ControlFrame::Error {
            reference: Some("not a valid id, echoed as sent!".to_owned()),
            code: ErrorCode::Invalid,
            message: "`client_msg_id`: bad character".to_owned(),
        },
    ];
    for code in ALL_ERROR_CODES
        .into_iter()
        .filter(|code| is_websocket_error_code(*code))
    {
        for reference in [None, Some("m1".to_owned())] {
            control_frames.push(ControlFrame::Error {
                reference,
                code,
                message: format!("refused: {code}"),
            });
        }
    }
    for frame in &control_frames {
        let text = frame.encode();
        // `client_msg_id` is absent from the ack of a change sent without one.
        check(text.clone(), &["ref", "client_msg_id"]);
        assert_eq!(&serde_json::from_str::<ControlFrame>(&text).unwrap(), frame);
    }

    let view = MessageView::from(&message_record(987_654_321, "hello \"world\" 👋"));
    let deliverables = [
        Deliverable::message(&view),
        Deliverable::message_change(&change_record(MessageChange::Edit {
            body: "fixed \"world\" 👋".to_owned(),
        })),
        Deliverable::message_change(&change_record(MessageChange::Delete)),
        Deliverable::message_change(&change_record(MessageChange::ReactionAdd {
            reaction: "👍".to_owned(),
        })),
        Deliverable::message_change(&change_record(MessageChange::ReactionRemove {
            reaction: "+1".to_owned(),
        })),
        Deliverable::typing(&conversation("c1"), &user("alice")),
        Deliverable::read(&conversation("c1"), &user("bob"), MessageId::from_u64(42)),
        Deliverable::presence(&user("carol"), PresenceStatus::Online),
        Deliverable::presence(&user("carol"), PresenceStatus::Offline),
    ];
    for deliverable in &deliverables {
        for seq in [1, 2, u64::MAX] {
            check(deliverable.encode_with_seq(seq), &[]);
        }
    }
    // Membership frames, one per kind of record; a created conversation's
    // title is optional.
    for record in membership_records() {
        check(
            Deliverable::membership(&record).encode_with_seq(3),
            &["title"],
        );
    }
    // A reply names the message it answers (absent for other messages).
    let reply = MessageView {
        reply_to: Some(MessageId::from_u64(987_654_320)),
        ..view.clone()
    };
    check(
        Deliverable::message(&reply).encode_with_seq(9),
        &["message.reply_to"],
    );
    let mentioning = MessageView {
        mentions: vec![user("bob")],
        ..view.clone()
    };
    check(
        Deliverable::message(&mentioning).encode_with_seq(10),
        &["message.mentions"],
    );
    let message_frame = parse_text(&Deliverable::message(&view).encode_with_seq(5));
    assert_eq!(
        serde_json::from_value::<MessageView>(message_frame["message"].clone()).unwrap(),
        view
    );
    schema.assert_properties_covered_by(&examples);

    // The schema's error codes are exactly the WebSocket ones.
    let listed: BTreeSet<String> = schema.document["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|branch| branch["title"] == "error")
        .expect("an error branch")["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    let websocket: BTreeSet<String> = ALL_ERROR_CODES
        .into_iter()
        .filter(|code| is_websocket_error_code(*code))
        .map(|code| code.as_str().to_owned())
        .collect();
    assert_eq!(listed, websocket);
    for code in ALL_ERROR_CODES
        .into_iter()
        .filter(|code| !is_websocket_error_code(*code))
    {
        let frame = ControlFrame::Error {
            reference: None,
            code,
            message: "x".to_owned(),
        };
        schema.assert_rejects(&parse_text(&frame.encode()), "not a WebSocket error code");
    }

    let typing = parse_text(&deliverables[5].encode_with_seq(3));
    schema.assert_rejects(&with(&typing, "seq", json!(0)), "seq starts at 1");
    schema.assert_rejects(&without(&typing, "seq"), "stream frames carry seq");
    schema.assert_rejects(&with(&typing, "op", json!("typed")), "unknown op");
    schema.assert_rejects(
        &with(&message_frame, "message.message_id", json!(987_654_321)),
        "ids are strings",
    );
    schema.assert_rejects(
        &without(&message_frame, "message.body"),
        "a message has a body",
    );
    schema.assert_rejects(
        &json!({"op": "hello", "heartbeat_ms": 15000, "resumed": false}),
        "no session",
    );
    schema.assert_rejects(
        &json!({"op": "error", "ref": null, "code": "invalid", "message": "x"}),
        "ref is absent, never null",
    );
    schema.assert_rejects(
        &json!({"op": "error", "ref": "r".repeat(129), "code": "invalid", "message": "x"}),
        "ref longer than a client_msg_id",
    );
}
