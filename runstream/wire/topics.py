"""The one registry of Kafka topics: what each carries, how it is keyed and partitioned, how to decode it.

Names come from the config (``kafka.<kind>_topic``) so tests and deployments can rename them; everything
else (partition counts, the sink's subscriptions, the processors' outputs, topic creation) reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from runstream.v1.ingest_pb2 import Alert, AuditRecord, Batch, ControlEvent, FleetWindows, Rollups
from runstream.wire import encoding
from runstream.wire.config import RunstreamConfig


@dataclass(frozen=True)
class Topic:
    kind: str                 # "events", "rollups", ...: the config key is kafka.<kind>_topic
    message: type[Message] | None  # the protobuf value of every record; None: the bytes as they came
    key: str                  # what the record key is (per-key order holds)
    single_partition: bool = False  # one total order (governance), whatever kafka.partitions says
    stored: bool = True       # the sink reads it into ClickHouse
    keep_forever: bool = False  # no time-based deletion: the records anchor what storage must hold

    def name(self, config: RunstreamConfig) -> str:
        return str(getattr(config.kafka, f"{self.kind}_topic"))

    def partitions(self, config: RunstreamConfig) -> int:
        return 1 if self.single_partition else config.kafka.partitions

    def decode(self, value: bytes, headers: Any = ()) -> Any:
        """The record's message (events: the list of its batches, see runstream.wire.encoding); raises on a record
        this topic cannot hold."""
        if self.message is None:
            return value
        if self.message is Batch:
            return encoding.decode(value, headers)
        return self.message.FromString(value)


EVENTS = Topic("events", Batch, "run id")
ROLLUPS = Topic("rollups", Rollups, "run id")
ALERTS = Topic("alerts", Alert, "run id")
FLEET = Topic("fleet", FleetWindows, "project")
CONTROL = Topic("control", ControlEvent, "object id", single_partition=True, keep_forever=True)
AUDIT = Topic("audit", AuditRecord, "project", keep_forever=True)
# Records the sink could not store, as they were, with headers naming where they came from and why.
DEADLETTER = Topic("deadletter", None, "as the source record", stored=False)
TOPICS: tuple[Topic, ...] = (EVENTS, ROLLUPS, ALERTS, FLEET, CONTROL, AUDIT, DEADLETTER)


def by_name(config: RunstreamConfig) -> dict[str, Topic]:
    """Topic name (as configured) -> its registry entry, for the topics the sink stores."""
    return {t.name(config): t for t in TOPICS if t.stored}


def topics(config: RunstreamConfig) -> dict[str, int]:
    """Every topic runstream owns, with its partition count."""
    return {t.name(config): t.partitions(config) for t in TOPICS}
