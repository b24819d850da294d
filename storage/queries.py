"""Read queries shared by the CLI, the demo and the benchmark."""

from __future__ import annotations

from typing import Any


def runs_summary(client: Any, *, project: str | None = None, limit: int = 20, database: str = "") -> tuple[list[str], list[tuple]]:
    """Recent runs with their latest metrics, and points acknowledged (by the SDK's count) vs stored."""
    db = f"{database}." if database else ""
    where = "WHERE project = %(project)s" if project else ""
    runs = client.query(f"SELECT project, run_id, name, status, started, points_acked FROM {db}runs {where} "
                        f"ORDER BY started DESC LIMIT %(limit)s", parameters={"project": project, "limit": limit}).result_rows
    if not runs:
        return ["run_id", "name", "status", "started", "points_acked", "points_stored", "latest"], []
    ids = [r[1] for r in runs]
    stats = client.query(
        f"SELECT run_id, metric, argMax(value, step), count() FROM {db}metrics WHERE run_id IN %(ids)s "
        "GROUP BY run_id, metric ORDER BY run_id, metric", parameters={"ids": ids}).result_rows
    stored: dict[str, int] = {}
    latest: dict[str, list[str]] = {}
    for run_id, metric, value, count in stats:
        stored[run_id] = stored.get(run_id, 0) + count
        # Loss- and accuracy-like metrics first: they are what people look for.
        rank = 0 if ("loss" in metric or "acc" in metric) else 1
        latest.setdefault(run_id, []).append((rank, f"{metric}={value:.4g}"))
    rows = [(rid, name, status, started.strftime("%m-%d %H:%M:%S"), acked, stored.get(rid, 0),
             " ".join(text for _, text in sorted(latest.get(rid, []))[:3]))
            for p, rid, name, status, started, acked in runs]
    return ["run_id", "name", "status", "started", "points_acked", "points_stored", "latest"], rows

