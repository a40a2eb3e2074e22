//! Starting an edge, and its drain.
//!
//! Tasks of one edge, all under the edge's [`Shutdown`] child:
//! - the WebSocket listener (`/ws` only; metrics and health are served on
//!   the role's separate ops listener, see the `chatpipe` library),
//! - the gRPC push listener,
//! - the route task: publishes route and presence changes in order, renews
//!   the edge's lease, expires detached sessions,
//! - the membership tail: evicts cached membership on membership events.
//!
//! Drain (SIGTERM, or the shutdown tree): readiness turns `draining`, the
//! lease says `draining`, the listener stops accepting, every connection
//! finishes its in-flight sends, gets `reconnect` and is closed; then the
//! edge removes its routes (and reports its users offline here: fan-out
//! tells the members only about users no other edge holds) and lease,
//! flushes the producer and stops the push listener — all within
//! `drain_deadline_ms`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use chatpipe_core::auth::{PushKey, TokenKeys};
use chatpipe_core::records::{
    EdgeState, Event, EventRecord, MembershipChange, MembershipRecord, PresenceStatus,
    SCHEMA_VERSION,
};
use chatpipe_core::store::EdgeStore;
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::{ChatProducer, KafkaConfig, StartAt, TailConsumer, TailEvent, TailOptions};
use chatpipe_proto::push::edge_push_server::EdgePushServer;
use chatpipe_runtime::Shutdown;
use chatpipe_runtime::health::{ComponentHandle, ComponentState, Health};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admission::{AuthFailureGate, IpConnections};
use crate::config::EdgeConfig;
use crate::identity::{self, IdentityError};
use crate::metrics::EdgeMetrics;
use crate::push::{PushService, RequirePushKey};
use crate::routes::RouteAnnouncer;
use crate::send::{SendPath, SendPathSettings};
use crate::sessions::{RouteChange, SessionRegistry};
use crate::ws::ws_handler;

/// Typed start-up failures of an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] chatpipe_kafka::KafkaAdapterError),
    #[error("edge identity: {0}")]
    Identity(#[from] IdentityError),
}

/// How long reading the edge leases at start may take.
const IDENTITY_READ_DEADLINE: Duration = Duration::from_secs(15);

type RouteJob = (RouteChange, Option<oneshot::Sender<()>>);

/// State shared by every connection and task of one edge.
pub struct EdgeShared<S> {
    pub(crate) config: EdgeConfig,
    pub(crate) keys: TokenKeys,
    pub(crate) sessions: Arc<SessionRegistry>,
    pub(crate) send_path: SendPath<S>,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) connect_global: DefaultDirectRateLimiter,
    pub(crate) connect_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Concurrent connections per client address.
    pub(crate) ip_connections: Arc<IpConnections>,
    /// Failed authentications per client address.
    pub(crate) auth_failures: AuthFailureGate,
    pub(crate) open_connections: AtomicUsize,
    pub(crate) next_connection: AtomicU64,
    /// Cancelled when the drain starts.
    pub(crate) draining: CancellationToken,
    route_jobs: mpsc::Sender<RouteJob>,
}

impl<S> EdgeShared<S> {
    /// Publishes a route change and waits (bounded) until it is in Kafka, so
    /// that a client's `hello` means fan-out can find it.
    pub(crate) async fn route_change(&self, change: Option<RouteChange>) {
        let Some(change) = change else { return };
        let (done_tx, done_rx) = oneshot::channel();
        if self.route_jobs.send((change, Some(done_tx))).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), done_rx).await;
        }
    }
}

/// A running edge.
pub struct EdgeHandle {
    pub metrics: EdgeMetrics,
    /// The edge's id, and the message-id worker id it claimed.
    pub edge_id: chatpipe_core::EdgeId,
    pub worker_id: u16,
    pub sessions: Arc<SessionRegistry>,
    /// Where `/ws` listens (the real port when configured with port 0).
    pub http_addr: SocketAddr,
    pub push_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

chatpipe_core::debug_fields!(EdgeHandle {
    http_addr,
    push_addr
});

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = std::num::NonZeroU32::new(per_second.max(1)).expect("at least one");
    let burst = std::num::NonZeroU32::new(burst.max(1)).expect("at least one");
    Quota::per_second(rate).allow_burst(burst)
}

/// Starts an edge; it runs until `shutdown` is cancelled, then drains. Its
/// metrics are registered into `registry` and its components into `health`;
/// whoever starts it serves both on an ops listener. `keys` verify client
/// tokens; `push_key` is what every push call must present.
#[allow(clippy::too_many_arguments)]
pub async fn spawn_edge<S: EdgeStore>(
    config: EdgeConfig,
    keys: TokenKeys,
    push_key: PushKey,
    store: S,
    kafka: &KafkaConfig,
    registry: &mut Registry,
    health: Health,
    shutdown: Shutdown,
) -> Result<EdgeHandle, EdgeError> {
    let metrics = EdgeMetrics::new();
    metrics.register(registry);
    let listener_component = health.component("edge_listener");
    let routes_component = health.component("edge_routes");

    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| EdgeError::Bind {
            what: "websocket listener",
            addr: config.http_addr,
            source,
        })?;
    let push_listener = TcpListener::bind(config.push_addr)
        .await
        .map_err(|source| EdgeError::Bind {
            what: "push listener",
            addr: config.push_addr,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| EdgeError::Bind {
            what: "websocket listener",
            addr: config.http_addr,
            source,
        })?;
    let push_addr = push_listener
        .local_addr()
        .map_err(|source| EdgeError::Bind {
            what: "push listener",
            addr: config.push_addr,
            source,
        })?;

    // The edge id and worker id are claimed against the live leases before
    // anything is published, then checked once more (see `identity`).
    let announced_push_addr = config
        .advertised_push_addr
        .clone()
        .unwrap_or_else(|| push_addr.to_string());
    let live =
        identity::read_live_edges(kafka, &config.topics.sessions, IDENTITY_READ_DEADLINE).await??;
    let worker_id = identity::claim(
        &config.edge_id,
        &announced_push_addr,
        config.worker_id,
        &live,
    )?;
    let producer = ChatProducer::new(kafka, config.producer_linger_ms)?;
    let announcer = RouteAnnouncer::new(
        producer.clone(),
        config.topics.sessions.clone(),
        config.edge_id.clone(),
        announced_push_addr.clone(),
        worker_id,
        Duration::from_millis(config.lease_ms),
    );
    let announced_ts = announcer.announce_edge(EdgeState::Serving).await?;
    let live =
        identity::read_live_edges(kafka, &config.topics.sessions, IDENTITY_READ_DEADLINE).await??;
    if let Some(lost) = identity::lost_claim(
        &config.edge_id,
        &announced_push_addr,
        worker_id,
        announced_ts,
        &live,
    ) {
        // A lost worker id: this edge's own lease goes. A lost edge id: the
        // lease under it is the winner's, and stays.
        if matches!(lost, IdentityError::DuplicateWorkerId { .. })
            && let Err(error) = announcer.retire_edge().await
        {
            tracing::warn!(%error, "could not retire the lease of a refused start");
        }
        return Err(lost.into());
    }
    tracing::info!(edge = %config.edge_id, worker_id, "edge id and worker id claimed");

    let sessions = Arc::new(
        SessionRegistry::new(config.session_buffer_frames, config.max_unwritten_frames)
            .with_max_sessions_per_user(config.max_sessions_per_user),
    );
    let send_path = SendPath::new(
        store,
        producer.clone(),
        SendPathSettings {
            edge_id: config.edge_id.clone(),
            worker_id,
            topics: config.topics.clone(),
            deadline: Duration::from_millis(config.send_deadline_ms),
            membership_ttl: Duration::from_millis(config.membership_cache_ttl_ms),
            dedup_ttl: Duration::from_millis(config.dedup_cache_ttl_ms),
        },
        metrics.clone(),
    );
    let (route_jobs_tx, route_jobs_rx) = mpsc::channel::<RouteJob>(4096);
    let member_sets = Arc::new(crate::push::MemberSets::new(
        config.push_member_sets_max_members,
    ));
    let edge = Arc::new(EdgeShared {
        connect_global: RateLimiter::direct(quota(
            config.connects_per_second_global,
            config.connects_burst_global,
        )),
        connect_per_ip: RateLimiter::keyed(quota(
            config.connects_per_second_per_ip,
            config.connects_burst_per_ip,
        )),
        ip_connections: IpConnections::new(config.max_connections_per_ip),
        auth_failures: AuthFailureGate::new(
            config.auth_failures_per_ip_per_minute,
            Duration::from_millis(config.auth_failure_penalty_ms),
        ),
        config,
        keys,
        sessions: sessions.clone(),
        send_path,
        metrics: metrics.clone(),
        open_connections: AtomicUsize::new(0),
        next_connection: AtomicU64::new(1),
        draining: CancellationToken::new(),
        route_jobs: route_jobs_tx,
    });

    // Positioned at the topic's end *now*, before the edge serves: the
    // membership cache starts empty, so every change it could hold stale is
    // produced after this point and will be seen.
    let membership_tail = TailConsumer::new(
        kafka,
        "membership-tail",
        &edge.config.topics.membership,
        &TailOptions::default(),
    )?;
    membership_tail
        .assign_before(
            &StartAt::End,
            tokio::time::Instant::now() + MEMBERSHIP_TAIL_START_DEADLINE,
        )
        .await?;
    let tail_stop = CancellationToken::new();
    let tail_task = tokio::spawn(run_membership_tail(
        edge.clone(),
        membership_tail,
        tail_stop.clone(),
    ));
    let routes_stop = CancellationToken::new();
    let route_task = tokio::spawn(run_route_task(
        edge.clone(),
        announcer.clone(),
        route_jobs_rx,
        routes_component,
        routes_stop.clone(),
    ));

    let push_stop = CancellationToken::new();
    let push_service = PushService {
        sessions: sessions.clone(),
        metrics: metrics.clone(),
        verdicts: edge.send_path.verdict_waiters(),
        member_sets,
    };
    let push_gate = RequirePushKey::new(push_key, metrics.clone());
    let push_task = {
        let push_stop = push_stop.clone();
        tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(push_listener).with_nodelay(Some(true));
            // The gate runs before the service decodes anything it acts on.
            let service = tonic::service::interceptor::InterceptedService::new(
                EdgePushServer::new(push_service).max_decoding_message_size(64 * 1024 * 1024),
                push_gate,
            );
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, push_stop.cancelled_owned())
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "push listener failed");
            }
        })
    };

    let app = Router::new()
        .route("/ws", get(ws_handler::<S>))
        .with_state(edge.clone());
    let listener_stop = CancellationToken::new();
    let http_task = {
        let listener_stop = listener_stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(listener_stop.cancelled_owned())
            .await;
            if let Err(error) = served {
                tracing::error!(%error, "websocket listener failed");
            }
        })
    };
    listener_component.set(ComponentState::Ready);
    tracing::info!(edge = %edge.config.edge_id, %http_addr, %push_addr, "edge serving");

    let edge_id = edge.config.edge_id.clone();
    let stop_signal = shutdown.clone();
    let task = shutdown.spawn(async move {
        stop_signal.cancelled().await;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(edge.config.drain_deadline_ms);
        tracing::info!(edge = %edge.config.edge_id, "edge draining");
        listener_component.set(ComponentState::Draining);
        if let Err(error) = announcer.announce_edge(EdgeState::Draining).await {
            tracing::warn!(%error, "could not announce draining");
        }
        listener_stop.cancel();
        edge.draining.cancel();
        while edge.open_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout_at(deadline, http_task).await;
        routes_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, route_task).await;
        let leaving: Vec<RouteChange> = edge
            .sessions
            .users()
            .into_iter()
            .map(RouteChange::UserLeft)
            .collect();
        // Routes, then presence: each user's `offline` names this edge, and
        // fan-out passes it on only if no other edge holds the user (the
        // clients told to reconnect are usually on another one by now).
        for changes in leaving.chunks(ROUTE_BATCH_MAX) {
            apply_route_changes(&edge, &announcer, changes).await;
        }
        if let Err(error) = announcer.retire_edge().await {
            tracing::warn!(%error, "could not retire edge lease");
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(error) = producer.flush(remaining.max(Duration::from_millis(100))) {
            tracing::warn!(%error, "producer flush incomplete");
        }
        push_stop.cancel();
        tail_stop.cancel();
        let _ = push_task.await;
        let _ = tail_task.await;
        listener_component.set(ComponentState::Stopped);
        tracing::info!(edge = %edge.config.edge_id, "edge stopped");
    });

    Ok(EdgeHandle {
        metrics,
        edge_id,
        worker_id,
        sessions,
        http_addr,
        push_addr,
        task,
    })
}

/// Publishes route and presence changes in order; renews the lease;
/// expires detached sessions.
async fn run_route_task<S: EdgeStore>(
    edge: Arc<EdgeShared<S>>,
    announcer: RouteAnnouncer,
    mut jobs: mpsc::Receiver<RouteJob>,
    component: ComponentHandle,
    stop: CancellationToken,
) {
    let mut renew = tokio::time::interval(announcer.lease() / 3);
    // When the lease Kafka last acknowledged runs out (unix ms).
    let mut lease_until: Option<u64> = None;
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut forget = tokio::time::interval(Duration::from_secs(60));
    let resume_window = Duration::from_millis(edge.config.resume_window_ms);
    component.set(ComponentState::Ready);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(first) = jobs.recv() => {
                // Everything queued meanwhile goes out together: one Kafka
                // round trip for many connects instead of one each.
                let mut batch = vec![first];
                while batch.len() < ROUTE_BATCH_MAX {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (changes, dones): (Vec<RouteChange>, Vec<_>) = batch.into_iter().unzip();
                apply_route_changes(&edge, &announcer, &changes).await;
                for done in dones.into_iter().flatten() {
                    let _ = done.send(());
                }
            }
            _ = renew.tick() => {
                let state = if edge.draining.is_cancelled() { EdgeState::Draining } else { EdgeState::Serving };
                match announcer.announce_edge(state).await {
                    Ok(renewed_at) => {
                        if lease_lapsed(lease_until, now_unix_ms()) {
                            // Kafka held the renewals (a broker failover, a
                            // stall) past the lease: fan-out took this edge
                            // for dead and skipped its users without telling
                            // anyone. Their sessions start over and catch up.
                            let sessions = edge.sessions.resync_all();
                            edge.metrics.lease_lapses.inc();
                            tracing::warn!(sessions, "the lease ran out before Kafka acknowledged its renewal; every session starts over");
                        }
                        lease_until = Some(renewed_at.saturating_add(announcer.lease().as_millis() as u64));
                        component.set(ComponentState::Ready);
                    }
                    Err(error) => {
                        edge.metrics.route_publish_failures.inc();
                        component.set(ComponentState::Degraded(format!("lease renewal failed: {error}")));
                    }
                }
            }
            _ = sweep.tick() => {
                let expired = edge.sessions.expire_detached(resume_window);
                for changes in expired.chunks(ROUTE_BATCH_MAX) {
                    apply_route_changes(&edge, &announcer, changes).await;
                }
                edge.metrics.sessions.set(edge.sessions.session_count() as i64);
                edge.metrics.queued_frames.set(edge.sessions.queued_frames() as i64);
                edge.metrics.route_queue_depth.set(jobs.len() as i64);
            }
            _ = forget.tick() => {
                // Per-address limiter state follows live addresses only.
                edge.connect_per_ip.retain_recent();
                edge.auth_failures.forget_idle();
            }
        }
    }
}

/// Whether a renewal acknowledged at `acked_at_ms` came after the lease
/// acknowledged before it ran out (`lease_until_ms`): fan-out ignores an
/// edge's routes once its lease is over, so frames may have been skipped.
fn lease_lapsed(lease_until_ms: Option<u64>, acked_at_ms: u64) -> bool {
    lease_until_ms.is_some_and(|until| acked_at_ms > until)
}

/// How long an edge start waits for the membership topic to be readable.
const MEMBERSHIP_TAIL_START_DEADLINE: Duration = Duration::from_secs(15);

/// Most route changes published together.
const ROUTE_BATCH_MAX: usize = 1024;

/// Publishes route changes, then the matching presence events. All records
/// of one phase are handed to the producer in order before any is awaited,
/// so they share Kafka round trips while records of one key keep their
/// order (the producer is idempotent: order holds through retries).
async fn apply_route_changes<S: EdgeStore>(
    edge: &EdgeShared<S>,
    announcer: &RouteAnnouncer,
    changes: &[RouteChange],
) {
    publish_routes(edge, announcer, changes).await;
    publish_presence(edge, changes).await;
}

/// The route records of `changes`, handed to the producer together.
async fn publish_routes<S>(
    edge: &EdgeShared<S>,
    announcer: &RouteAnnouncer,
    changes: &[RouteChange],
) {
    let routed = futures::future::join_all(changes.iter().map(|change| async move {
        match change {
            RouteChange::UserArrived(user) => announcer.route_up(user).await,
            RouteChange::UserLeft(user) => announcer.route_down(user).await,
        }
    }))
    .await;
    for (change, outcome) in changes.iter().zip(routed) {
        if let Err(error) = outcome {
            edge.metrics.route_publish_failures.inc();
            let user = match change {
                RouteChange::UserArrived(user) | RouteChange::UserLeft(user) => user,
            };
            tracing::warn!(%error, %user, "route change not published");
        }
    }
}

/// The presence events of `changes`, handed to the producer together.
async fn publish_presence<S: EdgeStore>(edge: &EdgeShared<S>, changes: &[RouteChange]) {
    futures::future::join_all(changes.iter().map(|change| async move {
        let (user, status) = match change {
            RouteChange::UserArrived(user) => (user, PresenceStatus::Online),
            RouteChange::UserLeft(user) => (user, PresenceStatus::Offline),
        };
        let presence = EventRecord {
            schema_version: SCHEMA_VERSION,
            event: Event::Presence {
                user_id: user.clone(),
                status,
                // Per edge: fan-out reports the user offline only once no
                // edge holds them any more.
                edge_id: Some(edge.config.edge_id.clone()),
            },
            ts: now_unix_ms(),
        };
        if let Err(error) = edge.send_path.publish_presence(&presence, user).await {
            tracing::debug!(%error, %user, "presence not published");
        }
    }))
    .await;
}

/// Evicts cached membership when a membership record arrives, so a removed
/// member cannot keep sending on a cached answer.
async fn run_membership_tail<S: EdgeStore>(
    edge: Arc<EdgeShared<S>>,
    tail: TailConsumer,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = tail.recv() => next,
        };
        let message = match next {
            Ok(TailEvent::Record(message)) => message,
            Ok(TailEvent::PartitionEnd { .. }) => continue,
            Err(error) => {
                tracing::warn!(%error, "membership tail receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(Ok(record)) = message
            .payload()
            .map(serde_json::from_slice::<MembershipRecord>)
        else {
            continue;
        };
        match &record.change {
            MembershipChange::Removed { user_id } | MembershipChange::Added { user_id } => {
                edge.send_path
                    .forget_membership(&record.conversation_id, user_id)
                    .await;
            }
            MembershipChange::Created { .. }
            | MembershipChange::RoleChanged { .. }
            | MembershipChange::SettingsChanged { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lease_lapsed;

    #[test]
    fn a_renewal_acknowledged_after_the_lease_ran_out_is_a_lapse() {
        assert!(!lease_lapsed(None, 5_000), "the first lease cannot lapse");
        assert!(!lease_lapsed(Some(10_000), 9_999));
        assert!(!lease_lapsed(Some(10_000), 10_000));
        assert!(lease_lapsed(Some(10_000), 10_001));
    }
}
