//! `chatpipe-loadgen`: runs a scenario against a running chatpipe (and the
//! scenario's baselines), prints progress every second, verifies that
//! nothing acknowledged was lost, and exits non-zero when something was.
//!
//! ```sh
//! cargo run --release -p chatpipe-benches --bin chatpipe-loadgen -- --scenario benches/scenarios/chat.toml
//! ```
//!
//! The CPU of the stack is read from `/proc` at the start and end of every
//! window: name chatpipe's processes with `--process edge=PID` (one per
//! role); the engines are found by their ports unless named with
//! `--engine kafka=PID`. `chatpipe-loadgen idle-cpu` measures the idle
//! figure (no client connected).

use std::path::PathBuf;

use chatpipe_benches::cpu::{ProcessKind, TrackedProcess, parse_named_pid};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatpipe-loadgen",
    about = "Load generator and verifier for chatpipe"
)]
struct Args {
    /// Scenario file (benches/scenarios/*.toml).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Directory of the JSON results.
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
    /// PID of an edge process (repeat: one per edge; their memory is
    /// summed). Default: the process listening on the first edge's port.
    #[arg(long = "edge-pid")]
    edge_pids: Vec<u32>,
    /// Run only the baselines of the scenario.
    #[arg(long)]
    skip_chatpipe: bool,
    /// Run only chatpipe.
    #[arg(long)]
    skip_baselines: bool,
    /// Override the scenario's user (connection) count.
    #[arg(long)]
    users: Option<usize>,
    /// Multiply every phase's send rate.
    #[arg(long)]
    rate_scale: Option<f64>,
    /// Multiply the number of conversations of each kind (rounded up).
    #[arg(long)]
    conversation_scale: Option<f64>,
    /// Run every phase for this long instead of the scenario's durations
    /// (quick runs; a storm moves to the middle of the first phase).
    #[arg(long)]
    phase_seconds: Option<u64>,
    /// Hold the open connections this long before sending (scenario's
    /// `settle_s` otherwise).
    #[arg(long)]
    settle_seconds: Option<u64>,
    /// Wait at most this long for in-flight deliveries after the last
    /// phase (scenario's `drain_s` otherwise).
    #[arg(long)]
    drain_seconds: Option<u64>,
    /// The Centrifugo build-and-run script.
    #[arg(long, default_value = "benches/centrifugo.sh")]
    centrifugo_script: PathBuf,
    /// Runtime threads per worker process.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Run only this kind of baseline: `bare` or `centrifugo`.
    #[arg(long)]
    only_baseline: Option<String>,
    #[command(flatten)]
    processes: ProcessArgs,
    #[command(subcommand)]
    command: Option<Internal>,
}

/// The processes whose CPU is measured.
#[derive(Debug, Clone, clap::Args)]
struct ProcessArgs {
    /// A chatpipe process to measure, `NAME=PID` (repeat: one per role).
    /// Without any, the edge process stands for chatpipe.
    #[arg(long = "process", value_name = "NAME=PID", value_parser = parse_named_pid)]
    chatpipe: Vec<(String, u32)>,
    /// An engine process, `NAME=PID`; engines not named are found by the
    /// process listening on their port (9092, 9042, 9200, or the
    /// `CHATPIPE_*_PORT` of `topology/engines.sh`).
    #[arg(long = "engine", value_name = "NAME=PID", value_parser = parse_named_pid)]
    engines: Vec<(String, u32)>,
}

impl ProcessArgs {
    fn tracked(&self) -> Vec<TrackedProcess> {
        let named = |list: &[(String, u32)], kind| {
            list.iter()
                .map(|(name, pid)| TrackedProcess {
                    name: name.clone(),
                    kind,
                    pid: *pid,
                })
                .collect::<Vec<_>>()
        };
        let mut tracked = named(&self.engines, ProcessKind::Engine);
        tracked.extend(named(&self.chatpipe, ProcessKind::Chatpipe));
        tracked
    }
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// (internal) one worker process, started by the coordinator.
    Worker {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// The idle figure: CPU of the engines (found by port unless named) and
    /// the named chatpipe processes over a window with no client connected,
    /// added to a JSON file under its label.
    IdleCpu {
        /// Length of the window.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// What is running (e.g. `engines alone`, `stack, no client`).
        #[arg(long)]
        label: String,
        #[arg(long, default_value = "benches/results/idle-cpu.json")]
        out: PathBuf,
        #[command(flatten)]
        processes: ProcessArgs,
    },
    /// (fault runner) the broker leading the most messages of a topic's
    /// partitions, as JSON on stdout (`benches/run.sh`'s `kafka-leader`).
    KafkaLeader {
        #[arg(long, env = "CHATPIPE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Brokers not to pick (comma-separated ids: those killed before).
        #[arg(long, value_delimiter = ',')]
        exclude: Vec<i32>,
    },
    /// (fault runner) waits until a broker left every in-sync replica set
    /// of a topic (`--until out`) or is back in all of them with no
    /// partition under-replicated (`--until in`); what was seen as JSON on
    /// stdout; exit status 1 when not within the timeout.
    KafkaIsr {
        #[arg(long, env = "CHATPIPE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        broker: i32,
        #[arg(long, value_enum)]
        until: chatpipe_benches::kafka_watch::IsrWait,
        #[arg(long, default_value_t = 120.0)]
        timeout_s: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Internal::Worker { plan, threads }) => {
            return chatpipe_benches::worker::main(plan, threads);
        }
        Some(Internal::IdleCpu {
            seconds,
            label,
            out,
            processes,
        }) => {
            let named = processes.tracked();
            let mut tracked = named.clone();
            tracked.extend(chatpipe_benches::coordinator::discover_engines(&named));
            let measurement = chatpipe_benches::idle::measure(&label, &tracked, seconds);
            for process in &measurement.window.processes {
                let share = process
                    .cpu_seconds
                    .map(|cpu| format!("{:.1}%", measurement.window.share_of_core(cpu) * 100.0))
                    .unwrap_or_else(|| "?".into());
                eprintln!(
                    "idle cpu ({label}): {} (pid {}) {share} of a core",
                    process.name, process.pid
                );
            }
            chatpipe_benches::idle::record(&out, measurement)?;
            return Ok(());
        }
        Some(Internal::KafkaLeader {
            brokers,
            topic,
            exclude,
        }) => {
            use chatpipe_benches::kafka_watch;
            let kafka = chatpipe_kafka::KafkaConfig::new(brokers, "chatpipe-loadgen-faults");
            let partitions = kafka_watch::snapshot(&kafka, &topic)?;
            let pick = kafka_watch::busiest_leader(&partitions, &exclude).ok_or_else(|| {
                anyhow::anyhow!("no broker but {exclude:?} leads a partition of {topic}")
            })?;
            println!("{}", serde_json::to_string(&pick)?);
            return Ok(());
        }
        Some(Internal::KafkaIsr {
            brokers,
            topic,
            broker,
            until,
            timeout_s,
        }) => {
            use chatpipe_benches::kafka_watch;
            anyhow::ensure!(
                timeout_s.is_finite() && timeout_s >= 0.0,
                "--timeout-s must be a number of seconds, not {timeout_s}"
            );
            let kafka = chatpipe_kafka::KafkaConfig::new(brokers, "chatpipe-loadgen-faults");
            let watch = kafka_watch::watch_isr(
                &kafka,
                &topic,
                broker,
                until,
                std::time::Duration::from_secs_f64(timeout_s),
            );
            println!("{}", serde_json::to_string(&watch)?);
            if !watch.reached {
                std::process::exit(1);
            }
            return Ok(());
        }
        None => {}
    }
    let scenario = args
        .scenario
        .ok_or_else(|| anyhow::anyhow!("--scenario <file> is required (see benches/scenarios/)"))?;
    let options = chatpipe_benches::coordinator::RunOptions {
        scenario,
        out_dir: args.out_dir,
        edge_pids: args.edge_pids,
        skip_chatpipe: args.skip_chatpipe,
        skip_baselines: args.skip_baselines,
        users: args.users,
        rate_scale: args.rate_scale,
        conversation_scale: args.conversation_scale,
        phase_seconds: args.phase_seconds,
        settle_seconds: args.settle_seconds,
        drain_seconds: args.drain_seconds,
        centrifugo_script: args.centrifugo_script,
        worker_threads: args.worker_threads,
        only_baseline: args.only_baseline,
        processes: args.processes.tracked(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let passed = runtime.block_on(chatpipe_benches::coordinator::run(options))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}
