"""The sink's governance applier: run deletions, retention and project roles from the control topic, and the
numbering and chaining of audit records. It holds the decisions already taken (loaded from storage at start)
so that a replayed batch of a deleted run is dropped and the audit chain continues where it stopped."""

from __future__ import annotations

import json
import logging
from typing import Any

from clickhouse_connect.driver.client import Client

from runstream.storage import access, columns
from runstream.storage.cluster import Layout
from runstream.storage.store import is_embedded, map_clickhouse_errors
from runstream.storage.tables import RUN_TABLES
from runstream.v1.ingest_pb2 import AuditRecord, ControlEvent
from runstream.wire import audit
from runstream.wire.governance import NAME_RE

log = logging.getLogger("runstream.sink")


class GovernanceApplier:
    def __init__(self, client: Client, db: str, audit_key: bytes = b"", cluster: str = "") -> None:
        self.client = client
        self.db = db
        self.layout = Layout(db, cluster)
        self.audit_key = audit_key  # signs every chained audit record (sink.audit_key_file)
        self.deleted_runs: set[tuple[str, str]] = set()  # (project, run id): a run id is unique per project only
        self.retention: dict[str, tuple[int, int]] = {}
        self.audit_heads: dict[str, tuple[int, str, int]] = {}  # project -> (seq, hash, source offset)
        self.stored_offset = -1  # the newest control record already in storage (its effects applied)
        self.deletions: list[tuple[str, str]] = []  # in the order applied: a poll built before one re-applies it

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The sink's own reads of what it decided (the store it writes, at start)."""
        return [tuple(r) for r in self.client.query(sql.replace("{db}", self.db)).result_rows]

    def load(self) -> None:
        """Deletions, retention and audit heads already decided (a restart, or a replay into a new store)."""
        with map_clickhouse_errors("reading governance history"):
            history = self._rows("SELECT action, object, record FROM {db}.governance_events FINAL "
                                 "WHERE action IN ('run.delete', 'retention.set') ORDER BY partition, offset")
        self.load_heads()
        for action, obj, record in history:
            if action == "run.delete":
                self.deleted_runs.add((str(json.loads(record).get("project", "")), obj))
            else:
                r = json.loads(record)
                self.retention[obj] = (int(r.get("raw_days", 0)), int(r.get("rollup_days", 0)))
        with map_clickhouse_errors("reading the governance offset"):
            self.stored_offset = int(self._rows("SELECT if(count() = 0, -1, toInt64(max(offset))) FROM {db}.governance_events")[0][0])

    def load_heads(self) -> None:
        """The audit chains' heads as stored (at start, and when this sink is given audit partitions another
        sink was chaining)."""
        with map_clickhouse_errors("reading the audit trail heads"):
            heads = self._rows("SELECT project, max(seq), argMax(hash, seq), argMax(offset, seq) FROM {db}.audit_log "
                               "GROUP BY project")
        self.audit_heads = {p: (int(seq), h, int(off)) for p, seq, h, off in heads}

    def remember(self, ev: ControlEvent) -> None:
        """What this sink must know of an event whose storage effects are already applied (a restart's replay)."""
        if ev.HasField("run_delete"):
            self.deleted_runs.add((ev.run_delete.project, ev.run_delete.run_id))
        elif ev.HasField("retention"):
            self.retention[ev.retention.project] = (ev.retention.raw_days, ev.retention.rollup_days)

    def install_access(self) -> None:
        """The permissive row policies a server needs before any restrictive one (none on the embedded engine)."""
        if not is_embedded(self.client):
            for stmt in access.base_statements(self.db):
                self._command(stmt)

    def apply(self, ev: ControlEvent) -> None:
        """Carry out one control event in storage (called after the rows polled before it were inserted)."""
        db = self.db
        if ev.HasField("project"):
            if not is_embedded(self.client):  # the embedded engine has no access control
                for stmt in access.project_statements(db, ev.project.name):
                    self._command(stmt)
        elif ev.HasField("run_delete"):
            project, run_id = ev.run_delete.project, ev.run_delete.run_id
            self.deleted_runs.add((project, run_id))
            self.deletions.append((project, run_id))
            self.delete_run(project, run_id)
            log.info("Deleted run %s of project %s from every table (%s).", run_id, project,
                     ev.run_delete.reason or "no reason given")
        elif ev.HasField("retention"):
            r = ev.retention
            if not NAME_RE.match(r.project):
                log.error("Ignoring a retention policy for an invalid project name %r.", r.project[:80])
                return
            self.retention[r.project] = (r.raw_days, r.rollup_days)
            for table, col, idx in (("metric_points", "ts", 0), ("rollup_windows", "window_start", 1)):
                cases = [(p, days[idx]) for p, days in sorted(self.retention.items()) if days[idx]]
                if not cases:
                    self._command(f"ALTER TABLE {db}.{table} REMOVE TTL")
                    continue
                expr = "multiIf(" + ", ".join(f"project = '{p}', {d}" for p, d in cases) + ", 36500)"
                self._command(f"ALTER TABLE {db}.{table} MODIFY TTL toDateTime({col}) + toIntervalDay({expr})")
            log.info("Retention for project %s: raw %s days, rollups %s days.", r.project, r.raw_days or "keep",
                     r.rollup_days or "keep")

    def delete_run(self, project: str, run_id: str) -> None:
        for table in RUN_TABLES:  # only this project's run: another project may use the same run id
            self._command(f"ALTER TABLE {self.db}.{table} DELETE WHERE project = %(p)s AND run_id = %(r)s",
                          parameters={"p": project, "r": run_id}, settings={"mutations_sync": 2})

    def _command(self, stmt: str, **kwargs: Any) -> None:
        """A statement written for one node, as the store's layout runs it (a cluster: on the stored tables of every
        node, see storage/cluster.py)."""
        for part in self.layout.statements(stmt):
            self.client.command(part, **kwargs)

    def chain(self, records: list[tuple[AuditRecord, int, int]]) -> list[list[Any]]:
        """Number and chain audit records per project (see runstream.wire.audit); replays are skipped."""
        rows = []
        for rec, partition, offset in records:
            seq, prev, last_offset = self.audit_heads.get(rec.project, (0, "", -1))
            if offset <= last_offset:
                continue
            seq += 1
            h = audit.chain(prev, audit.canonical(rec.project, seq, rec.at_ms, rec.actor, rec.action, rec.target,
                                                  rec.source, rec.before, rec.after))
            rows.append([rec.project, seq, columns.to_datetime(rec.at_ms), rec.actor, rec.action, rec.target, rec.source,
                         rec.before, rec.after, prev, h, partition, offset,
                         audit.sign(self.audit_key, h) if self.audit_key else ""])
            self.audit_heads[rec.project] = (seq, h, offset)
        return rows
