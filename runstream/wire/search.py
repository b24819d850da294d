"""MLflow's search syntax: a filter (``metrics.acc > 0.9 and params.lr = '0.01'``) and order_by clauses, parsed
once, then either translated to SQL over runstream's tables (runs: runstream.wire.views, where every value becomes a
server-side query parameter) or evaluated in Python (experiments). The MLflow API and the read API (which also takes
OR between groups of AND) share it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from runstream.wire.errors import ValidationError

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


# MLflow's rules for a run filter beyond the shared grammar (mlflow.utils.search_utils and its stores; checked case
# by case against MLflow's own parser in tests/test_search_grammar.py).
MLFLOW_RUN_ATTRS = {**{k: v for k, v in RUN_ATTRS.items() if k != "lifecycle_stage"}, "Created": "number"}
DATASET_KEYS = ("name", "digest", "context")
_NUMERIC_OPS = frozenset({"=", "!=", "<", "<=", ">", ">="})
_TEXT_OPS = frozenset({"=", "!=", "LIKE", "ILIKE"})
_NULL_OPS = frozenset({"IS NULL", "IS NOT NULL"})
_LIST_OPS = frozenset({"IN", "NOT IN"})
_PLAIN_KEY = re.compile(r"[\w.]+\Z")


def parse_run_filter(text: str | None, where: str = "filter") -> list[Cond]:
    """A run filter exactly as MLflow takes it (its search_runs): the shared grammar, then MLflow's limits: an
    unquoted key of word characters and dots, its attributes only, IS [NOT] NULL on tags and params, IN on run_id
    and datasets, metrics compared as numbers, datasets by name, digest or context."""
    conds = parse_filter(text, attrs=MLFLOW_RUN_ATTRS, where=where)
    for kind, raw in _tokens(text or "", where) if conds else []:
        if kind == "ident":
            key = raw.split(".", 1)[1]
            if key[:1] not in "`\"" and not _PLAIN_KEY.match(key):
                raise ValidationError(where, f"invalid identifier {raw!r}: quote a key with characters other than "
                                             "letters, digits, '_' and '.' (metrics.`loss/val`)")
    out = []
    for c in conds:
        if c.kind == "metric":
            allowed = _NUMERIC_OPS
        elif c.kind in ("param", "tag"):
            allowed = _TEXT_OPS | _NULL_OPS
        elif c.kind == "dataset":
            if c.key not in DATASET_KEYS:
                raise ValidationError(where, f"invalid dataset key {c.key!r}; valid: {', '.join(DATASET_KEYS)}")
            allowed = _TEXT_OPS | _LIST_OPS
        elif MLFLOW_RUN_ATTRS[c.key] == "number":
            allowed = _NUMERIC_OPS
        else:
            allowed = _TEXT_OPS | (_LIST_OPS if c.key == "run_id" else frozenset())
        if c.op not in allowed:
            raise ValidationError(where, f"{c.op} is not supported on {c.kind} {c.key!r} in MLflow's search syntax "
                                         f"(use {', '.join(sorted(allowed))})")
        out.append(Cond(c.kind, "created" if c.key == "Created" else c.key, c.op, c.value))
    return out


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


def like(pattern: str, text: str, *, case: bool = True) -> bool:
    """SQL LIKE (% and _) in Python."""
    rx = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(rx, text, 0 if case else re.IGNORECASE) is not None


def matches(conds: list[Cond], attrs: dict[str, Any], tags: dict[str, str], *, absent_differs: bool = False) -> bool:
    """Evaluate conditions on one object in Python (experiments, registered models and their versions: attributes and
    tags). ``absent_differs``: a missing tag satisfies ``!=`` (MLflow's registry: its clients filter out prompts with
    ``tags.`mlflow.prompt.is_prompt` != 'true'``)."""
    for c in conds:
        got = attrs.get(c.key) if c.kind == "attr" else tags.get(c.key) if c.kind == "tag" else None
        if c.kind not in ("attr", "tag"):
            raise ValidationError("filter", f"only attributes and tags filter these, not {c.kind}s")
        if c.op == "IS NULL":
            ok = got is None
        elif c.op == "IS NOT NULL":
            ok = got is not None
        elif got is None:
            ok = absent_differs and c.op == "!="
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
