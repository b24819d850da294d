"""What system metrics cost the training loop: log() time with the sampler off and on (at 0.1 s, 50x the default
rate, so its thread is busy), into an in-memory transport.

    python bench/system_metrics.py --json

Prints one JSON line: log() p50/p99 in microseconds (10 metrics per call) for each case, and how many samples
the sampler took. Leaves out the network (the transport only collects batches) and GPUs (none here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence

import runstream
from runstream.v1.ingest_pb2 import Batch


class Collect:
    def __init__(self) -> None:
        self.batches = 0

    def send(self, batches: Sequence[Batch]) -> None:
        self.batches += len(batches)

    def close(self) -> None:
        pass


def measure(interval: float, calls: int) -> dict[str, float]:
    run = runstream.init("bench", transport=Collect(), spool_dir=tempfile.mkdtemp(), system_interval_s=interval)
    times = []
    pc = time.perf_counter_ns
    metrics = {f"m{i}": 0.5 for i in range(10)}
    for step in range(calls):
        t0 = pc()
        run.log(metrics, step=step)
        times.append(pc() - t0)
        if step % 1000 == 0:
            time.sleep(0.01)  # a training step's compute, during which the sampler runs
    samples = run.system.samples if run.system is not None else 0
    run.finish(timeout=30)
    times.sort()
    return {"log_p50_us": round(times[len(times) // 2] / 1000, 3), "log_p99_us": round(times[int(len(times) * 0.99)] / 1000, 3),
            "samples": samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = {"calls": args.calls, "off": measure(0, args.calls), "on_0.1s": measure(0.1, args.calls)}
    print(json.dumps(out) if args.json else out)


if __name__ == "__main__":
    main()
