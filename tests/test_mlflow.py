"""The MLflow tracking API, driven by the real `mlflow` client (pip install 'runstream[mlflow-test]') against the real
pipeline: the mlflow role publishes to Kafka, the sink stores, reads go through the sink's SQL endpoint."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from runstream.server.auth import ensure_file_token
from runstream.wire.config import RunstreamConfig
from tests.conftest import MlflowStack
from tests.helpers import narrow_token, wait_until

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


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


def test_client_endpoints_experiments_runs_tags_batches(ml: MlflowStack) -> None:
    c = MlflowClient()
    exp_id = c.create_experiment("nlp", tags={"owner": "ana"})
    assert exp_id == "nlp"
    with pytest.raises(MlflowException) as dup:
        c.create_experiment("nlp")
    assert dup.value.error_code == "RESOURCE_ALREADY_EXISTS"
    exp = c.get_experiment_by_name("nlp")
    assert exp.experiment_id == "nlp" and exp.tags == {"owner": "ana"} and exp.lifecycle_stage == "active"
    c.set_experiment_tag(exp_id, "stage", "dev")
    assert c.get_experiment(exp_id).tags == {"owner": "ana", "stage": "dev"}
    assert "nlp" in [e.name for e in c.search_experiments(filter_string="name LIKE 'nl%'")]

    run = c.create_run(exp_id, run_name="bert", tags={"mlflow.user": "ana"})
    rid = run.info.run_id
    assert run.info.status == "RUNNING" and run.info.artifact_uri == f"mlflow-artifacts:/nlp/{rid}/artifacts"
    now = int(time.time() * 1000)
    c.log_batch(rid, metrics=[Metric("f1", 0.5 + i / 100, now + i, i) for i in range(20)],
                params=[Param("batch_size", "32"), Param("model", "bert-base")], tags=[RunTag("note", "first")])
    c.set_tag(rid, "temp", "x")
    c.delete_tag(rid, "temp")
    c.update_run(rid, name="bert-2")
    got = c.get_run(rid)
    assert got.info.run_name == "bert-2" and got.info.user_id == "ana"
    assert got.data.params == {"batch_size": "32", "model": "bert-base"}
    assert "temp" not in got.data.tags and got.data.tags["note"] == "first"
    assert got.data.metrics["f1"] == pytest.approx(0.69)
    with pytest.raises(MlflowException) as missing_tag:
        c.delete_tag(rid, "never-set")
    assert missing_tag.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    c.set_terminated(rid, "FAILED")
    assert c.get_run(rid).info.status == "FAILED"
    c.delete_run(rid)
    assert c.get_run(rid).info.lifecycle_stage == "deleted"
    assert rid not in [r.info.run_id for r in c.search_runs([exp_id])]
    assert rid in [r.info.run_id for r in c.search_runs([exp_id], run_view_type=mlflow.entities.ViewType.DELETED_ONLY)]
    c.restore_run(rid)
    assert [r.info.run_id for r in c.search_runs([exp_id])] == [rid]

    c.delete_experiment(exp_id)
    assert c.get_experiment(exp_id).lifecycle_stage == "deleted"
    assert "nlp" not in [e.name for e in c.search_experiments()]
    with pytest.raises(MlflowException) as deleted:
        c.create_run(exp_id)
    assert deleted.value.error_code == "INVALID_PARAMETER_VALUE"
    c.restore_experiment(exp_id)
    assert c.get_experiment(exp_id).lifecycle_stage == "active"
    # The governance trail records the experiment changes, as any project change.
    actions = ml.query("SELECT action FROM {db}.audit_log WHERE project = 'nlp' AND action LIKE 'project.%' ORDER BY seq")
    assert [a for (a,) in actions][:2] == ["project.create", "project.update"]


def test_search_runs_filters_ordering_and_pages(ml: MlflowStack) -> None:
    c = MlflowClient()
    exp = c.create_experiment("sweep")
    ids = {}
    for i, (lr, opt) in enumerate([(0.1, "sgd"), (0.01, "adam"), (0.001, "adam"), (0.0001, "sgd")]):
        r = c.create_run(exp, run_name=f"trial-{i}", tags={"family": "cnn" if i % 2 else "mlp"})
        c.log_batch(r.info.run_id, metrics=[Metric("acc", 0.5 + i / 10, 0, s) for s in range(3)]
                    + [Metric("acc", 0.6 + i / 10, 0, 3)], params=[Param("lr", str(lr)), Param("opt", opt)])
        ids[i] = r.info.run_id
        if i < 3:
            c.set_terminated(r.info.run_id)

    def names(**kw) -> list[str]:
        return [r.info.run_name for r in c.search_runs([exp], **kw)]

    assert names(filter_string="metrics.acc > 0.75", order_by=["metrics.acc DESC"]) == ["trial-3", "trial-2"]
    assert names(filter_string="params.opt = 'adam'", order_by=["params.lr ASC"]) == ["trial-2", "trial-1"]
    # trial-1's latest acc is exactly 0.7 (checked, not assumed): >= keeps it, > drops it; the mlp runs fail the tag,
    # whatever their acc; among them trial-0 (0.6) fails the acc clause and trial-2 (0.8) passes it.
    latest = {i: c.get_run(ids[i]).data.metrics["acc"] for i in ids}
    assert latest == {i: 0.6 + i / 10 for i in range(4)} and latest[1] == 0.7 and latest[0] < 0.7 < latest[2]
    edge = latest[1]  # the filters' boundary is a stored value: >= and > must part on it
    assert sorted(names(filter_string=f"tags.family = 'cnn' and metrics.acc >= {edge}")) == ["trial-1", "trial-3"]
    assert names(filter_string=f"tags.family = 'cnn' and metrics.acc > {edge}") == ["trial-3"]
    assert names(filter_string=f"tags.family = 'mlp' and metrics.acc >= {edge}") == ["trial-2"]
    assert sorted(names(filter_string="tags.family = 'mlp'")) == ["trial-0", "trial-2"]  # the acc clause removed one
    assert names(filter_string="attributes.status = 'RUNNING'") == ["trial-3"]
    assert names(filter_string="attributes.run_name LIKE 'trial-%' and params.lr = '0.1'") == ["trial-0"]
    assert names(filter_string="params.missing IS NULL", order_by=["attributes.run_name"]) == [f"trial-{i}" for i in range(4)]
    assert names(filter_string=f"attributes.run_id IN ('{ids[0]}', '{ids[2]}')", order_by=["run_name DESC"]) == [
        "trial-2", "trial-0"]
    # Pages: two runs at a time, in order, and nothing twice.
    first = c.search_runs([exp], order_by=["metrics.acc ASC"], max_results=2)
    second = c.search_runs([exp], order_by=["metrics.acc ASC"], max_results=2, page_token=first.token)
    assert [r.info.run_name for r in first] + [r.info.run_name for r in second] == [f"trial-{i}" for i in range(4)]
    assert not second.token
    # The fluent search returns a DataFrame, with params and metrics columns.
    df = mlflow.search_runs([exp], filter_string="metrics.acc < 0.75", order_by=["metrics.acc"])
    assert list(df["params.opt"]) == ["sgd", "adam"]
    for bad, word in [("metrics.acc > 'x'", "number"), ("params.lr > '1'", "string"), ("metrics.acc > 1 or params.a = 'b'", "OR"),
                      ("nonsense.x = 1", "prefix"), ("metrics.acc ~ 1", "")]:
        with pytest.raises(MlflowException) as err:
            c.search_runs([exp], filter_string=bad)
        assert err.value.error_code == "INVALID_PARAMETER_VALUE" and word in str(err.value), bad


def test_nested_runs_history_and_bulk_interval(ml: MlflowStack) -> None:
    mlflow.set_experiment("nested")
    with mlflow.start_run(run_name="parent") as parent:
        for step in range(0, 1000, 10):
            mlflow.log_metric("loss", 1000 - step, step=step)
        with mlflow.start_run(run_name="child", nested=True) as child:
            for step in range(-50, 1, 5):  # negative steps: MLflow keeps them, so does runstream
                mlflow.log_metric("loss", 1.0 - step, step=step)
    c = MlflowClient()
    got = c.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    children = c.search_runs([got.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [r.info.run_id for r in children] == [child.info.run_id]
    # runstream's runs view knows the parent too (lineage, the run explorer).
    assert ml.query("SELECT parent_run_id FROM {db}.runs WHERE run_id = {r:String}", r=child.info.run_id) == [(parent.info.run_id,)]
    history = c.get_metric_history(parent.info.run_id, "loss")
    assert len(history) == 100 and history[-1].step == 990 and history[-1].value == 10
    # The UI's sampled history, served here, equals what MLflow's own store code computes from the full histories.
    import requests
    from mlflow.tracking._tracking_service.utils import _get_store
    run_ids = [parent.info.run_id, child.info.run_id]
    assert [m.step for m in c.get_metric_history(child.info.run_id, "loss")] == list(range(-50, 1, 5))
    for window in [{}, {"start_step": 0, "end_step": 500}, {"start_step": -30, "end_step": 100}]:
        reference = _get_store().get_metric_history_bulk_interval(run_ids, "loss", max_results=10,
                                                                  start_step=window.get("start_step"),
                                                                  end_step=window.get("end_step"))
        r = requests.get(f"{ml.url}/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                         params={"run_ids": run_ids, "metric_key": "loss", "max_results": 10, **window},
                         headers={"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}, timeout=10)
        assert r.status_code == 200, r.text
        served = [(m["run_id"], m["step"], m["value"]) for m in r.json()["metrics"]]
        assert served == [(m.run_id, m.step, m.value) for m in reference]
        assert len(served) >= 11


def test_artifacts_up_list_down_with_lineage(ml: MlflowStack, tmp_path: Path) -> None:
    mlflow.set_experiment("arts")
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00weights" * 1000)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.txt").write_text("1,0.5\n")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(model))
        mlflow.log_artifacts(str(tmp_path / "plots"), artifact_path="plots")
        mlflow.log_text("hello", "notes/readme.txt")
    c = MlflowClient()
    top = {f.path: f for f in c.list_artifacts(run.info.run_id)}
    assert set(top) == {"model.bin", "plots", "notes"} and top["plots"].is_dir and top["model.bin"].file_size == 8000
    assert [f.path for f in c.list_artifacts(run.info.run_id, "plots")] == ["plots/loss.txt"]
    out = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "down")))
    assert (out / "model.bin").read_bytes() == model.read_bytes()
    assert (out / "notes" / "readme.txt").read_text() == "hello"
    # Lineage: every upload is an artifact record with its sha256.
    import hashlib
    rows = ml.query("SELECT uri, size, sha256 FROM {db}.artifacts WHERE run_id = {r:String} ORDER BY uri", r=run.info.run_id)
    assert (f"mlflow-artifacts:/arts/{run.info.run_id}/artifacts/model.bin", 8000,
            hashlib.sha256(model.read_bytes()).hexdigest()) in rows
    assert len(rows) == 3


def test_sdk_artifacts_are_uploaded_and_any_client_lists_and_downloads_them(ml: MlflowStack, token: str, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """log_artifact streams the bytes to the stack's artifact server (no shared filesystem): MLflow's client lists
    and downloads them, the read API downloads them with the sha256 checked; bytes that do not match the sha256
    sent are refused and not kept; a refused upload still leaves the file's digest in the run's lineage."""
    import hashlib

    import requests

    import runstream
    from runstream.sdk.transport import GrpcTransport
    ingest = f"127.0.0.1:{ml.roles.stages['ingest'][0].port}"

    def init(tok: str) -> runstream.Run:
        return runstream.init("uploads", transport=GrpcTransport(ingest, token), token=tok,
                              spool_dir=str(tmp_path / "spool"), system_interval_s=0)

    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(3 << 20))
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.csv").write_text("0,1.0\n1,0.5\n")
    run = init(token)
    run.log({"loss": 1.0})
    art = run.log_artifact(model, upload=ml.url)  # right after the start: retried until the run is stored
    run.log_artifact(tmp_path / "plots", upload=ml.url)
    assert art.uri == f"mlflow-artifacts:/uploads/{run.id}/artifacts/model.bin"
    assert run.finish(timeout=60)

    c = MlflowClient()
    assert sorted(f.path for f in c.list_artifacts(run.id)) == ["model.bin", "plots"]
    assert [f.path for f in c.list_artifacts(run.id, "plots")] == ["plots/loss.csv"]
    out = Path(mlflow.artifacts.download_artifacts(run_id=run.id, artifact_path="model.bin", dst_path=str(tmp_path / "m")))
    assert out.read_bytes() == model.read_bytes()

    api = runstream.Api(f"http://{ml.config.sink.sql_listen}", token, database=ml.config.clickhouse.database,
                        artifact_url=ml.url)
    listed = wait_until(lambda: len(api.artifacts(run.id)) == 2 and api.artifacts(run.id), 30, "two artifact records")
    assert isinstance(listed, list)
    assert {a["uri"].rsplit("/", 1)[1]: a["sha256"] for a in listed} == {
        "model.bin": hashlib.sha256(model.read_bytes()).hexdigest(),
        "loss.csv": hashlib.sha256(b"0,1.0\n1,0.5\n").hexdigest()}
    got = api.download(run.id, "model.bin", tmp_path / "via-api")
    assert got.read_bytes() == model.read_bytes()

    # The server checks the digest the SDK sends.
    bad = requests.put(f"{ml.url}/api/2.0/mlflow-artifacts/artifacts/uploads/{run.id}/artifacts/tampered.bin",
                       data=b"abc", headers={"Authorization": f"Bearer {token}", "X-Runstream-Sha256": "0" * 64},
                       timeout=30)
    assert bad.status_code == 400 and "sha256" in bad.json()["message"]
    assert sorted(f.path for f in c.list_artifacts(run.id)) == ["model.bin", "plots"]

    # A refused upload (a token without access): said in the log, and the lineage keeps the file's digest.
    other = init("rs_bogus_token")
    other.log_artifact(model, upload=ml.url)
    assert other.finish(timeout=60)
    assert "was not uploaded" in caplog.text
    rows = wait_until(lambda: ml.query("SELECT uri, sha256 FROM {db}.artifacts WHERE run_id = {r:String}", r=other.id),
                      30, "the local artifact record")
    assert rows == [(str(model), hashlib.sha256(model.read_bytes()).hexdigest())]


def test_any_experiment_name_and_renames_keep_the_project(ml: MlflowStack) -> None:
    """MLflow's first line, set_experiment("My Experiment"), works; the experiment gets a project of its own (its
    name's letters and digits) and a rename changes only the name people see."""
    exp = mlflow.set_experiment("My Experiment")
    assert exp.name == "My Experiment" and exp.experiment_id == "My-Experiment"
    with mlflow.start_run(run_name="first") as run:
        mlflow.log_metric("loss", 0.5, step=1)
    c = MlflowClient()
    # Another name with the same letters gets a project of its own; names are unique, projects too.
    other = c.create_experiment("My/Experiment", artifact_location="my_location")
    assert other == "My-Experiment-2" and c.get_experiment(other).name == "My/Experiment"
    # Its artifact location as MLflow's server keeps it (relative: made absolute); only reported, its runs' files
    # still go through the role's artifact store.
    assert c.get_experiment(other).artifact_location == str(Path.cwd() / "my_location")
    assert c.create_run(other).info.artifact_uri.startswith("mlflow-artifacts:/My-Experiment-2/")
    with pytest.raises(MlflowException) as runs_uri:
        c.create_experiment("elsewhere", artifact_location="runs:/abc/model")
    assert runs_uri.value.error_code == "INVALID_PARAMETER_VALUE" and "runs:/" in str(runs_uri.value)
    with pytest.raises(MlflowException) as dup:
        c.create_experiment("My Experiment")
    assert dup.value.error_code == "RESOURCE_ALREADY_EXISTS"
    c.rename_experiment(exp.experiment_id, "Vision: ResNet sweep")
    assert c.get_experiment_by_name("Vision: ResNet sweep").experiment_id == "My-Experiment"
    assert c.get_experiment_by_name("My Experiment") is None  # the client's answer to RESOURCE_DOES_NOT_EXIST
    with pytest.raises(MlflowException) as taken:
        c.rename_experiment(other, "Vision: ResNet sweep")
    assert taken.value.error_code == "BAD_REQUEST"  # what MLflow's own server answers
    c.rename_experiment(other, "My other experiment")
    assert c.get_experiment(other).artifact_location == str(Path.cwd() / "my_location")  # a rename keeps it
    # The runs stay where they were: same experiment id, same project in storage.
    found = c.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in found] == [run.info.run_id] and found[0].data.metrics == {"loss": 0.5}
    assert ml.query("SELECT count() FROM {db}.metrics WHERE project = 'My-Experiment' AND run_id = {r:String}",
                    r=run.info.run_id) == [(1,)]
    assert "Vision: ResNet sweep" in [e.name for e in c.search_experiments(filter_string="name LIKE 'Vision:%'")]
    # Set by name again after the rename: the renamed experiment, not a new one.
    assert mlflow.set_experiment("Vision: ResNet sweep").experiment_id == "My-Experiment"
    # Each change is a governance record in the project's audit trail.
    def actions() -> list[str]:
        return [a for (a,) in ml.query("SELECT action FROM {db}.audit_log WHERE project = 'My-Experiment' "
                                       "AND action LIKE 'project.%' ORDER BY seq")]
    wait_until(lambda: len(actions()) >= 2, 30, "the experiment's governance records in its audit trail")
    assert actions() == ["project.create", "project.update"]


def test_errors_and_auth_are_mlflow_shaped(ml: MlflowStack, config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    c = MlflowClient()
    with pytest.raises(MlflowException) as missing:
        c.get_run("0123456789abcdef0123456789abcdef")
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as no_exp:
        c.get_experiment("nope")
    assert no_exp.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as bad_name:
        c.create_experiment("x" * 501)
    assert bad_name.value.error_code == "INVALID_PARAMETER_VALUE" and "500 characters" in str(bad_name.value)
    run = c.create_run("0")
    c.log_metric(run.info.run_id, "loss", 0.5, step=-3)  # MLflow keeps negative steps; so does runstream
    c.log_metric(run.info.run_id, "loss", 0.25, step=2)
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "loss")] == [(-3, 0.5), (2, 0.25)]

    api = f"{ml.url}/api/2.0/mlflow"
    r = requests.get(f"{api}/experiments/get", params={"experiment_id": "0"}, timeout=10)
    assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHENTICATED"
    r = requests.get(f"{api}/experiments/get", params={"experiment_id": "0"}, auth=("anyone", "rs_wrong"), timeout=10)
    assert r.status_code == 401
    dev = config.tokens_path.read_text().split("token: ")[1].split()[0]
    r = requests.get(f"{api}/experiments/get", params={"experiment_id": "0"}, auth=("anyone", dev), timeout=10)
    assert r.status_code == 200 and r.json()["experiment"]["name"] == "Default"
    r = requests.post(f"{api}/runs/log-metric", auth=("anyone", dev), timeout=10, json={
        "run_id": run.info.run_id, "key": "loss", "value": 1.0, "timestamp": 1, "step": 2**63})  # past int64
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE" and "step" in r.json()["message"]
    r = requests.post(f"{api}/runs/no-such-endpoint", json={}, headers={"Authorization": f"Bearer {dev}"}, timeout=10)
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = requests.post(f"{api}/runs/log-batch", data=b"{not json", headers={"Authorization": f"Bearer {dev}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error_code"] == "BAD_REQUEST"
    # A path that climbs out of the artifact root is refused before any file is touched.
    r = requests.get(f"{ml.url}/api/2.0/mlflow-artifacts/artifacts/0/{run.info.run_id}/artifacts/..%2F..%2F..%2Ftokens.yaml",
                     headers={"Authorization": f"Bearer {dev}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    # Scopes: a read-only token reads but cannot write; a token for another project sees nothing of this one.
    from runstream.server.auth import ensure_file_token
    reader = ensure_file_token(config.tokens_path, config.data_path / "reader.token", "reader", ["read"])
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", reader)

    def reads() -> bool:  # the token file is re-read at most every 2 s: unknown until then
        try:
            return MlflowClient().get_run(run.info.run_id).info.run_id == run.info.run_id
        except MlflowException as exc:
            assert exc.error_code == "UNAUTHENTICATED", exc
            return False
    wait_until(reads, 10, "the new read-only token to be known and read the run")
    with pytest.raises(MlflowException) as denied:
        MlflowClient().log_param(run.info.run_id, "a", "b")
    assert denied.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(RestException):
        MlflowClient().create_experiment("readers-cannot")


# mlflow's dataset digest calls a pandas API the way pandas 4 will refuse: its warning, not this project's.
@pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")
@pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*")  # its notes on signature inference
@pytest.mark.slow
def test_sklearn_autolog_and_datasets(ml: MlflowStack) -> None:
    pytest.importorskip("sklearn")
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    mlflow.set_experiment("autolog")
    mlflow.sklearn.autolog(log_input_examples=False)
    try:
        rng = np.random.default_rng(0)
        x = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
        y = (x["a"] + x["b"] > 0).astype(int)
        with mlflow.start_run() as run:
            model = LogisticRegression(C=0.5, max_iter=200).fit(x, y)
            mlflow.log_input(mlflow.data.from_pandas(x, source="s3://bucket/train.parquet", name="train"), context="training")
    finally:
        mlflow.sklearn.autolog(disable=True)
    got = MlflowClient().get_run(run.info.run_id)
    assert got.data.params["C"] == "0.5" and got.data.params["max_iter"] == "200"
    assert got.data.metrics["training_accuracy_score"] == pytest.approx(model.score(x, y))
    assert got.data.tags["estimator_class"] == "sklearn.linear_model._logistic.LogisticRegression"
    # The model autolog logged: a logged model whose source is the run, its files behind the artifact proxy.
    models = MlflowClient().search_logged_models([got.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id] and models[0].status.to_proto() == 2  # READY
    loaded = mlflow.sklearn.load_model(f"models:/{models[0].model_id}")
    assert (loaded.predict(x) == model.predict(x)).all()
    # The dataset: in the run's inputs and in runstream's lineage table.
    assert [d.dataset.digest for d in got.inputs.dataset_inputs][-1:] == [mlflow.data.from_pandas(x).digest]
    uris = {u for (u,) in ml.query("SELECT uri FROM {db}.datasets_used WHERE run_id = {r:String}", r=run.info.run_id)}
    assert uris == {"s3://bucket/train.parquet", "mlflow:code/dataset"}  # ours, and the one autolog logged
    # runstream's own view of the run: params as typed JSON, so the read API's numeric filters work on them.
    assert ml.query("SELECT value FROM {db}.params FINAL WHERE run_id = {r:String} AND key = 'C'", r=run.info.run_id) == [("0.5",)]


def _scenario(uri: str, tmp_path: Path) -> dict:
    """The same calls against a tracking server; what they return, without what differs by nature (ids, times)."""
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("diff", tags={"k": "v"})
    c.set_experiment_tag(exp, "stage", "dev")
    names: dict[str, str] = {}
    for i, (lr, status) in enumerate([("0.1", "FINISHED"), ("0.01", "FAILED"), ("0.001", None)]):
        r = c.create_run(exp, run_name=f"r{i}", tags={"family": "cnn" if i else "mlp"})
        rid = r.info.run_id
        names[rid] = f"r{i}"
        c.log_batch(rid, metrics=[Metric("acc", 0.5 + i / 10 + s / 100, 1000 + s, s) for s in range(5)]
                    + [Metric("odd", float("nan"), 1000, 0)], params=[Param("lr", lr), Param("opt", "sgd")],
                    tags=[RunTag("note", f"n{i}")])
        c.log_metric(rid, "acc", 0.99 if i == 2 else 0.1, timestamp=2000, step=2)  # two values at step 2
        c.set_tag(rid, "temp", "x")
        c.delete_tag(rid, "temp")
        if status:
            c.set_terminated(rid, status, end_time=5000)
    child = c.create_run(exp, run_name="child", tags={"mlflow.parentRunId": next(iter(names))})
    names[child.info.run_id] = "child"
    c.set_tag(list(names)[1], "mlflow.runName", "renamed")  # MLflow renames a run by its tag

    def run_view(rid: str) -> dict:
        run = c.get_run(rid)
        tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.parentRunId"}
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = names[tags["mlflow.parentRunId"]]
        metrics = {k: ("nan" if math.isnan(v) else v) for k, v in run.data.metrics.items()}
        return {"name": run.info.run_name, "status": run.info.status, "lifecycle": run.info.lifecycle_stage,
                "params": run.data.params, "tags": tags, "metrics": metrics, "ended": run.info.end_time}

    def search(**kw) -> list[str]:
        return [names[r.info.run_id] for r in c.search_runs([exp], **kw)]

    def error(call) -> str:
        try:
            call()
        except MlflowException as exc:
            return exc.error_code
        return "no error"

    out = {
        "experiment": (lambda e: (e.name, e.lifecycle_stage, e.tags))(c.get_experiment_by_name("diff")),
        "runs": {names[rid]: run_view(rid) for rid in names},
        "history": [(m.step, m.value, m.timestamp) for m in sorted(
            c.get_metric_history(next(r for r, n in names.items() if n == "r2"), "acc"), key=lambda m: (m.step, m.timestamp))],
        "searches": {
            "acc desc": search(order_by=["metrics.acc DESC"]),
            "acc > 0.2": search(filter_string="metrics.acc > 0.2", order_by=["attributes.run_name"]),
            "lr asc": search(order_by=["params.lr ASC"]),
            "opt like": search(filter_string="params.opt LIKE 's%'", order_by=["run_name DESC"]),
            "tag ilike": search(filter_string="tags.family ILIKE 'CNN'", order_by=["run_name"]),
            "status": search(filter_string="attributes.status = 'FAILED'"),
            "null param": search(filter_string="params.lr IS NULL"),
            "child": search(filter_string="tags.mlflow.parentRunId != ''"),
            "page 1": search(order_by=["run_name"], max_results=2),
            "renamed": search(filter_string="attributes.run_name = 'renamed'"),
            "tag desc": search(order_by=["tags.note DESC"]),
            "deleted tag": search(filter_string="tags.temp IS NULL"),
            "status asc": search(order_by=["attributes.status"]),
        },
        "errors": {
            "missing run": error(lambda: c.get_run("f" * 32)),
            "duplicate experiment": error(lambda: c.create_experiment("diff")),
            "missing tag": error(lambda: c.delete_tag(child.info.run_id, "never")),
            "bad filter": error(lambda: c.search_runs([exp], filter_string="metrics.acc > 'x'")),
            "or filter": error(lambda: c.search_runs([exp], filter_string="metrics.acc > 1 or params.lr = '1'")),
            "missing experiment": error(lambda: c.get_experiment_by_name("nope")),
        },
    }
    # Raw calls the UI and MLflow's own tests make, with the wording its clients match on (up to MLflow's pointers
    # to its docs and the type hints after "supplied").
    import requests
    ajax = f"{uri}/ajax-api/2.0/mlflow"
    auth = {"Authorization": f"Bearer {os.environ.get('MLFLOW_TRACKING_TOKEN', '')}"}

    def answer(method: str, path: str, **kw: object) -> tuple[int, str, str]:
        r = requests.request(method, f"{ajax}/{path}", headers=auth, timeout=30, **kw)  # type: ignore[arg-type]
        body = r.json()
        text = str(body.get("message", "")).split(" See the API docs")[0].split(" supplied")[0]
        return r.status_code, body.get("error_code", "ok"), text.replace(child.info.run_id, "<child>")

    bulk = requests.get(f"{ajax}/metrics/get-history-bulk", params={"run_id": list(names), "metric_key": "acc"},
                        headers=auth, timeout=30).json()["metrics"]
    by_run: dict[str, list[tuple]] = {}
    for m in bulk:
        by_run.setdefault(names[m["run_id"]], []).append((m["step"], m["value"], m["timestamp"], m["key"]))
    out["history bulk"] = by_run
    out["history bulk, 3 points"] = len(requests.get(f"{ajax}/metrics/get-history-bulk", params={
        "run_id": list(names), "metric_key": "acc", "max_results": 3}, headers=auth, timeout=30).json()["metrics"])
    first = next(iter(names))
    out["wording"] = {
        "bulk without run_id": answer("GET", "metrics/get-history-bulk", params={"metric_key": "acc"}),
        "bulk without metric_key": answer("GET", "metrics/get-history-bulk", params={"run_id": first}),
        "bulk, 101 runs": answer("GET", "metrics/get-history-bulk", params={"run_id": [f"r{i}" for i in range(101)],
                                                                            "metric_key": "acc"}),
        "interval without run_ids": answer("GET", "metrics/get-history-bulk-interval", params={"metric_key": "acc"}),
        "datasets without experiments": answer("POST", "experiments/search-datasets", json={}),
        "datasets, 21 experiments": answer("POST", "experiments/search-datasets", json={"experiment_ids": [exp] * 21}),
        "max_results too large": answer("POST", "runs/search", json={"experiment_ids": [exp], "max_results": 123456789}),
        "run_id a number": answer("POST", "runs/log-parameter", json={"run_id": 31, "key": "a", "value": "b"}),
        "metrics not a list": answer("POST", "runs/log-batch", json={"run_id": first, "metrics": "foo"}),
        "name a number": answer("POST", "experiments/create", json={"name": 123}),
        "no name": answer("POST", "experiments/create", json={}),
        "artifact location a number": answer("POST", "experiments/create", json={"name": "typed", "artifact_location": 9.0}),
        "tags not a list": answer("POST", "experiments/create", json={"name": "typed", "tags": "5"}),
        "metric key a number": answer("POST", "runs/log-metric", json={"run_id": first, "key": 31, "value": 1,
                                                                     "timestamp": 5, "step": 1}),
        "metric step a word": answer("POST", "runs/log-metric", json={"run_id": first, "key": "m", "value": 1,
                                                                    "timestamp": 5, "step": "foo"}),
        "metric without timestamp": answer("POST", "runs/log-batch", json={"run_id": first,
                                                                         "metrics": [{"key": "m", "value": 1}]}),
        "tag value a number": answer("POST", "runs/set-tag", json={"run_id": first, "key": "t", "value": 41}),
        "interval ending before it starts": answer("GET", "metrics/get-history-bulk-interval", params={
            "run_ids": ["no-such-run"], "metric_key": "acc", "start_step": 1, "end_step": 0}),
    }
    model = c.create_logged_model(exp)
    c.set_logged_model_tags(model.model_id, {"a": "1", "b": "2"})
    c.delete_logged_model_tag(model.model_id, "a")
    out["logged model tags"] = (c.get_logged_model(model.model_id).tags, error(
        lambda: c.delete_logged_model_tag(model.model_id, "a")))
    c.delete_run(child.info.run_id)
    out["wording"]["delete tag of a deleted run"] = answer("POST", "runs/delete-tag", json={
        "run_id": child.info.run_id, "key": "family"})
    out["after delete"] = (search(), c.get_run(child.info.run_id).info.lifecycle_stage)
    # Experiment names MLflow accepts, and renames (ids differ by nature: compared by what they name).
    spaced = c.create_experiment("My Experiment", tags={"t": "1"})
    c.rename_experiment(spaced, "My Experiment: renamed")
    out["names"] = {
        "renamed": (c.get_experiment(spaced).name, c.get_experiment_by_name("My Experiment: renamed").experiment_id == spaced),
        "old name": c.get_experiment_by_name("My Experiment") is None,
        "rename onto a taken name": error(lambda: c.rename_experiment(spaced, "diff")),
        "empty name": error(lambda: c.create_experiment("")),
        "listed": sorted(e.name for e in c.search_experiments(filter_string="name LIKE 'My%'")),
    }
    art = tmp_path / uri.rsplit(":", 1)[1] / "a.txt"
    art.parent.mkdir(parents=True)
    art.write_text("artifact")
    first = next(iter(names))
    c.log_artifact(first, str(art), artifact_path="dir")
    out["artifacts"] = [(f.path, f.is_dir, f.file_size) for f in c.list_artifacts(first, "dir")]
    out.update(_datasets_and_models(c, uri, exp, names))
    return out


def _datasets_and_models(c: MlflowClient, uri: str, exp: str, names: dict[str, str]) -> dict:
    """Datasets as MLflow describes them, a logged model's metrics, inputs and outputs, the UI's upload."""
    import requests
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, LoggedModelOutput

    auth = {"Authorization": f"Bearer {os.environ.get('MLFLOW_TRACKING_TOKEN', '')}"}  # MLflow's server ignores it
    first, second = list(names)[:2]
    ds = Dataset(name="train", digest="d1", source_type="s3", source='{"uri": "s3://b/train.csv"}',
                 schema='{"mlflow_colspec": [{"name": "a", "type": "long"}]}', profile='{"num_rows": 2}')
    c.log_inputs(first, [DatasetInput(ds, [InputTag("mlflow.data.context", "training"), InputTag("split", "a")]),
                         DatasetInput(Dataset("eval", "d2", "code", "{}"), [])])
    out: dict = {"inputs": sorted((d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source,
                                   d.dataset.schema, d.dataset.profile, sorted((t.key, t.value) for t in d.tags))
                                  for d in c.get_run(first).inputs.dataset_inputs)}
    found = requests.post(f"{uri}/ajax-api/2.0/mlflow/experiments/search-datasets", json={"experiment_ids": [exp]},
                          headers=auth, timeout=30).json()["dataset_summaries"]
    out["dataset summaries"] = sorted(tuple(sorted((k, v) for k, v in d.items() if k != "experiment_id")) for d in found)
    for f in ("datasets.context = 'training'", "datasets.name = 'eval'", "datasets.digest IN ('d1', 'x')"):
        out[f] = sorted(names[r.info.run_id] for r in c.search_runs([exp], filter_string=f))
    # A metric of a run measured on a dataset and naming a logged model is the model's too.
    model = c.create_logged_model(exp, name="clf")
    c.log_metric(first, "auc", 0.9, timestamp=3000, step=3, dataset_name="train", dataset_digest="d1",
                 model_id=model.model_id)
    c.log_inputs(second, models=[LoggedModelInput(model.model_id)])
    c.log_outputs(first, [LoggedModelOutput(model.model_id, 3)])
    out["model metrics"] = [(m.key, m.value, m.step, m.timestamp, m.dataset_name, m.dataset_digest, names[m.run_id])
                            for m in c.get_logged_model(model.model_id).metrics]
    out["model inputs"] = [m.model_id == model.model_id for m in c.get_run(second).inputs.model_inputs]
    out["model outputs"] = [(m.model_id == model.model_id, m.step) for m in c.get_run(first).outputs.model_outputs]
    for digest in ("d1", "other"):
        found = c.search_logged_models([exp], datasets=[{"dataset_name": "train", "dataset_digest": digest}])
        out[f"models measured on train@{digest}"] = [m.name for m in found]
    # The UI's upload (a file of a run, by query string), read back as the UI reads it.
    r = requests.post(f"{uri}/ajax-api/2.0/mlflow/upload-artifact", params={"run_uuid": first, "path": "ui/n.txt"},
                      data=b"from the UI", headers=auth, timeout=30)
    out["ui upload"] = (r.status_code, requests.get(f"{uri}/get-artifact", params={"run_uuid": first, "path": "ui/n.txt"},
                                                    headers=auth, timeout=30).text)
    r = requests.post(f"{uri}/ajax-api/2.0/mlflow/upload-artifact", params={"run_uuid": first, "path": "../n.txt"},
                      data=b"x", headers=auth, timeout=30)
    out["ui upload outside the run"] = (r.status_code, r.json()["error_code"])
    return out


@pytest.mark.slow
def test_same_answers_as_a_real_mlflow_server(ml: MlflowStack, mlflow_server: str, tmp_path: Path) -> None:
    """Differential: the scenario against MLflow's own server and against runstream gives the same results."""
    reference = _scenario(mlflow_server, tmp_path)
    ours = _scenario(ml.url, tmp_path)
    for key in reference:
        assert ours[key] == reference[key], key


def test_the_api_forgets_idle_runs_but_not_pending_ones(tmp_path: Path) -> None:
    from runstream.mlflow.api import MlflowApi
    from runstream.server.auth import TokenStore
    api = MlflowApi(RunstreamConfig(), None, TokenStore(tmp_path / "t.yaml"), None)  # type: ignore[arg-type]
    api.MEMORY_RUNS = 3
    for i in range(3):
        api._memory("p", f"r{i}").used -= 3600  # idle for an hour
    api.runs[("p", "r1")].pending.add("not-yet-stored")
    api._memory("p", "r3")  # the fourth run: idle ones without pending batches go
    assert set(api.runs) == {("p", "r1"), ("p", "r3")}


def test_an_mlflow_run_is_in_the_grafana_run_explorer(ml: MlflowStack) -> None:
    """The run explorer's own queries (variables expanded as Grafana and the ClickHouse plugin do) find a run that
    the mlflow client logged: in its run list, its params and tags table, and its metric chart."""
    from runstream.dashboards import build
    from tests.grafana_macros import Context, expand, interpolate
    from tests.test_dashboards import all_targets
    mlflow.set_experiment("explorer")
    with mlflow.start_run(run_name="seen-in-grafana") as run:
        mlflow.log_param("lr", 0.01)
        for step in range(30):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    MlflowClient().get_run(run.info.run_id)  # the read barrier: everything acknowledged is stored
    now = int(time.time())
    ctx = Context(from_s=now - 900, to_s=now + 60, interval_s=5,
                  variables={"project": ["explorer"], "run": [run.info.run_id], "metric": ["loss"]},
                  all_values={"project": ["explorer"], "run": [run.info.run_id], "metric": ["loss"]})
    db = ml.config.clickhouse.database
    dash = build.generate()["run-explorer"]
    runs_var = next(v for v in dash["templating"]["list"] if v["name"] == "run")
    sql = expand(interpolate(runs_var["query"] if isinstance(runs_var["query"], str) else runs_var["definition"], ctx), ctx)
    assert (run.info.run_id,) in ml.query(sql.replace("runstream.", f"{db}."))
    results = {}
    for panel, target in all_targets(dash):
        if "rawSql" in target:
            sql = expand(interpolate(target["rawSql"], ctx), ctx).replace("runstream.", f"{db}.")
            results[panel["title"]] = ml.query(sql)
    assert any("seen-in-grafana" in map(str, row) for row in results["Runs"]), results["Runs"]
    assert any("lr" in map(str, row) for row in results["Params and tags, side by side"])
    assert len(results["${metric} by step"]) == 30


def test_scopes_run_identity_and_bad_input_as_the_admin_api_has_them(ml: MlflowStack, token: str) -> None:
    """Experiments change with the admin scope only; a run id held by two projects never selects the other one;
    bad input is MLflow's 400/413, never 500; artifacts stay inside their run's own folder."""
    import requests

    import runstream
    from runstream.sdk.transport import GrpcTransport

    config = ml.config
    api = f"{ml.url}/api/2.0/mlflow"

    def call(path: str, secret: str, **kwargs: object) -> requests.Response:
        return requests.post(f"{api}/{path}", headers={"Authorization": f"Bearer {secret}"}, timeout=30, **kwargs)
    jobs = ensure_file_token(config.tokens_path, config.data_path / "jobs.token", "jobs", ["ingest", "read"])
    team_a = ensure_file_token(config.tokens_path, config.data_path / "a.token", "team-a", ["ingest", "read"])
    narrow_token(config, "team-a", ["proj-a"])
    wait_until(lambda: call("experiments/create", jobs, json={"name": "by-jobs"}).status_code == 403, 10,
               "an ingest-only token to be known and refused")
    assert call("experiments/create", token, json={"name": "proj-b"}).status_code == 200  # the dev token: admin
    assert call("experiments/create", token, json={"name": "proj-a"}).status_code == 200
    for path in ("experiments/delete", "experiments/restore"):
        r = call(path, jobs, json={"experiment_id": "proj-b"})
        assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED", path
    assert call("experiments/create", token, json={"name": 123}).status_code == 400

    # One run id in two projects, both started through the SDK.
    run_id = "shared" + os.urandom(4).hex()
    for project in ("proj-a", "proj-b"):
        run = runstream.init(project, run_id=run_id, transport=GrpcTransport(
            f"127.0.0.1:{ml.roles.stages['ingest'][0].port}", token), spool_dir=str(config.data_path / "spool"))
        run.log({"x": 1.0 if project == "proj-a" else 2.0}, step=0)
        assert run.finish(timeout=30)
    wait_until(lambda: len(ml.query("SELECT DISTINCT project FROM {db}.run_starts WHERE run_id = {r:String}",
                                    r=run_id)) == 2, 60, "both runs stored")
    got = requests.get(f"{api}/runs/get", params={"run_id": run_id}, headers={"Authorization": f"Bearer {team_a}"},
                       timeout=30)
    assert got.status_code == 200 and got.json()["run"]["info"]["experiment_id"] == "proj-a"
    r = call("runs/log-metric", token, json={"run_id": run_id, "key": "y", "value": 1, "timestamp": 1, "step": 1})
    assert r.status_code == 400 and "several experiments" in r.json()["message"]  # never picked silently
    assert call("runs/log-metric", team_a, json={"run_id": run_id, "key": "y", "value": 1, "timestamp": 1,
                                                 "step": 1}).status_code == 200
    wait_until(lambda: ml.query("SELECT project FROM {db}.metrics WHERE run_id = {r:String} AND metric = 'y'", r=run_id)
               == [("proj-a",)], 60, "the write stored in team a's project")

    # Bad input: MLflow's codes, never 500.
    deep = b"[" * 100_000 + b"]" * 100_000
    for body, status in ((deep, 400), (b"{" + b'"a":' * 0 + b'"run_id": "x"' + b"}", 404)):
        assert call("runs/log-batch", token, data=body).status_code == status
    own = call("runs/create", token, json={"experiment_id": "proj-b"}).json()["run"]["info"]["run_id"]
    for payload in ({"run_id": own, "metrics": "foo"}, {"run_id": own, "metrics": [{"key": "k", "value": 1, "timestamp": 1,
                                                                                    "step": 2**80}]},
                    {"run_id": 31, "key": "k", "value": 1, "timestamp": 1}):
        r = call("runs/log-batch" if "metrics" in payload else "runs/log-metric", token, json=payload)
        assert r.status_code == 400 and r.json()["error_code"] == "INVALID_PARAMETER_VALUE", (payload, r.text)
    r = call("runs/log-batch", token, data=b'{"run_id": "' + own.encode() + b'", "tags": []' + b" " * (40 << 20) + b"}")
    assert r.status_code == 413 and r.json()["error_code"] == "BAD_REQUEST"

    # A link in one run's artifact folder reaches nothing of another's.
    root = config.mlflow_artifact_path
    other = root / "proj-b" / own / "artifacts"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("run b's file")
    mine = call("runs/create", token, json={"experiment_id": "proj-b"}).json()["run"]["info"]["run_id"]
    (root / "proj-b" / mine / "artifacts").mkdir(parents=True)
    (root / "proj-b" / mine / "artifacts" / "link").symlink_to(other)
    url = f"{ml.url}/api/2.0/mlflow-artifacts/artifacts/proj-b/{mine}/artifacts/link/secret.txt"
    r = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 400 and "run b" not in r.text
    r = requests.put(url, data=b"overwritten", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 400 and (other / "secret.txt").read_text() == "run b's file"
