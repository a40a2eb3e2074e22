//! criterion micro-benchmarks of chatpipe's hot paths, all pure functions:
//!
//! - client frame decoding (`decode_client_frame`, every `send` an edge takes),
//! - per-session frame encoding (`Deliverable::encode_with_seq`, once per
//!   recipient session) and `ControlFrame::encode` (every `ack`),
//! - the Kafka record's serde_json round trip (`MessageRecord`, once per
//!   produce and once per consumer group),
//! - the fan-out routing step (`plan_pushes`) for a 10,000-member
//!   conversation whose members are spread over two edges, and for a batch of
//!   500 one-to-one messages.
//!
//! Run: `cargo bench -p chatpipe-benches --bench hot_paths`.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use chatpipe_core::frames::{
    ControlFrame, Deliverable, FrameLimits, MessageView, decode_client_frame,
};
use chatpipe_core::records::{
    EdgeRecord, EdgeState, MessageRecord, RouteRecord, SCHEMA_VERSION, SessionKey,
};
use chatpipe_core::{ClientMsgId, ConversationId, EdgeId, MessageId, UserId};
use chatpipe_fanout::RouteTable;
use chatpipe_fanout::plan::{Delivery, MemberSet, plan_pushes};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BODY: &str =
    "see you at the standup tomorrow, I'll bring the deploy checklist and the numbers";

fn view(id: u64) -> MessageView {
    MessageView {
        message_id: MessageId::from_u64(id),
        conversation_id: ConversationId::parse("c-4f1d2b8e9a0c4d7f").expect("valid id"),
        sender_id: UserId::parse("user-00042").expect("valid id"),
        client_msg_id: ClientMsgId::parse("w0-123456").expect("valid id"),
        body: BODY.to_owned(),
        ts: 1_764_275_000_000,
        reply_to: None,
        mentions: Vec::new(),
    }
}

fn frames(criterion: &mut Criterion) {
    let limits = FrameLimits::default();
    let send = format!(
        r#"{{"op":"send","conversation_id":"c-4f1d2b8e9a0c4d7f","client_msg_id":"w0-123456","body":"{BODY}"}}"#
    );
    let mut group = criterion.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_client_frame/send", |bencher| {
        bencher.iter(|| decode_client_frame(black_box(&send), &limits).expect("valid frame"))
    });
    let ack_seq = r#"{"op":"ack_seq","seq":123456}"#;
    group.bench_function("decode_client_frame/ack_seq", |bencher| {
        bencher.iter(|| decode_client_frame(black_box(ack_seq), &limits).expect("valid frame"))
    });
    let deliverable = Deliverable::message(&view(123_456_789_012));
    group.bench_function("Deliverable::encode_with_seq/message", |bencher| {
        bencher.iter(|| black_box(&deliverable).encode_with_seq(black_box(4242)))
    });
    group.bench_function("Deliverable::message (once per message)", |bencher| {
        let message = view(123_456_789_012);
        bencher.iter(|| Deliverable::message(black_box(&message)))
    });
    let ack = ControlFrame::Ack {
        client_msg_id: Some(ClientMsgId::parse("w0-123456").expect("valid id")),
        message_id: MessageId::from_u64(123_456_789_012),
        ts: 1_764_275_000_000,
    };
    group.bench_function("ControlFrame::encode/ack", |bencher| {
        bencher.iter(|| black_box(&ack).encode())
    });
    group.finish();
}

fn records(criterion: &mut Criterion) {
    let record = MessageRecord {
        schema_version: SCHEMA_VERSION,
        message_id: MessageId::from_u64(123_456_789_012),
        conversation_id: ConversationId::parse("c-4f1d2b8e9a0c4d7f").expect("valid id"),
        sender_id: UserId::parse("user-00042").expect("valid id"),
        client_msg_id: ClientMsgId::parse("w0-123456").expect("valid id"),
        body: BODY.to_owned(),
        ts: 1_764_275_000_000,
        edge_id: EdgeId::parse("edge-1").expect("valid id"),
        resend: false,
        reply_to: None,
        mentions: Vec::new(),
    };
    let bytes = serde_json::to_vec(&record).expect("serializes");
    let mut group = criterion.benchmark_group("MessageRecord");
    group.throughput(Throughput::Elements(1));
    group.bench_function("serde_json::to_vec", |bencher| {
        bencher.iter(|| serde_json::to_vec(black_box(&record)).expect("serializes"))
    });
    group.bench_function("serde_json::from_slice", |bencher| {
        bencher.iter(|| serde_json::from_slice::<MessageRecord>(black_box(&bytes)).expect("parses"))
    });
    group.finish();
}

fn apply_json<T: serde::Serialize>(table: &mut RouteTable, key: &SessionKey, value: &T) {
    let key = key.encode();
    let payload = serde_json::to_vec(value).expect("serializes");
    table
        .apply(Some(key.as_bytes()), Some(&payload))
        .expect("valid record");
}

/// `users` spread round-robin over `edges` live edges.
fn route_table(users: &[UserId], edges: usize) -> RouteTable {
    let mut table = RouteTable::new(0);
    let edge_ids: Vec<EdgeId> = (0..edges)
        .map(|index| EdgeId::parse(format!("edge-{index}")).expect("valid id"))
        .collect();
    for (index, edge_id) in edge_ids.iter().enumerate() {
        let record = EdgeRecord {
            schema_version: SCHEMA_VERSION,
            edge_id: edge_id.clone(),
            push_addr: format!("127.0.0.1:{}", 8180 + index),
            state: EdgeState::Serving,
            lease_expires_ms: u64::MAX / 2,
            worker_id: None,
            ts: 0,
        };
        apply_json(&mut table, &SessionKey::Edge(edge_id.clone()), &record);
    }
    for (index, user) in users.iter().enumerate() {
        let edge_id = &edge_ids[index % edges];
        let record = RouteRecord {
            schema_version: SCHEMA_VERSION,
            user_id: user.clone(),
            edge_id: edge_id.clone(),
            sessions: 1,
            ts: 0,
        };
        apply_json(
            &mut table,
            &SessionKey::Route(user.clone(), edge_id.clone()),
            &record,
        );
    }
    table
}

fn delivery(id: u64, recipients: Arc<[UserId]>) -> Delivery {
    let message = view(id);
    Delivery {
        deliverable: Deliverable::message(&message),
        conversation_id: Some(message.conversation_id.clone()),
        message_id: Some(message.message_id),
        recipients,
        except: None,
        member_set: None,
    }
}

fn fanout(criterion: &mut Criterion) {
    let members: Vec<UserId> = (0..10_000)
        .map(|index| UserId::parse(format!("member-{index:05}")).expect("valid id"))
        .collect();
    let table = route_table(&members, 2);
    let large = [delivery(1, members.clone().into())];
    let suspects = HashSet::new();
    let mut group = criterion.benchmark_group("fanout::plan_pushes");
    group.throughput(Throughput::Elements(members.len() as u64));
    group.bench_function("1 message x 10,000 members over 2 edges", |bencher| {
        bencher.iter(|| {
            let plan = plan_pushes(black_box(&large), &table, 1, &suspects);
            debug_assert_eq!(plan.batches.len(), 2);
            plan
        })
    });
    // The same message as a member set (groups above
    // `member_set_min_members`): the items carry no recipient ids.
    let mut as_set = delivery(1, members.clone().into());
    as_set.member_set = Some(MemberSet::new(members.clone().into()));
    let large_set = [as_set];
    group.bench_function(
        "1 message x 10,000 members over 2 edges, member set",
        |bencher| bencher.iter(|| plan_pushes(black_box(&large_set), &table, 1, &suspects)),
    );
    // A batch as a busy partition delivers it: 500 one-to-one messages.
    let pairs: Vec<Delivery> = (0..500)
        .map(|index| {
            let pair: Arc<[UserId]> =
                vec![members[2 * index].clone(), members[2 * index + 1].clone()].into();
            delivery(index as u64 + 1, pair)
        })
        .collect();
    group.throughput(Throughput::Elements(pairs.len() as u64));
    group.bench_function("500 one-to-one messages over 2 edges", |bencher| {
        bencher.iter(|| plan_pushes(black_box(&pairs), &table, 1, &suspects))
    });
    group.finish();
}

criterion_group!(hot_paths, frames, records, fanout);
criterion_main!(hot_paths);
