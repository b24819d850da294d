"""The storage sink: the only writer of ClickHouse.

A Kafka consumer group reads the events topic, turns each poll into one insert
per table (storage.columns) and commits offsets only after every insert
succeeded: a crash replays at most the uncommitted polls, and the replayed
rows collapse on their (batch, idx) key (see migrations/0001_init.sql), so
nothing is lost and nothing is counted twice. An insert that fails is retried
with backoff, never skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client

from runstream import audit, encoding, telemetry as tm
from runstream.config import RunstreamConfig
from runstream.errors import StorageError
from ingest.validate import NAME_RE
from storage import columns
from storage import access
from storage.store import is_embedded, map_clickhouse_errors, migrate, open_store

log = logging.getLogger("runstream.sink")


class RecentIds:
    """A bounded memory of batch ids already stored, to skip obvious resends cheaply.

    Correctness does not depend on it: storage deduplicates anyway.
    """

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self._ids

    def add(self, batch_id: str) -> None:
        self._ids[batch_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


class Sink:
    """The sink stage. ``start()`` opens the store, migrates and joins the group; ``stop()`` drains (idempotent)."""

    def __init__(self, config: RunstreamConfig, client: Client | None = None) -> None:
        self.config = config
        self.client = client
        self._own_client = client is None
        self.consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self.recent = RecentIds()
        self._lag_at = 0.0
        self.deleted_runs: set[str] = set()
        self.retention: dict[str, tuple[int, int]] = {}
        self.audit_heads: dict[str, tuple[int, str, int]] = {}  # project -> (seq, hash, source offset)
        self.stored_points = 0
        self.stored_batches = 0

    @property
    def db(self) -> str:
        return self.config.clickhouse.database

    async def start(self) -> None:
        if self.client is None:
            self.client = await asyncio.to_thread(open_store, self.config)
        await asyncio.to_thread(migrate, self.client, self.db)
        if not is_embedded(self.client):  # the embedded engine has no access control
            for stmt in access.base_statements(self.db):
                await asyncio.to_thread(self.client.command, stmt)
        await asyncio.to_thread(self._load_governance)
        k = self.config.kafka
        self.topic_kind = {k.events_topic: "events", k.rollups_topic: "rollups", k.alerts_topic: "alerts",
                           k.fleet_topic: "fleet", k.control_topic: "control",
                           k.audit_topic: "audit"}
        self.consumer = AIOKafkaConsumer(
            *self.topic_kind, bootstrap_servers=self.config.kafka.bootstrap,
            group_id=self.config.sink.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="sink")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, 30)
            except asyncio.TimeoutError:
                task.cancel()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None

    async def _run(self) -> None:
        assert self.consumer is not None
        max_rows = self.config.sink.max_rows_per_insert
        while not self._stopping.is_set():
            try:
                polled = await self.consumer.getmany(timeout_ms=int(self.config.sink.flush_interval_s * 1000),
                                                     max_records=max(1, max_rows // 1000))
            except KafkaError as exc:
                tm.SINK_ERRORS.labels("consume").inc()
                log.warning("Reading from Kafka failed (%s); retrying.", exc)
                await asyncio.sleep(1)
                continue
            if time.monotonic() - self._lag_at > 1.0:
                self._lag_at = time.monotonic()
                await self._report_lag()
            if not polled:
                continue
            items = []
            tables = columns.Tables()
            for tp, messages in polled.items():
                kind = self.topic_kind.get(tp.topic, "events")
                for msg in messages:
                    if kind != "events":
                        try:
                            columns.add_derived(tables, kind, msg.value, tp.partition, msg.offset)
                        except Exception as exc:
                            tm.SINK_BATCHES.labels("undecodable").inc()
                            log.error("Skipping undecodable %s record %s[%d]@%d: %s", kind, tp.topic, tp.partition, msg.offset, exc)
                        continue
                    try:
                        batch = encoding.decode(msg.value, msg.headers)
                    except Exception as exc:  # a foreign or corrupt record must not stop the sink
                        tm.SINK_BATCHES.labels("undecodable").inc()
                        log.error("Skipping undecodable record %s[%d]@%d: %s", tp.topic, tp.partition, msg.offset, exc)
                        continue
                    if batch.run_id in self.deleted_runs:
                        tm.SINK_BATCHES.labels("deleted_run").inc()
                        continue
                    if batch.batch_id in self.recent:
                        tm.SINK_BATCHES.labels("duplicate").inc()
                        continue
                    items.append((batch, tp.partition, msg.offset))
            columns.build(items, tables)
            await self._insert_until_done(tables)
            for batch, _, _ in items:
                self.recent.add(batch.batch_id)
            await self._commit()
            tm.SINK_BATCHES.labels("stored").inc(len(items))
            self.stored_batches += len(items)
            self.stored_points += tables.point_count
            if tables.newest_created_ms:
                tm.SINK_LAG_SECONDS.set(max(0.0, time.time() - tables.newest_created_ms / 1000))


    async def _report_lag(self) -> None:
        assert self.consumer is not None
        lag: dict[str, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - await self.consumer.position(tp))
        for topic, n in lag.items():
            tm.SINK_CONSUMER_LAG.labels(topic).set(n)

    async def _commit(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                await self.consumer.commit()
                return
            except KafkaError as exc:
                # Not committing is safe (the poll is replayed and deduplicated), but retry a few times first.
                tm.SINK_ERRORS.labels("commit").inc()
                log.warning("Committing offsets failed (%s); retrying.", exc)
                if self._stopping.is_set():
                    return
                await asyncio.sleep(1)

    async def _insert_until_done(self, tables: columns.Tables) -> None:
        delay = 0.5
        while True:
            try:
                started = time.perf_counter()
                await asyncio.to_thread(self.insert, tables)
                tm.SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
                return
            except StorageError as exc:
                tm.SINK_ERRORS.labels("insert").inc()
                log.error("Insert failed, will retry in %.1fs (offsets not committed): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    def _load_governance(self) -> None:
        """Deletions and retention already decided (a restart, or a replay of the topics into a new store)."""
        assert self.client is not None
        with map_clickhouse_errors("reading governance history"):
            rows = self.client.query(f"SELECT action, object, record FROM {self.db}.governance_events FINAL "
                                     "WHERE action IN ('run.delete', 'retention.set') ORDER BY partition, offset").result_rows
        with map_clickhouse_errors("reading the audit trail heads"):
            heads = self.client.query(f"SELECT project, max(seq), argMax(hash, seq), argMax(offset, seq) "
                                      f"FROM {self.db}.audit_log GROUP BY project").result_rows
        self.audit_heads = {p: (int(seq), h, int(off)) for p, seq, h, off in heads}
        for action, obj, record in rows:
            if action == "run.delete":
                self.deleted_runs.add(obj)
            else:
                r = json.loads(record)
                self.retention[obj] = (int(r.get("raw_days", 0)), int(r.get("rollup_days", 0)))

    RUN_TABLES = ("metric_points", "batches", "run_starts", "run_finishes", "params", "tags", "rollup_windows",
                  "alert_events", "datasets_used", "artifacts")

    def _apply_control(self, ev: Any) -> None:
        assert self.client is not None
        db = self.db
        if ev.HasField("project"):
            if not is_embedded(self.client):  # the embedded engine has no access control
                for stmt in access.project_statements(db, ev.project.name):
                    self.client.command(stmt)
        elif ev.HasField("run_delete"):
            run_id = ev.run_delete.run_id
            self.deleted_runs.add(run_id)
            for table in self.RUN_TABLES:
                self.client.command(f"ALTER TABLE {db}.{table} DELETE WHERE run_id = %(r)s",
                                    parameters={"r": run_id}, settings={"mutations_sync": 2})
            log.info("Deleted run %s from every table (%s).", run_id, ev.run_delete.reason or "no reason given")
        elif ev.HasField("retention"):
            r = ev.retention
            if not NAME_RE.match(r.project):
                log.error("Ignoring a retention policy for an invalid project name %r.", r.project[:80])
                return
            self.retention[r.project] = (r.raw_days, r.rollup_days)
            for table, col, idx in (("metric_points", "ts", 0), ("rollup_windows", "window_start", 1)):
                cases = [(p, days[idx]) for p, days in sorted(self.retention.items()) if days[idx]]
                if not cases:
                    self.client.command(f"ALTER TABLE {db}.{table} REMOVE TTL")
                    continue
                expr = "multiIf(" + ", ".join(f"project = '{p}', {d}" for p, d in cases) + ", 36500)"
                self.client.command(f"ALTER TABLE {db}.{table} MODIFY TTL toDateTime({col}) + toIntervalDay({expr})")
            log.info("Retention for project %s: raw %s days, rollups %s days.", r.project, r.raw_days or "keep",
                     r.rollup_days or "keep")

    def _audit_rows(self, t: columns.Tables) -> list[list[Any]]:
        """Number and chain this poll's audit records per project (see runstream.audit); replays are skipped."""
        rows = []
        for rec, partition, offset in t.audit:
            seq, prev, last_offset = self.audit_heads.get(rec.project, (0, "", -1))
            if offset <= last_offset:
                continue
            seq += 1
            h = audit.chain(prev, audit.canonical(rec.project, seq, rec.at_ms, rec.actor, rec.action, rec.target,
                                                  rec.source, rec.before, rec.after))
            rows.append([rec.project, seq, columns._dt(rec.at_ms), rec.actor, rec.action, rec.target, rec.source,
                         rec.before, rec.after, prev, h, partition, offset])
            self.audit_heads[rec.project] = (seq, h, offset)
        return rows

    def insert(self, t: columns.Tables) -> None:
        """Insert one poll's rows, points first, the batch ledger last."""
        assert self.client is not None
        db = self.db
        if t.audit:
            t.audit_rows = self._audit_rows(t)
            t.audit = []
        with map_clickhouse_errors("insert"):
            if t.points is not None:
                self.client.insert_arrow(f"{db}.metric_points", t.points)
                tm.SINK_ROWS.labels("metric_points").inc(t.points.num_rows)
            for table, rows, cols in (("run_starts", t.run_starts, columns.RUN_START_COLUMNS),
                                      ("run_finishes", t.run_finishes, columns.RUN_FINISH_COLUMNS),
                                      ("params", t.params, columns.KV_COLUMNS),
                                      ("tags", t.tags, columns.KV_COLUMNS),
                                      ("rollup_windows", t.rollups, columns.ROLLUP_COLUMNS),
                                      ("fleet_windows", t.fleet, columns.FLEET_COLUMNS),
                                      ("alert_events", t.alerts, columns.ALERT_COLUMNS),
                                      ("governance_events", t.governance, columns.GOVERNANCE_COLUMNS),
                                      ("datasets_used", t.datasets, columns.DATASET_COLUMNS),
                                      ("artifacts", t.artifacts, columns.ARTIFACT_COLUMNS),
                                      ("audit_log", t.audit_rows, columns.AUDIT_COLUMNS),
                                      ("batches", t.batches, columns.BATCH_COLUMNS)):
                if rows:
                    self.client.insert(f"{db}.{table}", rows, column_names=cols)
                    tm.SINK_ROWS.labels(table).inc(len(rows))
            for ev in t.control:  # after this poll's rows, so a deletion also removes what came just before it
                self._apply_control(ev)


def build(config: RunstreamConfig, client: Client | None = None) -> Sink:
    return Sink(config, client)
