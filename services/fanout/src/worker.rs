//! Wires one fan-out worker: the two tails, the membership cache, the edge
//! pushers and the consumer group, in start-up order.
//!
//! ```text
//!  sessions tail ──catch up──▶ membership tail positioned ──▶ consumer group (run_partitioned)
//!       │ keeps tailing              │ keeps evicting              │ one task + FanoutHandler per partition
//! ```
//!
//! Each assigned partition of `chat.messages`, `chat.events` and
//! `chat.membership` is driven by
//! its own task (see [`chatpipe_kafka::partitioned`]): a push that waits for a
//! slow edge holds up only the partition whose batch it belongs to, while
//! conversations of the other partitions keep flowing.
//!
//! Health components: `fanout.routes` (Ready once the route table caught
//! up), `fanout.membership` (Ready once positioned), `fanout.consumer`
//! (Ready while consuming). The worker is ready when all three are.

use std::sync::Arc;
use std::time::Duration;

use chatpipe_core::auth::PushKey;
use chatpipe_core::store::MembershipStore;
use chatpipe_kafka::consumer::ConsumerSettings;
use chatpipe_kafka::{
    ChatProducer, DeadLetterSink, KafkaConfig, PartitionKey, partitioned_consumer, run_partitioned,
};
use chatpipe_runtime::health::{ComponentHandle, ComponentState};
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::FanoutConfig;
use crate::error::FanoutError;
use crate::handler::FanoutHandler;
use crate::membership::MembershipCache;
use crate::metrics::FanoutMetrics;
use crate::push::EdgePushers;
use crate::routes::{RouteTable, SharedRouteTable};
use crate::tails::{MembershipTail, SessionsTail};

/// The producer (dead letters, offline reports of expired edges) lingers a
/// little: what it writes is rare.
const DEAD_LETTER_LINGER_MS: u32 = 5;

/// A running fan-out worker.
#[derive(Debug)]
pub struct FanoutWorker {
    metrics: FanoutMetrics,
    routes: SharedRouteTable,
    task: JoinHandle<Result<(), FanoutError>>,
}

impl FanoutWorker {
    /// Starts a worker on the current Tokio runtime and returns at once.
    /// Its metrics are registered into `registry` under `chatpipe_fanout_`;
    /// its components into `health`. It stops when `shutdown` is cancelled
    /// (after the consumer committed what it stored). Every push carries
    /// `push_key`.
    pub fn spawn<M: MembershipStore>(
        config: FanoutConfig,
        kafka: KafkaConfig,
        store: M,
        push_key: PushKey,
        registry: &mut Registry,
        health: Health,
        shutdown: Shutdown,
    ) -> Result<Self, FanoutError> {
        config.validate().map_err(FanoutError::Config)?;
        let metrics = FanoutMetrics::new();
        metrics.register(registry);
        let routes = SharedRouteTable::new(RouteTable::new(config.lease_grace_ms));
        let pushers = Arc::new(EdgePushers::new(
            config.worker_id.clone(),
            config.push_settings(),
            push_key.clone(),
            metrics.clone(),
        ));
        let membership = MembershipCache::new(store, &config, metrics.clone());

        let routes_component = health.component("fanout.routes");
        let membership_component = health.component("fanout.membership");
        let consumer_component = health.component("fanout.consumer");
        let producer = ChatProducer::new(&kafka, DEAD_LETTER_LINGER_MS)?;
        let (sessions_tail, caught_up) = SessionsTail::new(
            &kafka,
            &config.worker_id,
            &config.topics.sessions,
            routes.clone(),
            pushers.clone(),
            metrics.clone(),
            routes_component,
            config.forget_dead_edge_after_ms,
            crate::tails::OfflineReports {
                producer: producer.clone(),
                events_topic: config.topics.events.clone(),
            },
        )?;
        let membership_tail = MembershipTail::new(
            &kafka,
            &config.worker_id,
            &config.topics.membership,
            membership.clone(),
            membership_component,
        )?;
        let dead_letters = DeadLetterSink::new(
            producer,
            config.topics.dead_letter.clone(),
            config.group_id.clone(),
            metrics.consumer.clone(),
        );
        let mut settings = ConsumerSettings::new(
            config.group_id.clone(),
            &[
                config.topics.messages.as_str(),
                config.topics.events.as_str(),
                config.topics.membership.as_str(),
            ],
        );
        settings.max_batch_records = config.max_batch_records;
        settings.batch_linger = Duration::from_millis(config.max_batch_wait_ms);
        let handler = FanoutHandler {
            topics: config.topics.clone(),
            routes: routes.clone(),
            membership,
            pushers,
            dead_letters,
            metrics: metrics.clone(),
            resolve_concurrency: config.resolve_concurrency,
            presence_max_members: config.presence_max_members,
            member_set_min_members: config.member_set_min_members,
            dead_lettered: Default::default(),
            shutdown: shutdown.token().clone(),
            dedup: chatpipe_kafka::PartitionedSendDedup::new(
                &kafka,
                config.topics.messages.clone(),
                chatpipe_kafka::SendDedupSettings::with_window_ms(config.send_dedup_window_ms),
                metrics.send_dedup.clone(),
            ),
            presence: crate::presence::PresenceTracker::new(config.presence_tracked_users_max),
            presence_judged: Default::default(),
            membership_event_max_age_ms: config.membership_event_max_age_ms,
            verdicts: Arc::new(crate::verdicts::VerdictPusher::new(
                config.worker_id.clone(),
                config.push_timeout(),
                push_key,
                metrics.clone(),
            )),
        };
        let consumer_kafka = KafkaConfig::new(
            kafka.brokers.clone(),
            format!("{}-{}", kafka.client_id, config.worker_id),
        );
        let worker = Worker {
            sessions_tail,
            caught_up,
            membership_tail,
            kafka: consumer_kafka,
            settings,
            handler,
            metrics: metrics.clone(),
            consumer_component,
        };
        let task = shutdown.spawn(worker.run(shutdown.clone()));
        Ok(Self {
            metrics,
            routes,
            task,
        })
    }

    /// The worker's counters (shared handles: they keep counting).
    pub fn metrics(&self) -> &FanoutMetrics {
        &self.metrics
    }

    /// The worker's route table (for inspection and tests).
    pub fn routes(&self) -> &SharedRouteTable {
        &self.routes
    }

    /// Kills the worker at once, without the orderly shutdown (no final
    /// commit by the consumer loop). For crash tests; cancel the worker's
    /// `Shutdown` too, to stop what it spawned.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for the worker to stop.
    pub async fn join(self) -> Result<(), FanoutError> {
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => Err(FanoutError::Task(join_error.to_string())),
        }
    }
}

/// Runs a fan-out worker until `shutdown` is cancelled (or the consumer
/// stops on a non-retriable failure).
pub async fn run<M: MembershipStore>(
    config: FanoutConfig,
    kafka: KafkaConfig,
    store: M,
    push_key: PushKey,
    registry: &mut Registry,
    health: Health,
    shutdown: Shutdown,
) -> Result<(), FanoutError> {
    FanoutWorker::spawn(config, kafka, store, push_key, registry, health, shutdown)?
        .join()
        .await
}

/// Everything the worker task owns.
struct Worker<M> {
    sessions_tail: SessionsTail,
    caught_up: watch::Receiver<bool>,
    membership_tail: MembershipTail<M>,
    kafka: KafkaConfig,
    settings: ConsumerSettings,
    handler: FanoutHandler<M>,
    metrics: FanoutMetrics,
    consumer_component: ComponentHandle,
}

impl<M: MembershipStore> Worker<M> {
    async fn run(self, shutdown: Shutdown) -> Result<(), FanoutError> {
        let Worker {
            sessions_tail,
            mut caught_up,
            membership_tail,
            kafka,
            settings,
            handler,
            metrics,
            consumer_component,
        } = self;
        // The tails stop when the consumer stops, whichever way it stops.
        let tails_shutdown = shutdown.child();
        let consume = async {
            let outcome = async {
                let route_table_loaded = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => false,
                    loaded = caught_up.wait_for(|ready| *ready) => loaded.is_ok(),
                };
                if !route_table_loaded && !shutdown.is_cancelled() {
                    consumer_component.set(ComponentState::Stopped);
                    return Err(FanoutError::Task("the sessions tail stopped before catching up".into()));
                }
                if !route_table_loaded || !membership_tail.position(&shutdown).await {
                    consumer_component.set(ComponentState::Stopped);
                    return Ok(());
                }
                let consumer = partitioned_consumer(&kafka, &settings, &metrics.consumer)?;
                tracing::info!(group = %settings.group_id, topics = ?settings.topics, "fan-out consuming");
                let membership_run = membership_tail.run(tails_shutdown.clone());
                let batches_run = async {
                    // Each partition gets its own handler, whose push retries
                    // end when the partition is revoked or the worker stops.
                    let make_handler = |_partition: &PartitionKey, stop: &Shutdown| FanoutHandler {
                        shutdown: stop.token().clone(),
                        ..handler.clone()
                    };
                    let result = run_partitioned(
                        consumer,
                        settings.clone(),
                        make_handler,
                        metrics.consumer.clone(),
                        consumer_component.clone(),
                        shutdown.clone(),
                    )
                    .await;
                    tails_shutdown.cancel();
                    result
                };
                let ((), result) = tokio::join!(membership_run, batches_run);
                result.map_err(FanoutError::from)
            }
            .await;
            tails_shutdown.cancel();
            outcome
        };
        let ((), outcome) = tokio::join!(sessions_tail.run(tails_shutdown.clone()), consume);
        if let Err(error) = &outcome {
            tracing::error!(%error, "fan-out worker stopped");
        }
        outcome
    }
}
