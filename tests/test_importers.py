"""Importers: an MLflow store written by the real `mlflow` client, and TensorBoard event files written by
TensorBoard's own writer, into the real pipeline through ingest; every point round-trips, and a second import adds
nothing."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from runstream.integrations.importers import import_mlflow, import_tensorboard
from runstream.sdk.transport import GrpcTransport
from tests.conftest import Stack
from tests.helpers import wait_until


def duplicates_seen() -> float:
    return REGISTRY.get_sample_value("runstream_sink_batches_total", {"outcome": "duplicate"}) or 0.0


def assert_second_import_adds_nothing(stack: Stack, again, first_batches: int, where: str) -> None:
    """Import again: the sink sees every batch once more (a positive signal), and storage holds what it held."""
    def ledger() -> int:
        return int(stack.query(f"SELECT count() FROM {{db}}.batches FINAL WHERE {where}")[0][0])
    wait_until(lambda: ledger() == first_batches, 60, f"the first import's {first_batches} batches in the ledger")
    before_points = stack.count_points(where)
    seen = duplicates_seen()
    report = again()
    assert report.batches == first_batches
    wait_until(lambda: duplicates_seen() - seen >= first_batches, 60, f"the sink to see the {first_batches} re-sent batches")
    assert stack.count_points(where) == before_points
    assert ledger() == first_batches


def test_import_mlflow_store_round_trips_every_point(stack: Stack, token: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps its file store for reading old data
    store = tmp_path / "mlruns"
    c = MlflowClient(tracking_uri=store.as_uri())
    exp = c.create_experiment("Image Models")  # not a project name: imported as "Image-Models"
    parent = c.create_run(exp, run_name="sweep")
    child = c.create_run(exp, run_name="trial", tags={"mlflow.parentRunId": parent.info.run_id, "team": "vision"})
    t0 = int(time.time() * 1000)
    for start in range(0, 12_000, 1000):
        c.log_batch(child.info.run_id, metrics=[Metric("loss", 1 / (s + 1), t0 + s, s) for s in range(start, start + 1000)])
    c.log_batch(child.info.run_id, metrics=[Metric("acc", float("nan") if s == 3 else s / 10, t0, s) for s in range(10)])
    c.log_param(child.info.run_id, "lr", "0.01")
    c.log_param(child.info.run_id, "arch", "resnet50")
    c.set_terminated(child.info.run_id, "FAILED")
    c.set_terminated(parent.info.run_id)
    gone = c.create_run(exp, run_name="abandoned")
    c.log_metric(gone.info.run_id, "loss", 5.0, step=0)
    c.delete_run(gone.info.run_id)

    lines: list[str] = []
    transport = GrpcTransport(stack.ingest_addr, token)
    report = import_mlflow(str(store), transport, experiments=["Image Models"], progress=lines.append)
    assert report.runs == 3 and report.points_source == report.points_acked == 12_011
    assert report.projects == {"Image Models": "Image-Models"} and len(lines) == 3
    where = "project = 'Image-Models'"
    assert stack.wait_points(12_011, where=where) == 12_011
    for run_id, key in [(child.info.run_id, "loss"), (child.info.run_id, "acc"), (gone.info.run_id, "loss")]:
        stored = stack.query("SELECT step, toUnixTimestamp64Milli(ts), value FROM {db}.metrics WHERE run_id = {r:String} "
                             "AND metric = {k:String} ORDER BY step", r=run_id, k=key)
        source = sorted((m.step, m.timestamp, m.value) for m in c.get_metric_history(run_id, key))
        assert len(stored) == len(source)
        for a, b in zip(stored, source):
            assert a[:2] == b[:2] and (a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2])))
    # "sweep" has no points: waiting for them says nothing of its rows, so wait for the three runs' final status.
    rows = wait_until(lambda: (r := stack.query("SELECT run_id, name, status, parent_run_id FROM {db}.runs WHERE "
                                                + where + " ORDER BY name")) and len(r) == 3 and r[1][2] != "running"
                      and r[2][2] != "running" and r, 30, "the imported runs' start and finish records")
    assert rows == [(gone.info.run_id, "abandoned", "running", ""), (parent.info.run_id, "sweep", "finished", ""),
                    (child.info.run_id, "trial", "failed", parent.info.run_id)]
    params = dict(stack.query("SELECT key, value FROM {db}.params FINAL WHERE run_id = {r:String}", r=child.info.run_id))
    assert params == {"lr": "0.01", "arch": '"resnet50"'}  # typed JSON, as the SDK stores params
    tags = wait_until(lambda: (t := dict(stack.query("SELECT key, value FROM {db}.tags FINAL WHERE run_id = {r:String}",
                                                     r=gone.info.run_id))).get("runstream.lifecycle") and t, 30,
                      "the deleted run's lifecycle tag")
    assert tags["runstream.lifecycle"] == "deleted"  # type: ignore[index]

    assert_second_import_adds_nothing(
        stack, lambda: import_mlflow(store.as_uri(), transport, progress=lines.append), report.batches, where)


def test_import_tensorboard_logs(stack: Stack, token: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    logdir = tmp_path / "tb"
    expected = {}
    for run, n in (("train", 500), ("eval", 50)):
        writer = EventFileWriter(str(logdir / run))
        for step in range(n):
            old = summary_pb2.Summary.Value(tag="loss", simple_value=1.0 / (step + 1))  # TF1-style scalar
            new = summary_pb2.Summary.Value(  # TF2-style: a tensor with the scalars plugin
                tag="metrics/acc", tensor=tensor_util.make_tensor_proto(step / n),
                metadata=summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")))
            writer.add_event(event_pb2.Event(wall_time=1_700_000_000 + step, step=step,
                                             summary=summary_pb2.Summary(value=[old, new])))
        writer.close()
        expected[run] = n
    transport = GrpcTransport(stack.ingest_addr, token)
    report = import_tensorboard(str(logdir), transport, project="tb-import", progress=lambda _: None)
    assert report.runs == 2 and report.points_source == report.points_acked == 2 * (500 + 50)
    where = "project = 'tb-import'"
    assert stack.wait_points(1100, where=where) == 1100

    def by_run() -> list[tuple] | None:
        got = stack.query("SELECT r.name, m.metric, count(), max(m.step), argMax(m.value, m.step) FROM {db}.metrics AS m "
                          "JOIN {db}.runs AS r ON r.run_id = m.run_id AND r.project = m.project WHERE m." + where +
                          " GROUP BY r.name, m.metric ORDER BY r.name, m.metric")
        return got if sum(r[2] for r in got) == 1100 else None
    # The runs' start records may land in a later insert than their points (a fresh-clone CI run joined none).
    rows = wait_until(by_run, 30, "both runs' start records beside their 1,100 points")
    assert [r[:4] for r in rows] == [("eval", "loss", 50, 49), ("eval", "metrics/acc", 50, 49),
                                     ("train", "loss", 500, 499), ("train", "metrics/acc", 500, 499)]
    assert rows[2][4] == pytest.approx(1 / 500) and rows[3][4] == pytest.approx(499 / 500)
    wait_until(lambda: stack.query("SELECT DISTINCT status FROM {db}.runs WHERE " + where) == [("finished",)], 30,
               "both runs finished")
    assert_second_import_adds_nothing(
        stack, lambda: import_tensorboard(str(logdir), transport, project="tb-import", progress=lambda _: None),
        report.batches, where)


@pytest.mark.slow
def test_import_from_a_running_mlflow_server(stack: Stack, token: str, mlflow_server: str) -> None:
    pytest.importorskip("mlflow")
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    c = MlflowClient(tracking_uri=mlflow_server)
    exp = c.create_experiment("served")
    ids = []
    for i in range(3):
        r = c.create_run(exp, run_name=f"s{i}")
        c.log_batch(r.info.run_id, metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(700)],
                    params=[Param("seed", str(i))])
        c.set_terminated(r.info.run_id)
        ids.append(r.info.run_id)
    transport = GrpcTransport(stack.ingest_addr, token)
    report = import_mlflow(mlflow_server, transport, experiments=["served"], progress=lambda _: None)
    assert report.runs == 3 and report.points_source == report.points_acked == 2100
    assert stack.wait_points(2100, where="project = 'served'") == 2100
    rows = stack.query("SELECT run_id, count(), sum(value) FROM {db}.metrics WHERE project = 'served' GROUP BY run_id ORDER BY run_id")
    assert [(r[0], r[1]) for r in rows] == [(rid, 700) for rid in sorted(ids)]
    assert rows[0][2] == pytest.approx(sum(1.0 / (s + 1) for s in range(700)))
    assert_second_import_adds_nothing(
        stack, lambda: import_mlflow(mlflow_server + "/", transport, experiments=["served"], progress=lambda _: None),
        report.batches, "project = 'served'")


@pytest.mark.slow
def test_cli_imports_an_mlflow_sql_database(stack: Stack, token: str, mlflow_reference: tuple[str, Path]) -> None:
    """`runstream import mlflow --tracking-uri sqlite:///...`: MLflow's SQL store needs full mlflow, so the CLI runs
    with the MLflow server's own venv (runstream's slim SDK on its path)."""
    import os
    import subprocess

    pytest.importorskip("mlflow")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tests.conftest import MLFLOW_SERVER
    mlflow_server, db = mlflow_reference
    c = MlflowClient(tracking_uri=mlflow_server)
    exp = c.create_experiment("from-db")
    run = c.create_run(exp, run_name="db-run")
    c.log_batch(run.info.run_id, metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(1234)])
    c.set_terminated(run.info.run_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parent.parent), RUNSTREAM_URL=stack.ingest_addr, RUNSTREAM_TOKEN=token)
    python = MLFLOW_SERVER.parent / "python"
    res = subprocess.run([str(python), "-m", "runstream", "import", "mlflow", "--tracking-uri", f"sqlite:///{db}",
                          "--experiment", "from-db"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "1,234 of 1,234 points acknowledged" in res.stdout and "db-run" in res.stderr  # the count, and progress
    assert stack.wait_points(1234, where="project = 'from-db'") == 1234
