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
//! (`write_messages`, single-partition unlogged batches, 64 in flight) on
//! rounds of 1000 records interleaved across conversations, without Kafka.
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
    });
    println!("{output}");
}
