//! The edge against real Kafka and Cassandra: frames, the send path,
//! heartbeats, resume, the connect rate and drain. Pushes are sent to the
//! edge's real gRPC listener, as a fan-out worker would. Admission (bad
//! tokens, floods, oversized frames, session caps, slow readers) is part
//! of the security contract: `tests/security/admission.rs`.

mod common;

use std::time::Duration;

use chatpipe_core::UserId;
use chatpipe_core::time::now_unix_ms;
use chatpipe_runtime::metrics::reason_count;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errors_and_the_connection_stays_usable() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let user = unique("u");
    let conversation = stack.conversation(&[&user]).await;
    let mut client = Client::connect(&edge, &stack.token(&user)).await;

    client.send_text("{not json".into()).await;
    let error = client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(error["code"], "invalid");

    client.send_json(json!({"op":"dance"})).await;
    let error = client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(error["code"], "invalid");
    assert!(error["message"].as_str().unwrap().contains("unknown op"));

    let missing = client
        .send_message_raw(
            json!({"op":"send","client_msg_id":"m-missing","body":"x"}),
            "m-missing",
        )
        .await;
    assert_eq!(
        (missing["code"].as_str(), missing["ref"].as_str()),
        (Some("invalid"), Some("m-missing"))
    );

    let big = "x".repeat(5_000);
    let too_large = client
        .send_message(conversation.as_str(), "m-big", &big)
        .await;
    assert_eq!(too_large["code"], "too_large");

    client.socket_send_binary().await;
    let error = client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(error["code"], "invalid");

    // Still usable: ping and a real send.
    client.send_json(json!({"op":"ping"})).await;
    client.wait_for("pong", |frame| frame["op"] == "pong").await;
    let ack = client
        .send_message(conversation.as_str(), "m-ok", "hello")
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(reason_count(&edge.metrics.frames_rejected, "invalid"), 4);
    assert_eq!(reason_count(&edge.metrics.frames_rejected, "too_large"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_and_unknown_conversations_are_forbidden() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let (member, outsider) = (unique("u"), unique("u"));
    let conversation = stack.conversation(&[&member]).await;
    let mut client = Client::connect(&edge, &stack.token(&outsider)).await;
    let refused = client
        .send_message(conversation.as_str(), "m1", "let me in")
        .await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let unknown = client
        .send_message("no-such-conversation", "m2", "anyone?")
        .await;
    assert_eq!(unknown["code"], "forbidden");
    client
        .send_json(json!({"op":"typing","conversation_id": conversation.as_str()}))
        .await;
    let typing_refused = client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(typing_refused["code"], "forbidden");
}

/// The edge's membership tail is positioned at the topic's end before
/// `spawn_edge` returns (not at "latest", which Kafka resolves only once
/// the consumer first fetches): a removal published right after the edge
/// started evicts the membership it cached, so the removed member's next
/// send is refused. The cache's TTL is far beyond the test, so only the
/// tail can evict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_published_right_after_the_edge_started_is_not_missed() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.membership_cache_ttl_ms = 3_600_000;
    let (alice, bob) = (unique("u"), unique("u"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let (edge, _drain) = stack.edge(config).await;
    let mut client = Client::connect(&edge, &stack.token(&alice)).await;
    let accepted = client
        .send_message(conversation.as_str(), "before", "still a member")
        .await;
    assert_eq!(accepted["op"], "ack", "{accepted}");

    let alice_id = UserId::parse(alice.as_str()).unwrap();
    stack
        .store
        .remove_member(&conversation, &alice_id)
        .await
        .unwrap();
    let removal = chatpipe_core::records::MembershipRecord {
        schema_version: chatpipe_core::records::SCHEMA_VERSION,
        conversation_id: conversation.clone(),
        change: chatpipe_core::records::MembershipChange::Removed {
            user_id: alice_id.clone(),
        },
        actor_id: UserId::parse(bob.as_str()).unwrap(),
        ts: now_unix_ms(),
    };
    chatpipe_kafka::ChatProducer::new(&stack.kafka, 1)
        .unwrap()
        .send_json(
            &stack.topics.membership,
            conversation.as_str(),
            &removal,
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    for attempt in 0.. {
        let answer = client
            .send_message(
                conversation.as_str(),
                &format!("after-{attempt}"),
                "am I still in?",
            )
            .await;
        if answer["code"] == "forbidden" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removal was missed: still accepted after {attempt} sends"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_follow_kafka_and_retries_are_deduplicated_across_edges() {
    let stack = Stack::new().await;
    // Fan-out pushes the verdict a marked retry on another edge waits for.
    let (_fanout, _fanout_shutdown) = stack.fanout(&unique("fanout")).await;
    let (edge_a, _drain_a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _drain_b) = stack.edge(stack.edge_config("b")).await;
    let user = unique("u");
    let conversation = stack.conversation(&[&user]).await;
    let mut on_a = Client::connect(&edge_a, &stack.token(&user)).await;
    let first = on_a
        .send_message(conversation.as_str(), "retry-me", "once")
        .await;
    assert_eq!(first["op"], "ack", "{first}");
    let again_same_edge = on_a
        .send_message(conversation.as_str(), "retry-me", "once")
        .await;
    assert_eq!(again_same_edge["message_id"], first["message_id"]);
    let mut on_b = Client::connect(&edge_b, &stack.token(&user)).await;
    // Another edge cannot know the send: the client marks its retry, and
    // the edge acks it with the partition's verdict.
    let again_other_edge = on_b
        .send_message_raw(
            json!({"op":"send","conversation_id":conversation.as_str(),"client_msg_id":"retry-me","body":"once","resend":true}),
            "retry-me",
        )
        .await;
    assert_eq!(again_other_edge["message_id"], first["message_id"]);
    assert_eq!(again_other_edge["ts"], first["ts"]);
    let second = on_b
        .send_message(conversation.as_str(), "another", "twice")
        .await;
    assert_ne!(second["message_id"], first["message_id"]);

    // The same-edge retry produced nothing; the marked one on edge B is a
    // record of its own, which every consumer drops as a duplicate.
    let records = read_topic(&stack, &stack.topics.messages, 3).await;
    let ids: Vec<&str> = records
        .iter()
        .map(|(_, _, value)| value["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], first["message_id"].as_str().unwrap());
    assert_eq!(ids[2], second["message_id"].as_str().unwrap());
    assert_eq!(records[1].2["client_msg_id"], "retry-me");
    assert_eq!(records[1].2["resend"], true);
    assert!(records[0].2.get("resend").is_none(), "absent when false");
    for (partition, key, value) in &records {
        assert_eq!(key, conversation.as_str());
        assert_eq!(value["schema_version"], 1);
        assert_eq!(*partition, records[0].0, "one conversation, one partition");
    }
    assert_eq!(
        edge_a.metrics.sends_deduplicated.get() + edge_b.metrics.sends_deduplicated.get(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_by_the_heartbeat() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.heartbeat_interval_ms = 100;
    config.heartbeat_timeout_ms = 400;
    let (edge, _drain) = stack.edge(config).await;
    let user = unique("u");
    // Never reads again after hello: it answers no ping.
    let silent = Client::connect(&edge, &stack.token(&user)).await;
    eventually("heartbeat timeout", WAIT, || async {
        (edge.metrics.heartbeat_timeouts.get() == 1).then_some(())
    })
    .await;
    assert_eq!(edge.metrics.connections.get(), 0);
    // Its session stays resumable.
    let resumed = Client::resume(&edge, &stack.token(&user), &silent.session_id, 0).await;
    assert!(resumed.resumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_queued_for_a_detached_session_show_in_the_queue_gauge() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let user = unique("u");
    let token = stack.token(&user);
    let client = Client::connect(&edge, &token).await;
    let session = client.session_id.clone();
    drop(client);
    eventually("detach", WAIT, || async {
        (edge.metrics.connections.get() == 0).then_some(())
    })
    .await;
    push(&stack, &edge, &[&user], &["q1".into(), "q2".into()]).await;
    eventually("two frames queued", WAIT, || async {
        (edge.metrics.queued_frames.get() == 2).then_some(())
    })
    .await;
    let resumed = Client::resume(&edge, &token, &session, 0).await;
    assert!(resumed.resumed);
    eventually("the queue drained by the resume", WAIT, || async {
        (edge.metrics.queued_frames.get() == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_the_same_edge_replays_exactly_what_came_after_last_seq() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let user = unique("u");
    let token = stack.token(&user);
    let mut client = Client::connect(&edge, &token).await;
    push(
        &stack,
        &edge,
        &[&user],
        &["s1".into(), "s2".into(), "s3".into()],
    )
    .await;
    for expected in ["s1", "s2", "s3"] {
        let frame = client
            .wait_for("presence", |frame| frame["op"] == "presence")
            .await;
        assert_eq!(frame["status"], expected);
    }
    assert_eq!(client.last_seq, 3);
    client.send_json(json!({"op":"ack_seq","seq":1})).await;
    let session = client.session_id.clone();
    drop(client);
    eventually("detach", WAIT, || async {
        (edge.metrics.connections.get() == 0).then_some(())
    })
    .await;
    push(&stack, &edge, &[&user], &["s4".into(), "s5".into()]).await;

    let mut resumed = Client::resume(&edge, &token, &session, 2).await;
    assert!(resumed.resumed);
    assert_eq!(resumed.session_id, session);
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let frame = resumed
            .wait_for("replay", |frame| frame["op"] == "presence")
            .await;
        replayed.push((
            frame["seq"].as_u64().unwrap(),
            frame["status"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(
        replayed,
        [
            (3, "s3".to_owned()),
            (4, "s4".to_owned()),
            (5, "s5".to_owned())
        ]
    );

    let unknown = Client::resume(&edge, &token, "no-such-session", 2).await;
    assert!(!unknown.resumed);
    assert_ne!(unknown.session_id, session);
    assert_eq!(edge.metrics.sessions_resumed.get(), 1);
    assert_eq!(edge.metrics.resumes_refused.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_push_makes_every_session_start_over_from_history() {
    let stack = Stack::new().await;
    let (edge, _drain) = stack.edge(stack.edge_config("a")).await;
    let (attached_user, detached_user) = (unique("u"), unique("u"));
    let mut attached = Client::connect(&edge, &stack.token(&attached_user)).await;
    let detached = Client::connect(&edge, &stack.token(&detached_user)).await;
    let detached_session = detached.session_id.clone();
    drop(detached);
    eventually("one connection left", WAIT, || async {
        (edge.metrics.connections.get() == 1).then_some(())
    })
    .await;
    push(&stack, &edge, &[&attached_user], &["before".into()]).await;
    attached
        .wait_for("a frame before the resync", |frame| {
            frame["op"] == "presence"
        })
        .await;
    let attached_session = attached.session_id.clone();
    let attached_seq = attached.last_seq;

    push_batch(&stack, &edge, &[&attached_user], &["after".into()], true).await;
    while attached.read_frame(WAIT).await.is_some() {}
    let close = attached
        .wait_for("the resync close", |frame| frame["op"] == "__close")
        .await;
    assert_eq!(close["code"], 4010, "{close}");
    assert_eq!(edge.metrics.resyncs.get(), 1);

    // Neither session can be resumed: both clients catch up from history.
    let token = stack.token(&attached_user);
    let again = Client::resume(&edge, &token, &attached_session, attached_seq).await;
    assert!(!again.resumed, "the attached session starts over");
    assert_ne!(again.session_id, attached_session);
    let token = stack.token(&detached_user);
    let again = Client::resume(&edge, &token, &detached_session, 0).await;
    assert!(!again.resumed, "the detached session starts over");
    assert_eq!(edge.metrics.resumes_refused.get(), 2);

    // A session opened after the resync is served normally.
    let fresh_user = unique("u");
    let mut fresh = Client::connect(&edge, &stack.token(&fresh_user)).await;
    push(&stack, &edge, &[&fresh_user], &["later".into()]).await;
    let frame = fresh
        .wait_for("a frame after the resync", |frame| {
            frame["op"] == "presence"
        })
        .await;
    assert_eq!(frame["status"], "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_storm_is_shed_with_1013_and_a_retry_hint() {
    let stack = Stack::new().await;
    let mut config = stack.edge_config("a");
    config.connects_per_second_global = 5;
    config.connects_burst_global = 5;
    let (edge, _drain) = stack.edge(config).await;
    let mut accepted = Vec::new();
    let mut shed = 0;
    for _ in 0..30 {
        let user = unique("u");
        match Client::try_connect(&format!("{}?token={}", ws_url(&edge), stack.token(&user))).await
        {
            Connect::Accepted(client) => accepted.push(client),
            Connect::Closed { code, reason } => {
                assert_eq!(code, 1013);
                assert!(reason.contains("retry_after_ms="), "{reason}");
                shed += 1;
            }
        }
    }
    assert!(shed >= 20, "shed {shed}");
    assert!(accepted.len() >= 5);
    assert_eq!(
        reason_count(&edge.metrics.connections_rejected, "rate_limited_global"),
        shed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_edge_removes_the_routes_of_every_user_it_held() {
    let stack = Stack::new().await;
    let (edge, drain) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _fanout_stop) = stack.fanout(&unique("fanout")).await;
    let users: Vec<String> = (0..5).map(|_| unique("u")).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(Client::connect(&edge, &stack.token(user)).await);
    }
    for user in &users {
        stack.routed(&fanout, user, 1).await;
    }
    assert_eq!(fanout.routes().read(|table| table.route_count()), 5);
    drain.cancel();
    eventually("every route removed", WAIT, || {
        let left = fanout.routes().read(|table| table.route_count());
        async move { (left == 0).then_some(()) }
    })
    .await;
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_acks_in_flight_sends_then_sends_reconnect() {
    let stack = Stack::new().await;
    let (edge, drain) = stack.edge(stack.edge_config("a")).await;
    let user = unique("u");
    let conversation = stack.conversation(&[&user]).await;
    let mut client = Client::connect(&edge, &stack.token(&user)).await;
    for index in 0..20 {
        client
            .send_json(json!({"op":"send","conversation_id":conversation.as_str(),"client_msg_id":format!("d{index}"),"body":"in flight"}))
            .await;
    }
    // Let the edge read the frames, then drain.
    eventually("frames read", WAIT, || async {
        (edge.metrics.frames_in.get() >= 20).then_some(())
    })
    .await;
    drain.cancel();
    let mut acked = Vec::new();
    loop {
        let frame = client
            .read_frame(WAIT)
            .await
            .expect("reconnect before close");
        match frame["op"].as_str() {
            Some("ack") => acked.push(frame["message_id"].as_str().unwrap().to_owned()),
            Some("reconnect") => break,
            other => panic!("unexpected frame during drain: {other:?} {frame}"),
        }
    }
    assert_eq!(
        acked.len(),
        20,
        "every in-flight send was acked before reconnect"
    );
    assert!(client.read_frame(WAIT).await.is_none());
    assert_eq!(client.pending.last().unwrap()["code"], 1001);
    let records = read_topic(&stack, &stack.topics.messages, 20).await;
    let in_kafka: Vec<String> = records
        .iter()
        .map(|(_, _, value)| value["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_kafka, acked, "acked means durable, in order");
    tokio::time::timeout(Duration::from_secs(10), edge.join())
        .await
        .expect("edge stops in time")
        .unwrap();
}
