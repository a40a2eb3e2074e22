//! Shared set-up of the persist integration tests: an isolated topic prefix
//! on the real Kafka, the real Cassandra, and an in-process persist role.
#![allow(dead_code)]

use std::time::Duration;

use chatpipe_cassandra::{
    CassandraStore, Conversation, CreateOutcome, HistoryQuery, NewConversation,
};
use chatpipe_core::ids::{ConversationId, MessageId, MessageIdGenerator, UserId};
use chatpipe_core::records::{MessageRecord, TopicNames};
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::{ChatProducer, KafkaConfig};
use chatpipe_persist::{PersistConfig, PersistError, PersistMetrics, PersistRole};
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;

pub struct TestEnv {
    pub unique: String,
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub store: CassandraStore,
    pub producer: ChatProducer,
}

pub use chatpipe_testkit::eventually;

/// `records` (produced oldest first) as history should hold them:
/// `(message id, body)`, newest first.
pub fn newest_first<'a>(
    records: impl DoubleEndedIterator<Item = &'a MessageRecord>,
) -> Vec<(MessageId, String)> {
    records
        .rev()
        .map(|record| (record.message_id, record.body.clone()))
        .collect()
}

impl TestEnv {
    /// Topics under a fresh prefix (`partitions` each), and a store.
    pub async fn new(partitions: i32) -> Self {
        let isolated = chatpipe_testkit::isolated_topics("persist-test", partitions).await;
        let store = chatpipe_testkit::cassandra_store().await;
        let producer = ChatProducer::new(&isolated.kafka, 1).unwrap();
        Self {
            topics: isolated.topics,
            unique: isolated.unique,
            kafka: isolated.kafka,
            store,
            producer,
        }
    }

    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(format!("{name}-{}", self.unique)).unwrap()
    }

    pub fn conversation_id(&self, name: &str) -> ConversationId {
        ConversationId::parse(format!("{name}-{}", self.unique)).unwrap()
    }

    /// Creates a conversation (created an hour ago) and returns its row.
    pub async fn conversation(&self, name: &str, creator: &UserId) -> Conversation {
        let outcome = self
            .store
            .create_conversation(&NewConversation {
                conversation_id: self.conversation_id(name),
                title: None,
                created_by: creator.clone(),
                members: vec![],
                created_at_ms: now_unix_ms() - 3_600_000,
            })
            .await
            .unwrap();
        match outcome {
            CreateOutcome::Created { conversation, .. }
            | CreateOutcome::AlreadyExists(conversation) => conversation,
        }
    }

    pub async fn produce(
        &self,
        record: &MessageRecord,
    ) -> chatpipe_kafka::producer::RecordPosition {
        chatpipe_testkit::produce_record(&self.producer, &self.topics.messages, record).await
    }

    /// Starts a persist role in-process with its own consumer group.
    pub fn start_persist(&self, group_id: &str, config: PersistConfig) -> RunningPersist {
        let mut registry = Registry::default();
        let role = PersistRole::new(
            PersistConfig {
                group_id: group_id.to_owned(),
                ..config
            },
            self.kafka.clone(),
            self.topics.clone(),
            self.store.clone(),
            self.producer.clone(),
            &mut registry,
        );
        let metrics = role.metrics();
        let shutdown = Shutdown::new();
        let health = Health::new();
        let task = tokio::spawn(role.run(health.clone(), shutdown.clone()));
        RunningPersist {
            metrics,
            shutdown,
            health,
            task,
            registry,
        }
    }

    /// The whole history of `conversation`, newest first, read page by page.
    pub async fn history(&self, conversation: &Conversation) -> Vec<MessageRecordView> {
        self.try_history(conversation).await.unwrap()
    }

    /// [`Self::history`] as `(message id, body)`, newest first.
    pub async fn history_pairs(&self, conversation: &Conversation) -> Vec<(MessageId, String)> {
        self.history(conversation)
            .await
            .iter()
            .map(|view| (view.message_id, view.body.clone()))
            .collect()
    }

    /// [`Self::history`], or the store's error (Cassandra restarting).
    pub async fn try_history(
        &self,
        conversation: &Conversation,
    ) -> Result<Vec<MessageRecordView>, chatpipe_cassandra::CassandraError> {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .read_history(
                    conversation,
                    &HistoryQuery {
                        before,
                        after: None,
                        limit: 200,
                    },
                    now_unix_ms(),
                )
                .await?;
            all.extend(page.messages.iter().map(|message| MessageRecordView {
                message_id: message.message_id,
                body: message.body.clone(),
            }));
            if !page.has_more {
                return Ok(all);
            }
            before = page.messages.last().map(|message| message.message_id);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecordView {
    pub message_id: MessageId,
    pub body: String,
}

pub struct RunningPersist {
    pub metrics: PersistMetrics,
    pub shutdown: Shutdown,
    pub health: Health,
    pub task: tokio::task::JoinHandle<Result<(), PersistError>>,
    pub registry: Registry,
}

impl RunningPersist {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("persist stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

/// Records for `conversation`, ids from `generator`, bodies `"{tag}-{i}"`.
pub fn records(
    conversation: &ConversationId,
    sender: &UserId,
    generator: &mut MessageIdGenerator,
    count: usize,
    tag: &str,
) -> Vec<MessageRecord> {
    (0..count)
        .map(|index| {
            MessageRecord::builder(generator.next_id(now_unix_ms()), conversation)
                .sender(sender)
                .client_msg_id(format!("{tag}-{index}"))
                .body(format!("{tag}-{index}"))
                .build()
        })
        .collect()
}
