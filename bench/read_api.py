"""The Python read API's latency on a quiet stack: one run's 100k-point series, raw (pandas, Arrow), downsampled
to 1,000 buckets and scanned in pages; a run's record; and searches over ``--runs`` (10,000) runs' params and
latest metrics: typed filters, MLflow's filter syntax with OR, ordered pages.

    python bench/read_api.py --json

Prints one JSON line: p50/p99 (ms) and CPU (core-ms, the sink's and the client's) of each read over ``--repeat``
repetitions, through runstream.Api against the SQL endpoint of a `runstream up` stack of its own, after every
point is stored. Leaves out: reads while the
stack ingests (bench/readers.py measures the read endpoint under load) and a remote network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import CpuMeter, calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, sdk_target, start_stack  # noqa: E402


def main() -> None:
    from rich.console import Console

    import runstream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--random-ids", action="store_true",
                    help="give the small runs random ids (uuid4, as the SDK did before its time-ordered UUIDv7 ids)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=True)
    sup, cfg, token = start_stack("runstream-readapi-", console)
    try:
        console.print(f"Logging a {args.points:,}-point series and {args.runs:,} small runs ...")
        target = sdk_target(cfg, token)
        long = runstream.init("bench", name="long", system_interval_s=0, **target)
        for step in range(args.points):
            long.log({"loss": 1.0 / (step + 1)}, step=step)
        model = Path(cfg.data_path) / "bench-model.bin"
        model.write_bytes(b"w" * 1_000_000)
        long.log_artifact(str(model), upload=f"http://{cfg.mlflow.listen}")
        assert long.finish(timeout=120)
        for i in range(args.runs):
            r = runstream.init("bench", name=f"sweep-{i}", run_id=uuid.uuid4().hex[:16] if args.random_ids else None,
                               config={"lr": 10 ** -(1 + i % 4), "optimizer": ["sgd", "adam"][i % 2]},
                               system_interval_s=0, **target)
            r.log({"val_loss": (i % 100) / 100})
            r.finish(timeout=0)
        assert runstream.init("bench", name="last", system_interval_s=0, **target).finish(timeout=120)
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
            "history_100k_scan_pages": lambda: sum(1 for _ in api.scan_history(long.id, ["loss"])),
            "run_record": lambda: api.run(long.id),
            "artifacts_list": lambda: api.artifacts(long.id),
            "search_runs_param_and_metric": lambda: api.runs("bench", params={"lr": (">", 0.005), "optimizer": "sgd"},
                                                             metrics={"val_loss": ("<", 0.5)}),
            "search_runs_filter_or": lambda: api.runs("bench", filter="params.lr < 0.005 and metrics.val_loss < 0.2 "
                                                                        "or params.optimizer = 'adam' and metrics.val_loss > 0.9"),
            "search_runs_order_by_metric_page": lambda: api.runs("bench", order_by="metrics.val_loss DESC", limit=100,
                                                                 offset=1000),
            "search_runs_order_by_param_all": lambda: api.runs("bench", order_by=["params.lr ASC"], limit=None),
        }
        out: dict[str, object] = {"points": args.points, "runs": args.runs, "repeat": args.repeat,
                                  "run_ids": "random" if args.random_ids else "UUIDv7",
                                  "calibration": calibration()}
        for name, read in reads.items():
            read()  # warm: the first call pays connection setup
            times = []
            meter = CpuMeter({"sink": [p.proc.pid for p in sup.procs if p.role == "sink" and p.proc]}).start()
            client_cpu = time.process_time()
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                read()
                times.append((time.perf_counter() - t0) * 1000)
            meter.stop()
            # CPU per read: the sink's (its SQL endpoint runs the query) and this client's (decoding the answer).
            out[name] = {"p50_ms": pct(times, 0.5, 2), "p99_ms": pct(times, 0.99, 2),
                         "sink_core_ms_per_read": round(meter.seconds()["sink"] / args.repeat * 1000, 2),
                         "client_core_ms_per_read": round((time.process_time() - client_cpu) / args.repeat * 1000, 2)}
            console.print(f"{name}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms")  # type: ignore[index]
        out["rows"] = {name: len(read()) if name.startswith("search") else None for name, read in reads.items()}
        out["goal_ms"] = 20.0  # issue #28: each call on 10k runs
        out["within_goal_p50"] = sorted(k for k, v in out.items() if isinstance(v, dict) and v.get("p50_ms", 1e9) <= 20.0)
        if args.json:
            print(json.dumps(out))
    finally:
        sup.stop()


if __name__ == "__main__":
    main()
