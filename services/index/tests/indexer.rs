//! The index role against the real Kafka and the real engine.

mod common;

use std::time::Duration;

use chatpipe_core::records::DeadLetterRecord;
use chatpipe_kafka::ConsumerMetrics;
use chatpipe_kafka::consumer::{ConsumerSettings, group_consumer};
use chatpipe_runtime::Shutdown;
use chatpipe_search::{SearchError, SearchParams};
use common::{TestEnv, eventually};

fn query(q: &str) -> SearchParams {
    SearchParams {
        q: q.to_owned(),
        ..SearchParams::default()
    }
}

#[tokio::test]
async fn duplicates_become_one_document_and_poison_is_dead_lettered() {
    let env = TestEnv::new(3).await;
    let shutdown = Shutdown::new();
    let (worker, health) = env.spawn(env.config(), &shutdown);
    let ours = env.conversation("ours");
    let theirs = env.conversation("theirs");

    let first = env.record(101, &ours, "the walrus sings at dawn");
    env.produce(&first).await;
    env.produce(&first).await; // a producer retry, delivered twice
    env.produce_raw(ours.as_str(), b"{\"this is\": not a message")
        .await;
    let after_poison = env.record(102, &ours, "the walrus sleeps at noon");
    env.produce(&after_poison).await;
    env.produce(&env.record(103, &theirs, "their walrus is private"))
        .await;

    let metrics = worker.metrics().clone();
    eventually("every record handled", Duration::from_secs(60), || {
        let metrics = metrics.clone();
        async move { metrics.consumer.records.get() >= 5 && metrics.consumer.dead_lettered.get() >= 1 }
    })
    .await;
    assert_eq!(metrics.undecodable.get(), 1);
    assert_eq!(metrics.consumer.dead_lettered.get(), 1);
    assert_eq!(
        metrics.bulk.docs_indexed.get(),
        4,
        "the duplicate is written twice, as one document"
    );
    assert!(health.is_ready(), "{health:?}");

    env.refresh().await;
    let searcher = env.searcher();
    let page = searcher
        .search(&query("walrus"), std::slice::from_ref(&ours))
        .await
        .unwrap();
    let mut found: Vec<u64> = page
        .hits
        .iter()
        .map(|hit| hit.message.message_id.as_u64())
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![101, 102],
        "one document per message, and only our conversation's"
    );
    // A non-member finds nothing, with or without naming the conversation.
    let stranger = vec![env.conversation("elsewhere")];
    assert!(
        searcher
            .search(&query("walrus"), &stranger)
            .await
            .unwrap()
            .hits
            .is_empty()
    );
    let mut named = query("walrus");
    named.conversation_id = Some(ours.clone());
    assert!(matches!(
        searcher.search(&named, &stranger).await,
        Err(SearchError::Forbidden(_))
    ));

    // The poison record is on the dead-letter topic with its coordinates.
    let dead_letter_metrics = ConsumerMetrics::new();
    let settings = ConsumerSettings::new(
        format!("dlq-reader-{}", env.unique),
        &[env.topics.dead_letter.as_str()],
    );
    let reader = group_consumer(&env.kafka, &settings, &dead_letter_metrics).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("a dead letter arrives")
        .unwrap();
    let dead: DeadLetterRecord = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(dead.source_topic, env.topics.messages);
    assert_eq!(dead.consumer, env.config().group_id);
    assert_eq!(
        dead.payload_utf8.as_deref(),
        Some("{\"this is\": not a message")
    );
    assert!(
        dead.error.contains("not a message record"),
        "{}",
        dead.error
    );

    shutdown.cancel();
    worker.join().await.unwrap();
    env.teardown().await;
}

#[tokio::test]
async fn a_restarted_worker_resumes_after_the_committed_offsets() {
    let env = TestEnv::new(2).await;
    let conversation = env.conversation("c");
    let config = env.config();
    for id in 1..=20 {
        env.produce(&env.record(id, &conversation, "resume test"))
            .await;
    }
    let shutdown = Shutdown::new();
    let (worker, _health) = env.spawn(config.clone(), &shutdown);
    let metrics = worker.metrics().clone();
    eventually("the first twenty indexed", Duration::from_secs(60), || {
        let metrics = metrics.clone();
        async move { metrics.bulk.docs_indexed.get() >= 20 }
    })
    .await;
    shutdown.cancel();
    worker.join().await.unwrap();

    for id in 21..=30 {
        env.produce(&env.record(id, &conversation, "resume test"))
            .await;
    }
    let shutdown = Shutdown::new();
    let (worker, _health) = env.spawn(config, &shutdown);
    let metrics = worker.metrics().clone();
    eventually("the next ten indexed", Duration::from_secs(60), || {
        let metrics = metrics.clone();
        async move { metrics.bulk.docs_indexed.get() >= 10 }
    })
    .await;
    env.refresh().await;
    let mut params = query("resume");
    params.limit = Some(100);
    let page = env
        .searcher()
        .search(&params, &[conversation])
        .await
        .unwrap();
    assert_eq!(page.hits.len(), 30);
    // Offsets were committed on shutdown: the second worker did not
    // re-read the first twenty.
    assert_eq!(metrics.consumer.records.get(), 10);
    shutdown.cancel();
    worker.join().await.unwrap();
    env.teardown().await;
}
