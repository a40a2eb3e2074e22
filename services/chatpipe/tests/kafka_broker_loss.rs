//! A Kafka broker lost for real, in CI's budget: the test starts its own
//! three-node KRaft cluster with `topology/engines.sh` (a private
//! `CHATPIPE_HOME` under the temp dir, ports 19341–19343 and controllers
//! 19351–19353), runs an edge, fan-out, persist, index and the API on it
//! (with the shared Cassandra and OpenSearch, under names of its own),
//! sends a few hundred messages over the Rust client, and `kill -9`s the
//! broker that leads the most partitions of the messages topic a third of
//! the way in. The broker must really leave every in-sync replica set (read
//! from the cluster's metadata, not waited for with a sleep) while sends go
//! on; the last third is sent on the two brokers left. Then every acked
//! message must have reached every recipient and be in history exactly
//! once, in send order. A recipient reaches a message live, or — when the
//! edge closed its session with 4010 because its lease ran out while the
//! brokers failed over (fan-out skips an edge without a lease) — by the
//! catch-up from history the contract asks of clients then; any other
//! close fails the test. The killed broker is started again by number
//! (`engines.sh up kafka-N`) and must rejoin its in-sync replica sets.
//!
//! It starts three JVMs (~1.2 GiB) and kills one, so it is `#[ignore]`d in
//! the normal run and `topology/test.sh` runs it in its second phase,
//! alone. The cluster is stopped and its directory removed by a drop
//! guard, on failure too.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use chatpipe_edge::EdgeHandle;
use chatpipe_fanout::FanoutWorker;
use chatpipe_testkit::engines::PrivateEngines;
use futures::FutureExt;

use chatpipe_kafka::KafkaConfig;
use chatpipe_kafka::admin::{
    back_in_sync, busiest_leader, out_of_sync, partition_replicas, topic_configs,
};
use common::*;
use serde_json::Value;
use tokio::sync::watch;

/// Nodes of the private cluster, and its first client and controller ports
/// (inside the range this test owns, away from the shared 9092/9093).
const NODES: u16 = 3;
const PORT: u16 = 19341;
const CONTROLLER_PORT: u16 = 19351;

/// Messages sent, round-robin over the conversations (so that every
/// partition gets some); the broker dies after a third of them, and the
/// last third waits until it left every in-sync replica set.
const MESSAGES: usize = 300;
const CONVERSATIONS: usize = 12;

/// How long the cluster may take to notice the dead broker (its session
/// timeout is 9 s), and a restarted one to catch up.
const CLUSTER_WAIT: Duration = Duration::from_secs(60);

/// The private cluster; dropping it stops every node and removes its data.
struct Cluster {
    engines: PrivateEngines,
    brokers: String,
}

impl Cluster {
    fn start() -> Cluster {
        // The guard exists before the first start, so that a half-started
        // cluster is stopped too.
        let engines = PrivateEngines::new(
            "chatpipe-kafka3",
            &[
                ("CHATPIPE_KAFKA_NODES", NODES.to_string()),
                ("CHATPIPE_KAFKA_PORT", PORT.to_string()),
                (
                    "CHATPIPE_KAFKA_CONTROLLER_PORT",
                    CONTROLLER_PORT.to_string(),
                ),
                ("CHATPIPE_ENGINES_TIMEOUT", "120".to_owned()),
            ],
        );
        engines.run(&["up", "kafka"]);
        let brokers = (0..NODES)
            .map(|node| format!("127.0.0.1:{}", PORT + node))
            .collect::<Vec<_>>()
            .join(",");
        Cluster { engines, brokers }
    }
}

/// Polls the messages topic's metadata until `done` holds (blocking: run
/// it off the async threads); returns how long that took.
fn wait_for_metadata(
    kafka: &KafkaConfig,
    topic: &str,
    what: &str,
    done: impl Fn(&[chatpipe_kafka::admin::PartitionReplicas]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        // A metadata call may fail while the cluster moves leaders: retry.
        let partitions = partition_replicas(kafka, topic).unwrap_or_default();
        if !partitions.is_empty() && done(&partitions) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < CLUSTER_WAIT,
            "{what} not seen in {CLUSTER_WAIT:?}; last metadata: {partitions:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a recipient saw: the distinct message ids in arrival order, and
/// the `seq` numbers its session skipped (frames the edge numbered but
/// never wrote, which would point at the edge rather than fan-out).
#[derive(Debug, Default)]
struct Seen {
    ids: Vec<String>,
    skipped_seqs: Vec<u64>,
    /// The edge closed the session with 4010 (resync): frames meant for it
    /// were skipped upstream (a lease that ran out while Kafka failed
    /// over), and the contract's client reconnects and catches up from
    /// history, which the check then does for it.
    resynced: Option<Value>,
}

/// Reads `client`'s frames until every message id `expected` publishes
/// (once sending ended) arrived, or `WAIT` after that.
async fn read_messages(
    mut client: Client,
    mut expected: watch::Receiver<Option<HashSet<String>>>,
) -> Seen {
    let mut distinct = HashSet::new();
    let mut seen = Seen::default();
    let mut deadline = None;
    loop {
        if let Some(wanted) = expected.borrow_and_update().as_ref() {
            if wanted.iter().all(|id| distinct.contains(id)) {
                return seen;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + WAIT);
            if Instant::now() > deadline {
                return seen;
            }
        }
        let before = client.last_seq;
        if let Some(frame) = client.read_frame(Duration::from_millis(500)).await {
            if let Some(seq) = frame["seq"].as_u64() {
                seen.skipped_seqs.extend(before + 1..seq);
            }
            if frame["op"] == "message" {
                let id = frame["message"]["message_id"].as_str().unwrap().to_owned();
                if distinct.insert(id.clone()) {
                    seen.ids.push(id);
                }
            }
        } else if let Some(close) = client.pending.iter().find(|frame| frame["op"] == "__close") {
            assert_eq!(
                close["code"], 4010,
                "the edge closed a recipient's connection: {close}"
            );
            seen.resynced = Some(close.clone());
            return seen;
        }
    }
}

/// The answer to `reference`, or `None` when the edge closed the
/// connection with 4010 (resync) first; any other close fails the test.
async fn answer_or_resync(client: &mut Client, frame: Value, reference: &str) -> Option<Value> {
    client.send_json(frame).await;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(position) = client
            .pending
            .iter()
            .position(|frame| frame["client_msg_id"] == reference || frame["ref"] == reference)
        {
            return Some(client.pending.remove(position));
        }
        if let Some(close) = client.pending.iter().find(|frame| frame["op"] == "__close") {
            assert_eq!(close["code"], 4010, "the edge closed the sender: {close}");
            return None;
        }
        assert!(Instant::now() < deadline, "no answer to {reference}");
        if let Some(frame) = client.read_frame(Duration::from_millis(500)).await {
            client.pending.push(frame);
        }
    }
}

/// Sends a message and returns its `message_id` once acked. A send the
/// edge could not get acked (`unavailable`, while the cluster elects new
/// leaders) is retried with the same `client_msg_id` and marked `resend`,
/// as the contract asks of clients: its first attempt may still land, and
/// the ack of the retry then carries the first attempt's id. A sender told
/// to resync (4010) reconnects and retries the same way.
async fn send_acked(
    sender: &mut Client,
    reconnect: (&EdgeHandle, &str),
    conversation: &str,
    client_msg_id: &str,
) -> String {
    let frame = |resend: bool| {
        serde_json::json!({
            "op": "send",
            "resend": resend,
            "conversation_id": conversation,
            "client_msg_id": client_msg_id,
            "body": client_msg_id,
        })
    };
    let mut answer = answer_or_resync(sender, frame(false), client_msg_id).await;
    for _retry in 0..5 {
        match &answer {
            Some(ack) if ack["op"] == "ack" => {
                return ack["message_id"].as_str().unwrap().to_owned();
            }
            Some(error) => {
                assert_eq!(
                    error["code"], "unavailable",
                    "only a retriable error: {error}"
                );
                eprintln!("{client_msg_id}: {error}; resending");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => {
                eprintln!("{client_msg_id}: the sender was told to resync; reconnecting");
                *sender = Client::connect(reconnect.0, reconnect.1).await;
            }
        }
        answer = answer_or_resync(sender, frame(true), client_msg_id).await;
    }
    panic!("{client_msg_id} was never acked: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts a private 3-node Kafka (~1.2 GiB, ports 19341-19353) and kills a broker; run alone via topology/test.sh's phase 2"]
async fn a_killed_kafka_broker_loses_no_acked_message() {
    let started = Instant::now();
    let cluster = tokio::task::block_in_place(Cluster::start);
    let stack = Stack::on_kafka(&cluster.brokers).await;
    let topic = stack.topics.messages.clone();

    // `topology apply` (run by the stack) saw three brokers: every topic
    // has three replicas and a minimum of two in sync.
    let partitions = partition_replicas(&stack.kafka, &topic).expect("metadata");
    assert!(!partitions.is_empty());
    for partition in &partitions {
        assert_eq!(partition.replicas.len(), 3, "{partition:?}");
    }
    let configs = topic_configs(&stack.kafka, &topic).await.expect("configs");
    assert_eq!(
        configs["min.insync.replicas"].value.as_deref(),
        Some("2"),
        "{configs:?}"
    );

    let mut edge_config = stack.edge_config("a");
    // Sends wait through the leader election instead of answering
    // `unavailable` (still retried below if they do).
    edge_config.send_deadline_ms = 30_000;
    let (edge, _edge_shutdown) = stack.edge(edge_config).await;
    let (fanout, _fanout_shutdown) = stack.fanout(&unique("fanout")).await;
    let full = stack.full().await;

    let outcome = AssertUnwindSafe(send_kill_and_verify(
        &cluster, &stack, &edge, &fanout, &full,
    ))
    .catch_unwind()
    .await;
    // Stop the roles while the brokers still run, failed or not: a Kafka
    // client closed with every broker gone can block its thread for good
    // (and the test with it).
    stack.root.cancel();
    let stopped = futures::future::join_all([
        edge.join().boxed(),
        fanout.join().boxed(),
        full.api_role.join().boxed(),
        full.persist.join().boxed(),
        full.index.join().boxed(),
    ]);
    if tokio::time::timeout(CLUSTER_WAIT, stopped).await.is_err() {
        eprintln!("the roles did not stop within {CLUSTER_WAIT:?}");
    }
    drop(stack);
    drop(cluster);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    eprintln!("test took {:?}", started.elapsed());
}

/// Sends, kills the busiest leader, keeps sending, checks delivery and
/// history, and starts the broker again.
async fn send_kill_and_verify(
    cluster: &Cluster,
    stack: &Stack,
    edge: &EdgeHandle,
    fanout: &FanoutWorker,
    full: &FullStack,
) {
    let topic = stack.topics.messages.clone();
    let (alice, bob, carol) = (unique("alice"), unique("bob"), unique("carol"));
    let mut conversations = Vec::new();
    for _ in 0..CONVERSATIONS {
        conversations.push(stack.conversation(&[&alice, &bob, &carol]).await);
    }
    let sender_token = stack.token(&alice);
    let mut sender = Client::connect(edge, &sender_token).await;
    let (publish, expected) = watch::channel(None);
    let mut readers = Vec::new();
    for recipient in [&bob, &carol] {
        let client = Client::connect(edge, &stack.token(recipient)).await;
        stack.routed(fanout, recipient, 1).await;
        readers.push(tokio::spawn(read_messages(client, expected.clone())));
    }

    let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // (conversation, message id) in send order.
    let mut sent_order: Vec<(String, String)> = Vec::new();
    let mut victim = None;
    let mut left_isr = None;
    for index in 0..MESSAGES {
        if index == MESSAGES / 3 {
            let partitions = partition_replicas(&stack.kafka, &topic).expect("metadata");
            let broker = busiest_leader(&partitions).expect("the partitions have leaders");
            // kill -9, checked gone.
            tokio::task::block_in_place(|| cluster.engines.kill_9(&format!("kafka-{broker}")));
            let kafka = stack.kafka.clone();
            let topic = topic.clone();
            left_isr = Some(tokio::task::spawn_blocking(move || {
                wait_for_metadata(
                    &kafka,
                    &topic,
                    "the killed broker out of every ISR",
                    |now| out_of_sync(now, broker),
                )
            }));
            victim = Some(broker);
        }
        if index == 2 * MESSAGES / 3 {
            let took = left_isr
                .take()
                .expect("the kill came first")
                .await
                .expect("the ISR watch finished");
            eprintln!("the killed broker left every ISR after {took:?}");
        }
        let conversation = conversations[index % CONVERSATIONS].as_str();
        let message_id = send_acked(
            &mut sender,
            (edge, &sender_token),
            conversation,
            &format!("m{index}"),
        )
        .await;
        acked
            .entry(conversation.to_owned())
            .or_default()
            .push(message_id.clone());
        sent_order.push((conversation.to_owned(), message_id));
    }
    let victim = victim.expect("a broker was killed");

    // Every acked message reached every recipient live (duplicates from a
    // redelivery are dropped by id, as clients must), and history holds
    // each exactly once, in send order. History is read first, so that a
    // failure tells a live gap from a lost message.
    let all_acked: HashSet<String> = acked.values().flatten().cloned().collect();
    assert_eq!(all_acked.len(), MESSAGES, "message ids are unique");
    publish.send_replace(Some(all_acked.clone()));
    let mut seen = Vec::new();
    for reader in readers {
        seen.push(reader.await.expect("reader"));
    }
    let mut history_failures = Vec::new();
    for (conversation, sent) in &acked {
        let token = stack.token(&alice);
        let deadline = Instant::now() + WAIT;
        let history = loop {
            let messages: Vec<Value> = full.latest_history(&token, conversation).await;
            if messages.len() >= sent.len() || Instant::now() > deadline {
                break message_ids(&messages);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if &history != sent {
            history_failures.push(format!(
                "{conversation}: sent {sent:?}, history {history:?}"
            ));
        }
    }
    let mut live_failures = Vec::new();
    for (seen, recipient) in seen.iter_mut().zip([&bob, &carol]) {
        if let Some(close) = &seen.resynced {
            // The client's catch-up after 4010: every conversation's history.
            eprintln!("{recipient} was told to resync ({close}); catching up from history");
            let token = stack.token(recipient);
            for conversation in acked.keys() {
                for message in full.latest_history(&token, conversation).await {
                    seen.ids
                        .push(message["message_id"].as_str().unwrap().to_owned());
                }
            }
        }
        let received: HashSet<&String> = seen.ids.iter().collect();
        let missing: Vec<String> = sent_order
            .iter()
            .enumerate()
            .filter(|(_, (_, id))| !received.contains(id))
            .map(|(index, (conversation, _))| format!("m{index} in {conversation}"))
            .collect();
        if !missing.is_empty() {
            live_failures.push(format!(
                "{recipient} misses {} acked messages live: {missing:?} (seqs its session skipped: {:?})",
                missing.len(),
                seen.skipped_seqs
            ));
        }
    }
    assert!(
        history_failures.is_empty() && live_failures.is_empty(),
        "kafka-{victim} killed before m{}; history (each acked message once, in order): {history_failures:#?}; live: {live_failures:#?}",
        MESSAGES / 3
    );

    // The killed broker starts again by number and catches up.
    tokio::task::block_in_place(|| cluster.engines.run(&["up", &format!("kafka-{victim}")]));
    let kafka = stack.kafka.clone();
    let took = tokio::task::spawn_blocking(move || {
        wait_for_metadata(&kafka, &topic, "the restarted broker back in sync", |now| {
            back_in_sync(now, victim)
        })
    })
    .await
    .expect("the ISR watch finished");
    eprintln!("kafka-{victim} back in every ISR {took:?} after its start");
}
