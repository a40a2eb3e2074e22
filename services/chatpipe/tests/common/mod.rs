//! The end-to-end harness: real Kafka and Cassandra (and OpenSearch where a
//! test needs it), chatpipe's roles started in-process on port 0 through
//! the same [`chatpipe::roles::spawn`] as the binary (public and ops
//! listeners included), and a WebSocket test client that speaks the
//! contract's frames over [`chatpipe_client`] (the Rust client the load
//! generator uses too), asserting as it reads (`seq` increases).
//!
//! Each test gets its own Kafka topic prefix and unique ids, so tests run in
//! parallel on the shared engines without seeing each other's records.

#![allow(dead_code)]

use std::time::Duration;

use std::net::SocketAddr;

use chatpipe::roles::{
    self, ApiHandle, PersistHandle, RoleContext, RoleDeps, RoleHandle, defaults,
};
use chatpipe_cassandra::{CassandraConfig, CassandraStore, NewConversation};
use chatpipe_client::http::{ApiRequest, ApiResponse, HttpError};
use chatpipe_client::{ApiClient, ConnectError, ConnectOptions, Connection, Received, Resume};
use chatpipe_core::auth::TokenKeys;
use chatpipe_core::records::TopicNames;
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ConversationId, EdgeId, UserId};
use chatpipe_edge::{EdgeConfig, EdgeHandle};
use chatpipe_fanout::FanoutWorker;
use chatpipe_index::IndexWorker;
use chatpipe_kafka::topology::{DEFAULT_TOPICS_JSON, TopicsFile};
use chatpipe_kafka::{KafkaConfig, StartAt, TailConsumer, TailEvent, TailOptions};
use chatpipe_runtime::Shutdown;
use chatpipe_search::SearchEngineConfig;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// An engine address from the binary's own variable (the same names as
/// `chatpipe --help`), else the contract's default.
pub fn engine_env(variable: &str, default: &str) -> String {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Any free loopback port: where the tests' ops listeners bind.
pub const ANY_PORT: &str = "127.0.0.1:0";

static SCHEMA: OnceCell<()> = OnceCell::const_new();

/// One isolated deployment on the shared engines.
pub struct Stack {
    pub kafka: KafkaConfig,
    pub topics: TopicNames,
    pub prefix: String,
    pub store: CassandraStore,
    pub keys: TokenKeys,
    /// The token secret `keys` come from, for roles run as processes.
    pub secret: String,
    pub root: Shutdown,
    /// The search engine and index names of this deployment.
    pub search: SearchEngineConfig,
}

pub fn unique(label: &str) -> String {
    format!(
        "{label}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl Stack {
    pub async fn new() -> Stack {
        Stack::on_kafka(&engine_env(
            "CHATPIPE_KAFKA_BROKERS",
            defaults::KAFKA_BROKERS,
        ))
        .await
    }

    /// A deployment whose Kafka is `brokers` (a test's private cluster),
    /// with the shared Cassandra and OpenSearch.
    pub async fn on_kafka(brokers: &str) -> Stack {
        chatpipe_runtime::telemetry::init();
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let kafka = KafkaConfig::new(brokers, format!("e2e-{prefix}"));
        let mut file = TopicsFile::parse(DEFAULT_TOPICS_JSON)
            .expect("topology parses")
            .with_prefix(&prefix);
        for topic in &mut file.topics {
            topic.partitions = topic.partitions.min(4);
        }
        chatpipe_kafka::topology::apply(&kafka, &file)
            .await
            .expect("kafka reachable at 127.0.0.1:9092 (topology/engines.sh up)");
        let config = CassandraConfig {
            contact_points: engine_env("CHATPIPE_CASSANDRA", defaults::CASSANDRA)
                .split(',')
                .map(str::to_owned)
                .collect(),
            ..CassandraConfig::default()
        };
        let store = CassandraStore::connect(&config)
            .await
            .expect("cassandra reachable at 127.0.0.1:9042 (topology/engines.sh up)");
        SCHEMA
            .get_or_init(|| async {
                store.apply_schema().await.expect("schema applies");
            })
            .await;
        // A fresh random secret per test: no secret is built into the
        // tests either.
        let secret = uuid::Uuid::new_v4().simple().to_string();
        Stack {
            kafka,
            topics: TopicNames::with_prefix(&prefix),
            store,
            keys: TokenKeys::from_configured_secret(secret.as_bytes())
                .expect("a random secret is accepted"),
            secret,
            root: Shutdown::new(),
            search: SearchEngineConfig {
                url: engine_env("CHATPIPE_ELASTICSEARCH_URL", defaults::ELASTICSEARCH_URL),
                index_prefix: format!("{}-chat-messages", prefix.trim_end_matches('.')),
                number_of_shards: 1,
                ..SearchEngineConfig::default()
            },
            prefix,
        }
    }

    /// What every role of this deployment shares.
    pub fn deps(&self) -> RoleDeps {
        RoleDeps {
            kafka: self.kafka.clone(),
            topics: self.topics.clone(),
            store: self.store.clone(),
            search: self.search.clone(),
            token_keys: self.keys.clone(),
            push_key: self.keys.derived_push_key(),
            jwks: None,
        }
    }

    /// Where a role of this stack starts: under the stack's shutdown, its
    /// ops listener on any free loopback port.
    pub fn context(&self) -> RoleContext {
        RoleContext::new(&self.root, ANY_PORT.parse().expect("valid address"))
    }

    pub fn token(&self, user: &str) -> String {
        let user = UserId::parse(user).expect("valid user id");
        self.keys.sign(&user, now_unix_ms() / 1000, 3600)
    }

    /// Creates a conversation directly in the store.
    pub async fn conversation(&self, members: &[&str]) -> ConversationId {
        let conversation_id = ConversationId::parse(unique("c")).expect("valid id");
        let members: Vec<UserId> = members
            .iter()
            .map(|member| UserId::parse(*member).unwrap())
            .collect();
        self.store
            .create_conversation(&NewConversation {
                conversation_id: conversation_id.clone(),
                title: None,
                created_by: members[0].clone(),
                members,
                created_at_ms: now_unix_ms(),
            })
            .await
            .expect("conversation created");
        conversation_id
    }

    pub fn edge_config(&self, name: &str) -> EdgeConfig {
        EdgeConfig {
            edge_id: EdgeId::parse(format!("{}{name}", self.prefix.trim_end_matches('.'))).unwrap(),
            // Claimed at start: the edges of a test never share one.
            worker_id: None,
            http_addr: "127.0.0.1:0".parse().unwrap(),
            push_addr: "127.0.0.1:0".parse().unwrap(),
            topics: self.topics.clone(),
            drain_deadline_ms: 5_000,
            ..EdgeConfig::default()
        }
    }

    /// A push client of `edge` that presents this stack's push key, as a
    /// fan-out worker of the deployment does.
    pub async fn push_client(
        &self,
        edge: &EdgeHandle,
    ) -> chatpipe_proto::auth::AuthenticatedPushClient {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", edge.push_addr))
            .expect("valid push address")
            .connect()
            .await
            .expect("push connects");
        chatpipe_proto::auth::authenticated_client(channel, &self.keys.derived_push_key())
    }

    /// Starts an edge; cancelling the returned shutdown drains it.
    pub async fn edge(&self, config: EdgeConfig) -> (RoleHandle<EdgeHandle>, Shutdown) {
        let handle = roles::spawn(config, &self.deps(), self.context())
            .await
            .expect("edge starts");
        let shutdown = handle.shutdown().clone();
        (handle, shutdown)
    }
}

impl Stack {
    /// Starts a fan-out worker in `group`; returns it once it is ready
    /// (routes caught up, consumer running).
    pub async fn fanout(&self, group: &str) -> (RoleHandle<FanoutWorker>, Shutdown) {
        let config = chatpipe_fanout::FanoutConfig {
            group_id: group.to_owned(),
            worker_id: unique("fanout"),
            topics: self.topics.clone(),
            ..Default::default()
        };
        let worker = roles::spawn(config, &self.deps(), self.context())
            .await
            .expect("fanout starts");
        eventually("fanout ready", WAIT, || {
            let ready = worker.health().is_ready();
            async move { ready.then_some(()) }
        })
        .await;
        let shutdown = worker.shutdown().clone();
        (worker, shutdown)
    }

    /// Waits until `worker` routes `user` to `edges` live edges.
    pub async fn routed(&self, worker: &chatpipe_fanout::FanoutWorker, user: &str, edges: usize) {
        let user = UserId::parse(user).unwrap();
        eventually("route known to fan-out", WAIT, || {
            let found = worker.routes().live_edges(&user).len();
            async move { (found == edges).then_some(()) }
        })
        .await;
    }
}

/// The HTTP API, with search, and the history and search consumers.
pub struct FullStack {
    pub client: ApiClient,
    pub index_prefix: String,
    /// The running roles; they stop with the stack's shutdown.
    pub api_role: RoleHandle<ApiHandle>,
    pub persist: RoleHandle<PersistHandle>,
    pub index: RoleHandle<IndexWorker>,
}

impl Stack {
    /// Starts the API (with `/v1/search`), the persist and index roles.
    pub async fn full(&self) -> FullStack {
        let client = chatpipe_search::EsClient::new(&self.search).expect("search client");
        chatpipe_search::template::apply_template(&client, &self.search)
            .await
            .expect("opensearch reachable at 127.0.0.1:9200 (topology/engines.sh up)");
        let deps = self.deps();
        let api_config = chatpipe_api::ApiConfig {
            listen_addr: ANY_PORT.into(),
            ..Default::default()
        };
        let api_role = roles::spawn(api_config, &deps, self.context())
            .await
            .expect("api starts");
        let persist = self.persist(&unique("persist")).await;
        let index_config = chatpipe_index::IndexConfig {
            group_id: unique("index"),
            topics: self.topics.clone(),
            engine: self.search.clone(),
            ..Default::default()
        };
        let index = roles::spawn(index_config, &deps, self.context())
            .await
            .expect("index starts");
        FullStack {
            client: ApiClient::new(&format!("http://{}", api_role.addr)),
            index_prefix: self.search.index_prefix.clone(),
            api_role,
            persist,
            index,
        }
    }
}

impl Stack {
    /// Starts a persist role in consumer group `group` (a second one in
    /// the same group, after the first stopped, resumes where it left off).
    pub async fn persist(&self, group: &str) -> RoleHandle<PersistHandle> {
        let config = chatpipe_persist::PersistConfig {
            group_id: group.to_owned(),
            ..Default::default()
        };
        roles::spawn(config, &self.deps(), self.context())
            .await
            .expect("persist starts")
    }
}

/// `GET http://addr/path`: (status, body text).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A call's status and JSON body (`Null` when empty or not JSON); panics
/// when the API did not answer.
pub fn answered(result: Result<ApiResponse, HttpError>) -> (u16, Value) {
    match result {
        Ok(response) => (response.status.as_u16(), response.body),
        Err(HttpError::NotJson { status, .. }) => (status.as_u16(), Value::Null),
        Err(error) => panic!("api answers: {error}"),
    }
}

impl FullStack {
    /// `request` as `token`: (status, JSON body).
    pub async fn call(&self, token: &str, request: &ApiRequest<'_>) -> (u16, Value) {
        answered(self.client.send(token, request).await)
    }

    /// `GET path` as `token`: (status, JSON body).
    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.call(token, &ApiRequest::get(path)).await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(token, &ApiRequest::post(path, &body)).await
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(token, &ApiRequest::patch(path, &body)).await
    }

    /// `POST /v1/conversations` with `body` as `token`: the new
    /// conversation's id; panics unless the API answered 200 or 201.
    pub async fn create_conversation(&self, token: &str, body: Value) -> String {
        let (status, created) = self.post(token, "/v1/conversations", body).await;
        assert!(status == 201 || status == 200, "{created}");
        created["conversation_id"].as_str().unwrap().to_owned()
    }

    /// The newest 200 messages of `conversation` as `token` reads them,
    /// oldest first (pages come newest first); panics unless the read is a
    /// 200.
    pub async fn latest_history(&self, token: &str, conversation: &str) -> Vec<Value> {
        let path = chatpipe_client::http::history_path(
            conversation,
            200,
            chatpipe_client::http::HistoryCursor::Newest,
        );
        let (status, page) = self.get(token, &path).await;
        assert_eq!(status, 200, "{page}");
        let mut messages = page["messages"].as_array().cloned().unwrap_or_default();
        messages.reverse();
        messages
    }

    pub async fn delete(&self, token: &str, path: &str) -> u16 {
        self.call(token, &ApiRequest::delete(path)).await.0
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

/// A WebSocket client of the contract, for assertions: frames as JSON
/// values, kept until a `wait_for` consumes them.
#[derive(Debug)]
pub struct Client {
    pub connection: Connection,
    pub session_id: String,
    pub resumed: bool,
    /// Highest `seq` seen.
    pub last_seq: u64,
    /// Frames read but not yet consumed by a `wait_for`.
    pub pending: Vec<Value>,
}

pub const WAIT: Duration = Duration::from_secs(20);

pub fn ws_url(edge: &EdgeHandle) -> String {
    format!("ws://{}/ws", edge.http_addr)
}

/// Outcome of a connection attempt that the edge may refuse.
#[derive(Debug)]
pub enum Connect {
    Accepted(Box<Client>),
    Closed { code: u16, reason: String },
}

impl Client {
    pub async fn connect(edge: &EdgeHandle, token: &str) -> Client {
        let url = chatpipe_client::ws::connect_url(&ws_url(edge), token, None);
        match Client::try_connect(&url).await {
            Connect::Accepted(client) => *client,
            Connect::Closed { code, reason } => panic!("connection refused: {code} {reason}"),
        }
    }

    pub async fn resume(edge: &EdgeHandle, token: &str, session_id: &str, last_seq: u64) -> Client {
        let resume = Resume {
            session_id: session_id.to_owned(),
            last_seq,
        };
        let url = chatpipe_client::ws::connect_url(&ws_url(edge), token, Some(&resume));
        match Client::try_connect(&url).await {
            Connect::Accepted(client) => *client,
            Connect::Closed { code, reason } => panic!("resume refused: {code} {reason}"),
        }
    }

    pub async fn try_connect(url: &str) -> Connect {
        Client::try_connect_with(url, &[]).await
    }

    /// [`Client::try_connect`] with extra request headers (a proxy's
    /// `X-Forwarded-For`, an `Authorization`).
    pub async fn try_connect_with(url: &str, headers: &[(&'static str, String)]) -> Connect {
        let options = ConnectOptions {
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
            hello_timeout: WAIT,
            ..ConnectOptions::default()
        };
        match Connection::connect(url, &options).await {
            Ok(connection) => {
                let hello = connection.hello();
                Connect::Accepted(Box::new(Client {
                    session_id: hello.session_id.to_string(),
                    resumed: hello.resumed,
                    connection,
                    last_seq: 0,
                    pending: Vec::new(),
                }))
            }
            Err(ConnectError::Refused { code, reason }) => Connect::Closed { code, reason },
            Err(other) => panic!("no hello and no refusal: {other}"),
        }
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.connection.send_text(text).await.expect("send frame");
    }

    /// Reads one frame (skipping pings), or `None` on close or timeout.
    pub async fn read_frame(&mut self, timeout: Duration) -> Option<Value> {
        let next = tokio::time::timeout(timeout, self.connection.recv())
            .await
            .ok()?;
        match next {
            Received::Text(text) => {
                let frame: Value =
                    serde_json::from_str(text.as_str()).expect("server frames are JSON");
                if let Some(seq) = frame["seq"].as_u64() {
                    assert!(
                        seq > self.last_seq,
                        "seq must increase: {seq} after {}",
                        self.last_seq
                    );
                    self.last_seq = seq;
                }
                Some(frame)
            }
            Received::Closed(close) => {
                let (code, reason) = close.map(|close| (close.code, close.reason)).unzip();
                self.pending
                    .push(json!({"op": "__close", "code": code, "reason": reason}));
                None
            }
            Received::Lost => None,
        }
    }

    /// Waits for the first frame matching `matches`; keeps the others.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(position) = self.pending.iter().position(&matches) {
            return self.pending.remove(position);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Some(frame) if matches(&frame) => return frame,
                Some(frame) => self.pending.push(frame),
                None => panic!(
                    "no {what} before the deadline or close; pending: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Sends any frame and returns the answer that refers to `reference`.
    pub async fn send_message_raw(&mut self, frame: Value, reference: &str) -> Value {
        self.send_json(frame).await;
        let reference = reference.to_owned();
        self.wait_for("answer", move |frame| {
            frame["client_msg_id"] == reference.as_str() || frame["ref"] == reference.as_str()
        })
        .await
    }

    pub async fn socket_send_binary(&mut self) {
        self.connection
            .send_binary(vec![1, 2, 3])
            .await
            .expect("send binary");
    }

    /// Sends a message and returns the edge's answer for it (`ack` or `error`).
    pub async fn send_message(
        &mut self,
        conversation: &str,
        client_msg_id: &str,
        body: &str,
    ) -> Value {
        self.connection
            .send_message(conversation, client_msg_id, body)
            .await
            .expect("send frame");
        let reference = client_msg_id.to_owned();
        self.wait_for("ack or error", move |frame| {
            (frame["op"] == "ack" && frame["client_msg_id"] == reference.as_str())
                || (frame["op"] == "error" && frame["ref"] == reference.as_str())
        })
        .await
    }

    /// Collects `message` frames of `conversation` until `count` distinct
    /// message ids arrived (duplicates are dropped, as clients must).
    pub async fn messages(&mut self, conversation: &str, count: usize) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        let mut messages = Vec::new();
        let mut kept = Vec::new();
        for frame in std::mem::take(&mut self.pending) {
            if frame["op"] == "message" && frame["message"]["conversation_id"] == conversation {
                if seen.insert(frame["message"]["message_id"].as_str().unwrap().to_owned()) {
                    messages.push(frame["message"].clone());
                }
            } else {
                kept.push(frame);
            }
        }
        self.pending = kept;
        let deadline = tokio::time::Instant::now() + WAIT;
        while messages.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Some(frame)
                    if frame["op"] == "message"
                        && frame["message"]["conversation_id"] == conversation =>
                {
                    if seen.insert(frame["message"]["message_id"].as_str().unwrap().to_owned()) {
                        messages.push(frame["message"].clone());
                    }
                }
                Some(frame) => self.pending.push(frame),
                None => panic!("only {} of {count} messages arrived", messages.len()),
            }
        }
        messages
    }

    pub async fn ack_seq(&mut self) {
        self.connection
            .ack_seq(self.last_seq)
            .await
            .expect("send frame");
    }
}

/// The `message_id` of each message (of a history page or of deliveries).
pub fn message_ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["message_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The message ids a search page found, in its order.
pub fn hit_ids(page: &Value) -> Vec<String> {
    let hits = page["hits"].as_array().expect("a search page lists hits");
    let messages: Vec<Value> = hits.iter().map(|hit| hit["message"].clone()).collect();
    message_ids(&messages)
}

/// Every record of `topic`, read from the beginning until `count` arrived.
pub async fn read_topic(stack: &Stack, topic: &str, count: usize) -> Vec<(i32, String, Value)> {
    let tail = TailConsumer::new(
        &stack.kafka,
        &unique("reader"),
        topic,
        &TailOptions::default(),
    )
    .unwrap();
    tail.assign(&StartAt::Beginning).await.unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.len() < count {
        let event = tokio::time::timeout_at(deadline, tail.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} records in {topic}", records.len()))
            .unwrap();
        let TailEvent::Record(message) = event else {
            continue;
        };
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        records.push((message.partition(), key, value));
    }
    records
}

/// The `message_id`s of messages (as frames or history carry them), in order.
pub fn ids(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["message_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Pushes one `presence` frame per body to `recipients` on `edge`, with
/// the deployment's push key, as a fan-out worker would.
pub async fn push(
    stack: &Stack,
    edge: &chatpipe_edge::EdgeHandle,
    recipients: &[&str],
    bodies: &[String],
) {
    push_batch(stack, edge, recipients, bodies, false).await;
}

/// [`push`], with the batch's `resync` flag set as given.
pub async fn push_batch(
    stack: &Stack,
    edge: &chatpipe_edge::EdgeHandle,
    recipients: &[&str],
    bodies: &[String],
    resync: bool,
) {
    let mut client = stack.push_client(edge).await;
    let items = bodies
        .iter()
        .map(|body| chatpipe_proto::push::PushItem {
            op: "presence".into(),
            fields_json: json!({"user_id": "system", "status": body}).to_string(),
            recipients: recipients
                .iter()
                .map(|recipient| (*recipient).to_owned())
                .collect(),
            conversation_id: String::new(),
            message_id: String::new(),
            ..chatpipe_proto::push::PushItem::default()
        })
        .collect();
    client
        .push(chatpipe_proto::push::PushBatch {
            source: "test".into(),
            items,
            resync,
            ..Default::default()
        })
        .await
        .expect("push accepted");
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
