"""runstream on a 3-node KRaft cluster (replication factor 3, min.insync.replicas 2): under load, the broker
leading a busy events partition is killed with SIGKILL and restarted on its own disk. Ingest keeps answering,
nothing acknowledged is lost, nothing is stored twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from runstream.ops.broker import KafkaCluster
from runstream.ops.stack import InProcessRoles
from runstream.server.auth import ensure_dev_token
from runstream.server.kafka import client_args
from runstream.wire.config import RunstreamConfig
from tests.conftest import BackgroundClient, Stack, make_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    c = KafkaCluster(tmp_path_factory.mktemp("cluster"), 3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


async def leader_of(config: RunstreamConfig, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(**client_args(config))
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
        return int(next(p["leader"] for p in desc["partitions"] if p["partition"] == partition))
    finally:
        await admin.close()


def test_killing_a_partition_leader_under_load_loses_nothing(cluster: KafkaCluster, chdb_path: Path,
                                                             tmp_path: Path) -> None:
    config = make_config(tmp_path, cluster, chdb_path)
    token = ensure_dev_token(config.tokens_path)
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    stack = Stack(config, roles)
    assert config.kafka.replication_factor == 3
    clients = [BackgroundClient(stack.ingest_addr, token, "cluster", tmp_path / f"spool{i}") for i in range(4)]
    try:
        for c in clients:
            c.__enter__()
        time.sleep(3)
        victim = asyncio.run(leader_of(config, config.kafka.events_topic, 0))
        before = sum(c.acked for c in clients)
        assert before > 0
        cluster.node(victim).kill()
        killed_at = time.monotonic()
        # Ingest answers within 10 s of the kill: acknowledgements keep coming.
        while sum(c.acked for c in clients) <= before:
            assert time.monotonic() - killed_at < 10, "nothing acknowledged for 10 s after the leader died"
            time.sleep(0.1)
        time.sleep(max(0.0, 10 - (time.monotonic() - killed_at)))
        cluster.node(victim).start()
        restarted = sum(c.acked for c in clients)
        time.sleep(5)
        assert sum(c.acked for c in clients) > restarted, "ingest wedged after the broker came back"
    finally:
        for c in clients:
            c.__exit__()
    try:
        logged = {c.run.id: c.acked for c in clients}
        assert all(c.run.stats.done.is_set() for c in clients)
        for run_id, acked in logged.items():
            assert stack.wait_points(acked, timeout=90, where=f"run_id = '{run_id}'") == acked
        # Exactly once: every acknowledged point once, no more (a second look after the sink drained).
        from tests.helpers import wait_sink_drained
        wait_sink_drained(config)
        assert {r: stack.count_points(f"run_id = '{r}'") for r in logged} == logged
    finally:
        roles.stop()
