//! Newtype identifiers and the time-ordered message id generator.
//!
//! String ids are validated once, at the boundary, by their `parse`
//! constructor (also used by serde), so code that holds a `UserId` never
//! re-checks it. `MessageId` is a 64-bit Snowflake-style id: it sorts by time,
//! and is written as a decimal *string* in JSON because JavaScript clients
//! cannot hold 64-bit integers in a number.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} bytes")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may only hold letters, digits and `_ - . : @`")]
    BadCharacter { kind: &'static str },
    #[error("message id must be a positive 64-bit decimal number")]
    BadMessageId,
}

fn is_token_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '_' | '-' | '.' | ':' | '@')
}

fn validate_token(kind: &'static str, raw: &str, max: usize) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if raw.len() > max {
        return Err(IdError::TooLong { kind, max });
    }
    if !raw.chars().all(is_token_char) {
        return Err(IdError::BadCharacter { kind });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `raw`.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                validate_token($kind, &raw, Self::MAX_LEN)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Lookups by `&str` in maps keyed by the id (hash and equality are
        /// the inner string's).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(raw: &str) -> Result<Self, IdError> {
                Self::parse(raw)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A user, as named by the `sub` claim of the user's token.
    UserId,
    "user_id",
    64
);
string_id!(
    /// A conversation (1:1 or group); the Kafka key of every record about it.
    ConversationId,
    "conversation_id",
    64
);
string_id!(
    /// The client's own id for a `send`, its idempotency key per user.
    ClientMsgId,
    "client_msg_id",
    128
);
string_id!(
    /// One WebSocket session on one edge, the handle for `resume`.
    SessionId,
    "session_id",
    64
);
string_id!(
    /// One edge process, as announced in the session-route topic.
    EdgeId,
    "edge_id",
    64
);

/// A time-ordered 64-bit message id: 41 bits of milliseconds since
/// [`MessageId::EPOCH_UNIX_MS`], 10 bits of generator (worker) id, 12 bits of
/// sequence within the millisecond.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

impl MessageId {
    /// 2024-01-01T00:00:00Z.
    pub const EPOCH_UNIX_MS: u64 = 1_704_067_200_000;
    const WORKER_BITS: u32 = 10;
    const SEQUENCE_BITS: u32 = 12;
    pub const MAX_WORKER: u16 = (1 << Self::WORKER_BITS) - 1;
    const MAX_SEQUENCE: u64 = (1 << Self::SEQUENCE_BITS) - 1;

    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Cassandra's `bigint` is signed; ids stay below 2^63 for 69 years.
    pub const fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// The smallest id that any message created at or after `unix_ms` can have.
    pub fn lower_bound_for_unix_ms(unix_ms: u64) -> Self {
        let since_epoch = unix_ms.saturating_sub(Self::EPOCH_UNIX_MS);
        Self(since_epoch << (Self::WORKER_BITS + Self::SEQUENCE_BITS))
    }

    /// The wall-clock millisecond this id was generated in.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> (Self::WORKER_BITS + Self::SEQUENCE_BITS)) + Self::EPOCH_UNIX_MS
    }

    /// Reads a decimal id. Only digits: `u64::from_str` alone would also
    /// take a leading `+`, which the published schemas refuse (leading
    /// zeros stay tolerated, as `schemas/ws/v1/client-frame.json` says).
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if !raw.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(IdError::BadMessageId);
        }
        match raw.parse::<u64>() {
            Ok(value) if value > 0 && value <= i64::MAX as u64 => Ok(Self(value)),
            _ => Err(IdError::BadMessageId),
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "MessageId({})", self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = IdError;
    fn from_str(raw: &str) -> Result<Self, IdError> {
        Self::parse(raw)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => Self::parse(&text).map_err(serde::de::Error::custom),
            Raw::Number(number) => {
                Self::parse(&number.to_string()).map_err(serde::de::Error::custom)
            }
        }
    }
}

/// Generates strictly increasing [`MessageId`]s for one worker.
///
/// Pure: the caller passes the clock. If the clock steps back, ids keep
/// increasing from the last millisecond used; if 4096 ids are taken within
/// one millisecond, the generator borrows the next millisecond instead of
/// blocking. Two generators must never share a worker id.
#[derive(Debug)]
pub struct MessageIdGenerator {
    worker_id: u16,
    last_ms: u64,
    sequence: u64,
}

impl MessageIdGenerator {
    pub fn new(worker_id: u16) -> Self {
        debug_assert!(worker_id <= MessageId::MAX_WORKER);
        Self {
            worker_id: worker_id & MessageId::MAX_WORKER,
            last_ms: 0,
            sequence: 0,
        }
    }

    pub fn next_id(&mut self, now_unix_ms: u64) -> MessageId {
        let now_since_epoch = now_unix_ms.saturating_sub(MessageId::EPOCH_UNIX_MS);
        if now_since_epoch > self.last_ms {
            self.last_ms = now_since_epoch;
            self.sequence = 0;
        } else if self.sequence == MessageId::MAX_SEQUENCE {
            self.last_ms += 1;
            self.sequence = 0;
        } else {
            self.sequence += 1;
        }
        let raw = (self.last_ms << (MessageId::WORKER_BITS + MessageId::SEQUENCE_BITS))
            | (u64::from(self.worker_id) << MessageId::SEQUENCE_BITS)
            | self.sequence;
        MessageId(raw)
    }
}

/// A worker id derived from a stable name, for deployments that do not
/// assign one explicitly (FNV-1a folded to 10 bits). Collisions are possible
/// across many edges: production deployments should set worker ids.
pub fn worker_id_from_name(name: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % (u32::from(MessageId::MAX_WORKER) + 1)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ids_are_validated() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("user:42@example.org").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty { kind: "user_id" }));
        assert!(matches!(
            UserId::parse("a b"),
            Err(IdError::BadCharacter { .. })
        ));
        assert!(matches!(
            UserId::parse("x".repeat(65)),
            Err(IdError::TooLong { .. })
        ));
        assert!(serde_json::from_str::<UserId>("\"bad\\nid\"").is_err());
    }

    #[test]
    fn message_ids_increase_and_carry_time() {
        let mut generator = MessageIdGenerator::new(7);
        let now = 1_800_000_000_000;
        let first = generator.next_id(now);
        let second = generator.next_id(now);
        let after_clock_went_back = generator.next_id(now - 5_000);
        assert!(first < second && second < after_clock_went_back);
        assert_eq!(first.unix_ms(), now);
        assert!(MessageId::lower_bound_for_unix_ms(now) <= first);
        assert!(MessageId::lower_bound_for_unix_ms(now + 1) > after_clock_went_back);
    }

    #[test]
    fn sequence_overflow_borrows_the_next_millisecond() {
        let mut generator = MessageIdGenerator::new(1);
        let now = 1_800_000_000_000;
        let ids: Vec<MessageId> = (0..5000).map(|_| generator.next_id(now)).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids.last().map(|id| id.unix_ms()), Some(now + 1));
    }

    #[test]
    fn message_id_json_is_a_string_and_accepts_numbers() {
        let id = MessageId::from_u64(123_456_789_012_345);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"123456789012345\"");
        assert_eq!(
            serde_json::from_str::<MessageId>("123456789012345").unwrap(),
            id
        );
        assert!(serde_json::from_str::<MessageId>("\"-1\"").is_err());
        assert!(serde_json::from_str::<MessageId>("\"0\"").is_err());
        // Found by fuzzing: `u64::from_str` takes a sign.
        assert_eq!(MessageId::parse("+5"), Err(IdError::BadMessageId));
        assert_eq!(MessageId::parse("0042"), Ok(MessageId::from_u64(42)));
    }

    #[test]
    fn worker_ids_fit_ten_bits() {
        assert!(worker_id_from_name("edge-1") <= MessageId::MAX_WORKER);
        assert_ne!(worker_id_from_name("edge-1"), worker_id_from_name("edge-2"));
    }
}
