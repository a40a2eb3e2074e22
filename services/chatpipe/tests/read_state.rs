//! Read state end to end on the real engines: read markers stored by
//! persist and synced to the reader's other devices (on another edge),
//! unread and mention counts that stay exact across a `read`, a lower
//! marker, a persist restart in the middle of a burst and a duplicate
//! retry, and the inbox (`GET /v1/conversations`): last activity order,
//! last message (a tombstone once deleted), role, and cursor pages without
//! gaps or duplicates. Non-members are refused.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The caller's read state in `conversation` (asserting a 200).
async fn read_state(full: &FullStack, token: &str, conversation: &str) -> Value {
    let (status, state) = full
        .get(
            token,
            &format!("/v1/conversations/{conversation}/read-state"),
        )
        .await;
    assert_eq!(status, 200, "{state}");
    state
}

/// `(unread_count, mention_count)` once both are exact.
fn counts(state: &Value) -> (u64, u64) {
    assert_eq!(state["unread_count_exact"], true, "{state}");
    assert_eq!(state["mention_count_exact"], true, "{state}");
    (
        state["unread_count"].as_u64().unwrap(),
        state["mention_count"].as_u64().unwrap(),
    )
}

/// Waits until the caller's counts in `conversation` are `expected`.
async fn counts_become(full: &FullStack, token: &str, conversation: &str, expected: (u64, u64)) {
    eventually(
        &format!("counts {expected:?} in {conversation}"),
        WAIT,
        || async {
            let state = read_state(full, token, conversation).await;
            (counts(&state) == expected).then_some(())
        },
    )
    .await;
}

/// Sends a message that mentions `mentions`; returns its message id.
async fn send(
    client: &mut Client,
    conversation: &str,
    client_msg_id: &str,
    mentions: &[&str],
) -> String {
    let mut frame = json!({
        "op": "send",
        "conversation_id": conversation,
        "client_msg_id": client_msg_id,
        "body": format!("message {client_msg_id}"),
    });
    if !mentions.is_empty() {
        frame["mentions"] = json!(mentions);
    }
    let ack = client.send_message_raw(frame, client_msg_id).await;
    assert_eq!(ack["op"], "ack", "{ack}");
    ack["message_id"].as_str().unwrap().to_owned()
}

/// Creates a conversation over the API as `token`; returns its id.
async fn create(full: &FullStack, token: &str, members: &[&str], title: &str) -> String {
    let (status, created) = full
        .post(
            token,
            "/v1/conversations",
            json!({"members": members, "title": title}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["conversation_id"].as_str().unwrap().to_owned()
}

/// Whether a `read` frame of `user` up to `message_id` arrives within `wait`.
async fn gets_read(client: &mut Client, user: &str, message_id: &str, wait: Duration) -> bool {
    let matches = |frame: &Value| {
        frame["op"] == "read" && frame["user_id"] == user && frame["message_id"] == message_id
    };
    if client.pending.iter().any(matches) {
        return true;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.read_frame(left).await {
            Some(frame) if matches(&frame) => return true,
            Some(frame) => client.pending.push(frame),
            None => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_and_mentions_stay_exact_across_reads_a_persist_restart_and_a_retry() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    // History and read state are written by a persist group this test
    // stops and restarts; the stack's own persist stops for good.
    full.persist.shutdown().cancel();
    let persist_group = unique("persist");
    let mut persist = Some(stack.persist(&persist_group).await);
    let (edge_a, _a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _b) = stack.edge(stack.edge_config("b")).await;
    let (fanout, _fanout) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let (alice_token, bob_token, carol_token) =
        (stack.token(&alice), stack.token(&bob), stack.token(&carol));
    let conversation = create(&full, &alice_token, &[&bob, &carol], "counts").await;
    let c = conversation.as_str();

    let mut alice_a = Client::connect(&edge_a, &alice_token).await;
    let mut alice_b = Client::connect(&edge_b, &alice_token).await;
    // Bob's two devices, on two edges.
    let mut bob_phone = Client::connect(&edge_a, &bob_token).await;
    let mut bob_laptop = Client::connect(&edge_b, &bob_token).await;
    stack.routed(&fanout, &bob, 2).await;
    stack.routed(&fanout, &alice, 2).await;
    // Nothing yet: a new member has nothing unread.
    assert_eq!(counts(&read_state(&full, &bob_token, c).await), (0, 0));

    // A burst: five messages, two of them mention Bob, one Carol (and one
    // names Alice herself, which counts for nobody).
    let mut ids = Vec::new();
    for (index, mentions) in [
        vec![],
        vec![bob.as_str()],
        vec![carol.as_str(), alice.as_str()],
        vec![],
        vec![bob.as_str(), bob.as_str()],
    ]
    .iter()
    .enumerate()
    {
        ids.push(send(&mut alice_a, c, &format!("m{index}"), mentions).await);
    }
    // The live frame names the mentioned users, the sender never.
    let delivered = bob_laptop.messages(c, 5).await;
    assert_eq!(delivered[1]["mentions"], json!([bob]));
    assert_eq!(delivered[2]["mentions"], json!([carol]));
    assert!(delivered[0].get("mentions").is_none());
    counts_become(&full, &bob_token, c, (5, 2)).await;
    counts_become(&full, &carol_token, c, (5, 1)).await;
    // Her own messages are never unread for the sender.
    counts_become(&full, &alice_token, c, (0, 0)).await;

    // Bob reads up to the third message on his phone: the laptop (another
    // edge) and Alice get the marker, the phone does not get it back.
    bob_phone
        .send_json(json!({"op":"read","conversation_id":c,"message_id":ids[2]}))
        .await;
    assert!(gets_read(&mut bob_laptop, &bob, &ids[2], WAIT).await);
    assert!(gets_read(&mut alice_b, &bob, &ids[2], WAIT).await);
    counts_become(&full, &bob_token, c, (2, 1)).await;
    let state = read_state(&full, &bob_token, c).await;
    assert_eq!(state["read_marker"], ids[2].as_str());
    assert!(
        !gets_read(&mut bob_phone, &bob, &ids[2], Duration::from_millis(500)).await,
        "the session that sent the marker does not get it back"
    );

    // A lower marker is accepted and changes nothing.
    let persist_metrics = persist.as_ref().unwrap().metrics().clone();
    let markers_before = persist_metrics.read_markers_written.get();
    bob_laptop
        .send_json(json!({"op":"read","conversation_id":c,"message_id":ids[0]}))
        .await;
    eventually("persist to take the lower marker", WAIT, || {
        let written = persist_metrics.read_markers_written.get();
        async move { (written > markers_before).then_some(()) }
    })
    .await;
    let state = read_state(&full, &bob_token, c).await;
    assert_eq!(state["read_marker"], ids[2].as_str(), "{state}");
    assert_eq!(counts(&state), (2, 1));

    // Persist stops in the middle of the next burst; a retry of one send
    // reaches another edge (a second record in Kafka) meanwhile.
    ids.push(send(&mut alice_a, c, "m5", &[&bob]).await);
    let stopped = persist.take().unwrap();
    stopped.shutdown().cancel();
    stopped.join().await.expect("persist stops cleanly");
    ids.push(send(&mut alice_a, c, "m6", &[]).await);
    let retry = alice_b
        .send_message_raw(
            json!({"op":"send","conversation_id":c,"client_msg_id":"m6","body":"again","resend":true}),
            "m6",
        )
        .await;
    assert_eq!(retry["message_id"], ids[6].as_str(), "{retry}");
    ids.push(send(&mut alice_a, c, "m7", &[&bob]).await);
    persist = Some(stack.persist(&persist_group).await);

    // Everything after Bob's marker, once: 4 and 5 from before, 5 to 7 now.
    counts_become(&full, &bob_token, c, (5, 3)).await;
    let history = full.latest_history(&bob_token, c).await;
    let history_ids: Vec<&str> = history
        .iter()
        .map(|message| message["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        history_ids,
        ids.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // History returns each message's mentions as the live frame did
    // (once each, never the sender), and none for a message without.
    let mentioned: Vec<Option<&Value>> = history
        .iter()
        .map(|message| message.get("mentions"))
        .collect();
    let (bobs, carols) = (json!([bob]), json!([carol]));
    assert_eq!(
        mentioned,
        [
            None,
            Some(&bobs),
            Some(&carols),
            None,
            Some(&bobs),
            Some(&bobs),
            None,
            Some(&bobs)
        ],
        "{history:?}"
    );
    // A replay of everything (a new group reads the topics from the start)
    // counts nothing twice and keeps the marker.
    let replay = stack.persist(&unique("replay")).await;
    let stored = ids.len() as u64;
    eventually("the replay to catch up", WAIT, || {
        let written = replay.metrics().rows_written.get();
        async move { (written >= stored).then_some(()) }
    })
    .await;
    let state = read_state(&full, &bob_token, c).await;
    assert_eq!(counts(&state), (5, 3), "{state}");
    assert_eq!(state["read_marker"], ids[2].as_str());

    // Reading to the end clears both counts; a deleted mention no longer
    // counts before that.
    let deleted = alice_a
        .send_message_raw(
            json!({"op":"delete","conversation_id":c,"message_id":ids[7],"client_msg_id":"d7"}),
            "d7",
        )
        .await;
    assert_eq!(deleted["op"], "ack", "{deleted}");
    counts_become(&full, &bob_token, c, (4, 2)).await;
    let tombstone = full.latest_history(&bob_token, c).await[7].clone();
    assert_eq!(tombstone["deleted"], true, "{tombstone}");
    assert!(tombstone.get("mentions").is_none(), "{tombstone}");
    bob_laptop
        .send_json(json!({"op":"read","conversation_id":c,"message_id":ids[7]}))
        .await;
    assert!(gets_read(&mut bob_phone, &bob, &ids[7], WAIT).await);
    counts_become(&full, &bob_token, c, (0, 0)).await;
    let restarted = persist.as_ref().unwrap().metrics();
    assert_eq!(restarted.consumer.dead_lettered.get(), 0);
    assert!(
        restarted.send_dedup.duplicates.get() >= 1,
        "the retry was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_follows_activity_pages_without_gaps_and_refuses_outsiders() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _edge) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _fanout) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, mallory) = (unique("alice"), unique("bob"), unique("mallory"));
    let (alice_token, bob_token, mallory_token) = (
        stack.token(&alice),
        stack.token(&bob),
        stack.token(&mallory),
    );
    // Five conversations, created one after the other (join times differ).
    let mut created = Vec::new();
    for index in 0..5 {
        created.push(create(&full, &alice_token, &[&bob], &format!("room {index}")).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let inbox_ids = |page: &Value| -> Vec<String> {
        page["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["conversation_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Without messages: the newest join first.
    let (status, page) = full.get(&bob_token, "/v1/conversations").await;
    assert_eq!(status, 200, "{page}");
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(inbox_ids(&page), newest_first);
    assert!(page.get("next_cursor").is_none());
    assert_eq!(page["conversations"][0]["role"], "member");
    assert_eq!(page["conversations"][0]["unread_count"], 0);
    assert!(page["conversations"][0].get("last_message").is_none());

    // A message in the oldest conversation brings it to the top.
    let mut alice_client = Client::connect(&edge, &alice_token).await;
    stack.routed(&fanout, &alice, 1).await;
    let oldest = created[0].clone();
    let message_id = send(&mut alice_client, &oldest, "hello", &[&bob]).await;
    let expected: Vec<String> = std::iter::once(oldest.clone())
        .chain(created[1..].iter().rev().cloned())
        .collect();
    let page = eventually("the active conversation on top", WAIT, || async {
        let (_, page) = full.get(&bob_token, "/v1/conversations").await;
        (inbox_ids(&page) == expected && page["conversations"][0]["unread_count"] == 1)
            .then_some(page)
    })
    .await;
    let top = &page["conversations"][0];
    assert_eq!(top["last_message"]["message_id"], message_id.as_str());
    assert_eq!(top["last_message"]["body"], "message hello");
    assert_eq!(top["mention_count"], 1);
    assert_eq!(top["title"], "room 0");
    assert!(top["last_activity_at"].as_u64().unwrap() >= top["joined_at"].as_u64().unwrap());
    let (_, alice_page) = full.get(&alice_token, "/v1/conversations").await;
    assert_eq!(alice_page["conversations"][0]["role"], "owner");
    assert_eq!(alice_page["conversations"][0]["unread_count"], 0);

    // Pages of two: every conversation once, in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/conversations?limit=2&cursor={cursor}"),
            None => "/v1/conversations?limit=2".to_owned(),
        };
        let (status, page) = full.get(&bob_token, &path).await;
        assert_eq!(status, 200, "{page}");
        for id in inbox_ids(&page) {
            assert!(seen.insert(id.clone()), "{id} listed twice");
            paged.push(id);
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, expected);

    // A deleted last message is shown as its tombstone.
    let deleted = alice_client
        .send_message_raw(
            json!({"op":"delete","conversation_id":oldest,"message_id":message_id,"client_msg_id":"del"}),
            "del",
        )
        .await;
    assert_eq!(deleted["op"], "ack", "{deleted}");
    eventually("the tombstone in the inbox", WAIT, || async {
        let (_, page) = full.get(&bob_token, "/v1/conversations?limit=1").await;
        let top = page["conversations"][0].clone();
        (top["last_message"]["deleted"] == true).then_some(top)
    })
    .await;
    let (_, page) = full.get(&bob_token, "/v1/conversations?limit=1").await;
    let top = &page["conversations"][0];
    assert_eq!(top["conversation_id"], oldest.as_str());
    assert!(top["last_message"].get("body").is_none(), "{top}");
    assert_eq!(
        (top["unread_count"].as_u64(), top["mention_count"].as_u64()),
        (Some(0), Some(0))
    );

    // Outsiders and bad input.
    let (status, body) = full
        .get(
            &mallory_token,
            &format!("/v1/conversations/{oldest}/read-state"),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (_, mallory_inbox) = full.get(&mallory_token, "/v1/conversations").await;
    assert_eq!(mallory_inbox, json!({"conversations": []}));
    for bad in ["cursor=garbage", "limit=0", "limit=ten"] {
        let (status, body) = full
            .get(&bob_token, &format!("/v1/conversations?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid");
    }
    let mut mallory_client = Client::connect(&edge, &mallory_token).await;
    mallory_client
        .send_json(json!({"op":"read","conversation_id":oldest,"message_id":message_id}))
        .await;
    let refused = mallory_client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // A marker from the future would hide every later message: refused.
    let future = message_id.parse::<u64>().unwrap() + (3_600_000u64 << 22);
    alice_client
        .send_json(json!({"op":"read","conversation_id":oldest,"message_id":future.to_string()}))
        .await;
    let refused = alice_client
        .wait_for("error", |frame| frame["op"] == "error")
        .await;
    assert_eq!(refused["code"], "invalid", "{refused}");
}
