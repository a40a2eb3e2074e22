//! History: writing messages and their changes (edits, deletes)
//! idempotently and reading pages of them across bucket boundaries.
//!
//! Write times make the result independent of the order writes land in
//! (a batch writes its rows concurrently; a replay writes them again): a
//! message is written at its own time, an edit at the edit's time (always
//! later), a delete at [`DELETE_WRITE_TIMESTAMP_US`], above them all. So
//! the latest edit wins, and a deletion is final (it drops the body and the
//! mentions). A message's mentions are a column of its row, written with
//! it. Reactions and replies
//! live in their own table (`message_relations`, same partition key):
//! reactions are written at the reaction change's time, a reply's target
//! with the message; a history page reads them with one range read per
//! bucket ([`CassandraStore::attach_relations`]).

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use scylla::value::MaybeUnset;
use serde::Serialize;

use chatpipe_core::ids::{ClientMsgId, ConversationId, MessageId, UserId};
use chatpipe_core::membership::Role;
use chatpipe_core::records::{MessageChange, MessageChangeRecord, MessageRecord};
use chatpipe_core::store::{MessageStore, StoreError, StoredMessageFacts};

use crate::bucket::{Bucket, bucket_of, newest_bucket_at};
use crate::conversations::Conversation;
use crate::error::CassandraError;
use crate::store::CassandraStore;

/// Rows per unlogged batch; the cap keeps mutations small.
pub const MAX_ROWS_PER_BATCH: usize = 100;

/// Default of `CassandraConfig::max_partitions_per_batch`: most
/// partitions one multi-partition unlogged batch covers. Cassandra
/// logs a warning (and warns the client) for an unlogged batch over more
/// partitions than `unlogged_batch_across_partitions_warn_threshold`,
/// 10 by default.
pub const MAX_PARTITIONS_PER_BATCH: usize = 10;

/// Most estimated bytes of a batch covering more than one partition.
/// Cassandra warns above `batch_size_warn_threshold` (5 KiB by default)
/// and refuses above `batch_size_fail_threshold` (50 KiB); a partition
/// whose rows alone are larger is written on its own (single-partition
/// batches are exempt from both).
pub const MAX_MULTI_PARTITION_BATCH_BYTES: usize = 4 * 1024;

/// Bytes a history row adds to a mutation besides its text columns
/// (message id, timestamps, cell overhead): a generous estimate, so that
/// [`MAX_MULTI_PARTITION_BATCH_BYTES`] stays under Cassandra's own count.
const ROW_OVERHEAD_BYTES: usize = 64;

/// The write time (µs) of a deletion: far above any real write time
/// (about the year 148,000), so nothing written later in real time undoes it.
pub const DELETE_WRITE_TIMESTAMP_US: i64 = i64::MAX / 2;

/// A message as history returns it. A deleted message is a tombstone:
/// `deleted` is true and `body` is empty (and absent from its JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    /// Never empty for a message that is not deleted (blank bodies are
    /// refused), empty for a tombstone.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Unix ms at which the edge accepted the message.
    pub ts: u64,
    /// Unix ms of the latest edit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The message this one replies to (see
    /// [`CassandraStore::attach_relations`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Reactions, counted per reaction (see
    /// [`CassandraStore::attach_relations`]; empty until attached, and for
    /// a tombstone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
    /// The users the message mentions, as its record named them (each
    /// once, never the sender); empty when it mentions nobody, for a
    /// tombstone, and for messages stored before the `mentions` column
    /// existed (see `schemas/cql/chatpipe.cql`, Migrations).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

/// `message_relations.relation` of a reaction row.
const RELATION_REACTION: &str = "reaction";
/// `message_relations.relation` of a reply's target row.
const RELATION_REPLY_TO: &str = "reply_to";

/// How many users reacted to a message with one reaction, and whether the
/// reader is one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReactionCount {
    pub reaction: String,
    pub count: u64,
    /// The user who reads history reacted so.
    pub me: bool,
}

/// Most relation rows one history page reads per bucket; reactions beyond
/// it (a page of very popular messages) are not counted.
pub const MAX_RELATION_ROWS_PER_PAGE: i32 = 10_000;

/// Counts reactions rows `(message, reaction, user)` per message and
/// reaction, marking those of `reader`; most reacted first, then by
/// reaction. Pure.
pub fn count_reactions<'a>(
    rows: impl IntoIterator<Item = (MessageId, &'a str, &'a str)>,
    reader: &UserId,
) -> BTreeMap<MessageId, Vec<ReactionCount>> {
    let mut counted: BTreeMap<MessageId, BTreeMap<&str, (u64, bool)>> = BTreeMap::new();
    for (message_id, reaction, user) in rows {
        let entry = counted
            .entry(message_id)
            .or_default()
            .entry(reaction)
            .or_default();
        entry.0 += 1;
        entry.1 |= user == reader.as_str();
    }
    counted
        .into_iter()
        .map(|(message_id, reactions)| {
            let mut list: Vec<ReactionCount> = reactions
                .into_iter()
                .map(|(reaction, (count, me))| ReactionCount {
                    reaction: reaction.to_owned(),
                    count,
                    me,
                })
                .collect();
            list.sort_by(|a, b| {
                b.count
                    .cmp(&a.count)
                    .then_with(|| a.reaction.cmp(&b.reaction))
            });
            (message_id, list)
        })
        .collect()
}

/// Which page of history to read.
///
/// - Without `after`: the newest `limit` messages older than `before` (or
///   the newest of all), newest first — scrolling back.
/// - With `after`: the `limit` messages *right after* `after` (and older
///   than `before` if given), still returned newest first — catching up:
///   the next page starts after the first (newest) message of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub before: Option<MessageId>,
    pub after: Option<MessageId>,
    pub limit: usize,
}

/// One page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<StoredMessage>,
    /// More messages exist in the direction read (older without `after`,
    /// newer with it).
    pub has_more: bool,
}

/// What [`CassandraStore::write_messages`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub rows: u64,
    pub requests: u64,
}

type MessageRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
    Option<Vec<String>>,
);

fn decode_message(conversation: &ConversationId, row: MessageRow) -> Option<StoredMessage> {
    let (message_id, sender_id, client_msg_id, body, ts, edited_at, deleted, mentions) = row;
    let message_id = MessageId::parse(&message_id.to_string()).ok()?;
    // A row without its sender is a partial row (for example an edit that
    // landed before the message itself): not a message yet.
    let sender_id = UserId::parse(sender_id?).ok()?;
    let client_msg_id = ClientMsgId::parse(client_msg_id?).ok()?;
    let deleted = deleted.unwrap_or(false);
    Some(StoredMessage {
        message_id,
        conversation_id: conversation.clone(),
        sender_id,
        client_msg_id,
        body: if deleted {
            String::new()
        } else {
            body.unwrap_or_default()
        },
        ts: ts.unwrap_or(0).max(0) as u64,
        edited_at: edited_at.map(|at| at.max(0) as u64),
        deleted,
        reply_to: None,
        reactions: Vec::new(),
        // Ids that no longer parse (never written by chatpipe) are left out.
        mentions: if deleted {
            Vec::new()
        } else {
            mentions
                .unwrap_or_default()
                .into_iter()
                .filter_map(|user| UserId::parse(user).ok())
                .collect()
        },
    })
}

/// The write time (µs) of a change record.
fn change_write_time_us(record: &MessageChangeRecord) -> i64 {
    match record.change {
        MessageChange::Delete => DELETE_WRITE_TIMESTAMP_US,
        MessageChange::Edit { .. }
        | MessageChange::ReactionAdd { .. }
        | MessageChange::ReactionRemove { .. } => (record.ts as i64).saturating_mul(1000),
    }
}

/// Runs `writes`, at most `max_in_flight` (at least one) at once; the
/// first failure ends the run. Callers build the futures up front (not in a
/// stream closure), which keeps their own future `Send` for callers that
/// spawn it.
async fn at_most_in_flight<T, E, F>(
    writes: Vec<F>,
    max_in_flight: usize,
) -> Result<(), CassandraError>
where
    F: Future<Output = Result<T, E>>,
    CassandraError: From<E>,
{
    futures::stream::iter(writes)
        .buffer_unordered(max_in_flight.max(1))
        .try_collect::<Vec<T>>()
        .await?;
    Ok(())
}

/// A history row's estimated share of a batch's size (see
/// [`MAX_MULTI_PARTITION_BATCH_BYTES`]).
fn estimated_row_bytes(record: &MessageRecord) -> usize {
    ROW_OVERHEAD_BYTES
        + record.body.len()
        + record.sender_id.as_str().len()
        + record.client_msg_id.as_str().len()
        + record.edge_id.as_str().len()
        + record
            .mentions
            .iter()
            .map(|user| user.as_str().len() + 4)
            .sum::<usize>()
}

/// Plans the write requests of a round: `partitions` are the rows of each
/// partition with the replica that owns it, `size` a row's estimated bytes.
/// A partition's rows are cut into chunks of [`MAX_ROWS_PER_BATCH`]; a full
/// chunk, or one over [`MAX_MULTI_PARTITION_BATCH_BYTES`], is a request of
/// its own, and the other chunks are packed per replica, in order, into
/// requests of at most `max_partitions` partitions (at least 1),
/// [`MAX_ROWS_PER_BATCH`] rows and [`MAX_MULTI_PARTITION_BATCH_BYTES`].
/// A partition's rows are never split across packed requests. Pure.
pub fn pack_write_requests<R: Ord, T: Copy>(
    partitions: impl IntoIterator<Item = (R, Vec<T>)>,
    max_partitions: usize,
    size: impl Fn(T) -> usize,
) -> Vec<Vec<T>> {
    let max_partitions = max_partitions.max(1);
    struct Pack<T> {
        rows: Vec<T>,
        partitions: usize,
        bytes: usize,
    }
    let mut requests = Vec::new();
    let mut open: BTreeMap<R, Pack<T>> = BTreeMap::new();
    for (replica, rows) in partitions {
        let mut replica = Some(replica);
        for chunk in rows.chunks(MAX_ROWS_PER_BATCH) {
            let bytes: usize = chunk.iter().map(|&row| size(row)).sum();
            if chunk.len() == MAX_ROWS_PER_BATCH || bytes > MAX_MULTI_PARTITION_BATCH_BYTES {
                requests.push(chunk.to_vec());
                continue;
            }
            // Only a partition's last chunk can be short, so this runs at
            // most once per partition.
            let Some(replica) = replica.take() else {
                requests.push(chunk.to_vec());
                continue;
            };
            let pack = open.entry(replica).or_insert_with(|| Pack {
                rows: Vec::new(),
                partitions: 0,
                bytes: 0,
            });
            if pack.partitions == max_partitions
                || pack.rows.len() + chunk.len() > MAX_ROWS_PER_BATCH
                || pack.bytes + bytes > MAX_MULTI_PARTITION_BATCH_BYTES
            {
                requests.push(std::mem::take(&mut pack.rows));
                pack.partitions = 0;
                pack.bytes = 0;
            }
            pack.rows.extend_from_slice(chunk);
            pack.partitions += 1;
            pack.bytes += bytes;
        }
    }
    requests.extend(
        open.into_values()
            .map(|pack| pack.rows)
            .filter(|rows| !rows.is_empty()),
    );
    requests
}

impl CassandraStore {
    /// Writes `records` in as few requests as Cassandra takes without
    /// complaint, with at most `max_in_flight` requests at once.
    ///
    /// Rows are grouped by partition `(conversation, bucket)`; a partition
    /// with [`MAX_ROWS_PER_BATCH`] rows (or more bytes than a
    /// multi-partition batch may hold) is a single-partition batch of its
    /// own, and the small partitions that share a replica (the first of
    /// the token's replicas, as the driver sees the ring) are packed into
    /// unlogged batches of up to `max_partitions_per_batch` (the config's)
    /// partitions (see [`pack_write_requests`]). The driver routes a batch by its first
    /// statement's token, so every packed batch goes to a replica of all
    /// its partitions. Under chat traffic (a row or two per conversation in
    /// a write round) this is what turns one request per message into one
    /// per ten: Cassandra's cost is per request far more than per row.
    ///
    /// Idempotent by message id. On error some requests may be written and
    /// others not; writing the same records again is always safe.
    pub async fn write_messages(
        &self,
        records: &[MessageRecord],
        max_in_flight: usize,
    ) -> Result<WriteReport, CassandraError> {
        let mut partitions: BTreeMap<(&str, Bucket), Vec<(Bucket, &MessageRecord)>> =
            BTreeMap::new();
        for record in records {
            let bucket = bucket_of(record.message_id);
            partitions
                .entry((record.conversation_id.as_str(), bucket))
                .or_default()
                .push((bucket, record));
        }
        let ring = self.inner.session.get_cluster_state();
        let keyspace = self.inner.config.keyspace.as_str();
        let by_replica = partitions
            .into_iter()
            .map(|((conversation, bucket), rows)| {
                // A ring the driver cannot place the key on (metadata not yet
                // read) only costs locality: the batch is still correct.
                let replica = ring
                    .get_endpoints(keyspace, "messages", &(conversation, bucket))
                    .ok()
                    .and_then(|replicas| replicas.first().map(|(node, _)| node.host_id))
                    .unwrap_or_default();
                (replica, rows)
            });
        let requests = pack_write_requests(
            by_replica,
            self.inner.config.max_partitions_per_batch,
            |(_, record)| estimated_row_bytes(record),
        );
        let report = WriteReport {
            rows: records.len() as u64,
            requests: requests.len() as u64,
        };
        let writes: Vec<_> = requests.iter().map(|rows| self.write_rows(rows)).collect();
        at_most_in_flight(writes, max_in_flight).await?;
        Ok(report)
    }

    /// Writes one message (used to isolate a record that fails on its own).
    pub async fn write_message(&self, record: &MessageRecord) -> Result<(), CassandraError> {
        self.write_rows(&[(bucket_of(record.message_id), record)])
            .await
    }

    /// Writes rows in one request: a single statement for one row, else an
    /// unlogged batch.
    async fn write_rows(&self, rows: &[(Bucket, &MessageRecord)]) -> Result<(), CassandraError> {
        let statement = &self.inner.statements.insert_message;
        let values = |&(bucket, record): &(Bucket, &MessageRecord)| {
            (
                record.conversation_id.as_str().to_owned(),
                bucket,
                record.message_id.as_i64(),
                record.sender_id.as_str().to_owned(),
                record.client_msg_id.as_str().to_owned(),
                record.body.clone(),
                record.ts as i64,
                record.edge_id.as_str().to_owned(),
                // Unset, not null: a message without mentions writes no cell
                // (a null would write a tombstone).
                if record.mentions.is_empty() {
                    MaybeUnset::Unset
                } else {
                    MaybeUnset::Set(
                        record
                            .mentions
                            .iter()
                            .map(|user| user.as_str().to_owned())
                            .collect::<Vec<String>>(),
                    )
                },
                (record.message_id.unix_ms() as i64).saturating_mul(1000),
            )
        };
        self.write_rows_of(statement, rows.iter().map(values).collect())
            .await
    }

    /// Applies edits and deletes (see the module doc for why the order of
    /// the writes does not matter), at most `max_in_flight` at once.
    /// Idempotent. A change to a message history does not hold writes a
    /// partial row that reads skip.
    pub async fn write_changes(
        &self,
        records: &[MessageChangeRecord],
        max_in_flight: usize,
    ) -> Result<WriteReport, CassandraError> {
        let writes: Vec<_> = records
            .iter()
            .map(|record| self.write_change(record))
            .collect();
        at_most_in_flight(writes, max_in_flight).await?;
        Ok(WriteReport {
            rows: records.len() as u64,
            requests: records.len() as u64,
        })
    }

    /// Applies one edit or delete.
    pub async fn write_change(&self, record: &MessageChangeRecord) -> Result<(), CassandraError> {
        let statements = &self.inner.statements;
        let key = (
            record.conversation_id.as_str(),
            bucket_of(record.message_id),
            record.message_id.as_i64(),
        );
        let written_at = change_write_time_us(record);
        match &record.change {
            MessageChange::Edit { body } => {
                self.inner
                    .session
                    .execute_unpaged(
                        &statements.edit_message,
                        (
                            written_at,
                            body.as_str(),
                            record.ts as i64,
                            key.0,
                            key.1,
                            key.2,
                        ),
                    )
                    .await?;
            }
            MessageChange::Delete => {
                self.inner
                    .session
                    .execute_unpaged(
                        &statements.delete_message,
                        (written_at, key.0, key.1, key.2),
                    )
                    .await?;
            }
            MessageChange::ReactionAdd { reaction } => {
                self.inner
                    .session
                    .execute_unpaged(
                        &statements.insert_relation,
                        (
                            key.0,
                            key.1,
                            key.2,
                            RELATION_REACTION,
                            reaction.as_str(),
                            record.actor_id.as_str(),
                            written_at,
                        ),
                    )
                    .await?;
            }
            MessageChange::ReactionRemove { reaction } => {
                self.inner
                    .session
                    .execute_unpaged(
                        &statements.delete_relation,
                        (
                            written_at,
                            key.0,
                            key.1,
                            key.2,
                            RELATION_REACTION,
                            reaction.as_str(),
                            record.actor_id.as_str(),
                        ),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Writes the reply targets of `records` that are replies (plain
    /// messages cost nothing here), at the message's own write time.
    /// Idempotent.
    pub async fn write_replies(
        &self,
        records: &[MessageRecord],
        max_in_flight: usize,
    ) -> Result<u64, CassandraError> {
        let writes: Vec<_> = records
            .iter()
            .filter_map(|record| Some((record, record.reply_to?)))
            .map(|(record, reply_to)| async move {
                self.inner
                    .session
                    .execute_unpaged(
                        &self.inner.statements.insert_relation,
                        (
                            record.conversation_id.as_str(),
                            bucket_of(record.message_id),
                            record.message_id.as_i64(),
                            RELATION_REPLY_TO,
                            reply_to.to_string(),
                            "",
                            (record.message_id.unix_ms() as i64).saturating_mul(1000),
                        ),
                    )
                    .await
            })
            .collect();
        let written = writes.len() as u64;
        at_most_in_flight(writes, max_in_flight).await?;
        Ok(written)
    }

    /// Fills in what points at the page's messages: reply targets, and
    /// reactions counted per reaction with `reader`'s own marked
    /// (tombstones keep neither): one range read per bucket the page spans.
    pub async fn attach_relations(
        &self,
        conversation: &ConversationId,
        page: &mut HistoryPage,
        reader: &UserId,
    ) -> Result<(), CassandraError> {
        let mut ranges: BTreeMap<Bucket, (i64, i64)> = BTreeMap::new();
        for message in page.messages.iter().filter(|message| !message.deleted) {
            let id = message.message_id.as_i64();
            let range = ranges
                .entry(bucket_of(message.message_id))
                .or_insert((id, id));
            range.0 = range.0.min(id);
            range.1 = range.1.max(id);
        }
        let mut reactions: Vec<(MessageId, String, String)> = Vec::new();
        let mut replies: BTreeMap<MessageId, MessageId> = BTreeMap::new();
        for (bucket, (lowest, highest)) in ranges {
            let result = self
                .inner
                .session
                .execute_unpaged(
                    &self.inner.statements.select_relations,
                    (
                        conversation.as_str(),
                        bucket,
                        lowest,
                        highest,
                        MAX_RELATION_ROWS_PER_PAGE,
                    ),
                )
                .await?
                .into_rows_result()?;
            for row in result.rows::<(i64, String, String, String)>()? {
                let (message_id, relation, value, user) = row?;
                let Ok(message_id) = MessageId::parse(&message_id.to_string()) else {
                    continue;
                };
                match relation.as_str() {
                    RELATION_REACTION => reactions.push((message_id, value, user)),
                    RELATION_REPLY_TO => {
                        if let Ok(target) = MessageId::parse(&value) {
                            replies.insert(message_id, target);
                        }
                    }
                    // Written by a newer version: not understood here.
                    _ => {}
                }
            }
        }
        let mut counted = count_reactions(
            reactions
                .iter()
                .map(|(id, reaction, user)| (*id, reaction.as_str(), user.as_str())),
            reader,
        );
        for message in page.messages.iter_mut().filter(|message| !message.deleted) {
            if let Some(found) = counted.remove(&message.message_id) {
                message.reactions = found;
            }
            message.reply_to = replies.get(&message.message_id).copied();
        }
        Ok(())
    }

    /// The sender, time and state of one stored message.
    pub async fn stored_message_facts(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
    ) -> Result<Option<StoredMessageFacts>, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_message_facts,
                (
                    conversation.as_str(),
                    bucket_of(message_id),
                    message_id.as_i64(),
                ),
            )
            .await?
            .into_rows_result()?;
        type FactsRow = (Option<String>, Option<i64>, Option<i64>, Option<bool>);
        let row = rows
            .maybe_first_row::<FactsRow>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        // A partial row (a change whose message history does not hold) is
        // no message.
        let Some((Some(sender_id), ts, edited_at, deleted)) = row else {
            return Ok(None);
        };
        let sender_id = UserId::parse(sender_id)
            .map_err(|error| CassandraError::InvalidData(error.to_string()))?;
        Ok(Some(StoredMessageFacts {
            sender_id,
            ts: ts.unwrap_or(0).max(0) as u64,
            edited_at: edited_at.map(|at| at.max(0) as u64),
            deleted: deleted.unwrap_or(false),
        }))
    }

    /// Reads one page of `conversation`'s history (see [`HistoryQuery`]),
    /// walking buckets from the one the cursor points into towards the
    /// conversation's first bucket (or, with `after`, towards now) until the
    /// page is full. `now_ms` bounds the newest bucket looked at.
    pub async fn read_history(
        &self,
        conversation: &Conversation,
        query: &HistoryQuery,
        now_ms: u64,
    ) -> Result<HistoryPage, CassandraError> {
        self.read_history_visible(conversation, query, None, now_ms)
            .await
    }

    /// [`Self::read_history`] for a reader who may see only messages from
    /// `visible_from` on (a newcomer of a conversation whose history
    /// visibility is `joined`): older messages are treated as if they did
    /// not exist, so pages end there and `has_more` says nothing of them.
    pub async fn read_history_visible(
        &self,
        conversation: &Conversation,
        query: &HistoryQuery,
        visible_from: Option<MessageId>,
        now_ms: u64,
    ) -> Result<HistoryPage, CassandraError> {
        let limit = query.limit.max(1);
        let wanted = limit + 1;
        let floor_exclusive = visible_from.map_or(0, |from| from.as_i64().saturating_sub(1));
        let lower_exclusive = query
            .after
            .map(MessageId::as_i64)
            .unwrap_or(0)
            .max(floor_exclusive);
        let upper_exclusive = query.before.map(MessageId::as_i64).unwrap_or(i64::MAX);
        let newest = newest_bucket_at(now_ms);
        let top = query
            .before
            .map(bucket_of)
            .map_or(newest, |bucket| bucket.min(newest));
        let bottom = query
            .after
            .into_iter()
            .chain(visible_from)
            .map(bucket_of)
            .fold(conversation.first_bucket, Bucket::max);
        let mut messages: Vec<StoredMessage> = Vec::with_capacity(wanted);
        if lower_exclusive < upper_exclusive && bottom <= top {
            let ascending = query.after.is_some();
            let statement = if ascending {
                &self.inner.statements.select_messages_ascending
            } else {
                &self.inner.statements.select_messages_descending
            };
            let mut bucket = if ascending { bottom } else { top };
            loop {
                let remaining = (wanted - messages.len()) as i32;
                let rows = self
                    .inner
                    .session
                    .execute_unpaged(
                        statement,
                        (
                            conversation.conversation_id.as_str(),
                            bucket,
                            lower_exclusive,
                            upper_exclusive,
                            remaining,
                        ),
                    )
                    .await?
                    .into_rows_result()?;
                for row in rows.rows::<MessageRow>()? {
                    if let Some(message) = decode_message(&conversation.conversation_id, row?) {
                        messages.push(message);
                    }
                }
                let done = messages.len() >= wanted
                    || if ascending {
                        bucket >= top
                    } else {
                        bucket <= bottom
                    };
                if done {
                    break;
                }
                bucket = if ascending { bucket + 1 } else { bucket - 1 };
            }
            if ascending {
                messages.reverse();
            }
        }
        let has_more = messages.len() > limit;
        if has_more {
            if query.after.is_some() {
                // Newest first: the surplus (newest) message is at the front.
                messages.remove(0);
            } else {
                messages.truncate(limit);
            }
        }
        debug_assert!(
            messages
                .windows(2)
                .all(|pair| pair[0].message_id > pair[1].message_id)
        );
        Ok(HistoryPage { messages, has_more })
    }
}

impl MessageStore for CassandraStore {
    async fn message_facts(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
    ) -> Result<Option<StoredMessageFacts>, StoreError> {
        Ok(self.stored_message_facts(conversation, message_id).await?)
    }

    async fn is_moderator(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        // Owners and admins moderate (as they remove members); a row
        // written before roles existed makes the creator the owner.
        Ok(self
            .conversation_with_member(conversation, user)
            .await?
            .and_then(|(_, member)| member)
            .is_some_and(|member| matches!(member.role, Role::Owner | Role::Admin)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_are_counted_per_message_with_the_readers_marked() {
        let (m1, m2) = (MessageId::from_u64(1), MessageId::from_u64(2));
        let rows = [
            (m1, "👍", "ann"),
            (m1, "👍", "bob"),
            (m1, "+1", "bob"),
            (m2, "🎉", "cid"),
        ];
        let counted = count_reactions(rows, &UserId::parse("bob").unwrap());
        assert_eq!(
            counted[&m1],
            vec![
                ReactionCount {
                    reaction: "👍".into(),
                    count: 2,
                    me: true
                },
                ReactionCount {
                    reaction: "+1".into(),
                    count: 1,
                    me: true
                },
            ]
        );
        assert_eq!(
            counted[&m2],
            vec![ReactionCount {
                reaction: "🎉".into(),
                count: 1,
                me: false
            }]
        );
    }

    /// Rows as `(partition, row)` so a plan shows which partition each
    /// row came from; every row weighs `bytes`.
    fn plan(partitions: &[(u8, u32, usize)], bytes: usize) -> Vec<Vec<(u32, usize)>> {
        pack_write_requests(
            partitions.iter().map(|&(replica, partition, rows)| {
                (replica, (0..rows).map(|row| (partition, row)).collect())
            }),
            MAX_PARTITIONS_PER_BATCH,
            |_| bytes,
        )
    }

    fn partitions_of(request: &[(u32, usize)]) -> Vec<u32> {
        let mut partitions: Vec<u32> = request.iter().map(|&(p, _)| p).collect();
        partitions.dedup();
        partitions
    }

    #[test]
    fn small_partitions_of_one_replica_share_requests_of_at_most_ten_partitions() {
        let partitions: Vec<(u8, u32, usize)> = (0..25).map(|p| (0, p, 1)).collect();
        let requests = plan(&partitions, 100);
        assert_eq!(
            requests.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let rows: usize = requests.iter().map(Vec::len).sum();
        assert_eq!(rows, 25);
    }

    #[test]
    fn one_partition_per_request_when_packing_is_off() {
        let requests = pack_write_requests((0..5).map(|p| (0, vec![p, p])), 1, |_| 1);
        assert_eq!(requests, [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]);
    }

    #[test]
    fn partitions_of_different_replicas_never_share_a_request() {
        let partitions = [(0, 1, 2), (1, 2, 2), (0, 3, 2), (1, 4, 2)];
        let requests = plan(&partitions, 100);
        let mut grouped: Vec<Vec<u32>> = requests.iter().map(|r| partitions_of(r)).collect();
        grouped.sort();
        assert_eq!(grouped, [vec![1, 3], vec![2, 4]]);
    }

    #[test]
    fn a_full_partition_is_its_own_request_and_its_rest_is_packed_whole() {
        let requests = plan(&[(0, 1, MAX_ROWS_PER_BATCH + 3), (0, 2, 2)], 10);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].len(), MAX_ROWS_PER_BATCH);
        assert_eq!(partitions_of(&requests[0]), [1]);
        assert_eq!(partitions_of(&requests[1]), [1, 2]);
        assert_eq!(requests[1].len(), 5);
    }

    #[test]
    fn packed_requests_stay_under_the_multi_partition_size_and_row_caps() {
        // 1 KiB rows: four fit under the byte cap.
        let partitions: Vec<(u8, u32, usize)> = (0..9).map(|p| (0, p, 1)).collect();
        for request in plan(&partitions, 1024) {
            assert!(request.len() * 1024 <= MAX_MULTI_PARTITION_BATCH_BYTES);
        }
        // A partition too big to pack goes alone, whatever its row count.
        let big = plan(&[(0, 1, 2), (0, 2, 1)], MAX_MULTI_PARTITION_BATCH_BYTES);
        assert!(big.iter().any(|r| partitions_of(r) == [1] && r.len() == 2));
        // Rows: 60 + 60 exceed one batch's rows, so two requests.
        let rows = plan(&[(0, 1, 60), (0, 2, 60)], 1);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.len() <= MAX_ROWS_PER_BATCH));
    }
}
