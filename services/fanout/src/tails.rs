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
//! The sessions tail also notices edges whose lease runs out (a crash: a
//! drained edge reports its users itself) and publishes, for each user
//! such an edge leaves with no live edge, an `offline` presence report
//! naming the dead edge. Every worker publishes them; the presence tracker
//! of the user's partition delivers one (see `crate::presence`).
//!
//! Both are [`TailConsumer`]s (`chatpipe-kafka`): they `assign` every
//! partition themselves, with no group, no commits, nothing to rebalance.
//! Partitions added to these topics while a worker runs are picked up on
//! its next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatpipe_core::ConversationId;
use chatpipe_core::records::{
    Event, EventRecord, MembershipRecord, PresenceStatus, SCHEMA_VERSION,
};
use chatpipe_core::store::MembershipStore;
use chatpipe_kafka::{
    ChatProducer, KafkaAdapterError, KafkaConfig, PartitionStart, Record, StartAt, TailConsumer,
    TailEvent, TailOptions,
};
use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use futures::StreamExt;
use tokio::sync::watch;

use crate::membership::MembershipCache;
use crate::metrics::FanoutMetrics;
use crate::push::EdgePushers;
use crate::routes::{ExpiredEdge, LeaseWatch, RouteChange, RouteTable, SharedRouteTable};

const START_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// Offline reports of one expired edge in flight at once.
const OFFLINE_REPORTS_IN_FLIGHT: usize = 256;
const OFFLINE_REPORT_DEADLINE: Duration = Duration::from_secs(10);

/// Where the offline reports of expired edges go.
pub(crate) struct OfflineReports {
    pub(crate) producer: ChatProducer,
    pub(crate) events_topic: String,
}

/// Assigns `tail` from `start`, retrying until it works or shutdown (then
/// `None`), showing the component as degraded meanwhile.
async fn assign_with_retry(
    tail: &TailConsumer,
    start: &StartAt,
    component: &ComponentHandle,
    shutdown: &Shutdown,
) -> Option<Vec<PartitionStart>> {
    loop {
        let error = match tail.assign(start).await {
            Ok(starts) => return Some(starts),
            Err(error) => error,
        };
        tracing::warn!(topic = tail.topic(), %error, "cannot position the tail yet; retrying");
        component.set(ComponentState::Degraded(format!(
            "{}: {error}",
            tail.topic()
        )));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(START_RETRY_DELAY) => {}
        }
    }
}

/// Feeds the route table from the sessions topic.
pub(crate) struct SessionsTail {
    tail: TailConsumer,
    table: SharedRouteTable,
    pushers: Arc<EdgePushers>,
    metrics: FanoutMetrics,
    component: ComponentHandle,
    caught_up: watch::Sender<bool>,
    forget_dead_edge_after_ms: u64,
    lease_watch: std::sync::Mutex<LeaseWatch>,
    offline_reports: Arc<OfflineReports>,
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
        offline_reports: OfflineReports,
    ) -> Result<(Self, watch::Receiver<bool>), KafkaAdapterError> {
        let options = TailOptions {
            report_partition_end: true,
            // The end of a partition (the route table caught up, fan-out
            // ready) shows in the fetch after its last record: the group
            // consumers' shorter wait keeps start-up quick.
            fetch_wait_max: chatpipe_kafka::config::LONG_POLL,
        };
        let tail = TailConsumer::new(kafka, &format!("{worker_id}-routes"), topic, &options)?;
        let (caught_up, caught_up_receiver) = watch::channel(false);
        Ok((
            Self {
                tail,
                table,
                pushers,
                metrics,
                component,
                caught_up,
                forget_dead_edge_after_ms,
                lease_watch: std::sync::Mutex::new(LeaseWatch::default()),
                offline_reports: Arc::new(offline_reports),
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
        tracing::info!(
            topic = self.tail.topic(),
            routes = self.metrics.route_table_routes.get(),
            "route table caught up"
        );
    }

    fn maintain(&self) {
        let now = chatpipe_core::time::now_unix_ms();
        let (forgotten, addresses, expired) = self.table.write(|table| {
            let expired = self
                .lease_watch
                .lock()
                .expect("lease watch lock poisoned")
                .expired(table, now);
            let forgotten = table.forget_dead_edges(now, self.forget_dead_edge_after_ms);
            self.publish_gauges(table);
            (forgotten, table.push_addresses(), expired)
        });
        for edge in expired {
            tracing::warn!(edge = %edge.edge_id, users = edge.users_gone.len(), "edge lease ran out; reporting its users offline");
            self.metrics.edges_expired.inc();
            // Off the tail's loop: a large edge's reports must not hold up
            // the route table.
            tokio::spawn(report_offline(
                self.offline_reports.clone(),
                edge,
                self.metrics.clone(),
            ));
        }
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
        let Some(starts) =
            assign_with_retry(&self.tail, &StartAt::Beginning, &self.component, &shutdown).await
        else {
            return;
        };
        // Partitions still to read up to their start-time high watermark.
        let mut pending: HashMap<i32, i64> = starts
            .iter()
            .filter(|start| start.has_backlog())
            .map(|start| (start.partition, start.high))
            .collect();
        tracing::info!(topic = self.tail.topic(), partitions = starts.len(), to_read = ?pending, "loading the route table");
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
                received = self.tail.recv() => match received {
                    Ok(TailEvent::Record(record)) => {
                        self.apply(&record);
                        if !pending.is_empty()
                            && pending.get(&record.partition()).is_some_and(|high| record.offset() + 1 >= *high)
                        {
                            pending.remove(&record.partition());
                            if pending.is_empty() {
                                self.mark_caught_up();
                            }
                        }
                    }
                    Ok(TailEvent::PartitionEnd { partition }) => {
                        if pending.remove(&partition).is_some() && pending.is_empty() {
                            self.mark_caught_up();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = self.tail.topic(), %error, "sessions tail receive failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        self.component.set(ComponentState::Stopped);
    }

    /// Applies one sessions record to the route table.
    fn apply(&self, record: &Record) {
        let applied = self.table.write(|table| {
            let applied = table.apply(record.key(), record.payload());
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
                tracing::warn!(partition = record.partition(), offset = record.offset(), %error, "skipping invalid sessions record");
            }
        }
    }
}

/// Publishes an `offline` presence report, naming the dead edge, for each
/// user an expired edge left with no live edge (best effort: a report that
/// fails is logged; the user's next session reports them again).
async fn report_offline(reports: Arc<OfflineReports>, edge: ExpiredEdge, metrics: FanoutMetrics) {
    let now = chatpipe_core::time::now_unix_ms();
    let edge_id = edge.edge_id;
    futures::stream::iter(edge.users_gone)
        .for_each_concurrent(OFFLINE_REPORTS_IN_FLIGHT, |user_id| {
            let reports = &reports;
            let metrics = &metrics;
            let edge_id = &edge_id;
            async move {
                let key = user_id.to_string();
                let record = EventRecord {
                    schema_version: SCHEMA_VERSION,
                    event: Event::Presence {
                        user_id,
                        status: PresenceStatus::Offline,
                        edge_id: Some(edge_id.clone()),
                    },
                    ts: now,
                };
                match reports
                    .producer
                    .send_json(
                        &reports.events_topic,
                        &key,
                        &record,
                        OFFLINE_REPORT_DEADLINE,
                    )
                    .await
                {
                    Ok(_) => {
                        metrics.expired_edge_offline_reports.inc();
                    }
                    Err(error) => {
                        tracing::warn!(%error, user = %key, "offline report not published");
                    }
                }
            }
        })
        .await;
}

/// Evicts the membership cache from the membership topic.
pub(crate) struct MembershipTail<M> {
    tail: TailConsumer,
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
    ) -> Result<Self, KafkaAdapterError> {
        let tail = TailConsumer::new(
            kafka,
            &format!("{worker_id}-membership"),
            topic,
            &TailOptions::default(),
        )?;
        Ok(Self {
            tail,
            cache,
            component,
        })
    }

    /// Positions the tail at the topic's current end (explicit offsets,
    /// so no change after this call is missed). `false` on shutdown.
    pub(crate) async fn position(&self, shutdown: &Shutdown) -> bool {
        let positioned =
            assign_with_retry(&self.tail, &StartAt::End, &self.component, shutdown).await;
        if positioned.is_some() {
            self.component.set(ComponentState::Ready);
        }
        positioned.is_some()
    }

    /// Runs until `shutdown`; call after [`MembershipTail::position`].
    pub(crate) async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                received = self.tail.recv() => match received {
                    Ok(TailEvent::Record(record)) => {
                        MembershipChangeSeen::of(&record).apply(&self.cache).await;
                    }
                    Ok(TailEvent::PartitionEnd { .. }) => {}
                    Err(error) => {
                        tracing::warn!(topic = self.tail.topic(), %error, "membership tail receive failed");
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
    fn of(message: &Record) -> Self {
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
                        .key_str()
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
