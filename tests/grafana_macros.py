"""Expansion of Grafana template variables and the ClickHouse plugin's macros, as the plugin documents them
(see the plugin's pkg/macros/macros.go): what Grafana would send to ClickHouse for a panel."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Context:
    from_s: int
    to_s: int
    interval_s: int
    variables: dict[str, list[str]] = field(default_factory=dict)  # name -> selected values; ["$__all"] = All
    all_values: dict[str, list[str]] = field(default_factory=dict)


def _args(sql: str, start: int) -> tuple[list[str], int]:
    """Split the top-level comma-separated arguments of the call whose '(' is at ``start``."""
    depth, i, cur, out = 0, start, [], []
    while i < len(sql):
        c = sql[i]
        if c == "(":
            depth += 1
            if depth > 1:
                cur.append(c)
        elif c == ")":
            depth -= 1
            if depth == 0:
                out.append("".join(cur).strip())
                return out, i + 1
            cur.append(c)
        elif c == "," and depth == 1:
            out.append("".join(cur).strip())
            cur = []
        elif c == "'":
            j = sql.index("'", i + 1)
            cur.append(sql[i:j + 1])
            i = j
        else:
            cur.append(c)
        i += 1
    raise ValueError(f"unbalanced macro call at {start}: {sql[start:start + 60]}")


def _replace_calls(sql: str, name: str, fn) -> str:
    pat = re.compile(re.escape(name) + r"\s*\(")
    while True:
        m = pat.search(sql)
        if not m:
            return sql
        args, end = _args(sql, m.end() - 1)
        sql = sql[:m.start()] + fn(args) + sql[end:]


def _is_all(ctx: Context, var: str) -> bool:
    v = ctx.variables.get(var.lstrip("$").strip("{}"), [])
    return not v or v == ["$__all"]


def _values(ctx: Context, name: str) -> list[str]:
    v = ctx.variables.get(name, [])
    return ctx.all_values.get(name, []) if v == ["$__all"] else v


def interpolate(sql: str, ctx: Context) -> str:
    """Front end: $__conditionalAll, then ${var:singlequote} / ${var} / $var."""
    sql = _replace_calls(sql, "$__conditionalAll", lambda a: "1=1" if _is_all(ctx, a[1]) else a[0])

    def var(m: re.Match) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        vals = _values(ctx, name)
        if fmt == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in vals) or "''"
        return ",".join(vals)
    return re.sub(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)", var, sql)


def expand(sql: str, ctx: Context) -> str:
    """Back end (the plugin): the time and interval macros."""
    f, t, i = ctx.from_s, ctx.to_s, max(ctx.interval_s, 1)
    sql = _replace_calls(sql, "$__timeFilter_ms", lambda a: f"{a[0]} >= fromUnixTimestamp64Milli({f * 1000}) AND "
                                                             f"{a[0]} <= fromUnixTimestamp64Milli({t * 1000})")
    sql = _replace_calls(sql, "$__timeFilter", lambda a: f"{a[0]} >= toDateTime({f}) AND {a[0]} <= toDateTime({t})")
    sql = _replace_calls(sql, "$__timeInterval_ms", lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), "
                                                              f"INTERVAL {i * 1000} millisecond)")
    sql = _replace_calls(sql, "$__timeInterval", lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {i} second)")
    sql = sql.replace("$__fromTime_ms", f"fromUnixTimestamp64Milli({f * 1000})").replace(
        "$__toTime_ms", f"fromUnixTimestamp64Milli({t * 1000})")
    sql = sql.replace("$__fromTime", f"toDateTime({f})").replace("$__toTime", f"toDateTime({t})")
    sql = sql.replace("$__interval_s", str(i))
    if "$__" in sql:
        raise ValueError(f"unexpanded macro in: {sql}")
    return sql
