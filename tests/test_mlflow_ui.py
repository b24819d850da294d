"""MLflow's own web UI on the mlflow role, in a real browser (Debian's Chromium, driven by Playwright), over runs
logged through the mlflow client and through the runstream SDK; and the UI's GraphQL, next to MLflow's own server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from runstream.mlflow.ui import ui_build_dir
from runstream.server.auth import ensure_file_token
from tests.conftest import MlflowStack
from tests.helpers import narrow_token, wait_until

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

# A real browser and MLflow's own server take ~40 s of a worker: the full suite runs them, the fast tier does not.
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What a browser on this closed network needs (it would otherwise keep calling Google's services).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def needed(what: str, present: bool) -> None:
    """CI installs the browser and the UI (scripts/setup); elsewhere a missing one skips with the reason."""
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; scripts/setup installs it")
        pytest.skip(f"{what} is not installed (scripts/setup installs it)")


@pytest.fixture
def browser() -> Iterator[Any]:
    needed("Chromium", Path(CHROMIUM).exists())
    needed("MLflow's UI (runstream[mlflow-ui])", ui_build_dir() is not None)
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def graphql(url: str, secret: str | None, operation: str, query: str, variables: dict[str, Any]) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return requests.post(f"{url}/graphql", json={"operationName": operation, "query": query, "variables": variables},
                         headers=headers, timeout=30)


# The UI's own run-page query (MLflow 3.17.2's GetRun), as the browser sends it.
GET_RUN = """query GetRun($data: MlflowGetRunInput!) @component(name: "MLflow.ExperimentRunTracking") {
  mlflowGetRun(input: $data) {
    apiError { helpUrl code message __typename }
    run {
      info { runName status runUuid experimentId artifactUri endTime lifecycleStage startTime userId __typename }
      experiment { experimentId name tags { key value __typename } artifactLocation lifecycleStage lastUpdateTime
                   __typename }
      modelVersions { status version name source __typename }
      data { metrics { key value step timestamp __typename } params { key value __typename }
             tags { key value __typename } __typename }
      inputs { datasetInputs { dataset { digest name profile schema source sourceType __typename }
                               tags { key value __typename } __typename } modelInputs { modelId __typename } __typename }
      outputs { modelOutputs { modelId step __typename } __typename }
      __typename
    }
    __typename
  }
}"""


def log_mlflow_run(tmp_path: Path) -> tuple[str, str]:
    """A run as most MLflow scripts log one: an experiment whose name has a space, a param, a tag, a metric's
    history and a file. (run id, experiment id)"""
    mlflow.set_experiment("Vision Models")
    with mlflow.start_run(run_name="resnet-ui") as run:
        mlflow.log_param("lr", 0.01)
        mlflow.set_tag("team", "perception")
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        notes = tmp_path / "notes.txt"
        notes.write_text("trained on shard 7")
        mlflow.log_artifact(str(notes))
    return run.info.run_id, run.info.experiment_id


def test_mlflow_ui_browses_runs_from_mlflow_and_the_sdk(ml: MlflowStack, token: str, browser: Any,
                                                        tmp_path: Path) -> None:
    import runstream
    from runstream.sdk.transport import GrpcTransport

    run_id, exp_id = log_mlflow_run(tmp_path)
    other = mlflow.start_run(run_name="resnet-other")
    mlflow.log_metric("loss", 0.5, step=0)
    mlflow.end_run()
    sdk = runstream.init("sdk-team", name="sdk-run", config={"batch_size": 64}, system_interval_s=0,
                         transport=GrpcTransport(f"127.0.0.1:{ml.roles.stages['ingest'][0].port}", token),
                         spool_dir=str(tmp_path / "spool"))
    for step in range(10):
        sdk.log({"acc": step / 10}, step=step)
    assert sdk.finish(timeout=60)
    client = MlflowClient()

    def sdk_run_stored() -> bool:
        try:
            return client.get_run(sdk.id).data.metrics.get("acc") == 0.9
        except mlflow.exceptions.RestException:  # not stored yet
            return False
    wait_until(sdk_run_stored, 60, "the SDK run's last point")

    shots = tmp_path / "screenshots"
    shots.mkdir()
    ctx = browser.new_context(viewport={"width": 1400, "height": 900},
                              http_credentials={"username": "runstream", "password": token})
    page = ctx.new_page()
    failed: list[str] = []
    page.on("response", lambda r: r.status >= 500 and failed.append(f"{r.status} {r.url}"))

    def visit(fragment: str, shot: str, *texts: str, contains: tuple[str, ...] = ()) -> None:
        """Open a page, wait until each of ``texts`` is an element's whole text (``contains``: part of one)."""
        page.goto(f"{ml.url}/#/{fragment}")
        for text in texts:
            page.get_by_text(text, exact=True).first.wait_for(timeout=30_000)
        for text in contains:
            page.get_by_text(text).first.wait_for(timeout=30_000)
        page.screenshot(path=str(shots / f"{shot}.png"))

    # The experiment list: the MLflow experiment by its name, the SDK's project beside it.
    visit("experiments", "experiments", "Vision Models", "sdk-team")
    # The runs table of the experiment.
    visit(f"experiments/{exp_id}/runs", "runs-table", "resnet-ui", "resnet-other")
    # The run page: its param and tag as a person reads them.
    visit(f"experiments/{exp_id}/runs/{run_id}", "run", "resnet-ui", "0.01", contains=("perception",))
    # The metrics chart: every logged point is in the plotted trace.
    visit(f"experiments/{exp_id}/runs/{run_id}/model-metrics", "run-metrics", "loss")
    page.wait_for_selector(".js-plotly-plot", timeout=30_000)
    traces = page.evaluate("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                           ".flatMap(e => (e.data || []).map(t => ({x: Array.from(t.x), y: Array.from(t.y)})))")
    assert traces and traces[0]["x"] == list(range(20))
    assert traces[0]["y"] == pytest.approx([1.0 / (s + 1) for s in range(20)])
    # The artifacts tab lists the file and previews its bytes.
    visit(f"experiments/{exp_id}/runs/{run_id}/artifacts", "run-artifacts", "notes.txt")
    page.get_by_text("notes.txt", exact=True).first.click()
    page.get_by_text("trained on shard 7").wait_for(timeout=30_000)
    page.screenshot(path=str(shots / "artifact-preview.png"))
    # The compare view of the two runs.
    visit(f"compare-runs?runs=[%22{run_id}%22,%22{other.info.run_id}%22]&experiments=[%22{exp_id}%22]", "compare",
          "resnet-ui", "resnet-other")
    # The SDK's run on its own page: its config is a param.
    visit(f"experiments/sdk-team/runs/{sdk.id}", "sdk-run", "sdk-run", "batch_size", "64")
    # The model registry: a version of the run's files, its alias on the version page.
    client.create_registered_model("Vision Ranker", description="ranks shards")
    client.create_model_version("Vision Ranker", f"runs:/{run_id}/notes.txt", run_id)
    client.set_registered_model_alias("Vision Ranker", "champion", "1")
    visit("models", "models", "Vision Ranker")
    visit("models/Vision%20Ranker/versions/1", "model-version", "resnet-ui", contains=("champion",))
    assert not failed, failed
    ctx.close()


def test_the_ui_needs_a_token_and_reads_only_what_the_token_may(ml: MlflowStack, token: str, tmp_path: Path) -> None:
    needed("MLflow's UI (runstream[mlflow-ui])", ui_build_dir() is not None)
    run_id, _ = log_mlflow_run(tmp_path)
    # A browser without credentials is asked for them; nothing of the UI or the data is served.
    for path in ("/", "/static-files/static/js/" + next(p.name for p in (ui_build_dir() / "static" / "js").iterdir())):
        r = requests.get(f"{ml.url}{path}", timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
    r = graphql(ml.url, None, "GetRun", GET_RUN, {"data": {"runId": run_id}})
    assert r.status_code == 401
    assert graphql(ml.url, "rs_not_a_token", "GetRun", GET_RUN, {"data": {"runId": run_id}}).status_code == 401
    # With a token (basic auth, as a browser sends it): the page, and nothing outside the UI's folder.
    assert "<!doctype html>" in requests.get(f"{ml.url}/", auth=("runstream", token), timeout=30).text.lower()
    for path in ("/static-files/../../handlers.py", "/static-files/%2e%2e/%2e%2e/handlers.py", "/static-files/nope.js"):
        r = requests.get(f"{ml.url}{path}", auth=("runstream", token), timeout=30)
        assert r.status_code == 404 and "import" not in r.text, path
    # A token limited to another project reads nothing of the run: MLflow's apiError, no run.
    other = ensure_file_token(ml.config.tokens_path, ml.config.data_path / "other.token", "other-team", ["read"])
    narrow_token(ml.config, "other-team", ["elsewhere"])

    def refused() -> dict[str, Any] | None:
        r = graphql(ml.url, other, "GetRun", GET_RUN, {"data": {"runId": run_id}})
        got = r.json()["data"]["mlflowGetRun"] if r.status_code == 200 else None
        return got if got and got["apiError"] else None
    got = wait_until(refused, 10, "the narrowed token to be known and refused")
    assert got["run"] is None and got["apiError"]["code"] == "RESOURCE_DOES_NOT_EXIST"
    # A query that is not MLflow's schema is GraphQL's error, not a server error; one past MLflow's bounds on a
    # query's shape (root fields, aliases, depth) is refused before it runs. Both as MLflow answers: 200, no data.
    r = graphql(ml.url, token, "X", "query X { secrets { value } }", {})
    assert r.status_code == 200 and r.json()["data"] is None and "secrets" in r.json()["errors"][0]
    many = "query X { " + " ".join(f"r{i}: mlflowGetRun(input: {{runId: \"{run_id}\"}}) {{ run {{ info {{ status }} }} }}"
                                   for i in range(11)) + " }"
    r = graphql(ml.url, token, "X", many, {})
    assert r.status_code == 200 and r.json() == {
        "data": None, "errors": ["GraphQL queries should have at most 10 root fields, got 11 root fields"]}
    deep = "query X { mlflowGetRun(input: {runId: \"x\"}) { run { " + "info { " * 9 + "status" + " }" * 11 + " }"
    assert graphql(ml.url, token, "X", deep, {}).json()["errors"] == ["Query exceeds maximum depth of 10"]


def _comparable(run: dict[str, Any]) -> dict[str, Any]:
    """A GetRun answer without what differs between two servers logging the same run: ids, times, the experiment's
    id, the tags MLflow's client derives from the script's path, and the order of tags (MLflow's is the order of logging)."""
    info = {k: v for k, v in run["info"].items() if k not in ("runUuid", "experimentId", "artifactUri", "startTime",
                                                              "endTime")}
    tags = sorted((t for t in run["data"]["tags"] if not t["key"].startswith("mlflow.source")), key=lambda t: t["key"])
    metrics = [{k: v for k, v in m.items() if k != "timestamp"} for m in run["data"]["metrics"]]
    exp = {k: v for k, v in run["experiment"].items() if k not in ("experimentId", "artifactLocation",
                                                                  "lastUpdateTime")}
    return {"info": info, "experiment": exp, "data": {**run["data"], "tags": tags, "metrics": metrics},
            "inputs": run["inputs"], "outputs": run["outputs"], "modelVersions": run["modelVersions"]}


def test_graphql_get_run_answers_as_mlflows_own_server(ml: MlflowStack, token: str, mlflow_server: str,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run logged into runstream and into MLflow's own server: the UI's GetRun query gets the same answer
    from both, field for field and type for type, but for ids and times."""
    answers = []
    for url in (ml.url, mlflow_server):
        mlflow.set_tracking_uri(url)
        run_id, _ = log_mlflow_run(tmp_path)
        r = graphql(url, token, "GetRun", GET_RUN, {"data": {"runId": run_id}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["errors"] is None and body["data"]["mlflowGetRun"]["apiError"] is None
        answers.append(body["data"]["mlflowGetRun"])
    ours, theirs = answers
    assert _comparable(ours["run"]) == _comparable(theirs["run"])
    # Long integers are strings in MLflow's schema (LongString), in both.
    assert isinstance(ours["run"]["info"]["startTime"], str) and isinstance(theirs["run"]["info"]["startTime"], str)
    assert ours["run"]["data"]["metrics"][0]["step"] == theirs["run"]["data"]["metrics"][0]["step"] == "19"
