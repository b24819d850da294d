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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from runstream.wire.config import RunstreamConfig, is_loopback
from runstream.wire.errors import RunstreamError
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
                 config: RunstreamConfig | None = None) -> None:
        cfg = config or RunstreamConfig.load()
        info = cfg.stack_info()
        url = url or cfg.client.sql_url or info.get("sql", "")
        if not url:
            raise RunstreamError("no SQL endpoint: pass Api(url=...), set RUNSTREAM_SQL_URL, or start `runstream up`")
        token = token if token is not None else (cfg.client.token or info.get("token", ""))
        self.database = database or info.get("database") or cfg.clickhouse.database
        self._forks: dict[tuple[str, str | None], tuple[str, int] | None] = {}
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
    def runs(self, project: str | None = None, *, status: str | None = None, params: Mapping[str, Filter] | None = None,
             tags: Iterable[str] | Mapping[str, Filter] | None = None, metrics: Mapping[str, Filter] | None = None,
             run_ids: Sequence[str] | None = None, limit: int = 1000) -> Any:
        """Runs, newest first, one row each: the run's fields, ``params.<key>`` (typed), ``tags`` and
        ``metrics.<name>`` (latest value). Filters: params and latest metrics by value or (op, value); tags by
        name (list) or name -> value; status; run ids. A pandas DataFrame."""
        import pandas as pd

        p = QueryParams()
        where = ["1"]
        if project is not None:
            where.append(f"project = {p.add(project, 'String')}")
        if status is not None:
            where.append(f"status = {p.add(status, 'String')}")
        if run_ids is not None:
            where.append(f"run_id IN {p.add(list(run_ids), 'Array(String)')}")
        for key, flt in (params or {}).items():
            op, value = _split(flt)
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM params FINAL WHERE key = "
                         f"{p.add(key, 'String')} AND {_typed('value', op, value, p)})")
        tag_filters = dict(tags) if isinstance(tags, Mapping) else {t: None for t in (tags or [])}
        for key, flt in tag_filters.items():
            cond = "1"
            if flt is not None:
                op, value = _split(flt)
                cond = f"value {op} {p.add(str(value), 'String')}"
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM tags FINAL WHERE key = "
                         f"{p.add(key, 'String')} AND {cond})")
        for name, flt in (metrics or {}).items():
            op, value = _split(flt)
            where.append(f"(project, run_id) IN (SELECT project, run_id FROM latest WHERE metric = "
                         f"{p.add(name, 'String')} AND value {op} {p.add(float(value), 'Float64')})")
        cols = ["project", "run_id", "name", "status", "started", "ended", "parent_run_id", "fork_step",
                "points_acked", "sessions"]
        rows = self.client.query(f"SELECT {', '.join(cols)} FROM runs WHERE {' AND '.join(where)} "
                                 f"ORDER BY started DESC LIMIT {int(limit)}", parameters=p.values).result_rows
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

    def compare(self, run_ids: Sequence[str], project: str | None = None) -> Any:
        """Runs side by side: one column per run, one row per field, param and latest metric."""
        df = self.runs(project, run_ids=run_ids)
        return df.set_index("run_id").reindex([r for r in run_ids if r in set(df.run_id)]).T

    # -- history ------------------------------------------------------------------------------------------
    def history(self, run_id: str, metric: str, *, project: str | None = None, buckets: int | None = None,
                include_parent: bool = True, format: str = "pandas") -> Any:
        """A metric's points by step: columns step, value, ts. With ``buckets``, at most that many rows of
        min / max / avg (and count) per range of steps, for long series. A fork's history starts with its
        parent's points up to the fork step (``include_parent``). ``format``: pandas, arrow or numpy (a dict of
        arrays)."""
        if format not in ("pandas", "arrow", "numpy"):
            raise ValueError("format must be pandas, arrow or numpy")
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
