"""Governance state (projects, tokens) on the control topic.

Every change is a ControlEvent on ``runstream.control`` (one partition, so one order; keyed by the
object it changes). Ingest replicas read the topic from the start and follow it, so a revoked token
stops working everywhere within about a second; the sink stores every event in ClickHouse
(``governance_events``) as its history. Token secrets are shown once and never stored: only sha256.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from runstream.config import RunstreamConfig
from runstream.errors import ValidationError
from runstream.v1.ingest_pb2 import ControlEvent, ProjectRecord, TokenRecord

log = logging.getLogger("runstream.governance")
SCOPES = ("ingest", "read", "admin")
DURATION_RE = re.compile(r"^(\d+)([smhd])$")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> int:
    """'30d', '12h', '15m', '90s' -> milliseconds."""
    m = DURATION_RE.match(text.strip())
    if not m:
        raise ValidationError("expires", f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000


def new_token(name: str, projects: list[str], scopes: list[str], expires_ms: int = 0) -> tuple[str, TokenRecord]:
    """A fresh token: the secret string (show it once) and the record to publish (its hash only)."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValidationError("scope", f"{bad or scopes} not in {SCOPES}")
    token_id = secrets.token_hex(6)
    secret = f"rs_{token_id}_{secrets.token_urlsafe(24)}"
    now = int(time.time() * 1000)
    return secret, TokenRecord(token_id=token_id, name=name, projects=projects, scopes=scopes, sha256=token_sha256(secret),
                               created_ms=now, expires_ms=now + expires_ms if expires_ms else 0)


def event(action: str, **body: object) -> ControlEvent:
    try:
        actor = getpass.getuser()
    except Exception:
        actor = "unknown"
    return ControlEvent(actor=actor, at_ms=int(time.time() * 1000), action=action, **body)  # type: ignore[arg-type]


def object_id(ev: ControlEvent) -> str:
    kind = ev.WhichOneof("body")
    return {"project": lambda: ev.project.name, "token": lambda: ev.token.token_id,
            "run_delete": lambda: ev.run_delete.run_id, "retention": lambda: ev.retention.project}[kind]()  # type: ignore[index]


@dataclass
class State:
    projects: dict[str, ProjectRecord]
    tokens: dict[str, TokenRecord]  # by token id

    def apply(self, ev: ControlEvent) -> None:
        kind = ev.WhichOneof("body")
        if kind == "project":
            self.projects[ev.project.name] = ev.project
        elif kind == "token":
            self.tokens[ev.token.token_id] = ev.token


def audit_projects(ev: ControlEvent) -> list[str]:
    """Whose audit trail records this event ('*' for tokens that cover every project)."""
    kind = ev.WhichOneof("body")
    if kind == "token":
        return list(ev.token.projects) or ["*"]
    return [{"project": ev.project.name, "run_delete": ev.run_delete.project,
             "retention": ev.retention.project}[kind]]  # type: ignore[index]


async def publish(config: RunstreamConfig, ev: ControlEvent, *, before: object = None) -> None:
    """The control event, and its audit record in every project it touches (``before``: the state it changes)."""
    from google.protobuf import json_format

    from runstream import audit
    key = object_id(ev).encode()
    body = getattr(ev, ev.WhichOneof("body") or "project")
    def plain(msg: object) -> dict:
        d = json_format.MessageToDict(msg, preserving_proto_field_name=True)  # type: ignore[arg-type]
        d.pop("sha256", None)  # the trail names tokens by id; their hashes stay in governance state only
        return d
    after = plain(body)
    before_dict = plain(before) if before is not None else None
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(config.kafka.control_topic, ev.SerializeToString(), key=key)
        for project in audit_projects(ev):
            rec = audit.record(project, ev.actor, ev.action, object_id(ev), after=after, before=before_dict, at_ms=ev.at_ms)
            await producer.send_and_wait(config.kafka.audit_topic, rec.SerializeToString(), key=project.encode())
    finally:
        await producer.stop()


async def read_state(config: RunstreamConfig) -> State:
    """The current state: the control topic read from the start to its end."""
    state = State({}, {})
    tp = TopicPartition(config.kafka.control_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            for msgs in (await consumer.getmany(tp, timeout_ms=1000)).values():
                for m in msgs:
                    state.apply(ControlEvent.FromString(m.value))
    finally:
        await consumer.stop()
    return state


class Follower:
    """Follows the control topic in the background and calls ``on_event`` for every event, oldest first."""

    def __init__(self, config: RunstreamConfig, on_event) -> None:
        self.config = config
        self.on_event = on_event
        self._task: asyncio.Task | None = None
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        tp = TopicPartition(self.config.kafka.control_topic, 0)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.config.kafka.bootstrap, enable_auto_commit=False,
                                         fetch_max_wait_ms=200)
        await self.consumer.start()
        self.consumer.assign([tp])
        await self.consumer.seek_to_beginning(tp)
        self._task = asyncio.create_task(self._run(), name="control-follower")

    async def _run(self) -> None:
        assert self.consumer is not None
        while True:
            batches = await self.consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                for m in msgs:
                    try:
                        self.on_event(ControlEvent.FromString(m.value))
                    except Exception as exc:  # a bad control record must not stop authentication
                        log.error("Skipping an unreadable control record at offset %d: %s", m.offset, exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
