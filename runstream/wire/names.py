"""What a metric name may be: one rule for the SDK (which drops a bad name's points at log time, keeping the
good points beside them) and ingest (which refuses a batch that breaks it)."""

from __future__ import annotations

MAX_NAME_LENGTH = 250  # ingest.max_name_length's default
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
