//! Read state: read markers, mention rows and each conversation's last
//! activity (tables `read_markers`, `mentions`, `conversation_activity`),
//! written by persist in batches and read by the API's inbox.
//!
//! Nothing here is written per recipient: a message writes its mention
//! rows (one per mentioned user, at most
//! [`MAX_MENTIONS`](chatpipe_core::read_state::MAX_MENTIONS)) and, once per
//! conversation and batch, the conversation's activity (rows of
//! conversations sharing a replica packed into one unlogged batch, with
//! [`pack_write_requests`](crate::messages::pack_write_requests)); a
//! `read` writes one marker. Unread and mention counts are counted when asked, from
//! history and the mention rows after the member's marker
//! ([`CassandraStore::read_counts`]), so they are exact under retries and
//! replays (history holds each send once) and cost nothing per message.
//!
//! Write times make every write idempotent and order-free: a marker and an
//! activity row are written with the message id itself as their write
//! time (ids are time-ordered, below 2^63), so the highest wins; a mention
//! row at its message's own time, like the message.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use chatpipe_core::ids::{ConversationId, MessageId, UserId};
use chatpipe_core::read_state::{COUNT_CAP, CappedCount, UnreadRow, tally_unread};
use chatpipe_core::records::MessageRecord;

use crate::bucket::{bucket_of, newest_bucket_at};
use crate::conversations::Conversation;
use crate::error::CassandraError;
use crate::messages::{WriteReport, pack_write_requests};
use crate::store::CassandraStore;

/// Most history rows one unread count reads (past it the count is
/// reported inexact): the cap of [`COUNT_CAP`] unread messages plus room
/// for the reader's own and deleted ones.
pub const MAX_UNREAD_SCAN_ROWS: i32 = 1_000;

/// Conversation ids per `IN (…)` read of last activities.
const ACTIVITY_IDS_PER_READ: usize = 100;

/// A member's unread and mention counts in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCounts {
    pub unread: CappedCount,
    pub mentions: CappedCount,
}

fn to_message_id(raw: i64) -> Option<MessageId> {
    u64::try_from(raw)
        .ok()
        .filter(|id| *id > 0)
        .map(MessageId::from_u64)
}

impl CassandraStore {
    /// Stores read markers `(user, conversation, message_id)`, at most
    /// `max_in_flight` writes at once. A marker lower than the stored one
    /// changes nothing (see the module doc). Idempotent.
    pub async fn write_read_markers(
        &self,
        markers: &[(&UserId, &ConversationId, MessageId)],
        max_in_flight: usize,
    ) -> Result<WriteReport, CassandraError> {
        let writes: Vec<_> = markers
            .iter()
            .map(|(user, conversation, marker)| {
                self.inner.session.execute_unpaged(
                    &self.inner.statements.upsert_read_marker,
                    (
                        user.as_str(),
                        conversation.as_str(),
                        marker.as_i64(),
                        marker.as_i64(),
                    ),
                )
            })
            .collect();
        let requests = writes.len() as u64;
        futures::stream::iter(writes)
            .buffer_unordered(max_in_flight.max(1))
            .try_collect::<Vec<_>>()
            .await?;
        Ok(WriteReport {
            rows: requests,
            requests,
        })
    }

    /// The member's stored read marker in `conversation`, if any.
    pub async fn read_marker(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<MessageId>, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_read_marker,
                (user.as_str(), conversation.as_str()),
            )
            .await?
            .into_rows_result()?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        Ok(row.and_then(|(raw,)| raw).and_then(to_message_id))
    }

    /// Writes the mention rows of `records` and, once per conversation,
    /// its newest message as last activity. Messages without mentions cost
    /// one activity write per conversation and call, nothing more.
    /// Idempotent.
    pub async fn write_read_state(
        &self,
        records: &[MessageRecord],
        max_in_flight: usize,
    ) -> Result<WriteReport, CassandraError> {
        let statements = &self.inner.statements;
        let session = &self.inner.session;
        let activity = chatpipe_core::read_state::coalesce_activity(
            records
                .iter()
                .map(|record| (&record.conversation_id, record.message_id)),
        );
        // Activity rows of conversations sharing a replica go in one
        // unlogged batch (as history's small partitions do): one request
        // per few conversations, not one per conversation.
        let ring = session.get_cluster_state();
        let keyspace = self.inner.config.keyspace.as_str();
        let by_replica = activity.iter().map(|(conversation, newest)| {
            let replica = ring
                .get_endpoints(keyspace, "conversation_activity", &(conversation.as_str(),))
                .ok()
                .and_then(|replicas| replicas.first().map(|(node, _)| node.host_id))
                .unwrap_or_default();
            (replica, vec![(conversation.as_str(), *newest)])
        });
        let activity_requests = pack_write_requests(
            by_replica,
            self.inner.config.max_partitions_per_batch,
            |(conversation, _)| conversation.len() + 16,
        );
        let activity_writes: Vec<_> = activity_requests
            .iter()
            .map(|rows| self.write_activity_rows(rows))
            .collect();
        let mention_writes: Vec<_> = records
            .iter()
            .flat_map(|record| {
                let written_at = (record.message_id.unix_ms() as i64).saturating_mul(1000);
                record.mentions.iter().map(move |user| {
                    session.execute_unpaged(
                        &statements.insert_mention,
                        (
                            user.as_str(),
                            record.conversation_id.as_str(),
                            record.message_id.as_i64(),
                            written_at,
                        ),
                    )
                })
            })
            .collect();
        let requests = (activity_writes.len() + mention_writes.len()) as u64;
        let rows = (activity.len() + mention_writes.len()) as u64;
        let in_flight = max_in_flight.max(2) / 2;
        futures::try_join!(
            futures::stream::iter(activity_writes)
                .buffer_unordered(in_flight)
                .try_collect::<Vec<_>>(),
            async {
                futures::stream::iter(mention_writes)
                    .buffer_unordered(in_flight)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(CassandraError::from)
            },
        )?;
        Ok(WriteReport { rows, requests })
    }

    /// Upserts last-activity rows `(conversation, newest message)` in one
    /// request: a single statement for one row, else an unlogged batch.
    async fn write_activity_rows(&self, rows: &[(&str, MessageId)]) -> Result<(), CassandraError> {
        let statement = &self.inner.statements.upsert_activity;
        fn values<'a>(&(conversation, newest): &(&'a str, MessageId)) -> (&'a str, i64, i64) {
            (conversation, newest.as_i64(), newest.as_i64())
        }
        self.write_rows_of(statement, rows.iter().map(values).collect())
            .await
    }

    /// The newest message of each of `conversations` that has one.
    pub async fn last_activities(
        &self,
        conversations: &[ConversationId],
    ) -> Result<HashMap<ConversationId, MessageId>, CassandraError> {
        let reads: Vec<_> = conversations
            .chunks(ACTIVITY_IDS_PER_READ)
            .map(|chunk| {
                let ids: Vec<&str> = chunk.iter().map(ConversationId::as_str).collect();
                async move {
                    let rows = self
                        .inner
                        .session
                        .execute_unpaged(&self.inner.statements.select_activities, (ids,))
                        .await?
                        .into_rows_result()?;
                    let mut found = Vec::new();
                    for row in rows.rows::<(String, Option<i64>)>()? {
                        let (raw, last) = row?;
                        if let (Ok(conversation), Some(last)) =
                            (ConversationId::parse(raw), last.and_then(to_message_id))
                        {
                            found.push((conversation, last));
                        }
                    }
                    Ok::<_, CassandraError>(found)
                }
            })
            .collect();
        let found: Vec<Vec<(ConversationId, MessageId)>> = futures::stream::iter(reads)
            .buffer_unordered(4)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// `reader`'s unread and mention counts in `conversation` after
    /// `marker` (exclusive; see
    /// [`effective_marker`](chatpipe_core::read_state::effective_marker)):
    /// the messages of others that are not deleted, newest first, reading
    /// at most [`MAX_UNREAD_SCAN_ROWS`] history rows; and the mention rows
    /// of `reader` after it, less those of messages the scan saw deleted.
    /// Both stop at [`COUNT_CAP`].
    pub async fn read_counts(
        &self,
        conversation: &Conversation,
        reader: &UserId,
        marker: MessageId,
        now_ms: u64,
    ) -> Result<ReadCounts, CassandraError> {
        let after = marker.as_i64();
        let lowest_bucket = bucket_of(MessageId::from_u64(marker.as_u64().saturating_add(1)))
            .max(conversation.first_bucket);
        let mut bucket = newest_bucket_at(now_ms);
        let mut budget = MAX_UNREAD_SCAN_ROWS;
        let mut unread: u64 = 0;
        let mut deleted: HashSet<i64> = HashSet::new();
        let mut complete = true;
        while bucket >= lowest_bucket {
            if budget <= 0 || unread > COUNT_CAP {
                complete = false;
                break;
            }
            let rows = self
                .inner
                .session
                .execute_unpaged(
                    &self.inner.statements.select_unread_rows,
                    (conversation.conversation_id.as_str(), bucket, after, budget),
                )
                .await?
                .into_rows_result()?;
            let mut decoded: Vec<(i64, Option<String>, bool)> = Vec::new();
            for row in rows.rows::<(i64, Option<String>, Option<bool>)>()? {
                let (message_id, sender, is_deleted) = row?;
                decoded.push((message_id, sender, is_deleted.unwrap_or(false)));
            }
            budget -= decoded.len() as i32;
            unread += tally_unread(
                decoded.iter().map(|(_, sender, is_deleted)| UnreadRow {
                    sender: sender.as_deref(),
                    deleted: *is_deleted,
                }),
                reader,
            );
            deleted.extend(
                decoded
                    .iter()
                    .filter(|(_, _, is_deleted)| *is_deleted)
                    .map(|(id, _, _)| *id),
            );
            bucket -= 1;
        }
        let unread = if complete {
            CappedCount::of(unread, COUNT_CAP)
        } else {
            CappedCount {
                count: unread.min(COUNT_CAP),
                exact: false,
            }
        };
        // One more than the cap tells an exact count from a capped one;
        // deleted messages' rows come on top.
        let mention_limit = (COUNT_CAP as usize + 1 + deleted.len()) as i32;
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_mentions_after,
                (
                    reader.as_str(),
                    conversation.conversation_id.as_str(),
                    after,
                    mention_limit,
                ),
            )
            .await?
            .into_rows_result()?;
        let mut mentioned: u64 = 0;
        for row in rows.rows::<(i64,)>()? {
            let (message_id,) = row?;
            if !deleted.contains(&message_id) {
                mentioned += 1;
            }
        }
        Ok(ReadCounts {
            unread,
            mentions: CappedCount::of(mentioned, COUNT_CAP),
        })
    }
}
