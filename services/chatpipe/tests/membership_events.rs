//! Membership frames and presence across edges, end to end on the real
//! engines: the HTTP API changes membership, fan-out delivers the
//! `chat.membership` records as frames through real edges, and presence
//! follows a user over two edges.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::*;

/// How long a client listens to be sure a frame did not come: the frame it
/// would share a push with has already arrived, so this only absorbs
/// scheduling.
const QUIET: Duration = Duration::from_millis(700);

/// Waits for `op` about `conversation` (and, when given, naming `user`).
async fn membership_frame(
    client: &mut Client,
    op: &str,
    conversation: &str,
    user: Option<&str>,
) -> Value {
    let frame = client
        .wait_for(op, |frame| {
            frame["op"] == op
                && frame["conversation_id"] == conversation
                && user.is_none_or(|user| frame["user_id"] == user)
        })
        .await;
    assert!(
        frame["seq"].as_u64().is_some(),
        "in the session stream: {frame}"
    );
    frame
}

/// Matches a `presence` frame saying `user` is `status`.
fn presence_of(user: &str, status: &'static str) -> impl Fn(&Value) -> bool + use<> {
    let user = user.to_owned();
    move |frame: &Value| {
        frame["op"] == "presence" && frame["user_id"] == user.as_str() && frame["status"] == status
    }
}

/// Frames that arrive within [`QUIET`] (and the ones already pending).
async fn drain_frames(client: &mut Client) -> Vec<Value> {
    let mut frames = std::mem::take(&mut client.pending);
    while let Some(frame) = client.read_frame(QUIET).await {
        frames.push(frame);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_the_user_concerned_get_every_membership_change() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _edge_stop) = stack.edge(stack.edge_config("a")).await;
    let (_fanout, _fanout_stop) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let (alice_token, bob_token, carol_token) =
        (stack.token(&alice), stack.token(&bob), stack.token(&carol));
    let mut alice_client = Client::connect(&edge, &alice_token).await;
    let mut bob_client = Client::connect(&edge, &bob_token).await;
    let mut carol_client = Client::connect(&edge, &carol_token).await;

    // Created: both members are told, with what they need to show it.
    let (status, created) = full
        .post(
            &alice_token,
            "/v1/conversations",
            json!({"members": [bob], "title": "plans", "history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let conversation = created["conversation_id"].as_str().unwrap().to_owned();
    for client in [&mut alice_client, &mut bob_client] {
        let frame = membership_frame(client, "conversation_created", &conversation, None).await;
        assert_eq!(frame["title"], "plans");
        assert_eq!(frame["history_visibility"], "joined");
        assert_eq!(frame["member_count"], 2);
        assert_eq!(frame["actor_id"], alice.as_str());
    }
    let before = alice_client
        .send_message(&conversation, "m1", "before carol")
        .await;
    assert_eq!(before["op"], "ack", "{before}");
    bob_client.messages(&conversation, 1).await;

    // Added: carol learns the conversation before any of its messages, and
    // pages its history as `joined` allows (nothing from before her).
    let members = format!("/v1/conversations/{conversation}/members");
    let (status, body) = full
        .post(&alice_token, &members, json!({"user_id": carol}))
        .await;
    assert_eq!(status, 200, "{body}");
    let added = membership_frame(
        &mut carol_client,
        "member_added",
        &conversation,
        Some(&carol),
    )
    .await;
    assert_eq!(added["actor_id"], alice.as_str());
    for client in [&mut alice_client, &mut bob_client] {
        membership_frame(client, "member_added", &conversation, Some(&carol)).await;
    }
    assert!(
        full.latest_history(&carol_token, &conversation)
            .await
            .is_empty(),
        "history before carol joined is not hers"
    );
    let after = alice_client
        .send_message(&conversation, "m2", "welcome carol")
        .await;
    assert_eq!(after["op"], "ack", "{after}");
    let live = carol_client.messages(&conversation, 1).await;
    assert_eq!(ids(&live), [after["message_id"].as_str().unwrap()]);
    let carol_history = eventually("m2 in carol's history", WAIT, || async {
        let history = full.latest_history(&carol_token, &conversation).await;
        (!history.is_empty()).then_some(history)
    })
    .await;
    assert_eq!(ids(&carol_history), ids(&live));

    // Settings changed: every member is told; carol now sees all history.
    let patched = |path: String, body: Value| {
        let (full, token) = (&full, &alice_token);
        async move {
            let (status, answer) = full.patch(token, &path, body).await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    patched(
        format!("/v1/conversations/{conversation}"),
        json!({"history_visibility": "shared"}),
    )
    .await;
    for client in [&mut alice_client, &mut bob_client, &mut carol_client] {
        let frame = membership_frame(client, "conversation_updated", &conversation, None).await;
        assert_eq!(frame["history_visibility"], "shared");
    }
    assert_eq!(
        ids(&full.latest_history(&carol_token, &conversation).await),
        [
            before["message_id"].as_str().unwrap(),
            after["message_id"].as_str().unwrap()
        ]
    );

    // Role changed: every member is told.
    patched(format!("{members}/{carol}"), json!({"role": "admin"})).await;
    for client in [&mut alice_client, &mut bob_client, &mut carol_client] {
        let frame =
            membership_frame(client, "member_role_changed", &conversation, Some(&carol)).await;
        assert_eq!(frame["role"], "admin");
    }

    // Removed: bob is told he is out, the others that he left; then he
    // receives nothing more of the conversation.
    assert_eq!(
        full.delete(&alice_token, &format!("{members}/{bob}")).await,
        204
    );
    let removed =
        membership_frame(&mut bob_client, "member_removed", &conversation, Some(&bob)).await;
    assert_eq!(removed["actor_id"], alice.as_str());
    for client in [&mut alice_client, &mut carol_client] {
        membership_frame(client, "member_removed", &conversation, Some(&bob)).await;
    }
    let gone = alice_client
        .send_message(&conversation, "m3", "bob is gone")
        .await;
    assert_eq!(gone["op"], "ack", "{gone}");
    carol_client.messages(&conversation, 1).await;
    let bob_frames = drain_frames(&mut bob_client).await;
    assert!(
        !bob_frames.iter().any(|frame| frame["op"] == "message"
            && frame["message"]["message_id"] == gone["message_id"]),
        "a removed member receives no further message: {bob_frames:?}"
    );

    // A member who leaves is told too, and the last one standing as well.
    assert_eq!(
        full.delete(&carol_token, &format!("{members}/{carol}"))
            .await,
        204
    );
    membership_frame(
        &mut carol_client,
        "member_removed",
        &conversation,
        Some(&carol),
    )
    .await;
    membership_frame(
        &mut alice_client,
        "member_removed",
        &conversation,
        Some(&carol),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_two_edges_stays_online_until_the_last_session_closes() {
    let stack = Stack::new().await;
    // A closed connection's session waits for a resume this long before
    // it counts as gone (2 minutes by default).
    let (edge_a, _a_stop) = stack
        .edge(chatpipe_edge::EdgeConfig {
            resume_window_ms: 1_000,
            ..stack.edge_config("a")
        })
        .await;
    let (edge_b, b_drain) = stack.edge(stack.edge_config("b")).await;
    let (fanout, _fanout_stop) = stack.fanout(&unique("fanout")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    stack.conversation(&[&alice, &bob]).await;
    let mut watcher = Client::connect(&edge_a, &stack.token(&bob)).await;
    stack.routed(&fanout, &bob, 1).await;
    let is_alice = |status: &'static str| presence_of(&alice, status);
    let unchanged = || fanout.metrics().items_skipped_for("presence_unchanged");

    // Online on a, then on b as well: one `online`.
    let mut on_a = Client::connect(&edge_a, &stack.token(&alice)).await;
    watcher.wait_for("alice online", is_alice("online")).await;
    let on_b = Client::connect(&edge_b, &stack.token(&alice)).await;
    stack.routed(&fanout, &alice, 2).await;
    eventually("b's online judged unchanged", WAIT, || {
        let judged = unchanged();
        async move { (judged == 1).then_some(()) }
    })
    .await;

    // Edge b drains: alice is still on a, so nobody hears `offline`.
    b_drain.cancel();
    stack.routed(&fanout, &alice, 1).await;
    eventually("b's offline judged unchanged", WAIT, || {
        let judged = unchanged();
        async move { (judged == 2).then_some(()) }
    })
    .await;
    let heard = drain_frames(&mut watcher).await;
    assert!(
        !heard.iter().any(is_alice("offline")),
        "alice left one edge only: {heard:?}"
    );
    assert!(
        !heard.iter().any(is_alice("online")),
        "nor is she announced again: {heard:?}"
    );
    drop(on_b);

    // Her last session anywhere closes (and is not resumed): now she is
    // offline.
    on_a.connection.close().await.expect("close");
    watcher.wait_for("alice offline", is_alice("offline")).await;
    stack.routed(&fanout, &alice, 0).await;
    let _ = edge_b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_only_edge_crashed_goes_offline_when_its_lease_runs_out() {
    use chatpipe_core::records::{
        EdgeRecord, EdgeState, Event, EventRecord, PresenceStatus, RouteRecord, SCHEMA_VERSION,
        SessionKey,
    };
    use chatpipe_core::time::now_unix_ms;
    use chatpipe_core::{EdgeId, UserId};

    let stack = Stack::new().await;
    let (edge, _edge_stop) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _fanout_stop) = stack.fanout(&unique("fanout")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    stack.conversation(&[&alice, &bob]).await;
    let mut watcher = Client::connect(&edge, &stack.token(&bob)).await;
    stack.routed(&fanout, &bob, 1).await;

    // An edge that held alice and died without a word: its short lease,
    // her route and its `online` report are all it ever wrote.
    let producer = chatpipe_kafka::ChatProducer::new(&stack.kafka, 0).expect("producer");
    let deadline = Duration::from_secs(10);
    let crashed = EdgeId::parse(format!("{}crashed", stack.prefix.trim_end_matches('.'))).unwrap();
    let alice_id = UserId::parse(&alice).unwrap();
    let now = now_unix_ms();
    let lease = EdgeRecord {
        schema_version: SCHEMA_VERSION,
        edge_id: crashed.clone(),
        // Nothing listens there: nothing is pushed to it in this test.
        push_addr: "127.0.0.1:9".to_owned(),
        state: EdgeState::Serving,
        lease_expires_ms: now + 2_000,
        worker_id: None,
        ts: now,
    };
    let route = RouteRecord {
        schema_version: SCHEMA_VERSION,
        user_id: alice_id.clone(),
        edge_id: crashed.clone(),
        sessions: 1,
        ts: now,
    };
    let online = EventRecord {
        schema_version: SCHEMA_VERSION,
        event: Event::Presence {
            user_id: alice_id.clone(),
            status: PresenceStatus::Online,
            edge_id: Some(crashed.clone()),
        },
        ts: now,
    };
    let sessions = &stack.topics.sessions;
    producer
        .send_json(
            sessions,
            &SessionKey::Edge(crashed.clone()).encode(),
            &lease,
            deadline,
        )
        .await
        .expect("lease written");
    producer
        .send_json(
            sessions,
            &SessionKey::Route(alice_id.clone(), crashed.clone()).encode(),
            &route,
            deadline,
        )
        .await
        .expect("route written");
    producer
        .send_json(&stack.topics.events, &alice, &online, deadline)
        .await
        .expect("presence written");
    let is_alice = |status: &'static str| presence_of(&alice, status);
    watcher.wait_for("alice online", is_alice("online")).await;

    // Within a maintenance round (10 s) of the lease's end, fan-out reports
    // her offline, once.
    watcher.wait_for("alice offline", is_alice("offline")).await;
    assert_eq!(fanout.metrics().edges_expired.get(), 1);
    assert_eq!(fanout.metrics().expired_edge_offline_reports.get(), 1);
    let heard = drain_frames(&mut watcher).await;
    assert!(
        !heard.iter().any(is_alice("offline")),
        "one offline only: {heard:?}"
    );
}
