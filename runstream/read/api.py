"""The read API: runs, their metric history, comparisons and lineage, from Python, over the same read path as every
other client (the running stack's SQL endpoint, or a ClickHouse server). Needs ``pip install 'runstream[read]'``.

    api = runstream.Api()                      # the local `runstream up`, or client.sql_url / client.token
    df = api.runs("vision", params={"lr": (">", 1e-3), "optimizer": "sgd"}, metrics={"val_loss": ("<", 0.4)})
    loss = api.history(df.run_id[0], "loss", buckets=500)   # min / max / avg per bucket of steps

Params keep their type: they are stored JSON-encoded, and a comparison with a number compares numbers, with a
string compares strings, with a bool or None compares those.
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runstream.wire import search
from runstream.wire.config import RunstreamConfig, is_loopback
from runstream.wire.errors import RunstreamError, ValidationError
from runstream.wire.files import file_digest
from runstream.wire.sql import QueryParams

OPS = ("=", "!=", "<", "<=", ">", ">=")
Filter = Any  # a value (equality) or (op, value) with op in OPS


def _client_lib() -> Any:
    try:
        import clickhouse_connect
    except ModuleNotFoundError as exc:
        raise RunstreamError("the read API needs clickhouse-connect: pip install 'runstream[read]'") from exc
    return clickhouse_connect


def _split(flt: Filter) -> tuple[str, Any]:
    if isinstance(flt, tuple) and len(flt) == 2 and flt[0] in OPS:
        return flt[0], flt[1]
    return "=", flt


def _typed(column: str, op: str, value: Any, p: QueryParams) -> str:
    """A comparison of a JSON-encoded ``column`` with a Python value, by the value's type."""
    if value is None:
        return f"{column} {'!=' if op == '!=' else '='} 'null'"
    if isinstance(value, bool):
        return f"{column} {op} {p.add('true' if value else 'false', 'String')}"
    if isinstance(value, int | float):
        # JSON numbers parse as numbers; a JSON string ("0.1" quoted) is NULL here and matches nothing.
        return f"toFloat64OrNull({column}) {op} {p.add(float(value), 'Float64')}"
    return f"JSONExtractString({column}) {op} {p.add(str(value), 'String')}"


class Api:
    """Reads from the stack. ``url``: the SQL endpoint (``http://127.0.0.1:8124``) or a ClickHouse server;
    ``token``: a token with the ``read`` scope. Both default to ``client.sql_url`` / ``client.token``
    (RUNSTREAM_SQL_URL / RUNSTREAM_TOKEN), then the local `runstream up` (its stack.json)."""

    def __init__(self, url: str | None = None, token: str | None = None, *, database: str | None = None,
                 config: RunstreamConfig | None = None, artifact_url: str | None = None) -> None:
        cfg = config or RunstreamConfig.load()
        info = cfg.stack_info()
        url = url or cfg.sql_url()
        if not url:
            raise RunstreamError("no SQL endpoint: pass Api(url=...), set RUNSTREAM_SQL_URL, or start `runstream up`")
        token = token if token is not None else (cfg.client.token or info.get("token", ""))
        self.database = database or info.get("database") or cfg.clickhouse.database
        self._forks: dict[tuple[str, str | None], tuple[str, int] | None] = {}
        self.token, self.tls_ca = token or "", cfg.client.tls_ca
        # Where uploaded artifacts' bytes are served (the mlflow role's artifact proxy).
        self.artifact_url = artifact_url.rstrip("/") if artifact_url else cfg.artifact_url()
        u = urlparse(url)
        self.client = _client_lib().get_client(
            host=u.hostname or "127.0.0.1", port=u.port or (8443 if u.scheme == "https" else 8123),
            secure=u.scheme == "https", username=u.username or ("runstream" if token else "default"),
            password=u.password or token or "", database=self.database, ca_cert=cfg.client.tls_ca or None,
            # On loopback compressing the result only costs both ends CPU.
            compress=not is_loopback(u.hostname or "127.0.0.1"))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------------------
    def runs(self, project: str | None = None, *, filter: str | None = None, order_by: str | Sequence[str] | None = None,
             name: str | None = None, started_after: Any = None, started_before: Any = None, status: str | None = None,
             params: Mapping[str, Filter] | None = None, tags: Iterable[str] | Mapping[str, Filter] | None = None,
             metrics: Mapping[str, Filter] | None = None, run_ids: Sequence[str] | None = None,
             limit: int | None = 1000, offset: int = 0) -> Any:
        """Runs, newest first, one row each: the run's fields, ``params.<key>`` (typed), ``tags`` and
        ``metrics.<name>`` (latest value). A pandas DataFrame.

        ``filter``: MLflow's search syntax over ``metrics.``, ``params.``, ``tags.`` and ``attributes.`` (run_id,
        run_name, status, start_time, end_time), with OR between groups of AND (``metrics.acc > 0.9 and
        params.optimizer = 'sgd' or tags.best IS NOT NULL``); a param compares as the value given (``params.lr <
        0.01`` numerically). ``order_by``: MLflow's clauses (``"metrics.val_loss ASC"``, ``"params.lr DESC"``).
        ``name``: exact, or a LIKE pattern with ``%``. ``started_after``/``started_before``: datetimes or Unix
        seconds. Keyword filters: params and latest metrics by value or (op, value); tags by name (list) or name ->
        value; status; run ids. Pages: ``limit`` (None: all) and ``offset``."""
        import pandas as pd

        p = QueryParams()
        db = f"`{self.database}`"
        scope = f"project = {p.add(project, 'String')}" if project is not None else "1"
        where = [scope]
        if status is not None:
            where.append(f"status = {p.add(status, 'String')}")
        if run_ids is not None:
            where.append(f"run_id IN {p.add(list(run_ids), 'Array(String)')}")
        if name is not None:
            where.append(f"name {'LIKE' if '%' in name else '='} {p.add(name, 'String')}")
        for bound, op in ((started_after, ">="), (started_before, "<")):
            if bound is not None:
                where.append(f"start_time {op} {p.add(_epoch_ms(bound), 'Int64')}")
        for key, flt in (params or {}).items():
            op, value = _split(flt)
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.params FINAL WHERE key = "
                         f"{p.add(key, 'String')} AND {_typed('value', op, value, p)})")
        tag_filters = dict(tags) if isinstance(tags, Mapping) else {t: None for t in (tags or [])}
        for key, flt in tag_filters.items():
            cond = "1"
            if flt is not None:
                op, value = _split(flt)
                cond = f"value {op} {p.add(str(value), 'String')}"
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.tags FINAL WHERE key = "
                         f"{p.add(key, 'String')} AND {cond})")
        for metric, flt in (metrics or {}).items():
            op, value = _split(flt)
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.latest WHERE metric = "
                         f"{p.add(metric, 'String')} AND value {op} {p.add(float(value), 'Float64')})")
        try:
            groups = search.parse_filter_any(filter, where="filter", typed_params=True)
            orders = search.parse_order_by([order_by] if isinstance(order_by, str) else list(order_by or ()))
            if groups:
                where.append("(" + " OR ".join("(" + " AND ".join(search.sql_conditions(g, db, scope, p, latest=True)
                                                                  or ["1"]) + ")" for g in groups) + ")")
            joins, terms = search.sql_order(orders, db, scope, p, latest=True)
        except ValidationError as exc:
            raise ValueError(str(exc)) from exc
        cols = ["project", "run_id", "name", "status", "started", "ended", "parent_run_id", "fork_step",
                "points_acked", "sessions"]
        run = (f"SELECT {', '.join(cols)}, name AS run_name, status, '' AS user_id, 'active' AS lifecycle_stage, "
               "toUnixTimestamp64Milli(started) AS start_time, "
               "if(isNull(ended), NULL, toUnixTimestamp64Milli(assumeNotNull(ended))) AS end_time, '' AS artifact_uri, "
               f"'' AS model_status FROM {db}.runs")
        order = ", ".join([*terms, "run.started DESC", "run.run_id ASC"])
        page = f" LIMIT {int(limit)}" if limit is not None else ""
        page += f" OFFSET {int(offset)}" if offset else ""
        rows = self.client.query(f"SELECT {', '.join('run.' + c for c in cols)} FROM (SELECT * FROM ({run}) WHERE "
                                 f"{' AND '.join(where)}) AS run {' '.join(joins)} ORDER BY {order}{page}",
                                 parameters=p.values).result_rows
        df = pd.DataFrame(rows, columns=cols)
        if df.empty:
            return df
        keys = {"ids": list(df.run_id), "projects": sorted(set(df.project))}
        scope = "project IN {projects:Array(String)} AND run_id IN {ids:Array(String)}"
        extra: dict[str, dict[str, Any]] = {rid: {} for rid in df.run_id}
        for rid, key, value in self.client.query(f"SELECT run_id, key, value FROM params FINAL WHERE {scope}",
                                                 parameters=keys).result_rows:
            extra[rid][f"params.{key}"] = _decode(value)
        tag_lists: dict[str, list[str]] = {rid: [] for rid in df.run_id}
        for rid, key in self.client.query(f"SELECT run_id, key FROM tags FINAL WHERE {scope} ORDER BY key",
                                          parameters=keys).result_rows:
            tag_lists[rid].append(key)
        for rid, metric, value in self.client.query(f"SELECT run_id, metric, value FROM latest WHERE {scope}",
                                                    parameters=keys).result_rows:
            extra[rid][f"metrics.{metric}"] = value
        df["tags"] = [tag_lists[r] for r in df.run_id]
        wide = pd.DataFrame([extra[r] for r in df.run_id], index=df.index)
        return pd.concat([df, wide[sorted(wide.columns)]], axis=1)

    def run(self, run_id: str, project: str | None = None) -> RunInfo:
        """One run: its fields, ``config`` (params, typed), ``tags``, ``summary`` (latest value of each metric),
        lineage and artifacts. Raises LookupError for an unknown run, or a run id two projects hold without
        ``project``."""
        p = QueryParams()
        where = f"run_id = {p.add(run_id, 'String')}" + (f" AND project = {p.add(project, 'String')}" if project else "")
        cols = ["project", "run_id", "name", "status", "started", "ended", "parent_run_id", "fork_step", "points_acked",
                "points_dropped", "sessions", "git_commit", "git_branch", "hostname"]
        # One query (each costs the read endpoint ~10 ms of CPU at least): the run's row with its params, tags and
        # latest metrics as arrays.
        # (Scalar subqueries by the same condition, not correlated ones, which ClickHouse servers before 25.x lack; a
        # run id two projects hold is refused below either way.)
        kv = "(SELECT groupArray((key, value)) FROM {t} FINAL WHERE {where})"
        latest = f"(SELECT groupArray((metric, value)) FROM latest WHERE {where})"
        rows = self.client.query(
            f"SELECT {', '.join(cols)}, {kv.format(t='params', where=where)}, {kv.format(t='tags', where=where)}, "
            f"{latest} FROM runs WHERE {where} LIMIT 2", parameters=p.values).result_rows
        if not rows:
            raise LookupError(f"no run {run_id!r}" + (f" in project {project!r}" if project else ""))
        if len(rows) > 1:
            raise LookupError(f"run id {run_id!r} is in projects {rows[0][0]!r} and {rows[1][0]!r}: pass project=")
        row = dict(zip(cols, rows[0]))
        params, tag_rows, latest_rows = rows[0][len(cols):]
        config = {k: _decode(v) for k, v in sorted(params)}
        tags = dict(sorted(tag_rows))
        summary = dict(sorted(latest_rows))
        return RunInfo(api=self, id=run_id, project=row["project"], name=row["name"], status=row["status"],
                       started=row["started"], ended=row["ended"], parent_run_id=row["parent_run_id"],
                       fork_step=row["fork_step"], points_acked=row["points_acked"],
                       points_dropped=row["points_dropped"], sessions=row["sessions"], config=config, tags=tags,
                       summary=summary, git={"commit": row["git_commit"], "branch": row["git_branch"]},
                       hostname=row["hostname"])

    def compare(self, run_ids: Sequence[str], project: str | None = None) -> Any:
        """Runs side by side: one column per run, one row per field, param and latest metric."""
        df = self.runs(project, run_ids=run_ids)
        return df.set_index("run_id").reindex([r for r in run_ids if r in set(df.run_id)]).T

    # -- history ------------------------------------------------------------------------------------------
    def history(self, run_id: str, metric: str | Sequence[str] | None = None, *, keys: Sequence[str] | None = None,
                project: str | None = None, buckets: int | None = None, samples: int | None = None,
                include_parent: bool = True, format: str = "pandas") -> Any:
        """A metric's points by step: columns step, value, ts. With ``buckets`` (or ``samples``), at most that many
        rows of min / max / avg (and count) per range of steps, for long series. A fork's history starts with its
        parent's points up to the fork step (``include_parent``). ``format``: pandas, arrow or numpy (a dict of
        arrays). Several metrics (``keys=[...]`` or a list): one pandas frame, a row per step, a column per metric
        (the average of a bucket with ``buckets``)."""
        if format not in ("pandas", "arrow", "numpy"):
            raise ValueError("format must be pandas, arrow or numpy")
        buckets = buckets or samples
        names = list(keys) if keys is not None else [metric] if isinstance(metric, str) else list(metric or [])
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("history() needs a metric name, or keys=[names]")
        if keys is not None or not isinstance(metric, str):
            if format != "pandas":
                raise ValueError("several metrics come as one pandas frame: format='pandas'")
            import pandas as pd
            frames = [self.history(run_id, n, project=project, buckets=buckets, include_parent=include_parent)
                      [["step", "value"]].rename(columns={"value": n}).set_index("step") for n in names]
            return pd.concat(frames, axis=1).sort_index().reset_index()
        metric = names[0]
        p = QueryParams()
        parts = [self._segment(run_id, metric, project, None, p)]
        child = run_id
        for _ in range(16 if include_parent else 0):  # forks of forks, bounded
            parent = self._fork_of(child, project)
            if parent is None:
                break
            child, fork_step = parent
            parts.append(self._segment(child, metric, project, fork_step, p))
        series = " UNION ALL ".join(parts)
        if buckets:
            # Bucket width from the run's newest step (metric_latest: no second pass over the series); a fork's
            # parent segment lies below its own steps.
            scope = self._scope(run_id, metric, project, p)
            sql = (f"WITH (SELECT greatest(1, intDiv(ifNull(max(last_step), 0), {int(buckets)}) + 1) FROM metric_latest "
                   f"WHERE {scope}) AS w "
                   f"SELECT min(st) AS step, avg(v) AS value, min(v) AS min, max(v) AS max, count() AS count, "
                   f"max(t) AS ts FROM (SELECT step AS st, value AS v, ts AS t FROM ({series})) "
                   f"GROUP BY intDiv(st, w) ORDER BY step")
        elif len(parts) == 1:
            sql = f"{series} ORDER BY step"
        else:
            sql = f"SELECT step, value, ts FROM ({series}) ORDER BY step"
        # Arrow all the way (pandas and numpy from it): clickhouse-connect's own DataFrame path is slower.
        table = self.client.query_arrow(sql, parameters=p.values)
        if format == "arrow":
            return table
        if format == "numpy":
            return {name: table.column(name).to_numpy() for name in table.column_names}
        return table.to_pandas()

    def _fork_of(self, run_id: str, project: str | None) -> tuple[str, int] | None:
        """(parent, fork step) of a fork, else None. Start records never change: remembered once read."""
        key = (run_id, project)
        if key not in self._forks:
            found = self.client.query("SELECT parent_run_id, fork_step FROM run_starts WHERE run_id = {r:String}"
                                      + (" AND project = {pr:String}" if project else "") + " LIMIT 1",
                                      parameters={"r": run_id, "pr": project}).result_rows
            if not found:
                return None  # not stored yet: ask again next time
            parent, step = found[0]
            self._forks[key] = (parent, int(step)) if parent and step is not None else None
        return self._forks[key]

    @staticmethod
    def _scope(run_id: str, metric: str, project: str | None, p: QueryParams) -> str:
        """One run's metric (in one project, when given)."""
        cond = f"run_id = {p.add(run_id, 'String')} AND metric = {p.add(metric, 'String')}"
        return cond + (f" AND project = {p.add(project, 'String')}" if project is not None else "")

    @classmethod
    def _segment(cls, run_id: str, metric: str, project: str | None, up_to: int | None, p: QueryParams) -> str:
        cond = cls._scope(run_id, metric, project, p)
        if up_to is not None:
            cond += f" AND step <= {p.add(up_to, 'Int64')}"
        return f"SELECT step, value, ts FROM metrics WHERE {cond}"

    def scan_history(self, run_id: str, keys: Sequence[str] | None = None, *, project: str | None = None,
                     page_size: int = 10_000, include_parent: bool = True) -> Iterator[dict[str, Any]]:
        """Every point of a run, a dict per step (``step``, ``_ts`` and one key per metric logged at it), in step
        order, read in pages of ``page_size`` points so a long run never sits whole in memory. ``keys`` limits the
        metrics. A fork's scan starts with its parent's points up to the fork step."""
        chain: list[tuple[str, int | None]] = [(run_id, None)]
        child = run_id
        for _ in range(16 if include_parent else 0):
            parent = self._fork_of(child, project)
            if parent is None:
                break
            child = parent[0]
            chain.append(parent)
        row: dict[str, Any] = {}
        for rid, up_to in reversed(chain):
            after: tuple[int, str] | None = None
            while True:
                p = QueryParams()
                cond = f"run_id = {p.add(rid, 'String')}"
                cond += f" AND project = {p.add(project, 'String')}" if project is not None else ""
                cond += f" AND step <= {p.add(up_to, 'Int64')}" if up_to is not None else ""
                cond += f" AND metric IN {p.add(list(keys), 'Array(String)')}" if keys is not None else ""
                if after is not None:
                    cond += f" AND (step, metric) > ({p.add(after[0], 'Int64')}, {p.add(after[1], 'String')})"
                page = self.client.query(f"SELECT step, metric, value, ts FROM metrics WHERE {cond} ORDER BY step, metric "
                                         f"LIMIT {int(page_size)}", parameters=p.values).result_rows
                for step, name, value, ts in page:
                    if row and row["step"] != step:
                        yield row
                        row = {}
                    if not row:
                        row = {"step": step, "_ts": ts}
                    row[name] = value
                    row["_ts"] = max(row["_ts"], ts)
                if len(page) < page_size:
                    break
                after = (page[-1][0], page[-1][1])
        if row:
            yield row

    # -- artifacts ----------------------------------------------------------------------------------------
    def artifacts(self, run_id: str, project: str | None = None) -> list[dict[str, Any]]:
        """What a run logged as artifacts: uri (as logged), stored_uri (where the bytes are kept), size, sha256."""
        rows = self.client.query(
            "SELECT uri, any(stored_uri), any(size), sha256 FROM artifacts WHERE run_id = {r:String}"
            + (" AND project = {p:String}" if project else "") + " GROUP BY uri, sha256 ORDER BY uri",
            parameters={"r": run_id, "p": project}).result_rows
        return [dict(zip(("uri", "stored_uri", "size", "sha256"), r)) for r in rows]

    def download(self, run_id: str, name: str, dest: str | Path = ".", *, project: str | None = None) -> Path:
        """Fetch a run's artifact (by its uri, or the uri's last part) into ``dest`` (a folder) and check its
        sha256. Bytes kept by the artifact server (uploaded by ``log_artifact``) come over HTTP(S) with this API's
        token (``artifact_url``, else ``client.artifact_url``, else the local stack's); bytes in a folder this
        machine sees are copied."""
        found = [a for a in self.artifacts(run_id, project)
                 if a["uri"] == name or a["uri"].rstrip("/").rsplit("/", 1)[-1] == name]
        stored = [a for a in found if a["stored_uri"]]
        if not stored:
            raise LookupError(f"run {run_id!r} has no stored artifact {name!r}" + (" (logged, but its bytes were not "
                              "uploaded or copied anywhere)" if found else ""))
        art = stored[-1]
        target = Path(dest) / str(art["uri"]).rstrip("/").rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        src = art["stored_uri"]
        if art["uri"].startswith("mlflow-artifacts:/"):  # uploaded: the server that keeps it serves it
            if not self.artifact_url:
                raise RunstreamError(f"artifact {name!r} is kept by the artifact server: pass Api(artifact_url=...) "
                                     "or set client.artifact_url (RUNSTREAM_ARTIFACT_URL)")
            src = f"{self.artifact_url}/api/2.0/mlflow-artifacts/artifacts/{art['uri'].removeprefix('mlflow-artifacts:/')}"
        if src.startswith(("http://", "https://")):
            req = urllib.request.Request(src, headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
            with urllib.request.urlopen(req, timeout=60, context=self._ssl(src)) as resp, open(target, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
        else:
            shutil.copyfile(src.removeprefix("file://"), target)
        digest, _ = file_digest(target)
        if art["sha256"] and digest != art["sha256"]:
            target.unlink()
            raise RunstreamError(f"artifact {name!r} of run {run_id!r}: sha256 {digest} is not the logged "
                                 f"{art['sha256']}; the stored copy changed or the download was cut")
        return target

    def _ssl(self, url: str) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.tls_ca or None) if url.startswith("https://") else None

    # -- lineage ------------------------------------------------------------------------------------------
    def lineage(self, run_id: str, project: str | None = None) -> dict[str, Any]:
        """Where a run came from and what it touched: its ancestors (parent / fork chain), datasets it used,
        artifacts it made, and runs that used its artifacts."""
        scope = {"r": run_id, "pr": project}
        pfilter = " AND project = {pr:String}" if project else ""
        ancestors: list[dict[str, Any]] = []
        child = run_id
        for _ in range(64):
            row = self.client.query("SELECT parent_run_id, fork_step FROM runs WHERE run_id = {r:String}" + pfilter
                                    + " LIMIT 1", parameters={**scope, "r": child}).result_rows
            if not row or not row[0][0]:
                break
            child = row[0][0]
            ancestors.append({"run_id": child, "fork_step": row[0][1]})
        datasets = self.client.query("SELECT uri, digest, size FROM datasets_used WHERE run_id = {r:String}" + pfilter
                                     + " ORDER BY uri", parameters=scope).result_rows
        artifacts = self.client.query("SELECT uri, stored_uri, size, sha256 FROM artifacts WHERE run_id = {r:String}"
                                      + pfilter + " ORDER BY uri", parameters=scope).result_rows
        consumers = self.client.query(
            "SELECT DISTINCT run_id FROM datasets_used WHERE digest != '' AND digest IN "
            "(SELECT sha256 FROM artifacts WHERE run_id = {r:String}" + pfilter + ") ORDER BY run_id",
            parameters=scope).result_rows
        return {"run_id": run_id, "ancestors": ancestors,
                "datasets": [dict(zip(("uri", "digest", "size"), d)) for d in datasets],
                "artifacts": [dict(zip(("uri", "stored_uri", "size", "sha256"), a)) for a in artifacts],
                "used_by": [c[0] for c in consumers]}


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _epoch_ms(value: Any) -> int:
    """A datetime (naive: UTC) or Unix seconds, in milliseconds."""
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * 1000)
    raise ValueError(f"started_after/started_before: a datetime or Unix seconds, not {value!r}")


@dataclass
class RunInfo:
    """One run as ``Api.run`` reads it; ``history``, ``scan_history``, ``artifacts``, ``download`` and ``lineage``
    read more of it."""
    api: Api = field(repr=False)
    id: str
    project: str
    name: str
    status: str
    started: Any
    ended: Any
    parent_run_id: str
    fork_step: int | None
    points_acked: int | None
    points_dropped: int
    sessions: int
    config: dict[str, Any]
    tags: dict[str, str]
    summary: dict[str, float]
    git: dict[str, str]
    hostname: str

    def history(self, keys: str | Sequence[str], **kw: Any) -> Any:
        return self.api.history(self.id, keys, project=self.project, **kw)

    def scan_history(self, keys: Sequence[str] | None = None, **kw: Any) -> Iterator[dict[str, Any]]:
        return self.api.scan_history(self.id, keys, project=self.project, **kw)

    def artifacts(self) -> list[dict[str, Any]]:
        return self.api.artifacts(self.id, self.project)

    def download(self, name: str, dest: str | Path = ".") -> Path:
        return self.api.download(self.id, name, dest, project=self.project)

    def lineage(self) -> dict[str, Any]:
        return self.api.lineage(self.id, self.project)
