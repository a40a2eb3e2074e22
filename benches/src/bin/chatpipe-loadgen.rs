//! `chatpipe-loadgen`: runs a scenario against a running chatpipe (and the
//! scenario's baselines), prints progress every second, verifies that
//! nothing acknowledged was lost, and exits non-zero when something was.
//!
//! ```sh
//! cargo run --release -p chatpipe-benches --bin chatpipe-loadgen -- --scenario benches/scenarios/chat.toml
//! ```

use std::path::PathBuf;

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
    /// PID of the edge process (default: the process listening on the edge port).
    #[arg(long)]
    edge_pid: Option<u32>,
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
    /// The Centrifugo build-and-run script.
    #[arg(long, default_value = "benches/centrifugo.sh")]
    centrifugo_script: PathBuf,
    /// Runtime threads per worker process.
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Run only this kind of baseline: `bare` or `centrifugo`.
    #[arg(long)]
    only_baseline: Option<String>,
    #[command(subcommand)]
    command: Option<Internal>,
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Internal::Worker { plan, threads }) = args.command {
        return chatpipe_benches::worker::main(plan, threads);
    }
    let scenario = args
        .scenario
        .ok_or_else(|| anyhow::anyhow!("--scenario <file> is required (see benches/scenarios/)"))?;
    let options = chatpipe_benches::coordinator::RunOptions {
        scenario,
        out_dir: args.out_dir,
        edge_pid: args.edge_pid,
        skip_chatpipe: args.skip_chatpipe,
        skip_baselines: args.skip_baselines,
        users: args.users,
        rate_scale: args.rate_scale,
        centrifugo_script: args.centrifugo_script,
        worker_threads: args.worker_threads,
        only_baseline: args.only_baseline,
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
