//! `topology::apply` against the real Kafka (`CHATPIPE_KAFKA`, default
//! `127.0.0.1:9092`): it sets only what differs, keeps what an operator
//! raised and every dynamic config it does not list, and sets missing keys.
//! Each run uses topics of its own prefix and deletes them.

use chatpipe_kafka::KafkaConfig;
use chatpipe_kafka::admin::{create_topic, delete_topics, set_topic_configs, topic_configs};
use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicSpec, TopicsFile, apply};

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn kafka() -> KafkaConfig {
    let brokers = std::env::var("CHATPIPE_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    KafkaConfig::new(brokers, format!("topology-test-{}", &unique()[..8]))
}

/// The value of `key` on `topic`, and whether it is set on the topic itself.
async fn config(kafka: &KafkaConfig, topic: &str, key: &str) -> (Option<String>, bool) {
    let configs = topic_configs(kafka, topic).await.expect("described");
    let entry = configs.get(key).expect("the broker reports every key");
    (entry.value.clone(), entry.set_on_topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_keeps_what_an_operator_raised_and_changes_only_what_differs() {
    let kafka = kafka();
    let prefix = format!("t{}.", &unique()[..12]);
    let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON)
        .unwrap()
        .with_prefix(&prefix);
    for topic in &mut file.topics {
        topic.partitions = 1;
    }
    let first = apply(&kafka, &file)
        .await
        .expect("Kafka must be reachable (topology/engines.sh up kafka)");
    assert_eq!(first.created.len(), file.topics.len());
    let messages = format!("{prefix}chat.messages");
    let wanted_retention = file.topics[0].configs["retention.ms"].clone();

    // A second apply changes nothing.
    let again = apply(&kafka, &file).await.unwrap();
    assert!(!again.changed_anything(), "{again:?}");
    assert!(again.config_changes.is_empty() && again.configs_kept.is_empty());

    // An operator raises durability and retention, sets a key the file
    // does not list, and changes one the file does list.
    set_topic_configs(
        &kafka,
        &messages,
        &[
            ("min.insync.replicas", "2"),
            ("retention.ms", "1209600000"),
            ("max.message.bytes", "2097152"),
            ("message.timestamp.type", "LogAppendTime"),
        ],
    )
    .await
    .expect("an operator's change");
    let report = apply(&kafka, &file).await.unwrap();
    // Raised values and the unlisted key stay; the listed key that differs
    // is set back, and only it.
    assert_eq!(
        config(&kafka, &messages, "min.insync.replicas").await,
        (Some("2".to_owned()), true)
    );
    assert_eq!(
        config(&kafka, &messages, "retention.ms").await,
        (Some("1209600000".to_owned()), true)
    );
    assert_eq!(
        config(&kafka, &messages, "max.message.bytes").await,
        (Some("2097152".to_owned()), true)
    );
    assert_eq!(
        config(&kafka, &messages, "message.timestamp.type").await,
        (Some("CreateTime".to_owned()), true)
    );
    assert_eq!(report.configs_changed, vec![messages.clone()]);
    assert_eq!(report.config_changes.len(), 1, "{report:?}");
    assert!(report.config_changes[0].contains("message.timestamp.type"));
    assert_eq!(report.configs_kept.len(), 2, "{report:?}");

    // Lowered below the file's retention: raised back to it.
    set_topic_configs(&kafka, &messages, &[("retention.ms", "60000")])
        .await
        .unwrap();
    apply(&kafka, &file).await.unwrap();
    assert_eq!(
        config(&kafka, &messages, "retention.ms").await,
        (Some(wanted_retention), true)
    );
    assert_eq!(
        config(&kafka, &messages, "min.insync.replicas").await.0,
        Some("2".to_owned())
    );

    // A topic made without the file's configs gets the missing keys.
    let bare = format!("{prefix}bare");
    create_topic(&kafka, &bare, 1).await.unwrap();
    assert!(!config(&kafka, &bare, "retention.ms").await.1);
    let bare_file = TopicsFile {
        comment: None,
        topics: vec![TopicSpec {
            name: bare.clone(),
            key: "test".to_owned(),
            partitions: 1,
            replication_factor: 1,
            // Above any default, so that no broker setting counts as raised.
            configs: [("retention.ms".to_owned(), "2592000000".to_owned())]
                .into_iter()
                .collect(),
        }],
    };
    let report = apply(&kafka, &bare_file).await.unwrap();
    assert_eq!(report.configs_changed, vec![bare.clone()]);
    assert_eq!(
        config(&kafka, &bare, "retention.ms").await,
        (Some("2592000000".to_owned()), true)
    );

    let mut names: Vec<String> = file.topics.iter().map(|topic| topic.name.clone()).collect();
    names.push(bare);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    delete_topics(&kafka, &names).await.unwrap();
}
