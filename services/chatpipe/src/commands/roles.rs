//! Running roles: each role is started the same way — its config from the
//! flags, its engines, its own metrics registry and health, its ops
//! endpoints (`/metrics`, `/healthz`, `/readyz`) — under a child of the
//! process's shutdown tree. `chatpipe <role>` runs one; `chatpipe all`
//! runs them all in one process.

use std::net::SocketAddr;
use std::time::Duration;

use chatpipe_api::{ApiConfig, ApiDeps};
use chatpipe_cassandra::CassandraStore;
use chatpipe_core::EdgeId;
use chatpipe_edge::{EdgeConfig, EdgeHandle, spawn_edge};
use chatpipe_fanout::{FanoutConfig, FanoutWorker};
use chatpipe_index::{IndexConfig, IndexWorker};
use chatpipe_kafka::ChatProducer;
use chatpipe_persist::{PersistConfig, PersistRole};
use chatpipe_runtime::metrics::MetricsRegistry;
use chatpipe_runtime::{Health, Shutdown, ops};
use chatpipe_search::{EsClient, MessageSearcher, SearchEngineConfig, SearchLimits, SearchMetrics};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::cli::{AllArgs, ApiArgs, CommonArgs, EdgeArgs, WorkerArgs};
use crate::commands::{engines, topology};

/// Default ops ports of the worker roles.
pub const FANOUT_OPS: &str = "127.0.0.1:8091";
pub const PERSIST_OPS: &str = "127.0.0.1:8092";
pub const INDEX_OPS: &str = "127.0.0.1:8093";

type RoleTask = JoinHandle<anyhow::Result<()>>;

/// Serves a role's ops endpoints until `shutdown`.
async fn serve_ops(
    listen: SocketAddr,
    health: Health,
    registry: Registry,
    shutdown: Shutdown,
) -> anyhow::Result<RoleTask> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| anyhow::anyhow!("binding ops listener {listen}: {error}"))?;
    let app = ops::router(health, MetricsRegistry::new(registry));
    Ok(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        Ok(())
    }))
}

fn listen_or(args: &WorkerArgs, default: &str) -> SocketAddr {
    args.listen
        .unwrap_or_else(|| default.parse().expect("valid default address"))
}

pub fn search_engine_config(common: &CommonArgs) -> SearchEngineConfig {
    SearchEngineConfig {
        url: common.elasticsearch_url.clone(),
        index_prefix: common.index_prefix.clone(),
        ..SearchEngineConfig::default()
    }
}

pub fn edge_config(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
    Ok(EdgeConfig {
        edge_id: EdgeId::parse(args.edge_id.as_str())
            .map_err(|error| anyhow::anyhow!("--edge-id: {error}"))?,
        worker_id: args.worker_id,
        http_addr: args.listen,
        push_addr: args.push_listen,
        advertised_push_addr: args.advertised_push_addr.clone(),
        topics: engines::topics(common),
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_timeout_ms: args.heartbeat_timeout_ms,
        resume_window_ms: args.resume_window_ms,
        max_connections: args.max_connections,
        connects_per_second_global: args.connects_per_second,
        connects_burst_global: args.connects_per_second.saturating_mul(2),
        connects_per_second_per_ip: args.connects_per_second_per_ip,
        connects_burst_per_ip: args.connects_per_second_per_ip.saturating_mul(2),
        frames_per_second_per_connection: args.frames_per_second,
        frames_burst_per_connection: args.frames_per_second.saturating_mul(2),
        ws_read_buffer_bytes: args.ws_read_buffer_bytes,
        drain_deadline_ms: args.drain_deadline_ms,
        producer_linger_ms: args.producer_linger_ms,
        ..EdgeConfig::default()
    })
}

pub async fn start_edge(
    common: &CommonArgs,
    args: &EdgeArgs,
    store: CassandraStore,
    shutdown: &Shutdown,
) -> anyhow::Result<EdgeHandle> {
    let config = edge_config(common, args)?;
    let kafka = engines::kafka(common, &format!("chatpipe-{}", config.edge_id));
    let handle = spawn_edge(
        config,
        engines::token_keys(common),
        store,
        &kafka,
        Registry::default(),
        Health::new(),
        shutdown.child(),
    )
    .await?;
    Ok(handle)
}

/// What every consumer-group role starts with: its own branch of the
/// shutdown tree, its own health and its own metrics registry.
struct WorkerScaffold {
    shutdown: Shutdown,
    health: Health,
    registry: Registry,
}

impl WorkerScaffold {
    fn new(parent: &Shutdown) -> Self {
        Self {
            shutdown: parent.child(),
            health: Health::new(),
            registry: Registry::default(),
        }
    }

    /// Serves the role's ops endpoints on `listen` and runs `role`.
    async fn serve(
        self,
        listen: SocketAddr,
        role: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> anyhow::Result<Vec<RoleTask>> {
        let ops = serve_ops(listen, self.health, self.registry, self.shutdown).await?;
        Ok(vec![tokio::spawn(role), ops])
    }
}

fn group_or(args: &WorkerArgs, default: &str) -> String {
    args.group.clone().unwrap_or_else(|| default.to_owned())
}

pub async fn start_fanout(
    common: &CommonArgs,
    args: &WorkerArgs,
    store: CassandraStore,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<RoleTask>> {
    let mut scaffold = WorkerScaffold::new(shutdown);
    let config = FanoutConfig {
        group_id: group_or(args, "chatpipe-fanout"),
        topics: engines::topics(common),
        ..FanoutConfig::default()
    };
    let worker = FanoutWorker::spawn(
        config,
        engines::kafka(common, "chatpipe-fanout"),
        store,
        &mut scaffold.registry,
        scaffold.health.clone(),
        scaffold.shutdown.clone(),
    )?;
    let run = async move { worker.join().await.map_err(anyhow::Error::from) };
    scaffold.serve(listen_or(args, FANOUT_OPS), run).await
}

pub async fn start_persist(
    common: &CommonArgs,
    args: &WorkerArgs,
    store: CassandraStore,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<RoleTask>> {
    let mut scaffold = WorkerScaffold::new(shutdown);
    let defaults = PersistConfig::default();
    let config = PersistConfig {
        group_id: group_or(args, "chatpipe-persist"),
        batch_linger_ms: args
            .batching
            .batch_linger_ms
            .unwrap_or(defaults.batch_linger_ms),
        commit_interval_ms: args
            .batching
            .commit_interval_ms
            .unwrap_or(defaults.commit_interval_ms),
        ..defaults
    };
    let kafka = engines::kafka(common, "chatpipe-persist");
    let dead_letters = ChatProducer::new(&kafka, 5)?;
    let role = PersistRole::new(
        config,
        kafka,
        engines::topics(common),
        store,
        dead_letters,
        &mut scaffold.registry,
    );
    let (health, role_shutdown) = (scaffold.health.clone(), scaffold.shutdown.clone());
    let run = async move {
        role.run(health, role_shutdown)
            .await
            .map_err(anyhow::Error::from)
    };
    scaffold.serve(listen_or(args, PERSIST_OPS), run).await
}

pub async fn start_index(
    common: &CommonArgs,
    args: &WorkerArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<RoleTask>> {
    let mut scaffold = WorkerScaffold::new(shutdown);
    let defaults = IndexConfig::default();
    let config = IndexConfig {
        group_id: group_or(args, "chatpipe-index"),
        topics: engines::topics(common),
        engine: search_engine_config(common),
        batch_linger_ms: args
            .batching
            .batch_linger_ms
            .unwrap_or(defaults.batch_linger_ms),
        commit_interval_ms: args
            .batching
            .commit_interval_ms
            .unwrap_or(defaults.commit_interval_ms),
        ..defaults
    };
    let worker = IndexWorker::spawn(
        config,
        engines::kafka(common, "chatpipe-index"),
        &mut scaffold.registry,
        scaffold.health.clone(),
        scaffold.shutdown.clone(),
    )?;
    let run = async move { worker.join().await.map_err(anyhow::Error::from) };
    scaffold.serve(listen_or(args, INDEX_OPS), run).await
}

pub async fn start_api(
    common: &CommonArgs,
    args: &ApiArgs,
    store: CassandraStore,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<RoleTask>> {
    let shutdown = shutdown.child();
    let health = Health::new();
    let mut registry = Registry::default();
    let kafka = engines::kafka(common, "chatpipe-api");
    let deps = ApiDeps {
        store: store.clone(),
        producer: ChatProducer::new(&kafka, 1)?,
        topics: engines::topics(common),
        token_keys: engines::token_keys(common),
    };
    let config = ApiConfig {
        listen_addr: args.api_listen.to_string(),
        ..ApiConfig::default()
    };
    let engine = search_engine_config(common);
    let search_metrics = SearchMetrics::default();
    search_metrics.register(registry.sub_registry_with_prefix("chatpipe_api"));
    let searcher = MessageSearcher::new(
        EsClient::new(&engine)?,
        &engine.layout(),
        SearchLimits::default(),
        search_metrics,
    );
    let search_routes = chatpipe_api::search::router(
        searcher,
        store,
        chatpipe_api::search::SearchRouteConfig::default(),
    );
    let server = chatpipe_api::ApiServer::new(config, deps, &mut registry).mount_v1(search_routes);
    let bound = server.bind().await?;
    tracing::info!(addr = %bound.local_addr(), "api serving");
    let run = tokio::spawn(async move {
        bound
            .serve(MetricsRegistry::new(registry), health, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    Ok(vec![run])
}

/// Waits for SIGINT/SIGTERM (or a role failing), then for every role to stop.
async fn supervise(
    root: Shutdown,
    mut tasks: Vec<RoleTask>,
    edges: Vec<EdgeHandle>,
) -> anyhow::Result<()> {
    let mut failure = None;
    tokio::select! {
        _ = root.cancelled() => {}
        (finished, index) = first_finished(&mut tasks) => {
            if let Ok(Err(error)) | Err(error) = finished.map_err(anyhow::Error::from) {
                tracing::error!(%error, "a role stopped; shutting down");
                failure = Some(error);
            }
            tasks.remove(index);
            root.cancel();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for edge in edges {
        let _ = tokio::time::timeout_at(deadline, edge.task).await;
    }
    for task in tasks {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// The first role task to finish (never, when there are none).
async fn first_finished(
    tasks: &mut [RoleTask],
) -> (Result<anyhow::Result<()>, tokio::task::JoinError>, usize) {
    if tasks.is_empty() {
        std::future::pending::<()>().await;
    }
    let (result, index, _rest) = futures::future::select_all(tasks.iter_mut()).await;
    (result, index)
}

pub async fn run_edge(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    let store = engines::cassandra(common).await?;
    let edge = start_edge(common, args, store, &root).await?;
    supervise(root, Vec::new(), vec![edge]).await
}

pub async fn run_worker(role: &str, common: &CommonArgs, args: &WorkerArgs) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    let tasks = match role {
        "fanout" => start_fanout(common, args, engines::cassandra(common).await?, &root).await?,
        "persist" => start_persist(common, args, engines::cassandra(common).await?, &root).await?,
        "index" => start_index(common, args, &root).await?,
        other => anyhow::bail!("unknown worker role {other}"),
    };
    supervise(root, tasks, Vec::new()).await
}

pub async fn run_api(common: &CommonArgs, args: &ApiArgs) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    let tasks = start_api(common, args, engines::cassandra(common).await?, &root).await?;
    supervise(root, tasks, Vec::new()).await
}

/// The Quickstart: topology, then every role in this process.
pub async fn run_all(common: &CommonArgs, args: &AllArgs) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    if !args.skip_topology {
        topology::apply(common, &args.topology).await?;
    }
    let store = engines::cassandra(common).await?;
    let mut tasks = Vec::new();
    tasks.extend(start_api(common, &args.api, store.clone(), &root).await?);
    let worker_args = WorkerArgs {
        listen: None,
        group: None,
        batching: args.batching.clone(),
    };
    tasks.extend(start_fanout(common, &worker_args, store.clone(), &root).await?);
    tasks.extend(start_persist(common, &worker_args, store.clone(), &root).await?);
    tasks.extend(start_index(common, &worker_args, &root).await?);
    let mut edges = Vec::new();
    for number in 0..args.edges.max(1) {
        let mut edge_args = args.edge.clone();
        edge_args.edge_id = format!("edge-{}", number + 1);
        edge_args.worker_id = number + 1;
        edge_args
            .listen
            .set_port(edge_args.listen.port() + 2 * number);
        edge_args
            .push_listen
            .set_port(edge_args.push_listen.port() + number);
        let edge = start_edge(common, &edge_args, store.clone(), &root).await?;
        println!(
            "edge-{} listening on ws://{}/ws",
            number + 1,
            edge.http_addr
        );
        edges.push(edge);
    }
    println!(
        "chatpipe is up: API http://{} · ops ports fanout {FANOUT_OPS}, persist {PERSIST_OPS}, index {INDEX_OPS} · Ctrl+C to stop",
        args.api.api_listen
    );
    supervise(root, tasks, edges).await
}
