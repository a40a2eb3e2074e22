//! The at-least-once consumer loop, one task per assigned partition.
//!
//! ```text
//!               ┌─ partition queue t/0 ─▶ task: batch ─▶ handler ─ok─▶ store offset (t,0)
//!  group ──────┼─ partition queue t/1 ─▶ task: batch ─▶ handler ─ok─▶ store offset (t,1)
//!  consumer    └─ …                        (retries with backoff, per partition)
//!     │
//!     └─ main queue: rebalances only (assign → split a queue + spawn a task,
//!                                      revoke → stop the task)
//! ```
//!
//! [`crate::consumer::run_batches`] hands its handler one batch spanning
//! every partition and waits for all of it: a handler stuck on one record
//! (a slow downstream for one key) holds up every partition of the worker.
//! Here each partition is split off the consumer's main queue
//! (`split_partition_queue`) and driven by its own task with its own
//! batch, retries and offset storing, so a stalled partition delays only
//! its own records.
//!
//! Delivery semantics are those of `run_batches`, per partition: a
//! partition's offset is *stored* only after its handler confirmed the
//! batch, and librdkafka's auto-commit only commits stored offsets; a task
//! whose partition was revoked stops retrying and stores nothing more (the
//! next owner re-reads from the last commit). Order holds within a
//! partition; partitions proceed independently.
//!
//! Queues are split in the context's `pre_rebalance` callback, before
//! librdkafka assigns the partitions, so no record of a split partition is
//! ever fetched into the main queue. Should one arrive there anyway (the
//! split failed), it is handled in place by a handler of its own, with the
//! same retry-then-store rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::config::KafkaConfig;
use crate::consumer::{BatchHandler, ConsumerMetrics, ConsumerSettings, HandlerError};
use crate::context::ChatpipeContext;
use crate::error::KafkaAdapterError;
use crate::record::Record;

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

impl std::fmt::Display for PartitionKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.topic, self.partition)
    }
}

/// A change of assignment seen by the rebalance callback, applied by the
/// main loop.
enum AssignmentChange {
    Assigned(PartitionKey, Option<PartitionQueue>),
    Revoked(PartitionKey),
}

type PartitionQueue = StreamPartitionQueue<PartitionedContext>;

/// The consumer type of the per-partition loop.
pub type PartitionedConsumer = StreamConsumer<PartitionedContext>;

/// librdkafka context: publishes lag from statistics and splits each newly
/// assigned partition off the main queue before it is assigned.
pub struct PartitionedContext {
    /// Lag, logs and client errors, as for every chatpipe client.
    common: ChatpipeContext,
    /// Set once the consumer exists; weak so that the context does not keep
    /// its own consumer alive.
    consumer: OnceLock<Weak<PartitionedConsumer>>,
    /// Changes not yet applied by the main loop. Bounded by the partitions
    /// of one rebalance: the main loop drains it after every callback.
    changes: Mutex<Vec<AssignmentChange>>,
    changed: Notify,
}

impl ClientContext for PartitionedContext {
    fn stats(&self, statistics: Statistics) {
        self.common.stats(statistics);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.common.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.common.error(error, reason);
    }
}

impl ConsumerContext for PartitionedContext {
    fn pre_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut changes = Vec::new();
        match rebalance {
            Rebalance::Assign(list) => {
                let consumer = self.consumer.get().and_then(Weak::upgrade);
                for element in list.elements() {
                    let key = PartitionKey {
                        topic: element.topic().to_owned(),
                        partition: element.partition(),
                    };
                    // Split before the assignment starts fetching, so that
                    // every record of the partition lands in its own queue.
                    let queue = consumer.as_ref().and_then(|consumer| {
                        consumer.split_partition_queue(&key.topic, key.partition)
                    });
                    changes.push(AssignmentChange::Assigned(key, queue));
                }
            }
            Rebalance::Revoke(list) => {
                for element in list.elements() {
                    changes.push(AssignmentChange::Revoked(PartitionKey {
                        topic: element.topic().to_owned(),
                        partition: element.partition(),
                    }));
                }
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "rebalance failed");
            }
        }
        if !changes.is_empty() {
            self.changes
                .lock()
                .expect("assignment changes lock")
                .extend(changes);
            self.changed.notify_one();
        }
    }
}

/// Creates and subscribes a group consumer for [`run_partitioned`], with
/// the settings of [`crate::consumer::group_consumer`].
pub fn partitioned_consumer(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    metrics: &ConsumerMetrics,
) -> Result<Arc<PartitionedConsumer>, KafkaAdapterError> {
    let consumer: PartitionedConsumer = crate::consumer::group_client_config(kafka, settings)
        .create_with_context(PartitionedContext {
            common: ChatpipeContext::with_lag(metrics.lag.clone()),
            consumer: OnceLock::new(),
            changes: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })?;
    let consumer = Arc::new(consumer);
    // Only this function sets it, once, right after creation.
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// Health of the whole consumer from the health of its partitions: Ready
/// unless some partition is retrying a failed batch.
#[derive(Clone)]
struct SharedHealth {
    component: ComponentHandle,
    failing: Arc<AtomicUsize>,
}

impl SharedHealth {
    fn failing(&self, message: &str) {
        self.failing.fetch_add(1, Ordering::SeqCst);
        self.component
            .set(ComponentState::Degraded(message.to_owned()));
    }

    fn recovered(&self) {
        if self.failing.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.component.set(ComponentState::Ready);
        }
    }
}

/// What every partition task shares.
#[derive(Clone)]
struct PartitionShared {
    consumer: Arc<PartitionedConsumer>,
    settings: ConsumerSettings,
    metrics: ConsumerMetrics,
    health: SharedHealth,
    /// The first non-retriable failure of any partition stops the loop.
    fatal: mpsc::Sender<HandlerError>,
}

struct PartitionTask {
    stop: Shutdown,
    task: JoinHandle<()>,
}

/// Runs one task per assigned partition until `shutdown`, then commits what
/// was stored. `make_handler` builds the handler of a newly assigned
/// partition; the [`Shutdown`] it receives is cancelled when the partition
/// is revoked or the loop stops (a handler should end its retries then).
/// Returns an error only for a non-retriable handler failure.
pub async fn run_partitioned<H, F>(
    consumer: Arc<PartitionedConsumer>,
    settings: ConsumerSettings,
    mut make_handler: F,
    metrics: ConsumerMetrics,
    component: ComponentHandle,
    shutdown: Shutdown,
) -> Result<(), HandlerError>
where
    H: BatchHandler + 'static,
    F: FnMut(&PartitionKey, &Shutdown) -> H,
{
    component.set(ComponentState::Ready);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<HandlerError>(1);
    let shared = PartitionShared {
        consumer: consumer.clone(),
        settings: settings.clone(),
        metrics,
        health: SharedHealth {
            component: component.clone(),
            failing: Arc::new(AtomicUsize::new(0)),
        },
        fatal: fatal_tx,
    };
    let mut tasks: HashMap<PartitionKey, PartitionTask> = HashMap::new();
    let context = consumer.context();
    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            Some(error) = fatal_rx.recv() => {
                component.set(ComponentState::Failed(error.message.clone()));
                tracing::error!(group = %settings.group_id, error = %error.message, "batch failed permanently; stopping without committing");
                break Err(error);
            }
            _ = context.changed.notified() => {
                let changes = std::mem::take(&mut *context.changes.lock().expect("assignment changes lock"));
                for change in changes {
                    match change {
                        AssignmentChange::Assigned(key, Some(queue)) => {
                            if let Some(previous) = tasks.remove(&key) {
                                previous.stop.cancel();
                            }
                            let stop = shutdown.child();
                            let handler = make_handler(&key, &stop);
                            tracing::info!(group = %settings.group_id, partition = %key, "partition assigned");
                            let task = tokio::spawn(run_partition(key.clone(), queue, handler, shared.clone(), stop.clone()));
                            tasks.insert(key, PartitionTask { stop, task });
                        }
                        AssignmentChange::Assigned(key, None) => {
                            // Its records will arrive on the main queue.
                            tracing::error!(group = %settings.group_id, partition = %key, "partition queue could not be split; its records are handled on the main queue");
                        }
                        AssignmentChange::Revoked(key) => {
                            if let Some(revoked) = tasks.remove(&key) {
                                tracing::info!(group = %settings.group_id, partition = %key, "partition revoked");
                                revoked.stop.cancel();
                            }
                        }
                    }
                }
            }
            // Serves rebalances; yields a record only for a partition whose
            // queue could not be split.
            received = consumer.recv() => match received {
                Ok(message) => {
                    let record = to_record(&message);
                    let key = PartitionKey { topic: record.topic().to_owned(), partition: record.partition() };
                    let stop = shutdown.child();
                    let mut handler = make_handler(&key, &stop);
                    if handle_with_retries(&mut handler, std::slice::from_ref(&record), &shared, &stop).await {
                        store_offset(&shared, &record);
                    }
                }
                Err(error) => {
                    tracing::warn!(group = %settings.group_id, %error, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    };
    component.set(ComponentState::Draining);
    for task in tasks.values() {
        task.stop.cancel();
    }
    for (key, task) in tasks {
        match task.task.await {
            Ok(()) => {}
            // The runtime itself is shutting down (a test ending, a process
            // exiting): nothing failed, the offsets were not committed and
            // the records will be re-delivered.
            Err(error) if error.is_cancelled() => {
                tracing::debug!(partition = %key, "partition task cancelled by the runtime");
            }
            Err(error) => tracing::warn!(partition = %key, %error, "partition task failed"),
        }
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        // Nothing stored yet, or the assignment was revoked: both harmless,
        // the records will be re-delivered.
        tracing::debug!(group = %settings.group_id, %error, "final commit skipped");
    }
    component.set(ComponentState::Stopped);
    outcome
}

/// Drives one partition: batch, handle (retrying), store, until `stop`.
async fn run_partition<H: BatchHandler>(
    key: PartitionKey,
    queue: PartitionQueue,
    mut handler: H,
    shared: PartitionShared,
    stop: Shutdown,
) {
    let settings = &shared.settings;
    let mut batch: Vec<Record> = Vec::with_capacity(settings.max_batch_records);
    loop {
        batch.clear();
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            received = queue.recv() => received,
        };
        match first {
            Ok(message) => batch.push(to_record(&message)),
            Err(error) => {
                tracing::warn!(group = %settings.group_id, partition = %key, %error, "kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let fill_deadline = tokio::time::Instant::now() + settings.batch_linger;
        while batch.len() < settings.max_batch_records {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(fill_deadline) => break,
                received = queue.recv() => match received {
                    Ok(message) => batch.push(to_record(&message)),
                    Err(error) => {
                        tracing::warn!(group = %settings.group_id, partition = %key, %error, "kafka receive failed");
                        break;
                    }
                },
            }
        }
        if !handle_with_retries(&mut handler, &batch, &shared, &stop).await {
            return;
        }
        shared.metrics.records.inc_by(batch.len() as u64);
        shared.metrics.batches.inc();
        shared.metrics.batch_size.observe(batch.len() as f64);
        if let Some(last) = batch.last() {
            store_offset(&shared, last);
        }
    }
}

/// Hands `batch` to the handler until it succeeds (true), or until `stop`
/// or a non-retriable failure (false; the failure goes to the main loop).
async fn handle_with_retries<H: BatchHandler>(
    handler: &mut H,
    batch: &[Record],
    shared: &PartitionShared,
    stop: &Shutdown,
) -> bool {
    let settings = &shared.settings;
    let mut backoff = settings.initial_backoff;
    let mut failed = false;
    let handled = loop {
        match handler.handle(batch).await {
            Ok(()) => break true,
            Err(error) if error.retriable => {
                shared.metrics.retries.inc();
                if !failed {
                    failed = true;
                    shared.health.failing(&error.message);
                }
                tracing::warn!(group = %settings.group_id, error = %error.message, backoff_ms = backoff.as_millis() as u64, "batch failed, retrying");
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break false,
                    _ = tokio::time::sleep(backoff) => {},
                }
                backoff = (backoff * 2).min(settings.max_backoff);
            }
            Err(error) => {
                // One fatal failure is enough to stop the loop.
                let _ = shared.fatal.try_send(error);
                break false;
            }
        }
    };
    if failed {
        shared.health.recovered();
    }
    // A handled batch is stored even if `stop` came meanwhile: for a revoked
    // partition librdkafka refuses the store (its next owner reads from the
    // last commit); at shutdown the final commit includes it.
    handled
}

/// Copies a received message out of librdkafka's buffer.
fn to_record<M: Message>(message: &M) -> Record {
    Record::from_message(message, std::sync::Arc::from(message.topic()))
}

fn store_offset(shared: &PartitionShared, last: &Record) {
    // Records of one partition come in offset order: the last is the highest.
    // `store_offset` stores offset + 1, the next record to consume.
    if let Err(error) = shared
        .consumer
        .store_offset(last.topic(), last.partition(), last.offset())
    {
        // The partition was revoked meanwhile; its new owner re-reads from
        // the last commit (at-least-once).
        tracing::debug!(topic = last.topic(), partition = last.partition(), %error, "offset not stored");
    }
}
