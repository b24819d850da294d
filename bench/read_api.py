"""The Python read API's latency on a quiet stack: one run's 100k-point series, raw (pandas, Arrow), downsampled
to 1,000 buckets and scanned in pages; a run's record; and searches over ``--runs`` (10,000) runs' params and
latest metrics: typed filters, MLflow's filter syntax with OR, ordered pages.

    python bench/read_api.py --json

Prints one JSON line: p50/p99 (ms) and CPU (core-ms, the sink's and the client's) of each read over ``--repeat``
repetitions, through runstream.Api against the SQL endpoint of a `runstream up` stack of its own, after every
point is stored and run_index has settled into one part (or 240 s passed; the JSON says which). ``--against REV``
also loads runstream/read/api.py as revision REV had it and times each read on both in alternation (the same minutes
of a noisy machine), after checking that both give equal answers. Leaves out: reads while the stack ingests
(bench/readers.py measures the read endpoint under load), a busy stack's unmerged run_index parts, and a remote
network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration, cpu_seconds  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, sdk_target, start_stack  # noqa: E402
from revisions import versions  # noqa: E402


def main() -> None:
    import pandas as pd
    from rich.console import Console

    import runstream

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--random-ids", action="store_true",
                    help="give the small runs random ids (uuid4, as the SDK did before its time-ordered UUIDv7 ids)")
    ap.add_argument("--against", default="", help="a git revision whose read API to time beside the working tree's")
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
        url = f"http://{cfg.sink.sql_listen}"
        api = runstream.Api(url, token, database=cfg.clickhouse.database)
        deadline = time.monotonic() + 300
        while len(api.history(long.id, "loss")) < args.points or len(api.runs("bench", status="finished", limit=10**6)) < args.runs + 2:
            if time.monotonic() > deadline:
                raise SystemExit("the points were not all stored within 300 s")
            time.sleep(0.5)
        # A quiet stack: run_index settles into one part within about two minutes of the last write (migration 0015); its
        # searches merge the rows of every unmerged part.
        parts = "SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'run_index' AND active"
        settle = time.monotonic()
        while api.client.query(parts).result_rows[0][0] > 1 and time.monotonic() - settle < 240:
            time.sleep(1)
        out_parts = {"run_index_parts": api.client.query(parts).result_rows[0][0],
                     "run_index_settled_s": round(time.monotonic() - settle, 1)}
        console.print(f"run_index in {out_parts['run_index_parts']} part(s) after {out_parts['run_index_settled_s']} s")
        reads: dict[str, Callable[[Any], Any]] = {
            "history_100k_pandas": lambda a: a.history(long.id, "loss"),
            "history_100k_arrow": lambda a: a.history(long.id, "loss", format="arrow"),
            "history_100k_1000_buckets": lambda a: a.history(long.id, "loss", buckets=1000),
            "history_100k_scan_pages": lambda a: sum(1 for _ in a.scan_history(long.id, ["loss"])),
            "run_record": lambda a: a.run(long.id),
            "artifacts_list": lambda a: a.artifacts(long.id),
            "search_runs_by_name": lambda a: a.runs("bench", name="sweep-42"),
            "search_runs_newest_page": lambda a: a.runs("bench", limit=50),
            "search_runs_param_and_metric": lambda a: a.runs("bench", params={"lr": (">", 0.005), "optimizer": "sgd"},
                                                           metrics={"val_loss": ("<", 0.5)}),
            "search_runs_filter_or": lambda a: a.runs("bench", filter="params.lr < 0.005 and metrics.val_loss < 0.2 "
                                                                      "or params.optimizer = 'adam' and metrics.val_loss > 0.9"),
            "search_runs_order_by_metric_page": lambda a: a.runs("bench", order_by="metrics.val_loss DESC", limit=100,
                                                               offset=1000),
            "search_runs_order_by_param_all": lambda a: a.runs("bench", order_by=["params.lr ASC"], limit=None),
        }
        apis = {label: mod.Api(url, token, database=cfg.clickhouse.database)
                for label, mod in versions("runstream/read/api.py", args.against).items()}
        out: dict[str, object] = {"points": args.points, "runs": args.runs, "repeat": args.repeat,
                                  "run_ids": "random" if args.random_ids else "UUIDv7", "against": args.against or None,
                                  "calibration": calibration(), **out_parts}
        sink_pid = next(p.proc.pid for p in sup.procs if p.role == "sink" and p.proc)

        def sink_cpu() -> float:  # in clock ticks (10 ms): summed over the repetitions
            return cpu_seconds(sink_pid) or 0.0
        for name, read in reads.items():
            answers = [read(a) for a in apis.values()]  # warm: the first call pays connection setup
            if len(answers) == 2 and name.startswith("search"):
                pd.testing.assert_frame_equal(*answers)
            times: dict[str, list[float]] = {label: [] for label in apis}
            sink_s = dict.fromkeys(apis, 0.0)
            client_s = dict.fromkeys(apis, 0.0)
            for i in range(args.repeat):
                for label in (list(apis) if i % 2 == 0 else list(reversed(apis))):
                    s0, c0, t0 = sink_cpu(), time.process_time(), time.perf_counter()
                    read(apis[label])
                    times[label].append((time.perf_counter() - t0) * 1000)
                    client_s[label] += time.process_time() - c0
                    sink_s[label] += sink_cpu() - s0
            # CPU per read: the sink's (its SQL endpoint runs the query) and this client's (decoding the answer).
            figures = {label: {"p50_ms": pct(v, 0.5, 2), "p99_ms": pct(v, 0.99, 2),
                               "sink_core_ms_per_read": round(sink_s[label] / args.repeat * 1000, 2),
                               "client_core_ms_per_read": round(client_s[label] / args.repeat * 1000, 2)}
                       for label, v in times.items()}
            out[name] = figures["working tree"] if len(apis) == 1 else figures
            console.print(f"{name}: " + "; ".join(f"{label} p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms"
                                                  for label, f in figures.items()))
        out["rows"] = {name: len(read(api)) for name, read in reads.items() if name.startswith("search")}
        out["goal_ms"] = 20.0  # issue #28: each call on 10k runs
        now = {k: v.get("working tree", v) for k, v in out.items() if isinstance(v, dict) and k not in ("rows", "calibration")}
        out["within_goal_p50"] = sorted(k for k, v in now.items() if v.get("p50_ms", 1e9) <= 20.0)
        if args.json:
            print(json.dumps(out))
    finally:
        sup.stop()


if __name__ == "__main__":
    main()
