"""Tests of the analytics example: the pure aggregation, then a run against
the real Kafka (``CHATPIPE_KAFKA_BROKERS``, default 127.0.0.1:9092) on
topics of its own. Fails, never skips, when Kafka is unreachable."""

from __future__ import annotations

import csv
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import chatpipe_analytics as analytics  # noqa: E402

BROKERS = os.environ.get("CHATPIPE_KAFKA_BROKERS") or "127.0.0.1:9092"
MINUTE = 1_767_225_600_000  # 2026-01-01T00:00Z


def message(conversation: str, message_id: str, sender: str, client_msg_id: str, ts: int, **extra):
    return {
        "schema_version": 1, "message_id": message_id, "conversation_id": conversation, "sender_id": sender,
        "client_msg_id": client_msg_id, "body": "hello", "ts": ts, "edge_id": "edge-1", **extra,
    }


def event(kind: str, user: str, ts: int, **extra):
    return {"schema_version": 1, "type": kind, "user_id": user, "ts": ts, **extra}


@pytest.fixture(scope="module")
def validators():
    return analytics.load_validators(analytics.REPO_SCHEMAS)


def feed(aggregates, topic, records, validators, partition=0):
    for offset, record in enumerate(records):
        value = record if isinstance(record, bytes) else json.dumps(record).encode()
        aggregates.add(topic, partition, offset, value, validators)


def test_counts_messages_per_conversation_per_minute_once_each(validators):
    aggregates = analytics.Aggregates()
    feed(aggregates, analytics.MESSAGES_TOPIC, [
        message("c1", "101", "ann", "k1", MINUTE + 1_000),
        message("c1", "101", "ann", "k1", MINUTE + 1_000),  # re-produced: same id
        message("c1", "102", "ann", "k1", MINUTE + 5_000, resend=True),  # a retry: same key
        message("c1", "103", "bob", "k1", MINUTE + 6_000),  # another sender's k1: a message
        message("c1", "104", "ann", "k2", MINUTE + 61_000),
        message("c2", "105", "cid", "k1", MINUTE + 2_000),
        # The same key again after the window: a new message.
        message("c1", "106", "ann", "k1", MINUTE + analytics.DEDUP_WINDOW_MS + 2_000),
    ], validators)
    assert aggregates.duplicates == 2
    assert aggregates.message_rows() == [
        ("c1", "2026-01-01T00:00Z", 2),
        ("c1", "2026-01-01T00:01Z", 1),
        ("c1", "2026-01-01T00:10Z", 1),
        ("c2", "2026-01-01T00:00Z", 1),
    ]
    assert aggregates.active_rows() == [("2026-01-01T00:00Z", 3), ("2026-01-01T00:01Z", 1), ("2026-01-01T00:10Z", 1)]


def test_changes_to_messages_are_counted_apart_never_as_messages(validators):
    aggregates = analytics.Aggregates()
    change = {"schema_version": 2, "message_id": "101", "conversation_id": "c1", "actor_id": "ann",
              "ts": MINUTE + 2_000, "edge_id": "edge-1"}
    feed(aggregates, analytics.MESSAGES_TOPIC, [
        message("c1", "101", "ann", "k1", MINUTE + 1_000),
        {**change, "kind": "edit", "body": "hello again"},
        {**change, "kind": "reaction_add", "reaction": "+1"},
        {**change, "kind": "delete"},
    ], validators)
    assert aggregates.invalid == []
    assert aggregates.message_rows() == [("c1", "2026-01-01T00:00Z", 1)]
    assert sorted(aggregates.changes.items()) == [
        (("c1", "2026-01-01T00:00Z", "delete"), 1),
        (("c1", "2026-01-01T00:00Z", "edit"), 1),
        (("c1", "2026-01-01T00:00Z", "reaction_add"), 1),
    ]


def test_events_count_as_activity_but_going_offline_does_not(validators):
    aggregates = analytics.Aggregates()
    feed(aggregates, analytics.EVENTS_TOPIC, [
        event("typing", "ann", MINUTE, conversation_id="c1"),
        event("read", "bob", MINUTE, conversation_id="c1", message_id="101"),
        event("presence", "cid", MINUTE, status="online"),
        event("presence", "dan", MINUTE, status="offline"),
    ], validators)
    assert aggregates.active_rows() == [("2026-01-01T00:00Z", 3)]


def test_records_that_do_not_match_the_schemas_are_reported_not_counted(validators):
    aggregates = analytics.Aggregates()
    broken = message("c1", "101", "ann", "k1", MINUTE)
    del broken["body"]
    feed(aggregates, analytics.MESSAGES_TOPIC, [
        broken,
        message("c1", "0123", "ann", "k2", MINUTE),  # ids have no leading zero
        b"{not json",
    ], validators)
    feed(aggregates, analytics.EVENTS_TOPIC, [event("typing", "ann", MINUTE)], validators)  # no conversation_id
    assert aggregates.messages == {}
    assert [(topic, offset) for topic, _, offset, _ in aggregates.invalid] == [
        ("chat.messages", 0), ("chat.messages", 1), ("chat.messages", 2), ("chat.events", 0)]
    assert "body" in aggregates.invalid[0][3]


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_against_the_real_kafka(tmp_path):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"ta{uuid.uuid4().hex[:10]}."
    admin = AdminClient({"bootstrap.servers": BROKERS})
    topics = [NewTopic(prefix + analytics.MESSAGES_TOPIC, num_partitions=3, replication_factor=1),
              NewTopic(prefix + analytics.EVENTS_TOPIC, num_partitions=1, replication_factor=1)]
    for future in admin.create_topics(topics, operation_timeout=30).values():
        future.result(timeout=60)  # raises when Kafka is unreachable: the test fails
    try:
        producer = Producer({"bootstrap.servers": BROKERS, "enable.idempotence": True, "acks": "all"})
        messages = [
            message("conv-a", "1001", "ann", "k1", MINUTE + 1_000),
            message("conv-a", "1002", "ann", "k1", MINUTE + 2_000, resend=True),
            message("conv-a", "1003", "bob", "k2", MINUTE + 3_000),
            message("conv-b", "1004", "cid", "k1", MINUTE + 70_000),
        ]
        for record in messages:
            producer.produce(prefix + analytics.MESSAGES_TOPIC, key=record["conversation_id"], value=json.dumps(record))
        producer.produce(prefix + analytics.MESSAGES_TOPIC, key="conv-a", value=b'{"schema_version":1}')
        producer.produce(prefix + analytics.EVENTS_TOPIC, key="conv-b",
                         value=json.dumps(event("typing", "dan", MINUTE + 75_000, conversation_id="conv-b")))
        assert producer.flush(30) == 0

        group = f"{prefix}analytics"
        out = tmp_path / "first"
        result = analytics.run(BROKERS, group, prefix, out, idle_seconds=3, max_seconds=120)
        assert result.duplicates == 1
        assert read_csv(out / "messages_per_minute.csv") == [
            ["conversation_id", "minute", "messages"],
            ["conv-a", "2026-01-01T00:00Z", "2"],
            ["conv-b", "2026-01-01T00:01Z", "1"],
        ]
        assert read_csv(out / "active_users.csv") == [
            ["minute", "active_users"], ["2026-01-01T00:00Z", "2"], ["2026-01-01T00:01Z", "2"]]
        invalid = read_csv(out / "invalid_records.csv")
        assert len(invalid) == 2 and invalid[1][0] == "chat.messages"

        # The offsets were committed: the same group starts after them.
        again = analytics.run(BROKERS, group, prefix, tmp_path / "second", idle_seconds=2, max_seconds=60,
                              first_wait_seconds=8)
        assert again.messages == {} and again.invalid == []
    finally:
        for future in admin.delete_topics([topic.topic for topic in topics], operation_timeout=30).values():
            future.result(timeout=60)
