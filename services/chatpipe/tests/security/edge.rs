//! The edge's trust boundaries: who may push, how long a token keeps a
//! socket open, which tokens verify, what one client address may do, and
//! that two edges never share an id or a worker id.

use std::time::Duration;

use base64::Engine;
use chatpipe::roles::{self, RoleError};
use chatpipe_core::UserId;
use chatpipe_core::auth::{PushKey, TokenKeys, TokenPolicy};
use chatpipe_core::ids::worker_id_from_name;
use chatpipe_core::time::now_unix_ms;
use chatpipe_edge::EdgeError;
use chatpipe_edge::admission::parse_network;
use chatpipe_edge::identity::IdentityError;
use chatpipe_proto::auth::authenticated_client;
use chatpipe_proto::push::edge_push_client::EdgePushClient;
use chatpipe_proto::push::{PushBatch, PushItem};
use chatpipe_runtime::metrics::reason_count;
use serde_json::{Value, json};

use crate::common::*;

/// A `message` push to `recipient` claiming to come from `mallory`.
fn message_push(recipient: &str, body: &str, resync: bool) -> PushBatch {
    let fields = json!({"message": {
        "message_id": "1",
        "conversation_id": "c",
        "sender_id": "mallory",
        "client_msg_id": "forged",
        "body": body,
        "ts": 1,
    }});
    PushBatch {
        source: "probe".into(),
        items: vec![PushItem {
            op: "message".into(),
            fields_json: fields.to_string(),
            recipients: vec![recipient.to_owned()],
            ..PushItem::default()
        }],
        resync,
        ..Default::default()
    }
}

fn token_for(keys: &TokenKeys, user: &str, issued_at: u64, ttl_secs: u64) -> String {
    keys.sign(
        &UserId::parse(user).expect("valid user"),
        issued_at,
        ttl_secs,
    )
}

fn now_s() -> u64 {
    now_unix_ms() / 1000
}

/// Reads until the edge closes the socket; returns the close frame.
async fn close_of(client: &mut Client) -> Value {
    while client.read_frame(WAIT).await.is_some() {}
    client
        .wait_for("the close frame", |frame| frame["op"] == "__close")
        .await
}

/// The close code and reason of a refused connection attempt.
async fn refused(url: &str, headers: &[(&'static str, String)]) -> (u16, String) {
    match Client::try_connect_with(url, headers).await {
        Connect::Closed { code, reason } => (code, reason),
        Connect::Accepted(_) => panic!("accepted: {url}"),
    }
}

async fn accepted(url: &str, headers: &[(&'static str, String)]) -> Client {
    match Client::try_connect_with(url, headers).await {
        Connect::Accepted(client) => *client,
        Connect::Closed { code, reason } => panic!("refused with {code} {reason}: {url}"),
    }
}

fn forwarded_for(client_ip: &str) -> [(&'static str, String); 1] {
    [("x-forwarded-for", client_ip.to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_without_the_push_key_are_refused_and_deliver_nothing() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("push")).await;
    let alice = unique("alice");
    let mut client = Client::connect(&edge, &stack.token(&alice)).await;
    let endpoint = format!("http://{}", edge.push_addr);

    // Without credentials: a forged message, and a resync that would close
    // every session of the edge.
    let mut anonymous = EdgePushClient::connect(endpoint.clone())
        .await
        .expect("the push port is reachable");
    for batch in [
        message_push(&alice, "forged", false),
        message_push(&alice, "forged", true),
    ] {
        let status = anonymous.push(batch).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    // With another deployment's key.
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stranger = authenticated_client(channel, &PushKey::derive(b"another-cluster"));
    let status = stranger
        .push(message_push(&alice, "forged", true))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    assert_eq!(reason_count(&edge.metrics.push_refused, "missing"), 2);
    assert_eq!(reason_count(&edge.metrics.push_refused, "wrong"), 1);
    assert_eq!(edge.metrics.push_batches.get(), 0, "the service saw none");
    assert_eq!(edge.metrics.resyncs.get(), 0);

    // The deployment's own key goes through: the first frame alice gets
    // is that push (nothing forged came before it, and her connection was
    // not resynced away).
    let mut fanout = stack.push_client(&edge).await;
    fanout
        .push(message_push(&alice, "genuine", false))
        .await
        .expect("accepted");
    let frame = client
        .wait_for("the genuine push", |frame| frame["op"] == "message")
        .await;
    assert_eq!(frame["message"]["body"], "genuine");
    assert_eq!(frame["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_is_closed_with_4011_when_its_token_expires() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("expiry")).await;
    let user = unique("u");
    let mut client = Client::connect(&edge, &token_for(&stack.keys, &user, now_s(), 2)).await;
    let close = close_of(&mut client).await;
    assert_eq!(close["code"], 4011, "{close}");
    assert!(
        close["reason"].as_str().unwrap().contains("token expired"),
        "{close}"
    );
    assert_eq!(edge.metrics.token_expiry_closes.get(), 1);
    // The session survives: it resumes with a fresh token.
    let resumed = Client::resume(&edge, &stack.token(&user), &client.session_id, 0).await;
    assert!(resumed.resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_moves_the_deadline() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("refresh")).await;
    let user = unique("u");
    let mut client = Client::connect(&edge, &token_for(&stack.keys, &user, now_s(), 2)).await;
    let issued = now_s();
    client
        .send_json(json!({"op": "refresh", "token": token_for(&stack.keys, &user, issued, 60)}))
        .await;
    let refreshed = client
        .wait_for("refreshed", |frame| frame["op"] == "refreshed")
        .await;
    assert_eq!(refreshed["expires_at"], issued + 60, "{refreshed}");
    // Well past the first token's expiry, the socket is open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.send_json(json!({"op": "ping"})).await;
    client.wait_for("pong", |frame| frame["op"] == "pong").await;
    assert_eq!(edge.metrics.token_expiry_closes.get(), 0);
    assert_eq!(reason_count(&edge.metrics.token_refreshes, "accepted"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_another_users_or_a_bad_token_is_refused_and_the_deadline_stays() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("refused")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut client = Client::connect(&edge, &token_for(&stack.keys, &alice, now_s(), 3)).await;
    let other_secret = TokenKeys::from_secret(b"another-secret");
    let attempts = [
        (token_for(&stack.keys, &bob, now_s(), 60), "forbidden"),
        ("garbage".to_owned(), "invalid"),
        (token_for(&other_secret, &alice, now_s(), 60), "invalid"),
        (
            token_for(&stack.keys, &alice, now_s() - 3600, 60),
            "invalid",
        ),
    ];
    for (token, code) in &attempts {
        client
            .send_json(json!({"op": "refresh", "token": token}))
            .await;
        let error = client
            .wait_for("the refusal", |frame| frame["op"] == "error")
            .await;
        assert_eq!(error["code"], *code, "{error}");
    }
    // The first token's deadline still holds.
    let close = close_of(&mut client).await;
    assert_eq!(close["code"], 4011, "{close}");
    assert!(
        client
            .pending
            .iter()
            .all(|frame| frame["op"] != "refreshed"),
        "{:?}",
        client.pending
    );
    assert_eq!(reason_count(&edge.metrics.token_refreshes, "forbidden"), 1);
    assert_eq!(reason_count(&edge.metrics.token_refreshes, "invalid"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_verify_by_kid_and_issuer_and_audience_are_checked() {
    let stack = Stack::new().await;
    let policy = TokenPolicy {
        issuers: vec!["https://id.example".into()],
        audiences: vec!["chatpipe".into()],
        ..TokenPolicy::default()
    };
    let old_secret = unique("the-old-secret");
    let key_set = json!({"keys": [{
        "kty": "oct",
        "kid": "2025",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(old_secret.as_bytes()),
    }]});
    let keys = TokenKeys::from_configured_secret(unique("the-new-secret").as_bytes())
        .unwrap()
        .with_kid("2026")
        .with_policy(policy.clone())
        .with_key_set(&key_set.to_string())
        .unwrap();
    let mut deps = stack.deps();
    deps.token_keys = keys.clone();
    deps.push_key = keys.derived_push_key();
    let edge = roles::spawn(stack.edge_config("rotated"), &deps, stack.context())
        .await
        .expect("edge starts");
    let old_keys = TokenKeys::from_secret(old_secret.as_bytes())
        .with_kid("2025")
        .with_policy(policy.clone());
    let user = unique("u");

    // Tokens of the new key and of the old one (by its kid) both verify.
    let _new = Client::connect(&edge, &token_for(&keys, &user, now_s(), 60)).await;
    let _old = Client::connect(&edge, &token_for(&old_keys, &user, now_s(), 60)).await;

    let with_policy = |policy: TokenPolicy| {
        TokenKeys::from_secret(old_secret.as_bytes())
            .with_kid("2025")
            .with_policy(policy)
    };
    let wrong_issuer = with_policy(TokenPolicy {
        issuers: vec!["https://evil.example".into()],
        ..policy.clone()
    });
    let wrong_audience = with_policy(TokenPolicy {
        audiences: vec!["another-service".into()],
        ..policy.clone()
    });
    let retired = TokenKeys::from_secret(b"a-retired-secret")
        .with_kid("2024")
        .with_policy(policy.clone());
    for (keys, label) in [
        (&wrong_issuer, "wrong_issuer"),
        (&wrong_audience, "wrong_audience"),
        (&retired, "unknown_key"),
    ] {
        let url = format!(
            "{}?token={}",
            ws_url(&edge),
            token_for(keys, &user, now_s(), 60)
        );
        let (code, reason) = refused(&url, &[]).await;
        assert_eq!(code, 4001, "{label}: {reason}");
        assert_eq!(
            reason_count(&edge.metrics.auth_failures, label),
            1,
            "{label}"
        );
    }
    // Past the server's maximum lifetime (24 h by default): refused.
    let long = token_for(&keys, &user, now_s(), 7 * 86_400);
    let (code, _) = refused(&format!("{}?token={long}", ws_url(&edge)), &[]).await;
    assert_eq!(code, 4001);
    assert_eq!(
        reason_count(&edge.metrics.auth_failures, "lifetime_too_long"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped_and_forwarded_for_counts_only_behind_trusted_proxies() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("capped");
    config.max_connections_per_ip = 2;
    let (edge, _drain) = stack.edge(config).await;
    let url = |user: &str| format!("{}?token={}", ws_url(&edge), stack.token(user));
    let first = accepted(&url(&unique("u")), &[]).await;
    let _second = accepted(&url(&unique("u")), &[]).await;
    // The peer is no trusted proxy: its header changes nothing.
    let (code, reason) = refused(&url(&unique("u")), &forwarded_for("198.51.100.7")).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("too many connections"), "{reason}");
    assert_eq!(
        reason_count(&edge.metrics.connections_rejected, "connections_per_ip"),
        1
    );
    drop(first);
    eventually("a slot freed", WAIT, || async {
        (edge.metrics.connections.get() == 1).then_some(())
    })
    .await;
    let _third = accepted(&url(&unique("u")), &[]).await;

    // Behind a trusted proxy (loopback here), each client address counts.
    let mut config = stack.edge_config("proxied");
    config.max_connections_per_ip = 1;
    config.trusted_proxies = vec![parse_network("127.0.0.1").unwrap()];
    let (proxied, _drain_proxied) = stack.edge(config).await;
    let proxied_url = |user: &str| format!("{}?token={}", ws_url(&proxied), stack.token(user));
    let _one = accepted(&proxied_url(&unique("u")), &forwarded_for("198.51.100.1")).await;
    let _two = accepted(
        &proxied_url(&unique("u")),
        &forwarded_for("6.6.6.6, 198.51.100.2"),
    )
    .await;
    let (code, _) = refused(&proxied_url(&unique("u")), &forwarded_for("198.51.100.1")).await;
    assert_eq!(code, 1013);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_failing_authentication_too_often_is_refused_for_a_while() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("failures");
    config.auth_failures_per_ip_per_minute = 3;
    config.trusted_proxies = vec![parse_network("127.0.0.0/8").unwrap()];
    let (edge, _drain) = stack.edge(config).await;
    let noisy = forwarded_for("198.51.100.66");
    let garbage = format!("{}?token=garbage", ws_url(&edge));
    for attempt in 0..4 {
        let (code, _) = refused(&garbage, &noisy).await;
        assert_eq!(code, 4001, "attempt {attempt}");
    }
    assert_eq!(reason_count(&edge.metrics.auth_failures, "malformed"), 4);
    // Now refused before its token is even looked at, a valid one too.
    let valid = format!("{}?token={}", ws_url(&edge), stack.token(&unique("u")));
    let (code, reason) = refused(&valid, &noisy).await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("failed authentications"), "{reason}");
    assert_eq!(
        reason_count(&edge.metrics.connections_rejected, "auth_failures_ip"),
        1
    );
    assert_eq!(reason_count(&edge.metrics.auth_failures, "malformed"), 4);
    // Another client address is not affected.
    let _other = accepted(&valid, &forwarded_for("198.51.100.67")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_never_share_an_id_or_a_worker_id() {
    let stack = Stack::new().await;
    let second_config = stack.edge_config("second");
    // The first edge holds the worker id the second would prefer.
    let mut first_config = stack.edge_config("first");
    first_config.worker_id = Some(worker_id_from_name(second_config.edge_id.as_str()));
    let (first, _first_drain) = stack.edge(first_config.clone()).await;
    let (second, _second_drain) = stack.edge(second_config).await;
    assert_ne!(first.worker_id, second.worker_id);
    assert_eq!(
        Some(first.worker_id),
        first_config.worker_id,
        "a configured free worker id is kept"
    );

    // A worker id a live edge holds is refused.
    let mut taken = stack.edge_config("third");
    taken.worker_id = Some(second.worker_id);
    let refusal = roles::spawn(taken, &stack.deps(), stack.context())
        .await
        .expect_err("a held worker id is refused");
    assert!(
        matches!(
            refusal,
            RoleError::Edge(EdgeError::Identity(IdentityError::DuplicateWorkerId { .. }))
        ),
        "{refusal}"
    );
    // So is the id of a live edge, from another address.
    let refusal = roles::spawn(first_config, &stack.deps(), stack.context())
        .await
        .expect_err("a held edge id is refused");
    assert!(
        matches!(
            refusal,
            RoleError::Edge(EdgeError::Identity(IdentityError::DuplicateEdgeId { .. }))
        ),
        "{refusal}"
    );
    // Both live edges still serve.
    let _a = Client::connect(&first, &stack.token(&unique("u"))).await;
    let _b = Client::connect(&second, &stack.token(&unique("u"))).await;
}
