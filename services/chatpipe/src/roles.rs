//! One way to start every role.
//!
//! ```text
//! let deps = RoleDeps { kafka, topics, store, search, token_keys, push_key, jwks: None };
//! let edge = roles::spawn(edge_config, &deps, RoleContext::new(&root, ops_addr)).await?;
//! edge.ops_addr();       // where /metrics, /healthz, /readyz answer
//! edge.public_addr();    // where /ws answers
//! edge.shutdown().cancel();   // drain this role only
//! edge.join().await?;    // wait until it stopped
//! ```
//!
//! [`spawn`] does the same for each role, in this order: validate the
//! config ([`RoleConfig::validate`]), bind the ops listener (so a busy port
//! fails before anything starts), start the role with a fresh metrics
//! registry, a fresh [`Health`] and a child of the caller's shutdown, then
//! serve the finished registry and the health on the ops listener. The ops
//! listener keeps answering while the role drains (readiness says
//! `draining`) and stops once the role stopped, or [`OPS_LINGER`] after
//! the shutdown began.
//!
//! A [`RoleHandle`] dereferences to the role's own handle (an
//! [`EdgeHandle`], a [`FanoutWorker`], …), so callers still reach the
//! role's metrics and state.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use chatpipe_api::{ApiConfig, ApiDeps, ApiMetrics, ApiRunError, ApiServer};
use chatpipe_cassandra::CassandraStore;
use chatpipe_core::auth::{PushKey, TokenKeys};
use chatpipe_core::records::TopicNames;
use chatpipe_edge::{EdgeConfig, EdgeError, EdgeHandle, spawn_edge};
use chatpipe_fanout::{FanoutConfig, FanoutError, FanoutWorker};
use chatpipe_index::{IndexConfig, IndexError, IndexWorker};
use chatpipe_kafka::{ChatProducer, KafkaAdapterError, KafkaConfig};
use chatpipe_persist::{PersistConfig, PersistError, PersistMetrics, PersistRole};
use chatpipe_runtime::metrics::MetricsRegistry;

use crate::jwks::JwksMetrics;
use chatpipe_runtime::{Health, Shutdown, ops};
use chatpipe_search::{
    EngineError, EsClient, MessageSearcher, SearchEngineConfig, SearchLimits, SearchMetrics,
};
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Every default address of chatpipe, defined once. Public ports serve
/// clients; ops ports serve `/metrics`, `/healthz` and `/readyz` and bind
/// loopback. In `chatpipe all`, edge N (from 1) takes the edge ports plus
/// `2(N-1)` (WebSocket, ops) and `N-1` (push).
pub mod defaults {
    /// First edge, WebSocket (`/ws`).
    pub const EDGE_LISTEN: &str = "127.0.0.1:8080";
    /// First edge, ops listener.
    pub const EDGE_OPS_LISTEN: &str = "127.0.0.1:8081";
    /// First edge, gRPC push listener (called by fan-out).
    pub const EDGE_PUSH_LISTEN: &str = "127.0.0.1:8180";
    /// HTTP API (`/v1/…`, `/openapi.json`).
    pub const API_LISTEN: &str = "127.0.0.1:8090";
    /// Fan-out ops listener.
    pub const FANOUT_OPS_LISTEN: &str = "127.0.0.1:8091";
    /// Persist ops listener.
    pub const PERSIST_OPS_LISTEN: &str = "127.0.0.1:8092";
    /// Index ops listener.
    pub const INDEX_OPS_LISTEN: &str = "127.0.0.1:8093";
    /// API ops listener.
    pub const API_OPS_LISTEN: &str = "127.0.0.1:8094";
    /// Kafka bootstrap servers.
    pub const KAFKA_BROKERS: &str = "127.0.0.1:9092";
    /// Cassandra contact point.
    pub const CASSANDRA: &str = "127.0.0.1:9042";
    /// Elasticsearch-API engine.
    pub const ELASTICSEARCH_URL: &str = "http://127.0.0.1:9200";
}

/// How long an ops listener keeps answering after its role's shutdown
/// began, at most (it stops earlier when the role has stopped).
pub const OPS_LINGER: Duration = Duration::from_secs(30);

/// Linger of the dead-letter producer of persist (few records, rarely).
const DEAD_LETTER_LINGER_MS: u32 = 5;
/// Linger of the API's membership-record producer (one record per call).
const API_PRODUCER_LINGER_MS: u32 = 1;

/// The roles of chatpipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleKind {
    Edge,
    Fanout,
    Persist,
    Index,
    Api,
}

impl RoleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Edge => "edge",
            RoleKind::Fanout => "fanout",
            RoleKind::Persist => "persist",
            RoleKind::Index => "index",
            RoleKind::Api => "api",
        }
    }
}

impl std::fmt::Display for RoleKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What roles share: the engines, the token keys and the push key.
#[derive(Clone)]
pub struct RoleDeps {
    /// Kafka brokers; `client_id` is a prefix, each role appends its name.
    pub kafka: KafkaConfig,
    /// Topic names (persist and the API take them from here; edge, fan-out
    /// and index configs carry their own `topics`).
    pub topics: TopicNames,
    /// History and membership.
    pub store: CassandraStore,
    /// The search engine the API queries (index's config names its own).
    pub search: SearchEngineConfig,
    /// Verify (and, for the API, nothing else) bearer tokens.
    pub token_keys: TokenKeys,
    /// What fan-out presents on every push and edges require (derived from
    /// the token secret unless `CHATPIPE_PUSH_SECRET` is set).
    pub push_key: PushKey,
    /// The counters of the JWKS URL's refresher, when tokens verify with
    /// keys from one ([`crate::jwks`]); the edge and the API register them.
    pub jwks: Option<JwksMetrics>,
}

chatpipe_core::debug_fields!(RoleDeps {
    kafka,
    topics,
    search
});

impl RoleDeps {
    /// The Kafka config of one role instance (`<client_id>-<name>`).
    pub fn kafka_for(&self, name: &str) -> KafkaConfig {
        KafkaConfig {
            client_id: format!("{}-{name}", self.kafka.client_id),
            ..self.kafka.clone()
        }
    }
}

/// Where a role runs: under which shutdown branch, with which ops address.
#[derive(Debug, Clone)]
pub struct RoleContext {
    /// The role runs under a child of this branch.
    pub parent: Shutdown,
    /// The ops listener's address (port 0: any free port).
    pub ops_addr: SocketAddr,
}

impl RoleContext {
    pub fn new(parent: &Shutdown, ops_addr: SocketAddr) -> Self {
        Self {
            parent: parent.clone(),
            ops_addr,
        }
    }
}

/// Why a role could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("invalid {role} configuration: {message}")]
    Config { role: RoleKind, message: String },
    #[error("binding the {role} ops listener on {addr}: {source}")]
    OpsBind {
        role: RoleKind,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {role} ops listener failed: {source}")]
    OpsServe {
        role: RoleKind,
        #[source]
        source: std::io::Error,
    },
    #[error("edge: {0}")]
    Edge(#[from] EdgeError),
    #[error("fanout: {0}")]
    Fanout(#[from] FanoutError),
    #[error("persist: {0}")]
    Persist(#[from] PersistError),
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("api: {0}")]
    Api(#[from] ApiRunError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaAdapterError),
    #[error("search engine: {0}")]
    Search(#[from] EngineError),
    #[error("the {role} task ended abnormally: {source}")]
    Task {
        role: RoleKind,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl RoleError {
    /// Whether starting the role again later may succeed (an engine that
    /// was down); configuration and bind errors need an operator.
    pub fn is_retriable(&self) -> bool {
        match self {
            RoleError::Config { .. } | RoleError::OpsBind { .. } | RoleError::Task { .. } => false,
            RoleError::OpsServe { .. } => true,
            RoleError::Edge(EdgeError::Kafka(error)) | RoleError::Kafka(error) => {
                error.is_retriable()
            }
            RoleError::Edge(_) => false,
            RoleError::Fanout(error) => error.is_retriable(),
            RoleError::Persist(error) => error.is_retriable(),
            RoleError::Index(error) => error.is_retriable(),
            RoleError::Api(ApiRunError::Bind { .. }) => false,
            RoleError::Api(ApiRunError::Serve(_)) => true,
            RoleError::Api(
                ApiRunError::DevSignInNotLoopback(_) | ApiRunError::BadCorsOrigin(_),
            ) => false,
            RoleError::Search(_) => false,
        }
    }
}

/// What a role starts with, built by [`spawn`] the same way for every role.
#[derive(Debug)]
pub struct RoleScaffold {
    /// The role's own metrics registry (rendered on its ops listener).
    pub registry: Registry,
    /// The role's own health (`/healthz`, `/readyz`).
    pub health: Health,
    /// The role's own branch of the shutdown tree.
    pub shutdown: Shutdown,
}

/// A role's typed configuration: what [`spawn`] accepts.
pub trait RoleConfig: Send + Sized + 'static {
    /// The role's running handle.
    type Running: RunningRole;
    const KIND: RoleKind;

    /// Cross-field checks; a config that would panic or misbehave at run
    /// time is refused here, with a message naming the field.
    fn validate(&self) -> Result<(), String>;

    /// Starts the role on the current runtime and returns once it runs.
    fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> impl Future<Output = Result<Self::Running, RoleError>> + Send;
}

/// A running role's own handle.
pub trait RunningRole: Send + 'static {
    /// The role's public address (edge: `/ws`; API: `/v1`), if it has one.
    fn public_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Resolves when the role has stopped.
    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>>;
}

/// A running role: its own handle (`Deref`), its ops listener, health and
/// shutdown branch.
pub struct RoleHandle<R> {
    kind: RoleKind,
    running: R,
    ops_addr: SocketAddr,
    health: Health,
    shutdown: Shutdown,
    /// Cancelled once the role stopped: the ops listener may stop too.
    role_stopped: CancellationToken,
    ops_task: JoinHandle<Result<(), RoleError>>,
}

chatpipe_core::debug_fields!(RoleHandle<R> { kind, ops_addr });

impl<R> Deref for RoleHandle<R> {
    type Target = R;

    fn deref(&self) -> &R {
        &self.running
    }
}

impl<R: RunningRole> RoleHandle<R> {
    pub fn kind(&self) -> RoleKind {
        self.kind
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops_addr
    }

    /// The role's public address, if it has one.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.running.public_addr()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The role's shutdown branch: cancel it to stop (drain) this role only.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The role's own handle, detached from the ops listener (which then
    /// stops [`OPS_LINGER`] after the shutdown began).
    pub fn into_inner(self) -> R {
        self.running
    }

    /// Waits until the role stopped (after a shutdown, or on a failure),
    /// then stops its ops listener.
    pub async fn join(self) -> Result<(), RoleError> {
        let outcome = self.running.finished().await;
        self.role_stopped.cancel();
        let ops = match self.ops_task.await {
            Ok(result) => result,
            Err(source) => Err(RoleError::Task {
                role: self.kind,
                source,
            }),
        };
        outcome.and(ops)
    }
}

/// Starts one role: validates `config`, binds the ops listener at
/// `context.ops_addr`, starts the role under a child of `context.parent`
/// with its own registry and health, and serves them on the ops listener.
pub async fn spawn<C: RoleConfig>(
    config: C,
    deps: &RoleDeps,
    context: RoleContext,
) -> Result<RoleHandle<C::Running>, RoleError> {
    let kind = C::KIND;
    config.validate().map_err(|message| RoleError::Config {
        role: kind,
        message,
    })?;
    let ops_listener = TcpListener::bind(context.ops_addr)
        .await
        .map_err(|source| RoleError::OpsBind {
            role: kind,
            addr: context.ops_addr,
            source,
        })?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|source| RoleError::OpsBind {
            role: kind,
            addr: context.ops_addr,
            source,
        })?;
    let mut scaffold = RoleScaffold {
        registry: Registry::default(),
        health: Health::new(),
        shutdown: context.parent.child(),
    };
    let running = config.start(deps, &mut scaffold).await?;
    let RoleScaffold {
        registry,
        health,
        shutdown,
    } = scaffold;
    let role_stopped = CancellationToken::new();
    let app = ops::router(health.clone(), MetricsRegistry::new(registry));
    let stop_ops = {
        let shutdown = shutdown.clone();
        let role_stopped = role_stopped.clone();
        async move {
            shutdown.cancelled().await;
            // Keep answering while the role drains: readiness says so.
            let _ = tokio::time::timeout(OPS_LINGER, role_stopped.cancelled()).await;
        }
    };
    let ops_task = tokio::spawn(async move {
        axum::serve(ops_listener, app)
            .with_graceful_shutdown(stop_ops)
            .await
            .map_err(|source| RoleError::OpsServe { role: kind, source })
    });
    tracing::info!(role = %kind, ops = %ops_addr, public = ?running.public_addr(), "role started");
    Ok(RoleHandle {
        kind,
        running,
        ops_addr,
        health,
        shutdown,
        role_stopped,
        ops_task,
    })
}

fn task_outcome<E>(
    role: RoleKind,
    joined: Result<Result<(), E>, tokio::task::JoinError>,
) -> Result<(), RoleError>
where
    RoleError: From<E>,
{
    match joined {
        Ok(result) => result.map_err(RoleError::from),
        Err(source) => Err(RoleError::Task { role, source }),
    }
}

// ------------------------------------------------------------------ edge --

/// Checks of the edge's config that its code relies on.
pub fn validate_edge(config: &EdgeConfig) -> Result<(), String> {
    if config.lease_ms == 0 {
        return Err("lease_ms must be positive (the lease is renewed every third of it)".into());
    }
    if config.heartbeat_interval_ms == 0 {
        return Err("heartbeat_interval_ms must be positive".into());
    }
    if config.heartbeat_timeout_ms <= config.heartbeat_interval_ms {
        return Err(format!(
            "heartbeat_timeout_ms ({}) must exceed heartbeat_interval_ms ({})",
            config.heartbeat_timeout_ms, config.heartbeat_interval_ms
        ));
    }
    if let Some(worker_id) = config.worker_id
        && worker_id > chatpipe_core::MessageId::MAX_WORKER
    {
        return Err(format!(
            "worker_id {worker_id} does not fit in 10 bits (0-1023)"
        ));
    }
    if config.max_connections == 0 || config.session_buffer_frames == 0 {
        return Err("max_connections and session_buffer_frames must be positive".into());
    }
    if config.drain_deadline_ms == 0 {
        return Err("drain_deadline_ms must be positive".into());
    }
    Ok(())
}

impl RoleConfig for EdgeConfig {
    type Running = EdgeHandle;
    const KIND: RoleKind = RoleKind::Edge;

    fn validate(&self) -> Result<(), String> {
        validate_edge(self)
    }

    async fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> Result<EdgeHandle, RoleError> {
        let kafka = deps.kafka_for(self.edge_id.as_str());
        if let Some(jwks) = &deps.jwks {
            jwks.register(&mut scaffold.registry);
        }
        Ok(spawn_edge(
            self,
            deps.token_keys.clone(),
            deps.push_key.clone(),
            deps.store.clone(),
            &kafka,
            &mut scaffold.registry,
            scaffold.health.clone(),
            scaffold.shutdown.clone(),
        )
        .await?)
    }
}

impl RunningRole for EdgeHandle {
    fn public_addr(&self) -> Option<SocketAddr> {
        Some(self.http_addr)
    }

    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>> {
        Box::pin(async move {
            self.task.await.map_err(|source| RoleError::Task {
                role: RoleKind::Edge,
                source,
            })
        })
    }
}

// ---------------------------------------------------------------- fanout --

impl RoleConfig for FanoutConfig {
    type Running = FanoutWorker;
    const KIND: RoleKind = RoleKind::Fanout;

    fn validate(&self) -> Result<(), String> {
        FanoutConfig::validate(self)
    }

    async fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> Result<FanoutWorker, RoleError> {
        Ok(FanoutWorker::spawn(
            self,
            deps.kafka_for("fanout"),
            deps.store.clone(),
            deps.push_key.clone(),
            &mut scaffold.registry,
            scaffold.health.clone(),
            scaffold.shutdown.clone(),
        )?)
    }
}

impl RunningRole for FanoutWorker {
    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>> {
        Box::pin(async move { Ok(self.join().await?) })
    }
}

// --------------------------------------------------------------- persist --

/// A running persist role.
#[derive(Debug)]
pub struct PersistHandle {
    metrics: PersistMetrics,
    task: JoinHandle<Result<(), PersistError>>,
}

impl PersistHandle {
    /// The role's counters (shared with its registry).
    pub fn metrics(&self) -> &PersistMetrics {
        &self.metrics
    }
}

impl RoleConfig for PersistConfig {
    type Running = PersistHandle;
    const KIND: RoleKind = RoleKind::Persist;

    fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() {
            return Err("group_id must not be empty".into());
        }
        if self.max_batch_records == 0 || self.max_in_flight_writes == 0 {
            return Err("max_batch_records and max_in_flight_writes must be positive".into());
        }
        Ok(())
    }

    async fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> Result<PersistHandle, RoleError> {
        let kafka = deps.kafka_for("persist");
        let dead_letters = ChatProducer::new(&kafka, DEAD_LETTER_LINGER_MS)?;
        let role = PersistRole::new(
            self,
            kafka,
            deps.topics.clone(),
            deps.store.clone(),
            dead_letters,
            &mut scaffold.registry,
        );
        let metrics = role.metrics();
        let task = tokio::spawn(role.run(scaffold.health.clone(), scaffold.shutdown.clone()));
        Ok(PersistHandle { metrics, task })
    }
}

impl RunningRole for PersistHandle {
    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>> {
        Box::pin(async move { task_outcome(RoleKind::Persist, self.task.await) })
    }
}

// ----------------------------------------------------------------- index --

impl RoleConfig for IndexConfig {
    type Running = IndexWorker;
    const KIND: RoleKind = RoleKind::Index;

    fn validate(&self) -> Result<(), String> {
        IndexConfig::validate(self)
    }

    async fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> Result<IndexWorker, RoleError> {
        Ok(IndexWorker::spawn(
            self,
            deps.kafka_for("index"),
            &mut scaffold.registry,
            scaffold.health.clone(),
            scaffold.shutdown.clone(),
        )?)
    }
}

impl RunningRole for IndexWorker {
    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>> {
        Box::pin(async move { Ok(self.join().await?) })
    }
}

// ------------------------------------------------------------------- api --

/// A running HTTP API.
#[derive(Debug)]
pub struct ApiHandle {
    /// Where `/v1/…` and `/openapi.json` answer.
    pub addr: SocketAddr,
    metrics: ApiMetrics,
    task: JoinHandle<Result<(), ApiRunError>>,
}

impl ApiHandle {
    /// The API's counters (shared with its registry).
    pub fn metrics(&self) -> &ApiMetrics {
        &self.metrics
    }
}

impl RoleConfig for ApiConfig {
    type Running = ApiHandle;
    const KIND: RoleKind = RoleKind::Api;

    fn validate(&self) -> Result<(), String> {
        if self.listen_addr.is_empty() {
            return Err("listen_addr must not be empty".into());
        }
        if self.history_default_limit == 0 || self.history_default_limit > self.history_max_limit {
            return Err(format!(
                "history_default_limit ({}) must be between 1 and history_max_limit ({})",
                self.history_default_limit, self.history_max_limit
            ));
        }
        if self.rate_limit_per_second == 0 {
            return Err("rate_limit_per_second must be positive".into());
        }
        if self.max_members_per_conversation < 2 {
            return Err(format!(
                "max_members_per_conversation ({}) must be at least 2 (a 1:1 conversation)",
                self.max_members_per_conversation
            ));
        }
        chatpipe_api::dev::check_dev_sign_in(self).map_err(|refused| refused.to_string())?;
        chatpipe_api::app::cors_layer(&self.cors_allowed_origins).map_err(|bad| bad.to_string())?;
        Ok(())
    }

    async fn start(
        self,
        deps: &RoleDeps,
        scaffold: &mut RoleScaffold,
    ) -> Result<ApiHandle, RoleError> {
        let kafka = deps.kafka_for("api");
        if let Some(jwks) = &deps.jwks {
            jwks.register(&mut scaffold.registry);
        }
        let api_deps = ApiDeps {
            store: deps.store.clone(),
            producer: ChatProducer::new(&kafka, API_PRODUCER_LINGER_MS)?,
            topics: deps.topics.clone(),
            token_keys: deps.token_keys.clone(),
        };
        let search_metrics = SearchMetrics::default();
        search_metrics.register(scaffold.registry.sub_registry_with_prefix("chatpipe_api"));
        let searcher = MessageSearcher::new(
            EsClient::new(&deps.search)?,
            &deps.search.layout(),
            SearchLimits::default(),
            search_metrics,
        );
        let search_routes = chatpipe_api::search::router(
            searcher,
            deps.store.clone(),
            chatpipe_api::search::SearchRouteConfig::default(),
        );
        let server = ApiServer::new(self, api_deps, &mut scaffold.registry).mount_v1(search_routes);
        let metrics = server.metrics();
        let bound = server.bind().await?;
        let addr = bound.local_addr();
        let task = tokio::spawn(bound.serve(scaffold.health.clone(), scaffold.shutdown.clone()));
        Ok(ApiHandle {
            addr,
            metrics,
            task,
        })
    }
}

impl RunningRole for ApiHandle {
    fn public_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    fn finished(self) -> BoxFuture<'static, Result<(), RoleError>> {
        Box::pin(async move { task_outcome(RoleKind::Api, self.task.await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_lease_is_a_configuration_error() {
        let config = EdgeConfig {
            lease_ms: 0,
            ..EdgeConfig::default()
        };
        let refused = <EdgeConfig as RoleConfig>::validate(&config).unwrap_err();
        assert!(refused.contains("lease_ms"), "{refused}");
        assert!(<EdgeConfig as RoleConfig>::validate(&EdgeConfig::default()).is_ok());
    }

    #[test]
    fn edge_heartbeats_and_worker_ids_are_checked() {
        let late_timeout = EdgeConfig {
            heartbeat_timeout_ms: 1_000,
            heartbeat_interval_ms: 1_000,
            ..EdgeConfig::default()
        };
        assert!(validate_edge(&late_timeout).is_err());
        let wide_worker = EdgeConfig {
            worker_id: Some(1024),
            ..EdgeConfig::default()
        };
        assert!(validate_edge(&wide_worker).is_err());
    }

    #[test]
    fn default_configs_of_every_role_validate() {
        assert_eq!(
            <FanoutConfig as RoleConfig>::validate(&FanoutConfig::default()),
            Ok(())
        );
        assert_eq!(
            <PersistConfig as RoleConfig>::validate(&PersistConfig::default()),
            Ok(())
        );
        assert_eq!(
            <IndexConfig as RoleConfig>::validate(&IndexConfig::default()),
            Ok(())
        );
        assert_eq!(
            <ApiConfig as RoleConfig>::validate(&ApiConfig::default()),
            Ok(())
        );
        let no_page = ApiConfig {
            history_default_limit: 0,
            ..ApiConfig::default()
        };
        assert!(<ApiConfig as RoleConfig>::validate(&no_page).is_err());
    }

    #[test]
    fn default_ops_ports_are_distinct_loopback_and_off_the_public_ports() {
        let all = [
            defaults::EDGE_LISTEN,
            defaults::EDGE_OPS_LISTEN,
            defaults::EDGE_PUSH_LISTEN,
            defaults::API_LISTEN,
            defaults::FANOUT_OPS_LISTEN,
            defaults::PERSIST_OPS_LISTEN,
            defaults::INDEX_OPS_LISTEN,
            defaults::API_OPS_LISTEN,
        ];
        let parsed: Vec<SocketAddr> = all.iter().map(|addr| addr.parse().unwrap()).collect();
        let ports: std::collections::BTreeSet<u16> = parsed.iter().map(SocketAddr::port).collect();
        assert_eq!(ports.len(), all.len());
        assert!(parsed.iter().all(|addr| addr.ip().is_loopback()));
    }
}
