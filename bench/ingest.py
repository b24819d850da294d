"""End-to-end ingest benchmark: the local stack (real Kafka, ingest, sink, embedded ClickHouse) and N
concurrent simulated jobs logging 10 metrics per log() call through the SDK.

    python bench/ingest.py --jobs 100 --seconds 30 --json

Prints one JSON line: points_per_s (stored points counted in ClickHouse over the logging window),
e2e_p50_ms / e2e_p99_ms (log() call to row stored and queryable), sdk_log_us (median cost of one
log() of 10 metrics in the job's thread), lost and duplicated (as queries see them, after storage's collapse),
replayed_rows_collapsed (point rows the sink inserted beyond the distinct points: replays storage collapsed) and
duplicate_batches_skipped (batches the sink recognised as stored and did not insert), peak RSS per process (MiB;
the sink's through ingest and drain, and separately with this bench's own checks, which run in the sink's engine),
and CPU per point (bench/cpu.py: each role's core-seconds per million points stored, from the jobs' start to the
end of the drain; the client processes apart; core-µs per batch acknowledged; the busiest threads by name; a
calibration figure). The measured load follows ``--warmup-s`` of the same load, unmeasured. Leaves out: the
stack's start, a long run's larger merges (the store holds seconds of data), a network between machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fleetload import load, start_stack  # noqa: E402  (bench/ is the script's own directory)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--points-per-s", type=float, default=600_000, help="offered load, all jobs together")
    p.add_argument("--workers", type=int, default=2, help="client processes the jobs are spread over")
    p.add_argument("--ingest-replicas", type=int, default=1)
    p.add_argument("--durable", action="store_true", help="the SDK's durable logging (each batch on disk before it is sent)")
    p.add_argument("--merge-nice", type=int, default=None,
                   help="clickhouse.merge_nice for this run (the embedded engine's merge threads; 0: normal priority)")
    p.add_argument("--sink-gather-s", type=float, default=None,
                   help="sink.gather_s for this run (how long a poll gathers points before its insert; 0: none)")
    p.add_argument("--warmup-s", type=float, default=60,
                   help="load first, unmeasured, for this long: a fresh broker's JIT compilers spend about 0.3 "
                        "core-seconds per million points after 5 s of load, under 0.1 after 60 s (0: none)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()

    from rich.console import Console
    console = Console(stderr=True, quiet=args.json)
    def configure(c: Any) -> None:
        if args.merge_nice is not None:
            c.clickhouse.merge_nice = args.merge_nice
        if args.sink_gather_s is not None:
            c.sink.gather_s = args.sink_gather_s
    sup, cfg, token = start_stack("runstream-bench-", console, configure, ingest_replicas=args.ingest_replicas)
    try:
        console.print(f"{args.jobs} jobs in {args.workers} processes (offered {args.points_per_s:,.0f} points/s) "
                      f"for {args.seconds:.0f}s ...")
        with console.status("jobs logging...") as status:
            if args.warmup_s:
                load(sup, cfg, token, jobs=args.jobs, seconds=args.warmup_s, points_per_s=args.points_per_s,
                     workers=args.workers, status=status, project="warmup", checks=False)
            out = load(sup, cfg, token, jobs=args.jobs, seconds=args.seconds, points_per_s=args.points_per_s,
                       workers=args.workers, status=status, durable=args.durable)
        out["durable"] = args.durable
        out["warmup_s"] = args.warmup_s
        out["merge_nice"] = cfg.clickhouse.merge_nice
        out["sink_gather_s"] = cfg.sink.gather_s
        print(json.dumps(out))
        return 0 if out["lost"] == 0 and out["duplicated"] == 0 else 1
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
