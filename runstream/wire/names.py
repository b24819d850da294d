"""What a metric name may be: one rule for the SDK (which drops a bad name's points at log time, keeping the
good points beside them) and ingest (which refuses a batch that breaks it)."""

from __future__ import annotations

import os
import time

MAX_NAME_LENGTH = 250  # ingest.max_name_length's default
MAX_VALUE_LENGTH = 64 * 1024  # a param's, tag's or config entry's value, in characters
MAX_STEP = (1 << 63) - 1  # steps are int64, negative ones too (MLflow keeps them)
MIN_STEP = -(1 << 63)


def new_run_id() -> str:
    """A new run's id: a UUIDv7 (RFC 9562) in hex, time-ordered. Runs are keyed by id in storage, so new runs sort after
    the settled ones and reading a table's newest rows FINAL merges only its last ranges, not every granule."""
    value = (int(time.time() * 1000) & (1 << 48) - 1) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC 9562 variant
    return f"{value:032x}"


def step_of(step: object) -> int | None:
    """``step`` as an int step, or None when it is not one: ints, numpy integers and integral floats in the int64
    range."""
    if type(step) is not int:
        if isinstance(step, bool):
            return None
        try:
            step = step.__index__()  # type: ignore[attr-defined]  # numpy integers
        except (AttributeError, TypeError):
            try:
                f = float(step)  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                return None
            if not f.is_integer():
                return None
            step = int(f)
    return step if MIN_STEP <= step <= MAX_STEP else None  # type: ignore[operator,return-value]


def value_problem(key: object, value: object, limit: int = MAX_NAME_LENGTH) -> str | None:
    """Why ``key``/``value`` cannot be a param or tag (a short, fixed reason), or None when they can."""
    found = name_problem(key, limit)
    if found:
        return found[0].replace("name", "key", 1)
    if not isinstance(value, str):
        return "value not a string"
    if len(value) > MAX_VALUE_LENGTH:
        return "value too long"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "value not UTF-8"
    return None
SYSTEM_PREFIX = "sys/"  # the SDK's system metrics; rolled up like any metric, never judged by anomaly detection


def metric_name_problem(name: object, limit: int = MAX_NAME_LENGTH) -> str | None:
    """Why ``name`` cannot be a metric name, or None when it can."""
    found = name_problem(name, limit)
    return found[1] if found else None


def name_problem(name: object, limit: int = MAX_NAME_LENGTH) -> tuple[str, str] | None:
    """(reason, message) when ``name`` cannot be a metric name: the reason is short and fixed (it counts dropped
    points), the message says what is wrong with this name."""
    if not isinstance(name, str):
        return "name not a string", f"is a {type(name).__name__}, not a string"
    if not name:
        return "name empty", "is empty"
    if len(name) > limit:
        return "name too long", f"is {len(name)} characters; the limit is {limit}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name not UTF-8", "is not valid UTF-8"
    return None
