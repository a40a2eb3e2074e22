//! The indexer's sustained rate next to a direct `_bulk` baseline (same
//! documents, same batch size, no Kafka), and the median search latency,
//! in one run on the same engines. A measurement, not a test (it loads the
//! shared engines), so an example:
//! `cargo run -p chatpipe-index --example index_throughput`
//! (`--release` for figures of the optimized code;
//! `CHATPIPE_BENCH_RECORDS` overrides the 50,000 records).
//!
//! Method: pre-produce N records (4 conversations, 3 partitions); write the
//! same N documents straight to the engine with `EsBulkSink`, 1,000 per
//! `_bulk` (the indexer's `max_batch_records`), one request at a time;
//! then start the index worker and time until `docs_indexed` reaches N
//! (start-up, i.e. joining the group and the first batch, reported apart);
//! then 200 two-word searches over the 4 conversations, timed end to end
//! through `MessageSearcher`.
//!
//! Output: one JSON object on stdout (what `benches/run.sh` stores as
//! `benches/results/index.json` and `bench-report` reads; field names carry
//! their units), the same figures as prose on stderr.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use chatpipe_core::records::MessageRecord;
use chatpipe_runtime::Shutdown;
use chatpipe_search::template::{apply_template, delete_deployment};
use chatpipe_search::{
    BulkDoc, BulkMetrics, EsBulkSink, EsClient, MessageDocument, SearchEngineConfig, SearchParams,
};
use common::{TestEnv, eventually};
use futures::StreamExt;

const WORDS: [&str; 40] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "meeting", "lunch", "deploy",
    "release", "budget", "review", "ticket", "customer", "weekend", "coffee", "report", "invoice",
    "server", "holiday",
];

fn body(seed: u64) -> String {
    // A deterministic spread of words, 8 to 20 per message.
    let mut state = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let count = 8 + (state % 13) as usize;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            WORDS[((state >> 33) % WORDS.len() as u64) as usize]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u64 = std::env::var("CHATPIPE_BENCH_RECORDS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(50_000);
    let env = TestEnv::new(3).await;
    let conversations = [
        env.conversation("a"),
        env.conversation("b"),
        env.conversation("c"),
        env.conversation("d"),
    ];
    let records: Vec<MessageRecord> = (1..=total)
        .map(|id| env.record(id, &conversations[(id % 4) as usize], &body(id)))
        .collect();
    let config = env.config();
    let batch = config.max_batch_records;

    // 1. Pre-produce everything.
    let started = Instant::now();
    futures::stream::iter(records.iter())
        .map(|record| env.produce(record))
        .buffer_unordered(2_000)
        .collect::<Vec<()>>()
        .await;
    let produce_time = started.elapsed();

    // 2. Baseline: the same documents straight to the engine, same batch size.
    let baseline_engine = SearchEngineConfig {
        index_prefix: format!("b{}-chat-messages", env.unique),
        ..env.engine.clone()
    };
    let baseline_client = EsClient::new(&baseline_engine).unwrap();
    apply_template(&baseline_client, &baseline_engine)
        .await
        .unwrap();
    let sink = EsBulkSink::new(
        baseline_client.clone(),
        baseline_engine.layout().write_alias,
        config.bulk_settings(),
        BulkMetrics::default(),
    );
    let started = Instant::now();
    for chunk in records.chunks(batch) {
        let docs: Vec<BulkDoc> = chunk
            .iter()
            .map(|record| BulkDoc::from_document(&MessageDocument::from_record(record)))
            .collect();
        let report = sink.write(&docs).await.unwrap();
        assert_eq!(report.indexed, chunk.len());
    }
    let baseline_time = started.elapsed();

    // 3. The indexer drains the topic.
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let (worker, _health) = env.spawn(config, &shutdown);
    let metrics = worker.metrics().clone();
    eventually("the first batch indexed", Duration::from_secs(120), || {
        let metrics = metrics.clone();
        async move { metrics.bulk.docs_indexed.get() > 0 }
    })
    .await;
    let startup = started.elapsed();
    let first_indexed = metrics.bulk.docs_indexed.get();
    eventually(
        "the indexer drained the topic",
        Duration::from_secs(1_800),
        || {
            let metrics = metrics.clone();
            async move { metrics.bulk.docs_indexed.get() >= total }
        },
    )
    .await;
    let indexer_time = started.elapsed();
    let batches = metrics.consumer.batches.get();

    // 4. Search latency over what was indexed.
    env.refresh().await;
    assert_eq!(
        env.client
            .count(&env.engine.layout().search_alias)
            .await
            .unwrap(),
        total
    );
    let searcher = env.searcher();
    let mut latencies = Vec::new();
    for round in 0..200u64 {
        let words = body(round * 7919);
        let mut terms = words.split(' ');
        let q = format!("{} {}", terms.next().unwrap(), terms.next().unwrap());
        let params = SearchParams {
            q,
            ..SearchParams::default()
        };
        let started = Instant::now();
        let page = searcher.search(&params, &conversations).await.unwrap();
        latencies.push(started.elapsed());
        assert!(!page.hits.is_empty());
    }
    let search_median = median(&mut latencies);
    let search_p95 = latencies[latencies.len() * 95 / 100];

    let rate = |time: Duration| total as f64 / time.as_secs_f64();
    let steady = indexer_time - startup;
    let steady_docs_per_s = (total - first_indexed) as f64 / steady.as_secs_f64();
    eprintln!("records: {total}, batch size: {batch}");
    eprintln!(
        "pre-produce: {:.1} s ({:.0} records/s)",
        produce_time.as_secs_f64(),
        rate(produce_time)
    );
    eprintln!(
        "direct _bulk baseline: {:.1} s = {:.0} docs/s",
        baseline_time.as_secs_f64(),
        rate(baseline_time)
    );
    eprintln!(
        "indexer (Kafka -> _bulk): {:.1} s = {:.0} docs/s in {batches} batches (avg {:.0} records/batch)",
        indexer_time.as_secs_f64(),
        rate(indexer_time),
        total as f64 / batches.max(1) as f64
    );
    eprintln!(
        "  of which start-up (group join, first batch of {first_indexed}): {:.1} s; afterwards {steady_docs_per_s:.0} docs/s",
        startup.as_secs_f64(),
    );
    eprintln!(
        "search latency over {} searches: median {:.1} ms, p95 {:.1} ms",
        latencies.len(),
        search_median.as_secs_f64() * 1e3,
        search_p95.as_secs_f64() * 1e3
    );
    let output = serde_json::json!({
        "bench": "index",
        "records": total,
        "batch_size": batch,
        "produce_seconds": produce_time.as_secs_f64(),
        "produce_records_per_s": rate(produce_time),
        "bulk_baseline_seconds": baseline_time.as_secs_f64(),
        "bulk_baseline_docs_per_s": rate(baseline_time),
        "indexer_seconds": indexer_time.as_secs_f64(),
        "indexer_docs_per_s": rate(indexer_time),
        "batches": batches,
        "startup_seconds": startup.as_secs_f64(),
        "startup_docs": first_indexed,
        "steady_docs_per_s": steady_docs_per_s,
        "searches": latencies.len(),
        "search_median_ms": search_median.as_secs_f64() * 1e3,
        "search_p95_ms": search_p95.as_secs_f64() * 1e3,
    });
    println!("{output}");

    shutdown.cancel();
    worker.join().await.unwrap();
    env.teardown().await;
    let _ = delete_deployment(&baseline_client, &baseline_engine.layout()).await;
}
