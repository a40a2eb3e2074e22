//! Ops listeners: every role serves `/metrics`, `/healthz` and `/readyz` on
//! its own ops listener, and its public port (the edge's `/ws`, the API's
//! `/v1/…`) serves none of them. Also: a token signed with a formerly
//! built-in secret is refused by the running edge and API, and
//! `topology apply` changes only what differs, never lowering what an
//! operator raised.

use std::net::SocketAddr;

use crate::common::*;
use chatpipe_core::UserId;
use chatpipe_core::auth::{FORMER_BUILT_IN_SECRETS, TokenKeys};
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::KafkaConfig;
use chatpipe_kafka::admin::{create_topic, delete_topics, set_topic_configs, topic_configs};
use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicSpec, TopicsFile, apply};

const OPS_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

async fn assert_ops_only_on_the_ops_listener(
    role: &str,
    public: SocketAddr,
    ops: SocketAddr,
    metric: &str,
) {
    assert_ne!(public, ops, "{role}: the ops listener is a separate port");
    assert!(ops.ip().is_loopback(), "{role}: ops on loopback");
    for path in OPS_PATHS {
        let (status, body) = http_get(public, path).await;
        assert_eq!(status, 404, "{role}: public port serves {path}: {body}");
    }
    let (status, metrics) = http_get(ops, "/metrics").await;
    assert_eq!(status, 200, "{role} /metrics");
    assert!(metrics.contains(metric), "{role}: no {metric} in {metrics}");
    let (status, body) = http_get(ops, "/healthz").await;
    assert_eq!(status, 200, "{role} /healthz: {body}");
    eventually(
        &format!("{role} ready on its ops listener"),
        WAIT,
        || async move {
            let (status, _) = http_get(ops, "/readyz").await;
            (status == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_ops_only_on_its_ops_listener() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;

    assert_ops_only_on_the_ops_listener("edge", edge.http_addr, edge.ops_addr(), "chatpipe_edge_")
        .await;
    assert_ops_only_on_the_ops_listener(
        "api",
        full.api_role.addr,
        full.api_role.ops_addr(),
        "chatpipe_api_requests",
    )
    .await;
    // The public ports still serve what they are for.
    let (status, _) = http_get(full.api_role.addr, "/openapi.json").await;
    assert_eq!(status, 200);
    let user = unique("u");
    Client::connect(&edge, &stack.token(&user)).await;

    // The consumer-group roles have no public port at all.
    for (role, ops, metric) in [
        ("fanout", fanout.ops_addr(), "chatpipe_fanout_"),
        ("persist", full.persist.ops_addr(), "chatpipe_persist_"),
        ("index", full.index.ops_addr(), "chatpipe_index_"),
    ] {
        assert!(ops.ip().is_loopback());
        let (status, metrics) = http_get(ops, "/metrics").await;
        assert_eq!(status, 200, "{role} /metrics");
        assert!(metrics.contains(metric), "{role}: {metrics}");
        eventually(&format!("{role} ready"), WAIT, || async move {
            let (status, _) = http_get(ops, "/readyz").await;
            (status == 200).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_ops_listener_answers_until_the_edge_stopped() {
    let stack = Stack::new().await;
    let (edge, drain) = stack.edge(stack.edge_config("a")).await;
    let ops = edge.ops_addr();
    eventually("edge ready", WAIT, || async move {
        (http_get(ops, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    drain.cancel();
    edge.join().await.expect("the edge drains cleanly");
    // Once the role stopped, its ops listener is gone too.
    assert!(reqwest::get(format!("http://{ops}/healthz")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_a_formerly_built_in_secret_are_refused() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let alice = UserId::parse("alice").unwrap();
    for former in FORMER_BUILT_IN_SECRETS {
        let token =
            TokenKeys::from_secret(former.as_bytes()).sign(&alice, now_unix_ms() / 1000, 60);
        let (status, body) = full.get(&token, "/v1/conversations").await;
        assert_eq!(status, 401, "{body}");
        match Client::try_connect(&format!("{}?token={token}", ws_url(&edge))).await {
            Connect::Closed { code, .. } => assert_eq!(code, 4001),
            Connect::Accepted(_) => panic!("a token of a built-in secret was accepted"),
        }
    }
    // The stack's own secret works.
    let (status, _) = full.get(&stack.token("alice"), "/v1/conversations").await;
    assert_eq!(status, 200);
}

/// A client of the shared Kafka, for `topology apply`.
fn kafka() -> KafkaConfig {
    let brokers = engine_env(
        "CHATPIPE_KAFKA_BROKERS",
        chatpipe::roles::defaults::KAFKA_BROKERS,
    );
    KafkaConfig::new(brokers, unique("topology-test"))
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
    let prefix = format!("{}.", unique("t"));
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
