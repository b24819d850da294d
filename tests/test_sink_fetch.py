"""The sink fetches small chunks per partition (to bound what it holds before a poll) yet stores records larger than a
chunk whole, on the real broker, while other partitions keep receiving small records."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

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
