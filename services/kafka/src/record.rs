//! [`Record`]: one consumed Kafka record, owned, in chatpipe's own type.
//!
//! Every consumer of this crate (the group loop, the tails) hands out
//! `Record`s, so no other crate sees an rdkafka type. The accessors are
//! named like rdkafka's `Message` trait (`topic()`, `partition()`,
//! `offset()`, `key()`, `payload()`) so handler code reads the same, plus
//! [`Record::timestamp_ms`]. [`Record::new`] and its `with_*` methods build
//! records for tests without a broker.

use std::sync::Arc;

/// A record read from Kafka: its coordinates, key, payload and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Shared among the records of one topic (no allocation per record).
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
}

impl Record {
    /// A record at `topic`/`partition`/`offset` with no key, no payload (a
    /// tombstone) and no timestamp; add them with the `with_*` methods.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            payload: None,
            timestamp_ms: None,
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn with_payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The topic the record was read from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The key's bytes; `None` for a record without a key.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The key as UTF-8, when it is (chatpipe's keys always are).
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|key| std::str::from_utf8(key).ok())
    }

    /// The value's bytes; `None` for a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    /// Create or log-append time in Unix milliseconds, when the broker
    /// reported one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Copies a received rdkafka message; `topic` is the interned name of
    /// its topic (see [`TopicInterner`]).
    pub(crate) fn from_message<M: rdkafka::Message>(message: &M, topic: Arc<str>) -> Self {
        debug_assert_eq!(&*topic, message.topic());
        Self {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }
}

/// Hands out one shared `Arc<str>` per topic a consumer names up front, so
/// its records share their topic string.
#[derive(Debug, Default)]
pub(crate) struct TopicInterner {
    names: Vec<Arc<str>>,
}

impl TopicInterner {
    pub(crate) fn new<'a>(topics: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            names: topics.into_iter().map(Arc::from).collect(),
        }
    }

    pub(crate) fn get(&self, topic: &str) -> Arc<str> {
        match self.names.iter().find(|name| &***name == topic) {
            Some(found) => found.clone(),
            // A topic not named up front: correct, only not shared.
            None => Arc::from(topic),
        }
    }

    /// Copies `message` into a [`Record`].
    pub(crate) fn record<M: rdkafka::Message>(&self, message: &M) -> Record {
        Record::from_message(message, self.get(message.topic()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_record_reads_back_what_it_was_given() {
        let record = Record::new("chat.messages", 3, 42)
            .with_key("c-1")
            .with_payload(b"{}".to_vec())
            .with_timestamp_ms(1_700_000_000_000);
        assert_eq!(record.topic(), "chat.messages");
        assert_eq!(record.partition(), 3);
        assert_eq!(record.offset(), 42);
        assert_eq!(record.key(), Some(&b"c-1"[..]));
        assert_eq!(record.key_str(), Some("c-1"));
        assert_eq!(record.payload(), Some(&b"{}"[..]));
        assert_eq!(record.timestamp_ms(), Some(1_700_000_000_000));
        let tombstone = Record::new("chat.sessions", 0, 0);
        assert_eq!((tombstone.key(), tombstone.payload()), (None, None));
    }

    #[test]
    fn the_interner_shares_one_string_per_topic() {
        let interner = TopicInterner::new(["a", "b"]);
        let first = interner.get("a");
        assert!(Arc::ptr_eq(&first, &interner.get("a")));
        assert_eq!(&*interner.get("c"), "c");
        assert_eq!(&*interner.get("b"), "b");
    }

    #[test]
    fn an_owned_rdkafka_message_converts_with_its_timestamp() {
        let message = rdkafka::message::OwnedMessage::new(
            Some(b"v".to_vec()),
            Some(b"k".to_vec()),
            "t".to_owned(),
            rdkafka::Timestamp::CreateTime(1234),
            2,
            7,
            None,
        );
        let record = TopicInterner::default().record(&message);
        assert_eq!(
            record,
            Record::new("t", 2, 7)
                .with_key("k")
                .with_payload("v")
                .with_timestamp_ms(1234)
        );
    }
}
