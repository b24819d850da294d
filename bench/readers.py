"""Dashboard readers against ingest: the read endpoint's latency while the stack stores a fleet's points, and what
the readers cost ingest.

    python bench/readers.py --json                     # 8 readers, 500k points/s offered, 20 s per phase

Phase 1 runs the ingest load alone; phase 2 runs the same load while ``--readers`` processes (independent viewers:
threads of one Python process would also wait for each other's result parsing) each refresh a dashboard through
clickhouse-connect, signed in with Grafana's token (the dashboards' workload class): every ClickHouse panel query
of the fleet overview and the run explorer (dashboards/json, macros expanded as the plugin expands them for the
last 5 minutes at a 5 s interval), plus the latest value per run that `runstream runs` shows. A reader refreshes
every ``--refresh-s`` seconds (Grafana's shortest auto-refresh is 5 s); 0 refreshes back to back (a stress figure). Prints one JSON line:
per-panel and overall query p50/p99 (ms) as the client sees them, the server's part of them (from the query's arrival
to the result, X-ClickHouse-Summary's elapsed_ns), queries/s, and ingest points/s solo and with readers (and their ratio).

Mixed readers (``--dashboards N --notebooks M``): N dashboard readers refresh the same panels every ``--refresh-s``
seconds, each from its own moment and with its own time range, signed in with Grafana's token (`runstream up` makes
it: the dashboards' workload class); M notebook readers send raw-point aggregations over the metrics table back to
back (the latest value per run, one run's full series, 5 s buckets of every run, points per run), signed in with the
dev token (ad-hoc). Sharing identical reads is off, so every query counted ran. ``--one-class`` puts every token in
one class at the dashboards' priority, as the endpoint was before workload classes (the "before" figure).

    python bench/readers.py --dashboards 4 --notebooks 4 --json [--one-class]

Leaves out: Grafana's own rendering and network; the readers run on the same 2 cores as the whole stack.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import load as fleet_load  # noqa: E402
from fleetload import pct, start_stack  # noqa: E402

from runstream.ops.stack import scrape  # noqa: E402
from runstream.storage.sqlserver import may_raise_priority  # noqa: E402

DASHBOARDS = ("fleet-overview", "run-explorer")
LATEST = ("SELECT run_id, metric, value FROM latest WHERE project = %(p)s AND metric IN ('loss', 'acc') "
          "ORDER BY run_id, metric")
# What an analyst's notebook sends: aggregations over every raw point of a project.
NOTEBOOK = {
    "latest value per run (raw)": "SELECT run_id, metric, argMax(value, step) FROM metrics WHERE project = %(p)s "
                                  "GROUP BY run_id, metric ORDER BY run_id, metric",
    "one run's full series": "SELECT step, value FROM metrics WHERE project = %(p)s AND run_id = %(r)s "
                             "AND metric = 'loss' ORDER BY step",
    "5 s buckets of every run": "SELECT toStartOfInterval(ts, INTERVAL 5 SECOND) AS t, run_id, avg(value) FROM metrics "
                                "WHERE project = %(p)s AND metric = 'loss' GROUP BY t, run_id ORDER BY t, run_id",
    "points per run": "SELECT run_id, count() FROM metrics WHERE project = %(p)s GROUP BY run_id ORDER BY run_id",
}


def panels(project: str, runs: list[str], now_s: int) -> dict[str, str]:
    """The dashboards' ClickHouse panel queries as Grafana's plugin sends them for the last 5 minutes."""
    from runstream.dashboards import build
    from tests.grafana_macros import Context, expand, interpolate

    ctx = Context(from_s=now_s - 300, to_s=now_s, interval_s=5,
                  variables={"project": [project], "run": runs[:2], "metric": ["loss"]},
                  all_values={"project": [project], "run": runs, "metric": ["loss", "acc"]})
    out = {}
    for name in DASHBOARDS:
        for panel in build.generate()[name]["panels"]:
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    out[f"{name} / {panel['title']}"] = expand(interpolate(target["rawSql"], ctx), ctx)
    return out


def reader(url: str, token: str, database: str, runs: list[str], fixed: dict[str, str] | None, refresh_s: float,
           start_at: float, stop: Any, out: Any, kind: str = "dashboard") -> None:
    """One viewer in a process of its own (as Grafana's viewers are independent; threads of one Python process would
    also wait for each other's result parsing): refreshes until ``stop``, then puts (latencies by panel, server ms)
    on ``out``. ``fixed``: the queries every reader sends; None: expanded for its own "last 5 minutes" each time.
    ``start_at``: the first refresh's wall-clock time (readers that refresh together start at the same moment)."""
    from runstream.storage.store import open_url

    client = open_url(url, token=token, database=database)
    lat: dict[str, list[float]] = {}
    server: list[float] = []
    errors: list[str] = []
    rng = random.Random(start_at)
    stop.wait(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    while not stop.is_set():
        started = time.monotonic()
        queries = fixed if fixed is not None else NOTEBOOK if kind == "notebook" else dashboard(runs)
        for name, sql in queries.items():
            if stop.is_set():
                break
            t0 = time.perf_counter()
            try:
                res = client.query(sql, parameters={"p": "solo", "r": rng.choice(runs)})
            except Exception as exc:  # counted, never hidden: a notebook query must complete
                errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            lat.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
            server.append(int(res.summary.get("elapsed_ns", 0)) / 1e6)  # from its arrival at the endpoint to the result
        stop.wait(max(0.0, refresh_s - (time.monotonic() - started)))
    out.put((kind, lat, server, errors, time.process_time() - cpu0))


def dashboard(runs: list[str]) -> dict[str, str]:
    return {**panels("solo", runs, int(time.time())), "runs / latest value per run": LATEST}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--refresh-s", type=float, default=5.0, help="each reader's dashboard refresh period; 0: back to back")
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--points-per-s", type=float, default=500_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stagger", action="store_true",
                   help="independent viewers: each reader starts at a random point of the refresh period and expands "
                        "the time range at each refresh (default: all refresh together, the same queries)")
    p.add_argument("--no-sharing", action="store_true", help="sink.sql_share_identical off: every query runs on its own")
    p.add_argument("--thread-nice", type=int, default=None,
                   help="sink.sql_thread_nice (default: the config's); 0 runs reads at the normal CPU priority")
    p.add_argument("--max-threads", type=int, default=None,
                   help="sink.sql_max_threads (default: the config's): engine threads per query")
    p.add_argument("--dashboards", type=int, default=0, help="mixed readers: dashboard readers (Grafana's token)")
    p.add_argument("--notebooks", type=int, default=0, help="mixed readers: notebook readers (ad-hoc, back to back)")
    p.add_argument("--one-class", action="store_true", help="every token in one workload class (as before classes)")
    p.add_argument("--adhoc-nice", type=int, default=None, help="sink.sql_adhoc_nice (default: the config's)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()
    if args.dashboards or args.notebooks:
        return mixed(args)

    from rich.console import Console


    console = Console(stderr=True, quiet=args.json)
    def configure(c: Any) -> None:
        c.sink.sql_share_identical = not args.no_sharing
        if args.thread_nice is not None:
            c.sink.sql_thread_nice = args.thread_nice
        if args.max_threads is not None:
            c.sink.sql_max_threads = args.max_threads
    sup, cfg, token = start_stack("runstream-readers-", console, configure)
    load = dict(jobs=args.jobs, seconds=args.seconds, points_per_s=args.points_per_s, workers=args.workers)
    try:
        solo, url, _, runs = phase_one(console, sup, cfg, token, load)
        fixed = dashboard(runs)
        rng = random.Random(1)
        start_at = time.time() + 5  # once every reader process has started
        starts = [start_at + (rng.uniform(0, args.refresh_s) if args.stagger else 0.0) for _ in range(args.readers)]
        ctx = mp.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        before = scrape(cfg.sink.metrics_port)
        grafana = cfg.dashboard_token_path.read_text().strip()  # the dashboards' workload class
        readers = [ctx.Process(target=reader, args=(url, grafana, cfg.clickhouse.database, runs,
                                                    None if args.stagger else fixed, args.refresh_s, start, stop,
                                                    results), daemon=True) for start in starts]
        busy, answers, elapsed = phase_two(console, sup, cfg, token, load, readers, start_at, stop, results,
                                           f"{args.readers} readers", timeout=120)
        after = scrape(cfg.sink.metrics_port)
        executions = {e: round(after.get(f"runstream_sql_queries_total{{execution={e}}}", 0.0)
                               - before.get(f"runstream_sql_queries_total{{execution={e}}}", 0.0)) for e in ("ran", "shared")}
        per_panel = {name: [v for _, lat, _, _, _ in answers for v in lat.get(name, [])] for name in fixed}
        server = [v for _, _, ms, _, _ in answers for v in ms]
        every = [v for vs in per_panel.values() for v in vs]
        out = {
            "readers": args.readers, "refresh_s": args.refresh_s, "stagger": args.stagger, "panels": len(fixed),
            "engine_runs": executions["ran"], "shared_runs": executions["shared"],
            "offered_points_per_s": round(args.points_per_s), "seconds": args.seconds,
            "queries": len(every), "queries_per_s": round(len(every) / elapsed, 1),
            "panel_p50_ms": pct(every, 0.5), "panel_p99_ms": pct(every, 0.99),
            "server_p50_ms": pct(server, 0.5), "server_p99_ms": pct(server, 0.99),
            "per_panel_ms": {name: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
                             for name, v in per_panel.items()},
            "sql_share_identical": cfg.sink.sql_share_identical, "sql_thread_nice": cfg.sink.sql_thread_nice,
            "sql_max_threads": cfg.sink.sql_max_threads,
            "may_raise_priority": may_raise_priority(),
            "ingest_points_per_s_solo": solo["points_per_s"], "ingest_points_per_s_with_readers": busy["points_per_s"],
            "ingest_ratio": round(busy["points_per_s"] / max(1, solo["points_per_s"]), 3),
            "lost": solo["lost"] + busy["lost"], "duplicated": solo["duplicated"] + busy["duplicated"],
            "cpu_cores": os.cpu_count(),
        }
        print(json.dumps(out))
        return 0
    finally:
        sup.stop()


def phase_one(console: Any, sup: Any, cfg: Any, token: str, load: dict[str, Any]) -> tuple[Any, str, Any, list[str]]:
    """The load alone (project ``solo``); then (its figures, the endpoint's URL, a client, the runs it made)."""
    from runstream.storage.store import open_url

    with console.status("phase 1: ingest alone ...") as status:
        solo = fleet_load(sup, cfg, token, project="solo", status=status, **load)
    url = f"http://{cfg.sink.sql_listen}"
    client = open_url(url, token=token, database=cfg.clickhouse.database)
    runs = [r[0] for r in client.query("SELECT run_id FROM runs WHERE project = 'solo' ORDER BY run_id").result_rows]
    return solo, url, client, runs


def phase_two(console: Any, sup: Any, cfg: Any, token: str, load: dict[str, Any], readers: list[Any], start_at: float,
              stop: Any, results: Any, label: str, *, timeout: float) -> tuple[Any, list[Any], float]:
    """The same load (project ``busy``) while ``readers`` read from ``start_at``; then (its figures, each reader's
    answer, the seconds from the readers' start to their end)."""
    for r in readers:
        r.start()
    time.sleep(max(0.0, start_at - time.time()))  # the readers begin at start_at: the load starts with them
    t0 = time.monotonic()
    with console.status(f"phase 2: ingest with {label} ...") as status:
        busy = fleet_load(sup, cfg, token, project="busy", status=status, **load)
    stop.set()
    answers = [results.get(timeout=timeout) for _ in readers]
    for r in readers:
        r.join(30)
    return busy, answers, time.monotonic() - t0


def summary(lat: dict[str, list[float]]) -> dict[str, Any]:
    every = [v for vs in lat.values() for v in vs]
    return {"queries": len(every), "p50_ms": pct(every, 0.5), "p99_ms": pct(every, 0.99),
            "per_query_ms": {name: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)} for name, v in lat.items()}}


def server_summary(ms: list[float]) -> dict[str, Any]:
    """The endpoint's part of each query (from its arrival to the result, a slot's wait included): the client's
    figure adds the network and the reader's own parsing."""
    return {"server_p50_ms": pct(ms, 0.5), "server_p99_ms": pct(ms, 0.99)}


def mixed(args: argparse.Namespace) -> int:
    """Dashboards and notebooks at once, each class in its own line (or in one, ``--one-class``)."""
    from rich.console import Console


    console = Console(stderr=True, quiet=args.json)

    def configure(c: Any) -> None:
        c.sink.sql_share_identical = False  # every query counted is an engine run
        if args.adhoc_nice is not None:
            c.sink.sql_adhoc_nice = args.adhoc_nice
        if args.thread_nice is not None:
            c.sink.sql_thread_nice = args.thread_nice
        if args.one_class:
            c.sink.sql_dashboard_tokens = ""
            c.sink.sql_adhoc_nice = c.sink.sql_thread_nice
    sup, cfg, token = start_stack("runstream-readers-", console, configure)
    grafana = cfg.dashboard_token_path.read_text().strip()
    load = dict(jobs=args.jobs, seconds=args.seconds, points_per_s=args.points_per_s, workers=args.workers)
    try:
        solo, url, client, runs = phase_one(console, sup, cfg, token, load)
        points = int(client.query("SELECT count() FROM metric_points WHERE project = 'solo'").result_rows[0][0])
        calib = calibration()  # before the readers start: their processes' start-up would be counted in it
        rng = random.Random(1)
        start_at = time.time() + 5  # once every reader process has started
        ctx = mp.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        readers = [ctx.Process(target=reader, args=(url, grafana, cfg.clickhouse.database, runs, None, args.refresh_s,
                                                    start_at + rng.uniform(0, args.refresh_s), stop, results,
                                                    "dashboard"), daemon=True) for _ in range(args.dashboards)]
        readers += [ctx.Process(target=reader, args=(url, token, cfg.clickhouse.database, runs, None, 0.0, start_at, stop,
                                                     results, "notebook"), daemon=True) for _ in range(args.notebooks)]
        busy, answers, elapsed = phase_two(console, sup, cfg, token, load, readers, start_at, stop, results,
                                           f"{args.dashboards} dashboards, {args.notebooks} notebooks", timeout=180)
        by_kind: dict[str, dict[str, list[float]]] = {"dashboard": {}, "notebook": {}}
        errors: dict[str, list[str]] = {"dashboard": [], "notebook": []}
        server: dict[str, list[float]] = {"dashboard": [], "notebook": []}
        reader_cpu = {"dashboard": 0.0, "notebook": 0.0}  # the reader processes' own (parsing), on the stack's cores
        for kind, lat, ms, errs, cpu_s in answers:
            reader_cpu[kind] += cpu_s
            for name, vs in lat.items():
                by_kind[kind].setdefault(name, []).extend(vs)
            errors[kind].extend(errs)
            server[kind].extend(ms)
        out = {
            "mode": "mixed", "one_class": args.one_class, "dashboards": args.dashboards, "notebooks": args.notebooks,
            "refresh_s": args.refresh_s, "offered_points_per_s": round(args.points_per_s), "seconds": args.seconds,
            "points_in_notebook_project": points, "elapsed_s": round(elapsed, 1),
            "dashboard": {**summary(by_kind["dashboard"]), **server_summary(server["dashboard"]),
                          "errors": len(errors["dashboard"])},
            "notebook": {**summary(by_kind["notebook"]), **server_summary(server["notebook"]),
                         "errors": len(errors["notebook"])},
            "error_samples": (errors["dashboard"] + errors["notebook"])[:5],
            "reader_processes_cores": {k: round(v / elapsed, 3) for k, v in reader_cpu.items()},
            "sql_thread_nice": cfg.sink.sql_thread_nice, "sql_adhoc_nice": cfg.sink.sql_adhoc_nice,
            "sql_max_concurrent": cfg.sink.sql_max_concurrent,
            "sql_dashboard_concurrent": cfg.sink.sql_dashboard_concurrent, "may_raise_priority": may_raise_priority(),
            "ingest_points_per_s_solo": solo["points_per_s"], "ingest_points_per_s_with_readers": busy["points_per_s"],
            "ingest_ratio": round(busy["points_per_s"] / max(1, solo["points_per_s"]), 3),
            "lost": solo["lost"] + busy["lost"], "duplicated": solo["duplicated"] + busy["duplicated"],
            "cpu_per_point": busy.get("cpu"), "calibration": calib, "calibration_alone": solo.get("calibration"),
            "cpu_cores": os.cpu_count(),
        }
        print(json.dumps(out))
        return 0
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
