//! [`CassandraHistoryWriter`]: the batch handler of the persist consumer
//! group.
//!
//! For each batch: decode every record (undecodable ones go to the
//! dead-letter topic and are skipped), drop the retries of earlier sends
//! (the partition-order rule of `chatpipe_core::dedup`, shared with fan-out
//! and index through [`PartitionedSendDedup`], so history holds exactly the
//! attempt recipients saw; change records are not sends and are never
//! judged), then write the messages to Cassandra in one round (grouped by
//! partition, bounded concurrency, see `CassandraStore::write_messages`)
//! and the batch's edits and deletes after them
//! (`CassandraStore::write_changes`; their write times make them land
//! right in any order), then the batch's read state: the messages' mention
//! rows and each conversation's newest message as its last activity, and
//! the highest read marker per (member, conversation) among the batch's
//! `read` events (records of `chat.events`; typing and presence are
//! skipped, and an event that does not decode is fan-out's business, not
//! dead-lettered here). The batch is confirmed — and its offsets stored by
//! the consumer loop — only when every record is written or dead-lettered.
//!
//! Failures:
//! - retriable (Cassandra down, timeouts): the whole batch fails
//!   retriably; the loop backs off and calls again with the same batch,
//!   without leaving the consumer group. Rewriting is idempotent.
//! - non-retriable (a record Cassandra refuses): the round is replayed one
//!   record at a time to find the culprits, which are dead-lettered; the
//!   others are written.

use std::collections::HashSet;
use std::time::Instant;

use chatpipe_cassandra::CassandraStore;
use chatpipe_core::ids::{ConversationId, MessageId, UserId};
use chatpipe_core::read_state::{coalesce_markers, marker_is_plausible};
use chatpipe_core::records::{
    Event, EventRecord, MessageChangeRecord, MessageRecord, MessagesTopicRecord,
    decode_messages_record,
};
use chatpipe_kafka::consumer::HandlerError;
use chatpipe_kafka::{BatchHandler, DeadLetterSink, PartitionedSendDedup, Record};
use chatpipe_runtime::metrics::ReasonLabel;

use crate::metrics::PersistMetrics;

/// Decodes a record of `chat.messages` (a message or a change), or says
/// why it cannot be.
pub fn decode_record(message: &Record) -> Result<MessagesTopicRecord, String> {
    let payload = message
        .payload()
        .ok_or_else(|| "record has no payload".to_owned())?;
    decode_messages_record(payload).map_err(|error| error.to_string())
}

/// The read marker of a `chat.events` record, when it is a plausible
/// `read` event (see [`marker_is_plausible`]); `None` for anything else.
pub fn read_marker_of(message: &Record) -> Option<(UserId, ConversationId, MessageId)> {
    let record: EventRecord = serde_json::from_slice(message.payload()?).ok()?;
    match record.event {
        Event::Read {
            conversation_id,
            user_id,
            message_id,
        } if marker_is_plausible(message_id, record.ts) => {
            Some((user_id, conversation_id, message_id))
        }
        _ => None,
    }
}

/// Writes batches of `chat.messages` records (and the read markers of
/// `chat.events`) to Cassandra.
pub struct CassandraHistoryWriter {
    store: CassandraStore,
    /// The events topic, whose `read` events carry read markers; other
    /// topics' records are messages and changes.
    events_topic: Option<String>,
    dead_letters: DeadLetterSink,
    metrics: PersistMetrics,
    max_in_flight_writes: usize,
    dedup: PartitionedSendDedup,
    /// Records of the current batch already dead-lettered, so a retried
    /// batch does not publish them twice.
    dead_lettered_in_batch: HashSet<(String, i32, i64)>,
}

chatpipe_core::debug_fields!(CassandraHistoryWriter {
    max_in_flight_writes
});

fn coordinates(message: &Record) -> (String, i32, i64) {
    (
        message.topic().to_owned(),
        message.partition(),
        message.offset(),
    )
}

impl CassandraHistoryWriter {
    pub fn new(
        store: CassandraStore,
        dead_letters: DeadLetterSink,
        metrics: PersistMetrics,
        max_in_flight_writes: usize,
        dedup: PartitionedSendDedup,
    ) -> Self {
        Self {
            store,
            events_topic: None,
            dead_letters,
            metrics,
            max_in_flight_writes: max_in_flight_writes.max(1),
            dedup,
            dead_lettered_in_batch: HashSet::new(),
        }
    }

    /// Takes the read markers of `read` events from `topic` too.
    pub fn with_events_topic(mut self, topic: String) -> Self {
        self.events_topic = Some(topic);
        self
    }

    /// Stores the batch's read state: mentions and last activity of
    /// `records`, and the highest of `markers` per member and conversation.
    async fn write_read_state(
        &self,
        records: &[MessageRecord],
        markers: &[(UserId, ConversationId, MessageId)],
    ) -> Result<u64, chatpipe_cassandra::CassandraError> {
        let state = self
            .store
            .write_read_state(records, self.max_in_flight_writes)
            .await?;
        let highest: Vec<(&UserId, &ConversationId, MessageId)> = coalesce_markers(
            markers
                .iter()
                .map(|(user, conversation, marker)| (user, conversation, *marker)),
        )
        .into_iter()
        .map(|((user, conversation), marker)| (user, conversation, marker))
        .collect();
        let written = self
            .store
            .write_read_markers(&highest, self.max_in_flight_writes)
            .await?;
        self.metrics.read_markers_written.inc_by(written.rows);
        self.metrics.read_state_rows_written.inc_by(state.rows);
        Ok(state.requests + written.requests)
    }

    async fn dead_letter(&mut self, message: &Record, error: &str) -> Result<(), HandlerError> {
        let key = coordinates(message);
        if self.dead_lettered_in_batch.contains(&key) {
            return Ok(());
        }
        self.dead_letters
            .publish(message, error)
            .await
            .map_err(|error| {
                HandlerError::retriable(format!("dead-letter publish failed: {error}"))
            })?;
        self.dead_lettered_in_batch.insert(key);
        Ok(())
    }

    async fn write_batch(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let mut decoded: Vec<(&Record, MessagesTopicRecord)> = Vec::with_capacity(batch.len());
        let mut markers: Vec<(UserId, ConversationId, MessageId)> = Vec::new();
        for message in batch {
            if self.events_topic.as_deref() == Some(message.topic()) {
                markers.extend(read_marker_of(message));
                continue;
            }
            match decode_record(message) {
                Ok(MessagesTopicRecord::Message(record)) => {
                    let verdict = self
                        .dedup
                        .judge(message.partition(), message.offset(), &record)
                        .await?;
                    if !verdict.is_duplicate() {
                        decoded.push((message, MessagesTopicRecord::Message(record)));
                    }
                }
                Ok(change) => {
                    self.dedup.skip(message.partition(), message.offset());
                    decoded.push((message, change));
                }
                Err(reason) => {
                    self.dedup.skip(message.partition(), message.offset());
                    self.dead_letter(message, &reason).await?
                }
            }
        }
        if decoded.is_empty() && markers.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(decoded.len());
        let mut changes: Vec<MessageChangeRecord> = Vec::new();
        for (_, record) in &decoded {
            match record {
                MessagesTopicRecord::Message(message) => records.push(message.clone()),
                MessagesTopicRecord::Change(change) => changes.push(change.clone()),
            }
        }
        let started = Instant::now();
        let round = async {
            let messages = self
                .store
                .write_messages(&records, self.max_in_flight_writes)
                .await?;
            // Replies only: a plain message writes nothing more.
            self.store
                .write_replies(&records, self.max_in_flight_writes)
                .await?;
            let changed = if changes.is_empty() {
                Default::default()
            } else {
                self.store
                    .write_changes(&changes, self.max_in_flight_writes)
                    .await?
            };
            // After the messages: an inbox never counts or shows a message
            // history does not hold yet.
            let read_state_requests = self.write_read_state(&records, &markers).await?;
            Ok::<_, chatpipe_cassandra::CassandraError>((messages, changed, read_state_requests))
        };
        match round.await {
            Ok((messages, changed, read_state_requests)) => {
                self.metrics
                    .write_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.rows_written.inc_by(messages.rows);
                self.metrics.changes_written.inc_by(changed.rows);
                self.metrics
                    .write_requests
                    .inc_by(messages.requests + changed.requests + read_state_requests);
                Ok(())
            }
            Err(error) if error.is_retriable() => {
                self.metrics
                    .write_failures
                    .get_or_create(&ReasonLabel::new("retriable"))
                    .inc();
                Err(HandlerError::retriable(format!(
                    "cassandra write failed: {error}"
                )))
            }
            Err(error) => {
                self.metrics
                    .write_failures
                    .get_or_create(&ReasonLabel::new("non_retriable"))
                    .inc();
                tracing::warn!(%error, records = decoded.len(), "cassandra refused a batch; isolating records");
                for (message, record) in &decoded {
                    let written = match record {
                        MessagesTopicRecord::Message(record) => {
                            match self.store.write_message(record).await {
                                Ok(()) => match self
                                    .store
                                    .write_replies(std::slice::from_ref(record), 1)
                                    .await
                                {
                                    Ok(_) => self
                                        .write_read_state(std::slice::from_ref(record), &[])
                                        .await
                                        .map(drop),
                                    Err(error) => Err(error),
                                },
                                Err(error) => Err(error),
                            }
                        }
                        MessagesTopicRecord::Change(change) => {
                            self.store.write_change(change).await
                        }
                    };
                    match written {
                        Ok(()) => {
                            match record {
                                MessagesTopicRecord::Message(_) => self.metrics.rows_written.inc(),
                                MessagesTopicRecord::Change(_) => {
                                    self.metrics.changes_written.inc()
                                }
                            };
                            self.metrics.write_requests.inc();
                        }
                        Err(error) if error.is_retriable() => {
                            return Err(HandlerError::retriable(format!(
                                "cassandra write failed: {error}"
                            )));
                        }
                        Err(error) => {
                            self.dead_letter(
                                message,
                                &format!("cassandra refused the record: {error}"),
                            )
                            .await?;
                        }
                    }
                }
                // Markers are plain upserts of valid ids: a failure here
                // is the engine's, retried with the batch.
                self.write_read_state(&[], &markers)
                    .await
                    .map_err(|error| {
                        HandlerError::retriable(format!("cassandra write failed: {error}"))
                    })?;
                Ok(())
            }
        }
    }
}

impl BatchHandler for CassandraHistoryWriter {
    async fn handle(&mut self, batch: &[Record]) -> Result<(), HandlerError> {
        let outcome = self.write_batch(batch).await;
        if outcome.is_ok() {
            self.dead_lettered_in_batch.clear();
        }
        outcome
    }
}
