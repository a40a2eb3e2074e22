//! Sustained write rate of the persist role, next to a plain
//! concurrent-insert baseline, in the same run on the same engines.
//!
//! A measurement, not a test (it loads the shared engines for a while), so
//! an example rather than part of the test suite. Run (the figures are only
//! meaningful with `--release`):
//! `cargo run --release -p chatpipe-persist --example persist_throughput`
//! (`CHATPIPE_BENCH_RECORDS` overrides the 50,000 records,
//! `CHATPIPE_BENCH_BATCH` the writer's `max_batch_records`).
//!
//! Method: pre-produce N records (200 conversations interleaved, 3
//! partitions), start
//! the persist role, and time from start until every record is written
//! (`rows_written`), i.e. drain rate including Kafka consumption. Then
//! write N fresh records straight to Cassandra, one `INSERT` per row with 64
//! in flight (the plain baseline), and N more with the writer's grouping
//! (`write_messages`: unlogged batches per partition or per replica, 64 in flight) on
//! rounds of 1000 records interleaved across conversations, without Kafka.
//! Last, chat-shaped rounds (what persist sees at ~1,000 msg/s over
//! thousands of conversations: rounds of 50 rows, one per conversation,
//! 8 rounds in flight) written twice side by side, once with every
//! partition its own request (`max_partitions_per_batch` 1) and once with
//! small partitions packed per replica (the default): after a warm-up
//! pass, three passes of each, alternating; rows/s and the Cassandra
//! process's CPU per 1,000 rows (read from `/proc`), medians per mode.
//!
//! Output: one JSON object on stdout (what `benches/run.sh` stores as
//! `benches/results/persist.json` and `bench-report` reads; field names
//! carry their units), the same figures as prose on stderr.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chatpipe_core::ids::{MessageIdGenerator, worker_id_from_name};
use chatpipe_persist::PersistConfig;
use common::{TestEnv, eventually, records};
use futures::StreamExt;

fn record_count() -> usize {
    std::env::var("CHATPIPE_BENCH_RECORDS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(50_000)
}

#[tokio::main]
async fn main() {
    let env = TestEnv::new(3).await;
    let total = record_count();
    let conversations = 200;
    let per_conversation = total / conversations;
    let alice = env.user("alice");
    let mut generator = MessageIdGenerator::new(worker_id_from_name(&env.unique));
    // Interleaved across conversations, as live traffic is.
    let per_conversation_records: Vec<Vec<_>> = (0..conversations)
        .map(|index| {
            let conversation = env.conversation_id(&format!("bench{index}"));
            records(
                &conversation,
                &alice,
                &mut generator,
                per_conversation,
                &format!("b{index}"),
            )
        })
        .collect();
    let all: Vec<_> = (0..per_conversation)
        .flat_map(|position| {
            per_conversation_records
                .iter()
                .map(move |records| records[position].clone())
        })
        .collect();
    let total = all.len();

    let produce_started = Instant::now();
    let producer = chatpipe_kafka::ChatProducer::new(&env.kafka, 5).unwrap();
    futures::stream::iter(all.iter())
        .map(|record| {
            let producer = producer.clone();
            let topic = env.topics.messages.clone();
            async move {
                producer
                    .send_json(
                        &topic,
                        record.conversation_id.as_str(),
                        record,
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(2_000)
        .collect::<Vec<_>>()
        .await;
    let produce_secs = produce_started.elapsed().as_secs_f64();

    let mut config = PersistConfig::default();
    if let Some(batch) = std::env::var("CHATPIPE_BENCH_BATCH")
        .ok()
        .and_then(|raw| raw.parse().ok())
    {
        config.max_batch_records = batch;
    }
    let max_batch_records = config.max_batch_records;
    let started = Instant::now();
    let persist = env.start_persist(&format!("bench-{}", env.unique), config);
    let metrics = persist.metrics.clone();
    eventually("the first write", Duration::from_secs(60), || {
        let written = metrics.rows_written.get();
        async move { written > 0 }
    })
    .await;
    let steady_started = Instant::now();
    let written_at_steady_start = metrics.rows_written.get();
    eventually("the writer to drain", Duration::from_secs(900), || {
        let written = metrics.rows_written.get();
        async move { written >= total as u64 }
    })
    .await;
    let drain_secs = started.elapsed().as_secs_f64();
    let steady_secs = steady_started.elapsed().as_secs_f64();
    let steady_rate = (total as u64 - written_at_steady_start) as f64 / steady_secs;
    let batches = metrics.consumer.batches.get();
    let requests = metrics.write_requests.get();
    persist.stop().await;

    // Baseline 1: one INSERT per row, 64 in flight.
    let fresh: Vec<_> = (0..conversations)
        .flat_map(|index| {
            let conversation = env.conversation_id(&format!("plain{index}"));
            records(
                &conversation,
                &alice,
                &mut generator,
                per_conversation,
                &format!("p{index}"),
            )
        })
        .collect();
    let started = Instant::now();
    futures::stream::iter(fresh.iter())
        .map(|record| env.store.write_message(record))
        .buffer_unordered(64)
        .for_each(|outcome| async move { outcome.unwrap() })
        .await;
    let plain_secs = started.elapsed().as_secs_f64();

    // Baseline 2: the writer's grouping without Kafka, on rounds of 1000
    // records interleaved across conversations as they come off Kafka.
    let per_conversation_records: Vec<Vec<_>> = (0..conversations)
        .map(|index| {
            let conversation = env.conversation_id(&format!("grouped{index}"));
            records(
                &conversation,
                &alice,
                &mut generator,
                per_conversation,
                &format!("g{index}"),
            )
        })
        .collect();
    let grouped: Vec<_> = (0..per_conversation)
        .flat_map(|position| {
            per_conversation_records
                .iter()
                .map(move |records| records[position].clone())
        })
        .collect();
    let started = Instant::now();
    for chunk in grouped.chunks(1000) {
        env.store.write_messages(chunk, 64).await.unwrap();
    }
    let grouped_secs = started.elapsed().as_secs_f64();

    // Chat-shaped rounds, unpacked vs packed, side by side.
    let unpacked_store =
        chatpipe_cassandra::CassandraStore::connect(&chatpipe_cassandra::CassandraConfig {
            max_partitions_per_batch: 1,
            ..env.store.config().clone()
        })
        .await
        .unwrap();
    let chat_conversations = 5_000;
    let mut chat_passes: [Vec<ChatPass>; 2] = [Vec::new(), Vec::new()];
    // Pass 0 warms Cassandra up for this shape and is not counted; then
    // three passes of each, alternating.
    for pass in 0..7 {
        let packed = pass % 2 == 0;
        let store = if packed { &env.store } else { &unpacked_store };
        let rows: Vec<_> = (0..total)
            .map(|index| {
                let conversation =
                    env.conversation_id(&format!("chat{pass}-{}", index % chat_conversations));
                records(
                    &conversation,
                    &alice,
                    &mut generator,
                    1,
                    &format!("c{pass}-{index}"),
                )
                .remove(0)
            })
            .collect();
        let measured = chat_pass(store, &rows).await;
        if pass > 0 {
            chat_passes[usize::from(packed)].push(measured);
        }
    }
    let [unpacked, packed] = chat_passes.map(|passes| ChatPass::median(&passes));

    let rate = |secs: f64| total as f64 / secs;
    eprintln!("records: {total} in {conversations} conversations, 3 partitions");
    eprintln!(
        "produce (acks=all, 2000 in flight): {produce_secs:.1} s, {:.0} records/s",
        rate(produce_secs)
    );
    eprintln!(
        "persist role drain (Kafka -> Cassandra, max_batch_records {max_batch_records}): {drain_secs:.1} s including the group join, {:.0} messages/s; after the first write {steady_rate:.0} messages/s ({batches} batches, {requests} Cassandra requests)",
        rate(drain_secs)
    );
    eprintln!(
        "baseline, one INSERT per row, 64 in flight: {plain_secs:.1} s, {:.0} rows/s",
        rate(plain_secs)
    );
    eprintln!(
        "baseline, write_messages on interleaved rounds of 1000, 64 in flight, no Kafka: {grouped_secs:.1} s, {:.0} rows/s",
        rate(grouped_secs)
    );
    eprintln!(
        "chat-shaped rounds (50 rows over 50 conversations, 8 in flight), one request per partition: {:.0} rows/s, {} requests, Cassandra {} ms CPU per 1,000 rows",
        unpacked.rows_per_s,
        unpacked.requests,
        unpacked
            .cassandra_cpu_ms_per_1000
            .map_or("?".into(), |ms| format!("{ms:.0}"))
    );
    eprintln!(
        "chat-shaped rounds, small partitions packed per replica: {:.0} rows/s, {} requests, Cassandra {} ms CPU per 1,000 rows",
        packed.rows_per_s,
        packed.requests,
        packed
            .cassandra_cpu_ms_per_1000
            .map_or("?".into(), |ms| format!("{ms:.0}"))
    );
    let output = serde_json::json!({
        "bench": "persist",
        "records": total,
        "conversations": conversations,
        "partitions": 3,
        "max_batch_records": max_batch_records,
        "produce_seconds": produce_secs,
        "produce_records_per_s": rate(produce_secs),
        "drain_seconds": drain_secs,
        "drain_rows_per_s": rate(drain_secs),
        "steady_rows_per_s": steady_rate,
        "batches": batches,
        "write_requests": requests,
        "plain_insert_seconds": plain_secs,
        "plain_insert_rows_per_s": rate(plain_secs),
        "grouped_write_seconds": grouped_secs,
        "grouped_write_rows_per_s": rate(grouped_secs),
        "chat_rounds_unpacked_rows_per_s": unpacked.rows_per_s,
        "chat_rounds_unpacked_requests": unpacked.requests,
        "chat_rounds_unpacked_cassandra_cpu_ms_per_1000_rows": unpacked.cassandra_cpu_ms_per_1000,
        "chat_rounds_packed_rows_per_s": packed.rows_per_s,
        "chat_rounds_packed_requests": packed.requests,
        "chat_rounds_packed_cassandra_cpu_ms_per_1000_rows": packed.cassandra_cpu_ms_per_1000,
    });
    println!("{output}");
}

/// One pass of chat-shaped write rounds.
#[derive(Debug, Clone, Copy)]
struct ChatPass {
    rows_per_s: f64,
    requests: u64,
    cassandra_cpu_ms_per_1000: Option<f64>,
}

impl ChatPass {
    /// The median of the passes (of an even number, the mean of the two
    /// middle ones).
    fn median(passes: &[ChatPass]) -> ChatPass {
        let middle = |value: fn(&ChatPass) -> f64| {
            let mut values: Vec<f64> = passes.iter().map(value).collect();
            values.sort_by(f64::total_cmp);
            let n = values.len();
            if n.is_multiple_of(2) {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            } else {
                values[n / 2]
            }
        };
        ChatPass {
            rows_per_s: middle(|pass| pass.rows_per_s),
            requests: passes.first().map_or(0, |pass| pass.requests),
            cassandra_cpu_ms_per_1000: passes
                .iter()
                .all(|pass| pass.cassandra_cpu_ms_per_1000.is_some())
                .then(|| middle(|pass| pass.cassandra_cpu_ms_per_1000.unwrap_or(0.0))),
        }
    }
}

/// Writes `rows` in rounds of 50 (consecutive rows are distinct
/// conversations), 8 rounds in flight, timing it and reading Cassandra's
/// CPU around it.
async fn chat_pass(
    store: &chatpipe_cassandra::CassandraStore,
    rows: &[chatpipe_core::records::MessageRecord],
) -> ChatPass {
    let cpu_before = cassandra_cpu_ms();
    let started = Instant::now();
    let requests: u64 = futures::stream::iter(rows.chunks(50))
        .map(|round| store.write_messages(round, 64))
        .buffer_unordered(8)
        .map(|report| report.unwrap().requests)
        .fold(0, |sum, requests| async move { sum + requests })
        .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(cassandra_cpu_ms())
        .map(|(before, after)| after - before);
    ChatPass {
        rows_per_s: rows.len() as f64 / secs,
        requests,
        cassandra_cpu_ms_per_1000: cpu.map(|ms| ms * 1000.0 / rows.len() as f64),
    }
}

/// CPU time (user + system, ms) of the Cassandra JVM on this machine, the
/// process whose command line names `CassandraDaemon`; `None` where there
/// is no `/proc` or no such process.
fn cassandra_cpu_ms() -> Option<f64> {
    let ticks_per_s = 100.0; // USER_HZ on Linux
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains("CassandraDaemon") {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Fields after the `)` that closes the command name: utime is the
        // 12th, stime the 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        return Some((utime + stime) * 1000.0 / ticks_per_s);
    }
    None
}
