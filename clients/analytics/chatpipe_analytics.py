"""chatpipe analytics example: read the chat topics, validate, aggregate, write CSV.

How an analytics team taps chatpipe: with a consumer group of its own on
``chat.messages`` and ``chat.events`` (never one of chatpipe's groups), so its
offsets and pace are its own and chatpipe does not notice it. Every record is
one JSON document described by the published JSON Schemas
(``schemas/kafka/v1/message.json``, ``v2/message-change.json`` and
``v1/event.json``); this program validates
each record against them and counts the ones that do not match instead of
trusting them.

It computes:

* ``messages_per_minute.csv``: messages per conversation per minute (UTC),
  counted once each, applying chatpipe's send de-duplication rule (a client
  retry is another record with the same (conversation, sender,
  client_msg_id) key; see ``schemas/README.md``, "Send de-duplication");
* ``active_users.csv``: per minute, how many distinct users sent a message
  or produced an event (typing, read receipt, coming online);
* ``invalid_records.csv``: records that failed validation, with where they are.

Offsets are committed only after the CSV files are written (at-least-once:
a crash before the commit reads the same records again next time).

Run ``python chatpipe_analytics.py --help``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator

REPO_SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas" / "kafka"
MESSAGES_TOPIC = "chat.messages"
EVENTS_TOPIC = "chat.events"
# chat.messages carries messages (schema_version 1) and, after them, the
# changes to them (schema_version 2: edit, delete, reactions), which are
# never counted as messages.
MESSAGE_CHANGES = "chat.messages/v2"
# The de-duplication window of the send path (schemas/README.md): a record
# whose key had a first attempt at most this much earlier is a retry.
DEDUP_WINDOW_MS = 10 * 60 * 1000


def minute_of(ts_ms: int) -> str:
    """The UTC minute of a Unix-ms timestamp, as ISO 8601 (``2026-01-01T00:00Z``)."""
    return datetime.fromtimestamp(ts_ms // 60_000 * 60, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def load_validators(schema_dir: Path) -> dict[str, Draft202012Validator]:
    """The validators of message, change and event records, from the published
    schemas (``schema_dir`` is ``schemas/kafka`` of the repository)."""
    validators = {}
    for kind, file in (
        (MESSAGES_TOPIC, "v1/message.json"),
        (MESSAGE_CHANGES, "v2/message-change.json"),
        (EVENTS_TOPIC, "v1/event.json"),
    ):
        schema = json.loads((schema_dir / file).read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(schema)
        validators[kind] = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return validators


@dataclass
class Aggregates:
    """What the records add up to. Pure: fed record by record, no I/O."""

    messages: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    active: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    invalid: list[tuple[str, int, int, str]] = field(default_factory=list)
    duplicates: int = 0
    # Changes to messages per (conversation, minute, kind): edits, deletes, reactions.
    changes: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    # Per partition: de-duplication key -> (message_id, ts) of its first attempt.
    _first_attempts: dict[tuple[str, int], dict[tuple[str, str, str], tuple[str, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def add(self, topic: str, partition: int, offset: int, value: bytes | None,
            validators: dict[str, Draft202012Validator]) -> None:
        """One record of ``chat.messages`` or ``chat.events`` (topic without prefix)."""
        try:
            record = json.loads(value or b"")
        except ValueError as error:
            self.invalid.append((topic, partition, offset, f"not JSON: {error}"))
            return
        kind = topic
        if topic == MESSAGES_TOPIC and isinstance(record, dict) and record.get("schema_version") == 2:
            kind = MESSAGE_CHANGES
        errors = sorted(validators[kind].iter_errors(record), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "(record)"
            self.invalid.append((topic, partition, offset, f"{where}: {first.message}"))
            return
        if kind == MESSAGE_CHANGES:
            self.changes[(record["conversation_id"], minute_of(record["ts"]), record["kind"])] += 1
        elif topic == MESSAGES_TOPIC:
            self.add_message(record, partition)
        else:
            self.add_event(record)

    def add_message(self, record: dict[str, Any], partition: int) -> None:
        key = (record["conversation_id"], record["sender_id"], record["client_msg_id"])
        firsts = self._first_attempts[(MESSAGES_TOPIC, partition)]
        first = firsts.get(key)
        if first is not None:
            first_id, first_ts = first
            # The same message re-produced, or a retry within the window.
            if first_id == record["message_id"] or first_ts >= record["ts"] - DEDUP_WINDOW_MS:
                self.duplicates += 1
                return
        firsts[key] = (record["message_id"], record["ts"])
        minute = minute_of(record["ts"])
        self.messages[(record["conversation_id"], minute)] += 1
        self.active[minute].add(record["sender_id"])

    def add_event(self, record: dict[str, Any]) -> None:
        kind = record["type"]
        if kind == "presence" and record["status"] != "online":
            return  # going offline is not activity
        if kind in ("typing", "read", "presence"):
            self.active[minute_of(record["ts"])].add(record["user_id"])

    def message_rows(self) -> list[tuple[str, str, int]]:
        return sorted((conversation, minute, count) for (conversation, minute), count in self.messages.items())

    def active_rows(self) -> list[tuple[str, int]]:
        return sorted((minute, len(users)) for minute, users in self.active.items())

    def write_csv(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write(out_dir / "messages_per_minute.csv", ("conversation_id", "minute", "messages"), self.message_rows())
        write(out_dir / "active_users.csv", ("minute", "active_users"), self.active_rows())
        write(out_dir / "message_changes_per_minute.csv", ("conversation_id", "minute", "kind", "changes"),
              sorted((c, m, k, n) for (c, m, k), n in self.changes.items()))
        write(out_dir / "invalid_records.csv", ("topic", "partition", "offset", "error"), self.invalid)


def write(path: Path, header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> None:
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    temporary.replace(path)


def run(brokers: str, group: str, topic_prefix: str, out_dir: Path, schema_dir: Path = REPO_SCHEMAS,
        idle_seconds: float = 5.0, max_seconds: float = 300.0, first_wait_seconds: float = 20.0) -> Aggregates:
    """Reads both topics from the group's committed offsets (the beginning the
    first time) until nothing came for ``idle_seconds`` (``first_wait_seconds``
    before the first record: joining the group takes a rebalance), writes the
    CSV files, then commits."""
    from confluent_kafka import Consumer, KafkaError

    validators = load_validators(schema_dir)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": group,
        "client.id": f"{group}-analytics",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    })
    topics = {topic_prefix + MESSAGES_TOPIC: MESSAGES_TOPIC, topic_prefix + EVENTS_TOPIC: EVENTS_TOPIC}
    consumer.subscribe(list(topics))
    aggregates = Aggregates()
    started = last_record = time.monotonic()
    seen_any = False
    try:
        while True:
            now = time.monotonic()
            # The first assignment takes a rebalance: wait longer for the first record.
            idle_limit = idle_seconds if seen_any else max(idle_seconds, first_wait_seconds)
            if now - last_record > idle_limit or now - started > max_seconds:
                break
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"kafka: {message.error()}")
            seen_any = True
            last_record = time.monotonic()
            aggregates.add(topics[message.topic()], message.partition(), message.offset(), message.value(), validators)
        aggregates.write_csv(out_dir)
        if seen_any:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return aggregates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--group", default="chatpipe-analytics", help="this program's own consumer group")
    parser.add_argument("--topic-prefix", default="", help="prefix of the topic names (CHATPIPE_TOPIC_PREFIX)")
    parser.add_argument("--out", type=Path, default=Path("analytics-out"), help="directory of the CSV files")
    parser.add_argument("--schemas", type=Path, default=REPO_SCHEMAS, help="schemas/kafka of the repository")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="stop after this long without a record")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop after this long in any case")
    args = parser.parse_args(argv)
    result = run(args.brokers, args.group, args.topic_prefix, args.out, args.schemas, args.idle_seconds, args.max_seconds)
    total = sum(result.messages.values())
    print(f"{total} messages in {len({c for c, _ in result.messages})} conversations, "
          f"{result.duplicates} retries dropped, {len(result.invalid)} invalid records; CSV in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
