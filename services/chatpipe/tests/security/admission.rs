//! Admission at the edge: bad tokens are refused and counted, a tokenless
//! flood spends none of the connect budget, every frame kind (`ping`
//! included) counts against the connection's rate, an oversized frame gets
//! close 1009 with a reason, sessions per user are capped, and a client
//! that stops reading is closed instead of pinning its connection.

use std::time::Duration;

use chatpipe_core::UserId;
use chatpipe_core::time::now_unix_ms;
use chatpipe_runtime::metrics::reason_count;
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_4001_and_counted() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let other = chatpipe_core::auth::TokenKeys::from_secret(b"another-secret");
    let alice = UserId::parse("alice").unwrap();
    let now = now_unix_ms() / 1000;
    let cases = [
        ("".to_owned(), "missing"),
        ("garbage".to_owned(), "malformed"),
        (other.sign(&alice, now, 60), "bad_signature"),
        (stack.keys.sign(&alice, now - 7200, 60), "expired"),
    ];
    for (token, label) in &cases {
        match Client::try_connect(&format!("{}?token={token}", ws_url(&edge))).await {
            Connect::Closed { code, reason } => {
                assert_eq!(code, 4001, "{label}");
                assert!(reason.starts_with("unauthorized"), "{label}: {reason}");
            }
            Connect::Accepted(_) => panic!("{label} token accepted"),
        }
        assert_eq!(
            reason_count(&edge.metrics.auth_failures, label),
            1,
            "{label} counted"
        );
    }
    // A good token in the Authorization header is accepted.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url(&edge),
    )
    .unwrap();
    let mut request = request;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", stack.token("alice")).parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures::StreamExt;
    let hello = socket.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"op\":\"hello\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokenless_flood_spends_none_of_the_connect_budget() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.connects_per_second_global = 1;
    config.connects_burst_global = 5;
    let (edge, _drain) = stack.edge(config).await;
    for attempt in 0..50 {
        match Client::try_connect(&format!("{}?token=garbage", ws_url(&edge))).await {
            Connect::Closed { code, .. } => assert_eq!(code, 4001, "attempt {attempt}"),
            Connect::Accepted(_) => panic!("a bad token was accepted"),
        }
    }
    // Valid clients still get in: the flood spent none of the edge's budget.
    for _ in 0..5 {
        Client::connect(&edge, &stack.token(&unique("u"))).await;
    }
    assert_eq!(reason_count(&edge.metrics.auth_failures, "malformed"), 50);
    assert_eq!(
        reason_count(&edge.metrics.connections_rejected, "rate_limited_global"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_burst_is_rate_limited_like_any_frame() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.frames_per_second_per_connection = 10;
    config.frames_burst_per_connection = 10;
    let (edge, _drain) = stack.edge(config).await;
    let user = unique("u");
    let mut client = Client::connect(&edge, &stack.token(&user)).await;
    let started = std::time::Instant::now();
    for _ in 0..2_000 {
        client.send_json(json!({"op":"ping"})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 2_000 {
        match client.read_frame(Duration::from_secs(5)).await {
            Some(frame) if frame["op"] == "pong" => pongs += 1,
            Some(frame) if frame["code"] == "rate_limited" => limited += 1,
            Some(frame) => panic!("unexpected {frame}"),
            None => break,
        }
    }
    let allowed = 10 + 10 * started.elapsed().as_secs_f64().ceil() as usize;
    assert!(pongs <= allowed, "{pongs} pongs, at most {allowed} allowed");
    assert!(limited >= 1_000, "only {limited} rate_limited errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_limited_without_hurting_another_connection() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.frames_per_second_per_connection = 10;
    config.frames_burst_per_connection = 10;
    let (edge, _drain) = stack.edge(config).await;
    let (flooder, calm) = (unique("u"), unique("u"));
    let conversation = stack.conversation(&[&flooder, &calm]).await;
    let mut noisy = Client::connect(&edge, &stack.token(&flooder)).await;
    let mut quiet = Client::connect(&edge, &stack.token(&calm)).await;
    for index in 0..100 {
        noisy
            .send_json(json!({"op":"send","conversation_id":conversation.as_str(),"client_msg_id":format!("f{index}"),"body":"spam"}))
            .await;
    }
    let limited = noisy
        .wait_for("rate_limited", |frame| frame["code"] == "rate_limited")
        .await;
    assert!(limited["ref"].as_str().unwrap().starts_with('f'));
    for index in 0..5 {
        let ack = quiet
            .send_message(conversation.as_str(), &format!("q{index}"), "hi")
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    assert!(reason_count(&edge.metrics.frames_rejected, "rate_limited") >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_too_big_to_read_gets_close_1009_with_a_reason() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let user = unique("u");
    let mut client = Client::connect(&edge, &stack.token(&user)).await;
    client.send_text("x".repeat(70_000)).await;
    assert_eq!(client.read_frame(WAIT).await, None, "closed");
    let close = client
        .wait_for("close", |frame| frame["op"] == "__close")
        .await;
    assert_eq!(close["code"], 1009, "{close}");
    assert!(
        close["reason"].as_str().unwrap().contains("too big"),
        "{close}"
    );
    assert_eq!(reason_count(&edge.metrics.frames_rejected, "too_large"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_user_are_capped() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.max_sessions_per_user = 3;
    let (edge, _drain) = stack.edge(config).await;
    let user = unique("u");
    let token = stack.token(&user);
    // Closed connections leave detached sessions; the oldest make room.
    for _ in 0..10 {
        let client = Client::connect(&edge, &token).await;
        drop(client);
        eventually("detach", WAIT, || async {
            (edge.metrics.connections.get() == 0).then_some(())
        })
        .await;
    }
    let mut attached = Vec::new();
    for _ in 0..3 {
        attached.push(Client::connect(&edge, &token).await);
    }
    let user_id = UserId::parse(user.as_str()).unwrap();
    assert_eq!(edge.sessions.sessions_of(&user_id).len(), 3);
    match Client::try_connect(&format!("{}?token={token}", ws_url(&edge))).await {
        Connect::Closed { code, reason } => {
            assert_eq!(code, 4029);
            assert!(reason.contains("too many sessions"), "{reason}");
        }
        Connect::Accepted(_) => panic!("a fourth attached session was accepted"),
    }
    assert_eq!(
        reason_count(&edge.metrics.connections_rejected, "too_many_sessions"),
        1
    );
    // Another user is not affected.
    Client::connect(&edge, &stack.token(&unique("u"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_and_its_buffer_stays_bounded() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.session_buffer_frames = 64;
    config.max_unwritten_frames = 32;
    let (edge, _drain) = stack.edge(config).await;
    let user = unique("u");
    let _never_reads = Client::connect(&edge, &stack.token(&user)).await;
    let big = "y".repeat(3_000);
    for _ in 0..40 {
        push(&stack, &edge, &[&user], &vec![big.clone(); 50]).await;
    }
    eventually("slow-consumer close", WAIT, || async {
        (edge.metrics.slow_consumer_closes.get() == 1).then_some(())
    })
    .await;
    let sessions = edge
        .sessions
        .sessions_of(&UserId::parse(user.as_str()).unwrap());
    assert_eq!(sessions.len(), 1);
    assert!(
        sessions[0].buffered() <= 64,
        "buffer bounded, holds {}",
        sessions[0].buffered()
    );
    assert_eq!(edge.metrics.connections.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_pin_its_connection() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.write_timeout_ms = 500;
    let (edge, _drain) = stack.edge(config).await;
    let url = format!("{}?token={}", ws_url(&edge), stack.token(&unique("u")));
    // A small receive buffer, so that the edge's replies back up quickly.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(edge.http_addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let hello = stream.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"op\":\"hello\""));
    assert_eq!(edge.metrics.connections.get(), 1);
    // Frames that each get an error reply, and nobody reads the replies.
    let sender = tokio::spawn(async move {
        for _ in 0..1_000_000 {
            if sink.send(Message::text(r#"{"op":"dance"}"#)).await.is_err() {
                break;
            }
        }
    });
    eventually("the edge gives up on the silent reader", WAIT, || async {
        (edge.metrics.connections.get() == 0).then_some(())
    })
    .await;
    assert_eq!(edge.metrics.slow_consumer_closes.get(), 1);
    sender.abort();
    drop(stream);
}
