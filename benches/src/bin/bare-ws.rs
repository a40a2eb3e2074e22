//! `bare-ws`: the bare tokio + tokio-tungstenite broadcast server baseline
//! (see `chatpipe_benches::bare`). Prints a status line every 5 seconds.
//!
//! `bare-ws --listen 127.0.0.1:8380 --read-buffer-bytes 4096`

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chatpipe_benches::bare::{BareConfig, BareCounters, serve};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "bare-ws", about = "Bare WebSocket broadcast server (baseline)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8380")]
    listen: std::net::SocketAddr,
    /// Read buffer per connection in bytes (0 = tungstenite's default, 128 KiB).
    #[arg(long, default_value_t = 4096)]
    read_buffer_bytes: usize,
    /// Broadcast channel capacity (frames a connection may lag).
    #[arg(long, default_value_t = 4096)]
    channel_capacity: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let counters = Arc::new(BareCounters::default());
    let config = BareConfig {
        listen: args.listen,
        read_buffer_bytes: args.read_buffer_bytes,
        channel_capacity: args.channel_capacity,
    };
    runtime.block_on(async move {
        let reporter = counters.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                ticker.tick().await;
                eprintln!(
                    "bare-ws: connections={} frames_in={} frames_out={} skipped={}",
                    reporter.connections.load(Ordering::Relaxed),
                    reporter.frames_in.load(Ordering::Relaxed),
                    reporter.frames_out.load(Ordering::Relaxed),
                    reporter.frames_skipped.load(Ordering::Relaxed)
                );
            }
        });
        serve(config, counters).await
    })
}
