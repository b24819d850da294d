"""The benches' own reads of what a load stored: counts, duplicates, store latency, alert timing. Not shipped:
the product's statements are runstream.wire.views'."""

from __future__ import annotations

from typing import Any

Row = tuple[Any, ...]


def rows(client: Any, sql: str, **parameters: Any) -> list[Row]:
    """A query's rows as tuples (``%(name)s`` placeholders, bound by the client)."""
    return [tuple(r) for r in client.query(sql, parameters=parameters).result_rows]


def point_stats(client: Any, project: str, *, points_per_query: int = 10_000_000) -> Row:
    """A project's points, each once: (rows, distinct (run, metric, step), first ts, last stored). Counted over groups
    of runs of at most ``points_per_query`` points, so that the exact distinct count stays within a query's memory."""
    per_run = rows(client, "SELECT run_id, count() FROM metric_points FINAL WHERE project = %(p)s GROUP BY run_id", p=project)
    groups: list[list[str]] = [[]]
    size = 0
    for run_id, n in per_run:
        if groups[-1] and size + n > points_per_query:
            groups.append([])
            size = 0
        groups[-1].append(run_id)
        size += n
    parts = [rows(client, "SELECT count(), uniqExact(run_id, metric, step), min(ts), max(stored) FROM metric_points FINAL "
                          "WHERE project = %(p)s AND run_id IN %(runs)s", p=project, runs=g)[0] for g in groups if g]
    if not parts:
        return rows(client, "SELECT 0, 0, min(ts), max(stored) FROM metric_points WHERE project = %(p)s", p=project)[0]
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), min(p[2] for p in parts), max(p[3] for p in parts))


def store_latency_ms(client: Any, project: str) -> list[int]:
    """p50 and p99 of client time -> stored time over a project's points."""
    return list(rows(client, "SELECT quantilesExact(0.5, 0.99)(dateDiff('millisecond', ts, stored)) FROM metric_points FINAL "
                             "WHERE project = %(p)s", p=project)[0][0])


def store_latency_by_window_ms(client: Any, project: str, seconds: int = 10) -> list[Row]:
    """The same by window of client time: (seconds from the first point, p50, p99), so a backlog shows when it built."""
    return rows(client, "SELECT intDiv(dateDiff('millisecond', (SELECT min(ts) FROM metric_points WHERE project = %(p)s), ts), "
                        "%(ms)s) * %(s)s AS w, quantilesExact(0.5, 0.99)(dateDiff('millisecond', ts, stored)) "
                        "FROM metric_points FINAL WHERE project = %(p)s GROUP BY w ORDER BY w", p=project, ms=seconds * 1000, s=seconds)


def alert_times(client: Any, project: str) -> list[Row]:
    """A project's alerts: (run_id, kind, step, event time ms, stored ms)."""
    return rows(client, "SELECT run_id, kind, step, toUnixTimestamp64Milli(event_time), toUnixTimestamp64Milli(stored) "
                        "FROM alerts WHERE project = %(p)s", p=project)


def alert_latency_split_ms(client: Any, project: str) -> Row:
    """Where detection time goes, p50 and p99 each: event -> processor fired, and fired -> row stored (stalls excluded)."""
    return rows(client, "SELECT quantiles(0.5, 0.99)(dateDiff('millisecond', event_time, detected_at)), "
                        "quantiles(0.5, 0.99)(dateDiff('millisecond', detected_at, stored)) FROM alerts "
                        "WHERE project = %(p)s AND kind != 'stall'", p=project)[0]


def points_in_project(client: Any, project: str) -> int:
    """Points stored for a project (each once)."""
    return int(rows(client, "SELECT count() FROM metrics WHERE project = %(p)s", p=project)[0][0])
