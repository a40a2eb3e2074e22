//! A message's life after its send, end to end on the real engines: edits,
//! deletes and reactions over the WebSocket reach every member live,
//! history (edited body with `edited_at`, tombstones, reaction counts with
//! the reader's own marked, reply targets), search (new text found,
//! deleted and replaced text not) and `chat.messages` (change records of
//! schema version 2 on the message's partition, after it); refused changes
//! change nothing anywhere.

mod common;

use chatpipe_runtime::metrics::reason_count;
use common::*;
use serde_json::{Value, json};

/// A word the standard analyzer keeps whole (letters and digits only).
fn word(label: &str) -> String {
    format!("{label}{}", &unique("w")[2..12])
}

/// The conversation's history, newest first, as `token` sees it.
async fn history(full: &FullStack, token: &str, conversation: &str) -> Vec<Value> {
    let (status, page) = full
        .get(
            token,
            &format!("/v1/conversations/{conversation}/messages?limit=50"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["messages"].as_array().cloned().unwrap_or_default()
}

/// The message ids `q` finds for `token`.
async fn search_ids(full: &FullStack, token: &str, q: &str) -> Vec<String> {
    let (status, page) = full.get(token, &format!("/v1/search?q={q}")).await;
    assert_eq!(status, 200, "{page}");
    hit_ids(&page)
}

/// Sends an `edit` or `delete` and returns its answer (`ack` or `error`),
/// matched by `client_msg_id` or, without one, by the target message.
async fn change(client: &mut Client, frame: Value) -> Value {
    let reference = frame
        .get("client_msg_id")
        .unwrap_or(&frame["message_id"])
        .as_str()
        .unwrap()
        .to_owned();
    let by_message = frame.get("client_msg_id").is_none();
    let target = frame["message_id"].as_str().unwrap().to_owned();
    client.send_json(frame).await;
    client
        .wait_for("change answer", move |answer| match answer["op"].as_str() {
            Some("ack") if by_message => {
                answer["message_id"] == target.as_str() && answer.get("client_msg_id").is_none()
            }
            Some("ack") => answer["client_msg_id"] == reference.as_str(),
            Some("error") => answer["ref"] == reference.as_str(),
            _ => false,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_members_history_search_and_kafka() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _edge) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _fanout) = stack.fanout(&unique("fanout")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (alice_token, bob_token) = (stack.token(&alice), stack.token(&bob));
    let conversation = full
        .create_conversation(
            &alice_token,
            json!({"members": [bob], "title": "lifecycle"}),
        )
        .await;
    let mut alice_ws = Client::connect(&edge, &alice_token).await;
    let mut bob_ws = Client::connect(&edge, &bob_token).await;
    stack.routed(&fanout, &alice, 1).await;
    stack.routed(&fanout, &bob, 1).await;

    let (original, replacement, doomed, bobs) =
        (word("orig"), word("new"), word("gone"), word("bobs"));
    let mut ids = Vec::new();
    for (by_bob, client_msg_id, body) in [
        (false, "m1", format!("the {original} text")),
        (false, "m2", format!("a {doomed} mistake")),
        (true, "m3", format!("bob says {bobs}")),
    ] {
        let client = if by_bob { &mut bob_ws } else { &mut alice_ws };
        let ack = client
            .send_message(&conversation, client_msg_id, &body)
            .await;
        assert_eq!(ack["op"], "ack", "{ack}");
        ids.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    let (m1, m2, m3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    bob_ws.messages(&conversation, 3).await;
    alice_ws.messages(&conversation, 3).await;
    // Changes are authorized against history: wait until it holds them.
    eventually("history holds the messages", WAIT, || async {
        (history(&full, &bob_token, &conversation).await.len() == 3).then_some(())
    })
    .await;
    eventually("search finds the originals", WAIT, || async {
        (search_ids(&full, &bob_token, &original).await == [m1.clone()]
            && search_ids(&full, &bob_token, &doomed).await == [m2.clone()]
            && search_ids(&full, &bob_token, &bobs).await == [m3.clone()])
        .then_some(())
    })
    .await;

    // Refused: only the sender edits; only the sender or the owner deletes.
    let refusals = [
        (
            true,
            json!({"op":"edit","conversation_id":conversation,"message_id":m1,"body":"hijacked","client_msg_id":"bob-edit"}),
        ),
        (
            true,
            json!({"op":"delete","conversation_id":conversation,"message_id":m1,"client_msg_id":"bob-delete"}),
        ),
        (
            false,
            json!({"op":"edit","conversation_id":conversation,"message_id":m3,"body":"put words in his mouth"}),
        ),
    ];
    for (by_bob, frame) in refusals {
        let client = if by_bob { &mut bob_ws } else { &mut alice_ws };
        let answer = change(client, frame.clone()).await;
        assert_eq!(answer["op"], "error", "{frame} -> {answer}");
        assert_eq!(answer["code"], "forbidden", "{frame} -> {answer}");
    }
    assert_eq!(reason_count(&edge.metrics.frames_rejected, "forbidden"), 3);

    // Accepted: the sender edits and deletes; the owner deletes bob's message.
    let edited_body = format!("the {replacement} text");
    let edit_ack = change(
        &mut alice_ws,
        json!({"op":"edit","conversation_id":conversation,"message_id":m1,"body":edited_body,"client_msg_id":"e1"}),
    )
    .await;
    assert_eq!(edit_ack["op"], "ack", "{edit_ack}");
    assert_eq!(edit_ack["message_id"], m1.as_str());
    let edited_at = edit_ack["ts"].as_u64().unwrap();
    for (target, actor) in [(&m2, &alice), (&m3, &alice)] {
        let ack = change(
            &mut alice_ws,
            json!({"op":"delete","conversation_id":conversation,"message_id":target}),
        )
        .await;
        assert_eq!(ack["op"], "ack", "delete of {target} by {actor}: {ack}");
    }
    assert_eq!(edge.metrics.message_changes_acked.get(), 3);

    // Live, in order, to every member's session (the actor's included).
    for client in [&mut bob_ws, &mut alice_ws] {
        let edited = client
            .wait_for("message_edited", |frame| frame["op"] == "message_edited")
            .await;
        assert_eq!(edited["message_id"], m1.as_str());
        assert_eq!(edited["conversation_id"], conversation.as_str());
        assert_eq!(edited["user_id"], alice.as_str());
        assert_eq!(edited["body"], edited_body.as_str());
        assert_eq!(edited["edited_at"], edited_at);
        let first = client
            .wait_for("message_deleted", |frame| frame["op"] == "message_deleted")
            .await;
        let second = client
            .wait_for("message_deleted", |frame| frame["op"] == "message_deleted")
            .await;
        assert!(edited["seq"].as_u64() < first["seq"].as_u64());
        assert!(first["seq"].as_u64() < second["seq"].as_u64());
        assert_eq!(
            [&first["message_id"], &second["message_id"]],
            [m2.as_str(), m3.as_str()]
        );
        assert_eq!(first["user_id"], alice.as_str());
        assert!(first.get("body").is_none());
    }

    // History: the edited body with edited_at, two tombstones without body.
    let messages = eventually("history applies the changes", WAIT, || async {
        let messages = history(&full, &bob_token, &conversation).await;
        let deleted = messages
            .iter()
            .filter(|message| message["deleted"] == true)
            .count();
        let edited = messages.iter().any(|message| message["edited_at"].is_u64());
        (deleted == 2 && edited).then_some(messages)
    })
    .await;
    assert_eq!(
        messages.len(),
        3,
        "tombstones keep their place: {messages:?}"
    );
    let by_id = |id: &str| {
        messages
            .iter()
            .find(|message| message["message_id"] == id)
            .unwrap()
            .clone()
    };
    let (kept, gone, owner_deleted) = (by_id(&m1), by_id(&m2), by_id(&m3));
    assert_eq!(kept["body"], edited_body.as_str());
    assert_eq!(kept["edited_at"], edited_at);
    assert_eq!(kept["sender_id"], alice.as_str());
    assert!(kept.get("deleted").is_none(), "{kept}");
    for tombstone in [&gone, &owner_deleted] {
        assert_eq!(tombstone["deleted"], true);
        assert!(tombstone.get("body").is_none(), "no body: {tombstone}");
    }
    assert_eq!(owner_deleted["sender_id"], bob.as_str());

    // Search: the new text is found, the replaced and deleted ones are not.
    eventually("search applies the changes", WAIT, || async {
        (search_ids(&full, &bob_token, &replacement).await == [m1.clone()]
            && search_ids(&full, &bob_token, &original).await.is_empty()
            && search_ids(&full, &bob_token, &doomed).await.is_empty()
            && search_ids(&full, &bob_token, &bobs).await.is_empty())
        .then_some(())
    })
    .await;

    // Kafka: the three messages, then exactly the three accepted changes,
    // all on the conversation's partition, in the order they were made.
    let records = read_topic(&stack, &stack.topics.messages, 6).await;
    let partition = records[0].0;
    for (record_partition, key, _) in &records {
        assert_eq!(
            (*record_partition, key.as_str()),
            (partition, conversation.as_str())
        );
    }
    let summary: Vec<(u64, String, String, String)> = records
        .iter()
        .map(|(_, _, value)| {
            let kind = value["kind"].as_str().unwrap_or("message").to_owned();
            let who = value
                .get("actor_id")
                .unwrap_or(&value["sender_id"])
                .as_str()
                .unwrap()
                .to_owned();
            (
                value["schema_version"].as_u64().unwrap(),
                kind,
                value["message_id"].as_str().unwrap().to_owned(),
                who,
            )
        })
        .collect();
    let expected: Vec<(u64, String, String, String)> = [
        (1, "message", &m1, &alice),
        (1, "message", &m2, &alice),
        (1, "message", &m3, &bob),
        (2, "edit", &m1, &alice),
        (2, "delete", &m2, &alice),
        (2, "delete", &m3, &alice),
    ]
    .into_iter()
    .map(|(version, kind, id, who)| (version, kind.to_owned(), id.clone(), who.clone()))
    .collect();
    assert_eq!(summary, expected);
    assert_eq!(records[3].2["body"], edited_body.as_str());
    assert!(records[4].2.get("body").is_none());

    // The consumers took the changes as changes: none was dead-lettered or
    // judged as a send.
    assert_eq!(fanout.metrics().send_dedup.duplicates.get(), 0);
    assert_eq!(full.persist.metrics().consumer.dead_lettered.get(), 0);
    assert!(full.persist.metrics().changes_written.get() >= 3);
    assert!(full.index.metrics().changes_applied.get() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_and_replies_reach_members_history_and_kafka() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let (edge, _edge) = stack.edge(stack.edge_config("a")).await;
    let (fanout, _fanout) = stack.fanout(&unique("fanout")).await;
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let tokens = [stack.token(&alice), stack.token(&bob), stack.token(&carol)];
    let conversation = full
        .create_conversation(
            &tokens[0],
            json!({"members": [bob, carol], "title": "reactions"}),
        )
        .await;
    let mut clients = Vec::new();
    for token in &tokens {
        clients.push(Client::connect(&edge, token).await);
    }
    for user in [&alice, &bob, &carol] {
        stack.routed(&fanout, user, 1).await;
    }
    let ack = clients[0]
        .send_message(&conversation, "m1", "react to me")
        .await;
    let message = ack["message_id"].as_str().unwrap().to_owned();
    let react = |op: &str, reaction: &str| json!({"op": op, "conversation_id": conversation, "message_id": message, "reaction": reaction});
    // Sent right after the ack: the edge waits for history to hold the
    // message. Bob reacts twice with 👍 (once counts) and takes 🎉 back.
    let steps = [
        (1, react("react", "👍")),
        (1, react("react", "👍")),
        (1, react("react", "🎉")),
        (2, react("react", "👍")),
        (0, react("react", "+1")),
        (1, react("unreact", "🎉")),
    ];
    for (who, frame) in steps.iter().cloned() {
        let answer = change(&mut clients[who], frame.clone()).await;
        assert_eq!(answer["op"], "ack", "{frame} -> {answer}");
        assert_eq!(answer["message_id"], message.as_str());
    }
    // Live: every member sees the six reaction frames in order.
    for client in &mut clients {
        let mut seen = Vec::new();
        for _ in 0..steps.len() {
            let frame = client
                .wait_for("reaction", |frame| frame["op"] == "reaction")
                .await;
            assert_eq!(frame["message_id"], message.as_str());
            seen.push((
                frame["user_id"].as_str().unwrap().to_owned(),
                frame["reaction"].as_str().unwrap().to_owned(),
                frame["action"].as_str().unwrap().to_owned(),
            ));
        }
        let expected: Vec<(String, String, String)> = steps
            .iter()
            .map(|(who, frame)| {
                (
                    [&alice, &bob, &carol][*who].clone(),
                    frame["reaction"].as_str().unwrap().to_owned(),
                    if frame["op"] == "react" {
                        "add"
                    } else {
                        "remove"
                    }
                    .to_owned(),
                )
            })
            .collect();
        assert_eq!(seen, expected);
    }
    // History: counts per reaction, each reader's own marked.
    let expected_for = |me: [bool; 2]| {
        json!([
            {"reaction": "👍", "count": 2, "me": me[0]},
            {"reaction": "+1", "count": 1, "me": me[1]},
        ])
    };
    for (token, me) in [
        (&tokens[0], [false, true]),
        (&tokens[1], [true, false]),
        (&tokens[2], [true, false]),
    ] {
        let reactions = eventually("history counts the reactions", WAIT, || async {
            let messages = history(&full, token, &conversation).await;
            let reacted = messages
                .iter()
                .find(|found| found["message_id"] == message.as_str())?;
            let reactions = reacted.get("reactions")?.clone();
            (reactions == expected_for(me)).then_some(reactions)
        })
        .await;
        assert_eq!(reactions, expected_for(me));
    }
    // A reply names the message it answers: live, in history and in Kafka;
    // a reply to a message the conversation does not hold is refused.
    let reply_ack = clients[1]
        .send_message_raw(
            json!({"op": "send", "conversation_id": conversation, "client_msg_id": "r1", "body": "me too", "reply_to": message}),
            "r1",
        )
        .await;
    assert_eq!(reply_ack["op"], "ack", "{reply_ack}");
    let reply_id = reply_ack["message_id"].as_str().unwrap().to_owned();
    let live = clients[0].messages(&conversation, 2).await;
    assert_eq!(live[1]["message_id"], reply_id.as_str());
    assert_eq!(live[1]["reply_to"], message.as_str());
    assert!(live[0].get("reply_to").is_none(), "{}", live[0]);
    let stray = clients[1]
        .send_message_raw(
            json!({"op": "send", "conversation_id": conversation, "client_msg_id": "r2", "body": "huh", "reply_to": "12345"}),
            "r2",
        )
        .await;
    assert_eq!(stray["code"], "invalid", "{stray}");
    eventually("history holds the reply", WAIT, || async {
        let messages = history(&full, &tokens[2], &conversation).await;
        let reply = messages
            .iter()
            .find(|found| found["message_id"] == reply_id.as_str())?;
        (reply["reply_to"] == message.as_str()).then_some(())
    })
    .await;

    // A deleted message refuses reactions and loses them in history.
    let deleted = change(
        &mut clients[0],
        json!({"op": "delete", "conversation_id": conversation, "message_id": message}),
    )
    .await;
    assert_eq!(deleted["op"], "ack", "{deleted}");
    eventually("the tombstone", WAIT, || async {
        let messages = history(&full, &tokens[1], &conversation).await;
        let first = messages
            .iter()
            .find(|found| found["message_id"] == message.as_str())?;
        (first["deleted"] == true).then(|| assert!(first.get("reactions").is_none(), "{first}"))
    })
    .await;
    let refused = change(&mut clients[1], react("react", "👀")).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    // Kafka: the message, six reaction records, the reply, the delete.
    let records = read_topic(&stack, &stack.topics.messages, 9).await;
    let kinds: Vec<&str> = records
        .iter()
        .map(|(_, _, value)| value["kind"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(
        kinds,
        [
            "message",
            "reaction_add",
            "reaction_add",
            "reaction_add",
            "reaction_add",
            "reaction_add",
            "reaction_remove",
            "message",
            "delete"
        ]
    );
    assert_eq!(records[7].2["reply_to"], message.as_str());
    assert!(records[0].2.get("reply_to").is_none());
    assert_eq!(fanout.metrics().send_dedup.duplicates.get(), 0);
}
