//! A load-generator worker process: holds up to ~15,000 client connections
//! (a process here may hold at most 20,000 open files), paces their
//! connects, drives their sends at its share of the target rate (Poisson
//! arrivals), and reports to the coordinator on stdout, one JSON line per
//! event (`progress` every second, `connected`, `ready`, `finished`).
//! Commands arrive as JSON lines on stdin.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::api::{ApiClient, token_for, token_keys};
use crate::client::{
    self, ClientCommand, ClientReport, ClientShared, ClientSpec, Counters, Latencies,
};
use crate::plan::{WorkerPlan, WorkerTarget, user_name};
use crate::stats::{self, LatencySummary};

/// Commands from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum WorkerCommand {
    /// Open every connection (paced).
    Connect,
    /// Conversation ids by global index, as a JSON array in a file.
    Conversations { path: PathBuf },
    /// Global send rate (messages/s); the worker does its share.
    Rate { per_s: f64 },
    /// Mass reconnect.
    Storm { jitter_ms: u64, share: f64 },
    /// Stop, close, write the report to `out`.
    Finish { out: PathBuf },
}

/// A progress snapshot (cumulative counters, interval latencies).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub worker: usize,
    pub open: u64,
    pub connects: u64,
    pub first_connects: u64,
    pub connect_errors: u64,
    pub refused_try_later: u64,
    pub refused_other: u64,
    pub closes_slow_consumer: u64,
    pub closes_draining: u64,
    pub closes_other: u64,
    pub resumed: u64,
    pub resume_refused: u64,
    pub catchup_requests: u64,
    pub catchup_messages: u64,
    pub catchup_errors: u64,
    /// Reconnects that went to another edge than the last connection's.
    #[serde(default)]
    pub edge_switches: u64,
    /// Connections given up because their edge answered nothing.
    #[serde(default)]
    pub stalls: u64,
    pub sends: u64,
    pub resends: u64,
    pub acks: u64,
    pub send_skipped_backlog: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    pub other_frames: u64,
    /// Edits, deletes, reactions and reads (scenarios with `[lifecycle]`).
    #[serde(default)]
    pub lifecycle: LifecycleCounts,
    pub errors: HashMap<String, u64>,
    pub ack_interval: LatencySummary,
    pub deliver_interval: LatencySummary,
}

/// A worker's lifecycle requests (see [`crate::client::Counters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleCounts {
    /// Acknowledged edits, deletes and reactions.
    pub edits: u64,
    pub deletes: u64,
    pub reactions: u64,
    /// `read` markers sent (never answered).
    pub reads: u64,
    /// Requests refused with an `error`.
    pub refused: u64,
    /// `message_edited`, `message_deleted` and `reaction` frames received.
    pub frames: u64,
}

impl LifecycleCounts {
    pub fn add(&mut self, other: &Self) {
        self.edits += other.edits;
        self.deletes += other.deletes;
        self.reactions += other.reactions;
        self.reads += other.reads;
        self.refused += other.refused;
        self.frames += other.frames;
    }

    /// What happened since `earlier` (counters only grow).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            edits: self.edits.saturating_sub(earlier.edits),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            reactions: self.reactions.saturating_sub(earlier.reactions),
            reads: self.reads.saturating_sub(earlier.reads),
            refused: self.refused.saturating_sub(earlier.refused),
            frames: self.frames.saturating_sub(earlier.frames),
        }
    }

    /// The requests that cost the stack work: acknowledged edits, deletes
    /// and reactions, and reads.
    pub fn operations(&self) -> u64 {
        self.edits + self.deletes + self.reactions + self.reads
    }
}

/// Events to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum WorkerEvent {
    Progress(Box<Snapshot>),
    Connected {
        worker: usize,
        online: usize,
        failed: usize,
        seconds: f64,
    },
    Ready {
        worker: usize,
    },
    Finished {
        worker: usize,
        out: PathBuf,
    },
}

/// The report file of a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerOutput {
    pub worker: usize,
    pub clients: Vec<ClientReport>,
    pub ack_histogram: String,
    pub deliver_histogram: String,
    pub final_counters: Snapshot,
}

fn emit(event: &WorkerEvent) {
    let line = serde_json::to_string(event).expect("events serialize");
    println!("{line}");
}

fn snapshot(shared: &ClientShared, reset_interval: bool) -> Snapshot {
    let counters: &Counters = &shared.counters;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (ack_interval, deliver_interval) = {
        let mut latencies = shared.latencies.lock().expect("not poisoned");
        let summaries = (
            LatencySummary::of(&latencies.ack_interval),
            LatencySummary::of(&latencies.deliver_interval),
        );
        if reset_interval {
            latencies.ack_interval.reset();
            latencies.deliver_interval.reset();
        }
        summaries
    };
    Snapshot {
        worker: shared.worker,
        open: load(&counters.open),
        connects: load(&counters.connects),
        first_connects: load(&counters.first_connects),
        connect_errors: load(&counters.connect_errors),
        refused_try_later: load(&counters.refused_try_later),
        refused_other: load(&counters.refused_other),
        closes_slow_consumer: load(&counters.closes_slow_consumer),
        closes_draining: load(&counters.closes_draining),
        closes_other: load(&counters.closes_other),
        resumed: load(&counters.resumed),
        resume_refused: load(&counters.resume_refused),
        catchup_requests: load(&counters.catchup_requests),
        catchup_messages: load(&counters.catchup_messages),
        catchup_errors: load(&counters.catchup_errors),
        edge_switches: load(&counters.edge_switches),
        stalls: load(&counters.stalls),
        sends: load(&counters.sends),
        resends: load(&counters.resends),
        acks: load(&counters.acks),
        send_skipped_backlog: load(&counters.send_skipped_backlog),
        deliveries: load(&counters.deliveries),
        duplicates: load(&counters.duplicates),
        other_frames: load(&counters.other_frames),
        lifecycle: LifecycleCounts {
            edits: load(&counters.edits),
            deletes: load(&counters.deletes),
            reactions: load(&counters.reactions),
            reads: load(&counters.reads),
            refused: load(&counters.lifecycle_refused),
            frames: load(&counters.lifecycle_frames),
        },
        errors: shared.errors_by_code.lock().expect("not poisoned").clone(),
        ack_interval,
        deliver_interval,
    }
}

/// Entry point of `chatpipe-loadgen worker --plan <file>`.
pub fn main(plan_path: PathBuf, threads: usize) -> anyhow::Result<()> {
    let plan: WorkerPlan = serde_json::from_slice(&std::fs::read(&plan_path)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(plan))
}

struct ClientHandle {
    commands: mpsc::Sender<ClientCommand>,
    task: JoinHandle<ClientReport>,
}

async fn run(plan: WorkerPlan) -> anyhow::Result<()> {
    let (api, secret) = match &plan.target {
        WorkerTarget::Chatpipe {
            api_url,
            token_secret,
            ..
        } => (
            Some(ApiClient::new(api_url, token_secret)),
            token_secret.clone(),
        ),
        _ => (None, String::new()),
    };
    let shared = Arc::new(ClientShared {
        worker: plan.index,
        run_id: plan.run_id.clone(),
        target: plan.target.clone(),
        counters: Counters::default(),
        latencies: std::sync::Mutex::new(Latencies::default()),
        errors_by_code: std::sync::Mutex::new(HashMap::new()),
        conversation_ids: RwLock::new(Arc::new(Vec::new())),
        conversation_index: RwLock::new(Arc::new(HashMap::new())),
        api,
        body_bytes: plan.body_bytes,
        ack_every_frames: plan.ack_every_frames.max(1),
        ack_delay: Duration::from_millis(plan.ack_delay_ms),
        max_unacked_per_client: plan.max_unacked_per_client.max(1),
        lifecycle: plan.lifecycle.clone(),
        conversation_sizes: plan.conversation_sizes.clone(),
    });
    let (command_tx, mut command_rx) = mpsc::channel::<WorkerCommand>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<WorkerCommand>(&line) {
                Ok(command) => {
                    if command_tx.blocking_send(command).is_err() {
                        break;
                    }
                }
                Err(error) => eprintln!("worker: bad command {line:?}: {error}"),
            }
        }
    });
    let progress_shared = shared.clone();
    let progress = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            emit(&WorkerEvent::Progress(Box::new(snapshot(
                &progress_shared,
                true,
            ))));
        }
    });
    let rate_bits = Arc::new(AtomicU64::new(0f64.to_bits()));
    let mut clients: Vec<ClientHandle> = Vec::new();
    let mut scheduler: Option<JoinHandle<()>> = None;
    emit(&WorkerEvent::Ready { worker: plan.index });
    let keys = token_keys(&secret);
    while let Some(command) = command_rx.recv().await {
        match command {
            WorkerCommand::Connect => {
                let started = std::time::Instant::now();
                let mut online_signals = Vec::new();
                let gap = Duration::from_secs_f64(1.0 / plan.connect_rate_per_s.max(1.0));
                let mut next = tokio::time::Instant::now();
                for (local, &user) in plan.users.iter().enumerate() {
                    let name = user_name(&plan.run_id, user);
                    let spec = ClientSpec {
                        local: local as u32,
                        user,
                        token: token_for(&keys, &name),
                        user_name: name,
                        source: plan.source_addresses[local % plan.source_addresses.len()],
                        conversations: plan.user_conversations[local].clone(),
                        edge: plan.user_edges.get(local).copied().unwrap_or(0) as usize,
                    };
                    let (commands, receiver) = mpsc::channel(32);
                    let (online_tx, online_rx) = oneshot::channel();
                    let task = match &plan.target {
                        WorkerTarget::Chatpipe { .. } => tokio::spawn(client::run_chatpipe_client(
                            shared.clone(),
                            spec,
                            receiver,
                            online_tx,
                        )),
                        _ => tokio::spawn(client::run_baseline_client(
                            shared.clone(),
                            spec,
                            receiver,
                            online_tx,
                        )),
                    };
                    clients.push(ClientHandle { commands, task });
                    online_signals.push(online_rx);
                    next += gap;
                    tokio::time::sleep_until(next).await;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                let mut online = 0;
                let mut failed = 0;
                for signal in online_signals {
                    match tokio::time::timeout_at(deadline, signal).await {
                        Ok(Ok(true)) => online += 1,
                        _ => failed += 1,
                    }
                }
                emit(&WorkerEvent::Connected {
                    worker: plan.index,
                    online,
                    failed,
                    seconds: started.elapsed().as_secs_f64(),
                });
                if scheduler.is_none() {
                    let senders: Vec<mpsc::Sender<ClientCommand>> = clients
                        .iter()
                        .map(|client| client.commands.clone())
                        .collect();
                    scheduler = Some(tokio::spawn(schedule_sends(
                        shared.clone(),
                        plan.clone(),
                        senders,
                        rate_bits.clone(),
                    )));
                }
            }
            WorkerCommand::Conversations { path } => {
                let ids: Vec<String> = serde_json::from_slice(&std::fs::read(&path)?)?;
                let index: HashMap<String, u32> = ids
                    .iter()
                    .enumerate()
                    .map(|(position, id)| (id.clone(), position as u32))
                    .collect();
                *shared.conversation_index.write().await = Arc::new(index);
                *shared.conversation_ids.write().await = Arc::new(ids);
                emit(&WorkerEvent::Ready { worker: plan.index });
            }
            WorkerCommand::Rate { per_s } => {
                let share = per_s * plan.rate_share;
                rate_bits.store(share.to_bits(), Ordering::Relaxed);
            }
            WorkerCommand::Storm { jitter_ms, share } => {
                for client in &clients {
                    if rand::random_bool(share.clamp(0.0, 1.0)) {
                        let delay = Duration::from_millis(rand::random_range(0..=jitter_ms));
                        let _ = client.commands.try_send(ClientCommand::Storm { delay });
                    }
                }
            }
            WorkerCommand::Finish { out } => {
                rate_bits.store(0f64.to_bits(), Ordering::Relaxed);
                if let Some(scheduler) = scheduler.take() {
                    scheduler.abort();
                }
                for client in &clients {
                    let _ = client.commands.send(ClientCommand::Finish).await;
                }
                let mut reports = Vec::with_capacity(clients.len());
                for client in clients.drain(..) {
                    match tokio::time::timeout(Duration::from_secs(60), client.task).await {
                        Ok(Ok(report)) => reports.push(report),
                        _ => eprintln!("worker {}: a client did not finish in time", plan.index),
                    }
                }
                let final_counters = snapshot(&shared, false);
                let (ack_histogram, deliver_histogram) = {
                    let latencies = shared.latencies.lock().expect("not poisoned");
                    (
                        stats::encode(&latencies.ack),
                        stats::encode(&latencies.deliver),
                    )
                };
                let output = WorkerOutput {
                    worker: plan.index,
                    clients: reports,
                    ack_histogram,
                    deliver_histogram,
                    final_counters,
                };
                std::fs::write(&out, serde_json::to_vec(&output)?)?;
                progress.abort();
                emit(&WorkerEvent::Finished {
                    worker: plan.index,
                    out,
                });
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Poisson arrivals at the current rate, each to a `(user, conversation)`
/// pair drawn by weight; Centrifugo baselines publish over HTTP instead.
async fn schedule_sends(
    shared: Arc<ClientShared>,
    plan: WorkerPlan,
    senders: Vec<mpsc::Sender<ClientCommand>>,
    rate_bits: Arc<AtomicU64>,
) {
    if plan.send_pairs.is_empty() {
        return;
    }
    let mut cumulative = Vec::with_capacity(plan.send_pairs.len());
    let mut total = 0.0;
    for pair in &plan.send_pairs {
        total += pair.2;
        cumulative.push(total);
    }
    let publisher = match &plan.target {
        WorkerTarget::Centrifugo {
            api_url,
            api_key,
            channel,
            ..
        } => Some(Arc::new(CentrifugoPublisher {
            http: reqwest::Client::new(),
            url: format!("{}/api/publish", api_url.trim_end_matches('/')),
            api_key: api_key.clone(),
            channel: channel.clone(),
            in_flight: tokio::sync::Semaphore::new(256),
        })),
        _ => None,
    };
    let mut counter = 0u64;
    let mut next = tokio::time::Instant::now();
    loop {
        let rate = f64::from_bits(rate_bits.load(Ordering::Relaxed));
        if rate <= 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            next = tokio::time::Instant::now();
            continue;
        }
        let now = tokio::time::Instant::now();
        if next > now {
            tokio::time::sleep_until(next).await;
        } else if now - next > Duration::from_secs(1) {
            next = now; // never burst to catch up a stall
        }
        while next <= tokio::time::Instant::now() {
            let uniform: f64 = rand::rng().random_range(f64::EPSILON..1.0);
            next += Duration::from_secs_f64(-uniform.ln() / rate);
            let pick = rand::rng().random_range(0.0..total);
            let position = cumulative
                .partition_point(|&weight| weight <= pick)
                .min(plan.send_pairs.len() - 1);
            let (local, conversation, _) = plan.send_pairs[position];
            if let Some(publisher) = &publisher {
                counter += 1;
                publisher.clone().publish(&shared, counter);
                continue;
            }
            match senders[local as usize].try_send(ClientCommand::Send { conversation }) {
                Ok(()) => {}
                Err(_) => {
                    shared
                        .counters
                        .send_skipped_backlog
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

struct CentrifugoPublisher {
    http: reqwest::Client,
    url: String,
    api_key: String,
    channel: String,
    in_flight: tokio::sync::Semaphore,
}

impl CentrifugoPublisher {
    fn publish(self: Arc<Self>, shared: &Arc<ClientShared>, counter: u64) {
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(_permit) = self.in_flight.acquire().await else {
                return;
            };
            let body = crate::wire::message_body(
                crate::now_unix_us(),
                &format!("c{counter}"),
                shared.body_bytes,
            );
            let request = serde_json::json!({ "channel": self.channel, "data": { "b": body } });
            shared.counters.sends.fetch_add(1, Ordering::Relaxed);
            let outcome = self
                .http
                .post(&self.url)
                .header("X-API-Key", &self.api_key)
                .json(&request)
                .send()
                .await;
            match outcome {
                Ok(response) if response.status().is_success() => {
                    shared.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    let mut errors = shared.errors_by_code.lock().expect("not poisoned");
                    *errors.entry("publish_failed".into()).or_default() += 1;
                }
            }
        });
    }
}
