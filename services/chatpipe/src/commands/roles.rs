//! Running one role as a process: its engines, its ops endpoints, and a
//! shutdown tree wired to SIGINT/SIGTERM.

use std::time::Duration;

use chatpipe_core::EdgeId;
use chatpipe_edge::{EdgeConfig, spawn_edge};
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;

use crate::cli::{CommonArgs, EdgeArgs};
use crate::commands::engines;

pub fn edge_config(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<EdgeConfig> {
    let defaults = EdgeConfig::default();
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
        ..defaults
    })
}

pub async fn start_edge(
    common: &CommonArgs,
    args: &EdgeArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<chatpipe_edge::EdgeHandle> {
    let config = edge_config(common, args)?;
    let store = engines::cassandra(common).await?;
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

pub async fn run_edge(common: &CommonArgs, args: &EdgeArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    let handle = start_edge(common, args, &shutdown).await?;
    handle.task.await?;
    let _ = shutdown.wait(Duration::from_secs(1)).await;
    Ok(())
}
