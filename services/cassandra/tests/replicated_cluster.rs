//! History on a real three-node Cassandra survives one node killed: the
//! keyspace replicated three times (`NetworkTopologyStrategy`), writes and
//! reads at `LOCAL_QUORUM`, one node `kill -9`ed while messages are
//! written, every write acknowledged and every message read back exactly
//! once with the node still down; and with a second node down the same
//! writes are refused, so the acknowledgements above really were quorum
//! ones.
//!
//! The test starts its own cluster through `topology/engines.sh`
//! (`CHATPIPE_CASSANDRA_NODES=3`) under a private `CHATPIPE_HOME` in a
//! temp dir (jars shared with the default home through a `lib` symlink),
//! on 127.0.0.5 … 127.0.0.7 and ports of its own (CQL 18643, storage
//! 18701, JMX 18721 … 18723), so it never touches the shared engines. A
//! guard stops the cluster and deletes the dir whatever happens.
//!
//! It boots three JVMs (~3 GiB, about a minute on two cores), so it is
//! `#[ignore]`d in the normal run; `topology/test.sh` runs it in phase 2,
//! serially:
//!
//! ```text
//! cargo test -p chatpipe-cassandra --test replicated_cluster -- --ignored
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chatpipe_cassandra::{
    CassandraConfig, CassandraStore, ConsistencyLevel, CreateOutcome, HistoryQuery,
    NewConversation, Replication,
};
use chatpipe_core::ids::{ConversationId, MessageId, MessageIdGenerator, UserId};
use chatpipe_core::records::MessageRecord;
use chatpipe_core::time::now_unix_ms;
use chatpipe_testkit::engines::{PrivateEngines, process_alive};

const FIRST_ADDRESS: [u8; 4] = [127, 0, 0, 5];
const CQL_PORT: u16 = 18643;
const STORAGE_PORT: u16 = 18701;
/// Node n's JMX port is this plus n.
const JMX_PORT_BASE: u16 = 18720;
const NODES: u8 = 3;

fn node_address(node: u8) -> IpAddr {
    let [a, b, c, d] = FIRST_ADDRESS;
    IpAddr::from([a, b, c, d + node - 1])
}

/// A private three-node cluster run by `topology/engines.sh`; dropping it
/// stops every node (`down --wipe`) and deletes its home.
struct PrivateCluster {
    engines: PrivateEngines,
}

impl PrivateCluster {
    fn start() -> Self {
        let engines = PrivateEngines::new(
            "chatpipe-rf3",
            &[
                ("CHATPIPE_CASSANDRA_NODES", NODES.to_string()),
                (
                    "CHATPIPE_CASSANDRA_FIRST_ADDRESS",
                    node_address(1).to_string(),
                ),
                ("CHATPIPE_CASSANDRA_PORT", CQL_PORT.to_string()),
                ("CHATPIPE_CASSANDRA_STORAGE_PORT", STORAGE_PORT.to_string()),
                ("CHATPIPE_CASSANDRA_JMX_PORT", JMX_PORT_BASE.to_string()),
                // The script's own defaults for a cluster (512M heaps, a
                // longer start-up budget), whatever the caller's environment.
                ("CHATPIPE_CASSANDRA_HEAP", String::new()),
                ("CHATPIPE_ENGINES_TIMEOUT", String::new()),
            ],
        );
        engines.run(&["up", "cassandra"]);
        PrivateCluster { engines }
    }

    /// `engines.sh kill cassandra-N`, checked gone; returns its pid.
    fn kill_9(&self, node: u8) -> u32 {
        self.engines.kill_9(&format!("cassandra-{node}"))
    }
}

/// Waits until the driver holds no connection to `node` any more (it has
/// seen the node go down), at most 30 s.
async fn until_driver_sees_down(store: &CassandraStore, node: u8) {
    let address = node_address(node);
    let started = Instant::now();
    loop {
        let state = store.session().get_cluster_state();
        let known = state
            .get_nodes_info()
            .iter()
            .find(|info| info.address.ip() == address)
            .unwrap_or_else(|| panic!("the driver does not know {address}"));
        if !known.is_connected() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the driver still holds connections to the killed node {address}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Builds the rounds of messages and remembers every id handed out.
struct Writer {
    generator: MessageIdGenerator,
    rooms: Vec<ConversationId>,
    sender: UserId,
    written: BTreeMap<ConversationId, Vec<MessageId>>,
}

impl Writer {
    /// `count` messages spread over the rooms; the caller must write them
    /// all (the ids count as written).
    fn round(&mut self, round: usize, count: usize) -> Vec<MessageRecord> {
        (0..count)
            .map(|index| {
                let room = &self.rooms[index % self.rooms.len()];
                let id = self.generator.next_id(now_unix_ms());
                self.written.entry(room.clone()).or_default().push(id);
                MessageRecord::builder(id, room)
                    .sender(&self.sender)
                    .client_msg_id(format!("r{round}-{index}"))
                    .body(format!("round {round} message {index}"))
                    .build()
            })
            .collect()
    }
}

/// Every message of `conversation`, newest first, read in pages at the
/// store's consistency.
async fn read_all(store: &CassandraStore, room: &ConversationId) -> Vec<MessageId> {
    let conversation = store
        .conversation(room)
        .await
        .expect("conversation read")
        .expect("conversation exists");
    let mut ids = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .read_history(
                &conversation,
                &HistoryQuery {
                    before,
                    after: None,
                    limit: 50,
                },
                now_unix_ms(),
            )
            .await
            .expect("history read at LOCAL_QUORUM with one node down");
        ids.extend(page.messages.iter().map(|message| message.message_id));
        if !page.has_more {
            return ids;
        }
        before = page.messages.last().map(|message| message.message_id);
    }
}

#[tokio::test]
#[ignore = "boots its own three-node Cassandra (~3 GiB, ~1 min) and kills nodes: topology/test.sh phase 2"]
async fn history_writes_survive_one_node_killed_at_local_quorum() {
    let cluster = PrivateCluster::start();
    let replicated: Replication = "NetworkTopologyStrategy:datacenter1=3".parse().unwrap();
    let config = CassandraConfig {
        contact_points: (1..=NODES)
            .map(|node| format!("{}:{CQL_PORT}", node_address(node)))
            .collect(),
        keyspace: "chatpipe_rf3".to_owned(),
        replication: replicated.clone(),
        consistency: ConsistencyLevel::LocalQuorum,
        request_timeout_ms: 10_000,
        ..CassandraConfig::default()
    };
    let store = CassandraStore::connect(&config)
        .await
        .expect("connect to the private cluster");
    let report = store.apply_schema().await.expect("schema");
    assert_eq!(report.replication, Some(replicated));
    assert_eq!(store.config().consistency, ConsistencyLevel::LocalQuorum);
    assert_eq!(
        store.session().get_cluster_state().get_nodes_info().len(),
        usize::from(NODES),
        "the driver sees every node"
    );

    let unique = uuid::Uuid::new_v4().simple().to_string();
    let alice = UserId::parse(format!("alice-{unique}")).unwrap();
    let rooms: Vec<ConversationId> = (0..4)
        .map(|index| ConversationId::parse(format!("rf3-{index}-{unique}")).unwrap())
        .collect();
    let now = now_unix_ms();
    for room in &rooms {
        let outcome = store
            .create_conversation(&NewConversation {
                conversation_id: room.clone(),
                title: None,
                created_by: alice.clone(),
                members: vec![],
                created_at_ms: now,
            })
            .await
            .expect("create");
        assert!(matches!(outcome, CreateOutcome::Created { .. }));
    }
    let mut writer = Writer {
        generator: MessageIdGenerator::new(21),
        rooms,
        sender: alice,
        written: BTreeMap::new(),
    };

    // All three up.
    for round in 0..5 {
        let records = writer.round(round, 12);
        store
            .write_messages(&records, 4)
            .await
            .expect("write with every node up");
    }

    // One node killed: checked dead, and seen down by the driver.
    let killed = cluster.kill_9(2);
    until_driver_sees_down(&store, 2).await;
    for round in 5..30 {
        let records = writer.round(round, 12);
        store
            .write_messages(&records, 4)
            .await
            .unwrap_or_else(|error| {
                panic!("round {round}: a LOCAL_QUORUM write with one of three replicas down failed: {error}")
            });
        // One at a time too (the single-statement path).
        for record in writer.round(round + 1000, 2) {
            store
                .write_message(&record)
                .await
                .expect("single write with one node down");
        }
    }
    let acknowledged: usize = writer.written.values().map(Vec::len).sum();

    // Every acknowledged message reads back exactly once, node still down.
    for (room, ids) in &writer.written {
        let mut read = read_all(&store, room).await;
        read.reverse();
        let mut expected = ids.clone();
        expected.sort_unstable();
        assert_eq!(
            read, expected,
            "{room}: history must hold every acknowledged message exactly once"
        );
    }
    assert!(
        !process_alive(killed),
        "cassandra-2 came back during the reads"
    );
    eprintln!(
        "{acknowledged} messages acknowledged at LOCAL_QUORUM and read back once each with cassandra-2 down"
    );

    // A second node down: a quorum of three is out of reach, so the same
    // write is refused (a ONE write would have been acknowledged).
    cluster.kill_9(3);
    until_driver_sees_down(&store, 3).await;
    let records = writer.round(99, 12);
    let refused = store
        .write_messages(&records, 4)
        .await
        .expect_err("LOCAL_QUORUM must refuse a write with two of three replicas down");
    assert!(refused.is_retriable(), "{refused}");
    drop(store);
    drop(cluster);
}
