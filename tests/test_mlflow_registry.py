"""MLflow's model registry on runstream, driven by the real `mlflow` client: a model logged by a run is registered,
promoted by alias and stage, loaded back by `models:/` URI, and every change is in the audit trail with its run."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.server.auth import ensure_file_token
from runstream.wire.config import RunstreamConfig
from tests.conftest import MlflowStack
from tests.helpers import narrow_token, wait_until

mlflow = pytest.importorskip("mlflow")
sklearn = pytest.importorskip("sklearn")
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*")  # its notes on signature inference
@pytest.mark.filterwarnings("ignore:.*is deprecated since 2.9.0:FutureWarning")  # stages: deprecated in MLflow, still served
def test_register_promote_and_load_a_model_by_alias(ml: MlflowStack) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    y = np.array([0, 1, 0, 1])
    mlflow.set_experiment("Fraud Models")
    with mlflow.start_run() as run:
        clf = LogisticRegression().fit(X, y)
        info = mlflow.sklearn.log_model(clf, name="model", registered_model_name="fraud detector")
    c = MlflowClient()
    assert str(info.registered_model_version) == "1"
    mv = c.get_model_version("fraud detector", "1")
    assert mv.run_id == run.info.run_id and mv.current_stage == "None" and mv.status == "READY"
    c.set_registered_model_alias("fraud detector", "champion", "1")
    c.transition_model_version_stage("fraud detector", "1", "Production")
    loaded = mlflow.pyfunc.load_model("models:/fraud detector@champion")
    assert list(loaded.predict(X)) == list(clf.predict(X))
    assert list(mlflow.sklearn.load_model("models:/fraud detector/Production").predict(X)) == list(clf.predict(X))
    model = c.get_registered_model("fraud detector")
    assert model.aliases == {"champion": "1"}
    assert [(v.version, v.current_stage) for v in model.latest_versions] == [("1", "Production")]
    # A second version from a registered one: same files, lineage to the same run.
    copy = c.copy_model_version("models:/fraud detector@champion", "fraud detector")
    assert copy.version == "2" and copy.run_id == run.info.run_id
    assert c.get_model_version_download_uri("fraud detector", "2") == c.get_model_version_download_uri("fraud detector", "1")
    assert [v.version for v in c.search_model_versions(f"run_id = '{run.info.run_id}'")] == ["2", "1"]
    # The UI's view of a version's files, and MLflow's answer to a path that climbs.
    import os

    import requests
    auth = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    got = requests.get(f"{ml.url}/model-versions/get-artifact", headers=auth, timeout=10,
                       params={"name": "fraud detector", "version": "2", "path": "MLmodel"})
    assert got.status_code == 200 and "sklearn" in got.text
    bad = requests.get(f"{ml.url}//model-versions/get-artifact", headers=auth, timeout=10,  # '//' as MLflow's tests send
                       params={"name": "fraud detector", "version": "2", "path": "../MLmodel"})
    assert bad.status_code == 400 and bad.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path"}

    # Every change is an audit record in the model's project, naming the run and its project.
    def trail() -> list[tuple[str, str]]:
        return ml.query("SELECT action, after FROM {db}.audit_log WHERE action LIKE 'model_version.%' "
                        "OR action LIKE 'registered_model.%' ORDER BY seq")
    rows = wait_until(lambda: (r := trail()) and any(a == "model_version.transition_stage" for a, _ in r) and r,
                      timeout=30, what="the registry's audit records")
    actions = [a for a, _ in rows]
    assert actions[0] == "registered_model.create" and "registered_model.set_alias" in actions
    created = [json.loads(after) for a, after in rows if a == "model_version.create"]
    assert created[0]["run_id"] == run.info.run_id and created[0]["run_project"] == "Fraud-Models"
    assert created[0]["source"].startswith("models:/m-")


def test_registry_survives_a_restart_of_the_role(ml: MlflowStack) -> None:
    c = MlflowClient()
    c.create_registered_model("ranker", tags={"team": "search"}, description="first")
    c.create_model_version("ranker", "runs:/abc/model", "abc")
    c.create_model_version("ranker", "runs:/abc/model2", "abc")
    c.delete_model_version("ranker", "1")
    c.rename_registered_model("ranker", "ranker v2")
    c.set_registered_model_alias("ranker v2", "prod", "2")
    before = c.get_registered_model("ranker v2")
    ml.roles.stop_role("mlflow")
    ml.roles.start_role("mlflow")
    mlflow.set_tracking_uri(ml.url)
    c = MlflowClient(ml.url)
    after = c.get_registered_model("ranker v2")  # a fresh replica answers from the control topic's history
    assert after == before and after.aliases == {"prod": "2"} and after.tags == {"team": "search"}
    assert [v.version for v in c.search_model_versions("name = 'ranker v2'")] == ["2"]
    # Numbers are never reused, also after the replay.
    assert c.create_model_version("ranker v2", "runs:/abc/model3", "abc").version == "3"
    with pytest.raises(MlflowException, match="Registered Model with name=ranker not found"):
        c.get_registered_model("ranker")


@pytest.mark.filterwarnings("ignore:.*is deprecated since 2.9.0:FutureWarning")
def test_registry_errors_and_access_are_mlflow_shaped(ml: MlflowStack, config: RunstreamConfig, token: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    c = MlflowClient()
    c.create_registered_model("shared")
    with pytest.raises(MlflowException, match=r"Registered Model \(name=shared\) already exists") as e:
        c.create_registered_model("shared")
    assert e.value.error_code == "RESOURCE_ALREADY_EXISTS"
    with pytest.raises(MlflowException, match="Parameter 'version' must be an integer, got 'x'") as e:
        c.get_model_version("shared", "x")
    assert e.value.error_code == "INVALID_PARAMETER_VALUE"
    c.create_model_version("shared", "runs:/r/model", "r")
    with pytest.raises(MlflowException, match="Invalid Model Version stage: Live") as e:
        c.transition_model_version_stage("shared", "1", "Live")
    with pytest.raises(MlflowException, match="Registered model alias nope not found"):
        c.get_model_version_by_alias("shared", "nope")
    with pytest.raises(MlflowException, match="filter"):
        c.search_registered_models("metrics.acc > 1")
    # A token limited to another project neither sees the model nor changes it; one limited to a project makes its
    # models there.
    other = ensure_file_token(config.tokens_path, config.data_path / "team.token", "team", ["ingest", "read"])
    narrow_token(config, "team", ["elsewhere"])
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", other)
    c2 = MlflowClient(ml.url)

    def refused() -> bool:
        try:
            c2.get_registered_model("shared")
        except MlflowException as exc:
            return "Registered Model with name=shared not found" in exc.message
        return False
    wait_until(refused, 10, "the narrowed token to be known and not to see the model")
    assert [m.name for m in c2.search_registered_models()] == []
    c2.create_registered_model("theirs")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    assert {m.name for m in MlflowClient(ml.url).search_registered_models()} == {"shared", "theirs"}


def test_version_tags_descriptions_and_search_order(ml: MlflowStack) -> None:
    c = MlflowClient()
    for name in ("b-model", "a-model"):
        c.create_registered_model(name)
        for i in range(2):
            c.create_model_version(name, f"runs:/r{i}/model", f"r{i}", tags={"i": str(i)})
    c.set_model_version_tag("a-model", "1", "checked", "yes")
    c.delete_model_version_tag("a-model", "1", "i")
    c.update_model_version("a-model", "2", description="better")
    assert c.get_model_version("a-model", "1").tags == {"checked": "yes"}
    assert c.get_model_version("a-model", "2").description == "better"
    assert [(v.name, v.version) for v in c.search_model_versions("tags.checked = 'yes'")] == [("a-model", "1")]
    # Default order: last updated first; by name then the newest version on request.
    assert [(v.name, v.version) for v in c.search_model_versions()][:2] == [("a-model", "2"), ("a-model", "1")]
    assert [(v.name, v.version) for v in c.search_model_versions(order_by=["name DESC"])] == [
        ("b-model", "2"), ("b-model", "1"), ("a-model", "2"), ("a-model", "1")]
    page = c.search_registered_models(max_results=1)
    assert [m.name for m in page] == ["a-model"] and page.token
    assert [m.name for m in c.search_registered_models(max_results=1, page_token=page.token)] == ["b-model"]


@settings(deadline=None)  # the first example imports the registry module
@given(st.lists(st.sampled_from(["models", "..", ".", "%2e%2e", "%252e%252e", "a", "", "%00", "b c"]), max_size=6),
       st.sampled_from(["mlflow-artifacts:/", "mlflow-artifacts://host:9000/", "s3://bucket/", "https://h/", "runs:/r/",
                        "", "file:///", "/"]))
def test_a_version_source_never_climbs_or_points_at_a_local_path(parts: list[str], prefix: str) -> None:
    import urllib.parse

    from runstream.mlflow.protocol import MlflowError
    from runstream.mlflow.registry import checked_source

    source = prefix + "/".join(parts)
    decoded = source
    while (d := urllib.parse.unquote_plus(decoded)) != decoded:
        decoded = d
    local = prefix in ("", "file:///", "/")
    climbs = any(seg in ("..", ".") for seg in decoded.split("/")) or "\x00" in decoded
    try:
        checked_source(source, "run_id")
        accepted = True
    except MlflowError as exc:
        assert exc.code == "INVALID_PARAMETER_VALUE" and source in str(exc)
        accepted = False
    assert accepted == (not local and not climbs), source
