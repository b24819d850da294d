"""The sink's writer: one poll's rows (columns.Tables) into ClickHouse, one insert per table in the registry's
order, then the poll's governance events. Synchronous: the consume loop runs it on a worker thread."""

from __future__ import annotations

import ctypes
import logging
import threading
import time

from clickhouse_connect.driver.client import Client

from runstream.server import telemetry as tm
from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import map_clickhouse_errors
from runstream.storage.tables import TABLES

log = logging.getLogger("runstream.sink")
# glibc keeps the pages Python and the client freed in each thread's heap; malloc_trim returns them (absent elsewhere).
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)


class Writer:
    def __init__(self, client: Client, db: str, governance: GovernanceApplier, *, purge_every_s: float = 0.0) -> None:
        self.client = client
        self.db = db
        self.governance = governance
        self.lock = threading.Lock()  # inserts and governance effects, one at a time
        self.purge_every_s = purge_every_s
        self._purged = time.monotonic()

    def write(self, t: columns.Tables, deletions_seen: int | None = None) -> None:
        """Insert one poll's rows, points first, the batch ledger last, then the poll's governance events; raises
        StorageError. ``deletions_seen``: how many deletions the poll was filtered against; one that came since is
        applied again after the insert, so rows of a run deleted meanwhile do not outlive the deletion."""
        with self.lock:
            self._write(t)
            if deletions_seen is not None:
                with map_clickhouse_errors("re-applying a deletion"):
                    for project, run_id in self.governance.deletions[deletions_seen:]:
                        self.governance.delete_run(project, run_id)
            self._purge()

    def _purge(self) -> None:
        """The embedded engine's allocator, and glibc's for the rest of the process, keep the pages a poll freed;
        handing them back now and then keeps the process's resident memory near what it uses. The poll is stored by
        now: a failure here is only logged."""
        if self.purge_every_s and time.monotonic() - self._purged >= self.purge_every_s:
            self._purged = time.monotonic()
            if _malloc_trim is not None:
                _malloc_trim(0)
            try:
                self.client.command("SYSTEM JEMALLOC PURGE")
            except Exception as exc:
                log.warning("Returning the engine's freed memory to the OS failed (%s); the sink goes on.", exc)
                return
            tm.SINK_MEMORY_PURGES.inc()

    def _write(self, t: columns.Tables) -> None:
        if t.audit:
            t.audit_rows = self.governance.chain(t.audit)
            t.audit = []
        settings = self.governance.layout.insert_settings or None
        with map_clickhouse_errors("insert"):
            for table in TABLES:
                if not table.rows:
                    continue  # a materialized view fills it as its source table is written
                rows = getattr(t, table.rows)
                if table.columns:
                    if rows:
                        self.client.insert(f"{self.db}.{table.name}", rows, column_names=list(table.columns),
                                           settings=settings)
                        tm.SINK_ROWS.labels(table.name).inc(len(rows))
                elif rows is not None:
                    # The engine's default collapses a batch delivered twice into one poll here; optimize_on_insert 0
                    # saved 15-25% of this insert's CPU, but merging those parts cost as much more
                    # (bench/results/sink-points-insert.json).
                    self.client.insert_arrow(f"{self.db}.{table.name}", rows, settings=settings)
                    tm.SINK_ROWS.labels(table.name).inc(rows.num_rows)
            for ev in t.control:  # after this poll's rows, so a deletion also removes what came just before it
                self.governance.apply(ev)
