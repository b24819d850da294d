"""The one registry of stored tables: insert order, the rows and columns the writer sends, and each table's
scope. Deletion (run scope), row policies (project scope) and the writer read it; a test checks it against
the schema the migrations create (system.columns)."""

from __future__ import annotations

from dataclasses import dataclass

from runstream.storage import columns


@dataclass(frozen=True)
class Table:
    name: str
    rows: str                     # the columns.Tables attribute with this poll's rows; "": fed by a materialized view
    columns: tuple[str, ...]      # insert column order; () for an Arrow table
    scope: str                    # "run": has project and run_id; "project": has project; "global": neither


# Insert order: points first, the batch ledger last (a batch listed in `batches` has its points stored).
TABLES: tuple[Table, ...] = (
    Table("metric_points", "points", (), "run"),
    Table("run_starts", "run_starts", tuple(columns.RUN_START_COLUMNS), "run"),
    Table("run_finishes", "run_finishes", tuple(columns.RUN_FINISH_COLUMNS), "run"),
    Table("run_sessions", "run_sessions", tuple(columns.RUN_SESSION_COLUMNS), "run"),
    Table("params", "params", tuple(columns.KV_COLUMNS), "run"),
    Table("tags", "tags", tuple(columns.KV_COLUMNS), "run"),
    Table("rollup_windows", "rollups", tuple(columns.ROLLUP_COLUMNS), "run"),
    Table("fleet_windows", "fleet", tuple(columns.FLEET_COLUMNS), "project"),
    Table("alert_events", "alerts", tuple(columns.ALERT_COLUMNS), "run"),
    Table("governance_events", "governance", tuple(columns.GOVERNANCE_COLUMNS), "global"),
    Table("datasets_used", "datasets", tuple(columns.DATASET_COLUMNS), "run"),
    Table("artifacts", "artifacts", tuple(columns.ARTIFACT_COLUMNS), "run"),
    Table("audit_log", "audit_rows", tuple(columns.AUDIT_COLUMNS), "project"),
    Table("batches", "batches", tuple(columns.BATCH_COLUMNS), "run"),
    Table("metric_latest", "", (), "run"),  # from metric_points by metric_latest_mv (migrations/0007_reads.sql)
    Table("run_index", "", (), "run"),  # from the run, param, tag and latest tables (migrations/0014_run_index.sql)
)
RUN_TABLES = tuple(t.name for t in TABLES if t.scope == "run")                  # a run deletion reaches these
PROJECT_TABLES = tuple(t.name for t in TABLES if t.scope in ("run", "project"))  # row policies go on these
