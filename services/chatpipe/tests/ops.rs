//! Ops listeners: every role serves `/metrics`, `/healthz` and `/readyz` on
//! its own ops listener, and its public port (the edge's `/ws`, the API's
//! `/v1/…`) serves none of them. Also: a token signed with a formerly
//! built-in secret is refused by the running edge and API.

mod common;

use std::net::SocketAddr;

use chatpipe_core::UserId;
use chatpipe_core::auth::{FORMER_BUILT_IN_SECRETS, TokenKeys};
use chatpipe_core::time::now_unix_ms;
use common::*;

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
