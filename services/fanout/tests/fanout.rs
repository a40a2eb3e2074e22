//! Fan-out against the real engines: Kafka (an isolated topic prefix per
//! test), Cassandra (the real membership store, unique ids per test), and
//! fake edges that are real gRPC `EdgePush` servers recording their pushes.
//! Fails, never skips, when an engine is unreachable.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chatpipe_core::UserId;
use chatpipe_core::records::{Event, PresenceStatus};
use chatpipe_core::time::now_unix_ms;
use chatpipe_fanout::{FanoutConfig, PushOutcome};
use chatpipe_proto::push::PushItem;
use common::{
    Deployment, FakeEdge, WAIT, black_hole, closed_port, eventually, names, sorted_recipients,
};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_table_is_loaded_from_the_compacted_topic_before_ready() {
    let deployment = Deployment::new().await;
    let edge = deployment.edge("e1");
    deployment.publish_live_edge(&edge, "127.0.0.1:1").await;
    let users: Vec<UserId> = (0..200)
        .map(|index| deployment.user(&format!("u{index}")))
        .collect();
    futures::stream::iter(&users)
        .for_each_concurrent(64, |user| deployment.publish_route(user, &edge))
        .await;
    // Users who left again: their tombstones come after their routes.
    for user in &users[..20] {
        deployment.tombstone_route(user, &edge).await;
    }

    let worker = deployment.start(deployment.config());
    worker.ready().await;
    // Ready means caught up: every route is there the moment it is ready.
    let routes = worker.worker.routes();
    for user in &users[..20] {
        assert!(routes.live_edges(user).is_empty(), "{user} left");
    }
    for user in &users[20..] {
        let live = routes.live_edges(user);
        assert_eq!(live.len(), 1, "{user} is routed");
        assert_eq!(live[0].edge_id, edge);
    }
    let metrics = worker.worker.metrics().clone();
    assert_eq!(metrics.route_table_routes.get(), 180);
    assert_eq!(metrics.route_table_ready.get(), 1);

    // And it keeps tailing.
    let late = deployment.user("late");
    deployment.publish_route(&late, &edge).await;
    eventually("a late route is applied", WAIT, || {
        routes.live_edges(&late).len() == 1
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_per_edge_per_batch_with_its_recipients_in_kafka_order() {
    let deployment = Deployment::new().await;
    let (edge_one, edge_two) = (FakeEdge::start().await, FakeEdge::start().await);
    let (first_id, second_id) = (deployment.edge("e1"), deployment.edge("e2"));
    deployment
        .publish_live_edge(&first_id, &edge_one.push_addr())
        .await;
    deployment
        .publish_live_edge(&second_id, &edge_two.push_addr())
        .await;
    let alice = deployment.user("alice"); // on edge one
    let bob = deployment.user("bob"); // on edge two
    let carol = deployment.user("carol"); // two devices: both edges
    let dave = deployment.user("dave"); // offline
    deployment.publish_route(&alice, &first_id).await;
    deployment.publish_route(&bob, &second_id).await;
    deployment.publish_route(&carol, &first_id).await;
    deployment.publish_route(&carol, &second_id).await;
    let conversation = deployment.conversation("group");
    deployment
        .create_conversation(
            &conversation,
            &[alice.clone(), bob.clone(), carol.clone(), dave.clone()],
        )
        .await;

    // Produced before the worker starts, so that batches hold many records.
    let mut sent = Vec::new();
    for index in 0..300 {
        let sender = [&alice, &bob, &dave][index % 3];
        sent.push(
            deployment
                .send_message(&conversation, sender, &format!("m{index}"))
                .await
                .to_string(),
        );
    }
    let worker = deployment.start(FanoutConfig {
        max_batch_records: 64,
        max_batch_wait_ms: 50,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    eventually("every batch pushed to both edges", WAIT, || {
        edge_one.message_ids().len() == 300
            && edge_two.message_ids().len() == 300
            && metrics.consumer.batches.get() as usize == edge_one.push_count()
    })
    .await;

    // Exactly one push per edge per batch.
    assert_eq!(edge_one.push_count(), edge_two.push_count());
    assert!(edge_one.push_count() < 300, "records were batched");
    // Kafka order, no duplicates.
    assert_eq!(edge_one.message_ids(), sent);
    assert_eq!(edge_two.message_ids(), sent);
    // Each edge gets only the recipients it holds (the sender included).
    assert!(
        edge_one
            .items()
            .iter()
            .all(|item| sorted_recipients(item) == names(&[&alice, &carol]))
    );
    assert!(
        edge_two
            .items()
            .iter()
            .all(|item| sorted_recipients(item) == names(&[&bob, &carol]))
    );
    // Payloads are the Deliverable's fields.
    let first: serde_json::Value = serde_json::from_str(&edge_one.items()[0].fields_json).unwrap();
    assert_eq!(first["message"]["body"], "m0");
    assert_eq!(edge_one.items()[0].conversation_id, conversation.as_str());
    // Offline members are skipped and counted.
    assert_eq!(metrics.recipients_offline.get(), 300);
    assert_eq!(metrics.deliveries.get(), 300 * 4);
    assert_eq!(
        metrics.pushes_with(PushOutcome::Ok) as usize,
        edge_one.push_count() * 2
    );
    assert_eq!(metrics.records_in_for("messages"), 300);
    assert!(metrics.membership_cache_hits.get() >= 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_an_expired_lease_gets_nothing() {
    let deployment = Deployment::new().await;
    let (live_edge, expired_edge) = (FakeEdge::start().await, FakeEdge::start().await);
    let (live_id, expired_id) = (deployment.edge("live"), deployment.edge("expired"));
    deployment
        .publish_live_edge(&live_id, &live_edge.push_addr())
        .await;
    deployment
        .publish_edge(
            &expired_id,
            &expired_edge.push_addr(),
            now_unix_ms() - 60_000,
        )
        .await;
    let (alice, erin) = (deployment.user("alice"), deployment.user("erin"));
    deployment.publish_route(&alice, &live_id).await;
    deployment.publish_route(&erin, &expired_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, &[alice.clone(), erin.clone()])
        .await;
    for index in 0..10 {
        deployment
            .send_message(&conversation, &erin, &format!("m{index}"))
            .await;
    }
    let worker = deployment.start(deployment.config());
    worker.ready().await;
    eventually("the live edge got every message", WAIT, || {
        live_edge.message_ids().len() == 10
    })
    .await;
    let metrics = worker.worker.metrics().clone();
    eventually("the batch finished", WAIT, || {
        metrics.records_in_for("messages") == 10
    })
    .await;
    assert_eq!(expired_edge.push_count(), 0);
    assert_eq!(
        metrics.recipients_offline.get(),
        10,
        "erin counts as offline"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_edges_are_given_up_and_told_to_resync_when_they_come_back() {
    let deployment = Deployment::new().await;
    let healthy = FakeEdge::start().await;
    let (healthy_id, refused_id, wedged_id) = (
        deployment.edge("ok"),
        deployment.edge("refused"),
        deployment.edge("wedged"),
    );
    deployment
        .publish_live_edge(&healthy_id, &healthy.push_addr())
        .await;
    deployment
        .publish_live_edge(&refused_id, &closed_port().await)
        .await;
    let (yara, xavier, zoe) = (
        deployment.user("yara"),
        deployment.user("xavier"),
        deployment.user("zoe"),
    );
    deployment.publish_route(&yara, &healthy_id).await;
    deployment.publish_route(&xavier, &refused_id).await;
    deployment.publish_route(&zoe, &wedged_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, &[yara.clone(), xavier.clone(), zoe.clone()])
        .await;

    let worker = deployment.start(FanoutConfig {
        push_timeout_ms: 500,
        suspect_backoff_ms: 2_000,
        lease_grace_ms: 0,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    // The wedged edge accepts connections and never answers; its lease runs
    // out in a few seconds, as a dead edge's would.
    let wedged_addr = black_hole().await;
    deployment
        .publish_edge(&wedged_id, &wedged_addr, now_unix_ms() + 4_000)
        .await;
    eventually("the wedged edge is live in the route table", WAIT, || {
        worker
            .worker
            .routes()
            .read(|table| table.is_edge_live_at(&wedged_id, &wedged_addr, now_unix_ms()))
    })
    .await;
    for index in 0..10 {
        deployment
            .send_message(&conversation, &yara, &format!("first {index}"))
            .await;
    }
    eventually("the healthy edge got the first round", WAIT, || {
        healthy.message_ids().len() == 10
    })
    .await;
    assert_eq!(
        metrics.given_up_for("refused"),
        1,
        "nothing listens: given up at the first refusal"
    );
    // Meanwhile the wedged edge is retried until its lease runs out.
    eventually("the wedged edge was given up", WAIT, || {
        metrics.given_up_for("lease_expired") == 1
    })
    .await;
    assert!(metrics.pushes_with(PushOutcome::Timeout) >= 2);
    assert!(metrics.push_retries.get() >= 1);

    // The refused edge comes back (same id, new address): once its
    // suspicion ran out, its first push carries `resync`, later ones not.
    let returned = FakeEdge::start().await;
    deployment
        .publish_live_edge(&refused_id, &returned.push_addr())
        .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for index in 0..10 {
        deployment
            .send_message(&conversation, &yara, &format!("second {index}"))
            .await;
    }
    eventually("the returned edge got the second round", WAIT, || {
        returned.message_ids().len() == 10
    })
    .await;
    let flags: Vec<bool> = returned
        .batches()
        .iter()
        .map(|batch| batch.resync)
        .collect();
    assert!(
        flags[0],
        "first push to the returned edge asks for a resync"
    );
    assert!(
        flags[1..].iter().all(|resync| !resync),
        "one resync only: {flags:?}"
    );
    assert_eq!(metrics.resyncs_requested.get(), 1);
    assert!(
        healthy.batches().iter().all(|batch| !batch.resync),
        "the healthy edge never missed anything"
    );
    eventually("the healthy edge got the second round", WAIT, || {
        healthy.message_ids().len() == 20
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_retired_its_lease_comes_back_without_a_resync() {
    let deployment = Deployment::new().await;
    let edge_id = deployment.edge("restarted");
    deployment
        .publish_live_edge(&edge_id, &closed_port().await)
        .await;
    let (ann, bob) = (deployment.user("ann"), deployment.user("bob"));
    deployment.publish_route(&bob, &edge_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, &[ann.clone(), bob.clone()])
        .await;
    let worker = deployment.start(FanoutConfig {
        suspect_backoff_ms: 600_000,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    deployment.send_message(&conversation, &ann, "lost").await;
    eventually("the dead edge was given up", WAIT, || {
        metrics.given_up_for("refused") == 1
    })
    .await;

    // The edge drains and retires its lease, then a new process takes the
    // same id: it holds only fresh sessions, so nothing to resync, and it is
    // not skipped either.
    deployment.retire_edge(&edge_id).await;
    let restarted = FakeEdge::start().await;
    deployment
        .publish_live_edge(&edge_id, &restarted.push_addr())
        .await;
    eventually("the new edge is live", WAIT, || {
        worker
            .worker
            .routes()
            .read(|table| table.is_edge_live_at(&edge_id, &restarted.push_addr(), now_unix_ms()))
    })
    .await;
    deployment.send_message(&conversation, &ann, "after").await;
    eventually("the new edge got the message", WAIT, || {
        restarted.message_ids().len() == 1
    })
    .await;
    assert!(restarted.batches().iter().all(|batch| !batch.resync));
    assert_eq!(metrics.resyncs_requested.get(), 0);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_edge_is_retried_until_it_answers_and_nothing_is_skipped() {
    let deployment = Deployment::new().await;
    // Every push takes 700 ms to answer; the first attempt's deadline is
    // 300 ms, the second's 600 ms, the third's 1.2 s.
    let slow = FakeEdge::start_with_delay(Duration::from_millis(700)).await;
    let slow_id = deployment.edge("slow");
    deployment
        .publish_live_edge(&slow_id, &slow.push_addr())
        .await;
    let (ann, bob) = (deployment.user("ann"), deployment.user("bob"));
    deployment.publish_route(&bob, &slow_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, &[ann.clone(), bob.clone()])
        .await;
    let worker = deployment.start(FanoutConfig {
        push_timeout_ms: 300,
        max_push_timeout_ms: 5_000,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    let mut sent = Vec::new();
    for index in 0..5 {
        let record = deployment.message(&conversation, &ann, &format!("m{index}"));
        deployment.send(&record).await;
        sent.push(record.message_id.to_string());
    }
    eventually("every message reached the slow edge", WAIT, || {
        slow.distinct_message_ids().len() == 5
    })
    .await;
    let mut first_seen: Vec<String> = Vec::new();
    for id in slow.message_ids() {
        if !first_seen.contains(&id) {
            first_seen.push(id);
        }
    }
    assert_eq!(first_seen, sent, "in Kafka order");
    assert!(metrics.pushes_with(PushOutcome::Timeout) >= 2);
    assert!(metrics.push_retries.get() >= 2);
    assert_eq!(metrics.given_up_for("refused"), 0);
    assert_eq!(metrics.given_up_for("lease_expired"), 0);
    assert_eq!(metrics.pushes_with(PushOutcome::SkippedSuspect), 0);
    assert!(slow.batches().iter().all(|batch| !batch.resync));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_member_conversation_costs_one_push_per_edge() {
    let deployment = Deployment::new().await;
    let TwoEdgeGroup {
        edge_one,
        edge_two,
        members,
        conversation,
    } = TwoEdgeGroup::create(&deployment, "huge", 10_000, 500).await;

    // Recipient lists (member sets are tested below).
    let worker = deployment.start(FanoutConfig {
        member_set_min_members: 20_000,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    assert_eq!(metrics.route_table_routes.get(), 10_000);
    let message_id = deployment
        .send_message(&conversation, &members[0], "hello everyone")
        .await;
    eventually("both edges got the message", WAIT, || {
        edge_one.push_count() == 1
            && edge_two.push_count() == 1
            && metrics.deliveries.get() == 10_000
    })
    .await;
    for edge in [&edge_one, &edge_two] {
        let items = edge.items_of(&message_id);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].recipients.len(), 5_000);
    }
    let all: HashSet<String> = edge_one
        .items()
        .iter()
        .chain(edge_two.items().iter())
        .flat_map(|item| item.recipients.clone())
        .collect();
    assert_eq!(all.len(), 10_000, "every member, each on exactly one edge");
    assert_eq!(metrics.pushes_with(PushOutcome::Ok), 2);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_receiving() {
    let deployment = Deployment::new().await;
    let edge = FakeEdge::start().await;
    let edge_id = deployment.edge("e1");
    deployment
        .publish_live_edge(&edge_id, &edge.push_addr())
        .await;
    let (alice, bob) = (deployment.user("alice"), deployment.user("bob"));
    deployment.publish_route(&alice, &edge_id).await;
    deployment.publish_route(&bob, &edge_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, &[alice.clone(), bob.clone()])
        .await;
    let worker = deployment.start(deployment.config());
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();

    let before = deployment
        .send_message(&conversation, &alice, "before")
        .await;
    eventually("the first message arrived", WAIT, || {
        edge.items_of(&before).len() == 1
    })
    .await;
    assert_eq!(
        sorted_recipients(&edge.items_of(&before)[0]),
        names(&[&alice, &bob])
    );
    // Cached now; the removal must evict it.
    deployment.remove_member(&conversation, &bob, &alice).await;
    eventually("the removal was seen", WAIT, || {
        metrics.membership_invalidations.get() == 1
    })
    .await;
    let after = deployment
        .send_message(&conversation, &alice, "after")
        .await;
    eventually("the second message arrived", WAIT, || {
        edge.items_of(&after).len() == 1
    })
    .await;
    assert_eq!(
        sorted_recipients(&edge.items_of(&after)[0]),
        names(&[&alice])
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_read_and_presence_reach_the_right_members() {
    let deployment = Deployment::new().await;
    let edge = FakeEdge::start().await;
    let edge_id = deployment.edge("e1");
    deployment
        .publish_live_edge(&edge_id, &edge.push_addr())
        .await;
    let (alice, bob, carol) = (
        deployment.user("alice"),
        deployment.user("bob"),
        deployment.user("carol"),
    );
    for user in [&alice, &bob, &carol] {
        deployment.publish_route(user, &edge_id).await;
    }
    let (ab, ac) = (deployment.conversation("ab"), deployment.conversation("ac"));
    deployment
        .create_conversation(&ab, &[alice.clone(), bob.clone()])
        .await;
    deployment
        .create_conversation(&ac, &[alice.clone(), carol.clone()])
        .await;
    // A conversation above `presence_max_members` carries no presence.
    let (dave, erin) = (deployment.user("dave"), deployment.user("erin"));
    for user in [&dave, &erin] {
        deployment.publish_route(user, &edge_id).await;
    }
    deployment
        .create_conversation(
            &deployment.conversation("big"),
            &[alice.clone(), bob.clone(), dave.clone(), erin.clone()],
        )
        .await;
    let worker = deployment.start(FanoutConfig {
        presence_max_members: 3,
        ..deployment.config()
    });
    worker.ready().await;

    let message_id = deployment.send_message(&ab, &bob, "hi").await;
    deployment
        .send_event(
            ab.as_str(),
            Event::Typing {
                conversation_id: ab.clone(),
                user_id: alice.clone(),
            },
        )
        .await;
    deployment
        .send_event(
            ab.as_str(),
            Event::Read {
                conversation_id: ab.clone(),
                user_id: alice.clone(),
                message_id,
            },
        )
        .await;
    deployment
        .send_event(
            alice.as_str(),
            Event::Presence {
                user_id: alice.clone(),
                status: PresenceStatus::Online,
                edge_id: None,
            },
        )
        .await;
    eventually("three events arrived", WAIT, || {
        edge.items()
            .iter()
            .filter(|item| item.op != "message")
            .count()
            == 3
    })
    .await;
    let items = edge.items();
    let of = |op: &str| items.iter().find(|item| item.op == op).unwrap().clone();
    assert_eq!(
        sorted_recipients(&of("typing")),
        names(&[&bob]),
        "not the typist"
    );
    // A read receipt is also the reader's read marker: it goes to the
    // reader's own sessions too (their other devices; the edge leaves out
    // the session that sent it), unlike typing.
    assert_eq!(
        sorted_recipients(&of("read")),
        names(&[&alice, &bob]),
        "the other members and the reader's devices"
    );
    assert_eq!(
        sorted_recipients(&of("presence")),
        names(&[&bob, &carol]),
        "both small conversations, not alice, not the large group"
    );
    assert_eq!(of("presence").conversation_id, "");
    let read: serde_json::Value = serde_json::from_str(&of("read").fields_json).unwrap();
    assert_eq!(read["message_id"], message_id.to_string());
    let metrics = worker.worker.metrics().clone();
    eventually("the events were counted", WAIT, || {
        metrics.records_in_for("events") == 3
    })
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_the_worker_continues() {
    let deployment = Deployment::new().await;
    let edge = FakeEdge::start().await;
    let edge_id = deployment.edge("e1");
    deployment
        .publish_live_edge(&edge_id, &edge.push_addr())
        .await;
    let alice = deployment.user("alice");
    deployment.publish_route(&alice, &edge_id).await;
    let conversation = deployment.conversation("c");
    deployment
        .create_conversation(&conversation, std::slice::from_ref(&alice))
        .await;
    let worker = deployment.start(deployment.config());
    worker.ready().await;

    deployment
        .send_raw(
            &deployment.topics.messages,
            conversation.as_str(),
            b"{not json",
        )
        .await;
    deployment
        .send_raw(
            &deployment.topics.events,
            conversation.as_str(),
            br#"{"type":"dance"}"#,
        )
        .await;
    let after = deployment
        .send_message(&conversation, &alice, "still here")
        .await;
    eventually("the next message is delivered", WAIT, || {
        edge.items_of(&after).len() == 1
    })
    .await;
    let metrics = worker.worker.metrics().clone();
    eventually("both poison records were dead-lettered", WAIT, || {
        metrics.consumer.dead_lettered.get() == 2
    })
    .await;
    assert_eq!(edge.message_ids().len(), 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_is_replaced_without_losing_messages() {
    let deployment = Deployment::new().await;
    // A slowish edge keeps the stream going long enough to kill mid-way.
    let edge = FakeEdge::start_with_delay(Duration::from_millis(20)).await;
    let edge_id = deployment.edge("e1");
    deployment
        .publish_live_edge(&edge_id, &edge.push_addr())
        .await;
    let users: Vec<UserId> = (0..4)
        .map(|index| deployment.user(&format!("u{index}")))
        .collect();
    for user in &users {
        deployment.publish_route(user, &edge_id).await;
    }
    let conversations: Vec<_> = (0..8)
        .map(|index| deployment.conversation(&format!("c{index}")))
        .collect();
    for conversation in &conversations {
        deployment.create_conversation(conversation, &users).await;
    }
    let config = FanoutConfig {
        max_batch_records: 5,
        ..deployment.config()
    };
    let first = deployment.start(config.clone());
    first.ready().await;

    let mut expected: HashSet<String> = HashSet::new();
    let records: Vec<_> = (0..400)
        .map(|index| {
            let conversation = &conversations[index % conversations.len()];
            deployment.message(
                conversation,
                &users[index % users.len()],
                &format!("m{index}"),
            )
        })
        .collect();
    for record in &records {
        expected.insert(record.message_id.to_string());
    }
    let (head, tail) = records.split_at(200);
    for record in head {
        deployment.send(record).await;
    }
    eventually("the first worker is mid-stream", WAIT, || {
        edge.distinct_message_ids().len() >= 40
    })
    .await;
    // Kill it: no orderly shutdown, no final commit by the loop.
    first.worker.abort();
    first.shutdown.cancel();
    let delivered_by_first = edge.distinct_message_ids().len();
    assert!(delivered_by_first < 400);

    let second = deployment.start(config);
    for record in tail {
        deployment.send(record).await;
    }
    second.ready().await;
    eventually("every message was delivered", WAIT, || {
        edge.distinct_message_ids() == expected
    })
    .await;
    // Duplicates are allowed (clients de-duplicate by message id), and once
    // de-duplicated each conversation reads in its Kafka order.
    let ids = edge.message_ids();
    assert!(ids.len() >= 400);
    for conversation in &conversations {
        let produced: Vec<String> = records
            .iter()
            .filter(|record| &record.conversation_id == conversation)
            .map(|record| record.message_id.to_string())
            .collect();
        let mut seen = HashSet::new();
        let first_seen: Vec<String> = ids
            .iter()
            .filter(|id| produced.contains(id) && seen.insert((*id).clone()))
            .cloned()
            .collect();
        assert_eq!(first_seen, produced, "order of {conversation}");
    }
    second.stop().await;
}

/// librdkafka's default partitioner (`consistent_random`): CRC-32 of the key.
fn partition_of(key: &str, partitions: u32) -> i32 {
    let mut crc: u32 = 0xFFFF_FFFF;
    for byte in key.as_bytes() {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    ((!crc) % partitions) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_push_holds_up_only_its_own_partition() {
    let deployment = Deployment::new().await;
    let stalled_conversation = deployment.conversation("stalled");
    let stalled_partition = partition_of(stalled_conversation.as_str(), 4);
    // A conversation of another partition of `chat.messages` (4 partitions).
    let flowing_conversation = (0..)
        .map(|index| deployment.conversation(&format!("flowing{index}")))
        .find(|conversation| partition_of(conversation.as_str(), 4) != stalled_partition)
        .expect("some conversation lands elsewhere");
    // One edge holds every push for the stalled conversation (the push
    // neither fails nor times out: its deadline is long); the other answers.
    let stalled_edge = FakeEdge::start_gated(&stalled_conversation).await;
    let free_edge = FakeEdge::start().await;
    let (stalled_id, free_id) = (deployment.edge("stalled"), deployment.edge("free"));
    deployment
        .publish_live_edge(&stalled_id, &stalled_edge.push_addr())
        .await;
    deployment
        .publish_live_edge(&free_id, &free_edge.push_addr())
        .await;
    let (ann, bob) = (deployment.user("ann"), deployment.user("bob"));
    deployment.publish_route(&ann, &stalled_id).await;
    deployment.publish_route(&bob, &free_id).await;
    deployment
        .create_conversation(&stalled_conversation, std::slice::from_ref(&ann))
        .await;
    deployment
        .create_conversation(&flowing_conversation, std::slice::from_ref(&bob))
        .await;
    let worker = deployment.start(FanoutConfig {
        push_timeout_ms: 120_000,
        max_push_timeout_ms: 120_000,
        ..deployment.config()
    });
    worker.ready().await;

    let stalled_message = deployment.message(&stalled_conversation, &ann, "held");
    let position = deployment
        .producer
        .send_json(
            &deployment.topics.messages,
            stalled_conversation.as_str(),
            &stalled_message,
            common::SEND_DEADLINE,
        )
        .await
        .unwrap();
    assert_eq!(position.partition, stalled_partition);
    eventually("the stalled conversation's push is held", WAIT, || {
        stalled_edge.held_pushes() == 1
    })
    .await;

    let mut flowing_ids = Vec::new();
    for index in 0..3 {
        let record = deployment.message(&flowing_conversation, &bob, &format!("m{index}"));
        let position = deployment
            .producer
            .send_json(
                &deployment.topics.messages,
                flowing_conversation.as_str(),
                &record,
                common::SEND_DEADLINE,
            )
            .await
            .unwrap();
        assert_ne!(position.partition, stalled_partition);
        flowing_ids.push(record.message_id.to_string());
    }
    eventually("the other partition's messages are delivered", WAIT, || {
        free_edge.message_ids().len() == 3
    })
    .await;
    assert_eq!(free_edge.message_ids(), flowing_ids, "in Kafka order");
    // ... while the stalled push is still held and nothing of it arrived.
    assert_eq!(stalled_edge.held_pushes(), 1);
    assert!(
        stalled_edge
            .items_of(&stalled_message.message_id)
            .is_empty()
    );

    stalled_edge.open_gate();
    eventually("the stalled message arrives once released", WAIT, || {
        !stalled_edge
            .items_of(&stalled_message.message_id)
            .is_empty()
    })
    .await;
    assert_eq!(
        stalled_edge.distinct_message_ids(),
        HashSet::from([stalled_message.message_id.to_string()])
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_sends_its_member_list_once_per_edge_then_a_reference() {
    let deployment = Deployment::new().await;
    let TwoEdgeGroup {
        edge_one,
        edge_two,
        members,
        conversation,
    } = TwoEdgeGroup::create(&deployment, "large", 1_500, 200).await;
    let worker = deployment.start(FanoutConfig {
        member_set_min_members: 1_000,
        ..deployment.config()
    });
    worker.ready().await;
    let metrics = worker.worker.metrics().clone();
    let mut sent = Vec::new();
    for (index, sender) in members.iter().take(3).enumerate() {
        sent.push(
            deployment
                .send_message(&conversation, sender, &format!("m{index}"))
                .await
                .to_string(),
        );
    }
    eventually("both edges got every message", WAIT, || {
        edge_one.message_ids().len() == 3 && edge_two.message_ids().len() == 3
    })
    .await;
    let all_members = names(&members.iter().collect::<Vec<_>>());
    for edge in [&edge_one, &edge_two] {
        assert_eq!(edge.message_ids(), sent, "in Kafka order");
        let items = edge.items();
        assert!(
            items.iter().all(|item| item.recipients.is_empty()),
            "no recipient ids"
        );
        let set = items[0].member_set;
        assert_ne!(set, 0);
        assert!(items.iter().all(|item| item.member_set == set));
        // The list went once, whole: the edge resolves its local members.
        let lists: Vec<&PushItem> = items
            .iter()
            .filter(|item| !item.member_set_members.is_empty())
            .collect();
        assert_eq!(lists.len(), 1);
        let mut list = lists[0].member_set_members.clone();
        list.sort();
        assert_eq!(list, all_members);
    }
    assert_eq!(metrics.member_sets_sent.get(), 2);

    // An edge that lost its sets (a restart) refuses the reference, and
    // gets the list again, the message once.
    edge_one.forget_member_sets();
    let after_restart = deployment
        .send_message(&conversation, &members[0], "again")
        .await
        .to_string();
    eventually("the message arrives after the resend", WAIT, || {
        edge_one.message_ids().len() == 4 && edge_two.message_ids().len() == 4
    })
    .await;
    assert_eq!(edge_one.message_ids()[3], after_restart);
    let last = edge_one.items().pop().unwrap();
    assert_eq!(last.member_set_members.len(), 1_500);
    assert_eq!(metrics.member_sets_unknown.get(), 1);
    assert_eq!(metrics.member_sets_sent.get(), 3);

    // A membership change is a new set: its list goes again.
    deployment
        .remove_member(&conversation, &members[1_499], &members[0])
        .await;
    eventually("the worker saw the membership change", WAIT, || {
        metrics.membership_invalidations.get() >= 1
    })
    .await;
    // The change is itself delivered to the members who stay.
    eventually("both edges got the membership frame", WAIT, || {
        [&edge_one, &edge_two]
            .iter()
            .all(|edge| edge.items().iter().any(|item| item.op == "member_removed"))
    })
    .await;
    let changed = deployment
        .send_message(&conversation, &members[0], "fewer")
        .await
        .to_string();
    eventually("the message after the change arrives", WAIT, || {
        edge_two.message_ids().last() == Some(&changed)
    })
    .await;
    let last = edge_two.items().pop().unwrap();
    assert_ne!(last.member_set, edge_two.items()[0].member_set);
    // The change itself (`member_removed`, to the members who stay, by the
    // same new set) came before the message: that first item of the new
    // set carried its list, once.
    let new_set: Vec<PushItem> = edge_two
        .items()
        .into_iter()
        .filter(|item| item.member_set == last.member_set)
        .collect();
    assert_eq!(new_set[0].op, "member_removed");
    let lists: Vec<usize> = new_set
        .iter()
        .map(|item| item.member_set_members.len())
        .filter(|length| *length > 0)
        .collect();
    assert_eq!(lists, [1_499]);
    worker.stop().await;
}

/// Two live fake edges, `size` members routed alternately to them, and a
/// conversation of all of them.
struct TwoEdgeGroup {
    edge_one: FakeEdge,
    edge_two: FakeEdge,
    members: Vec<UserId>,
    conversation: chatpipe_core::ConversationId,
}

impl TwoEdgeGroup {
    async fn create(
        deployment: &Deployment,
        name: &str,
        size: usize,
        routes_in_flight: usize,
    ) -> TwoEdgeGroup {
        let (edge_one, edge_two) = (FakeEdge::start().await, FakeEdge::start().await);
        let (first_id, second_id) = (deployment.edge("e1"), deployment.edge("e2"));
        deployment
            .publish_live_edge(&first_id, &edge_one.push_addr())
            .await;
        deployment
            .publish_live_edge(&second_id, &edge_two.push_addr())
            .await;
        let members: Vec<UserId> = (0..size)
            .map(|index| deployment.user(&format!("m{index}")))
            .collect();
        futures::stream::iter(members.iter().enumerate())
            .for_each_concurrent(routes_in_flight, |(index, user)| {
                let edge = if index % 2 == 0 {
                    &first_id
                } else {
                    &second_id
                };
                deployment.publish_route(user, edge)
            })
            .await;
        let conversation = deployment.conversation(name);
        deployment
            .create_conversation(&conversation, &members)
            .await;
        TwoEdgeGroup {
            edge_one,
            edge_two,
            members,
            conversation,
        }
    }
}
