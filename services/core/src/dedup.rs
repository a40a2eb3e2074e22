//! Send de-duplication from partition order: the one rule every consumer of
//! `chat.messages` applies, as a pure, engine-free state machine.
//!
//! A send is identified by its [`SendKey`] — `(conversation_id, sender_id,
//! client_msg_id)`. Every attempt of one send is keyed by its conversation,
//! so all attempts land in the same Kafka partition, in an order every
//! consumer sees identically. The rule:
//!
//! > A record R is a **duplicate** iff an earlier record of the same
//! > partition with the same key was judged *first*, carries another
//! > `message_id`, and has a `ts` of at least `R.ts − W` (W: the
//! > de-duplication window, the retry window clients must stay within).
//!
//! (A record carrying the first attempt's own `message_id` again is a
//! producer-level duplicate of the message itself: written again
//! idempotently, and de-duplicated by id by clients, as before.)
//!
//! Because fan-out, persist and index each apply this rule to the same
//! partition order, they agree on which attempt is the message: the first
//! one. Recipients, history and search therefore all hold the first
//! attempt's body and id, and a marked resend learns that id from fan-out
//! (see `schemas/README.md`, "Send de-duplication").
//!
//! [`SendDedupWindow`] is the per-partition state: key hash → the first
//! attempt's `(message_id, ts, offset)`, forgotten once it is older than W
//! relative to the newest `ts` seen in the partition (and bounded in
//! count). Callers feed it the partition's records in offset order; the
//! Kafka adapter (`chatpipe_kafka::send_dedup`) rebuilds it by replaying the
//! partition after a restart or a rebalance.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

use crate::ids::{ClientMsgId, ConversationId, MessageId, UserId};
use crate::records::MessageRecord;

/// The identity of a send, shared by all its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendKey {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
}

impl SendKey {
    pub fn new(
        conversation_id: ConversationId,
        sender_id: UserId,
        client_msg_id: ClientMsgId,
    ) -> Self {
        Self {
            conversation_id,
            sender_id,
            client_msg_id,
        }
    }

    /// The key of a message record.
    pub fn of_record(record: &MessageRecord) -> Self {
        Self::new(
            record.conversation_id.clone(),
            record.sender_id.clone(),
            record.client_msg_id.clone(),
        )
    }

    /// A 128-bit digest of the key (truncated SHA-256 of the length-prefixed
    /// fields). A cryptographic digest, so that no user can craft a
    /// `client_msg_id` that collides with someone else's send and suppresses
    /// it; 128 bits, so that accidental collisions never happen in practice.
    /// Identical in every process and version, which lets every consumer
    /// judge identically.
    pub fn digest(&self) -> SendKeyDigest {
        send_key_digest(
            self.conversation_id.as_str(),
            self.sender_id.as_str(),
            self.client_msg_id.as_str(),
        )
    }
}

/// See [`SendKey::digest`].
pub type SendKeyDigest = u128;

/// [`SendKey::digest`] of a record, without cloning its ids.
pub fn record_digest(record: &MessageRecord) -> SendKeyDigest {
    send_key_digest(
        record.conversation_id.as_str(),
        record.sender_id.as_str(),
        record.client_msg_id.as_str(),
    )
}

/// [`SendKey::digest`] of a key's parts, as strings (for keys that arrive
/// over the wire, e.g. in a verdict).
pub fn send_key_digest(conversation: &str, sender: &str, client_msg_id: &str) -> SendKeyDigest {
    let mut hasher = Sha256::new();
    for field in [conversation, sender, client_msg_id] {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        hasher.update((field.len() as u32).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let full = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&full[..16]);
    u128::from_be_bytes(first)
}

/// The attempt that counts for a send: the first one in partition order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalSend {
    pub message_id: MessageId,
    pub ts: u64,
}

/// How a consumer must treat a message record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendVerdict {
    /// The first attempt of its send within the window: deliver, store,
    /// index.
    First,
    /// A later attempt of `original`: drop it everywhere.
    Duplicate(OriginalSend),
}

impl SendVerdict {
    pub fn is_duplicate(self) -> bool {
        matches!(self, SendVerdict::Duplicate(_))
    }

    /// The attempt that counts, given the record judged.
    pub fn original(self, record: &MessageRecord) -> OriginalSend {
        match self {
            SendVerdict::First => OriginalSend {
                message_id: record.message_id,
                ts: record.ts,
            },
            SendVerdict::Duplicate(original) => original,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FirstAttempt {
    original: OriginalSend,
    offset: i64,
}

/// The de-duplication state of one partition (see the module doc).
#[derive(Debug, Clone)]
pub struct SendDedupWindow {
    window_ms: u64,
    max_keys: usize,
    firsts: HashMap<SendKeyDigest, FirstAttempt>,
    /// First attempts in offset order, for eviction: (ts, digest, offset).
    order: VecDeque<(u64, SendKeyDigest, i64)>,
    newest_ts: u64,
    last_offset: Option<i64>,
    /// Per conversation (hashed): the largest message id seen, and its ts.
    newest_id: HashMap<u64, (MessageId, u64)>,
}

impl SendDedupWindow {
    /// `window_ms`: W. `max_keys`: most first attempts remembered; the
    /// oldest are forgotten beyond it (a memory bound that only matters when
    /// a partition carries more than `max_keys` sends per W).
    pub fn new(window_ms: u64, max_keys: usize) -> Self {
        Self {
            window_ms,
            max_keys: max_keys.max(1),
            firsts: HashMap::new(),
            order: VecDeque::new(),
            newest_ts: 0,
            last_offset: None,
            newest_id: HashMap::new(),
        }
    }

    /// Notes a first attempt's id in partition order and answers whether it
    /// is an **order inversion**: smaller than an id that came earlier in
    /// the same conversation. One edge never produces one (it takes ids and
    /// enqueues under one lock); two edges whose sends race can, because
    /// their ids come from two clocks. Consumers count it; order stays the
    /// partition's. Remembered for W, like the first attempts, and bounded
    /// by the same key count.
    pub fn is_inversion(&mut self, conversation: &str, message_id: MessageId, ts: u64) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        conversation.hash(&mut hasher);
        let conversation = hasher.finish();
        if self.newest_id.len() >= self.max_keys {
            let oldest_kept = self.newest_ts.saturating_sub(self.window_ms);
            self.newest_id
                .retain(|_, (_, seen_ts)| *seen_ts >= oldest_kept);
            if self.newest_id.len() >= self.max_keys {
                self.newest_id.clear();
            }
        }
        match self.newest_id.get_mut(&conversation) {
            Some((newest, _)) if *newest > message_id => true,
            Some(entry) => {
                *entry = (message_id, ts);
                false
            }
            None => {
                self.newest_id.insert(conversation, (message_id, ts));
                false
            }
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// First attempts remembered.
    pub fn len(&self) -> usize {
        self.firsts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.firsts.is_empty()
    }

    /// The offset of the last record judged.
    pub fn last_offset(&self) -> Option<i64> {
        self.last_offset
    }

    /// Judges the record at `offset` (offsets must increase from call to
    /// call; judging the first attempt itself again answers `First`).
    pub fn judge(
        &mut self,
        offset: i64,
        digest: SendKeyDigest,
        message_id: MessageId,
        ts: u64,
    ) -> SendVerdict {
        // The first attempt itself, judged again (a retried batch), or
        // written again with its own id (a producer-level duplicate, which
        // idempotent writes absorb and clients de-duplicate by id): it is
        // the message, not a retry of it.
        if let Some(first) = self.firsts.get(&digest)
            && (first.offset == offset || first.original.message_id == message_id)
        {
            return SendVerdict::First;
        }
        debug_assert!(
            self.last_offset.is_none_or(|last| offset > last),
            "records are judged in offset order"
        );
        self.last_offset = Some(offset);
        self.newest_ts = self.newest_ts.max(ts);
        self.evict();
        if let Some(first) = self.firsts.get(&digest)
            && first.original.ts.saturating_add(self.window_ms) >= ts
        {
            return SendVerdict::Duplicate(first.original);
        }
        self.firsts.insert(
            digest,
            FirstAttempt {
                original: OriginalSend { message_id, ts },
                offset,
            },
        );
        self.order.push_back((ts, digest, offset));
        if self.order.len() > self.max_keys {
            self.pop_oldest();
        }
        SendVerdict::First
    }

    /// Forgets first attempts older than W before the newest ts seen.
    fn evict(&mut self) {
        while let Some(&(ts, _, _)) = self.order.front() {
            if ts.saturating_add(self.window_ms) >= self.newest_ts {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((_, digest, offset)) = self.order.pop_front() else {
            return;
        };
        // A later first attempt of the same key replaced this entry.
        if self
            .firsts
            .get(&digest)
            .is_some_and(|first| first.offset == offset)
        {
            self.firsts.remove(&digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000;

    fn key(conversation: &str, sender: &str, client_msg_id: &str) -> SendKeyDigest {
        SendKey::new(
            ConversationId::parse(conversation).unwrap(),
            UserId::parse(sender).unwrap(),
            ClientMsgId::parse(client_msg_id).unwrap(),
        )
        .digest()
    }

    fn id(raw: u64) -> MessageId {
        MessageId::from_u64(raw)
    }

    #[test]
    fn an_id_smaller_than_an_earlier_one_of_its_conversation_is_an_inversion() {
        let mut window = SendDedupWindow::new(W, 100);
        assert!(!window.is_inversion("c1", id(10), 1));
        assert!(!window.is_inversion("c1", id(12), 2));
        // Another conversation has its own order.
        assert!(!window.is_inversion("c2", id(11), 2));
        assert!(window.is_inversion("c1", id(11), 3));
        // The inversion does not lower the conversation's newest id.
        assert!(window.is_inversion("c1", id(11), 3));
        assert!(!window.is_inversion("c1", id(13), 4));
    }

    #[test]
    fn the_key_covers_conversation_sender_and_client_msg_id() {
        let base = key("c1", "alice", "m-1");
        assert_eq!(base, key("c1", "alice", "m-1"));
        assert_ne!(base, key("c2", "alice", "m-1"));
        assert_ne!(base, key("c1", "bob", "m-1"));
        assert_ne!(base, key("c1", "alice", "m-2"));
        // Field boundaries matter.
        assert_ne!(key("ab", "c", "m"), key("a", "bc", "m"));
    }

    #[test]
    fn the_digest_is_stable_across_processes() {
        // Every consumer (and every version) must judge identically.
        assert_eq!(
            key("c1", "alice", "m-1"),
            key("c1", "alice", "m-1"),
            "deterministic"
        );
        let record_key = SendKey::new(
            ConversationId::parse("c1").unwrap(),
            UserId::parse("alice").unwrap(),
            ClientMsgId::parse("m-1").unwrap(),
        );
        assert_eq!(format!("{:032x}", record_key.digest()).len(), 32);
        assert_eq!(
            format!("{:032x}", record_key.digest()),
            "fa3dca5347323f57d104af2a4adf9af9"
        );
    }

    #[test]
    fn later_attempts_within_the_window_are_duplicates_of_the_first() {
        let mut window = SendDedupWindow::new(W, 100);
        let k = key("c", "a", "m");
        assert_eq!(window.judge(10, k, id(1), 100), SendVerdict::First);
        let original = OriginalSend {
            message_id: id(1),
            ts: 100,
        };
        assert_eq!(
            window.judge(11, k, id(2), 600),
            SendVerdict::Duplicate(original)
        );
        assert_eq!(
            window.judge(12, k, id(3), 100 + W),
            SendVerdict::Duplicate(original),
            "exactly W later is still within"
        );
        // Other keys are unaffected.
        assert_eq!(
            window.judge(13, key("c", "a", "other"), id(4), 700),
            SendVerdict::First
        );
        assert_eq!(
            window.judge(14, key("d", "a", "m"), id(5), 700),
            SendVerdict::First,
            "same client_msg_id in another conversation"
        );
    }

    #[test]
    fn duplicates_do_not_extend_the_window() {
        let mut window = SendDedupWindow::new(W, 100);
        let k = key("c", "a", "m");
        assert_eq!(window.judge(1, k, id(1), 0), SendVerdict::First);
        assert!(window.judge(2, k, id(2), W - 1).is_duplicate());
        // Measured from the first attempt, not from the last duplicate.
        assert_eq!(window.judge(3, k, id(3), W + 5), SendVerdict::First);
        assert_eq!(
            window.judge(4, k, id(4), W + 6),
            SendVerdict::Duplicate(OriginalSend {
                message_id: id(3),
                ts: W + 5
            })
        );
    }

    #[test]
    fn judging_the_first_attempt_again_keeps_it_first() {
        let mut window = SendDedupWindow::new(W, 100);
        let k = key("c", "a", "m");
        assert_eq!(window.judge(7, k, id(1), 50), SendVerdict::First);
        assert_eq!(window.judge(7, k, id(1), 50), SendVerdict::First);
        assert!(window.judge(8, k, id(2), 60).is_duplicate());
    }

    #[test]
    fn the_first_attempt_written_again_with_its_own_id_stays_the_message() {
        let mut window = SendDedupWindow::new(W, 100);
        let k = key("c", "a", "m");
        assert_eq!(window.judge(1, k, id(1), 10), SendVerdict::First);
        assert_eq!(window.judge(2, k, id(1), 10), SendVerdict::First);
        assert!(window.judge(3, k, id(2), 20).is_duplicate());
    }

    #[test]
    fn old_entries_are_evicted_by_the_newest_ts() {
        let mut window = SendDedupWindow::new(W, 100);
        for offset in 0..10u64 {
            window.judge(
                offset as i64,
                key("c", "a", &format!("m{offset}")),
                id(offset + 1),
                offset * 300,
            );
        }
        // Newest ts 2700: entries with ts < 1700 are gone.
        assert_eq!(window.len(), 4, "ts 1800, 2100, 2400, 2700 remain");
        assert_eq!(
            window.judge(20, key("c", "a", "m0"), id(99), 2701),
            SendVerdict::First
        );
    }

    #[test]
    fn the_count_bound_forgets_the_oldest() {
        let mut window = SendDedupWindow::new(u64::MAX / 2, 3);
        for offset in 0..5i64 {
            window.judge(
                offset,
                key("c", "a", &format!("m{offset}")),
                id(offset as u64 + 1),
                1,
            );
        }
        assert_eq!(window.len(), 3);
        assert_eq!(
            window.judge(5, key("c", "a", "m0"), id(50), 1),
            SendVerdict::First,
            "forgotten"
        );
        assert!(
            window
                .judge(6, key("c", "a", "m4"), id(51), 1)
                .is_duplicate()
        );
    }

    #[test]
    fn a_replaced_first_attempt_is_not_evicted_by_its_predecessor() {
        let mut window = SendDedupWindow::new(W, 100);
        let k = key("c", "a", "m");
        window.judge(1, k, id(1), 0);
        assert_eq!(window.judge(2, k, id(2), 2 * W), SendVerdict::First);
        // The first entry's eviction (ts 0) must not remove the second.
        window.judge(3, key("c", "a", "x"), id(3), 2 * W + 1);
        assert!(window.judge(4, k, id(4), 2 * W + 2).is_duplicate());
    }

    #[test]
    fn two_windows_fed_the_same_records_agree() {
        // What fan-out, persist and index rely on; and a window rebuilt
        // from a replay that starts W before agrees from there on.
        // Sends every 40 ms, each retried 300 ms and 900 ms later (within
        // W, as the contract asks of clients), the attempts interleaved.
        let mut attempts: Vec<(u64, SendKeyDigest)> = Vec::new();
        for send in 0..120u64 {
            let digest = key("c", "a", &format!("m{send}"));
            for delay in [0, 300, 900] {
                attempts.push((send * 40 + delay, digest));
            }
        }
        attempts.sort_by_key(|(ts, _)| *ts);
        let records: Vec<(i64, SendKeyDigest, u64)> = attempts
            .into_iter()
            .enumerate()
            .map(|(offset, (ts, digest))| (offset as i64, digest, ts))
            .collect();
        let mut full = SendDedupWindow::new(W, 10_000);
        let all: Vec<SendVerdict> = records
            .iter()
            .map(|(offset, digest, ts)| full.judge(*offset, *digest, id(*offset as u64 + 1), *ts))
            .collect();
        let resume_at = 200usize;
        let from_ts = records[resume_at].2 - W;
        let mut rebuilt = SendDedupWindow::new(W, 10_000);
        for (offset, digest, ts) in records.iter().filter(|(_, _, ts)| *ts >= from_ts) {
            let verdict = rebuilt.judge(*offset, *digest, id(*offset as u64 + 1), *ts);
            if *offset as usize >= resume_at {
                assert_eq!(verdict, all[*offset as usize], "offset {offset}");
            }
        }
        assert!(all.iter().any(|verdict| verdict.is_duplicate()));
        assert!(all.contains(&SendVerdict::First));
    }
}
