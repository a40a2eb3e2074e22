//! Shared set-up of the index integration tests: an isolated topic prefix on
//! the real Kafka, an isolated index prefix on the real engine, and an
//! in-process index worker.
#![allow(dead_code)]

use std::time::Duration;

use chatpipe_core::records::{MessageRecord, TopicNames};
use chatpipe_core::{ConversationId, MessageId};
use chatpipe_index::{IndexConfig, IndexWorker};
use chatpipe_kafka::{ChatProducer, KafkaConfig};
use chatpipe_runtime::{Health, Shutdown};
use chatpipe_search::template::delete_deployment;
use chatpipe_search::{EsClient, MessageSearcher, SearchEngineConfig, SearchLimits, SearchMetrics};
use prometheus_client::registry::Registry;

pub struct TestEnv {
    pub unique: String,
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub engine: SearchEngineConfig,
    pub client: EsClient,
    pub producer: ChatProducer,
}

pub use chatpipe_testkit::eventually;

impl TestEnv {
    /// Topics under a fresh prefix (`partitions` each) and a fresh index prefix.
    pub async fn new(partitions: i32) -> Self {
        let isolated = chatpipe_testkit::isolated_topics("index-test", partitions).await;
        let unique = isolated.unique.clone();
        let engine = SearchEngineConfig {
            url: std::env::var("CHATPIPE_ELASTICSEARCH_URL")
                .unwrap_or_else(|_| "http://127.0.0.1:9200".to_owned()),
            index_prefix: format!("t{unique}-chat-messages"),
            number_of_shards: 2,
            ..SearchEngineConfig::default()
        };
        let client = EsClient::new(&engine).unwrap();
        client
            .ping()
            .await
            .expect("the search engine must be reachable (topology/engines.sh up opensearch)");
        let producer = ChatProducer::new(&isolated.kafka, 5).unwrap();
        Self {
            topics: isolated.topics,
            unique,
            kafka: isolated.kafka,
            engine,
            client,
            producer,
        }
    }

    pub fn config(&self) -> IndexConfig {
        IndexConfig {
            group_id: format!("index-{}", self.unique),
            topics: self.topics.clone(),
            engine: self.engine.clone(),
            batch_initial_backoff_ms: 100,
            batch_max_backoff_ms: 1_000,
            bulk_initial_backoff_ms: 50,
            bulk_max_backoff_ms: 500,
            ..IndexConfig::default()
        }
    }

    pub fn spawn(&self, config: IndexConfig, shutdown: &Shutdown) -> (IndexWorker, Health) {
        let health = Health::new();
        let mut registry = Registry::default();
        let worker = IndexWorker::spawn(
            config,
            self.kafka.clone(),
            &mut registry,
            health.clone(),
            shutdown.clone(),
        )
        .expect("the index worker starts");
        (worker, health)
    }

    pub fn searcher(&self) -> MessageSearcher {
        MessageSearcher::new(
            self.client.clone(),
            &self.engine.layout(),
            SearchLimits::default(),
            SearchMetrics::default(),
        )
    }

    pub fn conversation(&self, name: &str) -> ConversationId {
        ConversationId::parse(format!("{name}-{}", self.unique)).unwrap()
    }

    pub fn record(&self, id: u64, conversation: &ConversationId, body: &str) -> MessageRecord {
        MessageRecord::builder(MessageId::from_u64(id), conversation)
            .body(body)
            .ts(1_700_000_000_000 + id)
            .build()
    }

    pub async fn produce(&self, record: &MessageRecord) {
        chatpipe_testkit::produce_record(&self.producer, &self.topics.messages, record).await;
    }

    pub async fn produce_raw(&self, key: &str, payload: &[u8]) {
        self.producer
            .send_bytes(
                &self.topics.messages,
                key,
                Some(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    pub async fn refresh(&self) {
        self.client
            .refresh(&self.engine.layout().search_alias)
            .await
            .unwrap();
    }

    pub async fn teardown(&self) {
        let _ = delete_deployment(&self.client, &self.engine.layout()).await;
    }
}
