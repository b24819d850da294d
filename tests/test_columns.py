"""A poll's batches become the points table's columns: every point keeps its own batch, run and position; and each run
and metric's newest point of the poll becomes a row of metric_latest."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

from runstream.storage import columns
from runstream.v1.ingest_pb2 import Batch, Metrics, RunFinish


def metrics_batch(batch_id: str, run_id: str, names: list[str], name_index: list[int], first_step: int) -> Batch:
    n = len(name_index)
    return Batch(batch_id=batch_id, project="p", run_id=run_id, seq=1, created_ms=1_700_000_000_000,
                 metrics=Metrics(names=names, name_index=name_index, steps=[first_step + i for i in range(n)],
                                 timestamps_ms=[1_700_000_000_000 + i for i in range(n)], values=[float(i) for i in range(n)]))


def test_each_point_keeps_its_batch_run_metric_and_position() -> None:
    items = [
        (metrics_batch("a", "r1", ["loss", "acc"], [0, 1, 0], 10), 0, 5),
        (Batch(batch_id="f", project="p", run_id="r1", seq=2, run_finish=RunFinish(end_ms=1)), 0, 6),  # no points
        (metrics_batch("b", "r2", ["acc", "loss"], [0, 1], 20), 1, 7),  # the same names, another order
        (metrics_batch("c", "r1", ["loss", "acc"], [1, 1, 0, 1], 30), 0, 8),  # names seen before
    ]
    t = columns.build(items)
    assert t.points is not None
    cols = t.points.to_pydict()
    assert cols["idx"] == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    assert cols["batch"] == [columns.batch_key(k) for k in "aaabbcccc"]
    assert cols["run_id"] == ["r1"] * 3 + ["r2"] * 2 + ["r1"] * 4
    assert cols["metric"] == ["loss", "acc", "loss", "acc", "loss", "acc", "acc", "loss", "acc"]
    assert cols["step"] == [10, 11, 12, 20, 21, 30, 31, 32, 33]
    assert [row[2] for row in t.batches] == ["a", "f", "b", "c"] and [row[5] for row in t.batches] == [3, 0, 2, 4]


@given(hst.lists(hst.tuples(hst.integers(0, 6), hst.integers(0, 4)), min_size=1, max_size=60), hst.booleans())
@settings(max_examples=300, deadline=None)
def test_latest_rows_picks_each_keys_first_row_of_its_highest_step(rows: list[tuple[int, int]], sparse: bool) -> None:
    key = np.array([k for k, _ in rows], dtype=np.int64)
    steps = np.array([s for _, s in rows], dtype=np.int64)
    groups = 1000 if sparse else 7  # sparse: more groups than 4x the rows, so the keys are made dense first
    expected = {}
    for i, (k, s) in enumerate(rows):
        if k not in expected or s > steps[expected[k]]:
            expected[k] = i
    got = columns.latest_rows(key, steps, groups)
    assert sorted(got.tolist()) == sorted(expected.values())


def test_the_poll_keeps_one_latest_row_per_project_run_and_metric_as_argmax_states() -> None:
    a = metrics_batch("a", "r1", ["loss", "acc"], [0, 1, 0, 1], 10)   # loss 10, 12; acc 11, 13
    b = metrics_batch("b", "r1", ["loss"], [0, 0], 5)                   # reaches back: loss 5, 6
    c = metrics_batch("c", "r1", ["loss"], [0], 12)                     # loss 12 again: the first one stays
    d = Batch()
    d.CopyFrom(a)
    d.batch_id, d.project = "d", "q"  # the same run id in another project is another run
    t = columns.build([(a, 0, 1), (b, 0, 2), (c, 0, 3), (d, 0, 4)])
    assert t.latest is not None
    got = t.latest.to_pydict()
    # Each state as ClickHouse serializes argMaxState: a set flag and the value, a set flag and the step.
    rows = sorted((p, r, m, s, struct.unpack("<?d?q", v), struct.unpack("<?q?q", ts))
                  for p, r, m, s, v, ts in zip(*(got[c] for c in ("project", "run_id", "metric", "last_step", "last_value", "last_ts"))))
    t0 = 1_700_000_000_000
    assert rows == [
        ("p", "r1", "acc", 13, (True, 3.0, True, 13), (True, t0 + 3, True, 13)),
        ("p", "r1", "loss", 12, (True, 2.0, True, 12), (True, t0 + 2, True, 12)),
        ("q", "r1", "acc", 13, (True, 3.0, True, 13), (True, t0 + 3, True, 13)),
        ("q", "r1", "loss", 12, (True, 2.0, True, 12), (True, t0 + 2, True, 12))]
