"""What a run's history read costs by how it reads metric_points: the read API's statement (views.history:
metric_points FINAL directly), the `metrics` view as migration 0010 defined it (FINAL with
optimize_move_to_prewhere_if_final) and as 0016 does (FINAL alone), in-process on the embedded engine, over one run's
``--points`` points written in polls of 3,000 beside 10,000 small runs' points, in three layouts: merged into one
part; one part plus a replayed poll; every poll a part of its own (a stack ingesting, merges behind). Timed in
alternation.

    python bench/history_read.py --json

Prints one JSON line: p50 and p99 (ms) of each statement in each layout, after checking that all give the same rows.
Leaves out: the SQL endpoint and the client (bench/read_api.py times the whole read).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import bench_home, pct  # noqa: E402
from revisions import alternate_calls  # noqa: E402

POLL = 3_000


def write(client: Any, db: str, points: int, layout: str) -> None:
    def poll(lo: int, hi: int) -> None:
        client.command(f"INSERT INTO {db}.metric_points (project, run_id, metric, step, ts, value, batch, idx) SELECT "
                       f"'bench', 'long', 'loss', number, 1765000000000 + number, 1 / (number + 1), intDiv(number, {POLL}), "
                       f"number % {POLL} FROM numbers({lo}, {hi - lo})")
    if layout == "a_part_per_poll":
        client.command(f"SYSTEM STOP MERGES {db}.metric_points")
    for lo in range(0, points, POLL):
        poll(lo, min(lo + POLL, points))
    client.command(f"INSERT INTO {db}.metric_points (project, run_id, metric, step, ts, value, batch, idx) SELECT 'bench', "
                   "concat('019b', leftPad(hex(number), 28, '0')), 'val_loss', 0, 1765000000000 + number, 0.5, "
                   "1000000 + number, 0 FROM numbers(10000)")
    if layout != "a_part_per_poll":
        client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    if layout == "one_part_and_a_replayed_poll":
        client.command(f"SYSTEM STOP MERGES {db}.metric_points")
        poll(points // 2, points // 2 + POLL)  # the same points again: a replay after a crash


def main() -> None:
    from runstream.storage.store import migrate, open_embedded
    from runstream.wire import views

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    client = open_embedded(bench_home("runstream-history-read-") / "store")
    out: dict[str, Any] = {"points": args.points, "repeat": args.repeat, "calibration": calibration()}
    where = "run_id = 'long' AND project = 'bench' AND metric = 'loss'"
    for layout in ("one_part", "one_part_and_a_replayed_poll", "a_part_per_poll"):
        db = f"hr_{layout}"
        migrate(client, db)
        # The view as migration 0010 defined it, beside the one the migrations leave.
        client.command(f"CREATE VIEW {db}.metrics_0010 AS SELECT project, run_id, metric, step, ts, value FROM "
                       f"{db}.metric_points FINAL SETTINGS optimize_move_to_prewhere_if_final = 1")
        write(client, db, args.points, layout)
        api = views.history(db, [("long", None)], "loss", "bench", None)
        statements = {
            "read_api": (api.sql, api.params),
            "view_0010_prewhere_if_final": (f"SELECT step, value, ts FROM {db}.metrics_0010 WHERE {where} ORDER BY step",
                                            None),
            "view_0016_final": (f"SELECT step, value, ts FROM {db}.metrics WHERE {where} ORDER BY step", None),
        }
        rows = {name: client.query(sql, parameters=params).result_rows for name, (sql, params) in statements.items()}
        assert len({len(r) for r in rows.values()}) == 1 and len(rows["read_api"]) == args.points, layout
        assert all(r == rows["read_api"] for r in rows.values()), layout
        times = alternate_calls({name: partial(client.raw_query, sql, parameters=params, fmt="Native")
                                 for name, (sql, params) in statements.items()}, repeat=args.repeat)
        parts = client.query(f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'metric_points' AND "
                             "active").result_rows[0][0]
        out[layout] = {"parts": parts, **{name: {"p50_ms": pct(v, 0.5, 2), "p99_ms": pct(v, 0.99, 2)}
                                          for name, v in times.items()}}
        print(f"{layout} ({parts} parts): " + "; ".join(f"{n} p50 {pct(v, 0.5, 2)} ms" for n, v in times.items()),
              file=sys.stderr)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
