"""A producer that hits a fatal error (the idempotent producer's out-of-order sequence after a broker lost the
tail of a partition) is replaced: the call that saw it answers UNAVAILABLE, the client resends, nothing is lost,
and ingest does not stay wedged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

import runstream
from runstream.sdk.transport import GrpcTransport, SendError
from tests.conftest import Stack
from tests.helpers import counter, metric_batch, wait_until


def test_a_fatal_producer_error_replaces_the_producer(stack: Stack, token: str, tmp_path: Path) -> None:
    pub = stack.roles.stages["ingest"][0].publisher
    broken = pub.producer
    real_send = broken.send
    injected = []

    async def send_once_failing(*args, **kwargs):  # the broker's answer to a producer whose sequence it lost
        if not injected:
            injected.append(1)
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(OutOfOrderSequenceNumber("injected: out of order sequence number"))
            return fut
        return await real_send(*args, **kwargs)

    broken.send = send_once_failing
    rebuilds = counter("runstream_ingest_producer_rebuilds_total")
    t = GrpcTransport(stack.ingest_addr, token, timeout_s=10)
    with pytest.raises(SendError) as err:
        t.send([metric_batch("wedge-0", project="wedge")])
    assert err.value.code == "UNAVAILABLE" and err.value.retryable
    wait_until(lambda: pub.producer is not broken, 30, "a new producer")
    assert counter("runstream_ingest_producer_rebuilds_total") == rebuilds + 1
    t.send([metric_batch("wedge-1", project="wedge")])  # the next call goes through the new producer
    run = runstream.init("wedge", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path),
                         system_interval_s=0)
    for step in range(1000):
        run.log({"x": float(step)}, step=step)
    assert run.finish(timeout=30)
    assert stack.wait_points(1000, where=f"run_id = '{run.id}'") == 1000
    assert stack.count_points("run_id = 'wedge-1'") == 10
