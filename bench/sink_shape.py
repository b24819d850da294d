"""What one sink poll costs by the shape of its batches: the same points from a few large batches (the ingest bench:
50 runs per client process, 3,000 points a flush) or from many small ones (a fleet: one run per job, 150 points a
flush), through the sink's own steps on the embedded engine.

    python bench/sink_shape.py --json

Per shape (runs x points per batch, one batch per run), the median over ``--repeat`` polls of: decode (Kafka record
values to batches), build (batches to the tables' columns) and insert (the sink's Writer: every table, the
materialized views and skip index included), in ms, and their sum per point in ns; the insert's CPU per point
(every thread: the engine sorts and writes on its own), and the build's and insert's together. Then the merge those polls'
parts cost (merges are held until then; one OPTIMIZE FINAL into one part): CPU ns per point, and the bytes per point
stored. ``--codec zstd`` stores the points' columns as the schema did before migration 0011 (ZSTD(1)), to compare.
Leaves out: Kafka, other processes (the machine is otherwise idle), the merge selector's choices (a live sink merges
some rows more than once).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def records(runs: int, points: int) -> list[Any]:
    """One metrics batch per run as ingest publishes it (10 metrics, ``points`` points)."""
    from runstream.v1.ingest_pb2 import Batch, Metrics
    from runstream.wire import encoding

    names = [f"m{i}" for i in range(10)]
    now_ms = int(time.time() * 1000)
    out = []
    for _ in range(runs):
        b = Batch(batch_id=uuid.uuid4().hex, project="bench", run_id=uuid.uuid4().hex, seq=1, created_ms=now_ms,
                  metrics=Metrics(names=names, name_index=[i % 10 for i in range(points)],
                                  steps=[i // 10 for i in range(points)], timestamps_ms=[now_ms] * points,
                                  values=[random.random() for _ in range(points)]))
        out.append(encoding.encode(b, max_record_bytes=1 << 24))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--points", type=int, default=300_000, help="points per poll (the sink's max_rows_per_insert)")
    p.add_argument("--sizes", default="3000,150", help="points per batch, one shape each")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--codec", choices=("schema", "zstd"), default="schema",
                   help="the points' columns as the schema has them (LZ4), or ZSTD(1) as before migration 0011")
    p.add_argument("--no-collapse-on-insert", action="store_true",
                   help="insert the points with optimize_on_insert 0 (a trial: bench/results/sink-points-insert.json)")
    p.add_argument("--drop-views", default="",
                   help="materialized views to drop first, comma-separated (metric_latest_mv, run_index_metrics_mv: "
                        "those the points feed): what they cost of an insert (a trial)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()

    from runstream.storage import columns
    from runstream.storage.governance import GovernanceApplier
    from runstream.storage.store import migrate, open_embedded
    from runstream.storage.writer import Writer
    from runstream.wire import encoding

    client = open_embedded(Path(tempfile.mkdtemp(prefix="runstream-sink-shape-")) / "clickhouse")
    db = "runstream"
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    migrate(client, db)
    if args.codec == "zstd":
        client.command(f"ALTER TABLE {db}.metric_points " + ", ".join(
            f"MODIFY COLUMN {col} CODEC({pre}ZSTD(1))" for col, pre in (
                ("step", "Delta, "), ("ts", "Delta, "), ("value", "Gorilla, "), ("batch", ""), ("idx", "Delta, "),
                ("stored", "Delta, "))))
    dropped = [v for v in args.drop_views.split(",") if v]
    for view in dropped:
        client.command(f"DROP VIEW {db}.{view}")
    if args.no_collapse_on_insert:  # the writer's points insert (its one Arrow insert) with the setting added
        insert_arrow = client.insert_arrow
        client.insert_arrow = lambda table, arrow, settings=None: insert_arrow(  # type: ignore[method-assign]
            table, arrow, settings={**(settings or {}), "optimize_on_insert": 0})
    writer = Writer(client, db, GovernanceApplier(client, db))
    shapes = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs = args.points // size
        steps: dict[str, list[float]] = {"decode": [], "build": [], "insert": []}
        insert_cpu: list[float] = []
        build_cpu: list[float] = []
        client.command(f"SYSTEM STOP MERGES {db}.metric_points")
        for i in range(args.repeat):
            if not args.json:
                print(f"{runs} runs x {size} points: poll {i + 1}/{args.repeat}", file=sys.stderr)
            recs = records(runs, size)
            t0 = time.perf_counter()
            batches = [b for r in recs for b in encoding.decode(r.value, r.headers)]
            t1, c1 = time.perf_counter(), time.process_time()
            tables = columns.build([(b, 0, n) for n, b in enumerate(batches)])
            t2 = time.perf_counter()
            build_cpu.append(time.process_time() - c1)
            c2 = time.process_time()  # every thread of this process: the engine inserts on its own threads too
            writer.write(tables)
            t3 = time.perf_counter()
            insert_cpu.append(time.process_time() - c2)
            for name, took in (("decode", t1 - t0), ("build", t2 - t1), ("insert", t3 - t2)):
                steps[name].append(took * 1000)
        median = {name: round(statistics.median(v), 1) for name, v in steps.items()}
        client.command(f"SYSTEM START MERGES {db}.metric_points")
        cpu0 = time.process_time()  # every thread of this process: the engine merges in its own
        client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
        merge_cpu = time.process_time() - cpu0
        merged_rows, merged_bytes = client.query(
            f"SELECT sum(rows), sum(data_compressed_bytes) FROM system.parts WHERE active AND database = '{db}' "
            "AND table = 'metric_points'").result_rows[0]
        client.command(f"TRUNCATE TABLE {db}.metric_points")
        shapes.append({"runs": runs, "points_per_batch": size, "points": runs * size, **{f"{k}_ms": v for k, v in median.items()},
                       "total_ms": round(sum(median.values()), 1),
                       "ns_per_point": round(sum(median.values()) * 1e6 / (runs * size)),
                       "insert_cpu_ns_per_point": round(statistics.median(insert_cpu) * 1e9 / (runs * size)),
                       "build_insert_cpu_ns_per_point": round(statistics.median(
                           [b + i for b, i in zip(build_cpu, insert_cpu)]) * 1e9 / (runs * size)),
                       "merge_parts": args.repeat, "merge_cpu_ms": round(merge_cpu * 1000),
                       "merge_ns_per_point": round(merge_cpu * 1e9 / merged_rows),
                       "bytes_per_point": round(merged_bytes / merged_rows, 2)})
    print(json.dumps({"repeat": args.repeat, "codec": args.codec, "collapse_on_insert": not args.no_collapse_on_insert,
                      "views_dropped": dropped, "shapes": shapes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
