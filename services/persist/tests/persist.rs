//! The persist role against the real Kafka and Cassandra.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chatpipe_core::ids::MessageIdGenerator;
use chatpipe_core::ids::worker_id_from_name;
use chatpipe_core::records::DeadLetterRecord;
use chatpipe_kafka::ConsumerMetrics;
use chatpipe_kafka::consumer::{ConsumerSettings, group_consumer};
use chatpipe_persist::PersistConfig;
use common::{TestEnv, eventually, newest_first, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_lands_once_in_order_despite_redelivery() {
    let env = TestEnv::new(3).await;
    let alice = env.user("alice");
    let mut generator = MessageIdGenerator::new(worker_id_from_name(&env.unique));
    let mut conversations = Vec::new();
    let mut produced = 0u64;
    for name in ["one", "two", "three"] {
        let conversation = env.conversation(name, &alice).await;
        let batch = records(
            &conversation.conversation_id,
            &alice,
            &mut generator,
            100,
            name,
        );
        for record in &batch {
            env.produce(record).await;
        }
        // A producer retry: the first half again, after the rest.
        for record in &batch[..50] {
            env.produce(record).await;
        }
        produced += 150;
        conversations.push((conversation, batch));
    }

    let check_history = |label: &'static str| {
        let env = &env;
        let conversations = &conversations;
        async move {
            for (conversation, batch) in conversations {
                let expected = newest_first(batch.iter());
                let actual = env.history_pairs(conversation).await;
                assert_eq!(
                    actual, expected,
                    "{label}: history of {}",
                    conversation.conversation_id
                );
            }
        }
    };

    let first = env.start_persist(
        &format!("persist-a-{}", env.unique),
        PersistConfig::default(),
    );
    let metrics = first.metrics.clone();
    eventually(
        "the first writer to consume everything",
        Duration::from_secs(60),
        || {
            let consumed = metrics.consumer.records.get();
            async move { consumed >= produced }
        },
    )
    .await;
    assert_eq!(
        metrics.rows_written.get(),
        metrics.consumer.records.get(),
        "every delivered record was written"
    );
    assert_eq!(metrics.consumer.dead_lettered.get(), 0);
    first.stop().await;
    check_history("after the first writer").await;

    // A second group re-reads the whole topic: every record delivered again.
    let second = env.start_persist(
        &format!("persist-b-{}", env.unique),
        PersistConfig::default(),
    );
    let metrics = second.metrics.clone();
    eventually(
        "the second writer to consume everything",
        Duration::from_secs(60),
        || {
            let consumed = metrics.consumer.records.get();
            async move { consumed >= produced }
        },
    )
    .await;
    second.stop().await;
    check_history("after redelivery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_writer_continues() {
    let env = TestEnv::new(1).await;
    let alice = env.user("alice");
    let conversation = env.conversation("poison", &alice).await;
    let key = conversation.conversation_id.as_str();
    let mut generator = MessageIdGenerator::new(worker_id_from_name(&env.unique));
    let batch = records(
        &conversation.conversation_id,
        &alice,
        &mut generator,
        2,
        "ok",
    );
    env.produce(&batch[0]).await;
    let binary = env
        .producer
        .send_bytes(
            &env.topics.messages,
            key,
            Some(b"\xff\xfe not json"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let wrong_shape = env
        .producer
        .send_bytes(
            &env.topics.messages,
            key,
            Some(br#"{"hello":"world"}"#),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    env.produce(&batch[1]).await;

    let group = format!("persist-poison-{}", env.unique);
    let persist = env.start_persist(&group, PersistConfig::default());
    let metrics = persist.metrics.clone();
    eventually(
        "both valid records in history",
        Duration::from_secs(60),
        || {
            let env = &env;
            let conversation = &conversation;
            async move { env.history(conversation).await.len() == 2 }
        },
    )
    .await;
    eventually("offsets past the poison", Duration::from_secs(30), || {
        let consumed = metrics.consumer.records.get();
        async move { consumed >= 4 }
    })
    .await;
    assert_eq!(metrics.consumer.dead_lettered.get(), 2);
    assert_eq!(metrics.rows_written.get(), 2);
    persist.stop().await;

    let history = env.history(&conversation).await;
    assert_eq!(
        history
            .iter()
            .map(|view| view.body.as_str())
            .collect::<Vec<_>>(),
        vec!["ok-1", "ok-0"]
    );

    // The dead-letter topic holds both, with their coordinates.
    let consumer_metrics = ConsumerMetrics::new();
    let settings = ConsumerSettings::new(
        format!("dlq-reader-{}", env.unique),
        &[env.topics.dead_letter.as_str()],
    );
    let consumer = group_consumer(&env.kafka, &settings, &consumer_metrics).unwrap();
    let mut letters = Vec::new();
    while letters.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        assert_eq!(
            message.key(),
            Some(key.as_bytes()),
            "dead letters keep the original key"
        );
        let letter: DeadLetterRecord = serde_json::from_slice(message.payload().unwrap()).unwrap();
        letters.push(letter);
    }
    letters.sort_by_key(|letter| letter.source_offset);
    let offsets: BTreeSet<(i32, i64)> = letters
        .iter()
        .map(|letter| (letter.source_partition, letter.source_offset))
        .collect();
    assert_eq!(
        offsets,
        BTreeSet::from([
            (binary.partition, binary.offset),
            (wrong_shape.partition, wrong_shape.offset)
        ])
    );
    for letter in &letters {
        assert_eq!(letter.source_topic, env.topics.messages);
        assert_eq!(letter.consumer, group);
        assert!(letter.error.contains("MessageRecord"), "{}", letter.error);
    }
    assert!(letters[0].payload_base64.is_some() && letters[0].payload_utf8.is_none());
    assert_eq!(
        letters[1].payload_utf8.as_deref(),
        Some(r#"{"hello":"world"}"#)
    );
}
