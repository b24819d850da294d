"""The Python read API's latency on a quiet stack: one run's 100k-point series, raw (pandas, Arrow) and
downsampled to 1,000 buckets, and a typed search over 1,000 runs' params and latest metrics.

    python bench/read_api.py --json

Prints one JSON line: p50/p99 (ms) of each read over ``--repeat`` repetitions, through runstream.Api against
the SQL endpoint of a `runstream up` stack of its own, after every point is stored. Leaves out: reads while the
stack ingests (bench/readers.py measures the read endpoint under load) and a remote network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fleetload import pct, start_stack  # noqa: E402  (bench/ is the script's own directory)


def main() -> None:
    from rich.console import Console

    import runstream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=True)
    sup, cfg, token = start_stack("runstream-readapi-", console)
    try:
        console.print(f"Logging a {args.points:,}-point series and {args.runs:,} small runs ...")
        long = runstream.init("bench", name="long", token=token, url=cfg.ingest.listen, system_interval_s=0)
        for step in range(args.points):
            long.log({"loss": 1.0 / (step + 1)}, step=step)
        assert long.finish(timeout=120)
        for i in range(args.runs):
            r = runstream.init("bench", name=f"sweep-{i}", config={"lr": 10 ** -(1 + i % 4), "optimizer": ["sgd", "adam"][i % 2]},
                               token=token, url=cfg.ingest.listen, system_interval_s=0)
            r.log({"val_loss": (i % 100) / 100})
            r.finish(timeout=0)
        assert runstream.init("bench", name="last", token=token, url=cfg.ingest.listen, system_interval_s=0).finish(timeout=120)
        api = runstream.Api(f"http://{cfg.sink.sql_listen}", token, database=cfg.clickhouse.database)
        deadline = time.monotonic() + 300
        while len(api.history(long.id, "loss")) < args.points or len(api.runs("bench", status="finished", limit=10**6)) < args.runs + 2:
            if time.monotonic() > deadline:
                raise SystemExit("the points were not all stored within 300 s")
            time.sleep(0.5)
        reads = {
            "history_100k_pandas": lambda: api.history(long.id, "loss"),
            "history_100k_arrow": lambda: api.history(long.id, "loss", format="arrow"),
            "history_100k_1000_buckets": lambda: api.history(long.id, "loss", buckets=1000),
            "search_1000_runs_param_and_metric": lambda: api.runs("bench", params={"lr": (">", 0.005), "optimizer": "sgd"},
                                                                  metrics={"val_loss": ("<", 0.5)}),
        }
        out: dict[str, object] = {"points": args.points, "runs": args.runs, "repeat": args.repeat}
        for name, read in reads.items():
            read()  # warm: the first call pays connection setup
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                read()
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = {"p50_ms": pct(times, 0.5, 2), "p99_ms": pct(times, 0.99, 2)}
            console.print(f"{name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms")  # type: ignore[index]
        out["search_rows"] = len(api.runs("bench", params={"lr": (">", 0.005), "optimizer": "sgd"}, metrics={"val_loss": ("<", 0.5)}))
        if args.json:
            print(json.dumps(out))
    finally:
        sup.stop()


if __name__ == "__main__":
    main()
