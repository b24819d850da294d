"""The sink's writer: one poll's rows (columns.Tables) into ClickHouse, one insert per table in the registry's
order, then the poll's governance events. Synchronous: the consume loop runs it on a worker thread."""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from runstream.server import telemetry as tm
from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import map_clickhouse_errors
from runstream.storage.tables import TABLES


class Writer:
    def __init__(self, client: Client, db: str, governance: GovernanceApplier) -> None:
        self.client = client
        self.db = db
        self.governance = governance

    def write(self, t: columns.Tables) -> None:
        """Insert one poll's rows, points first, the batch ledger last; raises StorageError."""
        if t.audit:
            t.audit_rows = self.governance.chain(t.audit)
            t.audit = []
        with map_clickhouse_errors("insert"):
            for table in TABLES:
                if not table.rows:
                    continue  # a materialized view fills it as its source table is written
                rows = getattr(t, table.rows)
                if table.columns:
                    if rows:
                        self.client.insert(f"{self.db}.{table.name}", rows, column_names=list(table.columns))
                        tm.SINK_ROWS.labels(table.name).inc(len(rows))
                elif rows is not None:
                    self.client.insert_arrow(f"{self.db}.{table.name}", rows)
                    tm.SINK_ROWS.labels(table.name).inc(rows.num_rows)
            for ev in t.control:  # after this poll's rows, so a deletion also removes what came just before it
                self.governance.apply(ev)
