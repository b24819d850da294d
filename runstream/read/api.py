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
import math
import shutil
import ssl
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runstream.wire import search, views
from runstream.wire.config import RunstreamConfig, is_loopback
from runstream.wire.errors import RunstreamError, ValidationError
from runstream.wire.files import file_digest
from runstream.wire.search import DELETED_TAG

Filter = views.Filter  # a value (equality) or (op, value) with op in views.OPS


def _client_lib() -> Any:
    try:
        import clickhouse_connect
    except ModuleNotFoundError as exc:
        raise RunstreamError("the read API needs clickhouse-connect: pip install 'runstream[read]'") from exc
    return clickhouse_connect


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

        tag_filters = dict(tags) if isinstance(tags, Mapping) else {t: None for t in (tags or [])}
        try:
            groups = search.parse_filter_any(filter, where="filter", typed_params=True)
            orders = search.parse_order_by([order_by] if isinstance(order_by, str) else list(order_by or ()))
            statement = views.runs(
                self.database, project, groups=groups, orders=orders, status=status, run_ids=run_ids, name=name,
                started_after_ms=None if started_after is None else _epoch_ms(started_after),
                started_before_ms=None if started_before is None else _epoch_ms(started_before),
                params=params, tags=tag_filters, metrics=metrics, limit=limit, offset=offset)
        except ValidationError as exc:
            raise ValueError(str(exc)) from exc
        table = self.client.query_arrow(statement.sql, parameters=statement.params)
        if not table.num_rows:
            return pd.DataFrame([], columns=views.RUN_COLUMNS)
        return runs_frame(table)

    def run(self, run_id: str, project: str | None = None) -> RunInfo:
        """One run: its fields, ``config`` (params, typed), ``tags``, ``summary`` (latest value of each metric),
        lineage and artifacts. Raises LookupError for an unknown run, or a run id two projects hold without
        ``project``."""
        found = views.run_rows(self.client, views.run_record(self.database, run_id, project))
        if not found:
            raise LookupError(f"no run {run_id!r}" + (f" in project {project!r}" if project else ""))
        if len(found) > 1:
            raise LookupError(f"run id {run_id!r} is in projects {found[0].project!r} and {found[1].project!r}: pass project=")
        r = found[0]
        row, st = r.fields(), r.first
        return RunInfo(api=self, id=run_id, project=r.project, name=row["name"], status=row["status"],
                       started=row["started"], ended=row["ended"], parent_run_id=row["parent_run_id"],
                       fork_step=row["fork_step"], points_acked=row["points_acked"],
                       points_dropped=r.points_dropped, sessions=row["sessions"],
                       config={k: _decode(v["value"]) for k, v in sorted(r.params.items())},
                       tags=r.live_tags(),
                       summary={k: v["value"] for k, v in sorted(r.metrics.items())},
                       git={"commit": st["git_commit"], "branch": st["git_branch"]}, hostname=st["hostname"])

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
        chain: list[tuple[str, int | None]] = [(run_id, None)]
        child = run_id
        for _ in range(16 if include_parent else 0):  # forks of forks, bounded
            parent = self._fork_of(child, project)
            if parent is None:
                break
            child = parent[0]
            chain.append(parent)
        statement = views.history(self.database, chain, metric, project, buckets)
        # Arrow all the way (pandas and numpy from it): clickhouse-connect's own DataFrame path is slower.
        table = self.client.query_arrow(statement.sql, parameters=statement.params)
        if format == "arrow":
            return table
        if format == "numpy":
            return {name: table.column(name).to_numpy() for name in table.column_names}
        return table.to_pandas()

    def _fork_of(self, run_id: str, project: str | None) -> tuple[str, int] | None:
        """(parent, fork step) of a fork, else None. Start records never change: remembered once read."""
        key = (run_id, project)
        if key not in self._forks:
            found = self._rows(views.fork_of(self.database, run_id, project))
            if not found:
                return None  # not stored yet: ask again next time
            parent, step = found[0]
            self._forks[key] = (parent, int(step)) if parent and step is not None else None
        return self._forks[key]

    def _rows(self, statement: views.Statement) -> list[tuple[Any, ...]]:
        return views.rows(self.client, statement)

    def scan_history(self, run_id: str, keys: Sequence[str] | None = None, *, project: str | None = None,
                     include_parent: bool = True) -> Iterator[dict[str, Any]]:
        """Every point of a run, a dict per step (``step``, ``_ts`` and one key per metric logged at it), in step
        order: one query streamed in the engine's blocks, so a long run never sits whole in memory (on either side:
        the endpoint sends a large result on as the engine produces it). ``keys`` limits the
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
            statement = views.history_scan(self.database, rid, project, up_to=up_to, keys=keys)
            # Column blocks: clickhouse-connect decodes them in a third less time than row blocks.
            with self.client.query_column_block_stream(statement.sql, parameters=statement.params) as blocks:
                for steps, names, values, stamps in blocks:
                    for step, name, value, ts in zip(steps, names, values, stamps):
                        if not row or row["step"] != step:
                            if row:
                                yield row
                            row = {"step": step, "_ts": ts}
                        elif ts > row["_ts"]:
                            row["_ts"] = ts
                        row[name] = value
        if row:
            yield row

    # -- artifacts ----------------------------------------------------------------------------------------
    def artifacts(self, run_id: str, project: str | None = None) -> list[dict[str, Any]]:
        """What a run logged as artifacts: uri (as logged), stored_uri (where the bytes are kept), size, sha256."""
        rows = self._rows(views.artifacts(self.database, run_id, project))
        return [dict(zip(("uri", "stored_uri", "size", "sha256", "logged"), r)) for r in rows]

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
        ancestors: list[dict[str, Any]] = []
        child = run_id
        for _ in range(64):
            row = self._rows(views.parent_of(self.database, child, project))
            if not row or not row[0][0]:
                break
            child = row[0][0]
            ancestors.append({"run_id": child, "fork_step": row[0][1]})
        datasets = self._rows(views.run_datasets(self.database, run_id, project))
        artifacts = self.artifacts(run_id, project)
        consumers = self._rows(views.consumers(self.database, run_id, project))
        return {"run_id": run_id, "ancestors": ancestors,
                "datasets": [dict(zip(("uri", "digest", "size"), d)) for d in datasets],
                "artifacts": artifacts,
                "used_by": [c[0] for c in consumers]}


def runs_frame(table: Any) -> Any:
    """The runs' DataFrame from run_index rows as Arrow (RUN_INDEX_COLUMNS): RUN_COLUMNS, their live tags, then
    ``params.<key>`` (decoded) and ``metrics.<name>`` in name order, NaN where a run has none; the same frame as
    RunRow's fields give. Column by column from Arrow: decoding 1,000 rows' nested records into Python took more
    than the query."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    n = table.num_rows
    start = _first(_arrow_column(table, "start"))
    finish, sessions = _arrow_column(table, "finish"), _arrow_column(table, "sessions")
    last = _first(finish)
    more_sessions = np.diff(sessions.offsets.to_numpy())
    status = last.field("status").fill_null("running").to_pylist()
    ended = _naive(last.field("ended")).to_numpy(zero_copy_only=False).astype("datetime64[us]")
    acked = last.field("points_acked").to_pylist()
    # A resumed run, or a finish stored twice (a replay): the view's rules, run by run.
    odd = np.flatnonzero((more_sessions > 0) | (np.diff(finish.offsets.to_numpy()) > 1))
    if len(odd):
        at = pa.array(odd)
        for i, fin, ses in zip(odd.tolist(), finish.take(at).to_pylist(), sessions.take(at).to_pylist()):
            d = views.derive(fin, dict(ses))
            status[i], acked[i] = d["status"], d["points_acked"]
            ended[i] = np.datetime64("NaT") if d["ended"] is None else np.datetime64(d["ended"].replace(tzinfo=None), "us")
    data: dict[str, Any] = {
        "project": _arrow_column(table, "project").to_pylist(), "run_id": _arrow_column(table, "run_id").to_pylist(),
        "name": start.field("name").to_pylist(), "status": status,
        "started": _naive(start.field("started")).to_numpy(zero_copy_only=False).astype("datetime64[us]"),
        "ended": ended, "parent_run_id": start.field("parent_run_id").to_pylist(),
        "fork_step": start.field("fork_step").to_pylist(), "points_acked": acked,
        "sessions": (1 + more_sessions).astype("int64")}
    tags: list[list[str]] = [[] for _ in range(n)]
    rows, keys, values = _map_entries(_arrow_column(table, "tags"))
    if len(rows):
        live = np.asarray(values.field("value").to_numpy(zero_copy_only=False) != DELETED_TAG)
        for r, k in zip(rows[live].tolist(), keys.filter(pa.array(live)).to_pylist()):
            tags[r].append(k)
        for names in tags:
            names.sort()
    data["tags"] = tags
    wide: dict[str, Any] = {}
    for prefix, column in (("params.", "params"), ("metrics.", "metrics")):
        rows, keys, values = _map_entries(_arrow_column(table, column))
        if not len(rows):
            continue
        if prefix == "metrics.":
            cells = values.field("value").to_numpy(zero_copy_only=False)
        else:
            cells = _decoded(values.field("value"))
        names = keys.dictionary_encode()
        name_of = names.indices.to_numpy(zero_copy_only=False)
        for j, name in enumerate(names.dictionary.to_pylist()):
            chosen = name_of == j
            col = np.full(n, math.nan, dtype=cells.dtype)
            col[rows[chosen]] = cells[chosen]
            # Object columns as lists: pandas infers their dtype as it would from the values.
            wide[prefix + name] = col.tolist() if col.dtype == object else col
    return pd.DataFrame({**data, **{k: wide[k] for k in sorted(wide)}})


def _arrow_column(table: Any, name: str) -> Any:
    column = table.column(name)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _first(lists: Any) -> Any:
    """The first item of each list or map of an Arrow array (null for an empty one)."""
    import numpy as np
    import pyarrow as pa

    offsets = lists.offsets.to_numpy()
    return lists.values.take(pa.array(offsets[:-1], mask=np.diff(offsets) == 0))


def _naive(timestamps: Any) -> Any:
    """Arrow timestamps in UTC without their zone, as the rest of the read API gives them."""
    import pyarrow as pa

    return timestamps.cast(pa.timestamp(timestamps.type.unit))


def _map_entries(maps: Any) -> tuple[Any, Any, Any]:
    """(row, key, value) of every entry of an Arrow map array, rows as numpy."""
    import numpy as np

    offsets = maps.offsets.to_numpy()
    entries = maps.values.slice(offsets[0], offsets[-1] - offsets[0])
    return np.repeat(np.arange(len(maps)), np.diff(offsets)), entries.field("key"), entries.field("value")


def _decoded(texts: Any) -> Any:
    """JSON-encoded params as a numpy object array of their values: a sweep's runs share few distinct values, so each
    is decoded once, but a list or dict is decoded per cell (no two cells share a mutable value)."""
    import numpy as np

    encoded = texts.dictionary_encode()
    distinct = encoded.dictionary.to_pylist()
    values = np.empty(len(distinct), dtype=object)
    for i, text in enumerate(distinct):  # one by one: numpy would unpack decoded lists into a second dimension
        values[i] = _decode(text)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    cells = values[codes]
    mutable = [i for i, v in enumerate(values) if isinstance(v, list | dict)]
    if mutable:
        for at in np.flatnonzero(np.isin(codes, mutable)).tolist():
            cells[at] = _decode(distinct[codes[at]])
    return cells


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
