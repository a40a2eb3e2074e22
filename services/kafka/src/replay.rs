//! Re-reading a stretch of one partition, outside any consumer group.
//!
//! A consumer that de-duplicates sends (see [`crate::send_dedup`]) must know
//! the partition's recent past before it judges a record it did not reach by
//! processing the partition contiguously: after a start, a rebalance, or a
//! gap. [`ReplayReader::read`] reads the records of one partition from the
//! first record at or after a timestamp (Kafka's `offsets_for_times`) up to
//! an offset, exclusive, with a fresh assign-only consumer (no group, no
//! commits; a fresh one each time so that no record buffered for an earlier
//! assignment can slip in). It runs on a blocking thread: librdkafka's calls
//! here are synchronous.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::ClientError;

/// Why a replay failed. Always retriable: the caller's batch is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka client: {0}")]
    Client(#[source] ClientError),
    #[error(
        "replay of {topic}/{partition} did not reach offset {until} within {deadline:?} (at {reached:?})"
    )]
    Timeout {
        topic: String,
        partition: i32,
        until: i64,
        reached: Option<i64>,
        deadline: Duration,
    },
    #[error("replay task failed: {0}")]
    Task(String),
}

impl From<rdkafka::error::KafkaError> for ReplayError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        ReplayError::Client(ClientError::from(error))
    }
}

/// A batch whose records could not be judged is retried: a replay failure
/// is always transient (Kafka unreachable, or slow).
impl From<ReplayError> for crate::consumer::HandlerError {
    fn from(error: ReplayError) -> Self {
        crate::consumer::HandlerError::retriable(format!("send de-duplication: {error}"))
    }
}

/// Reads stretches of partitions (see the module doc).
#[derive(Debug, Clone)]
pub struct ReplayReader {
    kafka: KafkaConfig,
    /// Longest time one [`ReplayReader::read`] may take.
    pub deadline: Duration,
}

impl ReplayReader {
    pub fn new(kafka: &KafkaConfig, deadline: Duration) -> Self {
        Self {
            kafka: KafkaConfig::new(kafka.brokers.clone(), format!("{}-replay", kafka.client_id)),
            deadline,
        }
    }

    /// Calls `each(offset, payload)` for every record of `topic`/`partition`
    /// whose offset is at least that of the first record with a Kafka
    /// timestamp ≥ `from_unix_ms`, and below `until_offset`, in offset
    /// order; then returns `state` and how many records it saw. `state` is
    /// moved to the blocking thread and back.
    pub async fn read<S, F>(
        &self,
        topic: &str,
        partition: i32,
        from_unix_ms: i64,
        until_offset: i64,
        state: S,
        each: F,
    ) -> Result<(S, u64), ReplayError>
    where
        S: Send + 'static,
        F: FnMut(&mut S, i64, Option<&[u8]>) + Send + 'static,
    {
        let kafka = self.kafka.clone();
        let topic = topic.to_owned();
        let deadline = self.deadline;
        tokio::task::spawn_blocking(move || {
            read_blocking(
                &kafka,
                &topic,
                partition,
                from_unix_ms,
                until_offset,
                deadline,
                state,
                each,
            )
        })
        .await
        .map_err(|error| ReplayError::Task(error.to_string()))?
    }
}

#[allow(clippy::too_many_arguments)]
fn read_blocking<S, F>(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    from_unix_ms: i64,
    until_offset: i64,
    deadline: Duration,
    mut state: S,
    mut each: F,
) -> Result<(S, u64), ReplayError>
where
    F: FnMut(&mut S, i64, Option<&[u8]>),
{
    let started = Instant::now();
    let left = || deadline.saturating_sub(started.elapsed());
    let consumer: BaseConsumer = kafka
        .base()
        // Required by librdkafka's consumer; never joined (assign only)
        // and never committed.
        .set("group.id", format!("{}-assign-only", kafka.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition_offset(topic, partition, Offset::Offset(from_unix_ms.max(0)))?;
    let found = consumer.offsets_for_times(wanted, left())?;
    let start = found
        .find_partition(topic, partition)
        .map(|element| element.offset())
        .unwrap_or(Offset::End);
    let start_offset = match start {
        Offset::Offset(offset) => offset,
        Offset::Beginning => 0,
        // No record that recent: nothing to replay.
        _ => return Ok((state, 0)),
    };
    if start_offset >= until_offset {
        return Ok((state, 0));
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start_offset))?;
    consumer.assign(&assignment)?;
    let mut seen: u64 = 0;
    let mut reached: Option<i64> = None;
    loop {
        let remaining = left();
        if remaining.is_zero() {
            return Err(ReplayError::Timeout {
                topic: topic.to_owned(),
                partition,
                until: until_offset,
                reached,
                deadline,
            });
        }
        let Some(polled) = consumer.poll(remaining.min(Duration::from_millis(200))) else {
            continue;
        };
        let message = polled?;
        if message.partition() != partition || message.topic() != topic {
            continue;
        }
        let offset = message.offset();
        if offset >= until_offset {
            break;
        }
        if reached.is_some_and(|last| offset <= last) {
            continue;
        }
        reached = Some(offset);
        each(&mut state, offset, message.payload());
        seen += 1;
        if offset + 1 >= until_offset {
            break;
        }
    }
    Ok((state, seen))
}
