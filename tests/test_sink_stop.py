"""The sink's stop: an insert that keeps failing is not retried past stop(), and the ClickHouse client is closed only
after an insert running on the worker thread has returned (closing it underneath the insert was a bug). The writer
and the client are stand-ins here; the sink's consume loop against real Kafka and ClickHouse is in test_spine."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from runstream.storage import columns
from runstream.storage.sink import Sink
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import StorageError


class Client:
    def __init__(self) -> None:
        self.writing = threading.Event()
        self.closed_during_write: bool | None = None

    def close(self) -> None:
        self.closed_during_write = self.writing.is_set()


class SlowWriter:
    def __init__(self, client: Client, seconds: float) -> None:
        self.client, self.seconds, self.done = client, seconds, False

    def write(self, tables: columns.Tables, deletions_seen: int | None = None) -> None:
        self.client.writing.set()
        time.sleep(self.seconds)
        self.client.writing.clear()
        self.done = True


class FailingWriter:
    calls = 0

    def write(self, tables: columns.Tables, deletions_seen: int | None = None) -> None:
        FailingWriter.calls += 1
        raise StorageError("insert failed: the server is away")


def _sink(tmp_path: Path, writer: object) -> tuple[Sink, Client]:
    client = Client()
    sink = Sink(RunstreamConfig(data_dir=str(tmp_path)), client=client)  # type: ignore[arg-type]
    sink._own_client = True
    sink.writer = writer  # type: ignore[assignment]
    return sink, client


def test_stop_waits_for_a_running_insert_before_closing_the_client(tmp_path: Path) -> None:
    async def scenario() -> tuple[Sink, Client, SlowWriter]:
        sink, client = _sink(tmp_path, None)
        writer = SlowWriter(client, 1.0)
        sink.writer = writer  # type: ignore[assignment]
        sink.DRAIN_TIMEOUT_S = 0.1  # the loop is cancelled while its insert still runs
        sink._task = asyncio.create_task(sink._write_until_done(columns.Tables(), None))
        while not client.writing.is_set():
            await asyncio.sleep(0.01)
        await sink.stop()
        return sink, client, writer
    sink, client, writer = asyncio.run(scenario())
    assert writer.done and client.closed_during_write is False and sink.client is None


def test_a_failing_insert_is_not_retried_past_stop(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, float, int]:
        sink, _ = _sink(tmp_path, FailingWriter())
        task = asyncio.create_task(sink._write_until_done(columns.Tables(), None))
        while FailingWriter.calls < 1:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        sink._stopping.set()
        stored = await asyncio.wait_for(task, 5)
        return stored, time.monotonic() - t0, FailingWriter.calls
    stored, took, calls = asyncio.run(scenario())
    assert stored is False  # not stored, so not committed: the poll is read again after a restart
    assert took < 1.0 and calls <= 2
