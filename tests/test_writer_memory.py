"""The sink's writer hands freed pages back to the OS, the embedded engine's and glibc's (sink.memory_purge_interval_s)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from prometheus_client import REGISTRY

from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import open_embedded
from runstream.storage.writer import Writer


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def purges() -> float:
    return REGISTRY.get_sample_value("runstream_sink_memory_purges_total") or 0.0


def test_the_writer_returns_freed_engine_memory(chdb_path: Path) -> None:
    client = open_embedded(chdb_path)
    db = f"purge_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    try:
        client.command(f"CREATE TABLE {db}.t (r String, s Int64, v Float64) ENGINE = MergeTree ORDER BY (r, s)")
        for k in range(6):  # inserts the size of a full poll leave freed pages behind in the engine's allocator
            client.command(f"INSERT INTO {db}.t SELECT toString(number % 100), number, rand64() / 1e9 "
                           f"FROM numbers({k * 500_000}, 500000)")
        idle = Writer(client, db, GovernanceApplier(client, db), purge_every_s=0.0)
        before, count = rss_mib(), purges()
        idle.write(columns.Tables())
        assert purges() == count and rss_mib() > before - 10  # off: nothing handed back
        writer = Writer(client, db, GovernanceApplier(client, db), purge_every_s=1e-6)
        writer.write(columns.Tables())
        assert purges() == count + 1
        assert rss_mib() < before - 20, f"resident memory {before:.0f} -> {rss_mib():.0f} MiB after the purge"
    finally:
        client.command(f"DROP DATABASE {db} SYNC")
        client.close()


def test_the_writer_returns_the_heap_pages_python_freed(chdb_path: Path) -> None:
    """Pages freed in a thread's glibc heap (a poll's decoding and client buffers) go back at the purge too."""
    client = open_embedded(chdb_path)
    try:
        writer = Writer(client, "default", GovernanceApplier(client, "default"), purge_every_s=1e-6)
        writer.write(columns.Tables())  # the engine's freed pages first, so the next purge has only the heap's to return
        keep: list[bytes] = []

        def churn() -> None:
            blocks = [bytes(4096) + bytes([i % 256]) for i in range(60_000)]  # ~240 MiB in this thread's heap
            keep.extend(blocks[::100])  # a block kept every 400 KiB: free() alone can return none of the pages between
            del blocks

        t = threading.Thread(target=churn)
        t.start()
        t.join()
        before, count = rss_mib(), purges()
        writer.write(columns.Tables())
        assert purges() == count + 1
        assert rss_mib() < before - 100, f"resident memory {before:.0f} -> {rss_mib():.0f} MiB after the purge"
    finally:
        client.close()
