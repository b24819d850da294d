"""The embedded broker is not an open door: SASL on every listener, and ACLs that give each role's principal its
own topics only. A local process without the data dir's credentials can neither write nor read a topic; a role's
principal cannot forge governance."""

from __future__ import annotations

import asyncio
import dataclasses
import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from runstream.ops.broker import PRINCIPALS, KafkaBroker
from runstream.server.kafka import as_principal, client_args
from runstream.v1.ingest_pb2 import ControlEvent
from runstream.wire.config import RunstreamConfig
from tests.conftest import Stack
from tests.test_governance import cli


@pytest.fixture
def broker(kafka: KafkaBroker | str) -> KafkaBroker:
    if isinstance(kafka, str):
        pytest.skip("RUNSTREAM_TEST_KAFKA names a plaintext broker")
    return kafka


def forged_token_event() -> bytes:
    ev = ControlEvent(actor="intruder", at_ms=1, action="token.create")
    ev.token.token_id = "forged"
    ev.token.projects.append("*")
    ev.token.scopes.extend(["admin", "ingest"])
    ev.token.sha256 = "0" * 64
    return ev.SerializeToString()


async def end_offset(config: RunstreamConfig, topic: str) -> int:
    consumer = AIOKafkaConsumer(**client_args(config))
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def values_from(config: RunstreamConfig, topic: str, start: int, end: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(**client_args(config), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[bytes] = []
        while len(out) < end - start:
            batch = await consumer.getmany(tp, timeout_ms=5000)
            out += [r.value for r in batch.get(tp, []) if r.value is not None]
        return out
    finally:
        await consumer.stop()


async def try_produce(args: dict[str, Any], topic: str, value: bytes) -> BaseException | None:
    producer = AIOKafkaProducer(**args, request_timeout_ms=8000, acks="all")
    try:
        await asyncio.wait_for(producer.start(), 20)
        await asyncio.wait_for(producer.send_and_wait(topic, value), 20)
        return None
    except (KafkaError, TimeoutError) as exc:
        return exc
    finally:
        await producer.stop()


async def try_read(args: dict[str, Any], topic: str) -> BaseException | None:
    consumer = AIOKafkaConsumer(**args, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await asyncio.wait_for(consumer.start(), 20)
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        await asyncio.wait_for(consumer.getmany(tp, timeout_ms=3000), 20)
        return None
    except (KafkaError, TimeoutError) as exc:
        return exc
    finally:
        await consumer.stop()


async def metadata_error(args: dict[str, Any], topic: str) -> int:
    """The broker's error code for ``topic`` in this client's metadata: 29 (TOPIC_AUTHORIZATION_FAILED) when the
    principal may neither describe nor read it."""
    admin = AIOKafkaAdminClient(**args)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return int(described["error_code"])
    finally:
        await admin.close()


def test_no_credentials_no_topics_and_roles_cannot_forge_governance(stack: Stack, broker: KafkaBroker) -> None:
    admin = stack.config
    control, events = admin.kafka.control_topic, admin.kafka.events_topic
    before = asyncio.run(end_offset(admin, control))

    # A local process that only knows the port: the SASL listener does not let it in at all.
    anonymous = {"bootstrap_servers": admin.kafka.bootstrap}
    assert asyncio.run(try_produce(anonymous, control, forged_token_event())) is not None
    assert asyncio.run(try_read(anonymous, events)) is not None
    # A wrong password for a real principal.
    wrong = dict(client_args(as_principal(admin, "ingest")), sasl_plain_password="guessed")
    assert asyncio.run(try_produce(wrong, control, forged_token_event())) is not None

    # Signed in as a role: only that role's topics, and only in its direction.
    process = client_args(as_principal(admin, "process"))
    sink = client_args(as_principal(admin, "sink"))
    ingest = client_args(as_principal(admin, "ingest"))
    assert isinstance(asyncio.run(try_produce(process, control, forged_token_event())), TopicAuthorizationFailedError)
    assert isinstance(asyncio.run(try_produce(sink, admin.kafka.audit_topic, b"x")), TopicAuthorizationFailedError)
    assert isinstance(asyncio.run(try_read(ingest, events)), TopicAuthorizationFailedError)
    assert [asyncio.run(metadata_error(process, t)) for t in (control, admin.kafka.audit_topic)] == [29, 29]
    assert asyncio.run(metadata_error(sink, control)) == 0
    assert asyncio.run(try_read(sink, events)) is None  # what each role needs still works

    # A genuine change, through the authenticated Admin API, is the positive signal: it reaches the control
    # topic, and nothing forged sits beside it.
    cli(stack, "project", "create", "secured")
    after = asyncio.run(end_offset(admin, control))
    assert after > before
    values = asyncio.run(values_from(admin, control, before, after))
    events_seen = [ControlEvent.FromString(v) for v in values]
    assert [e.actor for e in events_seen if e.actor == "intruder"] == []
    assert any(e.WhichOneof("body") == "project" and e.project.name == "secured" for e in events_seen)


def test_credentials_are_private_and_roles_sign_in_as_themselves(broker: KafkaBroker, config: RunstreamConfig) -> None:
    assert stat.S_IMODE(broker.credentials_dir.stat().st_mode) == 0o700
    for principal in (*PRINCIPALS, "controller"):
        path = broker.credentials_dir / f"{principal}.password"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((broker.data_dir / "server.properties").stat().st_mode) == 0o600
    for role in ("ingest", "process", "sink"):
        c = as_principal(config, role)
        assert (c.kafka.username, c.kafka.credentials_dir) == (role, "")
        assert Path(c.kafka.password_file).read_text().strip() == broker.password(role)
        assert c.kafka.security_protocol == "SASL_PLAINTEXT"
    assert dataclasses.asdict(config.kafka)["username"] == "admin"  # the caller's own config is untouched


def test_replication_follows_the_cluster_and_too_much_is_a_clear_error(config: RunstreamConfig) -> None:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from runstream.server.kafka import ensure_topics
    from runstream.wire.errors import ConfigError
    asyncio.run(ensure_topics(config))
    assert config.kafka.replication_factor == 1  # min(3, brokers): one broker here

    async def topic_config(name: str) -> dict[str, str]:
        admin = AIOKafkaAdminClient(**client_args(config))
        await admin.start()
        try:
            (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
            return {entry[0]: entry[1] for entry in resp.resources[0][4]}
        finally:
            await admin.close()
    got = asyncio.run(topic_config(config.kafka.control_topic))
    assert got["min.insync.replicas"] == "1" and got["retention.ms"] == "-1"

    too_many = dataclasses.replace(config, kafka=dataclasses.replace(config.kafka, replication_factor=3,
                                                                     events_topic=config.kafka.events_topic + "-rf3"))
    with pytest.raises(ConfigError, match="kafka.replication_factor: 3 is more than the brokers"):
        asyncio.run(ensure_topics(too_many))
