"""What unmerged run_index parts cost a search: the read API's run searches (one run by name, the newest 50, a page
ordered by a metric, a param and metric filter with 1,000 rows back) over ``--runs`` runs, in-process on the embedded
engine, on two copies of the same runs: one left as a sink leaves it after a burst (the settled part, then one insert
of the last runs' finish records and one of 50 new runs), the other merged into one part (what migration
0015 makes of a quiet stack's table). Timed in alternation.

    python bench/run_index_parts.py --json

Prints one JSON line: p50 and p99 (ms) of each search on each copy, each copy's parts, and the CPU of the merge into
one part (per 100,000 runs: a busy stack does it about once a minute). Leaves out: the SQL endpoint and the client
(bench/read_api.py times the whole read).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import bench_home, pct  # noqa: E402
from revisions import alternate_calls  # noqa: E402


def fill(client: Any, db: str, runs: int, late: int) -> None:
    """``runs`` runs written as the sink writes them, in polls of 1,000: start records, params, one point each and
    finish records; then merged, except for the last ``late`` runs' finish records and a poll of 50 new runs, written
    after (five parts, as a stack had after bench/read_api.py's burst)."""
    ids = "concat('019b', leftPad(hex(number), 28, '0'))"  # time-ordered, as the SDK's UUIDv7 run ids

    def starts(lo: int, hi: int) -> None:
        rows = f"FROM numbers({lo}, {hi - lo})"
        client.command(f"INSERT INTO {db}.run_starts (project, run_id, name, started, git_commit, hostname) "
                       f"SELECT 'bench', {ids}, concat('sweep-', toString(number)), 1765000000000 + number, "
                       f"'a4c093b5097162a3737d5a0e9444c05c7ae809be', 'vm' {rows}")
        client.command(f"INSERT INTO {db}.params (project, run_id, key, value, ts) SELECT 'bench', {ids}, k, "
                       "if(k = 'lr', toString(pow(10, -(1 + number % 4))), if(number % 2 = 0, '\"sgd\"', '\"adam\"')), "
                       f"1765000000000 + number {rows} ARRAY JOIN ['lr', 'optimizer'] AS k")
        client.command(f"INSERT INTO {db}.metric_points (project, run_id, metric, step, ts, value, batch, idx) "
                       f"SELECT 'bench', {ids}, 'val_loss', 0, 1765000000000 + number, (number % 100) / 100, number, 0 "
                       f"{rows}")

    def finishes(lo: int, hi: int) -> None:
        client.command(f"INSERT INTO {db}.run_finishes (project, run_id, status, ended, points_acked, points_dropped) "
                       f"SELECT 'bench', {ids}, 'finished', 1765000000500 + number, 1, 0 FROM numbers({lo}, {hi - lo})")

    settled = runs - late
    for lo in range(0, runs, 1000):
        hi = min(lo + 1000, runs)
        starts(lo, hi)
        if lo < settled:
            finishes(lo, min(hi, settled))
    client.command(f"OPTIMIZE TABLE {db}.run_index FINAL")
    client.command(f"SYSTEM STOP MERGES {db}.run_index")
    finishes(settled, runs)
    starts(runs, runs + 50)


def main() -> None:
    from runstream.storage.store import migrate, open_embedded
    from runstream.wire import search, views

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--late", type=int, default=1_400, help="runs whose finish records come after the merge")
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    client = open_embedded(bench_home("runstream-run-index-parts-") / "store")
    copies = {"unmerged": "rip_unmerged", "one_part": "rip_one"}
    for db in copies.values():
        migrate(client, db)
        fill(client, db, args.runs, args.late)
    client.command(f"SYSTEM START MERGES {copies['one_part']}.run_index")
    # What merging it into one part costs (every thread of this process: the engine merges in its own).
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    client.command(f"OPTIMIZE TABLE {copies['one_part']}.run_index FINAL")
    merge_ms, cpu1 = (time.perf_counter() - t0) * 1000, resource.getrusage(resource.RUSAGE_SELF)
    merge_s = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)

    def searches(db: str) -> dict[str, views.Statement]:
        def runs(flt: str | None = None, order: str | None = None, **kw: Any) -> views.Statement:
            return views.runs(db, "bench", groups=search.parse_filter_any(flt, where="filter", typed_params=True),
                              orders=search.parse_order_by([order] if order else []), **kw)
        return {"by_name": runs(name="sweep-42"), "newest_page": runs(limit=50),
                "order_by_metric_page": runs(order="metrics.val_loss DESC", limit=100, offset=1000),
                "param_and_metric_1000_rows": runs(params={"lr": (">", 0.005), "optimizer": "sgd"},
                                                   metrics={"val_loss": ("<", 0.5)})}

    out: dict[str, Any] = {"runs": args.runs, "late_finishes": args.late, "repeat": args.repeat,
                           "calibration": calibration(), "merge_into_one_ms": round(merge_ms, 1),
                           "merge_core_s_per_100k_runs": round(merge_s / (args.runs + 50) * 100_000, 3)}
    for label, db in copies.items():
        out[f"{label}_parts"] = client.query(f"SELECT count() FROM system.parts WHERE database = '{db}' AND "
                                             "table = 'run_index' AND active").result_rows[0][0]
    statements = {label: searches(db) for label, db in copies.items()}
    for name in statements["unmerged"]:
        answers = {label: client.query(s[name].sql, parameters=s[name].params).result_rows for label, s in statements.items()}
        assert answers["unmerged"] == answers["one_part"], name  # the same runs either way
        times = alternate_calls({label: partial(client.raw_query, s[name].sql, parameters=s[name].params, fmt="Native")
                                 for label, s in statements.items()}, repeat=args.repeat)
        out[name] = {label: {"p50_ms": pct(v, 0.5, 2), "p99_ms": pct(v, 0.99, 2), "rows": len(answers[label])}
                     for label, v in times.items()}
        print(f"{name}: " + "; ".join(f"{label} p50 {f['p50_ms']} ms" for label, f in out[name].items()), file=sys.stderr)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
