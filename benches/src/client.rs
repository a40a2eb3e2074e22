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
//! window). The connection and the frames are `chatpipe-client`'s; what
//! is here is the behaviour of a user and what it counts.

use std::collections::{HashMap, HashSet};
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
    pub sends: AtomicU64,
    pub resends: AtomicU64,
    pub acks: AtomicU64,
    pub send_skipped_backlog: AtomicU64,
    pub deliveries: AtomicU64,
    pub duplicates: AtomicU64,
    pub other_frames: AtomicU64,
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
}

/// Runs a chatpipe client until `Finish`. `online` fires at the first hello.
pub async fn run_chatpipe_client(
    shared: Arc<ClientShared>,
    spec: ClientSpec,
    mut commands: mpsc::Receiver<ClientCommand>,
    online: oneshot::Sender<bool>,
) -> ClientReport {
    let WorkerTarget::Chatpipe { ws_url, .. } = &shared.target else {
        unreachable!("chatpipe client on a chatpipe target")
    };
    let mut state = State {
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
    };
    let mut online = Some(online);
    let mut backoff = Duration::from_millis(100);
    let options = connect_options(state.spec.source);
    'connections: loop {
        let resuming = state.session.clone().map(|session_id| Resume {
            session_id,
            last_seq: state.last_seq,
        });
        let url = ws::connect_url(ws_url, &state.spec.token, resuming.as_ref());
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
        let resend: Vec<String> = state
            .pending
            .values()
            .map(|pending| frames::mark_resend(&pending.frame))
            .collect();
        for frame in resend {
            shared.counters.resends.fetch_add(1, Ordering::Relaxed);
            if connection.send_text(frame).await.is_err() {
                writable = false;
                break;
            }
        }
        let ended = if writable {
            serve(&shared, &mut state, &mut connection, &mut commands).await
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
            Ended::Closed(_) | Ended::Lost => {
                let closes = &shared.counters;
                let counter = match ended {
                    Ended::Closed(Some(4008)) => &closes.closes_slow_consumer,
                    Ended::Closed(Some(1001)) => &closes.closes_draining,
                    _ => &closes.closes_other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
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
    state.local.flush(&shared);
    state.report.order = state.order.into_iter().collect();
    state.report
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

enum Ended {
    Finish,
    Storm(Duration),
    Closed(Option<u16>),
    Lost,
}

async fn serve(
    shared: &Arc<ClientShared>,
    state: &mut State,
    connection: &mut Connection,
    commands: &mut mpsc::Receiver<ClientCommand>,
) -> Ended {
    let mut ack_tick = tokio::time::interval(Duration::from_millis(250));
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the oldest frame not yet covered by an `ack_seq` arrived.
    let mut unacked_since: Option<Instant> = None;
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
                }
            },
            incoming = connection.recv() => {
                let text = match incoming {
                    Received::Text(text) => text,
                    Received::Closed(close) => return Ended::Closed(close.map(|close| close.code)),
                    Received::Lost => return Ended::Lost,
                };
                handle_frame(shared, state, text.as_str());
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
            }
            state.local.delivered(shared, latency);
        }
        "ack" => {
            let Some(client_msg_id) = frame.client_msg_id else {
                return;
            };
            let Some(pending) = state.pending.remove(client_msg_id.as_ref()) else {
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
        }
        "error" => {
            let code = frame.code.as_deref().unwrap_or("unknown").to_owned();
            shared.error(&code);
            if let Some(reference) = frame.reference
                && state.pending.remove(reference.as_ref()).is_some()
            {
                state.report.unacked.push((reference.into_owned(), code));
            }
        }
        _ => {
            shared.counters.other_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// After `resumed:false`: every conversation's messages after the newest
/// one seen (or since first online), as a real client's catch-up.
async fn catch_up(shared: &Arc<ClientShared>, state: &mut State) {
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
        let after = state
            .newest
            .get(&conversation)
            .copied()
            .unwrap_or(since)
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
