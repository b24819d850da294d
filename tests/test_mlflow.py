"""The MLflow tracking API, driven by the real `mlflow` client (pip install 'runstream[mlflow-test]') against the real
pipeline: the mlflow role publishes to Kafka, the sink stores, reads go through the sink's SQL endpoint."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runstream.ops.stack import InProcessRoles
from runstream.server.auth import ensure_file_token
from runstream.wire.config import RunstreamConfig

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


class MlflowStack:
    def __init__(self, config: RunstreamConfig, roles: InProcessRoles) -> None:
        self.config = config
        self.roles = roles

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.roles.stages['mlflow'][0].port}"

    def query(self, sql: str, **params):
        sink = self.roles.stages["sink"][0]
        return sink.client.query(sql.replace("{db}", self.config.clickhouse.database), parameters=params).result_rows


@pytest.fixture
def ml(config: RunstreamConfig, token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowStack]:
    ensure_file_token(config.tokens_path, config.mlflow_token_path, "mlflow", ["read"])
    config.mlflow.listen = "127.0.0.1:0"
    config.mlflow.metrics_port = 0
    roles = InProcessRoles(config, ["sink", "ingest", "mlflow"]).start()
    stack = MlflowStack(config, roles)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    mlflow.set_tracking_uri(stack.url)
    try:
        yield stack
    finally:
        mlflow.set_tracking_uri(None)
        roles.stop()


def test_fluent_run_round_trips_through_the_pipeline(ml: MlflowStack) -> None:
    mlflow.set_experiment("vision")
    with mlflow.start_run(run_name="resnet") as run:
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"optimizer": "sgd", "layers": "[1, 2]"})
        mlflow.set_tag("team", "perception")
        for step in range(50):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "odd": float("nan")}, step=49)
    got = MlflowClient().get_run(run.info.run_id)
    assert got.info.run_name == "resnet"
    assert got.info.status == "FINISHED"
    assert got.info.end_time is not None and got.info.end_time >= got.info.start_time
    assert got.data.params == {"lr": "0.01", "optimizer": "sgd", "layers": "[1, 2]"}
    assert got.data.tags["team"] == "perception"
    assert got.data.metrics["loss"] == pytest.approx(1.0 / 50)
    assert math.isnan(got.data.metrics["odd"])
    history = MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(50))
    assert history[0].value == 1.0
    # The same run through runstream's own tables: the pipeline stored every point once.
    rows = ml.query("SELECT count(), min(step), max(step) FROM {db}.metrics WHERE project = 'vision' AND run_id = {r:String} "
                    "AND metric = 'loss'", r=run.info.run_id)
    assert rows == [(50, 0, 49)]
    status = ml.query("SELECT status, name FROM {db}.runs WHERE run_id = {r:String}", r=run.info.run_id)
    assert status == [("finished", "resnet")]
