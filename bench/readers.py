"""Dashboard readers against ingest: the read endpoint's latency while the stack stores a fleet's points, and what
the readers cost ingest.

    python bench/readers.py --json                     # 8 readers, 500k points/s offered, 20 s per phase

Phase 1 runs the ingest load alone; phase 2 runs the same load while ``--readers`` threads each loop over four
panel queries of the dashboards (latest value per run, one run's series, a 5 s bucketed panel, the runs list)
through clickhouse-connect, as Grafana would refresh them. Prints one JSON line: per-panel and overall query
p50/p99 (ms) and queries/s, and ingest points/s solo and with readers (with their ratio).

Leaves out: Grafana's own rendering and network; the readers run on the same 2 cores as the whole stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fleetload import load as fleet_load  # noqa: E402  (bench/ is the script's own directory)

PANELS = {
    # What the fleet overview and run explorer ask for on every refresh (macros expanded for a 5 minute range).
    "latest value per run": "SELECT run_id, metric, argMax(value, step) AS value FROM metrics WHERE project = {p:String} "
                            "AND metric IN ('loss', 'acc') GROUP BY run_id, metric ORDER BY run_id, metric",
    "one run's series": "SELECT step, value FROM metrics WHERE project = {p:String} AND run_id = {r:String} "
                        "AND metric = 'loss' ORDER BY step",
    "5 s bucketed panel": "SELECT toStartOfInterval(ts, INTERVAL 5 second) AS time, avg(value) AS loss FROM metrics "
                          "WHERE project = {p:String} AND metric = 'loss' AND ts >= now() - INTERVAL 5 MINUTE "
                          "GROUP BY time ORDER BY time",
    "runs list": "SELECT run_id, name, status, started, points_acked FROM runs WHERE project = {p:String} "
                 "ORDER BY started DESC LIMIT 50",
}


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1) if s else 0.0


def read_loop(client: Any, project: str, run_id: str, stop: threading.Event, out: dict[str, list[float]]) -> None:
    while not stop.is_set():
        for name, sql in PANELS.items():
            t0 = time.perf_counter()
            client.query(sql, parameters={"p": project, "r": run_id})
            out[name].append((time.perf_counter() - t0) * 1000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--points-per-s", type=float, default=500_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()

    from rich.console import Console

    from runstream.ops.stack import isolated_config
    from runstream.ops.supervisor import Supervisor
    from runstream.storage.store import open_url

    console = Console(stderr=True, quiet=args.json)
    home = Path(tempfile.mkdtemp(prefix="runstream-readers-"))
    cfg = isolated_config(home)
    os.environ["RUNSTREAM_DATA_DIR"] = str(home)
    sup = Supervisor(cfg)
    console.print(f"Starting the stack in {home} ...")
    token = sup.start()["token"]
    load = dict(jobs=args.jobs, seconds=args.seconds, points_per_s=args.points_per_s, workers=args.workers)
    try:
        with console.status("phase 1: ingest alone ...") as status:
            solo = fleet_load(sup, cfg, token, project="solo", status=status, **load)
        clients = [open_url(f"http://{cfg.sink.sql_listen}", token=token, database=cfg.clickhouse.database)
                   for _ in range(args.readers)]
        run_id = clients[0].query("SELECT run_id FROM runs WHERE project = 'solo' LIMIT 1").result_rows[0][0]
        latencies: list[dict[str, list[float]]] = [{name: [] for name in PANELS} for _ in clients]
        stop = threading.Event()
        threads = [threading.Thread(target=read_loop, args=(c, "solo", run_id, stop, lat), daemon=True)
                   for c, lat in zip(clients, latencies)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        with console.status(f"phase 2: ingest with {args.readers} readers ...") as status:
            busy = fleet_load(sup, cfg, token, project="busy", status=status, **load)
        stop.set()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        per_panel = {name: [v for lat in latencies for v in lat[name]] for name in PANELS}
        every = [v for vs in per_panel.values() for v in vs]
        out = {
            "readers": args.readers, "offered_points_per_s": round(args.points_per_s), "seconds": args.seconds,
            "queries": len(every), "queries_per_s": round(len(every) / elapsed, 1),
            "panel_p50_ms": percentile(every, 0.5), "panel_p99_ms": percentile(every, 0.99),
            "per_panel_ms": {name: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99), "n": len(v)}
                             for name, v in per_panel.items()},
            "ingest_points_per_s_solo": solo["points_per_s"], "ingest_points_per_s_with_readers": busy["points_per_s"],
            "ingest_ratio": round(busy["points_per_s"] / max(1, solo["points_per_s"]), 3),
            "lost": solo["lost"] + busy["lost"], "duplicated": solo["duplicated"] + busy["duplicated"],
            "cpu_cores": os.cpu_count(),
        }
        print(json.dumps(out))
        return 0
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
