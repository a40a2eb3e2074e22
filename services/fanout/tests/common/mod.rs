//! Shared fixtures of the fan-out integration tests: an isolated Kafka
//! deployment (unique topic prefix), the real Cassandra membership store,
//! and fake edges — real tonic `EdgePush` servers on `127.0.0.1:0` that
//! record every push they receive.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatpipe_cassandra::{CassandraStore, CreateOutcome, NewConversation};
use chatpipe_core::ids::MessageIdGenerator;
use chatpipe_core::records::{
    EdgeRecord, EdgeState, Event, EventRecord, MembershipChange, MembershipRecord, MessageRecord,
    RouteRecord, SCHEMA_VERSION, SessionKey, TopicNames,
};
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ConversationId, EdgeId, MessageId, UserId};
use chatpipe_fanout::{FanoutConfig, FanoutWorker};
use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicsFile, apply};
use chatpipe_kafka::{ChatProducer, KafkaConfig};
use chatpipe_proto::push::edge_push_server::{EdgePush, EdgePushServer};
use chatpipe_proto::push::{MemberSetRef, PushBatch, PushItem, PushReply};
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub const SEND_DEADLINE: Duration = Duration::from_secs(15);
pub const WAIT: Duration = Duration::from_secs(90);

pub fn brokers() -> String {
    std::env::var("CHATPIPE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Polls `check` until it holds, failing the test after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One isolated deployment for one test.
pub struct Deployment {
    pub id: String,
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub producer: ChatProducer,
    pub store: CassandraStore,
    ids: Mutex<MessageIdGenerator>,
}

impl Deployment {
    pub async fn new() -> Self {
        chatpipe_runtime::telemetry::init();
        let id = unique();
        let prefix = format!("t{id}.");
        let kafka = KafkaConfig::new(brokers(), format!("fanout-test-{id}"));
        let topics = TopicNames::with_prefix(&prefix);
        let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON)
            .unwrap()
            .with_prefix(&prefix);
        for (name, partitions) in [
            (&topics.messages, 4),
            (&topics.events, 2),
            (&topics.membership, 2),
            (&topics.sessions, 2),
            (&topics.dead_letter, 1),
        ] {
            file.topic_mut(name).expect("topic in topology").partitions = partitions;
        }
        apply(&kafka, &file)
            .await
            .expect("Kafka must be reachable (topology/engines.sh up kafka)");
        let producer = ChatProducer::new(&kafka, 1).unwrap();
        let store = chatpipe_testkit::cassandra_store().await;
        let worker_bits = u16::from_str_radix(&id[..3], 16).unwrap() % 1024;
        Self {
            id,
            kafka,
            topics,
            producer,
            store,
            ids: Mutex::new(MessageIdGenerator::new(worker_bits)),
        }
    }

    pub fn user(&self, name: &str) -> UserId {
        UserId::parse(format!("{name}-{}", self.id)).unwrap()
    }

    pub fn conversation(&self, name: &str) -> ConversationId {
        ConversationId::parse(format!("{name}-{}", self.id)).unwrap()
    }

    pub fn edge(&self, name: &str) -> EdgeId {
        EdgeId::parse(format!("{name}-{}", self.id)).unwrap()
    }

    /// A config for this deployment's topics, in a fresh consumer group.
    pub fn config(&self) -> FanoutConfig {
        FanoutConfig {
            group_id: format!("fanout-{}-{}", self.id, unique()),
            worker_id: format!("worker-{}", unique()),
            topics: self.topics.clone(),
            push_timeout_ms: 1_000,
            ..FanoutConfig::default()
        }
    }

    pub fn start(&self, config: FanoutConfig) -> Worker {
        let health = Health::new();
        let shutdown = Shutdown::new();
        let mut registry = Registry::default();
        let worker = FanoutWorker::spawn(
            config,
            self.kafka.clone(),
            self.store.clone(),
            // The recorder edge below does not check it.
            chatpipe_core::auth::PushKey::derive(b"fanout-tests"),
            &mut registry,
            health.clone(),
            shutdown.clone(),
        )
        .expect("worker starts");
        Worker {
            worker,
            health,
            shutdown,
            registry,
        }
    }

    async fn publish_session(&self, key: &SessionKey, value: Option<Vec<u8>>) {
        self.producer
            .send_bytes(
                &self.topics.sessions,
                &key.encode(),
                value.as_deref(),
                SEND_DEADLINE,
            )
            .await
            .expect("sessions record published");
    }

    pub async fn publish_edge(&self, edge: &EdgeId, push_addr: &str, lease_expires_ms: u64) {
        let record = EdgeRecord {
            schema_version: SCHEMA_VERSION,
            edge_id: edge.clone(),
            push_addr: push_addr.to_owned(),
            state: EdgeState::Serving,
            lease_expires_ms,
            worker_id: None,
            ts: now_unix_ms(),
        };
        self.publish_session(
            &SessionKey::Edge(edge.clone()),
            Some(serde_json::to_vec(&record).unwrap()),
        )
        .await;
    }

    /// An edge whose lease holds for the whole test.
    pub async fn publish_live_edge(&self, edge: &EdgeId, push_addr: &str) {
        self.publish_edge(edge, push_addr, now_unix_ms() + 3_600_000)
            .await;
    }

    pub async fn publish_route(&self, user: &UserId, edge: &EdgeId) {
        let record = RouteRecord {
            schema_version: SCHEMA_VERSION,
            user_id: user.clone(),
            edge_id: edge.clone(),
            sessions: 1,
            ts: now_unix_ms(),
        };
        self.publish_session(
            &SessionKey::Route(user.clone(), edge.clone()),
            Some(serde_json::to_vec(&record).unwrap()),
        )
        .await;
    }

    /// The edge retires its lease (what a drained edge does on exit).
    pub async fn retire_edge(&self, edge: &EdgeId) {
        self.publish_session(&SessionKey::Edge(edge.clone()), None)
            .await;
    }

    pub async fn tombstone_route(&self, user: &UserId, edge: &EdgeId) {
        self.publish_session(&SessionKey::Route(user.clone(), edge.clone()), None)
            .await;
    }

    /// Creates the conversation in Cassandra (the first member creates it).
    pub async fn create_conversation(&self, conversation: &ConversationId, members: &[UserId]) {
        let outcome = self
            .store
            .create_conversation(&NewConversation {
                conversation_id: conversation.clone(),
                title: None,
                created_by: members[0].clone(),
                members: members.to_vec(),
                created_at_ms: now_unix_ms(),
            })
            .await
            .expect("conversation created");
        assert!(matches!(outcome, CreateOutcome::Created { .. }));
    }

    /// Removes `user` from the store, then publishes the membership record,
    /// as the API does.
    pub async fn remove_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        actor: &UserId,
    ) {
        self.store
            .remove_member(conversation, user)
            .await
            .expect("member removed");
        let record = MembershipRecord {
            schema_version: SCHEMA_VERSION,
            conversation_id: conversation.clone(),
            change: MembershipChange::Removed {
                user_id: user.clone(),
            },
            actor_id: actor.clone(),
            ts: now_unix_ms(),
        };
        self.producer
            .send_json(
                &self.topics.membership,
                conversation.as_str(),
                &record,
                SEND_DEADLINE,
            )
            .await
            .expect("membership record published");
    }

    pub fn message(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        body: &str,
    ) -> MessageRecord {
        let message_id = self.ids.lock().unwrap().next_id(now_unix_ms());
        MessageRecord::builder(message_id, conversation)
            .sender(sender)
            .client_msg_id(format!("c{message_id}"))
            .body(body)
            .ts(now_unix_ms())
            .edge("edge-producer")
            .build()
    }

    pub async fn send(&self, record: &MessageRecord) {
        self.producer
            .send_json(
                &self.topics.messages,
                record.conversation_id.as_str(),
                record,
                SEND_DEADLINE,
            )
            .await
            .expect("message published");
    }

    /// Sends one message and returns its id.
    pub async fn send_message(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        body: &str,
    ) -> MessageId {
        let record = self.message(conversation, sender, body);
        self.send(&record).await;
        record.message_id
    }

    pub async fn send_event(&self, key: &str, event: Event) {
        let record = EventRecord {
            schema_version: SCHEMA_VERSION,
            event,
            ts: now_unix_ms(),
        };
        self.producer
            .send_json(&self.topics.events, key, &record, SEND_DEADLINE)
            .await
            .expect("event published");
    }

    pub async fn send_raw(&self, topic: &str, key: &str, payload: &[u8]) {
        self.producer
            .send_bytes(topic, key, Some(payload), SEND_DEADLINE)
            .await
            .expect("raw record published");
    }
}

/// A running worker with its own health, shutdown and registry.
pub struct Worker {
    pub worker: FanoutWorker,
    pub health: Health,
    pub shutdown: Shutdown,
    pub registry: Registry,
}

impl Worker {
    pub async fn ready(&self) {
        let health = self.health.clone();
        eventually("the worker is ready", WAIT, || {
            assert!(health.is_live(), "the worker failed: {health:?}");
            health.is_ready()
        })
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.worker.join().await.expect("worker stops cleanly");
    }
}

/// Member lists a fake edge holds, by (conversation, member set).
type HeldMemberSets = Arc<Mutex<HashMap<(String, u64), Vec<String>>>>;

/// A real gRPC `EdgePush` server that records what it receives.
#[derive(Clone)]
pub struct FakeEdge {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<PushBatch>>>,
    member_sets: HeldMemberSets,
    stop: Shutdown,
    gate_open: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<AtomicUsize>,
}

/// Holds every push that carries an item of one conversation until opened
/// (a stalled edge, for that conversation only).
#[derive(Clone)]
struct Gate {
    conversation_id: String,
    open: tokio::sync::watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Recorder {
    received: Arc<Mutex<Vec<PushBatch>>>,
    delay: Duration,
    gate: Option<Gate>,
    /// Member sets held, as a real edge keeps them: (conversation, set).
    member_sets: HeldMemberSets,
}

#[tonic::async_trait]
impl EdgePush for Recorder {
    async fn push(
        &self,
        request: tonic::Request<PushBatch>,
    ) -> Result<tonic::Response<PushReply>, tonic::Status> {
        let batch = request.into_inner();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(gate) = &self.gate
            && batch
                .items
                .iter()
                .any(|item| item.conversation_id == gate.conversation_id)
        {
            gate.held.fetch_add(1, Ordering::SeqCst);
            let mut open = gate.open.clone();
            let _ = open.wait_for(|open| *open).await;
            gate.held.fetch_sub(1, Ordering::SeqCst);
        }
        // Member sets: kept when attached, refused (nothing recorded) when
        // referenced and unknown, like a real edge.
        let mut unknown_member_sets: Vec<MemberSetRef> = Vec::new();
        let mut delivered: usize = 0;
        {
            let mut sets = self.member_sets.lock().unwrap();
            for item in &batch.items {
                if item.member_set == 0 {
                    delivered += item.recipients.len();
                    continue;
                }
                let key = (item.conversation_id.clone(), item.member_set);
                if !item.member_set_members.is_empty() {
                    sets.insert(key.clone(), item.member_set_members.clone());
                }
                match sets.get(&key) {
                    Some(members) => delivered += members.len(),
                    None => unknown_member_sets.push(MemberSetRef {
                        conversation_id: key.0,
                        member_set: key.1,
                    }),
                }
            }
        }
        if !unknown_member_sets.is_empty() {
            return Ok(tonic::Response::new(PushReply {
                unknown_member_sets,
                ..PushReply::default()
            }));
        }
        self.received.lock().unwrap().push(batch);
        Ok(tonic::Response::new(PushReply {
            delivered_sessions: delivered as u32,
            absent_recipients: 0,
            unknown_member_sets: Vec::new(),
        }))
    }
}

impl FakeEdge {
    pub async fn start() -> Self {
        Self::start_with_delay(Duration::ZERO).await
    }

    /// An edge that takes `delay` to answer each push.
    pub async fn start_with_delay(delay: Duration) -> Self {
        Self::start_with(delay, None).await
    }

    /// An edge that holds every push carrying an item of `conversation`
    /// until [`FakeEdge::open_gate`].
    pub async fn start_gated(conversation: &ConversationId) -> Self {
        Self::start_with(Duration::ZERO, Some(conversation.as_str().to_owned())).await
    }

    async fn start_with(delay: Duration, gated_conversation: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Shutdown::new();
        let (gate_open, open) = tokio::sync::watch::channel(false);
        let held = Arc::new(AtomicUsize::new(0));
        let gate = gated_conversation.map(|conversation_id| Gate {
            conversation_id,
            open,
            held: held.clone(),
        });
        let member_sets = Arc::new(Mutex::new(HashMap::new()));
        let service = EdgePushServer::new(Recorder {
            received: received.clone(),
            delay,
            gate,
            member_sets: member_sets.clone(),
        });
        let until = stop.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move { until.cancelled().await },
                )
                .await
                .expect("fake edge serves");
        });
        Self {
            addr,
            received,
            member_sets,
            stop,
            gate_open: Arc::new(gate_open),
            held,
        }
    }

    /// Drops every member set held (what a restarted edge has).
    pub fn forget_member_sets(&self) {
        self.member_sets.lock().unwrap().clear();
    }

    /// Pushes held at the gate right now.
    pub fn held_pushes(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Lets held and later pushes through.
    pub fn open_gate(&self) {
        self.gate_open.send_replace(true);
    }

    pub fn push_addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn batches(&self) -> Vec<PushBatch> {
        self.received.lock().unwrap().clone()
    }

    pub fn push_count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Every item received, in arrival order.
    pub fn items(&self) -> Vec<PushItem> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|batch| batch.items.iter().cloned())
            .collect()
    }

    /// Message ids received (with duplicates), in arrival order.
    pub fn message_ids(&self) -> Vec<String> {
        self.items()
            .into_iter()
            .filter(|item| item.op == "message")
            .map(|item| item.message_id)
            .collect()
    }

    pub fn distinct_message_ids(&self) -> HashSet<String> {
        self.message_ids().into_iter().collect()
    }

    /// Items of `message_id`.
    pub fn items_of(&self, message_id: &MessageId) -> Vec<PushItem> {
        let wanted = message_id.to_string();
        self.items()
            .into_iter()
            .filter(|item| item.message_id == wanted)
            .collect()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// An address where nothing listens (connection refused).
pub async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// An address that accepts TCP connections and never answers (a wedged
/// edge): pushes to it can only time out.
pub async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr.to_string()
}

pub fn sorted_recipients(item: &PushItem) -> Vec<String> {
    let mut recipients = item.recipients.clone();
    recipients.sort();
    recipients
}

pub fn names(users: &[&UserId]) -> Vec<String> {
    let mut list: Vec<String> = users.iter().map(|user| user.to_string()).collect();
    list.sort();
    list
}
