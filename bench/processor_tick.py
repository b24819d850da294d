"""What the processors' wall-clock timer spends per tick on runs that went quiet without finishing (jobs killed or
preempted): each such run keeps its last windows open, and the timer looked at every one of them on every tick
(``processors.tick_s``, 0.5 s) to find windows to emit. Now it keeps, per run, the time its next window or stall is
due, and skips the run until then or until a batch of the run comes.

    python bench/processor_tick.py --json

For ``--runs`` quiet runs (each given four flushes of 5 steps x 10 metrics a minute ago through ``state.apply``, so
their 10 s and 60 s windows are open), the CPU of one tick over them, the median of ``--repeat`` ticks: ``scan``, the
timer's work on a run it looks at (the stall check and the run's windows against what was emitted), which it did
for every quiet run on every tick, and ``skip``, the due-time check that replaces it for a run with nothing due.
Leaves out: faust (the table's key listing, the run's state decoded on a cache miss), the runs with something due,
and the emission itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration  # noqa: E402  (bench/ is the script's own directory)


def main() -> int:
    from runstream.processors import anomaly, state
    from runstream.v1.ingest_pb2 import Batch, Metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="2000,10000", help="numbers of quiet runs, comma-separated")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rules, grace_ms = anomaly.RuleBook(), 10_000
    now = int(time.time() * 1000)
    out: dict[str, object] = {"calibration": calibration(), "tick_s": 0.5, "sizes": []}
    for n in (int(x) for x in args.runs.split(",")):
        runs: dict[bytes, state.RunState] = {}
        for r in range(n):
            st = state.RunState(project="p")
            for seq in range(1, 5):
                t0 = now - 60_000 + seq * 500
                b = Batch(batch_id=uuid.uuid4().hex, project="p", run_id=f"r{r}", seq=seq, created_ms=t0,
                          metrics=Metrics(names=[f"m{i}" for i in range(10)], name_index=[i % 10 for i in range(50)],
                                          steps=[seq * 5 + i // 10 for i in range(50)], timestamps_ms=[t0] * 50,
                                          values=[0.5] * 50))
                state.apply(st, b, rules, grace_ms=grace_ms, now_ms=t0)
            runs[f"r{r}".encode()] = st
        emitted: dict[bytes, dict[object, int]] = {key: {} for key in runs}
        due = {key: float("inf") for key in runs}

        def scan(runs: dict[bytes, state.RunState] = runs, emitted: dict[bytes, dict[object, int]] = emitted) -> None:
            for key, st in runs.items():
                st.cadence.stall_after_s(rules.for_metric(st.project, ""))
                sent = emitted[key]
                fresh, _ = state.windows_due(st, sent, now_ms=now, grace_ms=grace_ms)
                for k, w in fresh:
                    sent[k] = w.version

        def skip(runs: dict[bytes, state.RunState] = runs, due: dict[bytes, float] = due) -> None:
            for key in list(runs):
                if due.get(key, 0) > now:
                    continue

        scan()  # the first tick emits; the ones measured find everything emitted, as for a run quiet for minutes
        took: dict[str, float] = {}
        for name, tick in (("scan", scan), ("skip", skip)):
            cpu = []
            for _ in range(args.repeat):
                c0 = time.process_time()
                tick()
                cpu.append(time.process_time() - c0)
            took[name] = statistics.median(cpu) * 1000
        size = {"quiet_runs": n, "open_windows": sum(len(st.windows) for st in runs.values()),
                "scan_ms_per_tick": round(took["scan"], 2), "skip_ms_per_tick": round(took["skip"], 3),
                "scan_core_share": round(took["scan"] / 1000 / 0.5, 3), "skip_core_share": round(took["skip"] / 1000 / 0.5, 4)}
        out["sizes"].append(size)  # type: ignore[attr-defined]
        if not args.json:
            print(size, file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
