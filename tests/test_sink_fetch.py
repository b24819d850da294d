"""The sink fetches small chunks per partition (to bound what it holds before a poll) yet stores records larger than a
chunk whole, on the real broker, while other partitions keep receiving small records."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from aiokafka import AIOKafkaProducer

from runstream.server.kafka import client_args
from runstream.storage.sink import FETCH_PARTITION_BYTES
from runstream.wire import encoding
from tests.conftest import BackgroundClient, Stack
from tests.helpers import metric_batch, produce_events, wait_until


def test_records_larger_than_the_fetch_chunk_are_stored_whole(stack: Stack, token: str, tmp_path: Path) -> None:
    n = 200_000
    big = [metric_batch(f"big-{i}", n, project="fetch", created_ms=1_700_000_000_000 + i,
                        timestamps_ms=[1_700_000_000_000] * n, values=[random.random() for _ in range(n)])
           for i in range(6)]
    records = [encoding.encode(b, max_record_bytes=stack.config.kafka.max_record_bytes) for b in big]
    assert all(len(r.value) > FETCH_PARTITION_BYTES for r in records), [len(r.value) for r in records]
    with BackgroundClient(stack.ingest_addr, token, "fetch", tmp_path) as small:
        wait_until(lambda: small.acked > 1000, 30, "the small client to be logging")
        asyncio.run(produce_events(stack.config, [(r.key, r.value, r.headers) for r in records]))
        wait_until(lambda: small.acked > 5000, 30, "the small client to log on after the large records")
    acked = small.acked
    assert stack.wait_points(6 * n, 120, where="project = 'fetch' AND startsWith(run_id, 'big-')") == 6 * n
    assert stack.wait_points(acked, 60, where="project = 'fetch' AND NOT startsWith(run_id, 'big-')") == acked
    per_run = dict(stack.query("SELECT run_id, count() FROM {db}.metrics WHERE project = 'fetch' AND startsWith(run_id, 'big-') "
                               "GROUP BY run_id"))
    assert per_run == {b.run_id: n for b in big}


def test_records_that_come_within_the_gather_window_are_stored_in_one_insert(stack: Stack) -> None:
    """Ten small batches sent 15 ms apart (about 150 ms in all, within sink.gather_s) are stored together: one
    insert, at most a few when the machine is busy, where a sink that inserted every poll makes one per arrival."""
    assert stack.config.sink.gather_s > 0.15, "the ten records take ~150 ms: the window must outlast them"
    records = [encoding.encode(metric_batch(f"gather-{i}", 50, project="gather", created_ms=1_700_000_000_000 + i),
                               max_record_bytes=stack.config.kafka.max_record_bytes) for i in range(10)]

    async def paced() -> None:
        producer = AIOKafkaProducer(**client_args(stack.config), acks="all")
        await producer.start()
        try:
            for r in records:
                await producer.send_and_wait(stack.config.kafka.events_topic, r.value, key=r.key, headers=r.headers)
                await asyncio.sleep(0.015)
        finally:
            await producer.stop()

    asyncio.run(paced())
    assert stack.wait_points(500, 60, where="project = 'gather'") == 500
    # Every row of one insert has the same `stored` (the insert's now64(3)).
    inserts = stack.query("SELECT uniqExact(stored) FROM {db}.metric_points WHERE project = 'gather'")[0][0]
    assert 1 <= inserts <= 3, inserts
