"""MLflow's search syntax: a filter (``metrics.acc > 0.9 and params.lr = '0.01'``) and order_by clauses, parsed
once, then either translated to ClickHouse SQL over runstream's tables (runs) or evaluated in Python (experiments).
Every value becomes a server-side query parameter: no text of a filter is ever pasted into SQL. The MLflow API
and the read API (which also takes OR between groups of AND) share it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from runstream.wire.errors import ValidationError
from runstream.wire.sql import QueryParams

# Tag values written by delete-tag: the tags table keeps the latest value per key, so a deletion is a value.
DELETED_TAG = "\x00deleted"

_PREFIXES = {"metric": "metric", "metrics": "metric", "param": "param", "params": "param", "parameter": "param",
             "parameters": "param", "tag": "tag", "tags": "tag", "attribute": "attr", "attributes": "attr",
             "attr": "attr", "run": "attr", "dataset": "dataset", "datasets": "dataset"}
RUN_ATTRS = {"run_id": "string", "run_name": "string", "status": "string", "user_id": "string",
             "artifact_uri": "string", "lifecycle_stage": "string", "start_time": "number", "created": "number",
             "end_time": "number"}
# A logged model (MLflow 3) is kept as a run labelled MODEL_LABEL: these name its run's columns.
MODEL_ATTRS = {"name": "string", "model_id": "string", "source_run_id": "string", "status": "string",
               "creation_timestamp": "number", "creation_time": "number"}
MODEL_LABEL = "mlflow.logged_model"
EXPERIMENT_ATTRS = {"name": "string", "experiment_id": "string", "creation_time": "number", "last_update_time": "number"}

_TOKEN = re.compile(r"""\s*(?:
    (?P<ident>[A-Za-z_]\w*\.(?:`[^`]*`|"[^"]*"|[\w\-./:]+))
   |(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
   |(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
   |(?P<op>!=|<>|>=|<=|=|<|>|\(|\)|,)
   |(?P<word>[A-Za-z_]\w*)
)""", re.X)


@dataclass(frozen=True)
class Cond:
    kind: str   # metric | param | tag | attr | dataset
    key: str
    op: str     # = != < <= > >= LIKE ILIKE IN NOT IN IS NULL IS NOT NULL
    value: Any  # a str, a float, a tuple of str (IN), or None (IS [NOT] NULL)


@dataclass(frozen=True)
class Order:
    kind: str
    key: str
    ascending: bool


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValidationError(where, f"cannot parse {text[pos:pos + 30]!r} (position {pos})")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _ident(raw: str, where: str, attrs: dict[str, str]) -> tuple[str, str]:
    if "." in raw:
        prefix, key = raw.split(".", 1)
        kind = _PREFIXES.get(prefix.lower())
        if kind is None:
            raise ValidationError(where, f"invalid identifier {raw!r}: the prefix must be metrics., params., tags., "
                                         "attributes. or datasets.")
        if key[:1] in "`\"" and key[-1:] == key[:1] and len(key) >= 2:
            key = key[1:-1]
    else:
        kind, key = "attr", raw
    if kind == "attr" and key not in attrs:
        raise ValidationError(where, f"invalid attribute {key!r}; valid: {', '.join(sorted(attrs))}")
    return kind, key


def _value(tok: tuple[str, str], where: str) -> Any:
    kind, text = tok
    if kind == "str":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if kind == "num":
        return float(text)
    raise ValidationError(where, f"expected a quoted string or a number, got {text!r}")


def parse_filter(text: str | None, *, attrs: dict[str, str] = RUN_ATTRS, where: str = "filter") -> list[Cond]:
    """The conditions of a filter string, all of which must hold (MLflow's syntax has AND only)."""
    groups = parse_filter_any(text, attrs=attrs, where=where, allow_or=False)
    return groups[0] if groups else []


def parse_filter_any(text: str | None, *, attrs: dict[str, str] = RUN_ATTRS, where: str = "filter",
                     allow_or: bool = True, typed_params: bool = False) -> list[list[Cond]]:
    """Groups of conditions, any group of which must hold in full: ``a AND b OR c`` is [[a, b], [c]] (AND binds
    tighter, as in SQL). Empty for an empty filter."""
    if not text or not text.strip():
        return []
    toks = _tokens(text, where)
    groups: list[list[Cond]] = []
    conds: list[Cond] = []
    i = 0

    def word(j: int) -> str:
        return toks[j][1].upper() if j < len(toks) and toks[j][0] == "word" else ""

    while i < len(toks):
        if toks[i][0] not in ("ident", "word") or word(i) in ("AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "IS"):
            raise ValidationError(where, f"expected an identifier such as metrics.loss, got {toks[i][1]!r}")
        kind, key = _ident(toks[i][1], where, attrs)
        i += 1
        if word(i) == "IS":
            negate = word(i + 1) == "NOT"
            if word(i + 1 + negate) != "NULL":
                raise ValidationError(where, "IS must be followed by NULL or NOT NULL")
            conds.append(Cond(kind, key, "IS NOT NULL" if negate else "IS NULL", None))
            i += 2 + negate
        elif word(i) in ("IN", "NOT") and (word(i) == "IN" or word(i + 1) == "IN"):
            op = "NOT IN" if word(i) == "NOT" else "IN"
            i += 2 if op == "NOT IN" else 1
            if i >= len(toks) or toks[i][1] != "(":
                raise ValidationError(where, f"{op} needs a parenthesised list of strings")
            values: list[str] = []
            i += 1
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][1] != ",":
                    values.append(str(_value(toks[i], where)))
                i += 1
            if i >= len(toks):
                raise ValidationError(where, f"{op} list is not closed with ')'")
            conds.append(Cond(kind, key, op, tuple(values)))
            i += 1
        else:
            if i >= len(toks):
                raise ValidationError(where, f"{key!r} needs a comparison")
            op = word(i) if word(i) in ("LIKE", "ILIKE") else toks[i][1] if toks[i][0] == "op" else ""
            if word(i) == "NOT" and word(i + 1) in ("LIKE", "ILIKE"):
                raise ValidationError(where, "NOT LIKE is not part of MLflow's search syntax")
            if not op or op in ("(", ")", ","):
                raise ValidationError(where, f"expected a comparator after {key!r}, got {toks[i][1]!r}")
            op = "!=" if op == "<>" else op
            if i + 1 >= len(toks):
                raise ValidationError(where, f"{key!r} {op} needs a value")
            conds.append(_checked(Cond(kind, key, op, _value(toks[i + 1], where)), attrs, where, typed_params))
            i += 2
        if i < len(toks):
            if word(i) == "OR" and not allow_or:
                raise ValidationError(where, "OR is not supported (MLflow's search syntax joins conditions with AND)")
            if word(i) not in ("AND", "OR"):
                raise ValidationError(where, f"expected AND or OR, got {toks[i][1]!r}")
            if word(i) == "OR":
                groups.append(conds)
                conds = []
            i += 1
            if i >= len(toks):
                raise ValidationError(where, f"ends with {word(i - 1)}")
    groups.append(conds)
    return groups


def _checked(c: Cond, attrs: dict[str, str], where: str, typed_params: bool = False) -> Cond:
    """A comparison fits its key's type; with ``typed_params`` a param compares as the value given (a number as a
    number, a string as text)."""
    numeric = c.kind == "metric" or (c.kind == "attr" and attrs.get(c.key) == "number")
    if typed_params and c.kind == "param":
        if isinstance(c.value, float) and c.op in ("LIKE", "ILIKE"):
            raise ValidationError(where, f"{c.key!r} LIKE needs a quoted pattern")
        return c
    if numeric:
        if c.op in ("LIKE", "ILIKE"):
            raise ValidationError(where, f"{c.key!r} is numeric: use =, !=, <, <=, > or >=")
        if not isinstance(c.value, float):
            raise ValidationError(where, f"{c.key!r} is compared with a number, got {c.value!r}")
    else:
        if c.op in ("<", "<=", ">", ">="):
            raise ValidationError(where, f"{c.key!r} is a string: use =, !=, LIKE or ILIKE")
        if not isinstance(c.value, str):
            raise ValidationError(where, f"{c.key!r} is compared with a quoted string, got {c.value!r}")
    return c


def parse_order_by(clauses: list[str], *, attrs: dict[str, str] = RUN_ATTRS, where: str = "order_by") -> list[Order]:
    out = []
    for clause in clauses:
        toks = _tokens(clause, where)
        if not toks or len(toks) > 2 or toks[0][0] not in ("ident", "word"):
            raise ValidationError(where, f"{clause!r} is not '<identifier> [ASC|DESC]'")
        kind, key = _ident(toks[0][1], where, attrs)
        if kind == "dataset":
            raise ValidationError(where, "ordering by datasets is not supported")
        direction = toks[1][1].upper() if len(toks) == 2 else "ASC"
        if direction not in ("ASC", "DESC"):
            raise ValidationError(where, f"{clause!r}: the direction must be ASC or DESC")
        out.append(Order(kind, key, direction == "ASC"))
    return out


# The value MLflow sees of a stored param: params are stored JSON-encoded; a JSON string shows as its text.
PARAM_TEXT = "if(startsWith(value, '\"'), JSONExtractString(value), value)"
LATEST = "argMax(value, (step, ts, value))"  # MLflow's latest metric: the largest step, then time, then value
# The columns of the `run` subquery a filter's attribute conditions refer to.
ATTR_COLUMNS = {"run_id": "run_id", "run_name": "run_name", "status": "status", "user_id": "user_id",
                "lifecycle_stage": "lifecycle_stage", "start_time": "start_time", "created": "start_time",
                "end_time": "end_time", "artifact_uri": "artifact_uri", "parent_run_id": "parent_run_id",
                "model_status": "model_status"}
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


def sql_conditions(conds: list[Cond], db: str, scope: str, p: QueryParams, *, latest: bool = False) -> list[str]:
    """SQL conditions over the `run` subquery (columns: project, run_id and ATTR_COLUMNS); ``scope`` limits the
    subqueries to the searched projects. ``latest``: a metric's latest value from the `latest` table (sized by
    runs x metrics; its ties resolve by step only), not from every point."""
    out = []
    for c in conds:
        if c.kind == "attr":
            if c.op in ("IN", "NOT IN") and c.key != "run_id":
                raise ValidationError("filter", f"{c.op} applies to attributes.run_id only")
            if c.key == "end_time" and c.op != "!=":
                out.append(f"end_time IS NOT NULL AND {_compare('end_time', c, p)}")
            else:
                out.append(_compare(ATTR_COLUMNS[c.key], c, p))
            continue
        key = p.add(c.key, "String")
        if c.kind == "metric" and latest:
            out.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.latest WHERE {scope} AND metric = {key} "
                       f"AND {_compare('value', c, p)})")
        elif c.kind == "metric":
            out.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.metric_points WHERE {scope} AND metric = {key} "
                       f"GROUP BY project, run_id HAVING {_compare(LATEST, c, p)})")
        elif c.kind in ("param", "tag"):
            table = "params" if c.kind == "param" else "tags"
            text = PARAM_TEXT if c.kind == "param" else "value"
            live = f" AND value != {p.add(DELETED_TAG, 'String')}" if c.kind == "tag" else ""
            sub = f"SELECT project, run_id FROM {db}.{table} FINAL WHERE {scope} AND key = {key}{live}"
            if c.op == "IS NULL":
                out.append(f"(project, run_id) NOT IN ({sub})")
            elif c.op == "IS NOT NULL":
                out.append(f"(project, run_id) IN ({sub})")
            else:
                if c.op in ("IN", "NOT IN"):
                    raise ValidationError("filter", f"{c.op} applies to attributes.run_id and datasets only")
                if isinstance(c.value, float):  # a typed param compared with a number (read API)
                    text = "toFloat64OrNull(value)"
                out.append(f"(project, run_id) IN ({sub} AND {_compare(text, c, p)})")
        elif c.kind == "dataset":
            column = {"name": "uri", "digest": "digest"}.get(c.key)
            if column is None:
                raise ValidationError("filter", f"datasets.{c.key}: runstream filters datasets by name (its URI) or digest")
            out.append(f"(project, run_id) IN (SELECT project, run_id FROM {db}.datasets_used WHERE {scope} "
                       f"AND {_compare(column, c, p)})")
    return out


def sql_order(orders: list[Order], db: str, scope: str, p: QueryParams, *, latest: bool = False) -> tuple[list[str], list[str]]:
    """(LEFT JOINs adding one column o<i> per metric/param/tag clause, ORDER BY terms). Runs without the value
    come last, in either direction, as MLflow orders them. ``latest`` as in sql_conditions."""
    joins, terms = [], []
    for i, o in enumerate(orders):
        direction = "ASC" if o.ascending else "DESC"
        if o.kind == "attr":
            column = f"run.{ATTR_COLUMNS[o.key]}"
            terms += [f"isNull({column})", f"{column} {direction}"]
            continue
        key = p.add(o.key, "String")
        if o.kind == "metric" and latest:
            sub = f"SELECT project, run_id, value AS v FROM {db}.latest WHERE {scope} AND metric = {key}"
        elif o.kind == "metric":
            sub = f"SELECT project, run_id, {LATEST} AS v FROM {db}.metric_points WHERE {scope} AND metric = {key} GROUP BY project, run_id"
        else:
            table, text = ("params", PARAM_TEXT) if o.kind == "param" else ("tags", "value")
            sub = f"SELECT project, run_id, {text} AS v FROM {db}.{table} FINAL WHERE {scope} AND key = {key}"
        numeric = latest and o.kind == "param"  # typed params: numbers in numeric order, before text
        if numeric:
            sub = sub.replace(" AS v FROM", " AS v, toFloat64OrNull(value) AS n FROM")
        joins.append(f"LEFT JOIN ({sub}) AS o{i} ON o{i}.project = run.project AND o{i}.run_id = run.run_id")
        terms += [f"o{i}.run_id = ''", *([f"isNull(o{i}.n)", f"o{i}.n {direction}"] if numeric else []), f"o{i}.v {direction}"]
    return joins, terms


def like(pattern: str, text: str, *, case: bool = True) -> bool:
    """SQL LIKE (% and _) in Python."""
    rx = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(rx, text, 0 if case else re.IGNORECASE) is not None


def matches(conds: list[Cond], attrs: dict[str, Any], tags: dict[str, str]) -> bool:
    """Evaluate conditions on one object in Python (experiments: attributes and tags)."""
    for c in conds:
        got = attrs.get(c.key) if c.kind == "attr" else tags.get(c.key) if c.kind == "tag" else None
        if c.kind not in ("attr", "tag"):
            raise ValidationError("filter", f"experiments are filtered by attributes and tags, not {c.kind}s")
        if c.op == "IS NULL":
            ok = got is None
        elif c.op == "IS NOT NULL":
            ok = got is not None
        elif got is None:
            ok = False
        elif c.op == "LIKE":
            ok = like(c.value, str(got))
        elif c.op == "ILIKE":
            ok = like(c.value, str(got), case=False)
        elif c.op == "IN":
            ok = str(got) in c.value
        elif c.op == "NOT IN":
            ok = str(got) not in c.value
        else:
            a: Any = float(got) if isinstance(c.value, float) else str(got)
            b: Any = c.value
            ok = {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[c.op]
        if not ok:
            return False
    return True
