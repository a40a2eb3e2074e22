//! History: writing messages idempotently and reading pages of them across
//! bucket boundaries.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use serde::Serialize;

use chatpipe_core::ids::{ClientMsgId, ConversationId, MessageId, UserId};
use chatpipe_core::records::MessageRecord;

use crate::bucket::{Bucket, bucket_of, newest_bucket_at};
use crate::conversations::Conversation;
use crate::error::CassandraError;
use crate::store::CassandraStore;

/// Rows per unlogged batch. Every batch targets one partition, so Cassandra
/// applies it as one mutation; the cap keeps mutations small.
pub const MAX_ROWS_PER_BATCH: usize = 100;

/// A message as history returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: ClientMsgId,
    pub body: String,
    /// Unix ms at which the edge accepted the message.
    pub ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
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
);

fn decode_message(conversation: &ConversationId, row: MessageRow) -> Option<StoredMessage> {
    let (message_id, sender_id, client_msg_id, body, ts, edited_at, deleted) = row;
    let message_id = MessageId::parse(&message_id.to_string()).ok()?;
    // A row without its sender is a partial row (for example an edit that
    // landed before the message itself): not a message yet.
    let sender_id = UserId::parse(sender_id?).ok()?;
    let client_msg_id = ClientMsgId::parse(client_msg_id?).ok()?;
    Some(StoredMessage {
        message_id,
        conversation_id: conversation.clone(),
        sender_id,
        client_msg_id,
        body: body.unwrap_or_default(),
        ts: ts.unwrap_or(0).max(0) as u64,
        edited_at: edited_at.map(|at| at.max(0) as u64),
        deleted: deleted.unwrap_or(false),
    })
}

impl CassandraStore {
    /// Writes `records`, grouped by partition `(conversation, bucket)` into
    /// single-partition unlogged batches of at most [`MAX_ROWS_PER_BATCH`]
    /// rows, with at most `max_in_flight` requests at once. Idempotent by
    /// message id. On error some groups may be written and others not;
    /// writing the same records again is always safe.
    pub async fn write_messages(
        &self,
        records: &[MessageRecord],
        max_in_flight: usize,
    ) -> Result<WriteReport, CassandraError> {
        let mut partitions: BTreeMap<(&str, Bucket), Vec<&MessageRecord>> = BTreeMap::new();
        for record in records {
            partitions
                .entry((
                    record.conversation_id.as_str(),
                    bucket_of(record.message_id),
                ))
                .or_default()
                .push(record);
        }
        let chunks: Vec<(Bucket, &[&MessageRecord])> = partitions
            .iter()
            .flat_map(|((_, bucket), rows)| {
                rows.chunks(MAX_ROWS_PER_BATCH)
                    .map(|chunk| (*bucket, chunk))
            })
            .collect();
        let requests = chunks.len() as u64;
        // Futures built up front (not in a stream closure) keep the returned
        // future `Send` for callers that spawn it.
        let writes: Vec<_> = chunks
            .into_iter()
            .map(|(bucket, chunk)| self.write_partition_chunk(bucket, chunk))
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(max_in_flight.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(WriteReport {
            rows: records.len() as u64,
            requests,
        })
    }

    /// Writes one message (used to isolate a record that fails on its own).
    pub async fn write_message(&self, record: &MessageRecord) -> Result<(), CassandraError> {
        self.write_partition_chunk(bucket_of(record.message_id), &[record])
            .await
    }

    async fn write_partition_chunk(
        &self,
        bucket: Bucket,
        chunk: &[&MessageRecord],
    ) -> Result<(), CassandraError> {
        let statement = &self.inner.statements.insert_message;
        let values = |record: &MessageRecord| {
            (
                record.conversation_id.as_str().to_owned(),
                bucket,
                record.message_id.as_i64(),
                record.sender_id.as_str().to_owned(),
                record.client_msg_id.as_str().to_owned(),
                record.body.clone(),
                record.ts as i64,
                record.edge_id.as_str().to_owned(),
                (record.message_id.unix_ms() as i64).saturating_mul(1000),
            )
        };
        if let [single] = chunk {
            self.inner
                .session
                .execute_unpaged(statement, values(single))
                .await?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        for _ in chunk {
            batch.append_statement(statement.clone());
        }
        let rows: Vec<_> = chunk.iter().map(|record| values(record)).collect();
        self.inner.session.batch(&batch, rows).await?;
        Ok(())
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
