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


def test_filters_order_pages_one_run_several_metrics_a_scan_and_artifacts(stack: Stack, token: str, api: runstream.Api,
                                                                           tmp_path: Path) -> None:
    """What wandb.Api() and MlflowClient users reach for: MLflow's filter syntax with OR, order_by, pages, name and
    time filters; one run with its config, tags and summary; several metrics at once; a paged scan of every
    point; an artifact listed and downloaded with its sha256 checked."""
    import datetime as dt
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    store = tmp_path / "store"

    def init(name: str, **kw: object) -> runstream.Run:
        return runstream.init("readmore", name, transport=GrpcTransport(stack.ingest_addr, token),
                              spool_dir=str(tmp_path / "spool"), system_interval_s=0, **kw)

    ids = {}
    for i, lr in enumerate((0.3, 0.03, 0.003, 0.0003, 10.0)):
        run = init(f"sweep-{i}", config={"lr": lr, "opt": "sgd" if i % 2 else "adam", "layers": i + 1, "shape": [3, 2]},
                   tags=["best"] if i == 3 else [])
        for step in range(30):
            run.log({"loss": 1.0 / (i + 1) + step / 1000, "acc": i / 10}, step=step)
        if i == 0:
            model = tmp_path / "model.bin"
            model.write_bytes(b"w" * 3000)
            run.log_artifact(model, artifact_dir=store)
        run.set_tags({"team": "a" if i < 2 else "b"})
        assert run.finish(timeout=30)
        ids[i] = run.id
    assert stack.wait_points(300, where="project = 'readmore'") == 300
    # The sink stores a poll's tables one after another: wait for each run's finish, params and tags, not only points.
    wait_until(lambda: len(api.runs("readmore", status="finished", params={"layers": (">", 0)}, tags={"team": None})) == 5,
               30, "five finished runs with their params and tags")
    names = lambda df: list(df["name"])

    # Typed params in the filter string, OR between groups, tags, attributes.
    assert sorted(names(api.runs("readmore", filter="params.lr < 0.01"))) == ["sweep-2", "sweep-3"]
    assert sorted(names(api.runs("readmore", filter="params.lr >= 10 or tags.best IS NOT NULL"))) == ["sweep-3", "sweep-4"]
    assert sorted(names(api.runs("readmore", filter="params.opt = 'sgd' and metrics.acc > 0.2 or attributes.run_name "
                                                    "= 'sweep-0'"))) == ["sweep-0", "sweep-3"]
    assert names(api.runs("readmore", filter="tags.team = 'a'", order_by="metrics.loss ASC")) == ["sweep-1", "sweep-0"]
    # Params order by number (10 after 0.3, not between "0.0003" and "0.003" as text).
    assert names(api.runs("readmore", order_by="params.lr DESC")) == [f"sweep-{i}" for i in (4, 0, 1, 2, 3)]
    assert names(api.runs("readmore", order_by=["params.layers ASC"], limit=2, offset=2)) == ["sweep-2", "sweep-3"]
    every = api.runs("readmore", limit=None)
    assert len(every) == 5
    # Shared values decode once per call: the same scalars, and a list per cell (changing one changes no other).
    assert sorted(every["params.opt"]) == ["adam", "adam", "adam", "sgd", "sgd"] and sorted(every["params.layers"]) == [1, 2, 3, 4, 5]
    every["params.shape"].iloc[0].append(1)
    assert [list(c) for c in every["params.shape"]] == [[3, 2, 1]] + [[3, 2]] * 4
    assert sorted(names(api.runs("readmore", name="sweep-%", started_after=before))) == [f"sweep-{i}" for i in range(5)]
    assert names(api.runs("readmore", started_before=before)) == []
    with pytest.raises(ValueError, match="filter.*cannot parse|expected"):
        api.runs("readmore", filter="params.lr <<< 3")

    one = api.run(ids[3])
    assert (one.name, one.status, one.project, one.points_acked) == ("sweep-3", "finished", "readmore", 60)
    assert one.config == {"lr": 0.0003, "opt": "sgd", "layers": 4, "shape": [3, 2]} and one.tags == {"best": "", "team": "b"}
    assert one.summary == {"acc": pytest.approx(0.3), "loss": pytest.approx(0.25 + 0.029)}
    with pytest.raises(LookupError, match="no run"):
        api.run("no-such-run")

    wide = one.history(["loss", "acc"])
    assert list(wide.columns) == ["step", "loss", "acc"] and len(wide) == 30
    assert wide["acc"].tolist() == [pytest.approx(0.3)] * 30 and wide["loss"].iloc[-1] == pytest.approx(0.279)
    assert len(api.history(ids[3], keys=["loss"], samples=10)) <= 10

    rows = list(one.scan_history())  # 60 points, two per step
    assert [r["step"] for r in rows] == list(range(30))
    assert all(set(r) == {"step", "_ts", "loss", "acc"} for r in rows) and rows[5]["loss"] == pytest.approx(0.255)
    assert [r["step"] for r in api.scan_history(ids[3], ["acc"])] == list(range(30))

    listed = api.artifacts(ids[0])
    assert [(Path(a["uri"]).name, a["size"]) for a in listed] == [("model.bin", 3000)]
    got = api.run(ids[0]).download("model.bin", tmp_path / "down")
    assert got.read_bytes() == b"w" * 3000
    with pytest.raises(LookupError, match="no stored artifact"):
        api.download(ids[1], "model.bin", tmp_path / "down")
