"""What the MLflow API reads, and how: SQL over runstream's tables through a ClickHouse HTTP endpoint (the sink's read
endpoint, or a ClickHouse server), as any reader does; the statements are runstream.wire.views', each scoped to the
projects the caller's token may read. Synchronous: the API runs it on worker threads."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from runstream.wire import views
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import Unavailable
from runstream.wire.mlflow import LIFECYCLE_TAG
from runstream.wire.search import DELETED_TAG, Cond, Order

log = logging.getLogger("runstream.mlflow")


@dataclass
class DatasetRow:
    """A dataset a run used: its lineage (uri, digest) and, where MLflow logged it, MLflow's description."""
    uri: str
    digest: str
    name: str = ""
    source_type: str = ""
    source: str = ""
    schema: str = ""
    profile: str = ""
    tags: dict[str, str] = field(default_factory=dict)


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
    datasets: list[DatasetRow] = field(default_factory=list)  # logged models it read among them (views.MODEL_URI)
    model_outputs: list[tuple[str, int]] = field(default_factory=list)  # model id, step


def _ms(t: datetime) -> int:
    return (t.replace(tzinfo=None) - views.EPOCH) // timedelta(milliseconds=1)


def mlflow_run(r: views.RunRow) -> RunRow:
    """A run as MLflow shows it, from its run_index row, by views.mlflow_attrs' rules: the mlflow.runName and
    mlflow.user tags rename it and name its user, LIFECYCLE_TAG marks it deleted; deleted tags are absent."""
    tags = {k: v["value"] for k, v in r.tags.items() if v["value"] != DELETED_TAG}
    lifecycle = "deleted" if tags.pop(LIFECYCLE_TAG, "") == "deleted" else "active"  # not one of MLflow's tags
    d, first = r.derived(), r.first
    return RunRow(r.project, r.run_id, tags.get("mlflow.runName") or first["name"], str(d["status"]).upper(),
                  tags.get("mlflow.user", ""), lifecycle,
                  _ms(first["started"]), None if d["ended"] is None else _ms(d["ended"]), list(first["tags"]),
                  str(first["parent_run_id"]), tags, {k: v["value"] for k, v in r.params.items()},
                  [(k, float(m["value"]), _ms(m["ts"]), int(m["step"])) for k, m in sorted(r.metrics.items())])


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

    def query(self, statement: views.Statement) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
            return list(client.query(statement.sql, parameters=statement.params).result_rows)
        except (ClickHouseError, OSError) as exc:
            with self._lock:
                self._client = None  # the next read connects again
            raise Unavailable(f"the store did not answer ({type(exc).__name__}: {str(exc)[:300]}); retry") from exc

    # ---- projects and runs ----

    def stored_projects(self) -> dict[str, int]:
        """Projects with runs, and when their first run started (ms)."""
        return {str(p): int(ms) for p, ms in self.query(views.stored_projects(self.db))}

    def run_projects(self, run_id: str) -> list[str]:
        """Every project holding a run with this id (ids are unique within a project, not across projects)."""
        return [str(r[0]) for r in self.query(views.run_projects(self.db, run_id))]

    def run_status(self, project: str, run_id: str) -> str | None:
        rows = self.query(views.run_status(self.db, project, run_id))
        return str(rows[0][0]) if rows else None

    def search(self, projects: list[str], conds: list[Cond], orders: list[Order], *, view: str, offset: int,
               limit: int, models: bool | None = False) -> list[RunRow]:
        """One page of runs (``limit`` rows from ``offset``) with their tags, params and latest metrics, without their
        datasets and model outputs (see ``details``). ``models``: only logged models (True), only runs (False), or
        both (None)."""
        found = self.query(views.mlflow_runs(self.db, projects, conds, orders, view=view, offset=offset, limit=limit,
                                             models=models))
        return [mlflow_run(views.RunRow(*r)) for r in found]

    def details(self, runs: list[RunRow]) -> None:
        """Fill in the datasets and model outputs of ``runs``."""
        if not runs:
            return
        by_key = {(r.project, r.run_id): r for r in runs}
        projects, ids = [r.project for r in runs], [r.run_id for r in runs]
        for project, run_id, *ds in self.query(views.datasets_of(self.db, projects, ids)):
            if (run := by_key.get((project, run_id))) is not None:
                uri, digest, name, source_type, source, schema, profile, tags = ds
                run.datasets.append(DatasetRow(str(uri), str(digest), str(name), str(source_type), str(source), str(schema),
                                               str(profile), dict(tags)))
        for project, run_id, model_id, step in self.query(views.model_outputs(self.db, projects, ids)):
            if (run := by_key.get((project, run_id))) is not None:
                run.model_outputs.append((str(model_id), int(step)))

    def datasets(self, projects: list[str], limit: int = 1000) -> list[tuple[str, ...]]:
        """(project, uri, name, digest, context) of the datasets runs of ``projects`` used, most recently used first."""
        return [tuple(str(v) for v in row) for row in self.query(views.datasets(self.db, projects, limit))]

    def history(self, project: str, run_id: str, metric: str, *, offset: int, limit: int) -> list[tuple[float, int, int]]:
        """(value, timestamp ms, step) of one metric, by step then time."""
        rows = self.query(views.points(self.db, project, run_id, metric, offset=offset, limit=limit))
        return [(float(v), int(ms), int(s)) for v, ms, s in rows]

    def history_range(self, pairs: list[tuple[str, str]], metric: str, start_step: int | None = None,
                      end_step: int | None = None) -> list[tuple[str, float, int, int]]:
        """(run id, value, timestamp, step) of one metric of several runs, within a step range."""
        wanted = set(pairs)
        rows = self.query(views.points_of_runs(self.db, pairs, metric, start_step, end_step))
        return [(str(r), float(v), int(ms), int(s)) for proj, r, v, ms, s in rows if (proj, r) in wanted]

    def stored_batches(self, projects: list[str], batch_ids: list[str]) -> set[str]:
        """Which of these batches storage holds (the batch ledger is written after a poll's rows)."""
        return {str(r[0]) for r in self.query(views.stored_batches(self.db, projects, batch_ids))}
