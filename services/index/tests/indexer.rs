//! The index role against the real Kafka and the real engine.

mod common;

use std::time::Duration;

use chatpipe_core::records::{
    CHANGE_SCHEMA_VERSION, DeadLetterRecord, MessageChange, MessageChangeRecord,
};
use chatpipe_core::{EdgeId, MessageId, UserId};
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

#[tokio::test]
async fn changes_of_messages_not_yet_searchable_are_applied_by_id() {
    let env = TestEnv::new(1).await;
    let ours = env.conversation("ours");
    let change = |id: u64, change: MessageChange| {
        serde_json::to_vec(&MessageChangeRecord {
            schema_version: CHANGE_SCHEMA_VERSION,
            message_id: MessageId::from_u64(id),
            conversation_id: ours.clone(),
            actor_id: UserId::parse("alice").unwrap(),
            change,
            ts: 1_800_000_000_000 + id,
            edge_id: EdgeId::parse("e").unwrap(),
        })
        .unwrap()
    };
    // In the topic before the worker starts: the changes reach the worker
    // with (or right after) their messages, whose documents are not
    // refreshed yet.
    env.produce(&env.record(201, &ours, "the otter swims"))
        .await;
    env.produce(&env.record(202, &ours, "the otter naps")).await;
    env.produce_raw(
        ours.as_str(),
        &change(
            201,
            MessageChange::Edit {
                body: "the beaver swims".into(),
            },
        ),
    )
    .await;
    env.produce_raw(ours.as_str(), &change(202, MessageChange::Delete))
        .await;
    let shutdown = Shutdown::new();
    let (worker, _health) = env.spawn(env.config(), &shutdown);
    let metrics = worker.metrics().clone();
    eventually("both changes applied", Duration::from_secs(60), || {
        let metrics = metrics.clone();
        async move { metrics.changes_applied.get() >= 2 }
    })
    .await;
    assert_eq!(metrics.changes_applied.get(), 2);
    assert_eq!(metrics.changes.applied_by_id.get(), 2);
    assert_eq!(
        (
            metrics.changes.by_query_fallbacks.get(),
            metrics.changes.fallback_refreshes.get()
        ),
        (0, 0),
        "no query and no refresh for messages of the write index"
    );
    assert!(metrics.changes.bulk_requests.get() <= 2);

    env.refresh().await;
    let searcher = env.searcher();
    let found = |q: &'static str| {
        let searcher = searcher.clone();
        let ours = ours.clone();
        async move {
            searcher
                .search(&query(q), &[ours])
                .await
                .unwrap()
                .hits
                .iter()
                .map(|hit| (hit.message.message_id.as_u64(), hit.message.body.clone()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        found("beaver").await,
        [(201, "the beaver swims".to_owned())]
    );
    assert!(found("otter").await.is_empty(), "edited and deleted");
    shutdown.cancel();
    worker.join().await.unwrap();
    env.teardown().await;
}
