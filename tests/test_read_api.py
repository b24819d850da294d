"""The Python read API (runstream.Api) over the stack's SQL endpoint, as an analyst's notebook uses it: typed
search on params, tags, status and latest metrics; history raw, downsampled, as pandas, Arrow and numpy; a fork's
history through its parent; comparison; lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import runstream
from runstream.sdk.transport import GrpcTransport
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError
from tests.conftest import Stack
from tests.helpers import wait_until


@pytest.fixture
def api(stack: Stack, token: str) -> runstream.Api:
    c = stack.config
    return runstream.Api(f"http://{c.sink.sql_listen}", token, database=c.clickhouse.database)


def test_search_history_compare_and_lineage(stack: Stack, token: str, api: runstream.Api, tmp_path: Path) -> None:
    def init(**kw: object) -> runstream.Run:
        return runstream.init("readapi", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path), **kw)

    data = tmp_path / "train.csv"
    data.write_text("x,y\n1,2\n")
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    runs = {}
    for name, lr, opt, final in (("a", 0.1, "sgd", 0.9), ("b", 0.01, "adam", 0.3), ("c", 0.001, "sgd", 0.2)):
        run = init(name=name, config={"lr": lr, "optimizer": opt, "batch": 32, "augment": name == "b"},
                   tags=["best"] if name == "c" else [])
        n = 100_000 if name == "c" else 100
        for step in range(n):
            run.log({"loss": final + (n - step) / n}, step=step)
        run.log({"loss": final}, step=n)
        if name == "c":
            run.use_dataset(str(data))
            run.log_artifact(str(model))
        assert run.finish(timeout=60)
        runs[name] = run
    fork = init(name="c-fork", fork_from=runs["c"].id, fork_step=49)
    for _ in range(10):
        fork.log({"loss": 5.0})
    assert fork.finish(timeout=30)
    assert stack.wait_points(100_001 + 2 * 101 + 10, where="project = 'readapi'") == 100_001 + 2 * 101 + 10
    wait_until(lambda: len(api.runs("readapi", status="finished")) == 4, 30, "four finished runs")
    ids = lambda df: sorted(df["name"])

    # Params compare by type: numbers as numbers, strings as strings, bools as bools.
    assert ids(api.runs("readapi", params={"lr": (">", 0.005)})) == ["a", "b"]
    assert ids(api.runs("readapi", params={"optimizer": "sgd"})) == ["a", "c"]
    assert ids(api.runs("readapi", params={"lr": ("<=", 0.01), "optimizer": "sgd"})) == ["c"]
    assert ids(api.runs("readapi", params={"augment": True})) == ["b"]
    assert ids(api.runs("readapi", params={"batch": 32, "lr": ("!=", 0.1)})) == ["b", "c"]
    assert ids(api.runs("readapi", metrics={"loss": ("<", 0.5)})) == ["b", "c"]
    assert ids(api.runs("readapi", tags=["best"])) == ["c"]
    df = api.runs("readapi", run_ids=[runs["b"].id])
    row = df.iloc[0]
    assert (row["params.lr"], row["params.optimizer"], row["params.batch"], row["params.augment"]) == (0.01, "adam", 32, True)
    assert df["params.batch"].dtype.kind == "i" and df["params.lr"].dtype.kind == "f"
    assert row["metrics.loss"] == pytest.approx(0.3)
    assert row["points_acked"] == 101 and row["status"] == "finished"

    # History: every point in step order; downsampled to at most N buckets that still cover every point.
    c = runs["c"].id
    full = api.history(c, "loss")
    assert len(full) == 100_001 and list(full["step"][:3]) == [0, 1, 2] and full["value"].iloc[-1] == pytest.approx(0.2)
    coarse = api.history(c, "loss", buckets=500)
    assert 400 <= len(coarse) <= 500 and int(coarse["count"].sum()) == 100_001
    assert (coarse["min"] <= coarse["value"]).all() and (coarse["value"] <= coarse["max"]).all()
    table = api.history(c, "loss", format="arrow")
    assert isinstance(table, pa.Table) and table.num_rows == 100_001
    arrays = api.history(c, "loss", format="numpy")
    assert isinstance(arrays["value"], np.ndarray) and arrays["step"].dtype.kind == "i"

    # A fork's history: the parent's points up to the fork step, then its own.
    forked = api.history(fork.id, "loss")
    assert list(forked["step"]) == list(range(60))
    assert (forked["value"][:50] < 2).all() and (forked["value"][50:] == 5.0).all()
    assert len(api.history(fork.id, "loss", include_parent=False)) == 10

    side = api.compare([runs["a"].id, runs["c"].id])
    assert list(side.columns) == [runs["a"].id, runs["c"].id]
    assert side.loc["params.lr"].tolist() == [0.1, 0.001]

    lineage = api.lineage(fork.id)
    assert lineage["ancestors"] == [{"run_id": c, "fork_step": 49}]
    made = api.lineage(c)
    assert [d["uri"] for d in made["datasets"]] == [str(data)] and len(made["artifacts"]) == 1
    assert len(made["artifacts"][0]["sha256"]) == 64


def test_the_read_api_needs_a_read_token(stack: Stack) -> None:
    c = stack.config
    with pytest.raises(Exception, match="(?i)authentic|token|denied|516"):
        runstream.Api(f"http://{c.sink.sql_listen}", "rs_bogus_token", database=c.clickhouse.database).runs()
    nowhere = RunstreamConfig()
    nowhere.data_dir = str(stack.config.data_path / "no-stack-here")
    with pytest.raises(RunstreamError, match="no SQL endpoint"):
        runstream.Api(config=nowhere)
