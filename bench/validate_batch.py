"""What ingest's validation of one metrics batch costs (``validate_batch``: names, lengths, name indexes, the points'
time range), per batch of 150 points (a fleet job's flush) and 3,000 (the ingest bench's), in µs of this process.

    python bench/validate_batch.py --json [--against REV]

``--against REV`` loads ``ingest/validate.py`` as it was at git revision REV beside the working tree's and alternates
them, so both figures come from the same minutes of this noisy machine. Prints the median over ``--rounds`` rounds.
Leaves out: parsing, authorization, publishing (bench/ingest.py and bench/fleet.py measure ingest whole).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # a dataclass looks its module up while it is defined
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    from cpu import calibration  # bench/ is the script's own directory

    from runstream.v1.ingest_pb2 import Batch
    from runstream.wire.config import IngestConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="", help="a git revision whose ingest/validate.py to alternate with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    versions = {"working tree": load(ROOT / "ingest" / "validate.py", "validate_now")}
    if args.against:
        old = Path(tempfile.mkdtemp()) / "validate.py"
        old.write_bytes(subprocess.run(["git", "show", f"{args.against}:ingest/validate.py"], cwd=ROOT, check=True,
                                       capture_output=True).stdout)
        versions[args.against] = load(old, "validate_then")
    cfg = IngestConfig(max_batch_points=100_000)
    out: dict[str, object] = {"calibration": calibration(), "us_per_batch": {}}
    for n in (150, 3000):
        b = Batch(batch_id="x" * 32, project="p", run_id="r" * 32, seq=1, created_ms=1_700_000_000_000)
        b.metrics.names.extend([f"metric_{i}" for i in range(10)])
        b.metrics.name_index.extend([i % 10 for i in range(n)])
        b.metrics.steps.extend(range(n))
        b.metrics.timestamps_ms.extend([1_700_000_000_000 + i for i in range(n)])
        b.metrics.values.extend([0.5] * n)
        times: dict[str, list[float]] = {name: [] for name in versions}
        calls = 3_000_000 // n
        for r in range(args.rounds):
            for name in (list(versions) if r % 2 == 0 else list(reversed(versions))):
                fn = versions[name].validate_batch
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn(b, cfg)
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
        out["us_per_batch"][f"{n}_points"] = {name: round(statistics.median(v), 2) for name, v in times.items()}  # type: ignore[index]
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
