//! [`CassandraHistoryWriter`]: the batch handler of the persist consumer
//! group.
//!
//! For each batch: decode every record (undecodable ones go to the
//! dead-letter topic and are skipped), drop the retries of earlier sends
//! (the partition-order rule of `chatpipe_core::dedup`, shared with fan-out
//! and index through [`PartitionedSendDedup`], so history holds exactly the
//! attempt recipients saw), then write the decoded ones to
//! Cassandra in one round (grouped by partition, bounded concurrency, see
//! `CassandraStore::write_messages`). The batch is confirmed — and its
//! offsets stored by the consumer loop — only when every record is written
//! or dead-lettered.
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
use chatpipe_core::records::MessageRecord;
use chatpipe_kafka::consumer::HandlerError;
use chatpipe_kafka::{BatchHandler, DeadLetterSink, PartitionedSendDedup, Record};
use chatpipe_runtime::metrics::ReasonLabel;

use crate::metrics::PersistMetrics;

/// Why a record could not be decoded.
pub fn decode_record(message: &Record) -> Result<MessageRecord, String> {
    let payload = message
        .payload()
        .ok_or_else(|| "record has no payload".to_owned())?;
    serde_json::from_slice::<MessageRecord>(payload)
        .map_err(|error| format!("not a MessageRecord: {error}"))
}

/// Writes batches of `chat.messages` records to Cassandra.
pub struct CassandraHistoryWriter {
    store: CassandraStore,
    dead_letters: DeadLetterSink,
    metrics: PersistMetrics,
    max_in_flight_writes: usize,
    dedup: PartitionedSendDedup,
    /// Records of the current batch already dead-lettered, so a retried
    /// batch does not publish them twice.
    dead_lettered_in_batch: HashSet<(String, i32, i64)>,
}

impl std::fmt::Debug for CassandraHistoryWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CassandraHistoryWriter")
            .field("max_in_flight_writes", &self.max_in_flight_writes)
            .finish_non_exhaustive()
    }
}

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
            dead_letters,
            metrics,
            max_in_flight_writes: max_in_flight_writes.max(1),
            dedup,
            dead_lettered_in_batch: HashSet::new(),
        }
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
        let mut decoded: Vec<(&Record, MessageRecord)> = Vec::with_capacity(batch.len());
        for message in batch {
            match decode_record(message) {
                Ok(record) => {
                    let verdict = self
                        .dedup
                        .judge(message.partition(), message.offset(), &record)
                        .await?;
                    if !verdict.is_duplicate() {
                        decoded.push((message, record));
                    }
                }
                Err(reason) => {
                    self.dedup.skip(message.partition(), message.offset());
                    self.dead_letter(message, &reason).await?
                }
            }
        }
        if decoded.is_empty() {
            return Ok(());
        }
        let records: Vec<MessageRecord> =
            decoded.iter().map(|(_, record)| record.clone()).collect();
        let started = Instant::now();
        match self
            .store
            .write_messages(&records, self.max_in_flight_writes)
            .await
        {
            Ok(report) => {
                self.metrics
                    .write_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.rows_written.inc_by(report.rows);
                self.metrics.write_requests.inc_by(report.requests);
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
                tracing::warn!(%error, records = records.len(), "cassandra refused a batch; isolating records");
                for (message, record) in &decoded {
                    match self.store.write_message(record).await {
                        Ok(()) => {
                            self.metrics.rows_written.inc();
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
