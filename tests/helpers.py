"""What many tests share: one builder for hand-made batches, and positive signals to wait for (the sink's
group has consumed everything in Kafka; a counter of this process moved) before anything is asserted absent."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import REGISTRY

from runstream.ops.stack import RoleProcess, scrape
from runstream.server.kafka import client_args
from runstream.v1.ingest_pb2 import Batch
from runstream.wire import topics
from runstream.wire.config import RunstreamConfig


def metric_batch(run_id: str, n: int = 10, *, project: str = "p", metric: str = "x", seq: int = 1,
                 created_ms: int = 1, batch_id: str | None = None, names: Sequence[str] | None = None,
                 name_index: Sequence[int] | None = None, steps: Sequence[int] | None = None,
                 timestamps_ms: Sequence[int] | None = None, values: Sequence[float] | None = None) -> Batch:
    """A metrics batch: by default ``n`` points of one metric at steps 0..n-1, value 1.0, time 1 ms."""
    b = Batch(batch_id=batch_id or uuid.uuid4().hex, project=project, run_id=run_id, seq=seq, created_ms=created_ms)
    b.metrics.names.extend(names or [metric])
    b.metrics.name_index.extend(name_index if name_index is not None else [0] * n)
    b.metrics.steps.extend(steps if steps is not None else range(n))
    b.metrics.timestamps_ms.extend(timestamps_ms if timestamps_ms is not None else [1] * len(b.metrics.steps))
    b.metrics.values.extend(values if values is not None else [1.0] * len(b.metrics.steps))
    return b


def narrow_token(config: RunstreamConfig, name: str, projects: list[str]) -> None:
    """Limit the file token ``name`` to ``projects`` (the roles reload the tokens file within seconds)."""
    import yaml

    data = yaml.safe_load(config.tokens_path.read_text())
    for entry in data["tokens"]:
        if entry["name"] == name:
            entry["projects"] = projects
    config.tokens_path.write_text(yaml.safe_dump(data))


def counter(name: str, **labels: str) -> float:
    """A counter of this process's registry (in-process roles), 0 before its first increment."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_until(check: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> object:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (a callable: described at the failure,
    with what was seen last)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")
        time.sleep(0.2)  # the poll interval: this loop is the wait for the signal ``check`` reads


async def group_lag(config: RunstreamConfig, group: str, kinds: Sequence[str]) -> int:
    """Records of these topics that consumer group ``group`` has not committed."""
    names = [t.name(config) for t in topics.TOPICS if t.kind in kinds]
    admin = AIOKafkaAdminClient(**client_args(config))
    consumer = AIOKafkaConsumer(**client_args(config))
    await admin.start()
    await consumer.start()
    try:
        parts = [TopicPartition(n, p) for n in names for p in (consumer.partitions_for_topic(n) or set())]
        if not parts:
            for n in names:
                await consumer._client.force_metadata_update()  # a topic created a moment ago
                parts += [TopicPartition(n, p) for p in (consumer.partitions_for_topic(n) or set())]
        ends = await consumer.end_offsets(parts)
        committed = await admin.list_consumer_group_offsets(group, partitions=parts)
        return sum(max(0, ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0))
                   for tp in parts)
    finally:
        await consumer.stop()
        await admin.close()


def wait_group_drained(config: RunstreamConfig, group: str, kinds: Sequence[str] = ("events",),
                       timeout: float = 60.0) -> None:
    """Wait until consumer group ``group`` has committed every record now in these topics."""
    wait_until(lambda: asyncio.run(group_lag(config, group, kinds)) == 0, timeout,
               f"group {group} to consume everything in {', '.join(kinds)}")


def wait_sink_drained(config: RunstreamConfig, timeout: float = 60.0, kinds: Sequence[str] = ("events",)) -> None:
    """Wait until the sink's group has committed every record now in these topics. The sink commits only after
    storing a poll, so afterwards anything a record would add (a replay, a duplicate) is in storage already."""
    wait_group_drained(config, config.sink.group_id, kinds, timeout)


async def read_records(config: RunstreamConfig, topic: str, n: int, timeout: float = 30.0) -> list[Any]:
    """The first ``n`` records of ``topic`` (from its start); fails after ``timeout`` seconds with fewer."""
    consumer = AIOKafkaConsumer(topic, **client_args(config), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        got: list[Any] = []
        async with asyncio.timeout(timeout):
            while len(got) < n:
                for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                    got.extend(msgs)
        return got
    finally:
        await consumer.stop()


async def read_topic(config: RunstreamConfig, topic: str, timeout: float = 30.0) -> list[Any]:
    """Every record in ``topic`` now: each partition from its start to the end offset it has when this is called."""
    consumer = AIOKafkaConsumer(**client_args(config), auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not parts:
            await consumer._client.force_metadata_update()  # a topic created a moment ago
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        got: list[Any] = []
        async with asyncio.timeout(timeout):
            while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
                for msgs in (await consumer.getmany(timeout_ms=1000)).values():
                    got.extend(msgs)
        return got
    finally:
        await consumer.stop()


async def produce_events(config: RunstreamConfig, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """Write (key, value, headers) records to the events topic past ingest, up to ingest's record size limit."""
    producer = AIOKafkaProducer(**client_args(config), acks="all", max_request_size=config.kafka.max_record_bytes + 4096)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(config.kafka.events_topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


class StallingProxy:
    """A TCP proxy in front of a server that can stall: while ``stalled`` is set it reads and forwards nothing, so
    a client waits on an answer as it would from a stopped process (SIGSTOP), its connection left open. It can also
    cut a connection once, in the middle of what the client sends (``cut_at``)."""

    def __init__(self, target: str) -> None:
        import socket
        import threading
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.stalled = threading.Event()
        self.forwarded = 0  # bytes from client to server
        self.cut_at = 0     # > 0: the connection that carries the forwarded total past this is closed, once
        self.cuts = 0
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: object, upstream: object) -> None:
        import selectors
        import socket
        assert isinstance(client, socket.socket) and isinstance(upstream, socket.socket)
        peer = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        for s in peer:
            sel.register(s, selectors.EVENT_READ)
        try:
            while not self._closed.is_set():
                if self.stalled.is_set():
                    self._closed.wait(0.02)  # holding the bytes while stalled; a close ends the wait at once
                    continue
                for key, _ in sel.select(0.05):
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is client and self.cut_at and self.forwarded + len(data) > self.cut_at:
                        data = data[:self.cut_at - self.forwarded]
                        peer[src].sendall(data)
                        self.forwarded += len(data)
                        self.cut_at, self.cuts = 0, self.cuts + 1
                        return  # both sides closed mid-request, as a dropped network would leave them
                    peer[src].sendall(data)
                    if src is client:
                        self.forwarded += len(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def ready_or_restarted(worker: RoleProcess) -> bool:
    """The processor worker's readiness gauge (runstream_processor_ready) reads 1; a worker that exited (its join,
    recovery or stuck watchdog ended it) is started again, as `runstream up` restarts it."""
    if not worker.alive():
        print(f"{worker.name} exited before it was ready; restarted")
        worker.start()
        return False
    return scrape(worker.config.processors.metrics_port, timeout=5).get("runstream_processor_ready") == 1.0
