//! # chatpipe-testkit
//!
//! Set-up shared by the integration tests of the role crates (a
//! dev-dependency only): unique names so that tests can share one set of
//! engines, an isolated set of topics on the **real** Kafka, a store on the
//! **real** Cassandra, and polling until a condition holds. Nothing here fakes an engine; every helper talks
//! to what `topology/engines.sh` runs and fails loudly when it is not there.
//! [`engines::PrivateEngines`] runs engines of a test's own, for the tests
//! that kill a broker or a node.

pub mod engines;

use std::future::Future;
use std::time::{Duration, Instant};

use chatpipe_cassandra::{CassandraConfig, CassandraStore};
use chatpipe_core::ids::{ConversationId, MessageId, UserId};
use chatpipe_core::records::{MessageRecord, TopicNames};
use chatpipe_kafka::producer::RecordPosition;
use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicsFile, apply};
use chatpipe_kafka::{ChatProducer, KafkaConfig};

/// A fresh 32-hex-digit name.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The Kafka bootstrap servers of the test engines (`CHATPIPE_KAFKA_BROKERS`, by
/// default the contract's `127.0.0.1:9092`).
pub fn kafka_brokers() -> String {
    std::env::var("CHATPIPE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The test Cassandra: `CHATPIPE_CASSANDRA` (comma-separated `host:port`,
/// as the binary reads it), by default the contract's `127.0.0.1:9042`.
pub fn cassandra_config() -> CassandraConfig {
    let mut config = CassandraConfig::default();
    if let Ok(addresses) = std::env::var("CHATPIPE_CASSANDRA")
        && !addresses.is_empty()
    {
        config.contact_points = addresses.split(',').map(str::to_owned).collect();
    }
    config
}

/// A store on the test Cassandra ([`cassandra_config`]). Panics when
/// Cassandra cannot be reached.
pub async fn cassandra_store() -> CassandraStore {
    CassandraStore::connect(&cassandra_config())
        .await
        .expect("Cassandra must be reachable (topology/engines.sh up cassandra)")
}

/// Every topic of the deployment under a prefix no other test uses.
#[derive(Debug, Clone)]
pub struct IsolatedTopics {
    /// The unique part of the prefix, for naming groups, users and indices.
    pub unique: String,
    /// A Kafka client configuration named after the test.
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
}

/// Creates the topology's topics under a fresh prefix, each with at most
/// `max_partitions` partitions; `label` names the Kafka client. Panics when
/// Kafka cannot be reached: an integration test never passes without it.
pub async fn isolated_topics(label: &str, max_partitions: i32) -> IsolatedTopics {
    let unique = unique();
    let prefix = format!("t{unique}.");
    let kafka = KafkaConfig::new(kafka_brokers(), format!("{label}-{unique}"));
    let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON)
        .expect("the embedded topology parses")
        .with_prefix(&prefix);
    for topic in &mut file.topics {
        topic.partitions = topic.partitions.min(max_partitions);
    }
    apply(&kafka, &file)
        .await
        .expect("Kafka must be reachable (topology/engines.sh up kafka)");
    IsolatedTopics {
        topics: TopicNames::with_prefix(&prefix),
        unique,
        kafka,
    }
}

/// A message record for tests: message id `id`, sent by `sender` at
/// `1_700_000_000_000 + id` ms (so ids and times sort alike).
pub fn message_record(id: u64, conversation: &str, sender: &str, body: &str) -> MessageRecord {
    MessageRecord::builder(
        MessageId::from_u64(id),
        &ConversationId::parse(conversation).expect("a valid conversation id"),
    )
    .sender(&UserId::parse(sender).expect("a valid user id"))
    .body(body)
    .ts(1_700_000_000_000 + id)
    .build()
}

/// Produces `record` to `topic` keyed by its conversation, as an edge
/// does; panics unless Kafka acknowledges it within 10 s.
pub async fn produce_record(
    producer: &ChatProducer,
    topic: &str,
    record: &MessageRecord,
) -> RecordPosition {
    producer
        .send_json(
            topic,
            record.conversation_id.as_str(),
            record,
            Duration::from_secs(10),
        )
        .await
        .expect("Kafka acknowledges the record")
}

/// Percent-encodes every byte that is not unreserved (RFC 3986), as a
/// client's URL library would: for query strings built by property tests.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// Asserts that an API answer is the contract's refusal: status
/// `expected_status` and `{"error":{"code":code,"message":…}}` with a
/// message that says something.
pub fn assert_api_error(status: u16, body: &serde_json::Value, expected_status: u16, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

/// Polls `condition` every 100 ms until it holds; panics naming `what` once
/// `deadline` has passed.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_bytes_stay_as_they_are() {
        assert_eq!(percent_encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(percent_encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
    }

    #[test]
    fn records_sort_by_id_and_time() {
        let record = message_record(7, "c1", "alice", "hi");
        assert_eq!(
            (
                record.message_id.as_u64(),
                record.conversation_id.as_str(),
                record.sender_id.as_str(),
                record.body.as_str(),
                record.ts
            ),
            (7, "c1", "alice", "hi", 1_700_000_000_007)
        );
    }
}
