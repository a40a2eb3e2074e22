//! One simulated user: a WebSocket connection that behaves like a real
//! client of the contract, or of a baseline server.
//!
//! chatpipe clients connect with a bearer token from a given loopback source
//! address, honour `1013` refusals' `retry_after_ms`, acknowledge `seq`
//! (`ack_seq`), de-duplicate deliveries by `message_id`, and on any
//! disconnect reconnect with `?resume=<session>&last_seq=N`; on
//! `resumed:false` they catch up from history with `after=` per
//! conversation. Sends that saw no `ack` are re-sent after a reconnect with
//! the same `client_msg_id` (the edge answers them from its de-duplication
//! window). With several edges, a client starts on its user's edge and,
//! when that edge fails (connection lost or refused, a drain's close, or no
//! answer at all for `edge_stall_ms` while a send or a `ping` waits), goes
//! on to the next edge and resumes its session there. The connection and
//! the frames are `chatpipe-client`'s; what is here is the behaviour of a
//! user and what it counts.
//!
//! With a scenario's `[lifecycle]` (issue 12), a client also edits and
//! deletes its own recent messages, reacts to messages it received and
//! sends `read` markers, and records every such request's outcome and every
//! `message_edited`, `message_deleted` and `reaction` frame it receives,
//! for the verification.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatpipe_client::frames;
use chatpipe_client::ws::{self, WebSocketConfig};
use chatpipe_client::{ConnectError, ConnectOptions, Connection, Received, Resume};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::api::ApiClient;
use crate::plan::WorkerTarget;
use crate::scenario::LifecycleConfig;
use crate::stats;
use crate::wire;

/// A baseline server's socket (no chatpipe `hello`).
pub type Socket = ws::Socket;

/// Counters of one worker process, cumulative (the coordinator computes
/// rates from successive snapshots).
#[derive(Debug, Default)]
pub struct Counters {
    pub open: AtomicU64,
    pub connects: AtomicU64,
    pub first_connects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub refused_try_later: AtomicU64,
    pub refused_other: AtomicU64,
    pub closes_slow_consumer: AtomicU64,
    pub closes_draining: AtomicU64,
    pub closes_other: AtomicU64,
    pub resumed: AtomicU64,
    pub resume_refused: AtomicU64,
    pub catchup_requests: AtomicU64,
    pub catchup_messages: AtomicU64,
    pub catchup_errors: AtomicU64,
    pub edge_switches: AtomicU64,
    pub stalls: AtomicU64,
    pub sends: AtomicU64,
    pub resends: AtomicU64,
    pub acks: AtomicU64,
    pub send_skipped_backlog: AtomicU64,
    pub deliveries: AtomicU64,
    pub duplicates: AtomicU64,
    pub other_frames: AtomicU64,
    /// Lifecycle requests acknowledged, by kind, and `read`s sent.
    pub edits: AtomicU64,
    pub deletes: AtomicU64,
    pub reactions: AtomicU64,
    pub reads: AtomicU64,
    /// Lifecycle requests refused (an `error` frame).
    pub lifecycle_refused: AtomicU64,
    /// `message_edited`, `message_deleted` and `reaction` frames received.
    pub lifecycle_frames: AtomicU64,
}

/// Latency histograms shared by a worker's clients: whole run, and the
/// current progress interval.
#[derive(Debug)]
pub struct Latencies {
    pub ack: Histogram<u64>,
    pub deliver: Histogram<u64>,
    pub ack_interval: Histogram<u64>,
    pub deliver_interval: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ack: stats::latency_histogram(),
            deliver: stats::latency_histogram(),
            ack_interval: stats::latency_histogram(),
            deliver_interval: stats::latency_histogram(),
        }
    }
}

/// What every client of a worker shares.
#[derive(Debug)]
pub struct ClientShared {
    pub worker: usize,
    pub run_id: String,
    pub target: WorkerTarget,
    pub counters: Counters,
    pub latencies: std::sync::Mutex<Latencies>,
    pub errors_by_code: std::sync::Mutex<HashMap<String, u64>>,
    /// Conversation ids by global index (empty until created).
    pub conversation_ids: RwLock<Arc<Vec<String>>>,
    pub conversation_index: RwLock<Arc<HashMap<String, u32>>>,
    pub api: Option<ApiClient>,
    pub body_bytes: usize,
    pub ack_every_frames: u64,
    /// How long a received frame may stay unacknowledged.
    pub ack_delay: Duration,
    pub max_unacked_per_client: usize,
    /// Edits, deletes, reactions and reads after sends.
    pub lifecycle: LifecycleConfig,
    /// Members per conversation (global index); empty: reads everywhere.
    pub conversation_sizes: Vec<u32>,
}

impl ClientShared {
    fn error(&self, code: &str) {
        let mut errors = self.errors_by_code.lock().expect("not poisoned");
        *errors.entry(code.to_owned()).or_default() += 1;
    }

    /// Counts a connection; the first one of a client also marks it
    /// online (its report's first hello, the worker's `online` signal).
    fn connected(&self, report: &mut ClientReport, online: &mut Option<oneshot::Sender<bool>>) {
        self.counters.connects.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        if report.first_online_unix_us != 0 {
            return;
        }
        report.first_online_unix_us = crate::now_unix_us();
        self.counters.first_connects.fetch_add(1, Ordering::Relaxed);
        if let Some(online) = online.take() {
            let _ = online.send(true);
        }
    }

    fn record_ack(&self, micros: u64) {
        let mut latencies = self.latencies.lock().expect("not poisoned");
        stats::record(&mut latencies.ack, micros);
        stats::record(&mut latencies.ack_interval, micros);
    }
}

/// Deliveries counted and latencies collected by one client, flushed to
/// the shared counters in batches: one lock and one atomic add per 64
/// deliveries instead of per delivery, so that the load generator is not
/// what bounds a broadcast.
#[derive(Debug, Default)]
struct LocalStats {
    deliveries: u64,
    latencies: Vec<u64>,
}

impl LocalStats {
    const BATCH: usize = 64;

    fn delivered(&mut self, shared: &ClientShared, latency_us: Option<u64>) {
        self.deliveries += 1;
        if let Some(latency) = latency_us {
            self.latencies.push(latency);
        }
        if self.latencies.len() >= Self::BATCH || self.deliveries >= Self::BATCH as u64 {
            self.flush(shared);
        }
    }

    fn flush(&mut self, shared: &ClientShared) {
        if self.deliveries > 0 {
            shared
                .counters
                .deliveries
                .fetch_add(self.deliveries, Ordering::Relaxed);
            self.deliveries = 0;
        }
        if !self.latencies.is_empty() {
            let mut latencies = shared.latencies.lock().expect("not poisoned");
            for &micros in &self.latencies {
                stats::record(&mut latencies.deliver, micros);
                stats::record(&mut latencies.deliver_interval, micros);
            }
            drop(latencies);
            self.latencies.clear();
        }
    }
}

/// What the worker asks of a client.
#[derive(Debug)]
pub enum ClientCommand {
    /// Send one message to conversation (global index).
    Send { conversation: u32 },
    /// Drop the TCP connection without a close handshake, wait, resume.
    Storm { delay: Duration },
    /// Stop: acknowledge, close, return the report.
    Finish,
}

/// A message this client sent and saw acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckRecord {
    pub message_id: u64,
    pub conversation: u32,
    pub sender: u32,
    pub sent_unix_us: u64,
    pub acked_unix_us: u64,
    /// The unique word of its body (search finds the message by it).
    pub search_word: String,
}

/// What a lifecycle request does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Edit,
    Delete,
    React,
}

/// An edit, delete or reaction a client asked for, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub kind: OpKind,
    pub message_id: u64,
    pub conversation: u32,
    /// Who asked (global user index).
    pub user: u32,
    pub sent_unix_us: u64,
    /// When its `ack` arrived (0: not acknowledged).
    pub acked_unix_us: u64,
    /// An edit: the new body's unique search word; a reaction: the
    /// reaction; a delete: empty.
    pub detail: String,
    /// Empty when acknowledged; else the `error` frame's code, or `no_ack`
    /// (the run ended first: whether it applied is unknown).
    pub refused: String,
}

/// A `message_edited`, `message_deleted` or `reaction` frame as received:
/// the same key as the [`OpRecord`] that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeenOp {
    pub kind: OpKind,
    pub message_id: u64,
    /// Who did it (global user index; `u32::MAX` when not a load generator user).
    pub user: u32,
    /// As [`OpRecord::detail`] (a removed reaction: `-` and the reaction).
    pub detail: String,
}

/// What a client saw, for the verification.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ClientReport {
    /// Global user index.
    pub user: u32,
    /// When the first `hello` arrived (0: never connected).
    pub first_online_unix_us: u64,
    pub acks: Vec<AckRecord>,
    /// Distinct message ids received live (message frames).
    pub delivered: Vec<u64>,
    /// Distinct message ids that came only from a history catch-up.
    pub caught_up: Vec<u64>,
    /// Sends never acknowledged (client_msg_id, error code or "no_ack").
    pub unacked: Vec<(String, String)>,
    /// Per conversation: message ids in the order they were received live.
    pub order: Vec<(u32, Vec<u64>)>,
    /// Every edit, delete and reaction asked for, with its outcome.
    #[serde(default)]
    pub ops: Vec<OpRecord>,
    /// Lifecycle frames received (distinct).
    #[serde(default)]
    pub seen_ops: Vec<SeenOp>,
    /// When each history catch-up (after `resumed:false`) ended: it brings
    /// the state of every change made before it.
    #[serde(default)]
    pub catch_ups_unix_us: Vec<u64>,
}

/// Identity and settings of one client.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub local: u32,
    pub user: u32,
    pub user_name: String,
    pub token: String,
    pub source: Ipv4Addr,
    pub conversations: Vec<u32>,
    /// Index of the edge (the target's URLs) to connect to first.
    pub edge: usize,
}

/// How every simulated client connects: from its own loopback source
/// address, with small buffers (thousands of clients per process).
fn connect_options(source: Ipv4Addr) -> ConnectOptions {
    ConnectOptions {
        source: Some(source.into()),
        websocket: WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20)),
        ..ConnectOptions::default()
    }
}

/// TCP connect from `source` (port chosen by the kernel), then the
/// WebSocket handshake: for the baselines, which send no `hello`.
pub async fn open_socket(url: &str, source: Ipv4Addr) -> Result<Socket, String> {
    ws::open_socket(url, &connect_options(source))
        .await
        .map_err(|error| error.to_string())
}

struct Pending {
    conversation: u32,
    search_word: String,
    sent_unix_us: u64,
    sent_at: Instant,
    frame: String,
}

/// Per-client state that survives reconnects.
struct State {
    spec: ClientSpec,
    /// The edge connected to (index into the target's URLs).
    edge: usize,
    session: Option<String>,
    last_seq: u64,
    acked_seq: u64,
    pending: HashMap<String, Pending>,
    next_message: u64,
    seen: HashSet<u64>,
    report: ClientReport,
    /// Highest message id received per conversation (history cursor).
    newest: HashMap<u32, u64>,
    order: HashMap<u32, Vec<u64>>,
    local: LocalStats,
    /// This client's recent acknowledged messages (conversation, id) that
    /// it has not deleted: what it edits and deletes.
    own_recent: VecDeque<(u32, u64)>,
    /// Recent messages of others received live: what it reacts to.
    received_recent: VecDeque<(u32, u64)>,
    /// Messages with a lifecycle request of this client in flight: none is
    /// asked for twice at once, so that the order of its changes is known.
    busy: HashSet<u64>,
    pending_ops: HashMap<String, PendingOp>,
    seen_ops: HashSet<SeenOp>,
    next_op: u64,
    received_since_read: u64,
    /// Frames to write once the current frame is handled (reads).
    outbox: Vec<String>,
}

/// A lifecycle request waiting for its `ack` (written again after a
/// reconnect: edits, deletes and reactions are idempotent).
struct PendingOp {
    record: OpRecord,
    frame: String,
}

/// How many recent messages a client remembers for its lifecycle requests.
const RECENT: usize = 16;

/// The reactions clients choose from.
const REACTIONS: [&str; 3] = ["+1", "heart", "laugh"];

/// The contract's application-level ping (answered by `pong`).
const PING_FRAME: &str = r#"{"op":"ping"}"#;

/// Runs a chatpipe client until `Finish`. `online` fires at the first hello.
pub async fn run_chatpipe_client(
    shared: Arc<ClientShared>,
    spec: ClientSpec,
    mut commands: mpsc::Receiver<ClientCommand>,
    online: oneshot::Sender<bool>,
) -> ClientReport {
    let WorkerTarget::Chatpipe {
        ws_urls,
        edge_stall_ms,
        ..
    } = &shared.target
    else {
        unreachable!("chatpipe client on a chatpipe target")
    };
    // With one edge there is nowhere else to go: a stuck edge is waited for.
    let stall_after =
        (ws_urls.len() > 1 && *edge_stall_ms > 0).then(|| Duration::from_millis(*edge_stall_ms));
    let mut state = State {
        edge: spec.edge % ws_urls.len().max(1),
        report: ClientReport {
            user: spec.user,
            ..ClientReport::default()
        },
        spec,
        session: None,
        last_seq: 0,
        acked_seq: 0,
        pending: HashMap::new(),
        next_message: 0,
        seen: HashSet::new(),
        newest: HashMap::new(),
        order: HashMap::new(),
        local: LocalStats::default(),
        own_recent: VecDeque::new(),
        received_recent: VecDeque::new(),
        busy: HashSet::new(),
        pending_ops: HashMap::new(),
        seen_ops: HashSet::new(),
        next_op: 0,
        received_since_read: 0,
        outbox: Vec::new(),
    };
    let mut online = Some(online);
    let mut backoff = Duration::from_millis(100);
    let options = connect_options(state.spec.source);
    'connections: loop {
        let resuming = state.session.clone().map(|session_id| Resume {
            session_id,
            last_seq: state.last_seq,
        });
        let url = ws::connect_url(&ws_urls[state.edge], &state.spec.token, resuming.as_ref());
        let attempt = Connection::connect(&url, &options);
        tokio::pin!(attempt);
        // While (re)connecting, sends are queued as pending and Finish ends the client.
        let outcome = loop {
            tokio::select! {
                outcome = &mut attempt => break Some(outcome),
                command = commands.recv() => match command {
                    None | Some(ClientCommand::Finish) => break None,
                    Some(ClientCommand::Send { conversation }) => {
                        queue_send(&shared, &mut state, conversation).await;
                    }
                    Some(ClientCommand::Storm { .. }) => {}
                },
            }
        };
        let Some(outcome) = outcome else {
            break 'connections;
        };
        let mut connection = match outcome {
            Ok(connection) => connection,
            Err(error) => {
                let wait = match &error {
                    ConnectError::Refused { code: 1013, .. } => {
                        shared
                            .counters
                            .refused_try_later
                            .fetch_add(1, Ordering::Relaxed);
                        error
                            .retry_after_ms()
                            .map(Duration::from_millis)
                            .unwrap_or(backoff)
                    }
                    ConnectError::Refused { code, .. } => {
                        shared
                            .counters
                            .refused_other
                            .fetch_add(1, Ordering::Relaxed);
                        shared.error(&format!("close_{code}"));
                        next_edge(&shared, &mut state, ws_urls.len());
                        backoff
                    }
                    reason => {
                        if shared
                            .counters
                            .connect_errors
                            .fetch_add(1, Ordering::Relaxed)
                            < 5
                        {
                            tracing_free_log(&format!("connect failed: {reason}"));
                        }
                        // The edge is down (or stuck): try the next one.
                        next_edge(&shared, &mut state, ws_urls.len());
                        backoff
                    }
                };
                backoff = (backoff * 2).min(Duration::from_secs(5));
                let jitter =
                    Duration::from_millis(rand::random_range(0..=wait.as_millis() as u64 / 4 + 50));
                if wait_or_finish(&shared, &mut state, &mut commands, wait + jitter).await {
                    break 'connections;
                }
                continue 'connections;
            }
        };
        backoff = Duration::from_millis(100);
        shared.connected(&mut state.report, &mut online);
        if resuming.is_some() {
            if connection.hello().resumed {
                shared.counters.resumed.fetch_add(1, Ordering::Relaxed);
            } else {
                shared
                    .counters
                    .resume_refused
                    .fetch_add(1, Ordering::Relaxed);
                state.last_seq = 0;
                state.acked_seq = 0;
                catch_up(&shared, &mut state).await;
            }
        }
        state.session = Some(connection.hello().session_id.to_string());
        // Sends that saw no ack go again, same client_msg_id, marked.
        let mut writable = true;
        let mut resend: Vec<String> = state
            .pending
            .values()
            .map(|pending| frames::mark_resend(&pending.frame))
            .collect();
        resend.extend(state.pending_ops.values().map(|op| op.frame.clone()));
        state.outbox.clear();
        for frame in resend {
            shared.counters.resends.fetch_add(1, Ordering::Relaxed);
            if connection.send_text(frame).await.is_err() {
                writable = false;
                break;
            }
        }
        let ended = if writable {
            serve(
                &shared,
                &mut state,
                &mut connection,
                &mut commands,
                stall_after,
            )
            .await
        } else {
            Ended::Lost
        };
        shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ended::Finish => {
                let _ = connection.ack_seq(state.last_seq).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), connection.close()).await;
                break 'connections;
            }
            Ended::Storm(delay) => {
                // No close handshake: the edge sees the TCP connection drop.
                drop(connection);
                if wait_or_finish(&shared, &mut state, &mut commands, delay).await {
                    break 'connections;
                }
            }
            Ended::Closed(_) | Ended::Lost | Ended::Stalled => {
                let closes = &shared.counters;
                let counter = match ended {
                    Ended::Closed(Some(4008)) => &closes.closes_slow_consumer,
                    Ended::Closed(Some(1001)) => &closes.closes_draining,
                    Ended::Stalled => &closes.stalls,
                    _ => &closes.closes_other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // A stuck edge never answers a close: just drop the socket.
                drop(connection);
                // Lost, closed (a drain's 1001, a crash) or stuck: resume
                // on another edge, as a real client behind a balancer would.
                next_edge(&shared, &mut state, ws_urls.len());
                let pause = Duration::from_millis(rand::random_range(50..300));
                if wait_or_finish(&shared, &mut state, &mut commands, pause).await {
                    break 'connections;
                }
            }
        }
    }
    if let Some(online) = online.take() {
        let _ = online.send(false);
    }
    for (client_msg_id, _pending) in state.pending.drain() {
        state.report.unacked.push((client_msg_id, "no_ack".into()));
    }
    for (_, mut op) in state.pending_ops.drain() {
        op.record.refused = "no_ack".into();
        state.report.ops.push(op.record);
    }
    state.report.seen_ops = state.seen_ops.drain().collect();
    state.local.flush(&shared);
    state.report.order = state.order.into_iter().collect();
    state.report
}

/// Moves a client to the next of `edges` edges (none with one edge).
fn next_edge(shared: &ClientShared, state: &mut State, edges: usize) {
    if edges > 1 {
        state.edge = (state.edge + 1) % edges;
        shared
            .counters
            .edge_switches
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Sleeps `wait` while queueing sends; true when told to finish.
async fn wait_or_finish(
    shared: &Arc<ClientShared>,
    state: &mut State,
    commands: &mut mpsc::Receiver<ClientCommand>,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            command = commands.recv() => match command {
                None | Some(ClientCommand::Finish) => return true,
                Some(ClientCommand::Send { conversation }) => {
                    queue_send(shared, state, conversation).await;
                }
                Some(ClientCommand::Storm { .. }) => {}
            }
        }
    }
}

/// Builds a send and records it as pending (written by the caller, or by
/// the resend after the next connect).
async fn queue_send(
    shared: &Arc<ClientShared>,
    state: &mut State,
    conversation: u32,
) -> Option<String> {
    if state.pending.len() >= shared.max_unacked_per_client {
        shared
            .counters
            .send_skipped_backlog
            .fetch_add(1, Ordering::Relaxed);
        return None;
    }
    let ids = shared.conversation_ids.read().await.clone();
    let conversation_id = ids.get(conversation as usize)?;
    state.next_message += 1;
    let client_msg_id = format!(
        "w{}u{}n{}",
        shared.worker, state.spec.local, state.next_message
    );
    let token = format!(
        "{}w{}x{}x{}",
        shared.run_id, shared.worker, state.spec.local, state.next_message
    );
    let sent_unix_us = crate::now_unix_us();
    let body = wire::message_body(sent_unix_us, &token, shared.body_bytes);
    let frame = frames::send_frame(conversation_id, &client_msg_id, &body);
    state.pending.insert(
        client_msg_id,
        Pending {
            conversation,
            search_word: format!("q{token}"),
            sent_unix_us,
            sent_at: Instant::now(),
            frame: frame.clone(),
        },
    );
    shared.counters.sends.fetch_add(1, Ordering::Relaxed);
    Some(frame)
}

/// After a send: maybe an edit, a delete and a reaction (each drawn with
/// its share), queued in the outbox and pending until acknowledged.
async fn after_send(shared: &Arc<ClientShared>, state: &mut State) {
    let lifecycle = &shared.lifecycle;
    if lifecycle.edit_share <= 0.0 && lifecycle.delete_share <= 0.0 && lifecycle.react_share <= 0.0
    {
        return;
    }
    let draws = [
        (OpKind::Edit, lifecycle.edit_share),
        (OpKind::Delete, lifecycle.delete_share),
        (OpKind::React, lifecycle.react_share),
    ];
    for (kind, share) in draws {
        if share <= 0.0 || rand::random::<f64>() >= share {
            continue;
        }
        let pool = match kind {
            OpKind::Edit | OpKind::Delete => &state.own_recent,
            OpKind::React => &state.received_recent,
        };
        let free: Vec<usize> = (0..pool.len())
            .filter(|index| !state.busy.contains(&pool[*index].1))
            .collect();
        let Some(&index) = free.get(rand::random_range(0..free.len().max(1))) else {
            continue;
        };
        let (conversation, message_id) = pool[index];
        if kind == OpKind::Delete {
            // Never edited after its deletion.
            state.own_recent.remove(index);
        }
        let ids = shared.conversation_ids.read().await.clone();
        let Some(conversation_id) = ids.get(conversation as usize) else {
            continue;
        };
        state.next_op += 1;
        let client_msg_id = format!("w{}u{}o{}", shared.worker, state.spec.local, state.next_op);
        let sent_unix_us = crate::now_unix_us();
        let (frame, detail) = match kind {
            OpKind::Edit => {
                let token = format!(
                    "{}w{}x{}e{}",
                    shared.run_id, shared.worker, state.spec.local, state.next_op
                );
                let body = wire::message_body(sent_unix_us, &token, shared.body_bytes);
                let frame = serde_json::json!({"op": "edit", "conversation_id": conversation_id,
                    "message_id": message_id.to_string(), "body": body, "client_msg_id": client_msg_id});
                (frame, format!("q{token}"))
            }
            OpKind::Delete => (
                serde_json::json!({"op": "delete", "conversation_id": conversation_id,
                    "message_id": message_id.to_string(), "client_msg_id": client_msg_id}),
                String::new(),
            ),
            OpKind::React => {
                let reaction = REACTIONS[rand::random_range(0..REACTIONS.len())];
                let frame = serde_json::json!({"op": "react", "conversation_id": conversation_id,
                    "message_id": message_id.to_string(), "reaction": reaction, "client_msg_id": client_msg_id});
                (frame, reaction.to_owned())
            }
        };
        let frame = frame.to_string();
        state.busy.insert(message_id);
        state.outbox.push(frame.clone());
        state.pending_ops.insert(
            client_msg_id,
            PendingOp {
                record: OpRecord {
                    kind,
                    message_id,
                    conversation,
                    user: state.spec.user,
                    sent_unix_us,
                    acked_unix_us: 0,
                    detail,
                    refused: String::new(),
                },
                frame,
            },
        );
    }
}

/// A message of someone else received live: remembered for reactions, and
/// every `read_every` of them a `read` marker (in conversations small
/// enough, see [`LifecycleConfig::read_max_members`]).
fn received(
    shared: &ClientShared,
    state: &mut State,
    conversation: u32,
    conversation_id: &str,
    message_id: u64,
) {
    let lifecycle = &shared.lifecycle;
    if lifecycle.react_share > 0.0 {
        if state.received_recent.len() >= RECENT {
            state.received_recent.pop_front();
        }
        state.received_recent.push_back((conversation, message_id));
    }
    if lifecycle.read_every == 0 {
        return;
    }
    state.received_since_read += 1;
    if state.received_since_read < lifecycle.read_every {
        return;
    }
    let small_enough = lifecycle.read_max_members == 0
        || shared
            .conversation_sizes
            .get(conversation as usize)
            .is_none_or(|&size| size as usize <= lifecycle.read_max_members);
    if small_enough {
        state.received_since_read = 0;
        shared.counters.reads.fetch_add(1, Ordering::Relaxed);
        state.outbox.push(
            serde_json::json!({"op": "read", "conversation_id": conversation_id,
                "message_id": message_id.to_string()})
            .to_string(),
        );
    }
}

/// The `ack` of a lifecycle request (`client_msg_id`), if it is one.
fn op_acked(shared: &ClientShared, state: &mut State, client_msg_id: &str) {
    let Some(mut op) = state.pending_ops.remove(client_msg_id) else {
        return;
    };
    let counter = match op.record.kind {
        OpKind::Edit => &shared.counters.edits,
        OpKind::Delete => &shared.counters.deletes,
        OpKind::React => &shared.counters.reactions,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    state.busy.remove(&op.record.message_id);
    op.record.acked_unix_us = crate::now_unix_us();
    state.report.ops.push(op.record);
}

/// Writes the outbox's frames.
async fn flush_outbox(state: &mut State, connection: &mut Connection) -> Result<(), ()> {
    for frame in state.outbox.drain(..) {
        connection.send_text(frame).await.map_err(|_| ())?;
    }
    Ok(())
}

/// The fields of a `message_edited`, `message_deleted` or `reaction`
/// frame the verification keys on.
#[derive(Deserialize)]
struct LifecycleFrame<'a> {
    #[serde(borrow)]
    message_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reaction: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    action: Option<Cow<'a, str>>,
}

/// A lifecycle frame (`op`, whole text) as the key of the request behind it.
fn parse_lifecycle_frame(op: &str, text: &str) -> Option<SeenOp> {
    let frame: LifecycleFrame = serde_json::from_str(text).ok()?;
    let (kind, detail) = match op {
        "message_edited" => (
            OpKind::Edit,
            format!("q{}", wire::search_token(frame.body.as_deref()?)?),
        ),
        "message_deleted" => (OpKind::Delete, String::new()),
        "reaction" => {
            let reaction = frame.reaction.as_deref()?;
            match frame.action.as_deref() {
                Some("remove") => (OpKind::React, format!("-{reaction}")),
                _ => (OpKind::React, reaction.to_owned()),
            }
        }
        _ => return None,
    };
    Some(SeenOp {
        kind,
        message_id: frame.message_id.parse().ok()?,
        user: user_index(&frame.user_id),
        detail,
    })
}

/// The global index of a load generator user's name (`lg<run>-<index>`).
fn user_index(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|index| index.parse().ok())
        .unwrap_or(u32::MAX)
}

enum Ended {
    Finish,
    Storm(Duration),
    Closed(Option<u16>),
    Lost,
    /// The edge answered nothing for the stall time (see [`stalled`]).
    Stalled,
}

/// Whether a connection is stuck: nothing heard for `stall_after` while
/// something waited for an answer (a send, or the `ping` sent after half
/// of it). A live edge always answers a ping; an idle but live connection
/// is never given up.
fn stalled(
    stall_after: Duration,
    since_heard: Duration,
    awaiting_answer: bool,
    pinged: bool,
) -> bool {
    since_heard >= stall_after && (awaiting_answer || pinged)
}

async fn serve(
    shared: &Arc<ClientShared>,
    state: &mut State,
    connection: &mut Connection,
    commands: &mut mpsc::Receiver<ClientCommand>,
    stall_after: Option<Duration>,
) -> Ended {
    let mut ack_tick = tokio::time::interval(Duration::from_millis(250));
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the oldest frame not yet covered by an `ack_seq` arrived.
    let mut unacked_since: Option<Instant> = None;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(ClientCommand::Finish) => return Ended::Finish,
                Some(ClientCommand::Storm { delay }) => return Ended::Storm(delay),
                Some(ClientCommand::Send { conversation }) => {
                    if let Some(frame) = queue_send(shared, state, conversation).await
                        && connection.send_text(frame).await.is_err()
                    {
                        return Ended::Lost;
                    }
                    after_send(shared, state).await;
                    if flush_outbox(state, connection).await.is_err() {
                        return Ended::Lost;
                    }
                }
            },
            incoming = connection.recv() => {
                let text = match incoming {
                    Received::Text(text) => text,
                    Received::Closed(close) => return Ended::Closed(close.map(|close| close.code)),
                    Received::Lost => return Ended::Lost,
                };
                last_heard = Instant::now();
                pinged = false;
                handle_frame(shared, state, text.as_str());
                if flush_outbox(state, connection).await.is_err() {
                    return Ended::Lost;
                }
                if state.last_seq >= state.acked_seq + shared.ack_every_frames {
                    state.acked_seq = state.last_seq;
                    unacked_since = None;
                    if connection.ack_seq(state.last_seq).await.is_err() {
                        return Ended::Lost;
                    }
                } else if state.last_seq > state.acked_seq && unacked_since.is_none() {
                    unacked_since = Some(Instant::now());
                }
            }
            _ = ack_tick.tick() => {
                state.local.flush(shared);
                if let Some(stall_after) = stall_after {
                    let since_heard = last_heard.elapsed();
                    if stalled(stall_after, since_heard, !state.pending.is_empty(), pinged) {
                        return Ended::Stalled;
                    }
                    if !pinged && since_heard >= stall_after / 2 {
                        pinged = true;
                        if connection.send_text(PING_FRAME).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                }
                if state.last_seq > state.acked_seq
                    && unacked_since.is_none_or(|since| since.elapsed() >= shared.ack_delay)
                {
                    state.acked_seq = state.last_seq;
                    unacked_since = None;
                    if connection.ack_seq(state.last_seq).await.is_err() {
                        return Ended::Lost;
                    }
                }
            }
        }
    }
}

fn handle_frame(shared: &Arc<ClientShared>, state: &mut State, text: &str) {
    let Some(frame) = frames::parse_server_frame(text) else {
        shared.error("undecodable_frame");
        return;
    };
    if let Some(seq) = frame.seq
        && seq > state.last_seq
    {
        state.last_seq = seq;
    }
    match frame.op.as_ref() {
        "message" => {
            let Some(message) = frame.message.and_then(frames::parse_message) else {
                shared.error("undecodable_message");
                return;
            };
            let Ok(message_id) = message.message_id.parse::<u64>() else {
                return;
            };
            let latency = (message.sender_id != state.spec.user_name)
                .then(|| wire::sent_time_us(&message.body))
                .flatten()
                .map(|sent| crate::now_unix_us().saturating_sub(sent));
            if !state.seen.insert(message_id) {
                state.local.delivered(shared, None);
                shared.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            state.report.delivered.push(message_id);
            let conversation = shared
                .conversation_index
                .try_read()
                .ok()
                .and_then(|index| index.get(message.conversation_id.as_ref()).copied());
            if let Some(conversation) = conversation {
                let newest = state.newest.entry(conversation).or_default();
                *newest = (*newest).max(message_id);
                state
                    .order
                    .entry(conversation)
                    .or_default()
                    .push(message_id);
                if message.sender_id != state.spec.user_name {
                    received(
                        shared,
                        state,
                        conversation,
                        &message.conversation_id,
                        message_id,
                    );
                }
            }
            state.local.delivered(shared, latency);
        }
        "ack" => {
            let Some(client_msg_id) = frame.client_msg_id else {
                return;
            };
            let Some(pending) = state.pending.remove(client_msg_id.as_ref()) else {
                op_acked(shared, state, client_msg_id.as_ref());
                return;
            };
            let Some(message_id) = frame.message_id.and_then(|id| id.parse::<u64>().ok()) else {
                return;
            };
            shared.counters.acks.fetch_add(1, Ordering::Relaxed);
            shared.record_ack(pending.sent_at.elapsed().as_micros() as u64);
            state.report.acks.push(AckRecord {
                message_id,
                conversation: pending.conversation,
                sender: state.spec.user,
                sent_unix_us: pending.sent_unix_us,
                acked_unix_us: crate::now_unix_us(),
                search_word: pending.search_word,
            });
            if shared.lifecycle.active() {
                if state.own_recent.len() >= RECENT {
                    state.own_recent.pop_front();
                }
                state
                    .own_recent
                    .push_back((pending.conversation, message_id));
            }
        }
        "message_edited" | "message_deleted" | "reaction" => {
            shared
                .counters
                .lifecycle_frames
                .fetch_add(1, Ordering::Relaxed);
            match parse_lifecycle_frame(frame.op.as_ref(), text) {
                Some(seen) => {
                    state.seen_ops.insert(seen);
                }
                None => shared.error("undecodable_lifecycle_frame"),
            }
        }
        "pong" => {}
        "error" => {
            let code = frame.code.as_deref().unwrap_or("unknown").to_owned();
            shared.error(&code);
            if let Some(reference) = frame.reference {
                if state.pending.remove(reference.as_ref()).is_some() {
                    state.report.unacked.push((reference.into_owned(), code));
                } else if let Some(mut op) = state.pending_ops.remove(reference.as_ref()) {
                    shared
                        .counters
                        .lifecycle_refused
                        .fetch_add(1, Ordering::Relaxed);
                    state.busy.remove(&op.record.message_id);
                    op.record.refused = code;
                    state.report.ops.push(op.record);
                }
            }
        }
        _ => {
            shared.counters.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How far before the newest message held a catch-up starts. Message ids
/// come from the edges' clocks, so two sends racing on two edges can land
/// in the partition in the opposite order of their ids (issue 10's open
/// defect, counted by the order checks): a message with a slightly smaller
/// id than one already held may still be missing. The overlap is
/// de-duplicated by `message_id`, as the SDK does.
const CATCH_UP_OVERLAP_MS: u64 = 5_000;

/// The wait before the catch-up's second pass: history trails the ack by
/// the persist lag (the SDK's `persistLagMs`).
const PERSIST_LAG: Duration = Duration::from_millis(500);

/// After `resumed:false`: every conversation's messages after the newest
/// one seen (or since first online), then the same again after the persist
/// lag, as the SDK's catch-up does (a message acked just before the
/// reconnect may not be in history yet on the first pass).
async fn catch_up(shared: &Arc<ClientShared>, state: &mut State) {
    catch_up_pass(shared, state).await;
    tokio::time::sleep(PERSIST_LAG).await;
    let second_pass = crate::now_unix_us();
    catch_up_pass(shared, state).await;
    // History read from here on holds every change acked a persist lag
    // before (the second pass's start).
    state
        .report
        .catch_ups_unix_us
        .push(second_pass.saturating_sub(PERSIST_LAG.as_micros() as u64));
}

/// One pass of [`catch_up`].
async fn catch_up_pass(shared: &Arc<ClientShared>, state: &mut State) {
    let Some(api) = &shared.api else { return };
    let ids = shared.conversation_ids.read().await.clone();
    let since = chatpipe_core::MessageId::lower_bound_for_unix_ms(
        (state.report.first_online_unix_us / 1000).saturating_sub(1000),
    )
    .as_u64();
    for conversation in state.spec.conversations.clone() {
        let Some(conversation_id) = ids.get(conversation as usize) else {
            continue;
        };
        let after = match state.newest.get(&conversation) {
            Some(&newest) => chatpipe_core::MessageId::lower_bound_for_unix_ms(
                chatpipe_core::MessageId::from_u64(newest)
                    .unix_ms()
                    .saturating_sub(CATCH_UP_OVERLAP_MS),
            )
            .as_u64()
            .max(since),
            None => since,
        }
        .max(1);
        shared
            .counters
            .catchup_requests
            .fetch_add(1, Ordering::Relaxed);
        match api
            .catch_up(&state.spec.user_name, conversation_id, Some(after))
            .await
        {
            Ok(items) => {
                for item in items {
                    let newest = state.newest.entry(conversation).or_default();
                    *newest = (*newest).max(item.message_id);
                    if state.seen.insert(item.message_id) {
                        shared
                            .counters
                            .catchup_messages
                            .fetch_add(1, Ordering::Relaxed);
                        state.report.caught_up.push(item.message_id);
                    }
                }
            }
            Err(error) => {
                shared
                    .counters
                    .catchup_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing_free_log(&format!("catch-up of {conversation_id} failed: {error}"));
            }
        }
    }
}

fn tracing_free_log(line: &str) {
    eprintln!("loadgen: {line}");
}

/// A baseline client (bare server or Centrifugo): connects, counts
/// deliveries and their latency, sends when told (bare), until `Finish`.
pub async fn run_baseline_client(
    shared: Arc<ClientShared>,
    spec: ClientSpec,
    mut commands: mpsc::Receiver<ClientCommand>,
    online: oneshot::Sender<bool>,
) -> ClientReport {
    let mut report = ClientReport {
        user: spec.user,
        ..ClientReport::default()
    };
    let (url, centrifugo) = match &shared.target {
        WorkerTarget::Bare { ws_url } => (ws_url.clone(), false),
        WorkerTarget::Centrifugo { ws_url, .. } => (ws_url.clone(), true),
        WorkerTarget::Chatpipe { .. } => unreachable!("baseline client on a baseline target"),
    };
    let mut online = Some(online);
    let mut backoff = Duration::from_millis(100);
    let mut counter = 0u64;
    let mut local = LocalStats::default();
    let mut flush_tick = tokio::time::interval(Duration::from_millis(250));
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let connected = async {
            let mut socket = open_socket(&url, spec.source).await?;
            if centrifugo {
                centrifugo_handshake(&mut socket).await?;
            }
            Ok::<_, String>(socket)
        };
        let mut socket = tokio::select! {
            connected = connected => match connected {
                Ok(socket) => socket,
                Err(_) => {
                    shared.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
            command = commands.recv() => match command {
                None | Some(ClientCommand::Finish) => break,
                _ => continue,
            },
        };
        shared.connected(&mut report, &mut online);
        let finished = loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(ClientCommand::Finish) => break true,
                    Some(ClientCommand::Storm { .. }) => break false,
                    Some(ClientCommand::Send { .. }) => {
                        counter += 1;
                        let body = wire::message_body(crate::now_unix_us(), &format!("b{counter}"), shared.body_bytes);
                        shared.counters.sends.fetch_add(1, Ordering::Relaxed);
                        if socket.send(Message::Text(body.into())).await.is_err() {
                            break false;
                        }
                    }
                },
                incoming = socket.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if centrifugo {
                            if handle_centrifugo_frame(&shared, &mut local, &mut socket, text.as_str()).await.is_err() {
                                break false;
                            }
                        } else {
                            let latency = wire::sent_time_us(text.as_str()).map(|sent| crate::now_unix_us().saturating_sub(sent));
                            local.delivered(&shared, latency);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break false,
                    Some(Ok(_)) => {}
                },
                _ = flush_tick.tick() => local.flush(&shared),
            }
        };
        shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        if finished {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
            break;
        }
        shared.counters.closes_other.fetch_add(1, Ordering::Relaxed);
    }
    local.flush(&shared);
    if let Some(online) = online.take() {
        let _ = online.send(false);
    }
    report
}

/// Centrifugo's JSON protocol: `connect` (anonymous), then `subscribe`.
async fn centrifugo_handshake(socket: &mut Socket) -> Result<(), String> {
    let commands = [
        r#"{"id":1,"connect":{"name":"loadgen"}}"#.to_owned(),
        format!(
            r#"{{"id":2,"subscribe":{{"channel":"{}"}}}}"#,
            CENTRIFUGO_CHANNEL
        ),
    ];
    for (index, command) in commands.iter().enumerate() {
        socket
            .send(Message::Text(command.clone().into()))
            .await
            .map_err(|error| error.to_string())?;
        let id = format!(r#""id":{}"#, index + 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let next = tokio::time::timeout_at(deadline, socket.next())
                .await
                .map_err(|_| "centrifugo: no reply in time".to_owned())?;
            match next {
                Some(Ok(Message::Text(text))) if text.as_str().contains(&id) => {
                    if text.as_str().contains("\"error\"") {
                        return Err(format!("centrifugo refused: {}", text.as_str()));
                    }
                    break;
                }
                Some(Ok(Message::Text(text))) if text.as_str() == "{}" => {
                    socket
                        .send(Message::Text("{}".into()))
                        .await
                        .map_err(|error| error.to_string())?;
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("closed".into()),
            }
        }
    }
    Ok(())
}

/// The channel every Centrifugo client subscribes to.
pub const CENTRIFUGO_CHANNEL: &str = "bench";

/// A Centrifugo frame: newline-separated replies; `{}` is a ping to answer.
async fn handle_centrifugo_frame(
    shared: &Arc<ClientShared>,
    local: &mut LocalStats,
    socket: &mut Socket,
    text: &str,
) -> Result<(), ()> {
    for line in text.split('\n') {
        if line == "{}" {
            socket
                .send(Message::Text("{}".into()))
                .await
                .map_err(|_| ())?;
            continue;
        }
        if line.contains("\"pub\"") {
            let latency = line
                .find("\"b\":\"")
                .and_then(|start| wire::sent_time_us(&line[start + 5..]))
                .map(|sent| crate::now_unix_us().saturating_sub(sent));
            local.delivered(shared, latency);
        } else {
            shared.counters.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_frames_key_like_their_requests() {
        let edited = r#"{"op":"message_edited","seq":3,"conversation_id":"c","message_id":"42","user_id":"lgabc-7","body":"t1 qabcw0x1e2 lg","edited_at":5}"#;
        assert_eq!(
            parse_lifecycle_frame("message_edited", edited),
            Some(SeenOp {
                kind: OpKind::Edit,
                message_id: 42,
                user: 7,
                detail: "qabcw0x1e2".into()
            })
        );
        let deleted = r#"{"op":"message_deleted","seq":4,"conversation_id":"c","message_id":"42","user_id":"lgabc-7","deleted_at":6}"#;
        assert_eq!(
            parse_lifecycle_frame("message_deleted", deleted).map(|seen| (seen.kind, seen.detail)),
            Some((OpKind::Delete, String::new()))
        );
        let removed = r#"{"op":"reaction","seq":5,"conversation_id":"c","message_id":"42","user_id":"other","reaction":"+1","action":"remove","ts":7}"#;
        let seen = parse_lifecycle_frame("reaction", removed).unwrap();
        assert_eq!((seen.user, seen.detail.as_str()), (u32::MAX, "-+1"));
        assert_eq!(parse_lifecycle_frame("message_edited", "{}"), None);
    }

    #[test]
    fn a_connection_is_stuck_only_when_an_answer_is_overdue() {
        let stall = Duration::from_secs(10);
        let long = Duration::from_secs(11);
        let short = Duration::from_secs(3);
        assert!(stalled(stall, long, true, false), "a send waits");
        assert!(stalled(stall, long, false, true), "a ping waits");
        assert!(!stalled(stall, long, false, false), "idle, nothing asked");
        assert!(!stalled(stall, short, true, true), "not yet");
    }
}
