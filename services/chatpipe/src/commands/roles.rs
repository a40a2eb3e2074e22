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

/// The edge id when none is configured: `edge-<host>-<push port>`. No two
/// edge processes share it (one host cannot bind one port twice), and an
/// edge restarted in place keeps it (and so takes its old lease over).
fn default_edge_id(push_port: u16) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || "_.:@-".contains(character) {
                character
            } else {
                '-'
            }
        })
        .take(EdgeId::MAX_LEN - 16)
        .collect();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    // Port 0 (any free port) is not known yet: the process id stands in.
    let port = if push_port == 0 {
        format!("pid{}", std::process::id())
    } else {
        push_port.to_string()
    };
    format!("edge-{host}-{port}")
}

pub fn edge_config(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
    let edge_id = args
        .edge_id
        .clone()
        .filter(|edge_id| !edge_id.trim().is_empty())
        .unwrap_or_else(|| default_edge_id(args.push_listen.port()));
    Ok(EdgeConfig {
        edge_id: EdgeId::parse(edge_id).map_err(|error| anyhow::anyhow!("--edge-id: {error}"))?,
        worker_id: args.worker_id,
        http_addr: args.listen,
        push_addr: args.push_listen,
        advertised_push_addr: args.advertised_push_addr.clone(),
        topics: engines::topics(common),
        heartbeat_interval_ms: args.heartbeat_interval_ms,
        heartbeat_timeout_ms: args.heartbeat_timeout_ms,
        resume_window_ms: args.resume_window_ms,
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        auth_failures_per_ip_per_minute: args.auth_failures_per_ip_per_minute,
        trusted_proxies: args.trusted_proxies.clone(),
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
        fetch_min_bytes: batching
            .persist_fetch_min_bytes
            .unwrap_or(defaults.fetch_min_bytes),
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
        fetch_min_bytes: batching
            .index_fetch_min_bytes
            .unwrap_or(defaults.fetch_min_bytes),
        commit_interval_ms: batching
            .commit_interval_ms
            .unwrap_or(defaults.commit_interval_ms),
        ..defaults
    }
}

fn api_config(args: &ApiArgs, default_ws_url: Option<String>) -> ApiConfig {
    ApiConfig {
        listen_addr: args.api_listen.to_string(),
        max_members_per_conversation: args.max_members_per_conversation,
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
    let deps = engines::role_deps(common, &root).await?;
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
    let deps = engines::role_deps(common, &root).await?;
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
        // Each edge its own id (`--edge-id` gets a `-N` suffix past the
        // first; unset, each derives one from its push port) and worker id
        // (`--worker-id` + N; unset, each claims a free one).
        if number > 0 {
            edge_args.edge_id = edge_args
                .edge_id
                .map(|edge_id| format!("{edge_id}-{}", number + 1));
        }
        edge_args.worker_id = edge_args.worker_id.map(|worker_id| worker_id + number);
        edge_args.listen = shifted(edge_args.listen, 2 * number);
        edge_args.push_listen = shifted(edge_args.push_listen, number);
        let ops = shifted(edge_args.ops_listen, 2 * number);
        let config = edge_config(common, &edge_args)?;
        let edge_id = config.edge_id.clone();
        if let Some(addr) = start(&mut set, config, &deps, &root, ops).await? {
            println!("{edge_id} listening on ws://{addr}/ws");
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn edge_args(extra: &[&str]) -> (CommonArgs, EdgeArgs) {
        let cli = Cli::try_parse_from(["chatpipe", "edge"].iter().chain(extra)).unwrap();
        let Command::Edge(args) = cli.command else {
            panic!("parsed another command")
        };
        (cli.common, args)
    }

    #[test]
    fn edges_started_with_defaults_get_distinct_valid_ids() {
        let (common, first) = edge_args(&[]);
        let (_, second) = edge_args(&["--push-listen", "127.0.0.1:8181"]);
        let first = edge_config(&common, &first).unwrap();
        let second = edge_config(&common, &second).unwrap();
        assert_ne!(first.edge_id, second.edge_id);
        assert!(first.edge_id.as_str().starts_with("edge-"));
        assert!(
            first.edge_id.as_str().ends_with("-8180"),
            "{}",
            first.edge_id
        );
        // No worker id configured: each claims a free one at start.
        assert_eq!((first.worker_id, second.worker_id), (None, None));
        assert!(default_edge_id(0).contains(&format!("pid{}", std::process::id())));
        // A configured id is kept as given.
        let (_, named) = edge_args(&["--edge-id", "edge-eu-1", "--worker-id", "7"]);
        let named = edge_config(&common, &named).unwrap();
        assert_eq!(
            (named.edge_id.as_str(), named.worker_id),
            ("edge-eu-1", Some(7))
        );
    }
}
