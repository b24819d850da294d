"""Kafka plumbing shared by the server roles: topic creation from the registry (runstream.wire.topics)."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import Unavailable
from runstream.wire.topics import TOPICS


async def ensure_topics(config: RunstreamConfig, timeout: float = 60.0) -> None:
    """Create missing topics (idempotent); waits for the broker up to ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [NewTopic(t.name(config), t.partitions(config), 1,
                                topic_configs={"retention.ms": "-1"} if t.keep_forever else None)
                       for t in TOPICS if t.name(config) not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"Kafka at {config.kafka.bootstrap} is not reachable ({exc}). Start it (runstream up) "
                                  "or set kafka.bootstrap / RUNSTREAM_KAFKA_BOOTSTRAP.") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
