//! `PartitionedSendDedup` against the real Kafka: a consumer that starts in
//! the middle of a partition (a restart, a rebalance) or meets a gap
//! rebuilds its window by replaying the partition, and then judges every
//! record exactly as a consumer that read the partition from the start.

use std::time::Duration;

use chatpipe_core::dedup::SendVerdict;
use chatpipe_core::ids::MessageIdGenerator;
use chatpipe_core::records::MessageRecord;
use chatpipe_core::time::now_unix_ms;
use chatpipe_core::{ConversationId, UserId};
use chatpipe_kafka::{ChatProducer, PartitionedSendDedup, SendDedupMetrics, SendDedupSettings};
use chatpipe_testkit::isolated_topics;

/// Records of one conversation: 12 sends, each sent 1 to 3 times (retries
/// interleaved with later sends, some marked), produced in that order.
async fn produce_attempts(producer: &ChatProducer, topic: &str) -> Vec<(i32, i64, MessageRecord)> {
    let conversation = ConversationId::parse("c-dedup").unwrap();
    let sender = UserId::parse("alice").unwrap();
    let mut ids = MessageIdGenerator::new(7);
    let mut attempts: Vec<(usize, usize)> = Vec::new();
    for send in 0..12usize {
        attempts.push((send, 0));
        if send >= 2 && send % 3 != 0 {
            attempts.push((send - 2, 1));
        }
        if send >= 4 && send % 4 == 0 {
            attempts.push((send - 4, 2));
        }
    }
    let mut produced = Vec::new();
    for (send, attempt) in attempts {
        let ts = now_unix_ms();
        let record = MessageRecord::builder(ids.next_id(ts), &conversation)
            .sender(&sender)
            .client_msg_id(format!("m-{send}"))
            .body(format!("send {send} attempt {attempt}"))
            .ts(ts)
            .edge("edge-1")
            .resend(attempt > 0 && send % 2 == 0)
            .build();
        let position = producer
            .send_json(
                topic,
                conversation.as_str(),
                &record,
                Duration::from_secs(10),
            )
            .await
            .expect("kafka accepts the record");
        produced.push((position.partition, position.offset, record));
    }
    produced
}

async fn judge_all(
    dedup: &mut PartitionedSendDedup,
    records: &[(i32, i64, MessageRecord)],
) -> Vec<SendVerdict> {
    let mut verdicts = Vec::new();
    for (partition, offset, record) in records {
        verdicts.push(
            dedup
                .judge(*partition, *offset, record)
                .await
                .expect("replay succeeds"),
        );
    }
    verdicts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_starting_anywhere_judges_like_one_that_read_everything() {
    let isolated = isolated_topics("send-dedup", 1).await;
    let topic = isolated.topics.messages.clone();
    let producer = ChatProducer::new(&isolated.kafka, 0).unwrap();
    let records = produce_attempts(&producer, &topic).await;
    let new_dedup = || {
        PartitionedSendDedup::new(
            &isolated.kafka,
            topic.clone(),
            SendDedupSettings::default(),
            SendDedupMetrics::default(),
        )
    };

    let mut from_start = new_dedup();
    let reference = judge_all(&mut from_start, &records).await;
    let sends = 12;
    let firsts = reference
        .iter()
        .filter(|verdict| !verdict.is_duplicate())
        .count();
    assert_eq!(firsts, sends, "one first attempt per send: {reference:?}");
    assert_eq!(
        from_start.metrics().duplicates.get() as usize,
        records.len() - sends
    );
    // Every duplicate names its send's first attempt.
    for ((_, _, record), verdict) in records.iter().zip(&reference) {
        if let SendVerdict::Duplicate(original) = verdict {
            let (_, _, first) = records
                .iter()
                .find(|(_, _, other)| other.client_msg_id == record.client_msg_id)
                .unwrap();
            assert_eq!(original.message_id, first.message_id);
            assert_eq!(original.ts, first.ts);
        }
    }
    // Judging a batch again (the consumer loop retries it) changes nothing
    // and counts nothing twice.
    let again = judge_all(&mut from_start, &records[5..]).await;
    assert_eq!(again, reference[5..]);
    assert_eq!(
        from_start.metrics().duplicates.get() as usize,
        records.len() - sends
    );
    assert_eq!(
        from_start.metrics().replays.get(),
        1,
        "only the first record replayed"
    );

    // A new member of the group starts in the middle of the partition.
    for start in [1, 4, 9, records.len() - 1] {
        let mut restarted = new_dedup();
        let verdicts = judge_all(&mut restarted, &records[start..]).await;
        assert_eq!(verdicts, reference[start..], "starting at record {start}");
        assert_eq!(restarted.metrics().replays.get(), 1);
        assert_eq!(restarted.metrics().replayed_records.get() as usize, start);
    }

    // A gap (records handled elsewhere meanwhile) rebuilds the window.
    let mut gapped = new_dedup();
    let mut verdicts = judge_all(&mut gapped, &records[..3]).await;
    verdicts.extend(judge_all(&mut gapped, &records[8..]).await);
    let mut expected = reference[..3].to_vec();
    expected.extend_from_slice(&reference[8..]);
    assert_eq!(verdicts, expected);
    assert_eq!(gapped.metrics().replays.get(), 2);
}
