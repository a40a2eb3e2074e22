//! The message path end to end: WebSocket → edge → Kafka → fan-out →
//! gRPC → the edges that hold the recipients, on real Kafka and Cassandra.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_online_member_on_every_device_in_order() {
    let stack = Stack::new().await;
    let (edge_a, _a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _b) = stack.edge(stack.edge_config("b")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let group = stack.conversation(&[&alice, &bob, &carol]).await;
    let direct = stack.conversation(&[&alice, &bob]).await;

    let mut alice_phone = Client::connect(&edge_a, &stack.token(&alice)).await;
    let mut alice_laptop = Client::connect(&edge_b, &stack.token(&alice)).await;
    let mut bob_client = Client::connect(&edge_b, &stack.token(&bob)).await;
    let mut carol_client = Client::connect(&edge_a, &stack.token(&carol)).await;
    stack.routed(&fanout, &alice, 2).await;
    stack.routed(&fanout, &bob, 1).await;
    stack.routed(&fanout, &carol, 1).await;

    let mut acked = Vec::new();
    for index in 0..20 {
        alice_phone
            .send_json(json!({"op":"send","conversation_id":group.as_str(),"client_msg_id":format!("g{index}"),"body":format!("group {index}")}))
            .await;
    }
    for index in 0..20 {
        let reference = format!("g{index}");
        let ack = alice_phone
            .wait_for("ack", |frame| {
                frame["op"] == "ack" && frame["client_msg_id"] == reference.as_str()
            })
            .await;
        acked.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    let direct_ack = bob_client
        .send_message(direct.as_str(), "d1", "just us")
        .await;
    assert_eq!(direct_ack["op"], "ack");

    for (name, client) in [
        ("alice phone", &mut alice_phone),
        ("alice laptop", &mut alice_laptop),
        ("bob", &mut bob_client),
        ("carol", &mut carol_client),
    ] {
        let received = client.messages(group.as_str(), 20).await;
        assert_eq!(ids(&received), acked, "{name} got the group in order");
        assert_eq!(received[0]["body"], "group 0");
        assert_eq!(received[0]["client_msg_id"], "g0");
        assert_eq!(received[0]["sender_id"], alice.as_str());
    }
    for client in [&mut alice_phone, &mut alice_laptop, &mut bob_client] {
        let received = client.messages(direct.as_str(), 1).await;
        assert_eq!(received[0]["message_id"], direct_ack["message_id"]);
    }
    // Carol is not in the 1:1: nothing of it reaches her.
    assert!(
        carol_client
            .pending
            .iter()
            .all(|frame| frame["message"]["conversation_id"] != direct.as_str())
    );
    // The fan-out counts a delivery when the edge answers the push, which
    // can be just after the client has read the frame.
    eventually("the fan-out to count every delivery", WAIT, || async {
        (fanout.metrics().deliveries.get() >= 20 * 4 + 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_read_and_presence_reach_the_others_but_are_not_history() {
    let stack = Stack::new().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let mut alice_client = Client::connect(&edge, &stack.token(&alice)).await;
    stack.routed(&fanout, &alice, 1).await;
    let mut bob_client = Client::connect(&edge, &stack.token(&bob)).await;
    let online = alice_client
        .wait_for("presence", |frame| {
            frame["op"] == "presence" && frame["user_id"] == bob.as_str()
        })
        .await;
    assert_eq!(online["status"], "online");
    stack.routed(&fanout, &bob, 1).await;

    alice_client
        .send_json(json!({"op":"typing","conversation_id":conversation.as_str()}))
        .await;
    let typing = bob_client
        .wait_for("typing", |frame| frame["op"] == "typing")
        .await;
    assert_eq!(
        (
            typing["conversation_id"].as_str(),
            typing["user_id"].as_str()
        ),
        (Some(conversation.as_str()), Some(alice.as_str()))
    );

    let ack = alice_client
        .send_message(conversation.as_str(), "m1", "read me")
        .await;
    bob_client.messages(conversation.as_str(), 1).await;
    bob_client
        .send_json(json!({"op":"read","conversation_id":conversation.as_str(),"message_id":ack["message_id"]}))
        .await;
    let read = alice_client
        .wait_for("read", |frame| frame["op"] == "read")
        .await;
    assert_eq!(read["message_id"], ack["message_id"]);
    assert_eq!(read["user_id"], bob.as_str());
    // The actor does not get its own typing or read echo.
    assert!(
        alice_client
            .pending
            .iter()
            .all(|frame| frame["op"] != "typing")
    );
    assert!(bob_client.pending.iter().all(|frame| frame["op"] != "read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fanout_worker_loses_nothing_after_the_group_rebalances() {
    let stack = Stack::new().await;
    let (edge, _e) = stack.edge(stack.edge_config("a")).await;
    let group_id = unique("fanout");
    let (first_worker, first_shutdown) = stack.fanout(&group_id).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let mut sender = Client::connect(&edge, &stack.token(&alice)).await;
    let mut receiver = Client::connect(&edge, &stack.token(&bob)).await;
    stack.routed(&first_worker, &bob, 1).await;

    let mut acked = Vec::new();
    for index in 0..60 {
        if index == 20 {
            // Kill the worker without its orderly shutdown, mid-stream.
            first_worker.abort();
            first_shutdown.cancel();
        }
        let ack = sender
            .send_message(
                conversation.as_str(),
                &format!("k{index}"),
                &format!("n{index}"),
            )
            .await;
        acked.push(ack["message_id"].as_str().unwrap().to_owned());
        if index == 30 {
            let (second_worker, _second) = stack.fanout(&group_id).await;
            stack.routed(&second_worker, &bob, 1).await;
            std::mem::forget(second_worker);
        }
    }
    let received = receiver.messages(conversation.as_str(), 60).await;
    assert_eq!(
        ids(&received),
        acked,
        "every message, first occurrences in order"
    );
    let distinct: HashSet<&String> = acked.iter().collect();
    assert_eq!(distinct.len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_member_group_costs_one_push_per_edge() {
    let stack = Stack::new().await;
    let (edge_a, _a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _b) = stack.edge(stack.edge_config("b")).await;
    let (fanout, _f) = stack.fanout(&unique("fanout")).await;
    let members: Vec<String> = (0..10_000)
        .map(|index| format!("{}-m{index}", stack.prefix.trim_end_matches('.')))
        .collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let conversation = stack.conversation(&member_refs).await;
    let mut online = Vec::new();
    for (index, member) in members.iter().take(6).enumerate() {
        let edge = if index % 2 == 0 { &edge_a } else { &edge_b };
        online.push(Client::connect(edge, &stack.token(member)).await);
    }
    for member in members.iter().take(6) {
        stack.routed(&fanout, member, 1).await;
    }
    // Presence does not flow in a group this large (`presence_max_members`),
    // so the only pushes from here on carry the message.
    let pushes_before = edge_a.metrics.push_batches.get() + edge_b.metrics.push_batches.get();
    let ack = online[0]
        .send_message(conversation.as_str(), "big", "hello everyone")
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    for client in &mut online {
        let received = client.messages(conversation.as_str(), 1).await;
        assert_eq!(received[0]["message_id"], ack["message_id"]);
    }
    let pushes =
        edge_a.metrics.push_batches.get() + edge_b.metrics.push_batches.get() - pushes_before;
    assert_eq!(
        pushes, 2,
        "one push per edge for one message to 10,000 members"
    );
    // Counted once the batch's pushes are all answered, which may be just
    // after the clients saw the message.
    eventually("the offline members were counted", WAIT, || async {
        (fanout.metrics().recipients_offline.get() >= 9_994).then_some(())
    })
    .await;
}
