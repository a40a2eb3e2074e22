//! The HTTP API's trust boundaries: bad or expired tokens get 401 and are
//! counted, a 1:1 has fixed membership and outsiders cannot tell that a
//! conversation exists (nothing is published for them), metric labels stay
//! bounded whatever clients send, and the request deadline and the
//! concurrency cap answer with a JSON 503.

use std::time::Duration;

use chatpipe::roles::{self, ApiHandle, RoleHandle};
use chatpipe_api::{ApiConfig, ApiMetrics};
use chatpipe_cassandra::CassandraStore;
use chatpipe_client::ApiClient;
use chatpipe_client::http::{ApiRequest, Method, StatusCode};
use chatpipe_core::auth::TokenKeys;
use chatpipe_core::ids::{ConversationId, UserId};
use chatpipe_core::store::MembershipStore;
use chatpipe_core::time::now_unix_ms;
use chatpipe_kafka::KafkaConfig;
use serde_json::{Value, json};

use crate::common::*;

/// An API role of its own on a [`Stack`] (no search), with its metrics and
/// ops listener at hand, as its users call it.
struct Api {
    unique: String,
    base: String,
    http: reqwest::Client,
    /// The contract's client, for the calls of a user.
    client: ApiClient,
    keys: TokenKeys,
    store: CassandraStore,
    metrics: ApiMetrics,
    /// The role's ops listener (`/metrics`, `/healthz`, `/readyz`).
    ops: String,
    _role: RoleHandle<ApiHandle>,
    /// Last: the role stops when the stack's shutdown is cancelled.
    _stack: Stack,
}

async fn start(config: ApiConfig) -> Api {
    start_with_producer_brokers(config, None).await
}

/// `producer_brokers` points the membership producer elsewhere (a dead
/// address, to see 503s) without touching the shared engines.
async fn start_with_producer_brokers(config: ApiConfig, producer_brokers: Option<&str>) -> Api {
    let stack = Stack::new().await;
    let mut deps = stack.deps();
    if let Some(brokers) = producer_brokers {
        deps.kafka = KafkaConfig::new(brokers, "api-test-dead");
    }
    let role = roles::spawn(
        ApiConfig {
            listen_addr: ANY_PORT.into(),
            ..config
        },
        &deps,
        stack.context(),
    )
    .await
    .expect("the api starts");
    let base = format!("http://{}", role.addr);
    Api {
        unique: unique("api"),
        http: reqwest::Client::new(),
        client: ApiClient::new(&base),
        base,
        keys: stack.keys.clone(),
        store: stack.store.clone(),
        metrics: role.metrics().clone(),
        ops: format!("http://{}", role.ops_addr()),
        _role: role,
        _stack: stack,
    }
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
        method: Method,
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
        self.call(user, Method::GET, path, None).await
    }

    async fn post(&self, user: &UserId, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(user, Method::POST, path, Some(body)).await
    }

    async fn delete(&self, user: &UserId, path: &str) -> (StatusCode, Value) {
        self.call(user, Method::DELETE, path, None).await
    }
}

fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    chatpipe_testkit::assert_api_error(status.as_u16(), body, expected_status, code);
}

#[tokio::test]
async fn bad_or_expired_tokens_get_401() {
    let api = start(ApiConfig::default()).await;
    let alice = api.user("alice");
    let url = format!("{}/v1/conversations", api.base);
    let expired = api.keys.sign(&alice, now_unix_ms() / 1000 - 7200, 60);
    let foreign = TokenKeys::from_secret(b"another secret").sign(&alice, now_unix_ms() / 1000, 60);
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing"),
        (Some("Bearer not-a-token".into()), "malformed"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {foreign}")), "bad_signature"),
        (Some(format!("Basic {}", api.token(&alice))), "missing"),
    ];
    for (header, reason) in cases {
        let mut request = api.http.get(&url);
        if let Some(header) = &header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{reason}");
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{reason}");
    }
    let (status, _) = api.get(&alice, "/v1/conversations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.metrics.request_count("GET", "/v1/conversations", 401),
        5
    );
    assert_eq!(
        chatpipe_runtime::metrics::reason_count(&api.metrics.auth_failures, "expired"),
        1
    );
}

#[tokio::test]
async fn a_one_to_one_has_fixed_membership_and_outsiders_cannot_tell_it_exists() {
    let api = start(ApiConfig::default()).await;
    let (alice, bob, mallory) = (api.user("alice"), api.user("bob"), api.user("mallory"));
    let (status, created) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let dm = created["conversation_id"].as_str().unwrap().to_owned();
    assert!(dm.starts_with("dm-"), "{dm}");
    // Neither side adds a third person, nor removes the other.
    for side in [&alice, &bob] {
        let (status, body) = api
            .post(
                side,
                &format!("/v1/conversations/{dm}/members"),
                json!({"user_id": mallory.as_str()}),
            )
            .await;
        assert_error(status, &body, 403, "forbidden");
    }
    let (status, body) = api
        .delete(&alice, &format!("/v1/conversations/{dm}/members/{bob}"))
        .await;
    assert_error(status, &body, 403, "forbidden");
    let dm_id = ConversationId::parse(dm.clone()).unwrap();
    assert!(!api.store.is_member(&dm_id, &mallory).await.unwrap());
    assert!(api.store.is_member(&dm_id, &bob).await.unwrap());
    assert_eq!(api.metrics.membership_records.get(), 1, "only the creation");

    // Mallory can compute the DM id of any pair; every route answers her
    // exactly as for an id that does not exist.
    let unknown = format!("dm-{}", "0".repeat(40));
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/conversations/{}/messages".into(), None),
        (
            Method::POST,
            "/v1/conversations/{}/members".into(),
            Some(json!({"user_id": mallory.as_str()})),
        ),
        (
            Method::DELETE,
            format!("/v1/conversations/{{}}/members/{mallory}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/v1/conversations/{{}}/members/{bob}"),
            None,
        ),
    ];
    for (method, template, body) in probes {
        let (existing_status, existing) = api
            .call(
                &mallory,
                method.clone(),
                &template.replace("{}", &dm),
                body.clone(),
            )
            .await;
        let (unknown_status, missing) = api
            .call(
                &mallory,
                method.clone(),
                &template.replace("{}", &unknown),
                body,
            )
            .await;
        assert_error(existing_status, &existing, 404, "not_found");
        assert_eq!(
            (existing_status, &existing),
            (unknown_status, &missing),
            "{method} {template}"
        );
    }
    assert!(!api.store.is_member(&dm_id, &mallory).await.unwrap());
    assert_eq!(api.metrics.membership_records.get(), 1, "nothing published");
}

async fn metric_lines(api: &Api) -> usize {
    api.http
        .get(format!("{}/metrics", api.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .count()
}

/// Requests with a made-up method, with and without a token, to an
/// unknown path and to a route's path.
async fn random_method_requests(api: &Api, tag: &str, count: usize) {
    let alice = api.user("alice");
    for index in 0..count {
        let method = Method::from_bytes(format!("{tag}{index}X").as_bytes()).unwrap();
        for path in [
            format!("/v1/random-{tag}{index}"),
            format!("/v1/conversations/{tag}{index}/messages"),
        ] {
            for authenticated in [false, true] {
                let mut request = api
                    .http
                    .request(method.clone(), format!("{}{path}", api.base));
                if authenticated {
                    request = request.bearer_auth(api.token(&alice));
                }
                let response = request.send().await.unwrap();
                assert!(response.status().is_client_error(), "{path}");
            }
        }
    }
}

#[tokio::test]
async fn metrics_stay_bounded_whatever_methods_and_paths_clients_send() {
    // No 429s midway (a new, but bounded, status series).
    let api = start(ApiConfig {
        rate_limit_per_second: 10_000,
        rate_limit_burst: 10_000,
        ..ApiConfig::default()
    })
    .await;
    // A few first, so each kind of refusal has its series.
    random_method_requests(&api, "W", 3).await;
    let before = metric_lines(&api).await;
    // 200 new methods on 400 new paths (800 requests) add no series: the
    // method label was the raw method before (the registry grew by ~18
    // lines per new method).
    random_method_requests(&api, "R", 200).await;
    let after = metric_lines(&api).await;
    assert_eq!(before, after, "new methods and paths added series");
}

#[tokio::test]
async fn a_request_past_its_deadline_gets_a_json_503() {
    // Kafka never confirms (nothing listens on port 1) and would wait 20 s;
    // the request deadline answers first.
    let api = start_with_producer_brokers(
        ApiConfig {
            kafka_send_timeout_ms: 20_000,
            request_timeout_ms: 500,
            ..ApiConfig::default()
        },
        Some("127.0.0.1:1"),
    )
    .await;
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    let started = std::time::Instant::now();
    let (status, body) = api
        .post(
            &alice,
            "/v1/conversations",
            json!({"members": [bob.as_str()], "title": "t"}),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_error(status, &body, 503, "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("500 ms"),
        "{body}"
    );
    assert_eq!(
        api.metrics.request_count("POST", "/v1/conversations", 503),
        1
    );
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_a_json_503() {
    let api = std::sync::Arc::new(
        start_with_producer_brokers(
            ApiConfig {
                kafka_send_timeout_ms: 2_000,
                max_concurrent_requests: 1,
                ..ApiConfig::default()
            },
            Some("127.0.0.1:1"),
        )
        .await,
    );
    let (alice, bob) = (api.user("alice"), api.user("bob"));
    // Holds the only slot for ~2 s, waiting on a Kafka that never answers.
    let slow = tokio::spawn({
        let api = api.clone();
        let (alice, bob) = (alice.clone(), bob.clone());
        async move {
            api.post(
                &alice,
                "/v1/conversations",
                json!({"members": [bob.as_str()], "title": "t"}),
            )
            .await
            .0
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = api.get(&bob, "/v1/conversations").await;
    assert_error(status, &body, 503, "unavailable");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "{body}"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    // The slot is free again.
    let (status, body) = api.get(&bob, "/v1/conversations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
