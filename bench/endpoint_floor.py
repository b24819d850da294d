"""The read endpoint's cost per query when the query itself costs almost nothing: what every dashboard panel and
read-API call pays on top of its engine work. A `runstream up` stack of its own, idle (no load), and one client
(clickhouse-connect, as the read API and Grafana-like tools use it) sending ``--queries`` queries of each kind back to
back, after a warm-up.

    python bench/endpoint_floor.py --json

Prints one JSON line: per kind, the latency p50/p99 seen by the client and the sink process's CPU per query
(core-ms, /proc, every thread of the process: the endpoint, the engine, and the sink's own idle polling, which is
counted in too and is the same whatever the endpoint does), the client's CPU per query apart, and a calibration. Leaves
out: concurrency (one query at a time), results of any size, a network between machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration, cpu_seconds  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, start_stack  # noqa: E402

KINDS = {"select_1": "SELECT 1", "runs_count": "SELECT count() FROM runs", "one_setting": "SELECT getSetting('max_threads')"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=1000, help="queries of each kind")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()
    console = Console(stderr=True)
    import clickhouse_connect

    sup, cfg, token = start_stack("runstream-bench-floor-", console)
    try:
        sink = next(r.proc.pid for r in sup.procs if r.role == "sink")
        host, port = cfg.sink.sql_listen.rsplit(":", 1)
        client = clickhouse_connect.get_client(host=host, port=int(port), username="default", password=token,
                                               database=cfg.clickhouse.database)
        out: dict[str, object] = {"queries_per_kind": args.queries, "calibration": calibration()}
        for kind, sql in KINDS.items():
            for _ in range(100):  # warm-up: connections, the statement check's cache, the engine's caches
                client.query(sql)
            lat: list[float] = []
            s0, c0 = cpu_seconds(sink) or 0.0, time.process_time()
            for _ in range(args.queries):
                t = time.perf_counter()
                rows = client.query(sql).result_rows
                lat.append((time.perf_counter() - t) * 1000)
                assert len(rows) == 1, rows
            s1, c1 = cpu_seconds(sink) or 0.0, time.process_time()
            out[kind] = {"p50_ms": round(statistics.median(lat), 2), "p99_ms": pct(lat, 0.99, 2),
                         "sink_core_ms_per_query": round((s1 - s0) / args.queries * 1000, 3),
                         "client_core_ms_per_query": round((c1 - c0) / args.queries * 1000, 3)}
            console.print(f"{kind}: {out[kind]}")
        print(json.dumps(out))
    finally:
        sup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
