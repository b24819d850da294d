"""Governance on Kafka: publishing control events with their audit records, reading the state back, and
following the control topic (ingest replicas). The state model itself is runstream.wire.governance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf import json_format

from runstream.server.kafka import client_args
from runstream.v1.ingest_pb2 import ControlEvent
from runstream.wire import audit
from runstream.wire.config import RunstreamConfig
from runstream.wire.governance import audit_projects, object_id

log = logging.getLogger("runstream.governance")


async def publish(config: RunstreamConfig, ev: ControlEvent, *, before: object = None,
                  producer: AIOKafkaProducer | None = None) -> None:
    """The control event, and its audit record in every project it touches (``before``: the state it changes).
    ``producer``: a started idempotent producer to send with (a role that publishes often); else one for this call."""
    key = object_id(ev).encode()
    body = getattr(ev, ev.WhichOneof("body") or "project")
    def plain(msg: Any) -> dict[str, Any]:
        d: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        d.pop("sha256", None)  # the trail names tokens by id; their hashes stay in governance state only
        return d
    after = plain(body)
    before_dict = plain(before) if before is not None else None
    own = producer is None
    if producer is None:
        producer = AIOKafkaProducer(**client_args(config), acks="all", enable_idempotence=True)
        await producer.start()
    try:
        await producer.send_and_wait(config.kafka.control_topic, ev.SerializeToString(), key=key)
        for project in audit_projects(ev):
            rec = audit.record(project, ev.actor, ev.action, object_id(ev), after=after, before=before_dict, at_ms=ev.at_ms)
            await producer.send_and_wait(config.kafka.audit_topic, rec.SerializeToString(), key=project.encode())
    finally:
        if own:
            await producer.stop()


class Follower:
    """Follows the control topic in the background, oldest first: ``on_event`` gets every event (ingest's token
    state), or ``on_record`` every record's bytes and offset (the sinks, which each apply every event)."""

    def __init__(self, config: RunstreamConfig, on_event: Callable[[ControlEvent], None] | None = None, *,
                 on_record: Callable[[bytes, int], Awaitable[None]] | None = None) -> None:
        self.config = config
        self.on_event = on_event
        self.on_record = on_record
        self._task: asyncio.Task[None] | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.caught_up = asyncio.Event()  # set once every event published before start() was applied
        self._end = 0

    async def start(self) -> None:
        tp = TopicPartition(self.config.kafka.control_topic, 0)
        # A short retry backoff: the first offsets request always waits one for the topic's metadata.
        self.consumer = AIOKafkaConsumer(**client_args(self.config), enable_auto_commit=False,
                                         fetch_max_wait_ms=200, retry_backoff_ms=50)
        await self.consumer.start()
        # The end before the assignment: a broker answers a connection's requests in order, so asked after the
        # seek it would wait out the first fetch's long poll (fetch_max_wait_ms) behind it.
        self._end = (await self.consumer.end_offsets([tp]))[tp]
        self.consumer.assign([tp])
        await self.consumer.seek_to_beginning(tp)
        if self._end == 0:
            self.caught_up.set()
        self._task = asyncio.create_task(self._run(), name="control-follower")

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                for m in msgs:
                    try:
                        if self.on_record is not None:
                            await self.on_record(m.value, m.offset)
                        elif self.on_event is not None:
                            self.on_event(ControlEvent.FromString(m.value))
                    except Exception as exc:  # a bad control record must not stop authentication or storage
                        log.error("Skipping an unreadable control record at offset %d: %s", m.offset, exc)
                    if m.offset + 1 >= self._end:
                        self.caught_up.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


async def audit_offsets(config: RunstreamConfig, project: str) -> list[tuple[int, int]]:
    """Where the project's records sit in the audit topic, (partition, offset), read from the start to the end: the
    anchor `runstream audit verify` holds the stored trail to."""
    consumer = AIOKafkaConsumer(**client_args(config), enable_auto_commit=False)
    await consumer.start()
    try:
        numbers = consumer.partitions_for_topic(config.kafka.audit_topic) or await _partitions(consumer, config.kafka.audit_topic)
        parts = [TopicPartition(config.kafka.audit_topic, p) for p in sorted(numbers)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        key = project.encode()
        out: list[tuple[int, int]] = []
        async def unread() -> bool:
            for tp in parts:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False
        while await unread():
            for tp, msgs in (await consumer.getmany(*parts, timeout_ms=1000)).items():
                out.extend((tp.partition, m.offset) for m in msgs if m.key == key and m.offset < ends[tp])
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()
