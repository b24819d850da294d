"""Every SQL statement runstream's readers run over the stored views (runs, run_starts, metrics, metric_points,
latest, metric_latest, params, tags, artifacts, datasets_used, batches, alerts, fleet, audit_log). The read API, the
MLflow role, the CLI and the demo build their statements here and run them through their own ClickHouse client (the
sink's read endpoint or a ClickHouse server), so one view's columns and semantics are written down once.

Each builder returns a Statement: SQL with every value a server-side parameter ({name:Type}), never pasted into the
text, and the parameters for the client. ``db`` names the database; "" reads the client's own."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from runstream.wire.errors import ValidationError
from runstream.wire.mlflow import DEFAULT_PROJECT, LIFECYCLE_TAG
from runstream.wire.search import DELETED_TAG, MODEL_LABEL, Cond, Order
from runstream.wire.sql import QueryParams

Row = tuple[Any, ...]
EPOCH = datetime(1970, 1, 1)


class Statement(NamedTuple):
    sql: str
    params: dict[str, Any]


class Client(Protocol):
    """What runs a statement: clickhouse-connect's client (its ``query`` returns ``result_rows``)."""

    def query(self, query: str, parameters: Any = None) -> Any: ...


def rows(client: Client, statement: Statement) -> list[Row]:
    """A statement's rows as tuples, through a clickhouse-connect client."""
    return [tuple(r) for r in client.query(statement.sql, parameters=statement.params).result_rows]


def table(db: str, name: str) -> str:
    return f"`{db}`.{name}" if db else name


def _run_in(db: str, run_id: str, project: str | None, p: QueryParams) -> str:
    """One run (in one project, when given)."""
    return f"run_id = {p.add(run_id, 'String')}" + (f" AND project = {p.add(project, 'String')}" if project is not None else "")


# ---- filters: MLflow's search syntax (parsed by runstream.wire.search) as conditions over the `run` subquery ----

# The value MLflow sees of a stored param: params are stored JSON-encoded; a JSON string shows as its text.
def param_text(column: str) -> str:
    return f"if(startsWith({column}, '\"'), JSONExtractString({column}), {column})"


MODEL_AS_RUN = {"name": "run_name", "model_id": "run_id", "source_run_id": "parent_run_id", "status": "model_status",
                "creation_timestamp": "start_time", "creation_time": "start_time"}


def _compare(column: str, c: Cond, p: QueryParams) -> str:
    if c.op in ("IN", "NOT IN"):
        return f"{column} {c.op} {p.add(list(c.value), 'Array(String)')}"
    if isinstance(c.value, float):
        if math.isnan(c.value):
            return "0"
        return f"{column} {c.op} {p.add(c.value, 'Float64')}"
    return f"{column} {c.op} {p.add(c.value, 'String')}"


def dataset_condition(c: Cond, db: str, scope: str, p: QueryParams) -> str:
    """A condition on the datasets a run used (a subquery on datasets_used; ``scope`` limits it to the searched
    projects)."""
    if c.key == "entries":  # MLflow's logged-model search: any of (name, digest or '' for any digest)
        names, digests = zip(*c.value)
        return (f"(project, run_id) IN (SELECT project, run_id FROM {table(db, 'datasets_used')} WHERE "
                f"{scope} AND arrayExists((n, d) -> n = {DATASET_NAME} AND (d = '' OR d = digest), "
                f"{p.add(list(names), 'Array(String)')}, {p.add(list(digests), 'Array(String)')}))")
    column = {"name": DATASET_NAME, "digest": "digest", "context": DATASET_CONTEXT}.get(c.key)
    if column is None:
        raise ValidationError("filter", f"datasets.{c.key}: datasets are filtered by name, digest or context")
    return (f"(project, run_id) IN (SELECT project, run_id FROM {table(db, 'datasets_used')} WHERE {scope} "
            f"AND {_compare(column, c, p)})")


# ---- runs ----

def run_projects(db: str, run_id: str) -> Statement:
    """Every project holding a run with this id (ids are unique within a project, not across projects)."""
    p = QueryParams()
    return Statement(f"SELECT DISTINCT project FROM {table(db, 'run_starts')} WHERE run_id = {p.add(run_id, 'String')} "
                     "ORDER BY project LIMIT 100", p.values)


def stored_projects(db: str) -> Statement:
    """Projects with runs, and when their first run started (ms)."""
    return Statement(f"SELECT project, toUnixTimestamp64Milli(min(started)) FROM {table(db, 'run_starts')} GROUP BY project", {})


def run_status(db: str, project: str, run_id: str) -> Statement:
    p = QueryParams()
    return Statement(f"SELECT status FROM {table(db, 'runs')} WHERE {_run_in(db, run_id, project, p)}", p.values)


def fork_of(db: str, run_id: str, project: str | None) -> Statement:
    """(parent run id, fork step) from a run's start record."""
    p = QueryParams()
    return Statement(f"SELECT parent_run_id, fork_step FROM {table(db, 'run_starts')} WHERE {_run_in(db, run_id, project, p)} "
                     "LIMIT 1", p.values)


def resume_point(db: str, project: str, run_id: str) -> Statement:
    """(name, last_step) of a run: its start record's name and the highest step stored for any of its metrics (NULL
    before its first point); no row for a run the store does not hold."""
    p = QueryParams()
    where = _run_in(db, run_id, project, p)
    return Statement(f"SELECT name, (SELECT maxOrNull(last_step) FROM {table(db, 'metric_latest')} WHERE {where}) "
                     f"AS last_step FROM {table(db, 'run_starts')} WHERE {where} LIMIT 1", p.values)


def parent_of(db: str, run_id: str, project: str | None) -> Statement:
    """(parent run id, fork step) from a run's row."""
    p = QueryParams()
    return Statement(f"SELECT parent_run_id, fork_step FROM {table(db, 'runs')} WHERE {_run_in(db, run_id, project, p)} "
                     "LIMIT 1", p.values)


Filter = Any  # a value (equality) or (op, value) with op in OPS
OPS = ("=", "!=", "<", "<=", ">", ">=")
# The read API's runs and run pages read run_index (migrations/0014_run_index.sql): one row per run with its start and
# finish records, later sessions, params, tags and latest metrics, so a search or a run page is one query on one table.
# Its raw columns come back and RunRow derives the runs view's fields from them in Python: the engine plans each
# expression of a query (about 1 ms apiece here), which cost more than the scan.
RUN_INDEX_COLUMNS = ["project", "run_id", "start", "finish", "sessions", "params", "tags", "metrics"]
RUN_COLUMNS = ["project", "run_id", "name", "status", "started", "ended", "parent_run_id", "fork_step", "points_acked",
               "sessions"]
# The runs view's fields over run_index's columns, for conditions and orders (the view in 0014 has the same rules).
_LAST_SESSION = "arraySort(s -> s.resumed, mapValues(sessions))[-1]"
_FINISH = "arrayReverseSort(finish)[1]"
INDEX_ATTRS = {
    "run_id": "run_id", "run_name": "start[1].name", "parent_run_id": "start[1].parent_run_id",
    "start_time": "toUnixTimestamp64Milli(start[1].started)", "created": "toUnixTimestamp64Milli(start[1].started)",
    "status": f"if(empty(sessions), if(empty(finish), 'running', {_FINISH}.status), {_LAST_SESSION}.status)",
    "end_time": f"if(empty(sessions), if(empty(finish), NULL, toUnixTimestamp64Milli({_FINISH}.ended)), "
                f"nullIf(toUnixTimestamp64Milli({_LAST_SESSION}.ended), 0))",
    "user_id": "''", "lifecycle_stage": "'active'", "artifact_uri": "''", "model_status": "''",
}
INDEX_MAPS = {"metric": "metrics", "param": "params", "tag": "tags"}  # a condition's kind -> its run_index map


class RunRow(NamedTuple):
    """A run_index row, with the runs view's fields (status, ended, points_acked, ...) derived as the view does."""
    project: str
    run_id: str
    start: list[dict[str, Any]]
    finish: list[dict[str, Any]]
    sessions: dict[str, dict[str, Any]]
    params: dict[str, dict[str, Any]]
    tags: dict[str, dict[str, Any]]
    metrics: dict[str, dict[str, Any]]

    @property
    def first(self) -> dict[str, Any]:
        return self.start[0]

    @property
    def points_dropped(self) -> int:
        return int(self.derived()["points_dropped"])

    def derived(self) -> dict[str, Any]:
        return derive(self.finish, self.sessions)

    def fields(self) -> dict[str, Any]:
        """The RUN_COLUMNS of this run."""
        st, d = self.first, self.derived()
        return {"project": self.project, "run_id": self.run_id, "name": st["name"], "status": d["status"],
                "started": st["started"], "ended": d["ended"], "parent_run_id": st["parent_run_id"],
                "fork_step": st["fork_step"], "points_acked": d["points_acked"], "sessions": 1 + len(self.sessions)}

    def live_tags(self) -> dict[str, str]:
        if not self.tags:
            return {}
        return {k: v["value"] for k, v in sorted(self.tags.items()) if v["value"] != DELETED_TAG}


def derive(finish: Sequence[Mapping[str, Any]], sessions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """status, ended, points_acked (every finished session's; None while one runs) and points_dropped of a run_index
    row's ``finish`` records and ``sessions``, by the rules of the runs view: the latest session's, else the first
    session's finish, else running."""
    if not sessions:  # most runs: one session, finished once (or running)
        if not finish:
            return {"status": "running", "ended": None, "points_acked": None, "points_dropped": 0}
        f = finish[0] if len(finish) == 1 else max(finish, key=lambda f: (f["ended"], f["status"]))
        return {"status": f["status"], "ended": f["ended"], "points_acked": int(f["points_acked"]),
                "points_dropped": int(f["points_dropped"])}
    fin = max(finish, key=lambda f: (f["ended"], f["status"])) if finish else None
    last = max(sessions.values(), key=lambda s: s["resumed"])
    acked = int(fin["points_acked"] if fin else 0) + sum(int(s["points_acked"]) for s in sessions.values())
    dropped = int(fin["points_dropped"] if fin else 0) + sum(int(s["points_dropped"]) for s in sessions.values())
    return {"status": last["status"], "ended": None if _is_epoch(last["ended"]) else last["ended"],
            "points_acked": None if last["status"] == "running" else acked, "points_dropped": dropped}


def _is_epoch(value: Any) -> bool:
    """A session's end not yet stored (0 in run_index)."""
    return bool(value.replace(tzinfo=None) == EPOCH)


def run_rows(client: Client, statement: Statement) -> list[RunRow]:
    return [RunRow(*r) for r in rows(client, statement)]


def split_filter(flt: Filter) -> tuple[str, Any]:
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


def _entry(column: str, key: str, p: QueryParams) -> tuple[str, str]:
    """(has the key, its value) of a run_index map; a deleted tag counts as absent."""
    k = p.add(key, "String")
    has = f"mapContains({column}, {k})"
    if column == "tags":
        has = f"({has} AND {column}[{k}].value != {p.add(DELETED_TAG, 'String')})"
    return has, f"{column}[{k}].value"


def index_conditions(conds: list[Cond], db: str, scope: str, p: QueryParams,
                     attrs: Mapping[str, str] = INDEX_ATTRS) -> list[str]:
    """MLflow search conditions (runstream.wire.search) over run_index: params compare as the value given;
    attributes are ``attrs``' expressions."""
    out = []
    for c in conds:
        if c.kind == "attr":
            if c.op in ("IN", "NOT IN") and c.key != "run_id":
                raise ValidationError("filter", f"{c.op} applies to attributes.run_id only")
            column = attrs[c.key]
            if c.key == "end_time" and c.op != "!=":
                out.append(f"isNotNull({column}) AND {_compare(column, c, p)}")
            else:
                out.append(_compare(column, c, p))
        elif c.kind in ("metric", "param", "tag"):
            has, value = _entry(INDEX_MAPS[c.kind], c.key, p)
            if c.op == "IS NULL":
                out.append(f"NOT {has}")
            elif c.op == "IS NOT NULL":
                out.append(has)
            elif c.op in ("IN", "NOT IN"):
                raise ValidationError("filter", f"{c.op} applies to attributes.run_id and datasets only")
            elif c.kind == "param":
                text = f"toFloat64OrNull({value})" if isinstance(c.value, float) else param_text(value)
                out.append(f"{has} AND {_compare(text, c, p)}")
            else:
                out.append(f"{has} AND {_compare(value, c, p)}")
        else:
            out.append(dataset_condition(c, db, scope, p))
    return out


def index_order(orders: list[Order], p: QueryParams, attrs: Mapping[str, str] = INDEX_ATTRS, *,
                numeric_params: bool = True) -> list[str]:
    """ORDER BY terms over run_index for MLflow's order clauses; runs without the value come last either way, and
    (``numeric_params``) params that are numbers sort numerically, before text; else as text, as MLflow does."""
    terms = []
    for o in orders:
        direction = "ASC" if o.ascending else "DESC"
        if o.kind == "attr":
            column = attrs[o.key]
            terms += [f"isNull({column})", f"{column} {direction}"]
            continue
        has, value = _entry(INDEX_MAPS[o.kind], o.key, p)
        terms.append(f"NOT {has}")
        if o.kind == "param" and not numeric_params:
            terms.append(f"{param_text(value)} {direction}")
        elif o.kind == "param":
            number = f"toFloat64OrNull({value})"
            terms += [f"isNull({number})", f"{number} {direction}", f"{param_text(value)} {direction}"]
        else:
            terms.append(f"{value} {direction}")
    return terms


def runs(db: str, project: str | None, *, groups: list[list[Cond]], orders: list[Order], status: str | None = None,
         run_ids: Sequence[str] | None = None, name: str | None = None, started_after_ms: int | None = None,
         started_before_ms: int | None = None, params: Mapping[str, Filter] | None = None,
         tags: Mapping[str, Filter | None] | None = None, metrics: Mapping[str, Filter] | None = None,
         limit: int | None = 1000, offset: int = 0) -> Statement:
    """The read API's runs (RUN_INDEX_COLUMNS rows, for RunRow), newest first unless ``orders`` say otherwise:
    ``groups`` of conditions (OR between groups, AND within), then keyword filters; params compare by the Python
    value's type, metrics by their latest value."""
    p = QueryParams()
    scope = f"project = {p.add(project, 'String')}" if project is not None else "1"
    where = [scope, "notEmpty(start)"]
    if status is not None:
        where.append(f"{INDEX_ATTRS['status']} = {p.add(status, 'String')}")
    if run_ids is not None:
        where.append(f"run_id IN {p.add(list(run_ids), 'Array(String)')}")
    if name is not None:
        where.append(f"start[1].name {'LIKE' if '%' in name else '='} {p.add(name, 'String')}")
    for bound, op in ((started_after_ms, ">="), (started_before_ms, "<")):
        if bound is not None:
            where.append(f"{INDEX_ATTRS['start_time']} {op} {p.add(bound, 'Int64')}")
    for key, flt in (params or {}).items():
        op, value = split_filter(flt)
        has, column = _entry("params", key, p)
        where.append(f"{has} AND {_typed(column, op, value, p)}")
    for key, flt in (tags or {}).items():
        has, column = _entry("tags", key, p)
        if flt is not None:
            op, value = split_filter(flt)
            has += f" AND {column} {op} {p.add(str(value), 'String')}"
        where.append(has)
    for metric, flt in (metrics or {}).items():
        op, value = split_filter(flt)
        has, column = _entry("metrics", metric, p)
        where.append(f"{has} AND {column} {op} {p.add(float(value), 'Float64')}")
    if groups:
        where.append("(" + " OR ".join("(" + " AND ".join(index_conditions(g, db, scope, p) or ["1"]) + ")"
                                       for g in groups) + ")")
    return _index_rows(db, where, [*index_order(orders, p), *NEWEST_FIRST], p, limit=limit, offset=offset)


NEWEST_FIRST = ["start[1].started DESC", "run_id ASC"]  # the runs' order after any the caller asks for


def _index_rows(db: str, where: list[str], order: list[str], p: QueryParams, *, limit: int | None,
                offset: int = 0) -> Statement:
    """RUN_INDEX_COLUMNS of the run_index rows (merged: FINAL) meeting every condition of ``where``, in ``order``."""
    page = f" LIMIT {int(limit)}" if limit is not None else ""
    page += f" OFFSET {int(offset)}" if offset else ""
    return Statement(f"SELECT {', '.join(RUN_INDEX_COLUMNS)} FROM {table(db, 'run_index')} FINAL "
                     f"WHERE {' AND '.join(f'({w})' for w in where)} ORDER BY {', '.join(order)}{page}", p.values)


def _keys_in(projects: Sequence[str], run_ids: Sequence[str], p: QueryParams) -> str:
    return (f"project IN {p.add(sorted(set(projects)), 'Array(String)')} "
            f"AND run_id IN {p.add(sorted(set(run_ids)), 'Array(String)')}")


def _of_runs(columns: str, source: str, projects: Sequence[str], run_ids: Sequence[str], tail: str) -> Statement:
    """``columns`` of ``source`` for these (project, run) keys, then ``tail`` (GROUP BY / ORDER BY)."""
    p = QueryParams()
    return Statement(f"SELECT {columns} FROM {source} WHERE {_keys_in(projects, run_ids, p)} {tail}", p.values)


def run_record(db: str, run_id: str, project: str | None) -> Statement:
    """One run's run_index row (RUN_INDEX_COLUMNS, for RunRow); at most two rows (a run id two projects hold,
    without ``project``)."""
    p = QueryParams()
    return _index_rows(db, [_run_in(db, run_id, project, p), "notEmpty(start)"], ["project"], p, limit=2)


# ---- the MLflow API's runs: run_index rows with MLflow's tags applied (mlflow.runName, mlflow.user, lifecycle) ----

def mlflow_attrs(p: QueryParams) -> dict[str, str]:
    """INDEX_ATTRS as MLflow sees a run: its tags rename it and name its user, LIFECYCLE_TAG marks it deleted, and
    the status is upper case (mlflow_api.reads builds the same fields from a RunRow)."""
    deleted = p.add(DELETED_TAG, "String")

    def tag(key: str) -> str:
        return f"tags[{p.add(key, 'String')}].value"  # '' when absent
    name, user = tag("mlflow.runName"), tag("mlflow.user")
    return {**INDEX_ATTRS, "run_name": f"if({name} NOT IN ('', {deleted}), {name}, start[1].name)",
            "status": f"upper({INDEX_ATTRS['status']})", "user_id": f"if({user} != {deleted}, {user}, '')",
            "lifecycle_stage": f"if({tag(LIFECYCLE_TAG)} = 'deleted', 'deleted', 'active')",
            "artifact_uri": f"concat('mlflow-artifacts:/', if(project = {p.add(DEFAULT_PROJECT, 'String')}, '0', "
                            "project), '/', run_id, '/artifacts')",
            "model_status": tag("mlflow.model.status")}


def mlflow_runs(db: str, projects: list[str], conds: list[Cond], orders: list[Order], *, view: str, offset: int,
                limit: int, models: bool | None) -> Statement:
    """One page of runs for the MLflow API (RUN_INDEX_COLUMNS rows, for RunRow), newest first unless ``orders`` say
    otherwise. ``view``: ACTIVE_ONLY, DELETED_ONLY or ALL; ``models``: only logged models (True), only runs (False),
    or both (None). Params compare and sort as text, as MLflow's do."""
    p = QueryParams()
    scope = f"project IN {p.add(projects, 'Array(String)')}"
    attrs = mlflow_attrs(p)
    where = [scope, "notEmpty(start)", *index_conditions(conds, db, scope, p, attrs)]
    if models is not None:
        where.append(f"{'' if models else 'NOT '}has(start[1].tags, {p.add(MODEL_LABEL, 'String')})")
    if view in ("ACTIVE_ONLY", "DELETED_ONLY"):
        where.append(f"{attrs['lifecycle_stage']} = {p.add(view.split('_')[0].lower(), 'String')}")
    return _index_rows(db, where, [*index_order(orders, p, attrs, numeric_params=False), *NEWEST_FIRST], p,
                       limit=limit, offset=offset)


MODEL_URI = "models:/"  # a logged model a run read (datasets_used) or produced (artifacts): models:/<model id>
# A dataset's name: MLflow's where it gave one, else its URI (the SDK's datasets).
DATASET_NAME = "if(name = '', uri, name)"
DATASET_CONTEXT = "input_tags['mlflow.data.context']"


def datasets_of(db: str, projects: Sequence[str], run_ids: Sequence[str]) -> Statement:
    """(project, run_id, uri, digest, name, source_type, source, schema, profile, input_tags) of the datasets these
    runs used, first used first; a dataset used twice keeps its first description, as MLflow does."""
    return _of_runs("project, run_id, uri, digest, argMin(name, ts), argMin(source_type, ts), argMin(source, ts), "
                    "argMin(schema, ts), argMin(profile, ts), argMin(input_tags, ts)", table(db, "datasets_used"),
                    projects, run_ids, "GROUP BY project, run_id, uri, digest ORDER BY min(ts)")


def model_outputs(db: str, projects: Sequence[str], run_ids: Sequence[str]) -> Statement:
    """(project, run_id, model id, step) of the logged models these runs produced (MLflow's outputs)."""
    return _of_runs(f"project, run_id, substring(uri, {len(MODEL_URI) + 1}), argMin(step, ts)", table(db, "artifacts"),
                    projects, run_ids, f"AND startsWith(uri, '{MODEL_URI}') GROUP BY project, run_id, uri ORDER BY min(ts)")


def datasets(db: str, projects: list[str], limit: int = 1000) -> Statement:
    """(project, uri, name, digest, context) of the datasets runs of ``projects`` used, most recently used first."""
    p = QueryParams()
    return Statement(f"SELECT project, uri, name, digest, {DATASET_CONTEXT} AS context FROM "
                     f"{table(db, 'datasets_used')} WHERE project IN {p.add(projects, 'Array(String)')} "
                     f"GROUP BY project, uri, name, digest, context ORDER BY max(ts) DESC LIMIT {int(limit)}", p.values)


def stored_batches(db: str, projects: list[str], batch_ids: list[str]) -> Statement:
    """Which of these batches storage holds (the batch ledger is written after a poll's rows)."""
    p = QueryParams()
    return Statement(f"SELECT batch_id FROM {table(db, 'batches')} WHERE project IN {p.add(projects, 'Array(String)')} "
                     f"AND batch_id IN {p.add(batch_ids, 'Array(String)')}", p.values)


def batch_count(db: str, project: str, run_id: str) -> Statement:
    """How many batches of one run storage holds."""
    p = QueryParams()
    return Statement(f"SELECT count() FROM {table(db, 'batches')} WHERE {_run_in(db, run_id, project, p)}", p.values)


# ---- metric history ----

def _points(db: str) -> str:
    """A run's points, each once: metric_points FINAL read directly. The metrics view is the same rows; through it a
    100k-point history took about 1-2 ms more (bench/results/history-read.json)."""
    return f"{table(db, 'metric_points')} FINAL"


def points(db: str, project: str, run_id: str, metric: str, *, offset: int, limit: int) -> Statement:
    """(value, timestamp ms, step) of one metric, by step then time, one page."""
    p = QueryParams()
    return Statement(f"SELECT value, toUnixTimestamp64Milli(ts), step FROM {_points(db)} "
                     f"WHERE {_run_in(db, run_id, project, p)} AND metric = {p.add(metric, 'String')} ORDER BY step, ts "
                     f"LIMIT {int(limit)} OFFSET {int(offset)}", p.values)


def points_of_runs(db: str, pairs: list[tuple[str, str]], metric: str, start_step: int | None = None,
                   end_step: int | None = None) -> Statement:
    """(project, run id, value, timestamp ms, step) of one metric of several (project, run) pairs, within a step
    range; the rows may include other pairs of the same projects and ids (the caller keeps its own)."""
    p = QueryParams()
    where = (f"{_keys_in([a for a, _ in pairs], [b for _, b in pairs], p)} AND metric = {p.add(metric, 'String')}")
    if start_step is not None:
        where += f" AND step >= {p.add(start_step, 'Int64')}"
    if end_step is not None:
        where += f" AND step <= {p.add(end_step, 'Int64')}"
    return Statement(f"SELECT project, run_id, value, toUnixTimestamp64Milli(ts), step FROM {_points(db)} "
                     f"WHERE {where} ORDER BY run_id, step, ts", p.values)


def history(db: str, chain: list[tuple[str, int | None]], metric: str, project: str | None,
            buckets: int | None) -> Statement:
    """A metric's points (step, value, ts) by step along a fork chain: ``chain`` is the run (up to None), then its
    parent up to the fork step, and so on. With ``buckets``, at most that many rows of min / max / avg (and count)
    per range of steps."""
    p = QueryParams()
    parts = []
    for run_id, up_to in chain:
        cond = f"{_run_in(db, run_id, project, p)} AND metric = {p.add(metric, 'String')}"
        if up_to is not None:
            cond += f" AND step <= {p.add(up_to, 'Int64')}"
        parts.append(f"SELECT step, value, ts FROM {_points(db)} WHERE {cond}")
    series = " UNION ALL ".join(parts)
    if buckets:
        # Bucket width from the run's newest step (metric_latest: no second pass over the series); a fork's
        # parent segment lies below its own steps.
        scope = f"{_run_in(db, chain[0][0], project, p)} AND metric = {p.add(metric, 'String')}"
        return Statement(f"WITH (SELECT greatest(1, intDiv(ifNull(max(last_step), 0), {int(buckets)}) + 1) FROM "
                         f"{table(db, 'metric_latest')} WHERE {scope}) AS w "
                         "SELECT min(st) AS step, avg(v) AS value, min(v) AS min, max(v) AS max, count() AS count, "
                         f"max(t) AS ts FROM (SELECT step AS st, value AS v, ts AS t FROM ({series})) "
                         "GROUP BY intDiv(st, w) ORDER BY step", p.values)
    if len(parts) == 1:
        return Statement(f"{series} ORDER BY step", p.values)
    return Statement(f"SELECT step, value, ts FROM ({series}) ORDER BY step", p.values)


def history_scan(db: str, run_id: str, project: str | None, *, up_to: int | None,
                 keys: Sequence[str] | None) -> Statement:
    """(step, metric, value, ts) of a run's points (up to step ``up_to``; of ``keys``), in that order: for a
    streamed read."""
    p = QueryParams()
    cond = _run_in(db, run_id, project, p)
    cond += f" AND step <= {p.add(up_to, 'Int64')}" if up_to is not None else ""
    cond += f" AND metric IN {p.add(list(keys), 'Array(String)')}" if keys is not None else ""
    return Statement(f"SELECT step, metric, value, ts FROM {_points(db)} WHERE {cond} ORDER BY step, metric",
                     p.values)


def series(db: str, run_id: str, metric: str) -> Statement:
    """One run's metric by step (value to 4 places): the demo's table."""
    p = QueryParams()
    return Statement(f"SELECT step, round(value, 4) AS value FROM {_points(db)} WHERE run_id = "
                     f"{p.add(run_id, 'String')} AND metric = {p.add(metric, 'String')} ORDER BY step", p.values)


# ---- artifacts and lineage ----

ARTIFACT_COLUMNS = ["uri", "stored_uri", "size", "sha256", "logged"]


def artifacts(db: str, run_id: str, project: str | None = None) -> Statement:
    """A run's artifacts (ARTIFACT_COLUMNS), one row per uri and content, oldest first: where each was made, where
    its bytes are kept, size, sha256, when it was first logged."""
    p = QueryParams()
    return Statement(f"SELECT uri, any(stored_uri), any(size), sha256, min(ts) AS logged FROM {table(db, 'artifacts')} "
                     f"WHERE {_run_in(db, run_id, project, p)} GROUP BY uri, sha256 ORDER BY logged, uri", p.values)


def run_datasets(db: str, run_id: str, project: str | None) -> Statement:
    """(uri, digest, size) of what a run read."""
    p = QueryParams()
    return Statement(f"SELECT uri, digest, size FROM {table(db, 'datasets_used')} WHERE {_run_in(db, run_id, project, p)} "
                     "ORDER BY uri", p.values)


def consumers(db: str, run_id: str, project: str | None) -> Statement:
    """Runs that read an artifact of this run (a dataset digest equal to its sha256)."""
    p = QueryParams()
    return Statement(f"SELECT DISTINCT run_id FROM {table(db, 'datasets_used')} WHERE digest != '' AND digest IN "
                     f"(SELECT sha256 FROM {table(db, 'artifacts')} WHERE {_run_in(db, run_id, project, p)}) "
                     "ORDER BY run_id", p.values)


def runs_using(db: str, dataset: str) -> Statement:
    """(project, run_id, uri, digest) of runs that read a dataset, by URI or digest."""
    p = QueryParams()
    d = p.add(dataset, "String")
    return Statement(f"SELECT DISTINCT project, run_id, uri, digest FROM {table(db, 'datasets_used')} FINAL "
                     f"WHERE uri = {d} OR digest = {d} ORDER BY run_id", p.values)


def producers_of(db: str, artifact: str) -> Statement:
    """(project, run_id, uri, sha256) of runs that made an artifact, by URI, stored URI or sha256."""
    p = QueryParams()
    a = p.add(artifact, "String")
    return Statement(f"SELECT DISTINCT project, run_id, uri, sha256 FROM {table(db, 'artifacts')} FINAL "
                     f"WHERE uri = {a} OR stored_uri = {a} OR sha256 = {a} ORDER BY run_id", p.values)


def start_records(db: str, keys: list[tuple[str, str]]) -> Statement:
    """(run_id, project, name, git_commit, git_dirty, git_diff_sha256, packages_sha256, parent_run_id) of these
    (project, run) pairs."""
    p = QueryParams()
    return Statement("SELECT run_id, project, name, git_commit, git_dirty, git_diff_sha256, packages_sha256, parent_run_id "
                     f"FROM {table(db, 'run_starts')} FINAL WHERE (project, run_id) IN "
                     f"{p.add(keys, 'Array(Tuple(String, String))')}", p.values)


def inputs_and_producers(db: str, keys: list[tuple[str, str]]) -> Statement:
    """(run_id, uri, digest, producer project, producer run) for each dataset these runs read, with the runs that
    made an artifact of the same content ('' when none)."""
    p = QueryParams()
    return Statement(f"SELECT d.run_id, d.uri, d.digest, a.project, a.run_id FROM {table(db, 'datasets_used')} AS d FINAL "
                     f"LEFT JOIN (SELECT DISTINCT project, run_id, sha256 FROM {table(db, 'artifacts')} FINAL "
                     "WHERE sha256 != '') AS a ON a.sha256 = d.digest WHERE (d.project, d.run_id) IN "
                     f"{p.add(keys, 'Array(Tuple(String, String))')}", p.values)


# ---- the CLI and the demo ----

def recent_runs(db: str, project: str | None, limit: int) -> Statement:
    """(project, run_id, name, status, started, points_acked) of the newest runs."""
    p = QueryParams()
    where = f"WHERE project = {p.add(project, 'String')} " if project else ""
    return Statement(f"SELECT project, run_id, name, status, started, points_acked FROM {table(db, 'runs')} {where}"
                     f"ORDER BY started DESC LIMIT {int(limit)}", p.values)


def metric_counts(db: str, run_ids: list[str]) -> Statement:
    """(run_id, metric, latest value, points stored) of these runs' metrics."""
    p = QueryParams()
    ids = p.add(run_ids, "Array(String)")
    return Statement(f"SELECT c.run_id, c.metric, l.value, c.n FROM (SELECT run_id, metric, count() AS n FROM "
                     f"{table(db, 'metrics')} WHERE run_id IN {ids} GROUP BY run_id, metric) AS c LEFT JOIN "
                     f"(SELECT run_id, metric, value FROM {table(db, 'latest')} WHERE run_id IN {ids}) AS l "
                     "ON l.run_id = c.run_id AND l.metric = c.metric ORDER BY c.run_id, c.metric", p.values)


def points_stored(db: str, project: str, run_ids: list[str]) -> Statement:
    """Points stored (each once) for these runs."""
    p = QueryParams()
    return Statement(f"SELECT count() FROM {table(db, 'metrics')} WHERE project = {p.add(project, 'String')} "
                     f"AND run_id IN {p.add(run_ids, 'Array(String)')}", p.values)


def best_runs(db: str, project: str, metric: str, param: str, tag: str, limit: int = 5) -> Statement:
    """(name, final value, param) of runs with ``tag``, ranked by the last value of ``metric``."""
    p = QueryParams()
    return Statement(
        f"SELECT r.name, round(argMax(m.value, m.step), 4) AS final, any(p.value) AS param "
        f"FROM {table(db, 'metrics')} AS m INNER JOIN {table(db, 'runs')} AS r ON r.run_id = m.run_id "
        f"LEFT JOIN (SELECT run_id, value FROM {table(db, 'params')} FINAL WHERE key = {p.add(param, 'String')}) AS p "
        f"ON p.run_id = m.run_id WHERE m.project = {p.add(project, 'String')} AND m.metric = {p.add(metric, 'String')} "
        f"AND has(r.tags, {p.add(tag, 'String')}) GROUP BY r.name ORDER BY final DESC LIMIT {int(limit)}", p.values)


def alerts(db: str, project: str) -> Statement:
    """(name, kind, severity, step, status, message) of a project's alerts with their run names, oldest first."""
    p = QueryParams()
    return Statement(f"SELECT r.name, a.kind, a.severity, a.step, a.status, a.message FROM {table(db, 'alerts')} AS a "
                     f"INNER JOIN {table(db, 'runs')} AS r ON r.run_id = a.run_id WHERE a.project = "
                     f"{p.add(project, 'String')} ORDER BY a.detected_at", p.values)


def busiest_fleet_windows(db: str, project: str, limit: int = 3) -> Statement:
    """The fleet view's windows with the most points."""
    p = QueryParams()
    return Statement("SELECT window_start, active_runs, points, runs_started, runs_finished, runs_failed "
                     f"FROM {table(db, 'fleet')} WHERE project = {p.add(project, 'String')} ORDER BY points DESC "
                     f"LIMIT {int(limit)}", p.values)


AUDIT_COLUMNS = ["seq", "at", "actor", "action", "target", "source", "after"]


def audit_chain(db: str, project: str) -> Statement:
    """A project's audit records in chain order, in the column order runstream.wire.audit.verify reads."""
    p = QueryParams()
    return Statement("SELECT seq, toUnixTimestamp64Milli(at), actor, action, target, source, before, after, prev_hash, "
                     f"hash, project, partition, offset, sig FROM {table(db, 'audit_log')} WHERE project = "
                     f"{p.add(project, 'String')} ORDER BY seq", p.values)


def audit_log(db: str, project: str, *, action: str | None = None, target: str | None = None,
              limit: int = 100) -> Statement:
    """The newest audit records of a project (AUDIT_COLUMNS), optionally of one action or target."""
    p = QueryParams()
    where = [f"project = {p.add(project, 'String')}"]
    if action:
        where.append(f"action = {p.add(action, 'String')}")
    if target:
        where.append(f"target = {p.add(target, 'String')}")
    return Statement(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM {table(db, 'audit_log')} WHERE {' AND '.join(where)} "
                     f"ORDER BY seq DESC LIMIT {int(limit)}", p.values)
