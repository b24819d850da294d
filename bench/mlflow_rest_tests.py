"""MLflow's own REST tests against runstream: `tests/tracking/test_rest_tracking.py` (``--suite tracking``) or
`tests/tracking/test_model_registry.py` (``--suite registry``) from a checkout of the MLflow repository, its test
bodies unchanged, with only its server fixture (``mlflow_client``, or the registry tests' ``client``) replaced by one
that starts a runstream stack (a real Kafka broker, the sink, ingest and the mlflow role, a fresh database and topics
per test) and points ``MlflowClient`` at the mlflow role.

    python bench/mlflow_rest_tests.py --mlflow-src /path/to/mlflow [--out bench/results/mlflow-rest-tests.json]
    python bench/mlflow_rest_tests.py --suite registry --mlflow-src /path/to/mlflow \
        [--out bench/results/mlflow-registry-tests.json]

Nothing of MLflow's is kept here: the test file and the helpers it imports are copied from the checkout into a
temporary folder for the run. Prints progress per test, then one JSON document: passed/failed/skipped per area
(experiments, runs, logging, search, history, artifacts, inputs, logged models, GraphQL, and the areas runstream does
not serve: traces, model registry, AI gateway, secrets, ...), each failure's first line, and the versions used.

Leaves out: the tests' `file` store parameter (MLflow skips it itself); tests that start an MLflow server of their
own in their body (listed in the JSON: they measure MLflow); anything outside those two files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the test module imports from MLflow's own tests folder.
HELPERS = ("tests/__init__.py", "tests/helper_functions.py", "tests/integration/__init__.py",
           "tests/integration/utils.py", "tests/tracking/__init__.py", "tests/tracking/integration_test_utils.py")
TEST_FILE = "tests/tracking/test_rest_tracking.py"
REGISTRY_FILE = "tests/tracking/test_model_registry.py"

# Areas, by the test's name (first match wins). The last group is what runstream does not serve.
AREAS: list[tuple[str, str]] = [
    ("graphql", r"graphql"),
    ("logged models", r"logged_model|log_outputs|log_model\b|test_log_model$|test_log_metric_model|inputs_model"),
    ("model registry", r"model_version|registered_model|logging_model_with_local"),
    ("traces (not served)", r"trace|span|otel|assessment"),
    ("AI gateway and secrets (not served)", r"gateway|endpoint|secret|provider|model_definition|bindings|list_models"),
    ("GenAI datasets, scorers, issues, prompts (not served)",
     r"evaluation_dataset|dataset_to_experiments|dataset_from_experiments|experiments_at_once|idempotent_|"
     r"client_api_add_remove|dataset_experiment_association|scorer|online_scoring|issue|promptlab"),
    ("history", r"metric_history"),
    ("inputs and datasets", r"log_input|search_dataset"),
    ("artifacts", r"artifact"),
    ("search", r"search"),
    ("experiments", r"experiment"),
    ("runs", r"run|terminated"),
    ("logging: metrics, params, tags, batches", r"log_|tag|param|metric|batch|path_validation"),
]

# Tests that cannot pass against runstream whatever it does, and why (reported beside the counts).
BY_DESIGN = {
    "test_artifacts": "expects the server's artifact root to be a local folder under the test's tmp_path (MLflow's "
                      "file store); runstream keeps runs' files behind its artifact proxy",
    "test_create_model_version_with_file_uri": "expects runs' artifact URIs to be local file:// folders",
    "test_create_model_version_with_path_source": "expects runs' artifact URIs to be local file:// folders",
    "test_create_model_version_with_validation_regex": "starts an MLflow server of its own from a fixture",
    "test_get_metric_history_bulk_interval_respects_max_results":
        "MLflow versions disagree: these tests (3.11) expect every value at a sampled step; the pinned 3.17.2's "
        "store samples at most max(max_results, sampled steps) values per run (mlflow/store/tracking/"
        "abstract_store.py), which runstream follows and tests/test_mlflow.py compares with",
}

FIXTURE = '''

# ---- runstream: the server fixture, replaced (bench/mlflow_rest_tests.py) ----
@pytest.fixture
def mlflow_client(runstream_mlflow_url):
    """An MLflow Tracking API client pointed at a runstream stack's mlflow role."""
    return MlflowClient(runstream_mlflow_url)


@pytest.fixture
def mlflow_client_with_secrets(runstream_mlflow_url):
    return MlflowClient(runstream_mlflow_url)
'''

REGISTRY_AREAS: list[tuple[str, str]] = [
    ("aliases", r"alias"),
    ("model versions", r"model_version|latest_models"),
    ("registered models", r"registered_model"),
]

REGISTRY_FIXTURE = '''

# ---- runstream: the server fixture, replaced (bench/mlflow_rest_tests.py) ----
@pytest.fixture(params=["file", "sqlalchemy"])
def client(request):
    """An MLflow client pointed at a runstream stack's mlflow role (the "file" case is skipped, as MLflow does)."""
    if request.param == "file":
        pytest.skip("FileStore is no longer supported.")
    return MlflowClient(request.getfixturevalue("runstream_mlflow_url"))
'''

SUITES = {"tracking": (TEST_FILE, FIXTURE, AREAS), "registry": (REGISTRY_FILE, REGISTRY_FIXTURE, REGISTRY_AREAS)}

CONFTEST = '''"""runstream's stack for MLflow's REST tests: one Kafka broker per session; per test a fresh database, topics and
roles (the sink, ingest and the mlflow role), as MLflow's fixture gives each test a fresh store."""

import os
import uuid

import mlflow
import pytest
import requests

from runstream.ops.broker import SHORT_LIVED_JVM, KafkaBroker
from runstream.ops.stack import InProcessRoles, isolated_config
from runstream.server.auth import ensure_admin_token, ensure_dev_token, ensure_file_token
from runstream.wire import topics


@pytest.fixture(scope="session")
def runstream_kafka(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), jvm_options=SHORT_LIVED_JVM)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def runstream_chdb(tmp_path_factory):
    return tmp_path_factory.mktemp("clickhouse")


@pytest.fixture(scope="session")
def runstream_mlflow_listen():
    # One address for every test's mlflow role: the client keeps its connection pools by host and port, and a new
    # port per test fills its pool manager until a request waits for a pool to free.
    return isolated_config("/nonexistent").mlflow.listen


@pytest.fixture
def runstream_mlflow_url(runstream_kafka, runstream_chdb, runstream_mlflow_listen, tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:10]
    c = runstream_kafka.client_config(isolated_config(tmp_path / "runstream"))
    c.mlflow.listen = runstream_mlflow_listen
    for topic in topics.TOPICS:
        setattr(c.kafka, f"{topic.kind}_topic", f"{topic.kind}-{tag}")
    c.kafka.partitions = 2
    c.sink.group_id = f"sink-{tag}"
    c.clickhouse.path = str(runstream_chdb)
    c.clickhouse.database = f"t_{tag}"
    token = ensure_dev_token(c.tokens_path)
    ensure_admin_token(c.tokens_path, c.admin_token_path)
    ensure_file_token(c.tokens_path, c.mlflow_token_path, "mlflow", ["read"])
    roles = InProcessRoles(c, ["sink", "ingest", "mlflow"]).start()
    base = f"http://127.0.0.1:{roles.stages['mlflow'][0].port}"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    # The tests' own raw HTTP calls (requests) carry the token too: MLflow's test server has no auth, runstream's
    # every surface has. Only requests to this stack get it.
    send = requests.Session.request

    def with_token(self, method, url, *args, **kwargs):
        if str(url).startswith(base):
            kwargs["headers"] = {"Authorization": f"Bearer {token}", **(kwargs.get("headers") or {})}
        return send(self, method, url, *args, **kwargs)
    monkeypatch.setattr(requests.Session, "request", with_token)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a 5xx fails at once instead of after minutes of backoff
    try:
        yield base
    finally:
        roles.stop()


@pytest.fixture(autouse=True)
def reset_mlflow_state():
    """What MLflow's own root conftest resets between tests: the active experiment, the tracking URI, leaked runs."""
    yield
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
'''


def own_servers(source: str) -> list[str]:
    """Tests that start an MLflow server of their own in their body: they measure MLflow, not runstream."""
    import ast

    out = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
            if calls & {"ServerThread", "_init_server"}:
                out.append(node.name)
    return out


def area_of(name: str, areas: list[tuple[str, str]]) -> str:
    base = name.split("[")[0]
    for area, pattern in areas:
        if re.search(pattern, base):
            return area
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mlflow-src", required=True, type=Path, help="a checkout of the MLflow repository (its tests/)")
    p.add_argument("--suite", choices=sorted(SUITES), default="tracking", help="which of MLflow's test files")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("-k", default="", help="only the tests pytest's -k selects")
    p.add_argument("--timeout", type=int, default=120, help="seconds per test")
    args = p.parse_args()
    test_file, fixture, area_patterns = SUITES[args.suite]
    missing = [f for f in (test_file, *HELPERS) if not (args.mlflow_src / f).is_file()]
    if missing:
        print(f"{args.mlflow_src} is not an MLflow checkout with its tests: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mlflow-rest-"))
    try:
        for rel in (test_file, *HELPERS):
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(args.mlflow_src / rel, work / rel)
        test = work / test_file
        excluded = own_servers(test.read_text())
        test.write_text(test.read_text() + fixture)  # a later definition of the fixture wins in the module
        (work / "conftest.py").write_text(CONFTEST)
        report = work / "report.xml"
        cmd = [sys.executable, "-m", "pytest", test_file, "-p", "no:cacheprovider", "-q", "-rN",
               f"--timeout={args.timeout}", f"--junitxml={report}", "-o", "junit_family=xunit2"]
        if args.k:
            cmd += ["-k", args.k]
        for name in excluded:
            cmd += ["--deselect", f"{test_file}::{name}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNSTREAM_", "MLFLOW_"))}
        env["PYTHONPATH"] = str(work)
        print(f"Running MLflow's {test_file} against runstream in {work} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=sys.stderr, stderr=subprocess.STDOUT)
        elapsed = time.monotonic() - t0
        if not report.exists():
            print(f"pytest wrote no report (exit {proc.returncode}): the module did not load; see above", file=sys.stderr)
            return 1
        areas: dict[str, dict[str, int]] = {}
        failures: dict[str, str] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome = "failed"
                    failures[name] = (child.get("message") or "").splitlines()[0][:300] if child.get("message") else ""
                elif child.tag == "skipped":
                    outcome = "skipped"
            counts = areas.setdefault(area_of(name, area_patterns), {"passed": 0, "failed": 0, "skipped": 0})
            counts[outcome] += 1
        import mlflow

        out = {
            "command": f"python bench/mlflow_rest_tests.py --suite {args.suite} --mlflow-src <MLflow checkout>",
            "test_file": test_file,
            "mlflow_tests_version": re.search(r'VERSION = "([^"]+)"',
                                              (args.mlflow_src / "mlflow/version.py").read_text()).group(1)
            if (args.mlflow_src / "mlflow/version.py").exists() else "unknown",
            "mlflow_client_version": mlflow.__version__,
            "seconds": round(elapsed),
            "areas": dict(sorted(areas.items())),
            "total": {k: sum(a[k] for a in areas.values()) for k in ("passed", "failed", "skipped")},
            "areas_served": {k: sum(a[k] for n, a in areas.items() if "(not served)" not in n)
                             for k in ("passed", "failed", "skipped")},
            "excluded_start_their_own_mlflow_server": excluded,
            "failing_by_design": {n: BY_DESIGN[n] for n in sorted(failures) if n in BY_DESIGN},
            "failures": dict(sorted(failures.items())),
        }
        text = json.dumps(out, indent=1)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
