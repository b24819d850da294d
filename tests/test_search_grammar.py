"""runstream's run filter against MLflow's own parser (mlflow.utils.search_utils.SearchUtils, from the mlflow client)
and the comparators its stores take per kind of key: filters generated from MLflow's grammar parse to the same
conditions, and what MLflow refuses runstream's MLflow API refuses."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.wire.errors import ValidationError
from runstream.wire.search import parse_run_filter

search_utils = pytest.importorskip("mlflow.utils.search_utils")

KINDS = {"metric": "metric", "parameter": "param", "tag": "tag", "attribute": "attr", "dataset": "dataset"}
PREFIXES = ["metrics.", "params.", "tags.", "attributes.", "attribute.", "datasets.", "run.", ""]
KEYS = ["acc", "lr", "run_name", "status", "start_time", "end_time", "run_id", "user_id", "name", "digest", "context",
        "`a b`", '"m-1"', "loss/val", "created", "Created", "lifecycle_stage", "artifact_uri", "m-1", "a.b", "a:b", "1a"]
OPS = ["=", "!=", ">", ">=", "<", "<=", "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL"]
VALUES = ["'0.01'", '"x"', "0.9", "-1e3", "5", "'%x%'", "('a', 'b')", "('FINISHED')", "'FINISHED'"]


@st.composite
def clause(draw: st.DrawFn) -> str:
    ident = draw(st.sampled_from(PREFIXES)) + draw(st.sampled_from(KEYS))
    op = draw(st.sampled_from(OPS))
    if op.startswith("IS"):
        return f"{ident} {op}"
    return f"{ident} {op} {draw(st.sampled_from(VALUES))}"


def _comparators(kind: str, key: str) -> set[str]:
    S = search_utils.SearchUtils
    return {"metric": S.VALID_METRIC_COMPARATORS, "parameter": S.VALID_PARAM_COMPARATORS,
            "tag": S.VALID_TAG_COMPARATORS, "dataset": S.VALID_DATASET_COMPARATORS}.get(kind) or (
        S.VALID_NUMERIC_ATTRIBUTE_COMPARATORS if key in S.NUMERIC_ATTRIBUTES else S.VALID_STRING_ATTRIBUTE_COMPARATORS)


def theirs(text: str) -> list[tuple[str, str, str, Any]] | None:
    """MLflow's parse, refused where its stores refuse the comparator (or a list compared without IN)."""
    try:
        parsed = search_utils.SearchUtils.parse_search_filter(text)
    except Exception:  # MlflowException: refused
        return None
    out = []
    for c in parsed:
        op = c["comparator"].upper()
        if op not in _comparators(c["type"], c["key"]) or (isinstance(c["value"], (list, tuple)) != (op in ("IN", "NOT IN"))):
            return None
        key = "created" if c["key"] == "Created" else c["key"]
        out.append((KINDS[c["type"]], key, op, c["value"]))
    return out


def ours(text: str) -> list[tuple[str, str, str, Any]] | None:
    try:
        parsed = parse_run_filter(text)
    except ValidationError:
        return None
    return [(c.kind, c.key, c.op, c.value) for c in parsed]


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) or isinstance(b, (list, tuple)):
        return tuple(a or ()) == tuple(b or ())
    if a is None or b is None:
        return a is b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(clause(), min_size=1, max_size=3))
def test_filters_parse_as_mlflows_parser_parses_them(clauses: list[str]) -> None:
    text = " and ".join(clauses)
    expected, got = theirs(text), ours(text)
    if expected is None:
        assert got is None, f"MLflow refuses {text!r}; runstream parsed it as {got}"
        return
    assert got is not None, f"MLflow parses {text!r} as {expected}; runstream refuses it"
    assert [(k, key, op) for k, key, op, _ in got] == [(k, key, op) for k, key, op, _ in expected], text
    for (_, _, _, mine), (_, _, _, their) in zip(got, expected):
        assert same_value(mine, their), (text, mine, their)
