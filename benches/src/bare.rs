//! The bare broadcast server baseline: tokio + tokio-tungstenite, no auth,
//! no Kafka, no sessions. Every text frame a client sends is broadcast to
//! every connection (the sender included). What it costs is the floor under
//! any WebSocket chat server on this machine: the memory of an idle
//! connection with a given read buffer, and the rate at which one process
//! can write the same frame to many sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How the server is configured.
#[derive(Debug, Clone)]
pub struct BareConfig {
    pub listen: SocketAddr,
    /// WebSocket read buffer per connection, bytes; 0 keeps tungstenite's
    /// default (128 KiB).
    pub read_buffer_bytes: usize,
    /// Frames a slow connection may lag before it skips (broadcast channel).
    pub channel_capacity: usize,
}

/// What the server did, for its periodic report.
#[derive(Debug, Default)]
pub struct BareCounters {
    pub connections: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub frames_skipped: AtomicU64,
}

pub fn websocket_config(read_buffer_bytes: usize) -> WebSocketConfig {
    let config = WebSocketConfig::default();
    if read_buffer_bytes == 0 {
        return config;
    }
    config
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// Serves until the process ends.
pub async fn serve(config: BareConfig, counters: Arc<BareCounters>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let (broadcast_tx, _) = broadcast::channel::<Message>(config.channel_capacity.max(16));
    let ws_config = websocket_config(config.read_buffer_bytes);
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("bare-ws: accept: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let broadcast_tx = broadcast_tx.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let Ok(socket) =
                tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)).await
            else {
                return;
            };
            counters.connections.fetch_add(1, Ordering::Relaxed);
            connection(socket, broadcast_tx, &counters).await;
            counters.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    broadcast_tx: broadcast::Sender<Message>,
    counters: &BareCounters,
) {
    let mut broadcast_rx = broadcast_tx.subscribe();
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            received = broadcast_rx.recv() => {
                let first = match received {
                    Ok(message) => message,
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        counters.frames_skipped.fetch_add(skipped, Ordering::Relaxed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Write whatever is queued, then flush once.
                let mut written = 1u64;
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(message) = broadcast_rx.try_recv() {
                    written += 1;
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                counters.frames_out.fetch_add(written, Ordering::Relaxed);
            }
            incoming = stream.next() => {
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        counters.frames_in.fetch_add(1, Ordering::Relaxed);
                        let _ = broadcast_tx.send(Message::Text(text));
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}
