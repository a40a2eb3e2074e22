//! The history bucket: the fixed time window that, with the conversation
//! id, forms a `messages` partition key (Discord's layout).
//!
//! A bucket is [`BUCKET_WINDOW_MS`] (10 days) of wall-clock time counted from
//! the message-id epoch (2024-01-01T00:00:00Z): bucket 0 is the first ten days
//! of 2024. The bucket of a message is derived from the timestamp inside its
//! id, so every writer and reader agrees on it without a lookup. Ten days
//! keeps a busy conversation's partition far below Cassandra's comfortable
//! ~100 MB (a conversation would need ~2 messages per second for ten days to
//! reach it with 1 KiB messages) while a quiet conversation's full history
//! walk costs one small query per ten days of its life.
//!
//! Pure functions only.

use chatpipe_core::MessageId;

/// Width of one bucket: 10 days, in milliseconds.
pub const BUCKET_WINDOW_MS: u64 = 10 * 24 * 60 * 60 * 1000;

/// How far ahead of the reader's clock a writer's clock may be and its
/// messages still be found by a history read that starts at "now" (edges
/// stamp message ids with their own clocks).
pub const MAX_CLOCK_SKEW_MS: u64 = 60 * 60 * 1000;

/// A bucket number (Cassandra `int`).
pub type Bucket = i32;

/// The bucket holding messages created at `unix_ms`.
pub fn bucket_of_unix_ms(unix_ms: u64) -> Bucket {
    let since_epoch = unix_ms.saturating_sub(MessageId::EPOCH_UNIX_MS);
    (since_epoch / BUCKET_WINDOW_MS) as Bucket
}

/// The bucket holding `message_id`.
pub fn bucket_of(message_id: MessageId) -> Bucket {
    bucket_of_unix_ms(message_id.unix_ms())
}

/// The first bucket a conversation created at `created_at_ms` can have
/// messages in, allowing for writers whose clocks lag behind.
pub fn first_bucket_for_creation(created_at_ms: u64) -> Bucket {
    bucket_of_unix_ms(created_at_ms.saturating_sub(MAX_CLOCK_SKEW_MS))
}

/// The newest bucket a read at `now_ms` has to look at, allowing for
/// writers whose clocks run ahead.
pub fn newest_bucket_at(now_ms: u64) -> Bucket {
    bucket_of_unix_ms(now_ms.saturating_add(MAX_CLOCK_SKEW_MS))
}

/// The first unix millisecond of `bucket`.
pub fn bucket_start_unix_ms(bucket: Bucket) -> u64 {
    MessageId::EPOCH_UNIX_MS + (bucket.max(0) as u64) * BUCKET_WINDOW_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatpipe_core::ids::MessageIdGenerator;

    #[test]
    fn buckets_follow_the_id_timestamp() {
        let boundary = bucket_start_unix_ms(70);
        let mut generator = MessageIdGenerator::new(3);
        let before = generator.next_id(boundary - 1);
        let at = generator.next_id(boundary);
        assert_eq!(bucket_of(before), 69);
        assert_eq!(bucket_of(at), 70);
        assert_eq!(bucket_of_unix_ms(MessageId::EPOCH_UNIX_MS), 0);
        assert_eq!(bucket_of_unix_ms(0), 0);
    }

    #[test]
    fn read_range_allows_for_skew() {
        let boundary = bucket_start_unix_ms(90);
        assert_eq!(first_bucket_for_creation(boundary + 1), 89);
        assert_eq!(first_bucket_for_creation(boundary + MAX_CLOCK_SKEW_MS), 90);
        assert_eq!(newest_bucket_at(boundary - 1), 90);
        assert_eq!(newest_bucket_at(boundary - MAX_CLOCK_SKEW_MS - 1), 89);
    }
}
