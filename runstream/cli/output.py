"""What the commands and the demo share: the resolved config, result tables, the runs summary."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from runstream.wire import views
from runstream.wire.config import RunstreamConfig

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client


def resolve_config(args: argparse.Namespace) -> RunstreamConfig:
    """The file (--config or $RUNSTREAM_CONFIG), env vars, then the flags. Nothing is passed on through the
    environment: what this process does with the SDK (the demo) gets a transport made from this config."""
    return RunstreamConfig.load(getattr(args, "config", None) or None,
                                flags={"data_dir": getattr(args, "data_dir", None) or None,
                                       "clickhouse.url": getattr(args, "clickhouse_url", None) or None,
                                       "kafka.bootstrap": getattr(args, "kafka", None) or None})


def _json_value(v: Any) -> Any:
    """JSON has no NaN or infinity: they are written as the strings "NaN", "Infinity", "-Infinity", also inside
    arrays, maps and tuples."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    return v


def print_result(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            print(json.dumps({c: _json_value(v) for c, v in zip(columns, row)}, default=str, allow_nan=False))
    elif fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    else:
        cells = [["" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row] for row in rows]
        table = Table(show_lines=False)
        for i, c in enumerate(columns):
            # Never cut a value: ids and names (short) stay whole on one line, long text wraps.
            width = max([len(c), *(len(r[i]) for r in cells)])
            table.add_column(c, no_wrap=width <= 40, min_width=min(width, 40), overflow="fold")
        for r in cells:
            table.add_row(*r)
        # A pipe or a file has no width: every cell whole on its line (a terminal folds long text instead).
        Console(width=None if sys.stdout.isatty() else 100_000).print(table)


RUNS_SUMMARY_COLUMNS = ["run_id", "name", "status", "started", "points_acked", "points_stored", "latest"]


def runs_summary(client: Client, db: str = "", *, project: str | None = None, limit: int = 20) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Recent runs with their latest metrics, and points acknowledged (by the SDK's count) vs stored."""
    runs = views.rows(client, views.recent_runs(db, project, limit))
    if not runs:
        return RUNS_SUMMARY_COLUMNS, []
    stored: dict[str, int] = {}
    latest: dict[str, list[tuple[int, str]]] = {}
    for run_id, metric, value, count in views.rows(client, views.metric_counts(db, [r[1] for r in runs])):
        stored[run_id] = stored.get(run_id, 0) + count
        # Loss- and accuracy-like metrics first: they are what people look for.
        rank = 0 if ("loss" in metric or "acc" in metric) else 1
        latest.setdefault(run_id, []).append((rank, f"{metric}={value:.4g}"))
    rows = [(rid, name, status, started.strftime("%m-%d %H:%M:%S"), acked, stored.get(rid, 0),
             " ".join(text for _, text in sorted(latest.get(rid, []))[:3]))
            for _, rid, name, status, started, acked in runs]
    return RUNS_SUMMARY_COLUMNS, rows
