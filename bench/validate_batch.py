"""What ingest's validation of one metrics batch costs (``validate_batch``: names, lengths, name indexes, the points'
time range), per batch of 150 points (a fleet job's flush) and 3,000 (the ingest bench's), in µs of this process.

    python bench/validate_batch.py --json [--against REV]

``--against REV`` loads ``ingest/validate.py`` as it was at git revision REV beside the working tree's and alternates
them, so both figures come from the same minutes of this noisy machine. Prints the median over ``--rounds`` rounds.
Leaves out: parsing, authorization, publishing (bench/ingest.py and bench/fleet.py measure ingest whole).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from cpu import calibration  # bench/ is the script's own directory
    from revisions import alternate, versions

    from runstream.v1.ingest_pb2 import Batch
    from runstream.wire.config import IngestConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="", help="a git revision whose ingest/validate.py to alternate with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mods = versions("ingest/validate.py", args.against)
    cfg = IngestConfig(max_batch_points=100_000)
    out: dict[str, object] = {"calibration": calibration(), "us_per_batch": {}}
    for n in (150, 3000):
        b = Batch(batch_id="x" * 32, project="p", run_id="r" * 32, seq=1, created_ms=1_700_000_000_000)
        b.metrics.names.extend([f"metric_{i}" for i in range(10)])
        b.metrics.name_index.extend([i % 10 for i in range(n)])
        b.metrics.steps.extend(range(n))
        b.metrics.timestamps_ms.extend([1_700_000_000_000 + i for i in range(n)])
        b.metrics.values.extend([0.5] * n)
        fns = {name: (lambda fn=mod.validate_batch: fn(b, cfg)) for name, mod in mods.items()}  # noqa: B023
        out["us_per_batch"][f"{n}_points"] = alternate(fns, calls=3_000_000 // n, rounds=args.rounds)  # type: ignore[index]
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
