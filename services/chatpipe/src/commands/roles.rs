//! `chatpipe <role>` and `chatpipe all`: typed role configs from the flags,
//! then [`chatpipe::roles::spawn`] for each role (the same start, ops
//! listener, health and shutdown wiring as the tests use) and
//! [`chatpipe::supervise`] until SIGINT/SIGTERM.

use std::net::SocketAddr;

use chatpipe::roles::{self, RoleConfig, RoleContext, RoleDeps};
use chatpipe::supervise::{RoleSet, supervise};
use chatpipe_api::ApiConfig;
use chatpipe_core::EdgeId;
use chatpipe_edge::EdgeConfig;
use chatpipe_fanout::FanoutConfig;
use chatpipe_index::IndexConfig;
use chatpipe_persist::PersistConfig;
use chatpipe_runtime::Shutdown;

use crate::cli::{
    AllArgs, ApiArgs, BatchingArgs, CommonArgs, EdgeArgs, FanoutArgs, IndexArgs, PersistArgs,
};
use crate::commands::{engines, topology};

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
        max_sessions_per_user: args.max_sessions_per_user,
        write_timeout_ms: args.write_timeout_ms,
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

fn fanout_config(common: &CommonArgs, group: &str) -> FanoutConfig {
    FanoutConfig {
        group_id: group.to_owned(),
        topics: engines::topics(common),
        ..FanoutConfig::default()
    }
}

fn persist_config(group: &str, batching: &BatchingArgs) -> PersistConfig {
    let defaults = PersistConfig::default();
    PersistConfig {
        group_id: group.to_owned(),
        batch_linger_ms: batching.batch_linger_ms.unwrap_or(defaults.batch_linger_ms),
        commit_interval_ms: batching
            .commit_interval_ms
            .unwrap_or(defaults.commit_interval_ms),
        ..defaults
    }
}

fn index_config(common: &CommonArgs, group: &str, batching: &BatchingArgs) -> IndexConfig {
    let defaults = IndexConfig::default();
    IndexConfig {
        group_id: group.to_owned(),
        topics: engines::topics(common),
        engine: engines::search_engine_config(common),
        batch_linger_ms: batching.batch_linger_ms.unwrap_or(defaults.batch_linger_ms),
        commit_interval_ms: batching
            .commit_interval_ms
            .unwrap_or(defaults.commit_interval_ms),
        ..defaults
    }
}

fn api_config(args: &ApiArgs, default_ws_url: Option<String>) -> ApiConfig {
    ApiConfig {
        listen_addr: args.api_listen.to_string(),
        dev_sign_in: args.dev,
        app_dir: args
            .app_dir
            .as_ref()
            .map(|dir| dir.to_string_lossy().into_owned()),
        app_ws_url: args.app_ws_url.clone().or(default_ws_url),
        cors_allowed_origins: args.cors_origins.clone(),
        ..ApiConfig::default()
    }
}

/// Starts one role under `root` and adds it to `set`.
async fn start<C: RoleConfig>(
    set: &mut RoleSet,
    config: C,
    deps: &RoleDeps,
    root: &Shutdown,
    ops_addr: SocketAddr,
) -> anyhow::Result<Option<SocketAddr>> {
    let handle = roles::spawn(config, deps, RoleContext::new(root, ops_addr)).await?;
    let public = handle.public_addr();
    println!(
        "{} ops http://{}{}",
        handle.kind(),
        handle.ops_addr(),
        public.map_or(String::new(), |addr| format!(" · public {addr}"))
    );
    set.push(handle);
    Ok(public)
}

/// One role in this process until SIGINT/SIGTERM.
async fn run_one<C: RoleConfig>(
    common: &CommonArgs,
    config: C,
    ops_addr: SocketAddr,
) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    let deps = engines::role_deps(common).await?;
    let mut set = RoleSet::new();
    start(&mut set, config, &deps, &root, ops_addr).await?;
    Ok(supervise(root, set).await?)
}

pub async fn run_edge(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<()> {
    run_one(common, edge_config(common, args)?, args.ops_listen).await
}

pub async fn run_fanout(common: &CommonArgs, args: &FanoutArgs) -> anyhow::Result<()> {
    run_one(common, fanout_config(common, &args.group), args.ops_listen).await
}

pub async fn run_persist(common: &CommonArgs, args: &PersistArgs) -> anyhow::Result<()> {
    run_one(
        common,
        persist_config(&args.group, &args.batching),
        args.ops_listen,
    )
    .await
}

pub async fn run_index(common: &CommonArgs, args: &IndexArgs) -> anyhow::Result<()> {
    run_one(
        common,
        index_config(common, &args.group, &args.batching),
        args.ops_listen,
    )
    .await
}

pub async fn run_api(common: &CommonArgs, args: &ApiArgs) -> anyhow::Result<()> {
    run_one(common, api_config(args, None), args.api_ops_listen).await
}

/// Moves `addr`'s port up by `offset` (the N-th edge of `chatpipe all`).
fn shifted(mut addr: SocketAddr, offset: u16) -> SocketAddr {
    addr.set_port(addr.port() + offset);
    addr
}

/// The Quickstart: topology, then every role in this process, each with
/// its own ops listener.
pub async fn run_all(common: &CommonArgs, args: &AllArgs) -> anyhow::Result<()> {
    let root = Shutdown::new();
    root.cancel_on_signals();
    // Refuse before touching the engines when there is no secret.
    engines::token_keys(common)?;
    if !args.skip_topology {
        topology::apply(common, &args.topology).await?;
    }
    let deps = engines::role_deps(common).await?;
    let mut set = RoleSet::new();
    // The web app talks to the first edge unless told otherwise (an
    // unspecified address like 0.0.0.0 is no URL: the app then guesses).
    let first_edge = args.edge.listen;
    let default_ws_url =
        (!first_edge.ip().is_unspecified()).then(|| format!("ws://{first_edge}/ws"));
    start(
        &mut set,
        api_config(&args.api, default_ws_url),
        &deps,
        &root,
        args.api.api_ops_listen,
    )
    .await?;
    let workers = &args.workers;
    let groups = &args.groups;
    let fanout = fanout_config(common, &groups.fanout_group);
    start(&mut set, fanout, &deps, &root, workers.fanout_ops_listen).await?;
    let persist = persist_config(&groups.persist_group, &args.batching);
    start(&mut set, persist, &deps, &root, workers.persist_ops_listen).await?;
    let index = index_config(common, &groups.index_group, &args.batching);
    start(&mut set, index, &deps, &root, workers.index_ops_listen).await?;
    for number in 0..args.edges.max(1) {
        let mut edge_args = args.edge.clone();
        edge_args.edge_id = format!("edge-{}", number + 1);
        edge_args.worker_id = number + 1;
        edge_args.listen = shifted(edge_args.listen, 2 * number);
        edge_args.push_listen = shifted(edge_args.push_listen, number);
        let ops = shifted(edge_args.ops_listen, 2 * number);
        let config = edge_config(common, &edge_args)?;
        if let Some(addr) = start(&mut set, config, &deps, &root, ops).await? {
            println!("edge-{} listening on ws://{addr}/ws", number + 1);
        }
    }
    println!(
        "chatpipe is up: API http://{} · Ctrl+C to stop",
        args.api.api_listen
    );
    if args.api.app_dir.is_some() {
        println!("web app: http://{}/app/", args.api.api_listen);
    }
    Ok(supervise(root, set).await?)
}
