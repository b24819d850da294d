"""What the MLflow API reads, and how: SQL over runstream's tables through a ClickHouse HTTP endpoint (the sink's read
endpoint, or a ClickHouse server), as any reader does. Every statement is built here, scoped to the projects the
caller's token may read, with every value a server-side parameter. Synchronous: the API runs it on worker threads."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import Unavailable
from runstream.wire.mlflow import DEFAULT_PROJECT, LIFECYCLE_TAG
from runstream.wire.search import (
    DELETED_TAG,
    LATEST,
    MODEL_LABEL,
    Cond,
    Order,
    sql_conditions,
    sql_order,
)
from runstream.wire.sql import QueryParams

log = logging.getLogger("runstream.mlflow")

@dataclass
class RunRow:
    project: str
    run_id: str
    run_name: str
    status: str
    user_id: str
    lifecycle_stage: str
    start_time: int
    end_time: int | None
    labels: list[str]
    parent_run_id: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, timestamp, step
    datasets: list[tuple[str, str]] = field(default_factory=list)            # uri, digest


RUN_COLUMNS = ("project", "run_id", "run_name", "status", "user_id", "lifecycle_stage", "start_time", "end_time",
               "labels", "parent_run_id")


class Reads:
    def __init__(self, config: RunstreamConfig) -> None:
        self.config = config
        self.db = config.clickhouse.database
        self._client: Any = None
        self._lock = threading.Lock()

    def _connect(self) -> Any:
        m = self.config.mlflow
        url = m.sql_url or self.config.clickhouse.url or f"http://{self.config.sink.sql_listen}"
        u = urlparse(url)
        password = u.password or ""
        # The sink's endpoint takes a read token; a ClickHouse server, the credentials of its URL.
        if not password and (m.sql_url or not self.config.clickhouse.url):
            try:
                password = self.config.mlflow_token_path.read_text().strip()
            except OSError as exc:
                raise Unavailable(f"the MLflow API has no read token ({self.config.mlflow_token_path}: {exc.strerror}); "
                                  "`runstream up` makes one, or set mlflow.sql_token_file") from exc
        return clickhouse_connect.get_client(
            host=u.hostname or "127.0.0.1", port=u.port or (8443 if u.scheme == "https" else 8123),
            secure=u.scheme == "https", username=u.username or "mlflow", password=password,
            autogenerate_session_id=False, connect_timeout=5, send_receive_timeout=60)

    def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
            return list(client.query(sql.replace("{db}", self.db), parameters=params).result_rows)
        except (ClickHouseError, OSError) as exc:
            with self._lock:
                self._client = None  # the next read connects again
            raise Unavailable(f"the store did not answer ({type(exc).__name__}: {str(exc)[:300]}); retry") from exc

    # ---- projects and runs ----

    def stored_projects(self) -> dict[str, int]:
        """Projects with runs, and when their first run started (ms)."""
        rows = self.query("SELECT project, toUnixTimestamp64Milli(min(started)) FROM {db}.run_starts GROUP BY project", {})
        return {str(p): int(ms) for p, ms in rows}

    def run_projects(self, run_id: str) -> list[str]:
        """Every project holding a run with this id (ids are unique within a project, not across projects)."""
        p = QueryParams()
        rows = self.query(f"SELECT DISTINCT project FROM {{db}}.run_starts WHERE run_id = {p.add(run_id, 'String')} "
                          "LIMIT 100", p.values)
        return [str(r[0]) for r in rows]

    def run_status(self, project: str, run_id: str) -> str | None:
        p = QueryParams()
        rows = self.query(f"SELECT status FROM {{db}}.runs WHERE project = {p.add(project, 'String')} "
                          f"AND run_id = {p.add(run_id, 'String')}", p.values)
        return str(rows[0][0]) if rows else None

    def search(self, projects: list[str], conds: list[Cond], orders: list[Order], *, view: str, offset: int,
               limit: int, models: bool | None = False) -> list[RunRow]:
        """One page of runs (``limit`` rows from ``offset``), without their details (see ``details``). ``models``:
        only logged models (True), only runs (False), or both (None)."""
        p = QueryParams()
        scope_value = p.add(projects, "Array(String)")
        scope = f"project IN {scope_value}"
        conditions = sql_conditions(conds, "{db}", scope, p)
        if models is not None:
            conditions.append(f"{'' if models else 'NOT '}has(labels, {p.add(MODEL_LABEL, 'String')})")
        if view == "ACTIVE_ONLY":
            conditions.append("lifecycle_stage = 'active'")
        elif view == "DELETED_ONLY":
            conditions.append("lifecycle_stage = 'deleted'")
        joins, terms = sql_order(orders, "{db}", scope, p)
        keys = p.add(["mlflow.runName", "mlflow.user", LIFECYCLE_TAG, "mlflow.model.status"], "Array(String)")
        deleted = p.add(DELETED_TAG, "String")
        run = f"""
            SELECT r.project AS project, r.run_id AS run_id,
                   if(t.name_tag != '' AND t.name_tag != {deleted}, t.name_tag, r.name) AS run_name,
                   upper(r.status) AS status, if(t.user != {deleted}, t.user, '') AS user_id,
                   if(t.life = 'deleted', 'deleted', 'active') AS lifecycle_stage,
                   toUnixTimestamp64Milli(r.started) AS start_time,
                   if(isNull(r.ended), NULL, toUnixTimestamp64Milli(assumeNotNull(r.ended))) AS end_time,
                   concat('mlflow-artifacts:/', if(r.project = '{DEFAULT_PROJECT}', '0', r.project), '/', r.run_id,
                          '/artifacts') AS artifact_uri,
                   r.tags AS labels, r.parent_run_id AS parent_run_id, t.model_status AS model_status
            FROM {{db}}.runs AS r
            LEFT JOIN (
                SELECT project, run_id, argMaxIf(value, ts, key = 'mlflow.runName') AS name_tag,
                       argMaxIf(value, ts, key = 'mlflow.user') AS user, argMaxIf(value, ts, key = '{LIFECYCLE_TAG}') AS life,
                       argMaxIf(value, ts, key = 'mlflow.model.status') AS model_status
                FROM {{db}}.tags WHERE {scope} AND key IN {keys} GROUP BY project, run_id
            ) AS t ON t.project = r.project AND t.run_id = r.run_id
            WHERE r.project IN {scope_value}"""
        where = " AND ".join(conditions) or "1"
        columns = ", ".join(f"run.{c}" for c in RUN_COLUMNS)
        order = ", ".join([*terms, "run.start_time DESC", "run.run_id ASC"])
        sql = (f"SELECT {columns} FROM (SELECT * FROM ({run}) WHERE {where}) AS run {' '.join(joins)} "
               f"ORDER BY {order} LIMIT {int(limit)} OFFSET {int(offset)}")
        return [RunRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]),
                       None if r[7] is None else int(r[7]), list(r[8]), str(r[9])) for r in self.query(sql, p.values)]

    def details(self, runs: list[RunRow]) -> None:
        """Fill in tags, params, latest metrics and datasets of ``runs``."""
        if not runs:
            return
        by_key = {(r.project, r.run_id): r for r in runs}
        p = QueryParams()
        where = (f"project IN {p.add(sorted({r.project for r in runs}), 'Array(String)')} "
                 f"AND run_id IN {p.add(sorted({r.run_id for r in runs}), 'Array(String)')}")
        for project, run_id, key, value in self.query(
                f"SELECT project, run_id, key, argMax(value, ts) FROM {{db}}.tags WHERE {where} GROUP BY project, run_id, key",
                p.values):
            run = by_key.get((project, run_id))
            if run is not None and value != DELETED_TAG and key != LIFECYCLE_TAG:
                run.tags[key] = value
        for project, run_id, key, value in self.query(
                f"SELECT project, run_id, key, argMax(value, ts) FROM {{db}}.params WHERE {where} GROUP BY project, run_id, key",
                p.values):
            if (run := by_key.get((project, run_id))) is not None:
                run.params[key] = value
        for project, run_id, metric, value, ms, step in self.query(
                f"SELECT project, run_id, metric, {LATEST}, argMax(toUnixTimestamp64Milli(ts), (step, ts, value)), max(step) "
                f"FROM {{db}}.metric_points WHERE {where} GROUP BY project, run_id, metric ORDER BY metric", p.values):
            if (run := by_key.get((project, run_id))) is not None:
                run.metrics.append((str(metric), float(value), int(ms), int(step)))
        for project, run_id, uri, digest in self.query(
                f"SELECT project, run_id, uri, digest FROM {{db}}.datasets_used WHERE {where} "
                f"GROUP BY project, run_id, uri, digest ORDER BY min(ts)", p.values):
            if (run := by_key.get((project, run_id))) is not None:
                run.datasets.append((str(uri), str(digest)))

    def datasets(self, projects: list[str], limit: int = 1000) -> list[tuple[str, str, str]]:
        """(project, uri, digest) of the datasets runs of ``projects`` used, most recently used first."""
        p = QueryParams()
        rows = self.query(f"SELECT project, uri, digest FROM {{db}}.datasets_used WHERE project IN "
                          f"{p.add(projects, 'Array(String)')} GROUP BY project, uri, digest ORDER BY max(ts) DESC "
                          f"LIMIT {int(limit)}", p.values)
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def history(self, project: str, run_id: str, metric: str, *, offset: int, limit: int) -> list[tuple[float, int, int]]:
        """(value, timestamp ms, step) of one metric, by step then time."""
        p = QueryParams()
        rows = self.query(
            f"SELECT value, toUnixTimestamp64Milli(ts), step FROM {{db}}.metrics WHERE project = {p.add(project, 'String')} "
            f"AND run_id = {p.add(run_id, 'String')} AND metric = {p.add(metric, 'String')} ORDER BY step, ts "
            f"LIMIT {int(limit)} OFFSET {int(offset)}", p.values)
        return [(float(v), int(ms), int(s)) for v, ms, s in rows]

    def history_range(self, pairs: list[tuple[str, str]], metric: str, start_step: int | None = None,
                      end_step: int | None = None) -> list[tuple[str, float, int, int]]:
        """(run id, value, timestamp, step) of one metric of several runs, within a step range."""
        p = QueryParams()
        where = (f"project IN {p.add(sorted({a for a, _ in pairs}), 'Array(String)')} "
                 f"AND run_id IN {p.add(sorted({b for _, b in pairs}), 'Array(String)')} AND metric = {p.add(metric, 'String')}")
        if start_step is not None:
            where += f" AND step >= {p.add(start_step, 'Int64')}"
        if end_step is not None:
            where += f" AND step <= {p.add(end_step, 'Int64')}"
        wanted = set(pairs)
        rows = self.query(f"SELECT project, run_id, value, toUnixTimestamp64Milli(ts), step FROM {{db}}.metrics "
                          f"WHERE {where} ORDER BY run_id, step, ts", p.values)
        return [(str(r), float(v), int(ms), int(s)) for proj, r, v, ms, s in rows if (proj, r) in wanted]

    def stored_batches(self, projects: list[str], batch_ids: list[str]) -> set[str]:
        """Which of these batches storage holds (the batch ledger is written after a poll's rows)."""
        p = QueryParams()
        rows = self.query(f"SELECT batch_id FROM {{db}}.batches WHERE project IN {p.add(projects, 'Array(String)')} "
                          f"AND batch_id IN {p.add(batch_ids, 'Array(String)')}", p.values)
        return {str(r[0]) for r in rows}

