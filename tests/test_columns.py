"""A poll's batches become the points table's columns: every point keeps its own batch, run and position."""

from __future__ import annotations

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
