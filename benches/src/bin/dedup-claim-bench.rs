//! `dedup-claim-bench`: what the edge's cross-edge send de-duplication costs
//! on its own — the Cassandra lightweight-transaction claim
//! (`SendDedupStore::claim`, `INSERT … IF NOT EXISTS`) followed by
//! `mark_acked`, as every `send` does — next to plain single-row writes of
//! the same table shape measured by the persist example (`persist.json`).
//! Writes `benches/results/dedup-claim.json`.
//!
//! `cargo run --release -p chatpipe-benches --bin dedup-claim-bench -- --claims 20000`

use std::path::PathBuf;
use std::time::Instant;

use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::store::SendDedupStore;
use chatpipe_core::{ClientMsgId, ConversationId, MessageId, UserId};
use clap::Parser;
use futures::StreamExt;
use serde::Serialize;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9042")]
    cassandra: String,
    #[arg(long, default_value = "chatpipe")]
    keyspace: String,
    /// Claims per run.
    #[arg(long, default_value_t = 20_000)]
    claims: usize,
    /// Claims in flight (the edge has one per sending connection).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct Output {
    claims: usize,
    in_flight: usize,
    claims_per_s: f64,
    claim_and_mark_per_s: f64,
    claim_p50_ms: f64,
    claim_p99_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = CassandraConfig {
        contact_points: vec![args.cassandra.clone()],
        keyspace: args.keyspace.clone(),
        ..CassandraConfig::default()
    };
    let store = CassandraStore::connect(&config).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let conversation = ConversationId::parse(format!("c-claim-{run}"))?;
    let measure = |mark: bool| {
        let store = store.clone();
        let conversation = conversation.clone();
        let run = run.clone();
        async move {
            let started = Instant::now();
            let latencies: Vec<u64> = futures::stream::iter(0..args.claims)
                .map(|index| {
                    let store = store.clone();
                    let conversation = conversation.clone();
                    let user =
                        UserId::parse(format!("claim-{run}-{}", index % 1000)).expect("valid");
                    let client_msg_id =
                        ClientMsgId::parse(format!("m{mark}{index}")).expect("valid");
                    async move {
                        let sent = Instant::now();
                        store
                            .claim(
                                &user,
                                &client_msg_id,
                                &conversation,
                                MessageId::from_u64(1 << 40 | index as u64),
                                1,
                            )
                            .await
                            .expect("claim");
                        let elapsed = sent.elapsed().as_micros() as u64;
                        if mark {
                            store
                                .mark_acked(&user, &client_msg_id)
                                .await
                                .expect("mark acked");
                        }
                        elapsed
                    }
                })
                .buffer_unordered(args.in_flight)
                .collect()
                .await;
            (
                args.claims as f64 / started.elapsed().as_secs_f64(),
                latencies,
            )
        }
    };
    let (claims_per_s, latencies) = measure(false).await;
    let (claim_and_mark_per_s, _) = measure(true).await;
    let mut histogram = chatpipe_benches::stats::latency_histogram();
    for latency in latencies {
        chatpipe_benches::stats::record(&mut histogram, latency);
    }
    let summary = chatpipe_benches::stats::LatencySummary::of(&histogram);
    let output = Output {
        claims: args.claims,
        in_flight: args.in_flight,
        claims_per_s,
        claim_and_mark_per_s,
        claim_p50_ms: summary.p50_ms,
        claim_p99_ms: summary.p99_ms,
    };
    println!(
        "{} LWT claims, {} in flight: {:.0} claims/s (p50 {:.1} ms, p99 {:.1} ms); claim + mark_acked as the edge does: {:.0}/s",
        output.claims,
        output.in_flight,
        output.claims_per_s,
        output.claim_p50_ms,
        output.claim_p99_ms,
        output.claim_and_mark_per_s
    );
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(
        args.out_dir.join("dedup-claim.json"),
        serde_json::to_vec_pretty(&output)?,
    )?;
    Ok(())
}
