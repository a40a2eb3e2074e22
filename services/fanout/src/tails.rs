//! The two topics every worker reads in full, outside the consumer group:
//!
//! - the compacted sessions topic, from the beginning, into the
//!   [`RouteTable`] — the worker is not ready (and does not consume
//!   messages) until it has caught up to the high watermarks it saw at
//!   start, so it never drops a message for a user whose route it has not
//!   loaded yet;
//! - the membership topic, from the high watermarks at start, evicting the
//!   [`MembershipCache`]. Starting from explicit offsets (not "latest",
//!   which resolves later) leaves no gap between "the cache is empty" and
//!   "every later change is seen".
//!
//! Both consumers `assign` every partition themselves: no group, no commits,
//! nothing to rebalance. Partitions added to these topics while a worker
//! runs are picked up on its next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatpipe_core::ConversationId;
use chatpipe_core::records::MembershipRecord;
use chatpipe_core::store::MembershipStore;
use chatpipe_kafka::KafkaConfig;
use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::membership::MembershipCache;
use crate::metrics::FanoutMetrics;
use crate::push::EdgePushers;
use crate::routes::{RouteChange, RouteTable, SharedRouteTable};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const START_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Numbers the tails of this process (see `group.id` below).
static TAIL_INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// librdkafka context of the tails: partition-EOF notices (expected, they
/// mark catching up) are not errors; librdkafka's own logs go to `tracing`.
pub(crate) struct TailContext;

impl ClientContext for TailContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(facility, message, "librdkafka"),
            _ => tracing::debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if end_of_partition {
            tracing::trace!(reason, "end of partition");
        } else {
            tracing::warn!(%error, reason, "kafka tail client error");
        }
    }
}

impl ConsumerContext for TailContext {}

type TailConsumer = StreamConsumer<TailContext>;

/// A consumer that reads every partition of a topic by assignment.
fn assigned_consumer(
    kafka: &KafkaConfig,
    client_suffix: &str,
    partition_eof: bool,
) -> Result<TailConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("client.id", format!("{}-{client_suffix}", kafka.client_id))
        // librdkafka wants a group id even for `assign`; this one never
        // joins a group nor commits (auto-commit off, no `subscribe`), and
        // is unique per tail so that workers sharing a process never meet.
        .set(
            "group.id",
            format!(
                "{}-{client_suffix}-tail-{}-{}",
                kafka.client_id,
                std::process::id(),
                TAIL_INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "enable.partition.eof",
            if partition_eof { "true" } else { "false" },
        )
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "4")
        .create_with_context(TailContext)
}

/// One partition's offsets when the tail started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionMarks {
    partition: i32,
    low: i64,
    high: i64,
}

/// Reads the topic's partitions and their watermarks (blocking calls, run
/// off the async threads).
async fn fetch_marks(
    consumer: Arc<TailConsumer>,
    topic: String,
) -> Result<Vec<PartitionMarks>, KafkaError> {
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|found| found.name() == topic)
            .flat_map(|found| {
                if let Some(error) = found.error() {
                    tracing::warn!(topic, ?error, "topic metadata error");
                }
                found.partitions().iter().map(|partition| partition.id())
            })
            .collect();
        if partitions.is_empty() {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        partitions
            .into_iter()
            .map(|partition| {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)?;
                Ok(PartitionMarks {
                    partition,
                    low,
                    high,
                })
            })
            .collect()
    })
    .await
    .unwrap_or_else(|join_error| {
        tracing::error!(%join_error, "watermark lookup panicked");
        Err(KafkaError::Canceled)
    })
}

/// Retries `fetch_marks` until it works or shutdown (then `None`), showing
/// the component as degraded meanwhile.
async fn marks_with_retry(
    consumer: &Arc<TailConsumer>,
    topic: &str,
    component: &ComponentHandle,
    shutdown: &Shutdown,
) -> Option<Vec<PartitionMarks>> {
    loop {
        match fetch_marks(consumer.clone(), topic.to_owned()).await {
            Ok(marks) => return Some(marks),
            Err(error) => {
                tracing::warn!(topic, %error, "cannot read topic watermarks yet; retrying");
                component.set(ComponentState::Degraded(format!("{topic}: {error}")));
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(START_RETRY_DELAY) => {}
        }
    }
}

fn assign(
    consumer: &TailConsumer,
    topic: &str,
    marks: &[PartitionMarks],
    from_high: bool,
) -> Result<(), KafkaError> {
    let mut assignment = TopicPartitionList::new();
    for mark in marks {
        let offset = if from_high {
            Offset::Offset(mark.high)
        } else {
            Offset::Beginning
        };
        assignment.add_partition_offset(topic, mark.partition, offset)?;
    }
    consumer.assign(&assignment)
}

/// Feeds the route table from the sessions topic.
pub(crate) struct SessionsTail {
    consumer: Arc<TailConsumer>,
    topic: String,
    table: SharedRouteTable,
    pushers: Arc<EdgePushers>,
    metrics: FanoutMetrics,
    component: ComponentHandle,
    caught_up: watch::Sender<bool>,
    forget_dead_edge_after_ms: u64,
}

impl SessionsTail {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kafka: &KafkaConfig,
        worker_id: &str,
        topic: &str,
        table: SharedRouteTable,
        pushers: Arc<EdgePushers>,
        metrics: FanoutMetrics,
        component: ComponentHandle,
        forget_dead_edge_after_ms: u64,
    ) -> Result<(Self, watch::Receiver<bool>), KafkaError> {
        let consumer = assigned_consumer(kafka, &format!("{worker_id}-routes"), true)?;
        let (caught_up, caught_up_receiver) = watch::channel(false);
        Ok((
            Self {
                consumer: Arc::new(consumer),
                topic: topic.to_owned(),
                table,
                pushers,
                metrics,
                component,
                caught_up,
                forget_dead_edge_after_ms,
            },
            caught_up_receiver,
        ))
    }

    fn publish_gauges(&self, table: &RouteTable) {
        self.metrics
            .route_table_routes
            .set(table.route_count() as i64);
        self.metrics
            .route_table_users
            .set(table.user_count() as i64);
        self.metrics
            .route_table_edges
            .set(table.edge_count() as i64);
    }

    fn mark_caught_up(&self) {
        self.metrics.route_table_ready.set(1);
        self.component.set(ComponentState::Ready);
        self.caught_up.send_replace(true);
        tracing::info!(topic = %self.topic, routes = self.metrics.route_table_routes.get(), "route table caught up");
    }

    fn maintain(&self) {
        let now = chatpipe_core::time::now_unix_ms();
        let (forgotten, addresses) = self.table.write(|table| {
            let forgotten = table.forget_dead_edges(now, self.forget_dead_edge_after_ms);
            self.publish_gauges(table);
            (forgotten, table.push_addresses())
        });
        if !forgotten.is_empty() {
            self.metrics
                .dead_edges_forgotten
                .inc_by(forgotten.len() as u64);
            tracing::info!(edges = ?forgotten, "forgot long-dead edges and their routes");
        }
        self.pushers.retain_addresses(&addresses);
    }

    /// Runs until `shutdown`.
    pub(crate) async fn run(self, shutdown: Shutdown) {
        let Some(marks) =
            marks_with_retry(&self.consumer, &self.topic, &self.component, &shutdown).await
        else {
            return;
        };
        if let Err(error) = assign(&self.consumer, &self.topic, &marks, false) {
            tracing::error!(topic = %self.topic, %error, "cannot assign the sessions topic");
            self.component.set(ComponentState::Failed(format!(
                "assign {}: {error}",
                self.topic
            )));
            return;
        }
        // Partitions still to read up to their start-time high watermark.
        let mut pending: HashMap<i32, i64> = marks
            .iter()
            .filter(|mark| mark.high > mark.low)
            .map(|mark| (mark.partition, mark.high))
            .collect();
        tracing::info!(topic = %self.topic, partitions = marks.len(), to_read = ?pending, "loading the route table");
        if pending.is_empty() {
            self.mark_caught_up();
        }
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = maintenance.tick() => self.maintain(),
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let applied = self.table.write(|table| {
                            let applied = table.apply(message.key(), message.payload());
                            self.publish_gauges(table);
                            applied
                        });
                        match applied {
                            Ok(change) => {
                                self.metrics.route_records_applied.inc();
                                // A retired lease means a drained edge.
                                if let RouteChange::EdgeRemoved(edge_id) = change {
                                    self.pushers.forget_edge(&edge_id);
                                }
                            }
                            Err(error) => {
                                self.metrics.route_records_invalid.inc();
                                tracing::warn!(partition = message.partition(), offset = message.offset(), %error, "skipping invalid sessions record");
                            }
                        }
                        if !pending.is_empty()
                            && pending.get(&message.partition()).is_some_and(|high| message.offset() + 1 >= *high)
                        {
                            pending.remove(&message.partition());
                            if pending.is_empty() {
                                self.mark_caught_up();
                            }
                        }
                    }
                    Err(KafkaError::PartitionEOF(partition)) => {
                        if pending.remove(&partition).is_some() && pending.is_empty() {
                            self.mark_caught_up();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "sessions tail receive failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        self.component.set(ComponentState::Stopped);
    }
}

/// Evicts the membership cache from the membership topic.
pub(crate) struct MembershipTail<M> {
    consumer: Arc<TailConsumer>,
    topic: String,
    cache: MembershipCache<M>,
    component: ComponentHandle,
}

impl<M: MembershipStore> MembershipTail<M> {
    pub(crate) fn new(
        kafka: &KafkaConfig,
        worker_id: &str,
        topic: &str,
        cache: MembershipCache<M>,
        component: ComponentHandle,
    ) -> Result<Self, KafkaError> {
        let consumer = assigned_consumer(kafka, &format!("{worker_id}-membership"), false)?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            cache,
            component,
        })
    }

    /// Positions the tail at the topic's current end. `Ok(false)` on
    /// shutdown.
    pub(crate) async fn position(&self, shutdown: &Shutdown) -> Result<bool, KafkaError> {
        let Some(marks) =
            marks_with_retry(&self.consumer, &self.topic, &self.component, shutdown).await
        else {
            return Ok(false);
        };
        match assign(&self.consumer, &self.topic, &marks, true) {
            Ok(()) => {
                self.component.set(ComponentState::Ready);
                Ok(true)
            }
            Err(error) => {
                self.component.set(ComponentState::Failed(format!(
                    "assign {}: {error}",
                    self.topic
                )));
                Err(error)
            }
        }
    }

    /// Runs until `shutdown`; call after [`MembershipTail::position`].
    pub(crate) async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let change = MembershipChangeSeen::of(&message);
                        drop(message);
                        change.apply(&self.cache).await;
                    }
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "membership tail receive failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        self.component.set(ComponentState::Stopped);
    }
}

/// What one membership-topic record asks the cache to evict.
enum MembershipChangeSeen {
    Record(Box<MembershipRecord>),
    /// Unreadable payload: its key is still the conversation; evict it to be
    /// safe.
    Unreadable(Option<ConversationId>),
}

impl MembershipChangeSeen {
    fn of<M: Message>(message: &M) -> Self {
        match message
            .payload()
            .map(serde_json::from_slice::<MembershipRecord>)
        {
            Some(Ok(record)) => MembershipChangeSeen::Record(Box::new(record)),
            _ => {
                tracing::warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "undecodable membership record"
                );
                MembershipChangeSeen::Unreadable(
                    message
                        .key()
                        .and_then(|key| std::str::from_utf8(key).ok())
                        .and_then(|key| ConversationId::parse(key).ok()),
                )
            }
        }
    }

    async fn apply<S: MembershipStore>(self, cache: &MembershipCache<S>) {
        match self {
            MembershipChangeSeen::Record(record) => cache.apply_record(&record).await,
            MembershipChangeSeen::Unreadable(Some(conversation)) => {
                cache.invalidate_conversation(&conversation).await
            }
            MembershipChangeSeen::Unreadable(None) => {}
        }
    }
}
