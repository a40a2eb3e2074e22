//! The HTTP API in-process on 127.0.0.1:0, against the real Cassandra and
//! Kafka. Fails, never skips, when an engine is unreachable.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use chatpipe::roles::{self, RoleContext, RoleDeps};
use chatpipe_api::{ApiConfig, ApiMetrics};
use chatpipe_cassandra::bucket::{bucket_of_unix_ms, bucket_start_unix_ms};
use chatpipe_cassandra::{CassandraStore, CreateOutcome, NewConversation};
use chatpipe_client::ApiClient;
use chatpipe_client::http::ApiRequest;
use chatpipe_core::auth::TokenKeys;
use chatpipe_core::ids::{ConversationId, MessageId, MessageIdGenerator, UserId};
use chatpipe_core::membership::Role;
use chatpipe_core::records::{
    MembershipChange, MembershipRecord, MessageRecord, SCHEMA_VERSION, TopicNames,
};
use chatpipe_core::store::MembershipStore;
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::consumer::{ConsumerSettings, group_consumer};
use chatpipe_kafka::{ConsumerMetrics, KafkaConfig};
use chatpipe_runtime::Shutdown;
use chatpipe_search::SearchEngineConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    unique: String,
    base: String,
    http: reqwest::Client,
    /// The contract's client, for the calls of a user.
    client: ApiClient,
    keys: TokenKeys,
    store: CassandraStore,
    kafka: KafkaConfig,
    topics: TopicNames,
    metrics: ApiMetrics,
    /// The role's ops listener (`/metrics`, `/healthz`, `/readyz`).
    ops: String,
    _shutdown: ShutdownOnDrop,
}

struct ShutdownOnDrop(Shutdown);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn start(config: ApiConfig) -> Api {
    start_with_producer_brokers(config, None).await
}

/// `producer_brokers` points the membership producer elsewhere (a dead
/// address, to see 503s) without touching the shared engines.
async fn start_with_producer_brokers(config: ApiConfig, producer_brokers: Option<&str>) -> Api {
    let config = ApiConfig {
        listen_addr: "127.0.0.1:0".into(),
        ..config
    };
    try_start(config, producer_brokers)
        .await
        .expect("the api starts")
}

/// Starts the role at `config.listen_addr` as given (the refusals of
/// development mode are tested through it).
async fn try_start(
    config: ApiConfig,
    producer_brokers: Option<&str>,
) -> Result<Api, chatpipe::roles::RoleError> {
    let chatpipe_testkit::IsolatedTopics {
        unique,
        kafka,
        topics,
    } = chatpipe_testkit::isolated_topics("api-test", 1).await;
    let store = chatpipe_testkit::cassandra_store().await;
    let keys = TokenKeys::from_configured_secret(format!("secret-{unique}").as_bytes()).unwrap();
    // The role is started the way the binary starts it (chatpipe::roles),
    // with its ops listener on a free loopback port.
    let deps = RoleDeps {
        kafka: producer_brokers.map_or_else(
            || kafka.clone(),
            |brokers| KafkaConfig::new(brokers, "api-test-dead"),
        ),
        topics: topics.clone(),
        store: store.clone(),
        search: SearchEngineConfig::default(),
        token_keys: keys.clone(),
        push_key: keys.derived_push_key(),
        jwks: None,
    };
    let shutdown = Shutdown::new();
    let role = roles::spawn(
        config,
        &deps,
        RoleContext::new(&shutdown, "127.0.0.1:0".parse().unwrap()),
    )
    .await?;
    let address: SocketAddr = role.addr;
    let metrics = role.metrics().clone();
    let ops = format!("http://{}", role.ops_addr());
    Ok(Api {
        unique,
        base: format!("http://{address}"),
        http: reqwest::Client::new(),
        client: ApiClient::new(&format!("http://{address}")),
        keys,
        store,
        kafka,
        topics,
        metrics,
        ops,
        _shutdown: ShutdownOnDrop(shutdown),
    })
}

impl Api {
    fn user(&self, name: &str) -> UserId {
        UserId::parse(format!("{name}-{}", self.unique)).unwrap()
    }

    fn token(&self, user: &UserId) -> String {
        self.keys.sign(user, now_unix_ms() / 1000, 3600)
    }

    async fn call(
        &self,
        user: &UserId,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = ApiRequest::new(method, path);
        request.body = body.as_ref();
        let response = self
            .client
            .send(&self.token(user), &request)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        (response.status, response.body)
    }

    async fn get(&self, user: &UserId, path: &str) -> (StatusCode, Value) {
        self.call(user, reqwest::Method::GET, path, None).await
    }

    async fn post(&self, user: &UserId, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(user, reqwest::Method::POST, path, Some(body))
            .await
    }

    async fn delete(&self, user: &UserId, path: &str) -> (StatusCode, Value) {
        self.call(user, reqwest::Method::DELETE, path, None).await
    }
}

fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    chatpipe_testkit::assert_api_error(status.as_u16(), body, expected_status, code);
}

#[tokio::test]
async fn conversations_and_membership_both_ways_with_events() {
    let api = start(ApiConfig::default()).await;
    let (alice, bob, carol, dave) = (
        api.user("alice"),
        api.user("bob"),
        api.user("carol"),
        api.user("dave"),
    );

    let (status, created) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()], "title": "Trip"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = ConversationId::parse(created["conversation_id"].as_str().unwrap()).unwrap();

    let (status, listed) = api.get(&bob, "/v1/conversations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(listed["conversations"][0]["conversation_id"], id.as_str());
    assert_eq!(listed["conversations"][0]["title"], "Trip");
    assert_eq!(listed["conversations"][0]["member_count"], 2);
    assert_eq!(listed["conversations"][0]["created_by"], alice.as_str());

    let members_path = format!("/v1/conversations/{id}/members");
    // An outsider is told the conversation does not exist (was 403: an
    // existence oracle).
    let (status, body) = api
        .post(&dave, &members_path, json!({"user_id": dave.as_str()}))
        .await;
    assert_error(status, &body, 404, "not_found");
    // Set-up (issue 11: only owners and admins add): bob is made an admin
    // in the store directly, so that no record is published for it.
    assert!(api.store.set_role(&id, &bob, Role::Admin).await.unwrap());
    let (status, body) = api
        .post(&bob, &members_path, json!({"user_id": carol.as_str()}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"conversation_id": id.as_str(), "user_id": carol.as_str(), "role": "member"})
    );
    assert!(api.store.is_member(&id, &carol).await.unwrap());
    assert_eq!(
        api.store.conversations_of(&carol).await.unwrap(),
        vec![id.clone()]
    );

    let (status, body) = api.delete(&dave, &format!("{members_path}/{bob}")).await;
    assert_error(status, &body, 404, "not_found");
    // An outsider "leaving": 404, and no record is published (checked below).
    let (status, body) = api.delete(&dave, &format!("{members_path}/{dave}")).await;
    assert_error(status, &body, 404, "not_found");
    // Only the owner (the creator) removes others (carol removing bob was
    // allowed before): a member removing the creator or another member is
    // refused.
    for target in [&alice, &bob] {
        let (status, body) = api
            .delete(&carol, &format!("{members_path}/{target}"))
            .await;
        assert_error(status, &body, 403, "forbidden");
    }
    assert!(api.store.is_member(&id, &alice).await.unwrap());
    assert!(api.store.is_member(&id, &bob).await.unwrap());
    let (status, _) = api.delete(&alice, &format!("{members_path}/{bob}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!api.store.is_member(&id, &bob).await.unwrap());
    assert!(api.store.conversations_of(&bob).await.unwrap().is_empty());
    let (_, listed) = api.get(&bob, "/v1/conversations").await;
    assert_eq!(listed, json!({"conversations": []}));
    // Leaving; leaving again is a 404 (no longer a member) and publishes
    // nothing. Set-up (issue 11: the last owner hands over before leaving):
    // carol is made an owner in the store directly, publishing nothing.
    assert!(api.store.set_role(&id, &carol, Role::Owner).await.unwrap());
    let (status, _) = api.delete(&alice, &format!("{members_path}/{alice}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = api.delete(&alice, &format!("{members_path}/{alice}")).await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(
        api.store
            .members(&id)
            .await
            .unwrap()
            .map(|members| members.into_iter().collect::<BTreeSet<_>>()),
        Some(BTreeSet::from([carol.clone()]))
    );
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations/no-such-conversation/members",
            json!({"user_id": dave.as_str()}),
        )
        .await;
    assert_error(status, &body, 404, "not_found");

    // The membership topic holds every change, in order, keyed by id.
    let consumer = group_consumer(
        &api.kafka,
        &ConsumerSettings::new(
            format!("reader-{}", api.unique),
            &[api.topics.membership.as_str()],
        ),
        &ConsumerMetrics::new(),
    )
    .unwrap();
    let mut changes = Vec::new();
    while changes.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("membership records arrive")
            .unwrap();
        assert_eq!(message.key(), Some(id.as_str().as_bytes()));
        let record: MembershipRecord = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(record.schema_version, SCHEMA_VERSION);
        changes.push((record.change, record.actor_id));
    }
    assert_eq!(
        changes,
        vec![
            (
                MembershipChange::Created {
                    members: vec![alice.clone(), bob.clone()],
                    title: Some("Trip".into()),
                    history_visibility: None,
                },
                alice.clone()
            ),
            (
                MembershipChange::Added {
                    user_id: carol.clone()
                },
                bob.clone()
            ),
            (
                MembershipChange::Removed {
                    user_id: bob.clone()
                },
                alice.clone()
            ),
            (
                MembershipChange::Removed {
                    user_id: alice.clone()
                },
                alice.clone()
            ),
        ]
    );
    assert_eq!(api.metrics.membership_records.get(), 4);
    // Nothing more: the refused calls published nothing.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), consumer.recv())
            .await
            .is_err(),
        "a refused call published a record"
    );
}

#[tokio::test]
async fn a_one_to_one_conversation_is_unique_per_pair() {
    let api = start(ApiConfig::default()).await;
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    let (status, first) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["created"], true);
    let (status, second) = api
        .post(
            &bob,
            "/v1/conversations",
            json!({"members": [alice.as_str(), bob.as_str()]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["conversation_id"], first["conversation_id"]);
    assert_eq!(second["created"], false);
    // A titled conversation of the same two is a new group.
    let (status, group) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()], "title": "Project"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(group["conversation_id"], first["conversation_id"]);
    let (_, listed) = api.get(&alice, "/v1/conversations").await;
    assert_eq!(listed["conversations"].as_array().unwrap().len(), 2);
}

fn message(
    conversation: &ConversationId,
    sender: &UserId,
    message_id: MessageId,
    index: usize,
) -> MessageRecord {
    MessageRecord::builder(message_id, conversation)
        .sender(sender)
        .client_msg_id(format!("c{index}"))
        .body(format!("message {index}"))
        .build()
}

fn ids_of(page: &Value) -> Vec<MessageId> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| MessageId::parse(message["message_id"].as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn history_pages_across_buckets_with_limits_and_errors() {
    let api = start(ApiConfig::default()).await;
    let (alice, mallory) = (api.user("alice"), api.user("mallory"));
    let room = ConversationId::parse(format!("room-{}", api.unique)).unwrap();
    // Created two buckets ago; 130 messages just before the last bucket
    // boundary and 130 after it.
    let boundary = bucket_start_unix_ms(bucket_of_unix_ms(now_unix_ms()));
    let outcome = api
        .store
        .create_conversation(&NewConversation {
            conversation_id: room.clone(),
            title: None,
            created_by: alice.clone(),
            members: vec![],
            created_at_ms: boundary - 15 * 24 * 3600 * 1000,
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CreateOutcome::Created { .. }));
    let mut generator = MessageIdGenerator::new(5);
    let mut ids = Vec::new();
    for index in 0..130u64 {
        ids.push(generator.next_id(boundary - 200_000 + index * 1000));
    }
    for index in 0..130u64 {
        ids.push(generator.next_id(boundary + 1000 + index * 10));
    }
    let records: Vec<MessageRecord> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| message(&room, &alice, *id, index))
        .collect();
    api.store.write_messages(&records, 16).await.unwrap();
    let newest_first: Vec<MessageId> = ids.iter().rev().copied().collect();
    let path = format!("/v1/conversations/{room}/messages");

    // Default page: 50 newest.
    let (status, page) = api.get(&alice, &path).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids_of(&page), newest_first[..50].to_vec());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["body"], "message 259");
    assert_eq!(page["messages"][0]["sender_id"], alice.as_str());
    assert_eq!(page["messages"][0]["conversation_id"], room.as_str());
    assert!(page["messages"][0]["ts"].is_u64());
    // The limit is capped at 200.
    let (_, page) = api.get(&alice, &format!("{path}?limit=1000")).await;
    assert_eq!(ids_of(&page).len(), 200);
    // Empty parameters are absent parameters.
    let (status, page) = api
        .get(&alice, &format!("{path}?before=&after=&limit="))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids_of(&page).len(), 50);

    // Scroll back in pages of 45 across the bucket boundary.
    let mut collected = Vec::new();
    let mut query = "limit=45".to_owned();
    loop {
        let (status, page) = api.get(&alice, &format!("{path}?{query}")).await;
        assert_eq!(status, StatusCode::OK);
        let page_ids = ids_of(&page);
        assert!(page_ids.len() <= 45);
        collected.extend(page_ids);
        let Some(next) = page["next_before"].as_str() else {
            assert_eq!(page["has_more"], false);
            break;
        };
        query = format!("limit=45&before={next}");
    }
    assert_eq!(collected, newest_first);

    // Catch up from message 100 (in the older bucket) in pages of 40.
    let mut caught_up: Vec<MessageId> = Vec::new();
    let mut after = ids[100];
    loop {
        let (_, page) = api
            .get(&alice, &format!("{path}?limit=40&after={after}"))
            .await;
        let page_ids = ids_of(&page);
        if page_ids.is_empty() {
            break;
        }
        assert!(
            page_ids.windows(2).all(|pair| pair[0] > pair[1]),
            "newest first"
        );
        caught_up.extend(page_ids.iter().rev());
        after = page_ids[0];
    }
    assert_eq!(caught_up, ids[101..].to_vec());

    // Errors.
    for bad in [
        "before=abc",
        "after=-1",
        "limit=0",
        "limit=many",
        "before=0",
    ] {
        let (status, body) = api.get(&alice, &format!("{path}?{bad}")).await;
        assert_error(status, &body, 400, "invalid");
    }
    // Not a member: exactly the answer for an unknown conversation (was
    // 403, which told an outsider the conversation exists).
    let (status, outsider) = api.get(&mallory, &path).await;
    assert_error(status, &outsider, 404, "not_found");
    let (status, body) = api
        .get(
            &alice,
            &format!("/v1/conversations/unknown-{}/messages", api.unique),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    assert_eq!(outsider, body);
    let (status, body) = api.get(&alice, "/v1/conversations/bad%20id/messages").await;
    assert_error(status, &body, 400, "invalid");
}

#[tokio::test]
async fn input_limits_are_enforced() {
    let api = start(ApiConfig {
        max_body_bytes: 4096,
        max_members_per_request: 5,
        ..ApiConfig::default()
    })
    .await;
    let alice = api.user("alice");
    let too_many: Vec<String> = (0..6).map(|index| format!("u{index}")).collect();
    let (status, body) = api
        .post(&alice, "/v1/conversations", json!({"members": too_many}))
        .await;
    assert_error(status, &body, 413, "too_large");
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [], "title": "x".repeat(5000)}),
        )
        .await;
    assert_error(status, &body, 413, "too_large");
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [], "title": "x".repeat(201)}),
        )
        .await;
    assert_error(status, &body, 400, "invalid");
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": ["not valid!"]}),
        )
        .await;
    assert_error(status, &body, 400, "invalid");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id"),
        "{body}"
    );
    let (status, body) = api
        .post(&alice, "/v1/conversations", json!({"title": "no members"}))
        .await;
    assert_error(status, &body, 400, "invalid");
    let response = api
        .http
        .post(format!("{}/v1/conversations", api.base))
        .bearer_auth(api.token(&alice))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, body) = api.get(&alice, "/v1/no-such-route").await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn each_user_is_rate_limited() {
    let api = start(ApiConfig {
        rate_limit_per_second: 1,
        rate_limit_burst: 3,
        ..ApiConfig::default()
    })
    .await;
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(api.get(&alice, "/v1/conversations").await.0);
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3]);
    assert!(
        statuses[3..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let response = api
        .http
        .get(format!("{}/v1/conversations", api.base))
        .bearer_auth(api.token(&alice))
        .send()
        .await
        .unwrap();
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        assert!(response.headers().get("retry-after").is_some());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    // Another user has their own budget.
    assert_eq!(api.get(&bob, "/v1/conversations").await.0, StatusCode::OK);
}

#[tokio::test]
async fn openapi_and_operational_endpoints_are_served() {
    let api = start(ApiConfig::default()).await;
    let alice = api.user("alice");
    let document: Value = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        document,
        serde_json::from_str::<Value>(chatpipe_api::openapi::OPENAPI_JSON).unwrap()
    );
    // Every documented operation exists in the router (the reverse of the
    // unit test): none of them falls through to the unknown-route 404.
    for (path, item) in document["paths"].as_object().unwrap() {
        if path == "/v1/search" {
            continue; // mounted with the search engine (ApiServer::mount_v1)
        }
        for (method, operation) in item.as_object().unwrap() {
            if operation["x-chatpipe-development-only"] == true {
                continue; // routed only in development mode (tested below)
            }
            let concrete = path
                .replace("{id}", "some-id")
                .replace("{user_id}", "someone");
            let request = api
                .http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}{concrete}", api.base),
                )
                .bearer_auth(api.token(&alice))
                .json(&json!({}));
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such route"),
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
    for path in ["/healthz", "/readyz"] {
        let response = api
            .http
            .get(format!("{}{path}", api.ops))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // Ops endpoints are on the ops listener only, never on the API's port.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let metrics = api
        .http
        .get(format!("{}/metrics", api.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("chatpipe_api_requests_total"), "{metrics}");
    assert!(
        metrics.contains("chatpipe_api_request_latency_seconds"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unavailable_engine_is_a_503_that_leaks_nothing() {
    // Nothing listens on port 1: Kafka never confirms the membership record.
    let api = start_with_producer_brokers(
        ApiConfig {
            kafka_send_timeout_ms: 1_000,
            ..ApiConfig::default()
        },
        Some("127.0.0.1:1"),
    )
    .await;
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()], "title": "t"}),
        )
        .await;
    assert_error(status, &body, 503, "unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.to_lowercase().contains("kafka"),
        "{message}"
    );
    assert_eq!(
        api.metrics.request_count("POST", "/v1/conversations", 503),
        1
    );
}

#[tokio::test]
async fn development_sign_in_exists_only_in_development_mode_on_a_loopback_bind() {
    let dev = start(ApiConfig {
        dev_sign_in: true,
        ..ApiConfig::default()
    })
    .await;
    let alice = dev.user("alice");
    let response = dev
        .http
        .post(format!("{}/v1/dev/token", dev.base))
        .json(&json!({"user_id": alice.as_str()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let issued: Value = response.json().await.unwrap();
    assert_eq!(issued["user_id"], alice.as_str());
    assert!(issued["expires_at"].as_u64().unwrap() > now_unix_ms());
    // The token is a real one: the API takes it, and it names alice.
    let token = issued["token"].as_str().unwrap();
    assert_eq!(dev.keys.verify(token).unwrap(), alice);
    let listed = dev
        .http
        .get(format!("{}/v1/conversations", dev.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let (status, body) = {
        let response = dev
            .http
            .post(format!("{}/v1/dev/token", dev.base))
            .json(&json!({"user_id": "not a user id"}))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_error(status, &body, 400, "invalid");

    // Without development mode the route does not exist.
    let production = start(ApiConfig::default()).await;
    let response = production
        .http
        .post(format!("{}/v1/dev/token", production.base))
        .json(&json!({"user_id": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "no such route", "{body}");

    // Development mode on a non-loopback bind is refused at start.
    for address in ["0.0.0.0:0", "[::]:0"] {
        let refused = try_start(
            ApiConfig {
                listen_addr: address.into(),
                dev_sign_in: true,
                ..ApiConfig::default()
            },
            None,
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("development mode started on {address}"));
        assert!(refused.to_string().contains("loopback"), "{refused}");
    }
}

#[tokio::test]
async fn the_web_app_is_served_under_app_with_its_config() {
    let directory =
        std::env::temp_dir().join(format!("chatpipe-app-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(directory.join("assets")).unwrap();
    std::fs::write(
        directory.join("index.html"),
        "<!doctype html><title>chat</title>",
    )
    .unwrap();
    std::fs::write(directory.join("assets/app.js"), "console.log(1)").unwrap();
    let api = start(ApiConfig {
        app_dir: Some(directory.to_string_lossy().into_owned()),
        app_ws_url: Some("ws://127.0.0.1:18080/ws".into()),
        ..ApiConfig::default()
    })
    .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("{}/app", api.base))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(response.headers()["location"], "/app/");
    let index = api
        .http
        .get(format!("{}/app/", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(
        index.text().await.unwrap(),
        "<!doctype html><title>chat</title>"
    );
    let script = api
        .http
        .get(format!("{}/app/assets/app.js", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let config: Value = api
        .http
        .get(format!("{}/app/config.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config,
        json!({"ws_url": "ws://127.0.0.1:18080/ws", "dev_sign_in": false})
    );
    // Nothing outside the directory, and missing files are 404.
    for path in [
        "/app/../Cargo.toml",
        "/app/%2e%2e/Cargo.toml",
        "/app/missing.js",
    ] {
        let response = api
            .http
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    // Without an app directory there is no /app/.
    let bare = start(ApiConfig::default()).await;
    let response = bare
        .http
        .get(format!("{}/app/", bare.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let api = start(ApiConfig {
        cors_allowed_origins: vec!["http://localhost:5173".into()],
        ..ApiConfig::default()
    })
    .await;
    let alice = api.user("alice");
    let preflight = api
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/conversations", api.base),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let allowed_headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let listed = api
        .http
        .get(format!("{}/v1/conversations", api.base))
        .header("origin", "http://localhost:5173")
        .bearer_auth(api.token(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let other = api
        .http
        .get(format!("{}/v1/conversations", api.base))
        .header("origin", "http://evil.example")
        .bearer_auth(api.token(&alice))
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Off by default.
    let plain = start(ApiConfig::default()).await;
    let response = plain
        .http
        .get(format!("{}/openapi.json", plain.base))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}
