"""What the processors' own work costs per point: ``state.apply`` (rollups, anomaly detection, the run's seqs) on
metrics batches of a given shape, in one process, without Kafka or faust.

    python bench/processor_apply.py --json

Per shape (points per batch, 10 metrics as bench/fleetload.py logs them, two of them loss-like so divergence is
watched), runs each get ``--batches`` batches in turn with increasing steps and a time 1 s apart per batch, so windows
open and close as in a live run. Reports the median over ``--repeat`` passes of ns per point, and points/s; and what
writing a run's state to its changelog costs after the last batch (``state_dumps_us``: the state pickled as a worker
does it after each group of the run's batches; ``state_loads_us``: read back, as on a recovery), the best of 5 passes
over every run. Leaves out: decoding the records, faust's delivery and the table writes' Kafka side (bench/anomaly.py
measures a worker end to end).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetload import METRICS, metric_values  # noqa: E402  (bench/ is the script's own directory)


def batches(runs: int, per_batch: int, count: int, rng: random.Random) -> list[object]:
    """``count`` metrics batches per run, interleaved by run as a partition delivers them."""
    from runstream.v1.ingest_pb2 import Batch, Metrics

    steps_per_batch = max(1, per_batch // len(METRICS))
    ids = [uuid.uuid4().hex for _ in range(runs)]
    t0 = 1_700_000_000_000
    out = []
    for k in range(count):
        for run in ids:
            first = k * steps_per_batch
            ni, steps, ts, vals = [], [], [], []
            for s in range(first, first + steps_per_batch):
                values = metric_values(s, rng)
                for i, v in enumerate(values[name] for name in METRICS):
                    ni.append(i)
                    steps.append(s)
                    ts.append(t0 + k * 1000 + (s - first) * 1000 // steps_per_batch)
                    vals.append(v)
            out.append(Batch(batch_id=uuid.uuid4().hex, project="bench", run_id=run, seq=k + 1,
                             created_ms=t0 + k * 1000,
                             metrics=Metrics(names=METRICS, name_index=ni, steps=steps, timestamps_ms=ts, values=vals)))
    return out


def _per_item_us(fn: Any, items: list[Any]) -> float:
    """Microseconds per item of ``fn`` over ``items``, the best of 5 passes."""
    took = []
    for _ in range(5):
        t = time.perf_counter()
        for item in items:
            fn(item)
        took.append(time.perf_counter() - t)
    return round(min(took) / len(items) * 1e6, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="3000,150,20", help="points per batch, one shape each")
    p.add_argument("--points", type=int, default=600_000, help="points per pass and shape")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()

    from runstream.processors import anomaly, state
    from runstream.processors.app import STATE_CODEC

    rules = anomaly.RuleBook()
    rng = random.Random(1)
    shapes = []
    for size in (int(s) for s in args.sizes.split(",")):
        count = 20
        runs = max(1, args.points // (size * count))
        work = batches(runs, size, count, rng)
        points = sum(len(b.metrics.values) for b in work)  # type: ignore[attr-defined]
        took = []
        for i in range(args.repeat):
            if not args.json:
                print(f"{size}-point batches: pass {i + 1}/{args.repeat}", file=sys.stderr)
            states = {}
            alerts = 0  # per pass: every pass applies the same batches to fresh states
            t = time.perf_counter()
            for b in work:
                st = states.get(b.run_id)  # type: ignore[attr-defined]
                if st is None:
                    st = states[b.run_id] = state.RunState(project="bench")  # type: ignore[attr-defined]
                alerts += len(state.apply(st, b, rules, grace_ms=5000, now_ms=b.created_ms).alerts)  # type: ignore[arg-type, attr-defined]
            took.append(time.perf_counter() - t)
        med = statistics.median(took)
        final = list(states.values())
        raw = [STATE_CODEC.dumps(st) for st in final]
        shapes.append({"points_per_batch": size, "runs": runs, "batches": len(work), "points": points,
                       "ns_per_point": round(med * 1e9 / points), "points_per_s": round(points / med),
                       "alerts": alerts, "state_bytes": round(statistics.mean(len(r) for r in raw)),
                       "state_dumps_us": _per_item_us(STATE_CODEC.dumps, final),
                       "state_loads_us": _per_item_us(STATE_CODEC.loads, raw)})
    print(json.dumps({"repeat": args.repeat, "shapes": shapes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
