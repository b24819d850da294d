"""What the processors spend on a small metrics batch before its rollups: splitting it by metric
(``processors/rollups.split_small``) and finding its earliest point time (``state.apply``), per batch of 20, 150 and
256 points (a fleet's flushes), in µs of this process.

    python bench/split_small.py --json [--against REV]

``--against REV`` loads ``processors/rollups.py`` as it was at git revision REV beside the working tree's and
alternates them. The earliest time is measured both ways, ``min()`` over the protobuf field and over a slice of it.
Prints the median over ``--rounds`` rounds. Leaves out: the rollups, the detectors and faust (bench/processor_apply.py
measures ``state.apply`` whole).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from validate_batch import load  # noqa: E402  (bench/ is the script's own directory)


def timed(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> int:
    from cpu import calibration

    from runstream.v1.ingest_pb2 import Batch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="", help="a git revision whose processors/rollups.py to alternate with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    versions = {"working tree": load(ROOT / "processors" / "rollups.py", "rollups_now")}
    if args.against:
        old = Path(tempfile.mkdtemp()) / "rollups.py"
        old.write_bytes(subprocess.run(["git", "show", f"{args.against}:processors/rollups.py"], cwd=ROOT, check=True,
                                       capture_output=True).stdout)
        versions[args.against] = load(old, "rollups_then")
    out: dict[str, Any] = {"calibration": calibration(), "split_us_per_batch": {}, "earliest_time_us_per_batch": {}}
    for n in (20, 150, 256):
        m = Batch().metrics
        m.names.extend([f"metric_{i}" for i in range(10)])
        m.name_index.extend([i % 10 for i in range(n)])
        m.steps.extend(i // 10 for i in range(n))
        m.timestamps_ms.extend([1_700_000_000_000 + i for i in range(n)])
        m.values.extend([0.5] * n)
        calls = 600_000 // n
        split: dict[str, list[float]] = {name: [] for name in versions}
        earliest: dict[str, list[float]] = {"min over the field": [], "min over a slice": []}
        for r in range(args.rounds):
            for name in (list(versions) if r % 2 == 0 else list(reversed(versions))):
                fn = versions[name].split_small
                split[name].append(timed(lambda: fn(m), calls))  # noqa: B023 (called within the iteration)
            earliest["min over the field"].append(timed(lambda: min(m.timestamps_ms, default=0), calls))  # noqa: B023
            earliest["min over a slice"].append(timed(lambda: min(m.timestamps_ms[:], default=0), calls))  # noqa: B023
        out["split_us_per_batch"][f"{n}_points"] = {k: round(statistics.median(v), 2) for k, v in split.items()}
        out["earliest_time_us_per_batch"][f"{n}_points"] = {k: round(statistics.median(v), 2) for k, v in earliest.items()}
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
