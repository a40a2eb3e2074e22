//! Send de-duplication without consensus, against the real engines: every
//! attempt of a send lands in its conversation's partition, and fan-out,
//! persist and index drop the retries from partition order; a marked
//! retry is acked with the original id (edge cache or pushed verdict).
//!
//! Every check ends with a *sentinel*: a later message of the same
//! conversation, produced after every attempt was durable. Consumers handle
//! a partition in order, so once the sentinel is live, in history and in
//! search, every attempt before it was judged by all three; what they hold
//! then is final.

mod common;

use std::time::Duration;

use chatpipe_runtime::{Health, Shutdown};
use common::*;
use serde_json::{Value, json};

/// Sends a `send` marked `resend` and returns the answer.
async fn send_marked(
    client: &mut Client,
    conversation: &str,
    client_msg_id: &str,
    body: &str,
) -> Value {
    client
        .send_json(json!({
            "op": "send",
            "conversation_id": conversation,
            "client_msg_id": client_msg_id,
            "body": body,
            "resend": true,
        }))
        .await;
    let reference = client_msg_id.to_owned();
    client
        .wait_for("ack or error", move |frame| {
            (frame["op"] == "ack" && frame["client_msg_id"] == reference.as_str())
                || (frame["op"] == "error" && frame["ref"] == reference.as_str())
        })
        .await
}

/// Retries a marked send until it is acked, as clients do on `unavailable`.
async fn send_marked_until_acked(
    client: &mut Client,
    conversation: &str,
    client_msg_id: &str,
    body: &str,
) -> Value {
    for _ in 0..5 {
        let answer = send_marked(client, conversation, client_msg_id, body).await;
        if answer["op"] == "ack" {
            return answer;
        }
        assert_eq!(answer["code"], "unavailable", "{answer}");
    }
    panic!("a marked resend was never acked");
}

fn message_id(answer: &Value) -> String {
    assert_eq!(answer["op"], "ack", "{answer}");
    answer["message_id"]
        .as_str()
        .expect("ack has a message_id")
        .to_owned()
}

/// The distinct `message` frames of `conversation` that `client` receives
/// up to and including the one with `sentinel_id`, in order.
async fn live_until(client: &mut Client, conversation: &str, sentinel_id: &str) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    let mut messages = Vec::new();
    let mut keep = Vec::new();
    let mut pending = std::mem::take(&mut client.pending).into_iter();
    loop {
        let frame = match pending.next() {
            Some(frame) => frame,
            None => client.read_frame(WAIT).await.unwrap_or_else(|| {
                panic!("sentinel {sentinel_id} never arrived; got {messages:?}")
            }),
        };
        if frame["op"] != "message" || frame["message"]["conversation_id"] != conversation {
            keep.push(frame);
            continue;
        }
        let id = frame["message"]["message_id"].as_str().unwrap().to_owned();
        if seen.insert(id.clone()) {
            messages.push(frame["message"].clone());
        }
        if id == sentinel_id {
            keep.extend(pending);
            client.pending = keep;
            return messages;
        }
    }
}

/// History of `conversation` (oldest first), once it holds `sentinel_id`.
async fn history_until(
    full: &FullStack,
    token: &str,
    conversation: &str,
    sentinel_id: &str,
) -> Vec<Value> {
    eventually("sentinel in history", WAIT, || async {
        let rows = full.latest_history(token, conversation).await;
        rows.iter()
            .any(|row| row["message_id"] == sentinel_id)
            .then_some(rows)
    })
    .await
}

/// Search hits for `word` in `conversation`, once the sentinel is found.
async fn search_until(
    full: &FullStack,
    token: &str,
    conversation: &str,
    word: &str,
    sentinel_id: &str,
) -> Vec<String> {
    eventually("sentinel searchable", WAIT, || async {
        let (status, page) = full
            .get(
                token,
                &format!("/v1/search?q={word}&conversation_id={conversation}&limit=50"),
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let ids = hit_ids(&page);
        ids.iter().any(|id| id == sentinel_id).then_some(ids)
    })
    .await
}

/// Sends a sentinel from `sender` and checks that `recipient` saw, and
/// history and search hold, exactly `expected` (id, body) before it.
#[allow(clippy::too_many_arguments)]
async fn assert_exactly(
    full: &FullStack,
    stack: &Stack,
    sender: &mut Client,
    recipient: &mut Client,
    recipient_user: &str,
    conversation: &str,
    word: &str,
    expected: &[(String, &str)],
) {
    let sentinel = message_id(
        &sender
            .send_message(
                conversation,
                &unique("sentinel"),
                &format!("{word} sentinel"),
            )
            .await,
    );
    let token = stack.token(recipient_user);
    let expected_ids: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();

    let live = live_until(recipient, conversation, &sentinel).await;
    let live_ids: Vec<&str> = live[..live.len() - 1]
        .iter()
        .map(|message| message["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(live_ids, expected_ids, "live: {live:?}");
    for (message, (_, body)) in live.iter().zip(expected) {
        assert_eq!(message["body"], *body, "live body");
    }

    let history = history_until(full, &token, conversation, &sentinel).await;
    let history_ids: Vec<&str> = history[..history.len() - 1]
        .iter()
        .map(|row| row["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(history_ids, expected_ids, "history: {history:?}");
    for (row, (_, body)) in history.iter().zip(expected) {
        assert_eq!(row["body"], *body, "history body");
    }

    let mut searched = search_until(full, &token, conversation, word, &sentinel).await;
    searched.retain(|id| *id != sentinel);
    searched.sort();
    let mut expected_sorted: Vec<String> = expected_ids.iter().map(|id| (*id).to_owned()).collect();
    expected_sorted.sort();
    assert_eq!(searched, expected_sorted, "search");
}

/// A word unique to one scenario, so searches see only its documents.
fn word() -> String {
    format!("w{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_take_effect_once_whichever_edge_they_reach() {
    let stack = Stack::new().await;
    let (fanout, _fanout_shutdown) = stack.fanout(&unique("fanout")).await;
    let full = stack.full().await;
    let (edge_a, _drain_a) = stack.edge(stack.edge_config("a")).await;
    let (edge_b, _drain_b) = stack.edge(stack.edge_config("b")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut bob_client = Client::connect(&edge_a, &stack.token(&bob)).await;
    stack.routed(&fanout, &bob, 1).await;
    let mut alice_a = Client::connect(&edge_a, &stack.token(&alice)).await;
    let mut alice_a2 = Client::connect(&edge_a, &stack.token(&alice)).await;
    let mut alice_b = Client::connect(&edge_b, &stack.token(&alice)).await;

    // 1. The same edge: an attempt in flight and a marked retry coalesce,
    //    and a later retry is answered from the edge's cache.
    {
        let conversation = stack.conversation(&[&alice, &bob]).await;
        let conversation = conversation.as_str();
        let word = word();
        let body = format!("{word} same edge");
        let acked_before = edge_a.metrics.sends_acked.get();
        alice_a
            .send_json(json!({"op":"send","conversation_id":conversation,"client_msg_id":"m-1","body":body}))
            .await;
        let concurrent = send_marked(&mut alice_a2, conversation, "m-1", &body).await;
        let first = alice_a
            .wait_for("ack", |frame| {
                frame["op"] == "ack" && frame["client_msg_id"] == "m-1"
            })
            .await;
        let later = send_marked(&mut alice_a, conversation, "m-1", &body).await;
        let original = message_id(&first);
        assert_eq!(message_id(&concurrent), original);
        assert_eq!(message_id(&later), original);
        assert_eq!(later["ts"], first["ts"]);
        assert_eq!(
            edge_a.metrics.sends_acked.get() - acked_before,
            1,
            "one record produced for three attempts on one edge"
        );
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            conversation,
            &word,
            &[(original, &body)],
        )
        .await;
    }

    // 2. Another edge, after the ack: the verdict names the original.
    {
        let conversation = stack.conversation(&[&alice, &bob]).await;
        let conversation = conversation.as_str();
        let word = word();
        let body = format!("{word} other edge");
        let first = alice_a.send_message(conversation, "m-1", &body).await;
        let waits_before = edge_b.metrics.resend_verdict_waits.get();
        let retry = send_marked_until_acked(&mut alice_b, conversation, "m-1", &body).await;
        let original = message_id(&first);
        assert_eq!(message_id(&retry), original);
        assert_eq!(retry["ts"], first["ts"]);
        assert!(edge_b.metrics.resend_verdict_waits.get() > waits_before);
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            conversation,
            &word,
            &[(original, &body)],
        )
        .await;
    }

    // 3. The same client_msg_id in two conversations: two messages.
    {
        let word = word();
        let first_conversation = stack.conversation(&[&alice, &bob]).await;
        let second_conversation = stack.conversation(&[&alice, &bob]).await;
        let first_body = format!("{word} first conversation");
        let second_body = format!("{word} second conversation");
        let in_first = message_id(
            &alice_a
                .send_message(first_conversation.as_str(), "m-1", &first_body)
                .await,
        );
        let in_second = message_id(
            &alice_a
                .send_message(second_conversation.as_str(), "m-1", &second_body)
                .await,
        );
        assert_ne!(in_first, in_second);
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            first_conversation.as_str(),
            &word,
            &[(in_first, &first_body)],
        )
        .await;
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            second_conversation.as_str(),
            &word,
            &[(in_second, &second_body)],
        )
        .await;
    }

    // 4. An unmarked duplicate on another edge is produced (the edge cannot
    //    know) but takes effect once.
    {
        let conversation = stack.conversation(&[&alice, &bob]).await;
        let conversation = conversation.as_str();
        let word = word();
        let body = format!("{word} unmarked");
        let dropped_before = fanout.metrics().send_dedup.duplicates.get();
        let first = message_id(&alice_a.send_message(conversation, "m-1", &body).await);
        let unmarked = alice_b.send_message(conversation, "m-1", &body).await;
        assert_eq!(unmarked["op"], "ack", "{unmarked}");
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            conversation,
            &word,
            &[(first, &body)],
        )
        .await;
        assert_eq!(
            fanout.metrics().send_dedup.duplicates.get() - dropped_before,
            1
        );
    }

    // 5. A retry with another body changes nothing anywhere.
    {
        let conversation = stack.conversation(&[&alice, &bob]).await;
        let conversation = conversation.as_str();
        let word = word();
        let body = format!("{word} what was sent");
        let other_word = self::word();
        let first = alice_a.send_message(conversation, "m-1", &body).await;
        let retry = send_marked_until_acked(
            &mut alice_b,
            conversation,
            "m-1",
            &format!("{word} {other_word} edited"),
        )
        .await;
        let original = message_id(&first);
        assert_eq!(message_id(&retry), original);
        assert_exactly(
            &full,
            &stack,
            &mut alice_a,
            &mut bob_client,
            &bob,
            conversation,
            &word,
            &[(original, &body)],
        )
        .await;
        let (status, page) = full
            .get(
                &stack.token(&bob),
                &format!("/v1/search?q={other_word}&conversation_id={conversation}"),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(page["hits"].as_array().map(Vec::len), Some(0), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_retry_while_the_first_attempt_is_in_flight_names_the_message_everyone_holds() {
    let stack = Stack::new().await;
    let (fanout, _fanout_shutdown) = stack.fanout(&unique("fanout")).await;
    let full = stack.full().await;
    // Edge A holds its records for a while before Kafka sees them: the
    // first attempt stays in flight while the retry is sent, acked, and
    // lands first.
    let mut slow = stack.edge_config("a");
    slow.producer_linger_ms = 1_500;
    let (edge_a, _drain_a) = stack.edge(slow).await;
    let (edge_b, _drain_b) = stack.edge(stack.edge_config("b")).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let conversation = conversation.as_str();
    let mut bob_client = Client::connect(&edge_b, &stack.token(&bob)).await;
    stack.routed(&fanout, &bob, 1).await;
    let word = word();
    let body = format!("{word} in flight");

    let mut alice_a = Client::connect(&edge_a, &stack.token(&alice)).await;
    alice_a
        .send_json(
            json!({"op":"send","conversation_id":conversation,"client_msg_id":"m-1","body":body}),
        )
        .await;
    // The client gives up on edge A before its ack and retries elsewhere.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(alice_a);
    assert_eq!(
        edge_a.metrics.sends_acked.get(),
        0,
        "the first attempt is still in flight"
    );
    let mut alice_b = Client::connect(&edge_b, &stack.token(&alice)).await;
    let retry = send_marked_until_acked(&mut alice_b, conversation, "m-1", &body).await;
    let held = message_id(&retry);
    // The first attempt lands after the retry; the consumers drop it.
    eventually("the first attempt judged a duplicate", WAIT, || {
        let dropped = fanout.metrics().send_dedup.duplicates.get();
        async move { (dropped == 1).then_some(()) }
    })
    .await;
    eventually("edge A acked its attempt", WAIT, || {
        let acked = edge_a.metrics.sends_acked.get();
        async move { (acked == 1).then_some(()) }
    })
    .await;
    // A sentinel through edge A lands after its first attempt.
    let mut alice_a = Client::connect(&edge_a, &stack.token(&alice)).await;
    assert_exactly(
        &full,
        &stack,
        &mut alice_a,
        &mut bob_client,
        &bob,
        conversation,
        &word,
        &[(held, &body)],
    )
    .await;
    assert_eq!(edge_b.metrics.resend_verdict_timeouts.get(), 0);
}

/// A persist role in `group`, stoppable.
fn start_persist(
    stack: &Stack,
    group: &str,
) -> (
    chatpipe_persist::PersistMetrics,
    Shutdown,
    tokio::task::JoinHandle<()>,
) {
    let role = chatpipe_persist::PersistRole::new(
        chatpipe_persist::PersistConfig {
            group_id: group.to_owned(),
            ..Default::default()
        },
        stack.kafka.clone(),
        stack.topics.clone(),
        stack.store.clone(),
        chatpipe_kafka::ChatProducer::new(&stack.kafka, 5).unwrap(),
        &mut prometheus_client::registry::Registry::default(),
    );
    let metrics = role.metrics();
    let shutdown = stack.root.child();
    let run_shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        role.run(Health::new(), run_shutdown)
            .await
            .expect("persist runs");
    });
    (metrics, shutdown, task)
}

/// An index worker in `group`, writing where `full`'s searcher reads.
fn start_index(
    stack: &Stack,
    full: &FullStack,
    group: &str,
) -> (chatpipe_index::IndexWorker, Shutdown) {
    let shutdown = stack.root.child();
    let worker = chatpipe_index::IndexWorker::spawn(
        chatpipe_index::IndexConfig {
            group_id: group.to_owned(),
            topics: stack.topics.clone(),
            engine: chatpipe_search::SearchEngineConfig {
                index_prefix: full.index_prefix.clone(),
                number_of_shards: 1,
                ..Default::default()
            },
            ..Default::default()
        },
        stack.kafka.clone(),
        &mut prometheus_client::registry::Registry::default(),
        Health::new(),
        shutdown.clone(),
    )
    .expect("index starts");
    (worker, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_restarted_in_the_middle_of_a_retry_sequence_apply_it_once() {
    let stack = Stack::new().await;
    let full = stack.full().await;
    let mut config_a = stack.edge_config("a");
    let mut config_b = stack.edge_config("b");
    // The new fan-out member may take a few seconds to join the group.
    config_a.send_deadline_ms = 20_000;
    config_b.send_deadline_ms = 20_000;
    let (edge_a, _drain_a) = stack.edge(config_a).await;
    let (edge_b, _drain_b) = stack.edge(config_b).await;
    let (fanout_group, persist_group, index_group) =
        (unique("fanout"), unique("persist"), unique("index"));
    let (fanout, fanout_shutdown) = stack.fanout(&fanout_group).await;
    let (persist_metrics, persist_shutdown, persist_task) = start_persist(&stack, &persist_group);
    let (index, index_shutdown) = start_index(&stack, &full, &index_group);

    let (alice, bob) = (unique("alice"), unique("bob"));
    let conversation = stack.conversation(&[&alice, &bob]).await;
    let conversation = conversation.as_str();
    let mut bob_client = Client::connect(&edge_a, &stack.token(&bob)).await;
    stack.routed(&fanout, &bob, 1).await;
    let mut alice_a = Client::connect(&edge_a, &stack.token(&alice)).await;
    let word = word();
    let body = format!("{word} across restarts");
    let first = alice_a.send_message(conversation, "m-1", &body).await;
    let original = message_id(&first);

    // Every consumer handled the first attempt, then is replaced by a new
    // member of its group.
    // (Bob's frames are read at the end: the first attempt, then nothing
    // until the sentinel.)
    eventually("delivered, persisted and indexed", WAIT, || {
        let delivered = fanout.metrics().deliveries.get();
        let written = persist_metrics.rows_written.get();
        let indexed = index.metrics().consumer.records.get();
        async move { (delivered >= 1 && written >= 1 && indexed >= 1).then_some(()) }
    })
    .await;
    fanout_shutdown.cancel();
    fanout.join().await.expect("fan-out stops cleanly");
    persist_shutdown.cancel();
    persist_task.await.unwrap();
    index_shutdown.cancel();
    index.join().await.expect("index stops cleanly");
    let (fanout, _fanout_shutdown) = stack.fanout(&fanout_group).await;
    let (persist_metrics, _persist_shutdown, _persist_task) = start_persist(&stack, &persist_group);
    let (index, _index_shutdown) = start_index(&stack, &full, &index_group);
    stack.routed(&fanout, &bob, 1).await;

    // The retry is the first record the new members see in the partition:
    // each rebuilds its window from the partition and drops it.
    let mut alice_b = Client::connect(&edge_b, &stack.token(&alice)).await;
    let retry = send_marked_until_acked(
        &mut alice_b,
        conversation,
        "m-1",
        &format!("{word} retried"),
    )
    .await;
    assert_eq!(message_id(&retry), original);
    assert_eq!(retry["ts"], first["ts"]);
    assert_exactly(
        &full,
        &stack,
        &mut alice_a,
        &mut bob_client,
        &bob,
        conversation,
        &word,
        &[(original, &body)],
    )
    .await;
    eventually("every restarted consumer dropped the retry", WAIT, || {
        let counts = (
            fanout.metrics().send_dedup.duplicates.get(),
            persist_metrics.send_dedup.duplicates.get(),
            index.metrics().send_dedup.duplicates.get(),
        );
        async move { (counts.0 >= 1 && counts.1 >= 1 && counts.2 >= 1).then_some(()) }
    })
    .await;
    assert!(fanout.metrics().send_dedup.replays.get() >= 1);
    assert!(persist_metrics.send_dedup.replays.get() >= 1);
    assert!(index.metrics().send_dedup.replays.get() >= 1);
}
