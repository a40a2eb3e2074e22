//! [`TailConsumer`]: reads every partition of one topic outside any
//! consumer group, from an explicit [`StartAt`].
//!
//! A tail `assign`s the partitions itself: no group, no commits, nothing to
//! rebalance. It is what a process uses to follow a topic that every
//! instance reads in full (the compacted session routes, the membership
//! changes that evict caches).
//!
//! The start position is resolved to explicit offsets when
//! [`TailConsumer::assign`] returns, never left to "latest" (which
//! librdkafka resolves later, at its first fetch): a record produced after
//! `assign` returned is always read. A cache that starts empty and is then
//! evicted by a tail started at [`StartAt::End`] therefore misses no
//! change. Partitions added to the topic later are not followed; a process
//! picks them up on its next start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, TAIL_LONG_POLL};
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;
use crate::record::{Record, TopicInterner};

/// How long one metadata, watermark or time lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Numbers the tails of this process (their `group.id`s must differ).
static TAIL_INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Pause between attempts of [`TailConsumer::assign_before`].
const ASSIGN_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Where a tail starts reading each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record Kafka still holds.
    Beginning,
    /// The high watermark at the moment [`TailConsumer::assign`] runs:
    /// only records produced afterwards.
    End,
    /// The first record whose timestamp is at or after this Unix time in
    /// milliseconds; partitions without one start at their high watermark.
    Timestamp(i64),
    /// These offsets per partition; a partition not listed starts at the
    /// beginning (reading too much is safe, skipping is not).
    Offsets(BTreeMap<i32, i64>),
}

/// One partition as [`TailConsumer::assign`] found and positioned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStart {
    pub partition: i32,
    /// The partition's low and high watermarks at assignment.
    pub low: i64,
    pub high: i64,
    /// The offset the tail reads first (for [`StartAt::Beginning`], `low`).
    pub offset: i64,
}

impl PartitionStart {
    /// Whether records between the start and the high watermark seen at
    /// assignment remain to be read before the tail has caught up.
    pub fn has_backlog(&self) -> bool {
        self.offset.max(self.low) < self.high
    }
}

/// What [`TailConsumer::recv`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailEvent {
    Record(Record),
    /// The tail has read everything the partition held (only with
    /// [`TailOptions::report_partition_end`]). Reported again after every
    /// later record that leaves the partition caught up.
    PartitionEnd {
        partition: i32,
    },
}

/// How a tail behaves besides its start.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Report [`TailEvent::PartitionEnd`] when a partition is caught up.
    /// librdkafka sees the end in the fetch *after* the one that brought a
    /// partition's last record, which waits up to `fetch_wait_max` when
    /// nothing new arrives: a tail that waits for the end wants a short one.
    pub report_partition_end: bool,
    /// How long a fetch waits at the broker for data (see
    /// [`TAIL_LONG_POLL`]).
    pub fetch_wait_max: Duration,
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            report_partition_end: false,
            fetch_wait_max: TAIL_LONG_POLL,
        }
    }
}

/// A consumer of every partition of one topic, without a group.
pub struct TailConsumer {
    inner: Arc<StreamConsumer<ChatpipeContext>>,
    topic: String,
    topics: TopicInterner,
}

impl std::fmt::Debug for TailConsumer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TailConsumer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl TailConsumer {
    /// Creates the client (no I/O yet); `name` suffixes its `client.id`.
    /// Nothing is read before [`TailConsumer::assign`].
    pub fn new(
        kafka: &KafkaConfig,
        name: &str,
        topic: &str,
        options: &TailOptions,
    ) -> Result<Self, KafkaAdapterError> {
        let inner: StreamConsumer<ChatpipeContext> = kafka
            .base()
            .set("client.id", format!("{}-{name}", kafka.client_id))
            // librdkafka refuses `assign` without a `group.id`; this one
            // never joins a group nor commits (no `subscribe`, auto-commit
            // off), and is unique per tail so that tails never meet.
            .set(
                "group.id",
                format!(
                    "{}-{name}-tail-{}-{}",
                    kafka.client_id,
                    std::process::id(),
                    TAIL_INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "enable.partition.eof",
                if options.report_partition_end {
                    "true"
                } else {
                    "false"
                },
            )
            // Only used when an assigned offset has been deleted
            // meanwhile (retention, compaction): read what is left.
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                options.fetch_wait_max.as_millis().max(1).to_string(),
            )
            .create_with_context(ChatpipeContext::default())?;
        Ok(Self {
            inner: Arc::new(inner),
            topic: topic.to_owned(),
            topics: TopicInterner::new([topic]),
        })
    }

    /// The topic this tail reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Looks the topic's partitions up, resolves `start` to an offset per
    /// partition and assigns them all. From the moment this returns, every
    /// record at or after those offsets will be read. Retriable on failure
    /// (a topic that does not exist yet, a broker not reachable yet).
    pub async fn assign(&self, start: &StartAt) -> Result<Vec<PartitionStart>, KafkaAdapterError> {
        let consumer = self.inner.clone();
        let topic = self.topic.clone();
        let start = start.clone();
        // Metadata, watermark and time lookups block on broker round
        // trips: off the async threads.
        tokio::task::spawn_blocking(move || {
            let starts = resolve_starts(&consumer, &topic, &start)?;
            let mut assignment = TopicPartitionList::new();
            for partition in &starts {
                let offset = match start {
                    // Symbolic, so that a log start moved by retention
                    // between the lookup and the first fetch is no error.
                    StartAt::Beginning => Offset::Beginning,
                    _ => Offset::Offset(partition.offset),
                };
                assignment.add_partition_offset(&topic, partition.partition, offset)?;
            }
            consumer.assign(&assignment)?;
            Ok(starts)
        })
        .await
        .unwrap_or_else(|join_error| {
            tracing::error!(%join_error, "tail assignment task failed");
            Err(KafkaAdapterError::from(KafkaError::Canceled))
        })
    }

    /// [`TailConsumer::assign`], retried every half second while the
    /// failure is retriable (a topic just created, a broker still
    /// starting) and `deadline` has not passed.
    pub async fn assign_before(
        &self,
        start: &StartAt,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<PartitionStart>, KafkaAdapterError> {
        loop {
            match self.assign(start).await {
                Ok(starts) => return Ok(starts),
                Err(error)
                    if error.is_retriable()
                        && tokio::time::Instant::now() + ASSIGN_RETRY_DELAY < deadline =>
                {
                    tracing::debug!(topic = %self.topic, %error, "tail not positioned yet; retrying");
                    tokio::time::sleep(ASSIGN_RETRY_DELAY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The next record (or end-of-partition notice). Waits without a
    /// deadline; cancel-safe.
    pub async fn recv(&self) -> Result<TailEvent, KafkaAdapterError> {
        match self.inner.recv().await {
            Ok(message) => Ok(TailEvent::Record(self.topics.record(&message))),
            Err(KafkaError::PartitionEOF(partition)) => Ok(TailEvent::PartitionEnd { partition }),
            Err(error) => Err(error.into()),
        }
    }
}

/// The partitions of `topic` with their watermarks, and where `start` puts
/// each. Blocking.
fn resolve_starts(
    consumer: &StreamConsumer<ChatpipeContext>,
    topic: &str,
    start: &StartAt,
) -> Result<Vec<PartitionStart>, KafkaAdapterError> {
    let metadata = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic && found.error().is_none())
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaAdapterError::NoPartitions {
            topic: topic.to_owned(),
        });
    }
    let mut marks = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
        marks.push((partition, low, high));
    }
    let by_time = match start {
        StartAt::Timestamp(timestamp_ms) => {
            let mut query = TopicPartitionList::new();
            for (partition, _, _) in &marks {
                query.add_partition_offset(topic, *partition, Offset::Offset(*timestamp_ms))?;
            }
            let found = consumer.offsets_for_times(query, LOOKUP_TIMEOUT)?;
            found
                .elements_for_topic(topic)
                .iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    // No record that late: nothing to read yet.
                    _ => None,
                })
                .collect()
        }
        _ => BTreeMap::new(),
    };
    Ok(marks
        .into_iter()
        .map(|(partition, low, high)| PartitionStart {
            partition,
            low,
            high,
            offset: start_offset(start, partition, low, high, &by_time),
        })
        .collect())
}

/// Where `start` puts one partition, given its watermarks and the offsets a
/// time lookup found. Pure.
fn start_offset(
    start: &StartAt,
    partition: i32,
    low: i64,
    high: i64,
    by_time: &BTreeMap<i32, i64>,
) -> i64 {
    match start {
        StartAt::Beginning => low,
        StartAt::End => high,
        StartAt::Timestamp(_) => by_time.get(&partition).copied().unwrap_or(high),
        StartAt::Offsets(offsets) => offsets.get(&partition).copied().unwrap_or(low),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_resolves_to_an_explicit_offset() {
        let found = BTreeMap::from([(0, 7)]);
        let none = BTreeMap::new();
        assert_eq!(start_offset(&StartAt::Beginning, 0, 3, 9, &none), 3);
        assert_eq!(start_offset(&StartAt::End, 0, 3, 9, &none), 9);
        assert_eq!(start_offset(&StartAt::Timestamp(5), 0, 3, 9, &found), 7);
        // No record at or after the time: start at the end, not "latest".
        assert_eq!(start_offset(&StartAt::Timestamp(5), 1, 3, 9, &found), 9);
        let offsets = StartAt::Offsets(BTreeMap::from([(0, 5)]));
        assert_eq!(start_offset(&offsets, 0, 3, 9, &none), 5);
        // Unlisted partitions are read in full.
        assert_eq!(start_offset(&offsets, 1, 3, 9, &none), 3);
    }

    #[test]
    fn a_partition_has_a_backlog_while_its_start_is_below_the_high_watermark() {
        let at = |low, high, offset| PartitionStart {
            partition: 0,
            low,
            high,
            offset,
        };
        assert!(at(0, 5, 0).has_backlog());
        assert!(!at(5, 5, 5).has_backlog());
        assert!(!at(0, 5, 5).has_backlog());
        // A start below the log start reads from the log start.
        assert!(!at(5, 5, 2).has_backlog());
    }
}
