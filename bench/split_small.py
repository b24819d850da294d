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
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from cpu import calibration  # bench/ is the script's own directory
    from revisions import alternate, versions

    from runstream.v1.ingest_pb2 import Batch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="", help="a git revision whose processors/rollups.py to alternate with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mods = versions("processors/rollups.py", args.against)
    out: dict[str, Any] = {"calibration": calibration(), "split_us_per_batch": {}, "earliest_time_us_per_batch": {}}
    for n in (20, 150, 256):
        m = Batch().metrics
        m.names.extend([f"metric_{i}" for i in range(10)])
        m.name_index.extend([i % 10 for i in range(n)])
        m.steps.extend(i // 10 for i in range(n))
        m.timestamps_ms.extend([1_700_000_000_000 + i for i in range(n)])
        m.values.extend([0.5] * n)
        calls = 600_000 // n
        splits = {name: (lambda fn=mod.split_small: fn(m)) for name, mod in mods.items()}  # noqa: B023
        out["split_us_per_batch"][f"{n}_points"] = alternate(splits, calls=calls, rounds=args.rounds)
        # The earliest time as state.apply took it before (min over the field) and takes it now (over a slice).
        out["earliest_time_us_per_batch"][f"{n}_points"] = alternate({
            "min over the field": lambda: min(m.timestamps_ms, default=0),  # noqa: B023
            "min over a slice": lambda: min(m.timestamps_ms[:], default=0)}, calls=calls, rounds=args.rounds)  # noqa: B023
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
