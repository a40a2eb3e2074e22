//! Every role together on the real engines: conversations through the HTTP
//! API, messages over WebSocket, history from Cassandra, search from
//! OpenSearch, and the client's catch-up when a resume cannot be served.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The README's catch-up algorithm: page `after` the last seen id until
/// history holds `expected` (bounded wait: persist lags by milliseconds).
async fn catch_up(
    full: &FullStack,
    token: &str,
    conversation: &str,
    last_seen: &str,
    expected: usize,
) -> Vec<Value> {
    eventually("history catch-up", WAIT, || async {
        let mut caught = Vec::new();
        let mut after = last_seen.to_owned();
        loop {
            let (status, page) = full
                .get(
                    token,
                    &format!("/v1/conversations/{conversation}/messages?after={after}&limit=200"),
                )
                .await;
            assert_eq!(status, 200, "{page}");
            let mut messages = page["messages"].as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            messages.reverse(); // pages are newest first
            after = messages.last().unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned();
            caught.extend(messages);
        }
        (caught.len() >= expected).then_some(caught)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_resume_catches_up_from_history_without_gap_or_duplicate() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge_a, _a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _b) = stack.edge(stack.edge_config("b")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (alice_token, bob_token) = (stack.token(&alice), stack.token(&bob));
    let conversation = full
        .create_conversation(&alice_token, json!({"members":[bob], "title":"catch-up"}))
        .await;

    let mut sender = Client::connect(&edge_a, &alice_token).await;
    let mut receiver = Client::connect(&edge_a, &bob_token).await;
    stack.routed(&fanout, &bob, 1).await;
    let mut sent = Vec::new();
    for index in 0..5 {
        let ack = sender
            .send_message(&conversation, &format!("before{index}"), "live")
            .await;
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    let live = receiver.messages(&conversation, 5).await;
    let last_seen = live.last().unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (old_session, old_seq) = (receiver.session_id.clone(), receiver.last_seq);
    drop(receiver);

    // Messages sent while bob is away.
    for index in 0..10 {
        let ack = sender
            .send_message(&conversation, &format!("away{index}"), "missed")
            .await;
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    // Bob comes back on the other edge: the resume cannot be served there.
    let mut back = Client::resume(&edge_b, &bob_token, &old_session, old_seq).await;
    assert!(!back.resumed);
    // Edge A still holds the detached session until its resume window ends.
    stack.routed(&fanout, &bob, 2).await;
    let caught = catch_up(&full, &bob_token, &conversation, &last_seen, 10).await;
    for index in 0..5 {
        let ack = sender
            .send_message(&conversation, &format!("after{index}"), "live again")
            .await;
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    // Live frames may repeat messages the catch-up already found; read until
    // the last one sent arrives.
    let last_sent = sent.last().unwrap().clone();
    let mut live_again = Vec::new();
    while live_again
        .last()
        .is_none_or(|message: &Value| message["message_id"] != last_sent.as_str())
    {
        let frame = back
            .wait_for("live message", |frame| {
                frame["op"] == "message"
                    && frame["message"]["conversation_id"] == conversation.as_str()
            })
            .await;
        live_again.push(frame["message"].clone());
    }

    let mut seen = HashSet::new();
    let mut timeline: Vec<String> = Vec::new();
    for id in message_ids(&live)
        .into_iter()
        .chain(message_ids(&caught))
        .chain(message_ids(&live_again))
    {
        if seen.insert(id.clone()) {
            timeline.push(id);
        }
    }
    assert_eq!(timeline, sent, "no gap, no duplicate, in order");

    // History holds every message exactly once, newest first.
    let history = eventually("history complete", WAIT, || async {
        let history = message_ids(&full.latest_history(&bob_token, &conversation).await);
        (history.len() >= sent.len()).then_some(history)
    })
    .await;
    assert_eq!(history, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_receiving_and_loses_history_and_search() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let alice_token = stack.token(&alice);
    let carol_token = stack.token(&carol);
    let (_, created) = full
        .post(
            &alice_token,
            "/v1/conversations",
            json!({"members":[bob, carol], "title":"team"}),
        )
        .await;
    let conversation = created["conversation_id"].as_str().unwrap().to_owned();
    let mut sender = Client::connect(&edge, &alice_token).await;
    let mut removed = Client::connect(&edge, &carol_token).await;
    stack.routed(&fanout, &carol, 1).await;
    sender
        .send_message(&conversation, "m1", "everyone sees this")
        .await;
    removed.messages(&conversation, 1).await;

    assert_eq!(
        full.delete(
            &alice_token,
            &format!("/v1/conversations/{conversation}/members/{carol}")
        )
        .await,
        204
    );
    // Fan-out sees the removal through the membership topic; from then on
    // nothing of the conversation reaches carol.
    eventually("membership invalidated", WAIT, || async {
        (fanout.metrics().membership_invalidations.get() >= 1).then_some(())
    })
    .await;
    let after = sender
        .send_message(&conversation, "m2", "carol is gone")
        .await;
    assert_eq!(after["op"], "ack");
    // Bob, still a member, receives it; carol, removed, does not.
    let (status, page) = full
        .get(
            &stack.token(&bob),
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let mut carol_frames = Vec::new();
    while let Some(frame) = removed.read_frame(Duration::from_secs(2)).await {
        carol_frames.push(frame);
    }
    assert!(
        carol_frames
            .iter()
            .all(|frame| frame["message"]["message_id"] != after["message_id"]),
        "a removed member received a message: {carol_frames:?}"
    );
    let (status, _) = full
        .get(
            &carol_token,
            &format!("/v1/conversations/{conversation}/messages"),
        )
        .await;
    assert_eq!(
        status, 404,
        "not a member: the same 404 as an unknown conversation"
    );
    let (status, _) = full
        .get(
            &carol_token,
            &format!("/v1/search?q=everyone&conversation_id={conversation}"),
        )
        .await;
    assert_eq!(
        status, 404,
        "not a member: the same 404 as an unknown conversation"
    );
    let refused = removed
        .send_message(&conversation, "m3", "let me back")
        .await;
    assert_eq!(refused["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_over_the_websocket_is_found_by_members_only() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let (alice, bob, mallory) = (unique("alice"), unique("bob"), unique("mallory"));
    let (_, created) = full
        .post(
            &stack.token(&alice),
            "/v1/conversations",
            json!({"members":[bob]}),
        )
        .await;
    let conversation = created["conversation_id"].as_str().unwrap().to_owned();
    let word = format!("zebra{}", &unique("w")[2..10]);
    let mut client = Client::connect(&edge, &stack.token(&alice)).await;
    let ack = client
        .send_message(&conversation, "s1", &format!("the {word} crossed the road"))
        .await;
    assert_eq!(ack["op"], "ack");

    let bob_token = stack.token(&bob);
    let hit = eventually("searchable", WAIT, || async {
        let (status, page) = full.get(&bob_token, &format!("/v1/search?q={word}")).await;
        assert_eq!(status, 200, "{page}");
        page["hits"]
            .as_array()
            .and_then(|hits| hits.first().cloned())
    })
    .await;
    assert_eq!(hit["message"]["message_id"], ack["message_id"]);
    assert!(hit.to_string().contains("<em>"), "highlighted: {hit}");

    let mallory_token = stack.token(&mallory);
    let (status, page) = full
        .get(&mallory_token, &format!("/v1/search?q={word}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        page["hits"].as_array().map(Vec::len),
        Some(0),
        "a non-member finds nothing"
    );
    let (status, _) = full
        .get(
            &mallory_token,
            &format!("/v1/search?q={word}&conversation_id={conversation}"),
        )
        .await;
    assert_eq!(
        status, 404,
        "not a member: the same 404 as an unknown conversation"
    );
    for hostile in [
        "%22unbalanced",
        "%7B%22query%22%3A%7B%22match_all%22%3A%7B%7D%7D%7D",
        "%2F.*.*.*.*%2F",
        "*",
    ] {
        let (status, page) = full
            .get(&bob_token, &format!("/v1/search?q={hostile}"))
            .await;
        assert!(status == 200 || status == 400, "{hostile}: {status} {page}");
    }
}

/// Issue 10's ordering defect, on one edge: many connections of one
/// conversation sending at once (two runtime threads interleave them) still
/// give ids in partition order, so the live order, the id order and the
/// history order are one order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_one_edge_get_ids_in_partition_order() {
    const SENDERS: usize = 6;
    const EACH: usize = 30;
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let reader = unique("reader");
    let senders: Vec<String> = (0..SENDERS).map(|_| unique("sender")).collect();
    let mut members: Vec<&str> = senders.iter().map(String::as_str).collect();
    members.push(&reader);
    let conversation = stack.conversation(&members).await;
    let mut receiver = Client::connect(&edge, &stack.token(&reader)).await;
    stack.routed(&fanout, &reader, 1).await;

    let mut clients = Vec::new();
    for sender in &senders {
        clients.push(Client::connect(&edge, &stack.token(sender)).await);
    }
    // Every sender fires its whole burst without waiting for acks, all at
    // once, then collects its acks.
    let bursts = clients.into_iter().map(|mut client| {
        let conversation = conversation.as_str().to_owned();
        tokio::spawn(async move {
            for index in 0..EACH {
                client
                    .send_json(json!({"op":"send","conversation_id":conversation,"client_msg_id":format!("m{index}"),"body":format!("burst {index}")}))
                    .await;
            }
            for index in 0..EACH {
                let reference = format!("m{index}");
                client
                    .wait_for("ack", |frame| {
                        frame["op"] == "ack" && frame["client_msg_id"] == reference.as_str()
                    })
                    .await;
            }
        })
    });
    for burst in futures::future::join_all(bursts).await {
        burst.expect("sender finished");
    }

    let live = message_ids(
        &receiver
            .messages(conversation.as_str(), SENDERS * EACH)
            .await,
    );
    let as_numbers: Vec<u64> = live.iter().map(|id| id.parse().unwrap()).collect();
    let mut sorted = as_numbers.clone();
    sorted.sort_unstable();
    assert_eq!(as_numbers, sorted, "live (partition) order is id order");

    let reader_token = stack.token(&reader);
    let history = eventually("history holds every message", WAIT, || async {
        let messages = full
            .latest_history(&reader_token, conversation.as_str())
            .await;
        (messages.len() == SENDERS * EACH).then_some(message_ids(&messages))
    })
    .await;
    assert_eq!(history, live, "history order is the live order");
    assert_eq!(
        fanout.metrics().send_dedup.order_inversions.get(),
        0,
        "fan-out saw no inversion"
    );
}
