"""What starting a run costs the training process: ``runstream.init`` + one ``log`` + ``finish(timeout=0)``, ``--runs``
times back to back from one process (a sweep's trials in one process), in a git checkout (this repository's, as a
user's project would be), against a `runstream up` stack of its own.

    python bench/sdk_init.py --json

Prints one JSON line: the wall time per run (p50, p99) and the process's CPU per run (its own threads; the git
processes init starts are counted apart, from their rusage), the time of reading the git state alone, and a calibration.
Leaves out: the stack's side, a first init's imports, a checkout much larger than this one (git status reads every
tracked file's stat).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, sdk_target, start_stack  # noqa: E402

import runstream  # noqa: E402
from runstream.sdk import run as run_module  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()
    console = Console(stderr=True)
    os.chdir(ROOT)  # a git checkout
    sup, cfg, token = start_stack("runstream-bench-init-", console)
    try:
        target = sdk_target(cfg, token)
        for i in range(20):  # warm-up: imports, the channel, the package fingerprint
            runstream.init("bench", name=f"warm-{i}", system_interval_s=0, **target).finish(timeout=0)
        lat: list[float] = []
        c0, k0 = time.process_time(), children_cpu()
        for i in range(args.runs):
            t = time.perf_counter()
            r = runstream.init("bench", name=f"trial-{i}", config={"lr": 0.1}, system_interval_s=0, **target)
            r.log({"loss": 1.0})
            r.finish(timeout=0)
            lat.append((time.perf_counter() - t) * 1000)
        c1, k1 = time.process_time(), children_cpu()
        git = []
        for _ in range(50):
            t = time.perf_counter()
            run_module._git()
            git.append((time.perf_counter() - t) * 1000)
        out = {"runs": args.runs, "calibration": calibration(),
               "per_run_ms_p50": round(statistics.median(lat), 2), "per_run_ms_p99": pct(lat, 0.99, 2),
               "process_core_ms_per_run": round((c1 - c0) / args.runs * 1000, 3),
               "git_processes_core_ms_per_run": round((k1 - k0) / args.runs * 1000, 3),
               "git_state_ms_p50": round(statistics.median(git), 2)}
        print(json.dumps(out))
        console.print(out)
    finally:
        sup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
