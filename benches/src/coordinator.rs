//! The load generator's coordinator: sets up the population through the
//! HTTP API, re-executes itself as worker processes, paces the phases,
//! prints a progress line every second, collects the workers' reports,
//! verifies, and writes `benches/results/<scenario>.json`. Baselines named
//! by the scenario run right after chatpipe, in the same command, with the
//! same connections and rates.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::api::ApiClient;
use crate::client::{AckRecord, ClientReport, OpRecord};
use crate::cpu::{CpuSampler, CpuSnapshot, CpuWindow, ProcessKind, TrackedProcess};
use crate::plan::{self, ConversationKind, PlannedConversation, WorkerTarget, user_name};
use crate::scenario::Scenario;
use crate::stats::{self, LatencySummary};
use crate::sys;
use crate::verify::{self, DeliveryCheck, HistoryCheck, LifecycleFrameCheck, WrongState};
use crate::worker::{LifecycleCounts, Snapshot, WorkerCommand, WorkerEvent, WorkerOutput};

/// Command-line choices of one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: PathBuf,
    /// Where results go (`benches/results`).
    pub out_dir: PathBuf,
    /// The edge processes (default: whoever listens on the first edge's
    /// port). Their memory is summed for the per-connection figure.
    pub edge_pids: Vec<u32>,
    pub skip_chatpipe: bool,
    pub skip_baselines: bool,
    pub users: Option<usize>,
    /// Multiplies every phase's rate.
    pub rate_scale: Option<f64>,
    /// Multiplies the number of conversations of each kind (rounded up, so
    /// a kind the scenario has keeps at least one; quick runs).
    pub conversation_scale: Option<f64>,
    /// Overrides every phase's duration (quick runs).
    pub phase_seconds: Option<u64>,
    /// Overrides the settle pause.
    pub settle_seconds: Option<u64>,
    /// Overrides the longest drain.
    pub drain_seconds: Option<u64>,
    pub centrifugo_script: PathBuf,
    pub worker_threads: usize,
    /// Run only the baselines whose kind is named (`bare`, `centrifugo`).
    pub only_baseline: Option<String>,
    /// Processes of the stack whose CPU is measured (`--process`,
    /// `--engine`). Engines not named here are found by their port; with no
    /// chatpipe process named, the edge process stands for chatpipe.
    pub processes: Vec<TrackedProcess>,
}

/// One phase's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PhaseResult {
    pub rate_per_s: f64,
    pub duration_s: u64,
    pub sends_per_s: f64,
    pub acks_per_s: f64,
    pub deliveries_per_s: f64,
    /// Median over the phase's seconds of the per-second p99 (worst worker).
    pub deliver_p99_ms_median: f64,
    pub ack_p99_ms_median: f64,
    /// Acknowledged sends during the phase (the CPU figures' denominator).
    #[serde(default)]
    pub acks: u64,
    /// CPU of every tracked process during the phase.
    #[serde(default)]
    pub cpu: Option<CpuWindow>,
}

/// CPU of the tracked processes in one target's run (see `crate::cpu`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuResult {
    /// Clock ticks per second the figures were converted with.
    pub ticks_per_s: u64,
    /// Every connection open, nothing sent yet (the settle pause).
    pub settle: Option<CpuWindow>,
    /// From the start of the first phase to the end of the drain: every
    /// acknowledged message and the work it caused downstream.
    pub measured: Option<CpuWindow>,
    /// Sends acknowledged in `measured`.
    pub measured_acks: u64,
    /// Member deliveries received in `measured`.
    pub measured_deliveries: u64,
    /// Edits, deletes, reactions and reads in `measured` (scenarios with
    /// `[lifecycle]`).
    #[serde(default)]
    pub measured_lifecycle: LifecycleCounts,
}

/// Verification outcome (chatpipe only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verification {
    pub passed: bool,
    pub deliveries: DeliveryCheck,
    pub unacked_sends: u64,
    pub history_conversations: u64,
    pub history_failures: Vec<(String, HistoryCheck)>,
    /// `history_failures` summed by kind.
    #[serde(default)]
    pub history_counts: verify::HistoryCounts,
    pub search_checked: u64,
    pub search_missing: Vec<u64>,
    /// Sampled messages that search returned more than once.
    #[serde(default)]
    pub search_duplicated: Vec<u64>,
    /// Edits, deletes and reactions (scenarios with `[lifecycle]`).
    #[serde(default)]
    pub lifecycle: Option<LifecycleVerification>,
    pub notes: Vec<String>,
}

/// Verification of the changes made to messages after their send.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifecycleVerification {
    /// Requests' outcomes and their frames to the members.
    pub frames: LifecycleFrameCheck,
    /// Changed messages whose final state history was checked for.
    pub history_checked: u64,
    /// Messages whose history state is wrong (conversation id, what).
    pub history_wrong: Vec<(String, WrongState)>,
    pub history_wrong_total: u64,
    /// Searches for changed messages: deleted ones by their original word
    /// (must not be found), edited ones by their new word (must be).
    pub search_checked: u64,
    /// `(message id, word, whether it had to be found)` that search got wrong.
    pub search_wrong: Vec<(u64, String, bool)>,
}

impl LifecycleVerification {
    pub fn passed(&self) -> bool {
        self.frames.passed() && self.history_wrong_total == 0 && self.search_wrong.is_empty()
    }
}

/// The figures of one target (chatpipe or a baseline) in one scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetResult {
    pub target: String,
    /// chatpipe edges the clients were spread over (0 for a baseline).
    #[serde(default)]
    pub edges: usize,
    pub users: usize,
    pub workers: usize,
    pub connections: u64,
    pub connect_failures: u64,
    pub connect_seconds: f64,
    pub connect_rate_per_s: f64,
    pub server_pid: Option<u32>,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub kib_per_connection: f64,
    pub server_open_files: Option<usize>,
    pub phases: Vec<PhaseResult>,
    pub ack_latency: LatencySummary,
    pub deliver_latency: LatencySummary,
    pub totals: Snapshot,
    pub lag_max_during: BTreeMap<String, f64>,
    pub lag_after: BTreeMap<String, f64>,
    pub storm: Option<StormResult>,
    pub verification: Option<Verification>,
    /// One sample per second of the run.
    #[serde(default)]
    pub timeline: Vec<TimelineSample>,
    #[serde(default)]
    pub cpu: CpuResult,
}

/// One second of a run, as the progress line prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TimelineSample {
    pub unix_ms: u64,
    pub open: u64,
    pub acks_per_s: f64,
    pub deliveries_per_s: f64,
    /// Of the second (worst worker).
    pub ack_p99_ms: f64,
    pub deliver_p99_ms: f64,
}

/// Resident memory of `pids` together, KiB (0: none readable).
fn rss_of(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| sys::rss_kib(*pid)).sum()
}

/// How a mass reconnect went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormResult {
    pub dropped: u64,
    /// Seconds from the storm until as many connections were open again.
    pub recovered_s: Option<f64>,
    pub refused_try_later: u64,
    pub resumed: u64,
    pub resume_refused: u64,
}

/// All targets of one scenario run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub machine: String,
    pub started_unix_s: u64,
    pub targets: Vec<TargetResult>,
}

/// Target runs so far in this process (see the source-address shift).
static TARGET_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
}

/// Runs a scenario file; true when every verification passed.
pub async fn run(options: RunOptions) -> anyhow::Result<bool> {
    let mut scenario = Scenario::load(&options.scenario)?;
    if let Some(users) = options.users {
        scenario.load.users = users;
    }
    if let Some(scale) = options.rate_scale {
        for phase in &mut scenario.phases {
            phase.rate_per_s *= scale;
        }
    }
    if let Some(scale) = options.conversation_scale {
        let mix = &mut scenario.conversations;
        for count in [&mut mix.direct, &mut mix.groups, &mut mix.large] {
            *count = (*count as f64 * scale).ceil() as usize;
        }
    }
    if let Some(seconds) = options.phase_seconds {
        for phase in &mut scenario.phases {
            phase.duration_s = seconds;
        }
        // A storm past the (shortened) phases would never happen.
        if let Some(storm) = &mut scenario.storm {
            storm.at_s = storm.at_s.min(seconds / 2);
        }
    }
    if let Some(seconds) = options.settle_seconds {
        scenario.load.settle_s = seconds;
    }
    if let Some(seconds) = options.drain_seconds {
        scenario.load.drain_s = seconds;
    }
    if let Ok(secret) = std::env::var("CHATPIPE_TOKEN_SECRET") {
        scenario.target.token_secret = secret;
    }
    // Where chatpipe runs, when not at the scenario's (default) addresses.
    for (variable, field) in [
        ("CHATPIPE_LOADGEN_WS_URL", &mut scenario.target.ws_url),
        ("CHATPIPE_LOADGEN_API_URL", &mut scenario.target.api_url),
        (
            "CHATPIPE_LOADGEN_EDGE_METRICS_URL",
            &mut scenario.target.edge_metrics_url,
        ),
        (
            "CHATPIPE_LOADGEN_FANOUT_METRICS_URL",
            &mut scenario.target.fanout_metrics_url,
        ),
        (
            "CHATPIPE_LOADGEN_PERSIST_METRICS_URL",
            &mut scenario.target.persist_metrics_url,
        ),
        (
            "CHATPIPE_LOADGEN_INDEX_METRICS_URL",
            &mut scenario.target.index_metrics_url,
        ),
    ] {
        if let Ok(value) = std::env::var(variable)
            && !value.is_empty()
        {
            *field = value;
        }
    }
    // Several edges: their URLs separated by spaces or commas.
    for (variable, field) in [
        ("CHATPIPE_LOADGEN_WS_URLS", &mut scenario.target.ws_urls),
        (
            "CHATPIPE_LOADGEN_EDGE_METRICS_URLS",
            &mut scenario.target.edge_metrics_urls,
        ),
    ] {
        if let Ok(value) = std::env::var(variable) {
            let urls: Vec<String> = value
                .split([' ', ','])
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect();
            if !urls.is_empty() {
                *field = urls;
            }
        }
    }
    scenario.validate()?;
    std::fs::create_dir_all(&options.out_dir)?;
    let mut result = ScenarioResult {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        machine: sys::machine_summary(),
        started_unix_s: crate::now_unix_us() / 1_000_000,
        targets: Vec::new(),
    };
    println!("== scenario {} — {}", scenario.name, scenario.description);
    println!("machine: {}", result.machine);
    let mut passed = true;
    if !options.skip_chatpipe {
        let ws_urls = scenario.target.edge_urls();
        let target = WorkerTarget::Chatpipe {
            api_url: scenario.target.api_url.clone(),
            token_secret: scenario.target.token_secret.clone(),
            edge_stall_ms: (scenario.load.edge_stall_s * 1000.0) as u64,
            ws_urls,
        };
        let mut pids = options.edge_pids.clone();
        if pids.is_empty() {
            pids.extend(port_of(&scenario.target.edge_urls()[0]).and_then(sys::pid_listening_on));
        }
        let tracked = stack_processes(&options.processes, pids.first().copied());
        let outcome = run_target(&scenario, &options, "chatpipe", target, pids, tracked).await?;
        if let Some(verification) = &outcome.verification {
            passed &= verification.passed;
        }
        result.targets.push(outcome);
        write_result(&options.out_dir, &result)?;
    }
    let wanted = |kind: &str| {
        options
            .only_baseline
            .as_deref()
            .is_none_or(|only| only == kind)
    };
    if !options.skip_baselines {
        for &buffer in scenario
            .baselines
            .bare_read_buffers
            .iter()
            .filter(|_| wanted("bare"))
        {
            let label = match buffer {
                0 => "bare-ws (default buffers)".to_owned(),
                bytes => format!("bare-ws ({} KiB read buffer)", bytes / 1024),
            };
            let port = scenario.baselines.bare_port;
            let binary = sibling_binary("bare-ws")?;
            let mut server = Command::new(binary)
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--read-buffer-bytes",
                    &buffer.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            wait_for_port(port, Duration::from_secs(20)).await?;
            let target = WorkerTarget::Bare {
                ws_url: format!("ws://127.0.0.1:{port}/"),
            };
            let tracked = baseline_process("bare-ws", server.id());
            let outcome = run_target(
                &scenario,
                &options,
                &label,
                target,
                server.id().into_iter().collect(),
                tracked,
            )
            .await;
            let _ = server.kill().await;
            result.targets.push(outcome?);
            write_result(&options.out_dir, &result)?;
        }
        if scenario.baselines.centrifugo && wanted("centrifugo") {
            let port = scenario.baselines.centrifugo_port;
            let key = "bench-api-key";
            let mut server = Command::new("bash")
                .arg(&options.centrifugo_script)
                .args(["run", &port.to_string(), key])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            match wait_for_port(port, Duration::from_secs(600)).await {
                Ok(()) => {
                    let target = WorkerTarget::Centrifugo {
                        ws_url: format!("ws://127.0.0.1:{port}/connection/websocket"),
                        api_url: format!("http://127.0.0.1:{port}"),
                        api_key: key.to_owned(),
                        channel: crate::client::CENTRIFUGO_CHANNEL.to_owned(),
                    };
                    let tracked = baseline_process("centrifugo", server.id());
                    let outcome = run_target(
                        &scenario,
                        &options,
                        "centrifugo",
                        target,
                        server.id().into_iter().collect(),
                        tracked,
                    )
                    .await;
                    let _ = server.kill().await;
                    result.targets.push(outcome?);
                    write_result(&options.out_dir, &result)?;
                }
                Err(error) => {
                    let _ = server.kill().await;
                    println!("centrifugo baseline skipped: {error}");
                }
            }
        }
    }
    print_summary(&result);
    let path = write_result(&options.out_dir, &result)?;
    println!("results: {}", path.display());
    println!("verification: {}", if passed { "PASSED" } else { "FAILED" });
    Ok(passed)
}

/// The engines' default ports (the `CHATPIPE_*_PORT` variables of
/// `topology/engines.sh` move them).
pub const ENGINE_PORTS: [(&str, &str, u16); 3] = [
    ("kafka", "CHATPIPE_KAFKA_PORT", 9092),
    ("cassandra", "CHATPIPE_CASSANDRA_PORT", 9042),
    ("opensearch", "CHATPIPE_OPENSEARCH_PORT", 9200),
];

/// The engines not named in `named`, found by the process listening on
/// their port.
pub fn discover_engines(named: &[TrackedProcess]) -> Vec<TrackedProcess> {
    let mut found = Vec::new();
    for (name, variable, default_port) in ENGINE_PORTS {
        if named.iter().any(|process| process.name == name) {
            continue;
        }
        let port = std::env::var(variable)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default_port);
        match sys::pid_listening_on(port) {
            Some(pid) => found.push(TrackedProcess {
                name: name.to_owned(),
                kind: ProcessKind::Engine,
                pid,
            }),
            None => eprintln!("cpu: no process listens on {name}'s port {port}; not measured"),
        }
    }
    found
}

/// The stack whose CPU a chatpipe run is charged: the named processes, the
/// engines (found by port unless named), and the edge process when no
/// chatpipe process is named (`chatpipe all`).
pub fn stack_processes(named: &[TrackedProcess], edge_pid: Option<u32>) -> Vec<TrackedProcess> {
    let mut processes = named.to_vec();
    processes.extend(discover_engines(named));
    if !processes
        .iter()
        .any(|process| process.kind == ProcessKind::Chatpipe)
        && let Some(pid) = edge_pid
    {
        processes.push(TrackedProcess {
            name: "chatpipe".to_owned(),
            kind: ProcessKind::Chatpipe,
            pid,
        });
    }
    processes
}

fn baseline_process(name: &str, pid: Option<u32>) -> Vec<TrackedProcess> {
    pid.map(|pid| TrackedProcess {
        name: name.to_owned(),
        kind: ProcessKind::Baseline,
        pid,
    })
    .into_iter()
    .collect()
}

/// A sampler over `processes`, this process and the workers.
fn sampler_for(processes: &[TrackedProcess], workers: &[WorkerProcess]) -> CpuSampler {
    let mut sampler = CpuSampler::new(crate::cpu::clock_ticks_per_second());
    for process in processes {
        sampler.track(process.name.clone(), process.kind, process.pid);
    }
    sampler.track("loadgen", ProcessKind::LoadGenerator, std::process::id());
    for (index, worker) in workers.iter().enumerate() {
        if let Some(pid) = worker.child.id() {
            sampler.track(
                format!("loadgen-worker-{index}"),
                ProcessKind::LoadGenerator,
                pid,
            );
        }
    }
    sampler
}

/// One line: the stack's CPU in a window, and per 1,000 acked messages.
fn cpu_line(window: &CpuWindow, acks: u64) -> String {
    let stack = window.stack_cpu_seconds();
    let per_thousand = CpuWindow::per_thousand(stack, acks)
        .map(|value| format!(", {value:.2} CPU s per 1,000 acked"))
        .unwrap_or_default();
    let parts: Vec<String> = window
        .processes
        .iter()
        .map(|process| match process.cpu_seconds {
            Some(seconds) => format!(
                "{} {:.0}%",
                process.name,
                window.share_of_core(seconds) * 100.0
            ),
            None => format!("{} ?", process.name),
        })
        .collect();
    format!(
        "stack {stack:.1} CPU s in {:.0} s ({:.0}% of a core){per_thousand}; {}",
        window.seconds,
        window.share_of_core(stack) * 100.0,
        parts.join(" ")
    )
}

fn write_result(dir: &Path, result: &ScenarioResult) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{}.json", result.scenario));
    std::fs::write(&path, serde_json::to_vec_pretty(result)?)?;
    Ok(path)
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not built (cargo build --release -p chatpipe-benches)",
        path.display()
    );
    Ok(path)
}

fn port_of(url: &str) -> Option<u16> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// The consumer lag of every group, from the services' `/metrics`.
async fn consumer_lags(http: &reqwest::Client, scenario: &Scenario) -> BTreeMap<String, f64> {
    let mut urls = vec![
        scenario.target.fanout_metrics_url.clone(),
        scenario.target.persist_metrics_url.clone(),
        scenario.target.index_metrics_url.clone(),
    ];
    urls.extend(scenario.target.edge_metrics());
    urls.dedup();
    let mut lags = BTreeMap::new();
    for url in urls {
        if let Some(text) = crate::prom::scrape(http, &url).await {
            for (name, value) in crate::prom::matching(&text, "chatpipe_", "_consumer_lag_records")
            {
                let group = name
                    .trim_start_matches("chatpipe_")
                    .trim_end_matches("_consumer_lag_records")
                    .to_owned();
                // Every edge reports its own lag under one name: summed.
                *lags.entry(group).or_default() += value;
            }
        }
    }
    lags
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = crate::prom::scrape(http, url).await?;
    crate::prom::sum_of(&text, name)
}

/// Creates the planned conversations through the API; ids by index.
async fn create_conversations(
    api: &ApiClient,
    run_id: &str,
    planned: &[PlannedConversation],
) -> anyhow::Result<Vec<String>> {
    const PER_REQUEST: usize = 400;
    let started = Instant::now();
    let created: Vec<anyhow::Result<(usize, String)>> =
        futures::stream::iter(planned.iter().enumerate())
            .map(|(index, conversation)| async move {
                let names: Vec<String> = conversation
                    .members
                    .iter()
                    .map(|member| user_name(run_id, *member))
                    .collect();
                let first = names
                    .iter()
                    .skip(1)
                    .take(PER_REQUEST)
                    .cloned()
                    .collect::<Vec<_>>();
                let title = match conversation.kind {
                    ConversationKind::Direct => None,
                    ConversationKind::Group => Some(format!("loadgen group {index}")),
                    ConversationKind::Large => Some(format!("loadgen large group {index}")),
                };
                let id = api
                    .create_conversation(&names[0], &first, title.as_deref())
                    .await?;
                Ok((index, id))
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut ids = vec![String::new(); planned.len()];
    for outcome in created {
        let (index, id) = outcome?;
        ids[index] = id;
    }
    // Members beyond the first request are added by admins: only owners
    // and admins add members, and each user has a rate limit of its own,
    // so the creator (the owner) first promotes a few initial members, who
    // then share the additions.
    const ADDING_ADMINS: usize = 32;
    let initial = PER_REQUEST + 1;
    let mut promotions = Vec::new();
    let mut additions = Vec::new();
    for (index, conversation) in planned.iter().enumerate() {
        if conversation.members.len() <= initial {
            continue;
        }
        let admins = &conversation.members[1..=ADDING_ADMINS.min(initial - 1)];
        for admin in admins {
            promotions.push((index, conversation.members[0], *admin));
        }
        for (position, member) in conversation.members.iter().enumerate().skip(initial) {
            let actor = admins[position % admins.len()];
            additions.push((index, actor, *member));
        }
    }
    let promoted: Vec<anyhow::Result<()>> = futures::stream::iter(promotions)
        .map(|(index, owner, admin)| {
            let conversation_id = ids[index].clone();
            async move {
                api.set_role(
                    &user_name(run_id, owner),
                    &conversation_id,
                    &user_name(run_id, admin),
                    "admin",
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for outcome in promoted {
        outcome?;
    }
    let added = additions.len();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(additions)
        .map(|(index, actor, member)| {
            let conversation_id = ids[index].clone();
            async move {
                api.add_member(
                    &user_name(run_id, actor),
                    &conversation_id,
                    &user_name(run_id, member),
                )
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for outcome in results {
        outcome?;
    }
    println!(
        "created {} conversations (+{added} member additions) in {:.1}s",
        planned.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ids)
}

/// Latest snapshot per worker, and their sum.
#[derive(Default)]
struct Progress {
    latest: HashMap<usize, Snapshot>,
}

impl Progress {
    fn total(&self) -> Snapshot {
        let mut total = Snapshot::default();
        for snapshot in self.latest.values() {
            add_snapshot(&mut total, snapshot);
        }
        total
    }
}

fn add_snapshot(total: &mut Snapshot, other: &Snapshot) {
    total.open += other.open;
    total.connects += other.connects;
    total.first_connects += other.first_connects;
    total.connect_errors += other.connect_errors;
    total.refused_try_later += other.refused_try_later;
    total.refused_other += other.refused_other;
    total.closes_slow_consumer += other.closes_slow_consumer;
    total.closes_draining += other.closes_draining;
    total.closes_other += other.closes_other;
    total.resumed += other.resumed;
    total.resume_refused += other.resume_refused;
    total.catchup_requests += other.catchup_requests;
    total.catchup_messages += other.catchup_messages;
    total.catchup_errors += other.catchup_errors;
    total.edge_switches += other.edge_switches;
    total.stalls += other.stalls;
    total.sends += other.sends;
    total.resends += other.resends;
    total.acks += other.acks;
    total.send_skipped_backlog += other.send_skipped_backlog;
    total.deliveries += other.deliveries;
    total.duplicates += other.duplicates;
    total.other_frames += other.other_frames;
    total.lifecycle.add(&other.lifecycle);
    for (code, count) in &other.errors {
        *total.errors.entry(code.clone()).or_default() += count;
    }
    let worse = |mine: &mut LatencySummary, theirs: &LatencySummary| {
        if theirs.p99_ms > mine.p99_ms {
            *mine = theirs.clone();
        }
    };
    worse(&mut total.ack_interval, &other.ack_interval);
    worse(&mut total.deliver_interval, &other.deliver_interval);
}

struct Session {
    workers: Vec<WorkerProcess>,
    events: mpsc::Receiver<WorkerEvent>,
    progress: Progress,
}

impl Session {
    async fn send_all(&mut self, command: &WorkerCommand) -> anyhow::Result<()> {
        let line = format!("{}\n", serde_json::to_string(command)?);
        for worker in &mut self.workers {
            worker.stdin.write_all(line.as_bytes()).await?;
            worker.stdin.flush().await?;
        }
        Ok(())
    }

    /// Next non-progress event, folding progress in; None on timeout.
    async fn next_event(&mut self, deadline: tokio::time::Instant) -> Option<WorkerEvent> {
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(WorkerEvent::Progress(snapshot))) => {
                    self.progress.latest.insert(snapshot.worker, *snapshot);
                }
                Ok(Some(event)) => return Some(event),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Folds progress until `deadline`.
    async fn absorb_until(&mut self, deadline: tokio::time::Instant) {
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            if let WorkerEvent::Progress(snapshot) = event {
                self.progress.latest.insert(snapshot.worker, *snapshot);
            }
        }
    }
}

struct Ticker<'a> {
    label: String,
    http: reqwest::Client,
    scenario: &'a Scenario,
    pids: Vec<u32>,
    started: Instant,
    previous: Snapshot,
    lag_max: BTreeMap<String, f64>,
    chatpipe: bool,
    /// Per-second (deliveries/s, deliver p99, ack p99) of the current phase.
    samples: Vec<(f64, f64, f64)>,
    /// Every second of the run (the fault runner reads when latency was
    /// back to normal after each fault from it).
    timeline: Vec<TimelineSample>,
}

impl Ticker<'_> {
    /// Waits `duration`, printing a progress line every second.
    async fn run_for(&mut self, session: &mut Session, duration: Duration) {
        let end = tokio::time::Instant::now() + duration;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return;
            }
            let step = (end - now).min(Duration::from_secs(1));
            session.absorb_until(now + step).await;
            self.line(session).await;
        }
    }

    async fn line(&mut self, session: &Session) {
        let total = session.progress.total();
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64;
        let deliveries_per_s = rate(total.deliveries, self.previous.deliveries);
        self.samples.push((
            deliveries_per_s,
            total.deliver_interval.p99_ms,
            total.ack_interval.p99_ms,
        ));
        let rss = match rss_of(&self.pids) {
            0 => "?".into(),
            kib => format!("{:.0}MiB", kib as f64 / 1024.0),
        };
        self.timeline.push(TimelineSample {
            unix_ms: crate::now_unix_us() / 1000,
            open: total.open,
            acks_per_s: rate(total.acks, self.previous.acks),
            deliveries_per_s,
            ack_p99_ms: total.ack_interval.p99_ms,
            deliver_p99_ms: total.deliver_interval.p99_ms,
        });
        let lags = if self.chatpipe {
            let lags = consumer_lags(&self.http, self.scenario).await;
            for (group, lag) in &lags {
                let max = self.lag_max.entry(group.clone()).or_default();
                *max = max.max(*lag);
            }
            lags.iter()
                .map(|(group, lag)| format!(" {group}={lag:.0}"))
                .collect::<String>()
        } else {
            String::new()
        };
        let errors: u64 = total.errors.values().sum();
        println!(
            "[{}] t={elapsed:>4.0}s open={} conn/s={:.0} sends/s={:.0} acks/s={:.0} deliv/s={:.0} dup={} err={errors} refused={} ack_p99={:.1}ms deliv_p99={:.1}ms rss={rss} lag:{lags}",
            self.label,
            total.open,
            rate(total.connects, self.previous.connects),
            rate(total.sends, self.previous.sends),
            rate(total.acks, self.previous.acks),
            deliveries_per_s,
            total.duplicates,
            total.refused_try_later + total.refused_other,
            total.ack_interval.p99_ms,
            total.deliver_interval.p99_ms,
        );
        self.previous = total;
    }
}

async fn spawn_workers(
    plans: &[plan::WorkerPlan],
    dir: &Path,
    threads: usize,
) -> anyhow::Result<Session> {
    let me = std::env::current_exe()?;
    let (events_tx, events_rx) = mpsc::channel::<WorkerEvent>(1024);
    let mut workers = Vec::new();
    for plan in plans {
        let plan_path = dir.join(format!("worker-{}.json", plan.index));
        std::fs::write(&plan_path, serde_json::to_vec(plan)?)?;
        let mut child = Command::new(&me)
            .arg("worker")
            .arg("--plan")
            .arg(&plan_path)
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take().expect("piped");
        let events = events_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(event) => {
                        if events.send(event).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("worker: {line}"),
                }
            }
        });
        workers.push(WorkerProcess { child, stdin });
    }
    Ok(Session {
        workers,
        events: events_rx,
        progress: Progress::default(),
    })
}

async fn run_target(
    scenario: &Scenario,
    options: &RunOptions,
    label: &str,
    target: WorkerTarget,
    server_pids: Vec<u32>,
    tracked: Vec<TrackedProcess>,
) -> anyhow::Result<TargetResult> {
    let server_pid = server_pids.first().copied();
    let chatpipe = matches!(target, WorkerTarget::Chatpipe { .. });
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let users = scenario.load.users;
    let workers = plan::worker_count(users, scenario.load.max_sockets_per_worker);
    println!("--- {label}: {users} users over {workers} worker processes (run {run_id})");
    let planned = if chatpipe {
        plan::conversations(users, &scenario.conversations, 42)
    } else {
        Vec::new()
    };
    let edge_of = match &target {
        WorkerTarget::Chatpipe { ws_urls, .. } if ws_urls.len() > 1 => {
            let edge_of = plan::assign_edges(users, &planned, ws_urls.len());
            println!(
                "{} edges: {} of {} conversations have members on two edges or more",
                ws_urls.len(),
                plan::spread_conversations(&planned, &edge_of),
                planned.len()
            );
            edge_of
        }
        _ => Vec::new(),
    };
    let mut plans = plan::worker_plans(
        scenario, &run_id, &target, users, &planned, &edge_of, workers,
    )?;
    // Each target run binds fresh source addresses, so that sockets of the
    // previous run still in TIME_WAIT never slow this one's connects.
    let round = TARGET_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for plan in &mut plans {
        for address in &mut plan.source_addresses {
            let shifted = u32::from(*address)
                + (round * workers * scenario.load.addresses_per_worker.max(1)) as u32;
            *address = std::net::Ipv4Addr::from(shifted);
        }
    }
    if !chatpipe && !scenario.phases.is_empty() {
        // Baselines: one sender (client 0 of worker 0, or the HTTP API).
        plans[0].send_pairs = vec![(0, 0, 1.0)];
        plans[0].rate_share = 1.0;
        for plan in &mut plans {
            plan.body_bytes = scenario.baselines.body_bytes;
        }
    }
    let dir = std::env::temp_dir().join(format!("chatpipe-loadgen-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let http = reqwest::Client::new();
    let api = ApiClient::new(&scenario.target.api_url, &scenario.target.token_secret);
    let mut result = TargetResult {
        target: label.to_owned(),
        edges: match &target {
            WorkerTarget::Chatpipe { ws_urls, .. } => ws_urls.len(),
            _ => 0,
        },
        users,
        workers,
        server_pid,
        ..TargetResult::default()
    };
    if let Some(pid) = server_pid {
        println!(
            "server pid {pid} (of {server_pids:?}): rss {} KiB, open files {:?}, limit {:?}",
            rss_of(&server_pids),
            sys::open_files(pid),
            sys::open_file_limits(Some(pid))
        );
    }
    let mut conversation_ids = Vec::new();
    if chatpipe && !planned.is_empty() && !scenario.conversations.create_after_connect {
        conversation_ids = create_conversations(&api, &run_id, &planned).await?;
    }
    let routes_before = if chatpipe {
        metric(
            &http,
            &scenario.target.fanout_metrics_url,
            "chatpipe_fanout_route_table_users",
        )
        .await
    } else {
        None
    };
    result.server_rss_before_kib = rss_of(&server_pids);
    let mut session = spawn_workers(&plans, &dir, options.worker_threads).await?;
    let sampler = sampler_for(&tracked, &session.workers);
    result.cpu.ticks_per_s = sampler.ticks_per_s();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ready = 0;
    while ready < workers {
        match session.next_event(deadline).await {
            Some(WorkerEvent::Ready { .. }) => ready += 1,
            Some(_) => {}
            None => anyhow::bail!("workers did not start"),
        }
    }
    let mut ticker = Ticker {
        label: format!("{} {label}", scenario.name),
        http: http.clone(),
        scenario,
        pids: server_pids.clone(),
        started: Instant::now(),
        previous: Snapshot::default(),
        lag_max: BTreeMap::new(),
        chatpipe,
        samples: Vec::new(),
        timeline: Vec::new(),
    };
    // Connect.
    session.send_all(&WorkerCommand::Connect).await?;
    let connect_budget =
        Duration::from_secs_f64(users as f64 / scenario.load.connect_rate_per_s.max(1.0) + 180.0);
    let deadline = tokio::time::Instant::now() + connect_budget;
    let mut connected = 0;
    while connected < workers {
        let step = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
        match session.next_event(step).await {
            Some(WorkerEvent::Connected {
                online,
                failed,
                seconds,
                ..
            }) => {
                connected += 1;
                result.connections += online as u64;
                result.connect_failures += failed as u64;
                result.connect_seconds = result.connect_seconds.max(seconds);
            }
            Some(_) => {}
            None => {
                ticker.line(&session).await;
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "connecting took too long"
                );
            }
        }
    }
    result.connect_rate_per_s = result.connections as f64 / result.connect_seconds.max(0.001);
    println!(
        "connected {} of {users} in {:.1}s ({:.0}/s), {} failed",
        result.connections,
        result.connect_seconds,
        result.connect_rate_per_s,
        result.connect_failures
    );
    // Idle: hold, then read the server's memory.
    let settle_start = sampler.sample();
    ticker
        .run_for(&mut session, Duration::from_secs(scenario.load.settle_s))
        .await;
    let settle = sampler.sample().window_since(&settle_start);
    println!("cpu, connections open and idle: {}", cpu_line(&settle, 0));
    result.cpu.settle = Some(settle);
    result.server_rss_after_kib = rss_of(&server_pids);
    result.server_open_files = server_pid.and_then(sys::open_files);
    if result.connections > 0 && result.server_rss_after_kib > 0 {
        result.kib_per_connection = (result.server_rss_after_kib as f64
            - result.server_rss_before_kib as f64)
            / result.connections as f64;
    }
    println!(
        "server memory: {} KiB before, {} KiB after {} connections = {:.2} KiB per connection (open files {:?})",
        result.server_rss_before_kib,
        result.server_rss_after_kib,
        result.connections,
        result.kib_per_connection,
        result.server_open_files
    );
    if chatpipe && !planned.is_empty() {
        if conversation_ids.is_empty() {
            conversation_ids = create_conversations(&api, &run_id, &planned).await?;
        }
        let ids_path = dir.join("conversations.json");
        std::fs::write(&ids_path, serde_json::to_vec(&conversation_ids)?)?;
        session
            .send_all(&WorkerCommand::Conversations { path: ids_path })
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut ready = 0;
        while ready < workers {
            match session.next_event(deadline).await {
                Some(WorkerEvent::Ready { .. }) => ready += 1,
                Some(_) => {}
                None => anyhow::bail!("workers did not load the conversations"),
            }
        }
        // Fan-out must know where everyone is before "online" means anything.
        let expected = routes_before.unwrap_or(0.0) + result.connections as f64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let known = metric(
                &http,
                &scenario.target.fanout_metrics_url,
                "chatpipe_fanout_route_table_users",
            )
            .await;
            match known {
                Some(known) if known >= expected * 0.999 => break,
                _ if Instant::now() > deadline => {
                    println!("fan-out knows {known:?} users, expected {expected}: going on");
                    break;
                }
                // A busy fan-out may not answer its /metrics in time: ask again.
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    // Phases, with the storm at its time.
    let mut storm_pending = scenario.storm.clone();
    let phases_started = Instant::now();
    let measured_start: Option<(CpuSnapshot, Snapshot)> =
        (!scenario.phases.is_empty()).then(|| (sampler.sample(), session.progress.total()));
    let mut storm_result = None;
    for phase in &scenario.phases {
        session
            .send_all(&WorkerCommand::Rate {
                per_s: phase.rate_per_s,
            })
            .await?;
        let before = session.progress.total();
        let phase_started = Instant::now();
        let phase_cpu_start = sampler.sample();
        ticker.samples.clear();
        let phase_end = phase_started + Duration::from_secs(phase.duration_s);
        while Instant::now() < phase_end {
            if let Some(storm) = &storm_pending
                && phases_started.elapsed() >= Duration::from_secs(storm.at_s)
            {
                let open_before = session.progress.total().open;
                println!(
                    "storm: dropping {:.0}% of {open_before} connections",
                    storm.share * 100.0
                );
                session
                    .send_all(&WorkerCommand::Storm {
                        jitter_ms: storm.jitter_ms,
                        share: storm.share,
                    })
                    .await?;
                let baseline = session.progress.total();
                storm_result = Some((Instant::now(), open_before, baseline));
                storm_pending = None;
            }
            let left = phase_end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            ticker.run_for(&mut session, left).await;
            if let Some((at, open_before, _)) = &storm_result
                && result.storm.is_none()
                && at.elapsed() > Duration::from_secs(1)
                && session.progress.total().open >= *open_before
            {
                result.storm = Some(StormResult {
                    recovered_s: Some(at.elapsed().as_secs_f64()),
                    ..StormResult::default()
                });
            }
        }
        let after = session.progress.total();
        let phase_cpu = sampler.sample().window_since(&phase_cpu_start);
        let seconds = phase_started.elapsed().as_secs_f64().max(0.001);
        let median_of = |pick: fn(&(f64, f64, f64)) -> f64, samples: &[(f64, f64, f64)]| {
            stats::median(
                &samples
                    .iter()
                    .map(pick)
                    .filter(|value| *value > 0.0)
                    .collect::<Vec<_>>(),
            )
        };
        let phase_result = PhaseResult {
            rate_per_s: phase.rate_per_s,
            duration_s: phase.duration_s,
            sends_per_s: (after.sends - before.sends) as f64 / seconds,
            acks_per_s: (after.acks - before.acks) as f64 / seconds,
            deliveries_per_s: (after.deliveries - before.deliveries) as f64 / seconds,
            deliver_p99_ms_median: median_of(|sample| sample.1, &ticker.samples),
            ack_p99_ms_median: median_of(|sample| sample.2, &ticker.samples),
            acks: after.acks - before.acks,
            cpu: Some(phase_cpu),
        };
        println!(
            "phase {:.0} msg/s for {}s: sends {:.0}/s, acks {:.0}/s, deliveries {:.0}/s, p99 deliver {:.1}ms (median of seconds)",
            phase.rate_per_s,
            phase.duration_s,
            phase_result.sends_per_s,
            phase_result.acks_per_s,
            phase_result.deliveries_per_s,
            phase_result.deliver_p99_ms_median
        );
        if let Some(cpu) = &phase_result.cpu {
            println!("cpu, phase: {}", cpu_line(cpu, phase_result.acks));
        }
        result.phases.push(phase_result);
    }
    // Drain: until deliveries stop moving.
    session
        .send_all(&WorkerCommand::Rate { per_s: 0.0 })
        .await?;
    if !scenario.phases.is_empty() {
        // Until deliveries stop moving, every send is answered and (for
        // chatpipe) every consumer group has caught up, or drain_s.
        let drain_end = Instant::now() + Duration::from_secs(scenario.load.drain_s);
        let mut quiet = 0;
        while Instant::now() < drain_end && quiet < 3 {
            let before = session.progress.total();
            ticker.run_for(&mut session, Duration::from_secs(1)).await;
            let after = session.progress.total();
            let answered =
                !chatpipe || after.acks + after.errors.values().sum::<u64>() >= after.sends;
            let caught_up =
                !chatpipe || consumer_lags(&http, scenario).await.values().sum::<f64>() <= 0.0;
            let settled = after.deliveries == before.deliveries && answered && caught_up;
            quiet = if settled { quiet + 1 } else { 0 };
        }
        if quiet < 3 {
            println!(
                "drain: still moving after {}s (results include what arrived so far)",
                scenario.load.drain_s
            );
        }
    }
    if let Some((cpu_start, progress_start)) = measured_start {
        let measured = sampler.sample().window_since(&cpu_start);
        let total = session.progress.total();
        result.cpu.measured_acks = total.acks - progress_start.acks;
        result.cpu.measured_deliveries = total.deliveries - progress_start.deliveries;
        result.cpu.measured_lifecycle = total.lifecycle.since(&progress_start.lifecycle);
        println!(
            "cpu, phases and drain: {}",
            cpu_line(&measured, result.cpu.measured_acks)
        );
        let lifecycle = &result.cpu.measured_lifecycle;
        if lifecycle.operations() > 0 {
            println!(
                "lifecycle, phases and drain: {} edits, {} deletes, {} reactions acked, {} reads sent, {} refused; {} frames received",
                lifecycle.edits,
                lifecycle.deletes,
                lifecycle.reactions,
                lifecycle.reads,
                lifecycle.refused,
                lifecycle.frames
            );
        }
        result.cpu.measured = Some(measured);
    }
    if let Some((at, open_before, baseline)) = storm_result {
        let total = session.progress.total();
        let storm = result.storm.get_or_insert_with(StormResult::default);
        storm.dropped = open_before;
        storm.refused_try_later = total.refused_try_later - baseline.refused_try_later;
        storm.resumed = total.resumed - baseline.resumed;
        storm.resume_refused = total.resume_refused - baseline.resume_refused;
        if storm.recovered_s.is_none() && total.open >= open_before {
            storm.recovered_s = Some(at.elapsed().as_secs_f64());
        }
    }
    result.lag_max_during = ticker.lag_max.clone();
    result.timeline = std::mem::take(&mut ticker.timeline);
    // Finish: collect reports.
    let mut outputs = Vec::new();
    for worker in &session.workers {
        let _ = worker;
    }
    for index in 0..workers {
        let out = dir.join(format!("report-{index}.json"));
        let line = format!(
            "{}\n",
            serde_json::to_string(&WorkerCommand::Finish { out })?
        );
        session.workers[index]
            .stdin
            .write_all(line.as_bytes())
            .await?;
        session.workers[index].stdin.flush().await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while outputs.len() < workers {
        match session.next_event(deadline).await {
            Some(WorkerEvent::Finished { out, .. }) => {
                let output: WorkerOutput = serde_json::from_slice(&std::fs::read(&out)?)?;
                outputs.push(output);
            }
            Some(_) => {}
            None => anyhow::bail!("workers did not finish in time"),
        }
    }
    for worker in &mut session.workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.child.wait()).await;
        let _ = worker.child.start_kill();
    }
    let mut ack_histogram = stats::latency_histogram();
    let mut deliver_histogram = stats::latency_histogram();
    let mut totals = Snapshot::default();
    let mut clients: Vec<ClientReport> = Vec::new();
    for output in outputs {
        ack_histogram.add(stats::decode(&output.ack_histogram)?)?;
        deliver_histogram.add(stats::decode(&output.deliver_histogram)?)?;
        add_snapshot(&mut totals, &output.final_counters);
        clients.extend(output.clients);
    }
    result.ack_latency = LatencySummary::of(&ack_histogram);
    result.deliver_latency = LatencySummary::of(&deliver_histogram);
    totals.ack_interval = LatencySummary::default();
    totals.deliver_interval = LatencySummary::default();
    result.totals = totals;
    println!("send→ack     {}", result.ack_latency.line());
    println!("send→deliver {}", result.deliver_latency.line());
    if !result.totals.errors.is_empty() {
        println!("errors by code: {:?}", result.totals.errors);
    }
    if chatpipe && !scenario.phases.is_empty() {
        let verification = verify_run(
            scenario,
            &api,
            &http,
            &planned,
            &conversation_ids,
            &run_id,
            &clients,
        )
        .await;
        result.verification = Some(verification);
    }
    result.lag_after = if chatpipe {
        consumer_lags(&http, scenario).await
    } else {
        BTreeMap::new()
    };
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

async fn verify_run(
    scenario: &Scenario,
    api: &ApiClient,
    http: &reqwest::Client,
    planned: &[PlannedConversation],
    conversation_ids: &[String],
    run_id: &str,
    clients: &[ClientReport],
) -> Verification {
    let mut verification = Verification::default();
    let acks: Vec<AckRecord> = clients
        .iter()
        .flat_map(|client| client.acks.iter().cloned())
        .collect();
    verification.unacked_sends = clients
        .iter()
        .map(|client| client.unacked.len() as u64)
        .sum();
    let members: Vec<Vec<u32>> = planned
        .iter()
        .map(|conversation| conversation.members.clone())
        .collect();
    if scenario.verify.deliveries {
        verification.deliveries = verify::check_deliveries(&members, &acks, clients);
        let check = &verification.deliveries;
        println!(
            "deliveries: {} acked messages, {} member deliveries expected, {} live, {} by catch-up, {} missing, {} order violations, {} live orders not in message-id order",
            check.acked_messages,
            check.expected,
            check.delivered_live,
            check.delivered_by_catch_up,
            check.missing.len(),
            check.order_violations.len(),
            check.id_order_violations.len()
        );
        for violation in check.id_order_violations.iter().take(10) {
            println!(
                "  ID ORDER conversation {} user {}: {} received after {}",
                conversation_name(conversation_ids, violation.conversation),
                user_name(run_id, violation.user),
                violation.later,
                violation.earlier
            );
        }
        for missing in check.missing.iter().take(20) {
            println!(
                "  MISSING message {} of conversation {} for user {}",
                missing.message_id,
                conversation_name(conversation_ids, missing.conversation),
                user_name(run_id, missing.user)
            );
        }
    }
    let lifecycle_active = scenario.lifecycle.active();
    let ops: Vec<OpRecord> = clients
        .iter()
        .flat_map(|client| client.ops.iter().cloned())
        .collect();
    let expected = verify::expected_states(&ops);
    let mut lifecycle = LifecycleVerification::default();
    if lifecycle_active {
        lifecycle.frames = verify::check_lifecycle_frames(&members, &ops, clients);
        let check = &lifecycle.frames;
        println!(
            "lifecycle: {} edits, {} deletes, {} reactions acked ({} refused on deleted messages, {} refused otherwise, {} unanswered); {} member frames expected, {} received, {} missing ({} of them after a history catch-up)",
            check.edits,
            check.deletes,
            check.reactions,
            check.refused_deleted,
            check.unexpected_refusals.len(),
            check.unanswered,
            check.expected,
            check.received,
            check.missing_total,
            check.missing_after_catch_up
        );
        for (message_id, code) in check.unexpected_refusals.iter().take(10) {
            println!("  REFUSED change of message {message_id}: {code}");
        }
        for missing in check.missing.iter().take(20) {
            println!(
                "  MISSING {:?} frame of message {} (conversation {}) for user {}",
                missing.kind,
                missing.message_id,
                conversation_name(conversation_ids, missing.conversation),
                user_name(run_id, missing.user)
            );
        }
        lifecycle.frames.missing.truncate(1000);
    }
    let timeout = Duration::from_secs(scenario.verify.timeout_s);
    let deadline = Instant::now() + timeout;
    // Let persist and index catch up before reading.
    loop {
        let lags = consumer_lags(http, scenario).await;
        let behind: f64 = lags.values().sum();
        if behind <= 0.0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if scenario.verify.history {
        let mut by_conversation: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for ack in &acks {
            by_conversation
                .entry(ack.conversation)
                .or_default()
                .push(ack.message_id);
        }
        // What each recipient saw live, per conversation: history's order
        // must be each one's order (issue 10).
        let mut live: HashMap<u32, Vec<(u32, Vec<u64>)>> = HashMap::new();
        for client in clients {
            for (conversation, list) in &client.order {
                by_conversation.entry(*conversation).or_default();
                live.entry(*conversation)
                    .or_default()
                    .push((client.user, list.clone()));
            }
        }
        verification.history_conversations = by_conversation.len() as u64;
        let expected = &expected;
        let checks: Vec<(String, HistoryCheck, Vec<WrongState>)> =
            futures::stream::iter(by_conversation)
                .map(|(conversation, acked)| {
                    let id = conversation_ids[conversation as usize].clone();
                    let reader = user_name(run_id, planned[conversation as usize].members[0]);
                    let live = live.remove(&conversation).unwrap_or_default();
                    async move {
                        let live: Vec<(u32, &[u64])> = live
                            .iter()
                            .map(|(user, list)| (*user, list.as_slice()))
                            .collect();
                        loop {
                            let (check, wrong) = match api.full_history(&reader, &id).await {
                                Ok(history) => {
                                    let ids: Vec<u64> =
                                        history.iter().map(|item| item.message_id).collect();
                                    let mut check = verify::check_history(&acked, &ids);
                                    verify::check_live_against_history(&ids, &live, &mut check);
                                    let wrong = if lifecycle_active {
                                        verify::check_final_state(expected, &history)
                                    } else {
                                        Vec::new()
                                    };
                                    (check, wrong)
                                }
                                Err(error) => {
                                    eprintln!("history of {id}: {error}");
                                    let check = HistoryCheck {
                                        missing: acked.clone(),
                                        ..HistoryCheck::default()
                                    };
                                    (check, Vec::new())
                                }
                            };
                            // Missing messages and changes may still be on
                            // their way; duplicates and order are final.
                            if (check.passed() && wrong.is_empty())
                                || !check.duplicated.is_empty()
                                || check.out_of_order
                                || !check.live_order_mismatches.is_empty()
                                || Instant::now() > deadline
                            {
                                return (id, check, wrong);
                            }
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        let mut failures = Vec::new();
        for (id, check, wrong) in checks {
            lifecycle.history_wrong_total += wrong.len() as u64;
            lifecycle
                .history_wrong
                .extend(wrong.into_iter().map(|wrong| (id.clone(), wrong)));
            if !check.passed() {
                failures.push((id, check));
            }
        }
        verification.history_failures = failures;
        if lifecycle_active {
            lifecycle.history_checked =
                expected.values().filter(|state| !state.uncertain).count() as u64;
            println!(
                "lifecycle history: {} changed messages, {} messages in a wrong state",
                lifecycle.history_checked, lifecycle.history_wrong_total
            );
            for (id, wrong) in lifecycle.history_wrong.iter().take(10) {
                println!(
                    "  WRONG STATE {id} message {}: {}",
                    wrong.message_id, wrong.what
                );
            }
            lifecycle.history_wrong.truncate(1000);
        }
        let counts = verify::HistoryCounts::of(&verification.history_failures);
        println!(
            "history: {} conversations read, {} failed ({} messages missing, {} duplicated, {} seen live but not in history; {} recipients whose live order differs from history's)",
            verification.history_conversations,
            verification.history_failures.len(),
            counts.missing,
            counts.duplicated,
            counts.live_not_in_history,
            counts.live_order_mismatches
        );
        for (id, check) in verification.history_failures.iter().take(10) {
            println!(
                "  HISTORY {id}: missing {:?}, duplicated {:?}, out of order {}, live order differs for users {:?}, live but not in history {:?}",
                check.missing.iter().take(10).collect::<Vec<_>>(),
                check.duplicated.iter().take(10).collect::<Vec<_>>(),
                check.out_of_order,
                check
                    .live_order_mismatches
                    .iter()
                    .take(10)
                    .collect::<Vec<_>>(),
                check
                    .live_not_in_history
                    .iter()
                    .take(10)
                    .collect::<Vec<_>>()
            );
        }
        verification.history_counts = counts;
    }
    // Edited and deleted messages are not found by their first body's word:
    // they are searched for below.
    let changed = verify::changed_bodies(&expected);
    let searchable: Vec<&AckRecord> = acks
        .iter()
        .filter(|ack| !changed.contains(&ack.message_id))
        .collect();
    let sample: Vec<&AckRecord> = if scenario.verify.search_all {
        searchable
    } else if scenario.verify.search_sample > 0 && !searchable.is_empty() {
        let step = (searchable.len() / scenario.verify.search_sample).max(1);
        searchable
            .into_iter()
            .step_by(step)
            .take(scenario.verify.search_sample)
            .collect()
    } else {
        Vec::new()
    };
    if !sample.is_empty() {
        let sender_names: Arc<Vec<String>> = Arc::new(
            sample
                .iter()
                .map(|ack| user_name(run_id, ack.sender))
                .collect(),
        );
        // Per sampled message: missing, or found more than once (one
        // document per message id: a second hit is a duplicate).
        let results: Vec<Option<(u64, bool)>> = futures::stream::iter(sample.iter().enumerate())
            .map(|(index, ack)| {
                let conversation_id = conversation_ids[ack.conversation as usize].clone();
                let sender = sender_names[index].clone();
                async move {
                    loop {
                        match api
                            .search(&sender, &ack.search_word, &conversation_id)
                            .await
                        {
                            Ok(found) if found.contains(&ack.message_id) => {
                                let hits = found.iter().filter(|id| **id == ack.message_id);
                                return (hits.count() > 1).then_some((ack.message_id, false));
                            }
                            Ok(_) | Err(_) if Instant::now() > deadline => {
                                return Some((ack.message_id, true));
                            }
                            _ => tokio::time::sleep(Duration::from_secs(2)).await,
                        }
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        verification.search_checked = sample.len() as u64;
        for (message_id, missing) in results.into_iter().flatten() {
            if missing {
                verification.search_missing.push(message_id);
            } else {
                verification.search_duplicated.push(message_id);
            }
        }
        println!(
            "search: {} of {} sampled messages found",
            verification.search_checked - verification.search_missing.len() as u64,
            verification.search_checked
        );
        if !verification.search_duplicated.is_empty() {
            println!(
                "  FOUND MORE THAN ONCE: {:?}",
                verification
                    .search_duplicated
                    .iter()
                    .take(20)
                    .collect::<Vec<_>>()
            );
        }
        if !verification.search_missing.is_empty() {
            println!(
                "  NOT FOUND: {:?}",
                verification
                    .search_missing
                    .iter()
                    .take(20)
                    .collect::<Vec<_>>()
            );
        }
    }
    if lifecycle_active {
        let limit = if scenario.verify.search_all {
            usize::MAX
        } else {
            scenario.verify.search_sample
        };
        let searches = verify::lifecycle_search_sample(&expected, &acks, limit);
        lifecycle.search_checked = searches.len() as u64;
        lifecycle.search_wrong =
            search_changed(api, &acks, conversation_ids, run_id, searches, deadline).await;
        println!(
            "lifecycle search: {} of {} changed messages as expected (deleted not found, edited found by the new text)",
            lifecycle.search_checked - lifecycle.search_wrong.len() as u64,
            lifecycle.search_checked
        );
        for (message_id, word, found) in lifecycle.search_wrong.iter().take(20) {
            let wanted = if *found { "not found" } else { "still found" };
            println!("  SEARCH message {message_id} by {word}: {wanted}");
        }
        verification.lifecycle = Some(lifecycle);
    }
    verification.passed = verification.deliveries.passed()
        && verification
            .lifecycle
            .as_ref()
            .is_none_or(LifecycleVerification::passed)
        && verification.history_failures.is_empty()
        && verification.search_missing.is_empty()
        && verification.search_duplicated.is_empty();
    if verification.deliveries.missing.len() > 1000 {
        verification.notes.push(format!(
            "{} missing deliveries; the first 1000 are listed",
            verification.deliveries.missing.len()
        ));
        verification.deliveries.missing.truncate(1000);
    }
    verification
}

/// Conversation `index`'s id, for messages (`?` when unknown).
fn conversation_name(conversation_ids: &[String], index: u32) -> &str {
    conversation_ids
        .get(index as usize)
        .map(String::as_str)
        .unwrap_or("?")
}

/// Searches for changed messages (`(message id, word, must be found)`,
/// see [`verify::lifecycle_search_sample`]) as their senders, each retried
/// until it comes out as expected or `deadline` passes (the index trails
/// Kafka); returns those that never did.
async fn search_changed(
    api: &ApiClient,
    acks: &[AckRecord],
    conversation_ids: &[String],
    run_id: &str,
    searches: Vec<(u64, String, bool)>,
    deadline: Instant,
) -> Vec<(u64, String, bool)> {
    let by_id: HashMap<u64, &AckRecord> = acks.iter().map(|ack| (ack.message_id, ack)).collect();
    let by_id = &by_id;
    let results: Vec<Option<(u64, String, bool)>> = futures::stream::iter(searches)
        .map(|(message_id, word, must_find)| async move {
            let ack = by_id.get(&message_id)?;
            let sender = user_name(run_id, ack.sender);
            let conversation_id = &conversation_ids[ack.conversation as usize];
            loop {
                if let Ok(found) = api.search(&sender, &word, conversation_id).await
                    && found.contains(&message_id) == must_find
                {
                    return None;
                }
                if Instant::now() > deadline {
                    return Some((message_id, word, must_find));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut wrong: Vec<(u64, String, bool)> = results.into_iter().flatten().collect();
    wrong.sort_unstable();
    wrong
}

/// The side-by-side table printed at the end.
pub fn print_summary(result: &ScenarioResult) {
    println!();
    println!("== {} results", result.scenario);
    println!(
        "{:<32} {:>8} {:>9} {:>10} {:>12} {:>12} {:>11} {:>11}",
        "target",
        "conns",
        "conn/s",
        "KiB/conn",
        "best deliv/s",
        "ack p99 ms",
        "deliv p50",
        "deliv p99"
    );
    for target in &result.targets {
        let best = target
            .phases
            .iter()
            .map(|phase| phase.deliveries_per_s)
            .fold(0.0, f64::max);
        println!(
            "{:<32} {:>8} {:>9.0} {:>10.2} {:>12.0} {:>12.2} {:>11.2} {:>11.2}",
            target.target,
            target.connections,
            target.connect_rate_per_s,
            target.kib_per_connection,
            best,
            target.ack_latency.p99_ms,
            target.deliver_latency.p50_ms,
            target.deliver_latency.p99_ms
        );
    }
}
