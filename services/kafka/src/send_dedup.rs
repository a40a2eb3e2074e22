//! The send de-duplication every consumer of `chat.messages` calls, so that
//! fan-out, persist and index judge with ONE implementation.
//!
//! [`PartitionedSendDedup`] keeps a [`SendDedupWindow`] per partition and
//! the next offset it expects there. A record at that offset is judged
//! directly. A record it has judged recently (a batch the consumer loop
//! retries, or a tail re-delivered after a rebalance) gets the same verdict
//! again, from a bounded memo. Any other record (the first of a partition
//! after a start or an assignment, or one after a gap) first rebuilds the
//! partition's window: the partition is replayed with [`ReplayReader`] from
//! the first record at or after `ts − W − margin` up to that record,
//! exclusive, judging those records without handling them. Since a
//! window's state depends only on the partition's content, a rebuilt
//! window judges what follows as one that never stopped would, for every
//! send whose attempts stay within W of the first (the retry window
//! clients are asked to respect; `margin` absorbs clock skew between edges
//! and Kafka's timestamps).
//!
//! Cost: nothing in steady state beyond a hash per record; a replay of up
//! to W + margin of one partition when a consumer starts or takes over a
//! partition.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chatpipe_core::dedup::{SendDedupWindow, SendVerdict, record_digest};
use chatpipe_core::records::{MessageRecord, MessagesTopicRecord, decode_messages_record};
use chatpipe_runtime::metrics::Counter;
use prometheus_client::registry::Registry;

use crate::config::KafkaConfig;
use crate::replay::{ReplayError, ReplayReader};

/// How consumers de-duplicate sends. The same values must be configured for
/// fan-out, persist and index (they are the defaults unless overridden).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendDedupSettings {
    /// W: a record is a duplicate of an earlier first attempt with the
    /// same key at most this much older. Clients must retry within it.
    pub window: Duration,
    /// How much further back than W a rebuild replays (clock skew between
    /// edges, and between an edge's `ts` and Kafka's record timestamp).
    pub replay_margin: Duration,
    /// Most first attempts remembered per partition.
    pub max_keys_per_partition: usize,
    /// Longest one replay may take before the batch fails (retriably).
    pub replay_deadline: Duration,
}

/// The default W: ten minutes.
pub const DEFAULT_SEND_DEDUP_WINDOW_MS: u64 = 600_000;

impl Default for SendDedupSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(DEFAULT_SEND_DEDUP_WINDOW_MS),
            replay_margin: Duration::from_secs(60),
            max_keys_per_partition: 2_000_000,
            replay_deadline: Duration::from_secs(60),
        }
    }
}

impl SendDedupSettings {
    /// The defaults with W = `window_ms`.
    pub fn with_window_ms(window_ms: u64) -> Self {
        Self {
            window: Duration::from_millis(window_ms),
            ..Self::default()
        }
    }
}

/// Counters of one consumer's de-duplication.
#[derive(Debug, Clone, Default)]
pub struct SendDedupMetrics {
    /// Records judged duplicates and dropped.
    pub duplicates: Counter,
    /// Windows rebuilt by a replay.
    pub replays: Counter,
    /// Records read by replays.
    pub replayed_records: Counter,
    /// First attempts whose id is smaller than an earlier id of their
    /// conversation (see `SendDedupWindow::is_inversion`).
    pub order_inversions: Counter,
}

impl SendDedupMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "send_duplicates_dropped",
            "Message records dropped as retries of an earlier send (same conversation, sender and client_msg_id within the window)",
            self.duplicates.clone(),
        );
        registry.register(
            "send_dedup_replays",
            "Partition windows rebuilt by replaying the partition (starts, rebalances, gaps)",
            self.replays.clone(),
        );
        registry.register(
            "send_dedup_replayed_records",
            "Records read to rebuild de-duplication windows",
            self.replayed_records.clone(),
        );
        registry.register(
            "message_id_order_inversions",
            "Messages whose id is smaller than an earlier message id of their conversation in partition order (sends that raced on two edges); delivery, history and search keep partition order",
            self.order_inversions.clone(),
        );
    }
}

/// Verdicts remembered per partition for records judged again.
const MEMO_PER_PARTITION: usize = 16_384;

#[derive(Debug, Clone)]
struct PartitionState {
    window: SendDedupWindow,
    next_offset: i64,
    memo: VecDeque<(i64, SendVerdict)>,
}

impl PartitionState {
    fn remembered(&self, offset: i64) -> Option<SendVerdict> {
        let first = self.memo.front()?.0;
        if offset < first {
            return None;
        }
        // Offsets in the memo increase; a binary search finds the record.
        self.memo
            .binary_search_by_key(&offset, |(memo_offset, _)| *memo_offset)
            .ok()
            .map(|position| self.memo[position].1)
    }

    fn remember(&mut self, offset: i64, verdict: SendVerdict) {
        self.memo.push_back((offset, verdict));
        if self.memo.len() > MEMO_PER_PARTITION {
            self.memo.pop_front();
        }
        self.next_offset = offset + 1;
    }
}

/// One consumer's de-duplication of one topic (see the module doc). A
/// clone carries the state it had; a consumer that runs one handler per
/// partition clones an empty one for each (each then rebuilds its
/// partition's window on its first record).
#[derive(Debug, Clone)]
pub struct PartitionedSendDedup {
    topic: String,
    settings: SendDedupSettings,
    reader: ReplayReader,
    partitions: HashMap<i32, PartitionState>,
    metrics: SendDedupMetrics,
}

impl PartitionedSendDedup {
    pub fn new(
        kafka: &KafkaConfig,
        topic: impl Into<String>,
        settings: SendDedupSettings,
        metrics: SendDedupMetrics,
    ) -> Self {
        Self {
            topic: topic.into(),
            reader: ReplayReader::new(kafka, settings.replay_deadline),
            settings,
            partitions: HashMap::new(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &SendDedupMetrics {
        &self.metrics
    }

    fn window_ms(&self) -> u64 {
        self.settings.window.as_millis() as u64
    }

    /// Notes a record of the topic that is not a message record (a change
    /// record, or one no consumer can decode): it judges nothing.
    pub fn skip(&mut self, partition: i32, offset: i64) {
        if let Some(state) = self.partitions.get_mut(&partition)
            && state.next_offset == offset
        {
            state.next_offset = offset + 1;
        }
    }

    /// Judges the message record at `partition`/`offset`. Records of one
    /// partition must be passed in offset order (records judged before may
    /// come again). Counts duplicates the first time they are judged.
    pub async fn judge(
        &mut self,
        partition: i32,
        offset: i64,
        record: &MessageRecord,
    ) -> Result<SendVerdict, ReplayError> {
        let contiguous = match self.partitions.get(&partition) {
            Some(state) if state.next_offset == offset => true,
            Some(state) if offset < state.next_offset => {
                if let Some(verdict) = state.remembered(offset) {
                    return Ok(verdict);
                }
                false
            }
            _ => false,
        };
        if !contiguous {
            self.rebuild(partition, offset, record.ts).await?;
        }
        let state = self
            .partitions
            .get_mut(&partition)
            .expect("rebuilt or present");
        let verdict =
            state
                .window
                .judge(offset, record_digest(record), record.message_id, record.ts);
        state.remember(offset, verdict);
        if verdict.is_duplicate() {
            self.metrics.duplicates.inc();
        } else if state.window.is_inversion(
            record.conversation_id.as_str(),
            record.message_id,
            record.ts,
        ) {
            self.metrics.order_inversions.inc();
            tracing::debug!(
                message_id = %record.message_id,
                conversation_id = %record.conversation_id,
                "a message id smaller than an earlier one of its conversation (two edges raced)"
            );
        }
        Ok(verdict)
    }

    /// Replays the partition up to `until_offset` into a fresh window.
    async fn rebuild(
        &mut self,
        partition: i32,
        until_offset: i64,
        until_ts: u64,
    ) -> Result<(), ReplayError> {
        let reach_back = self.window_ms() + self.settings.replay_margin.as_millis() as u64;
        let from_unix_ms = until_ts.saturating_sub(reach_back) as i64;
        let window = SendDedupWindow::new(self.window_ms(), self.settings.max_keys_per_partition);
        let state = PartitionState {
            window,
            next_offset: until_offset,
            memo: VecDeque::new(),
        };
        let (mut state, replayed) = self
            .reader
            .read(
                &self.topic,
                partition,
                from_unix_ms,
                until_offset,
                state,
                |state: &mut PartitionState, offset, payload| {
                    // Only message records are sends: change records and
                    // undecodable ones judge nothing, as in `skip`.
                    let Some(MessagesTopicRecord::Message(record)) =
                        payload.and_then(|bytes| decode_messages_record(bytes).ok())
                    else {
                        return;
                    };
                    let verdict = state.window.judge(
                        offset,
                        record_digest(&record),
                        record.message_id,
                        record.ts,
                    );
                    if !verdict.is_duplicate() {
                        // Seeds the conversation's newest id (counted when
                        // first judged, not again).
                        state.window.is_inversion(
                            record.conversation_id.as_str(),
                            record.message_id,
                            record.ts,
                        );
                    }
                    state.memo.push_back((offset, verdict));
                    if state.memo.len() > MEMO_PER_PARTITION {
                        state.memo.pop_front();
                    }
                },
            )
            .await?;
        state.next_offset = until_offset;
        self.metrics.replays.inc();
        self.metrics.replayed_records.inc_by(replayed);
        tracing::debug!(topic = %self.topic, partition, until_offset, replayed, "send de-duplication window rebuilt");
        self.partitions.insert(partition, state);
        Ok(())
    }
}
