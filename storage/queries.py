"""Every SQL read outside the stages' own hot paths: the CLI, the demo, the sink's start-up, the benches."""

from __future__ import annotations

from typing import Any

Row = tuple[Any, ...]


def rows(client: Any, sql: str, **parameters: Any) -> list[Row]:
    """A query's rows as tuples (``%(name)s`` placeholders, bound by the client)."""
    return [tuple(r) for r in client.query(sql, parameters=parameters).result_rows]


def runs_summary(client: Any, *, project: str | None = None, limit: int = 20, database: str = "") -> tuple[list[str], list[Row]]:
    """Recent runs with their latest metrics, and points acknowledged (by the SDK's count) vs stored."""
    db = f"{database}." if database else ""
    where = "WHERE project = %(project)s" if project else ""
    runs = client.query(f"SELECT project, run_id, name, status, started, points_acked FROM {db}runs {where} "
                        f"ORDER BY started DESC LIMIT %(limit)s", parameters={"project": project, "limit": limit}).result_rows
    if not runs:
        return ["run_id", "name", "status", "started", "points_acked", "points_stored", "latest"], []
    ids = [r[1] for r in runs]
    stats = client.query(
        f"SELECT c.run_id, c.metric, l.value, c.n FROM (SELECT run_id, metric, count() AS n FROM {db}metrics "
        f"WHERE run_id IN %(ids)s GROUP BY run_id, metric) AS c LEFT JOIN (SELECT run_id, metric, value FROM {db}latest "
        "WHERE run_id IN %(ids)s) AS l ON l.run_id = c.run_id AND l.metric = c.metric ORDER BY c.run_id, c.metric",
        parameters={"ids": ids}).result_rows
    stored: dict[str, int] = {}
    latest: dict[str, list[tuple[int, str]]] = {}
    for run_id, metric, value, count in stats:
        stored[run_id] = stored.get(run_id, 0) + count
        # Loss- and accuracy-like metrics first: they are what people look for.
        rank = 0 if ("loss" in metric or "acc" in metric) else 1
        latest.setdefault(run_id, []).append((rank, f"{metric}={value:.4g}"))
    rows = [(rid, name, status, started.strftime("%m-%d %H:%M:%S"), acked, stored.get(rid, 0),
             " ".join(text for _, text in sorted(latest.get(rid, []))[:3]))
            for p, rid, name, status, started, acked in runs]
    return ["run_id", "name", "status", "started", "points_acked", "points_stored", "latest"], rows



ARTIFACT_COLUMNS = ["uri", "stored_uri", "size", "sha256", "logged"]


def artifacts(client: Any, db: str, run_id: str, project: str | None = None) -> list[Row]:
    """A run's artifacts, oldest first: where each was made, where its bytes are kept, size and sha256."""
    where = "run_id = %(run)s" + (" AND project = %(project)s" if project else "")
    return rows(client, f"SELECT uri, stored_uri, size, sha256, ts FROM {db}.artifacts WHERE {where} "
                        "ORDER BY ts, uri LIMIT 1 BY uri, sha256", run=run_id, project=project)


def audit_chain(client: Any, db: str, project: str) -> list[Row]:
    """A project's audit records in chain order, in the column order runstream.wire.audit.verify reads."""
    return rows(client, f"SELECT seq, toUnixTimestamp64Milli(at), actor, action, target, source, before, after, "
                        f"prev_hash, hash, project, partition, offset, sig FROM {db}.audit_log WHERE project = %(p)s "
                        "ORDER BY seq", p=project)


def audit_log(client: Any, db: str, project: str, *, action: str | None = None, target: str | None = None,
              limit: int = 100) -> tuple[list[str], list[Row]]:
    """The newest audit records of a project, optionally of one action or target."""
    where = ["project = %(p)s"]
    params: dict[str, Any] = {"p": project, "n": limit}
    if action:
        where.append("action = %(a)s")
        params["a"] = action
    if target:
        where.append("target = %(t)s")
        params["t"] = target
    res = client.query(f"SELECT seq, at, actor, action, target, source, after FROM {db}.audit_log "
                       f"WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT %(n)s", parameters=params)
    return list(res.column_names), res.result_rows


def governance_history(client: Any, db: str) -> list[Row]:
    """Deletions and retention policies already decided, oldest first: (action, object, record JSON)."""
    return rows(client, f"SELECT action, object, record FROM {db}.governance_events FINAL "
                        "WHERE action IN ('run.delete', 'retention.set') ORDER BY partition, offset")


def audit_heads(client: Any, db: str) -> list[Row]:
    """Per project, the newest chained audit record: (project, seq, hash, source offset)."""
    return rows(client, f"SELECT project, max(seq), argMax(hash, seq), argMax(offset, seq) "
                        f"FROM {db}.audit_log GROUP BY project")


def points_stored(client: Any, project: str, run_ids: list[str]) -> int:
    """Points stored (each once) for these runs."""
    return int(client.query("SELECT count() FROM metrics WHERE project = %(p)s AND run_id IN %(ids)s",
                            parameters={"p": project, "ids": run_ids}).result_rows[0][0])


def series(client: Any, run_id: str, metric: str) -> tuple[list[str], list[Row]]:
    """One run's metric by step."""
    res = client.query("SELECT step, round(value, 4) AS value FROM metrics WHERE run_id = %(r)s AND metric = %(m)s "
                       "ORDER BY step", parameters={"r": run_id, "m": metric})
    return list(res.column_names), res.result_rows


def best_runs(client: Any, project: str, metric: str, param: str, tag: str, limit: int = 5) -> tuple[list[str], list[Row]]:
    """Runs with ``tag`` ranked by the last value of ``metric``, with one param beside it."""
    res = client.query(
        "SELECT r.name, round(argMax(m.value, m.step), 4) AS final, any(p.value) AS param "
        "FROM metrics AS m INNER JOIN runs AS r ON r.run_id = m.run_id "
        "LEFT JOIN (SELECT run_id, value FROM params FINAL WHERE key = %(k)s) AS p ON p.run_id = m.run_id "
        "WHERE m.project = %(p)s AND m.metric = %(m)s AND has(r.tags, %(t)s) "
        "GROUP BY r.name ORDER BY final DESC LIMIT %(n)s",
        parameters={"p": project, "m": metric, "k": param, "t": tag, "n": limit})
    return ["name", f"final_{metric}", param], res.result_rows


def alerts(client: Any, project: str) -> tuple[list[str], list[Row]]:
    """A project's alerts with their run names, oldest first."""
    res = client.query("SELECT r.name, a.kind, a.severity, a.step, a.status, a.message FROM alerts AS a "
                       "INNER JOIN runs AS r ON r.run_id = a.run_id WHERE a.project = %(p)s ORDER BY a.detected_at",
                       parameters={"p": project})
    return list(res.column_names), res.result_rows


def busiest_fleet_windows(client: Any, project: str, limit: int = 3) -> tuple[list[str], list[Row]]:
    """The fleet view's windows with the most points."""
    res = client.query("SELECT window_start, active_runs, points, runs_started, runs_finished, runs_failed "
                       "FROM fleet WHERE project = %(p)s ORDER BY points DESC LIMIT %(n)s",
                       parameters={"p": project, "n": limit})
    return list(res.column_names), res.result_rows


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


def governance_offset(client: Any, db: str) -> int:
    """The newest control record stored (its offset on the one control partition), -1 for none."""
    return int(rows(client, f"SELECT if(count() = 0, -1, toInt64(max(offset))) FROM {db}.governance_events")[0][0])
