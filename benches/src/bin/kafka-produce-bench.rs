//! `kafka-produce-bench`: chatpipe's produce path (`chatpipe_kafka::ChatProducer`:
//! idempotent, `acks=all`, lz4, linger 1 ms, one awaited send per message
//! keyed by conversation, as the edge does) next to Kafka's own
//! `ProducerPerformance` tool (`kafka-producer-perf-test`) with the same
//! settings and the *same payloads* (real `MessageRecord` JSON lines, given
//! to the tool as `--payload-file`), alternating rounds in one run.
//! Writes `benches/results/kafka-produce.json`.
//!
//! `cargo run --release -p chatpipe-benches --bin kafka-produce-bench -- --records 1000000`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chatpipe_core::records::{MessageRecord, SCHEMA_VERSION};
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, MessageId, UserId};
use chatpipe_kafka::{ChatProducer, KafkaConfig};
use clap::Parser;
use futures::StreamExt;
use serde::Serialize;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Records per round (enough for the JVM to warm up: with 200,000 the
    /// Java tool spends a good part of its ~1.5 s run in the JIT).
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Message body bytes (the record is the JSON `MessageRecord` around it).
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Sends awaited concurrently by chatpipe's producer (the edge has one per
    /// sending connection).
    #[arg(long, default_value_t = 2_000)]
    in_flight: usize,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Rounds of each (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Kafka's libraries (`kafka-tools-*.jar`), default
    /// `${CHATPIPE_HOME:-~/.cache/chatpipe}/lib/kafka-*`.
    #[arg(long)]
    kafka_lib: Option<PathBuf>,
    #[arg(long, default_value = "benches/results")]
    out_dir: PathBuf,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Round {
    tool: String,
    records_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct Output {
    record_bytes: usize,
    records: usize,
    partitions: i32,
    settings: String,
    rounds: Vec<Round>,
    chatpipe_median_records_per_s: f64,
    perf_tool_median_records_per_s: f64,
    ratio: f64,
}

fn records(count: usize, body_bytes: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|index| {
            let conversation = format!("c-bench-{:04}", index % 1000);
            let record = MessageRecord {
                schema_version: SCHEMA_VERSION,
                message_id: MessageId::from_u64(1 << 40 | index as u64),
                conversation_id: ConversationId::parse(conversation.clone()).expect("valid"),
                sender_id: UserId::parse(format!("user-{:05}", index % 10_000)).expect("valid"),
                client_msg_id: ClientMsgId::parse(format!("m{index}")).expect("valid"),
                body: chatpipe_benches::wire::message_body(
                    1_764_000_000_000_000 + index as u64,
                    &index.to_string(),
                    body_bytes,
                ),
                ts: 1_764_000_000_000 + index as u64,
                edge_id: EdgeId::parse("edge-1").expect("valid"),
                resend: false,
                reply_to: None,
                mentions: Vec::new(),
            };
            (
                conversation,
                serde_json::to_vec(&record).expect("serializes"),
            )
        })
        .collect()
}

fn kafka_lib(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let home = std::env::var("CHATPIPE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/chatpipe")
        });
    let lib = home.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("kafka-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no kafka-* under {}", lib.display()))
}

async fn chatpipe_round(
    producer: &ChatProducer,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
    in_flight: usize,
) -> Round {
    let started = Instant::now();
    let mut histogram = chatpipe_benches::stats::latency_histogram();
    let latencies: Vec<u64> = futures::stream::iter(payloads.iter())
        .map(|(key, payload)| async move {
            let sent = Instant::now();
            producer
                .send_bytes(topic, key, Some(payload), Duration::from_secs(60))
                .await
                .expect("kafka accepts the record");
            sent.elapsed().as_micros() as u64
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    for latency in latencies {
        chatpipe_benches::stats::record(&mut histogram, latency);
    }
    let bytes: usize = payloads.iter().map(|(_, payload)| payload.len()).sum();
    let summary = chatpipe_benches::stats::LatencySummary::of(&histogram);
    Round {
        tool: "chatpipe ChatProducer".into(),
        records_per_s: payloads.len() as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1_048_576.0,
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
    }
}

/// Parses the tool's last line: `N records sent, R records/sec (M MB/sec),
/// A ms avg latency, X ms max latency, P50 ms 50th, P95 ms 95th, P99 ms 99th, …`.
fn parse_perf_line(line: &str) -> Option<Round> {
    let number_before = |marker: &str| -> Option<f64> {
        let end = line.find(marker)?;
        line[..end]
            .trim_end()
            .rsplit([' ', '('])
            .next()?
            .parse()
            .ok()
    };
    Some(Round {
        tool: "kafka ProducerPerformance".into(),
        records_per_s: number_before(" records/sec")?,
        mb_per_s: number_before(" MB/sec")?,
        p50_ms: number_before(" ms 50th")?,
        p99_ms: number_before(" ms 99th")?,
    })
}

fn perf_round(
    lib: &std::path::Path,
    brokers: &str,
    topic: &str,
    payload_file: &std::path::Path,
    count: usize,
    record_bytes: usize,
) -> anyhow::Result<Round> {
    let output = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("-Dlog4j2.level=warn")
        .arg("org.apache.kafka.tools.ProducerPerformance")
        .args([
            "--topic",
            topic,
            "--num-records",
            &count.to_string(),
            "--throughput",
            "-1",
        ])
        .arg("--payload-file")
        .arg(payload_file)
        .args([
            "--producer-props",
            &format!("bootstrap.servers={brokers}"),
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=1",
            "compression.type=lz4",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.contains("records sent") && line.contains("50th"))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "ProducerPerformance said: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let _ = record_bytes;
    parse_perf_line(line).ok_or_else(|| anyhow::anyhow!("unparsable: {line}"))
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
    let lib = kafka_lib(args.kafka_lib.clone())?;
    let topic = format!(
        "bench.produce.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = KafkaConfig::new(args.brokers.clone(), "kafka-produce-bench-admin");
    chatpipe_kafka::admin::create_topic(&admin, &topic, args.partitions).await?;
    let payloads = records(args.records, args.body_bytes);
    let record_bytes = payloads
        .iter()
        .map(|(_, payload)| payload.len())
        .sum::<usize>()
        / payloads.len().max(1);
    let payload_file = std::env::temp_dir().join(format!("{topic}.payloads"));
    let mut text = Vec::new();
    for (_, payload) in &payloads {
        text.extend_from_slice(payload);
        text.push(b'\n');
    }
    std::fs::write(&payload_file, text)?;
    let producer = ChatProducer::new(
        &KafkaConfig::new(args.brokers.clone(), "kafka-produce-bench"),
        1,
    )?;
    println!(
        "{} records of {record_bytes} bytes (MessageRecord JSON, {}-byte body) to {topic} ({} partitions); acks=all, idempotence, lz4, linger 1 ms",
        args.records, args.body_bytes, args.partitions
    );
    let mut output = Output {
        record_bytes,
        records: args.records,
        partitions: args.partitions,
        settings: format!(
            "acks=all, enable.idempotence=true, compression lz4, linger.ms=1; chatpipe: {} sends in flight, keyed by conversation; tool: its defaults (no key)",
            args.in_flight
        ),
        ..Output::default()
    };
    for round in 0..args.rounds {
        let ours = chatpipe_round(&producer, &topic, &payloads, args.in_flight).await;
        println!(
            "round {round}: {:<28} {:>9.0} records/s {:>6.1} MB/s p50 {:>6.1} ms p99 {:>6.1} ms",
            ours.tool, ours.records_per_s, ours.mb_per_s, ours.p50_ms, ours.p99_ms
        );
        output.rounds.push(ours);
        let lib = lib.clone();
        let brokers = args.brokers.clone();
        let topic_name = topic.clone();
        let file = payload_file.clone();
        let count = args.records;
        let theirs = tokio::task::spawn_blocking(move || {
            perf_round(&lib, &brokers, &topic_name, &file, count, record_bytes)
        })
        .await??;
        println!(
            "round {round}: {:<28} {:>9.0} records/s {:>6.1} MB/s p50 {:>6.1} ms p99 {:>6.1} ms",
            theirs.tool, theirs.records_per_s, theirs.mb_per_s, theirs.p50_ms, theirs.p99_ms
        );
        output.rounds.push(theirs);
    }
    let median_of = |tool: &str| {
        chatpipe_benches::stats::median(
            &output
                .rounds
                .iter()
                .filter(|round| round.tool.starts_with(tool))
                .map(|round| round.records_per_s)
                .collect::<Vec<_>>(),
        )
    };
    output.chatpipe_median_records_per_s = median_of("chatpipe");
    output.perf_tool_median_records_per_s = median_of("kafka");
    output.ratio =
        output.chatpipe_median_records_per_s / output.perf_tool_median_records_per_s.max(1.0);
    println!(
        "median: chatpipe {:.0} records/s, ProducerPerformance {:.0} records/s, ratio {:.2}",
        output.chatpipe_median_records_per_s, output.perf_tool_median_records_per_s, output.ratio
    );
    let _ = chatpipe_kafka::admin::delete_topics(&admin, &[&topic]).await;
    let _ = std::fs::remove_file(&payload_file);
    std::fs::create_dir_all(&args.out_dir)?;
    std::fs::write(
        args.out_dir.join("kafka-produce.json"),
        serde_json::to_vec_pretty(&output)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_tools_summary() {
        let line = "200000 records sent, 51234.5 records/sec (16.12 MB/sec), 35.20 ms avg latency, 410.00 ms max latency, 30 ms 50th, 80 ms 95th, 120 ms 99th, 300 ms 99.9th.";
        let round = super::parse_perf_line(line).unwrap();
        assert_eq!(round.records_per_s, 51234.5);
        assert_eq!(round.mb_per_s, 16.12);
        assert_eq!((round.p50_ms, round.p99_ms), (30.0, 120.0));
    }
}
