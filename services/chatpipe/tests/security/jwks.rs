//! Token keys from a JWKS URL, as an identity provider publishes them: a
//! real HTTP server started here serves a JWKS with an RS256 key. Its
//! tokens verify on the WebSocket and the API; after the server rotates to
//! a new key with a new kid, tokens of the new kid verify without a
//! restart; an unknown kid is refused; a failed refresh keeps the last
//! good keys (counted); and a role does not start when the URL is
//! unreachable or serves no usable key set.
//!
//! The RSA keys under `fixtures/` are test-only keys, generated for these
//! tests and used nowhere else.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine;
use chatpipe::jwks::{self, JwksError, JwksMetrics, JwksUrlConfig};
use chatpipe::roles::{self, ApiHandle, RoleHandle};
use chatpipe_api::ApiConfig;
use chatpipe_client::ApiClient;
use chatpipe_client::http::ApiRequest;
use chatpipe_core::time::now_unix_ms;
use chatpipe_edge::EdgeHandle;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::common::*;

const KEY_A_PEM: &str = include_str!("fixtures/test-only-rsa-a.pem");
const KEY_B_PEM: &str = include_str!("fixtures/test-only-rsa-b.pem");

/// An RS256 signing key from a PKCS#1 PEM.
fn rsa_key(pem: &str) -> EncodingKey {
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("fixture PEM");
    EncodingKey::from_rsa_der(&der)
}

/// A JWKS document of the public halves of `keys`, each under its kid.
fn key_set(keys: &[(&str, &EncodingKey)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, key)| {
            let mut jwk = Jwk::from_encoding_key(key, Algorithm::RS256).expect("public part");
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

/// An RS256 token for `user`, valid for ten minutes, naming `kid`.
fn rs256(key: &EncodingKey, kid: &str, user: &str) -> String {
    let now = now_unix_ms() / 1000;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &json!({"sub": user, "iat": now, "exp": now + 600}),
        key,
    )
    .unwrap()
}

/// The identity provider's JWKS endpoint: what it answers can be changed
/// while it runs, and it counts the fetches.
#[derive(Clone)]
struct JwksServer {
    answer: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl JwksServer {
    async fn start(document: String) -> JwksServer {
        let answer = Arc::new(Mutex::new((StatusCode::OK, document)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get({
                let (answer, fetches) = (answer.clone(), fetches.clone());
                move || {
                    let (answer, fetches) = (answer.clone(), fetches.clone());
                    async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        answer.lock().unwrap().clone()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        JwksServer {
            answer,
            fetches,
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn answer(&self, status: StatusCode, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An edge and an API whose tokens verify with the keys of `server`.
struct Deployment {
    edge: RoleHandle<EdgeHandle>,
    api: RoleHandle<ApiHandle>,
    client: ApiClient,
    metrics: JwksMetrics,
}

impl Deployment {
    async fn start(stack: &Stack, server: &JwksServer) -> Deployment {
        let config = JwksUrlConfig {
            // Unknown kids are refetched almost at once here (30 s by
            // default), so the test needs no long wait.
            unknown_kid_refetch_interval_ms: 100,
            ..JwksUrlConfig::new(server.url())
        };
        let (keys, metrics) = jwks::start(stack.keys.clone(), &config, &stack.root)
            .await
            .expect("the key set is fetched at start");
        let mut deps = stack.deps();
        deps.token_keys = keys;
        deps.jwks = Some(metrics.clone());
        let mut edge_config = stack.edge_config("jwks");
        // Refusals while waiting for a refetch must not bar the address.
        edge_config.auth_failures_per_ip_per_minute = 10_000;
        let edge = roles::spawn(edge_config, &deps, stack.context())
            .await
            .expect("edge starts");
        let api = roles::spawn(
            ApiConfig {
                listen_addr: ANY_PORT.into(),
                ..ApiConfig::default()
            },
            &deps,
            stack.context(),
        )
        .await
        .expect("api starts");
        Deployment {
            client: ApiClient::new(&format!("http://{}", api.addr)),
            edge,
            api,
            metrics,
        }
    }

    /// The WebSocket's answer to `token`: `None` when accepted, else the
    /// close code.
    async fn websocket(&self, token: &str) -> Option<u16> {
        let url = chatpipe_client::ws::connect_url(&ws_url(&self.edge), token, None);
        match Client::try_connect(&url).await {
            Connect::Accepted(_) => None,
            Connect::Closed { code, .. } => Some(code),
        }
    }

    /// The API's status for `GET /v1/conversations` with `token`.
    async fn api(&self, token: &str) -> u16 {
        answered(
            self.client
                .send(token, &ApiRequest::get("/v1/conversations"))
                .await,
        )
        .0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_with_the_keys_of_a_jwks_url_across_a_rotation() {
    let stack = Stack::new().await;
    let (key_a, key_b) = (rsa_key(KEY_A_PEM), rsa_key(KEY_B_PEM));
    let server = JwksServer::start(key_set(&[("2026-a", &key_a)])).await;
    let deployment = Deployment::start(&stack, &server).await;
    let alice = unique("alice");

    // The identity provider's token verifies on the WebSocket and the API.
    let token_a = rs256(&key_a, "2026-a", &alice);
    assert_eq!(deployment.websocket(&token_a).await, None);
    assert_eq!(deployment.api(&token_a).await, 200);
    assert_eq!(deployment.metrics.refreshes.get(), 1);
    for ops in [deployment.edge.ops_addr(), deployment.api.ops_addr()] {
        let (_, metrics) = http_get(ops, "/metrics").await;
        assert!(
            metrics.contains("chatpipe_token_jwks_refreshes_total 1"),
            "{metrics}"
        );
    }

    // Rotation: the provider now publishes only a new key, with a new kid.
    // Its tokens verify without a restart: the first names an unknown kid
    // and asks for a refetch; the retry finds the key.
    server.answer(StatusCode::OK, key_set(&[("2026-b", &key_b)]));
    let token_b = rs256(&key_b, "2026-b", &alice);
    eventually("the new kid verifies on the WebSocket", WAIT, || async {
        deployment.websocket(&token_b).await.is_none().then_some(())
    })
    .await;
    assert_eq!(deployment.api(&token_b).await, 200);
    assert!(deployment.metrics.unknown_kid_refetches.get() >= 1);
    // The retired key is gone with its set.
    assert_eq!(deployment.websocket(&token_a).await, Some(4001));
    assert_eq!(deployment.api(&token_a).await, 401);

    // A kid that the provider does not publish: refused, and still refused
    // once the refetch it asked for has come back without it.
    let (fetches_before, refreshes_before) = (server.fetches(), deployment.metrics.refreshes.get());
    let forged = rs256(&key_a, "2026-unknown", &alice);
    assert_eq!(deployment.websocket(&forged).await, Some(4001));
    eventually("the unknown kid's refetch applied", WAIT, || async {
        (deployment.metrics.refreshes.get() > refreshes_before).then_some(())
    })
    .await;
    assert!(server.fetches() > fetches_before);
    assert_eq!(deployment.websocket(&forged).await, Some(4001));
    assert_eq!(deployment.api(&forged).await, 401);
    assert_eq!(deployment.metrics.refresh_failures.get(), 0);

    // The provider fails: the refresh is counted as failed and the last
    // good keys stay.
    server.answer(StatusCode::INTERNAL_SERVER_ERROR, "down".to_owned());
    assert_eq!(deployment.api(&forged).await, 401);
    eventually("a failed refresh", WAIT, || async {
        (deployment.metrics.refresh_failures.get() >= 1).then_some(())
    })
    .await;
    assert_eq!(deployment.websocket(&token_b).await, None);
    assert_eq!(deployment.api(&token_b).await, 200);
    let (_, metrics) = http_get(deployment.api.ops_addr(), "/metrics").await;
    let failures_line = metrics
        .lines()
        .find(|line| line.starts_with("chatpipe_token_jwks_refresh_failures_total "))
        .unwrap_or_else(|| panic!("no failure counter in {metrics}"));
    assert_ne!(
        failures_line,
        "chatpipe_token_jwks_refresh_failures_total 0"
    );
    // A document that is no key set fails the same way.
    let failures = deployment.metrics.refresh_failures.get();
    server.answer(StatusCode::OK, "{\"keys\": 7}".to_owned());
    assert_eq!(deployment.api(&forged).await, 401);
    eventually("a refused document", WAIT, || async {
        (deployment.metrics.refresh_failures.get() > failures).then_some(())
    })
    .await;
    assert_eq!(deployment.api(&token_b).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_is_unreachable_or_invalid_stops_the_start() {
    let shutdown = chatpipe_runtime::Shutdown::new();
    let keys = chatpipe_core::auth::TokenKeys::from_secret(b"a-test-secret-of-32-bytes-or-more");
    // Nothing listens there.
    let dead = JwksUrlConfig::new("http://127.0.0.1:1/.well-known/jwks.json");
    let refused = jwks::start(keys.clone(), &dead, &shutdown).await;
    assert!(
        matches!(refused, Err(JwksError::Fetch { .. })),
        "{refused:?}"
    );
    // An error status, and a document that is no key set.
    let server = JwksServer::start("{}".to_owned()).await;
    for (status, body) in [
        (StatusCode::NOT_FOUND, "gone".to_owned()),
        (StatusCode::OK, "<html>".to_owned()),
    ] {
        server.answer(status, body);
        let refused = jwks::start(keys.clone(), &JwksUrlConfig::new(server.url()), &shutdown).await;
        assert!(refused.is_err(), "{status}: {refused:?}");
    }
    shutdown.cancel();

    // The binary: a role with such a URL does not start, and says why.
    let home = std::env::temp_dir().join(unique("chatpipe-home"));
    std::fs::create_dir_all(&home).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatpipe"))
        .args([
            "api",
            "--api-listen",
            "127.0.0.1:0",
            "--api-ops-listen",
            "127.0.0.1:0",
            "--token-jwks-url",
            &server.url(),
        ])
        .env("CHATPIPE_HOME", &home)
        .env("CHATPIPE_TOKEN_SECRET", "a-test-secret-of-32-bytes-or-more")
        .env("CHATPIPE_KAFKA_BROKERS", "127.0.0.1:1")
        .env("CHATPIPE_CASSANDRA", "127.0.0.1:1")
        .env("CHATPIPE_ELASTICSEARCH_URL", "http://127.0.0.1:1")
        .output()
        .expect("the chatpipe binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWKS"), "{stderr}");
    std::fs::remove_dir_all(&home).ok();
}
