"""The package's shape, as installed: everything under the one `runstream` name; import layers and no cycles
(import-linter contracts in pyproject.toml, run on the built wheel); imports at module top except for optional
dependencies; registries that agree with what uses them; and the slim SDK install in a fresh venv logging a run
to a running stack with none of the server's dependencies present.

Leaves out: the [server] extra installed from the wheel (the suite itself runs on it, editable)."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from runstream.cli.main import ROLE_HELP, build_parser
from runstream.ops.roles import ROLES
from runstream.storage import tables
from runstream.storage.store import migrate, open_embedded
from runstream.wire import topics, views
from runstream.wire.config import KafkaConfig, RunstreamConfig
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["runstream", "ingest", "mlflow_api", "processors", "storage", "dashboards"]
INSTALLED_AS = {"mlflow_api": "mlflow"}  # a root folder named mlflow would shadow the mlflow client
# Imports inside functions, each for a reason: an optional dependency, or the CLI's lazy dispatch.
NESTED_IMPORTS_ALLOWED = {
    ("runstream/cli/demo.py", "sklearn.datasets"), ("runstream/cli/demo.py", "sklearn.linear_model"),
    ("runstream/cli/demo.py", "sklearn.metrics"), ("runstream/cli/demo.py", "sklearn.model_selection"),
    ("runstream/cli/main.py", "runstream.cli"),  # client commands, or the server extra's commands when installed
    # The read API's [read] extra, imported when used: `import runstream` works on the slim install.
    ("runstream/read/api.py", "clickhouse_connect"), ("runstream/read/api.py", "pandas"),
    ("runstream/read/api.py", "numpy"), ("runstream/read/api.py", "pyarrow"),
    ("runstream/sdk/system.py", "pynvml"),  # GPU metrics where NVML is installed
    # The importers' readers ([importers] extra), imported by the import that needs them.
    ("runstream/integrations/importers.py", "mlflow.entities"), ("runstream/integrations/importers.py", "mlflow.tracking"),
    ("runstream/integrations/importers.py", "tensorboard.backend.event_processing"),
    ("runstream/integrations/importers.py", "tensorboard.util"),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out),
                          str(ROOT)], check=True, capture_output=True, text=True)
    # A quiet build: setuptools warns (in the verbose log) of any folder missing from the packages list.
    warnings = [line for line in (res.stdout + res.stderr).splitlines() if "Warning" in line or "is absent from" in line]
    assert warnings == [], warnings[:5]
    (whl,) = out.glob("runstream-*.whl")
    return whl


def test_wheel_installs_only_the_runstream_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"runstream", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    for sub in ("ingest/server.py", "mlflow/api.py", "processors/app.py", "storage/sink.py", "storage/migrations/0001_init.sql",
                "dashboards/json/fleet-overview.json", "ops/broker/pom.xml", "v1/ingest_pb2.py"):
        assert f"runstream/{sub}" in names, sub
    # Every package directory in the source is in the wheel (a new folder not listed in pyproject is caught).
    for src in SOURCES:
        for init in (ROOT / src).rglob("__init__.py"):
            rel = init.relative_to(ROOT)
            inside = rel.relative_to(src).as_posix()
            installed = f"runstream/{INSTALLED_AS.get(src, src)}/{inside}" if src != "runstream" else rel.as_posix()
            assert installed in names, f"{rel} is not packaged: add it to [tool.setuptools] packages"


def test_import_contracts_hold_on_the_installed_layout(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    res = subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout or "broken" not in res.stdout


SERVER_MODULES = ["runstream.wire.config", "runstream.storage.sink", "runstream.storage.sqlserver",
                  "runstream.processors.app", "runstream.ingest.server", "runstream.mlflow.api",
                  "runstream.ops.supervisor"]
CLIENT_PREFIXES = ("runstream.sdk", "runstream.read", "psutil")


@pytest.mark.parametrize("module", SERVER_MODULES)
def test_importing_a_server_module_loads_no_client_module(module: str) -> None:
    """What a role's process holds, measured: a fresh interpreter imports the module, then lists sys.modules."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert module in loaded  # the listing is real
    client = [m for m in loaded if m.startswith(CLIENT_PREFIXES)]
    assert client == [], f"importing {module} loads {client}"


def test_imports_are_at_module_top_except_optional_ones() -> None:
    nested = set()
    for src in SOURCES:
        for path in (ROOT / src).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("runstream/v1/"):
                continue  # generated
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for node in ast.walk(fn):
                        if isinstance(node, ast.Import):
                            nested |= {(rel, a.name) for a in node.names}
                        elif isinstance(node, ast.ImportFrom):
                            nested.add((rel, node.module or ""))
            for node in ast.walk(tree):  # no top-level names outside the namespace (`import storage` etc.)
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    for m in mods:
                        assert m.split(".")[0] not in {"ingest", "mlflow_api", "processors", "storage", "dashboards"}, (rel, m)
    assert nested <= NESTED_IMPORTS_ALLOWED, sorted(nested - NESTED_IMPORTS_ALLOWED)


# The stored views readers read, and a statement over one of them (an f-string's values read as {}).
READ_VIEWS = ("runs", "run_starts", "metrics", "metric_points", "latest", "metric_latest", "params", "tags", "artifacts",
              "datasets_used", "batches", "alerts", "fleet", "audit_log")
VIEW_STATEMENT = re.compile(r"\b(?:FROM|JOIN)\s+(?:`?[\w{}]+`?\.)?(?:" + "|".join(READ_VIEWS) + r")\b")
# Where such a statement may be written: the one module, the Grafana panels (their own macros, shipped as JSON), and
# the sink's start-up read of the audit heads it continues.
STATEMENTS_ALLOWED = {"runstream/wire/views.py", "dashboards/build.py", "storage/governance.py"}


def _string_texts(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append(node.value)
    return out


def test_sql_over_the_stored_views_is_written_in_one_module() -> None:
    # The detector sees the statements the module builds, and the SQL the code held before the module existed.
    assert VIEW_STATEMENT.search(views.artifacts("runstream", "r").sql)
    assert VIEW_STATEMENT.search(views.history("", [("r", None)], "loss", None, 100).sql)
    assert _string_texts(ast.parse('f"SELECT uri FROM {db}.artifacts WHERE run_id = %(r)s"'))[0] == \
        "SELECT uri FROM {}.artifacts WHERE run_id = %(r)s"
    found = []
    for src in SOURCES:
        for path in (ROOT / src).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel in STATEMENTS_ALLOWED or rel.startswith("runstream/v1/"):
                continue
            found += [(rel, t[:80]) for t in _string_texts(ast.parse(path.read_text())) if VIEW_STATEMENT.search(t)]
    assert found == [], f"SQL over the stored views outside runstream.wire.views: {found}"


def test_registries_agree_with_their_users() -> None:
    # Topics: every configurable topic name has a registry entry, and names are distinct.
    topic_fields = {f.name[: -len("_topic")] for f in dataclasses.fields(KafkaConfig) if f.name.endswith("_topic")}
    assert topic_fields == {t.kind for t in topics.TOPICS}
    c = RunstreamConfig()
    assert len(topics.topics(c)) == len(topics.TOPICS)
    assert topics.topics(c)[c.kafka.control_topic] == 1 and topics.topics(c)[c.kafka.events_topic] == c.kafka.partitions
    # Roles: the CLI offers exactly the registry's roles with the same help.
    assert ROLE_HELP == {name: r.help for name, r in ROLES.items()}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(ROLES) <= set(sub.choices)  # type: ignore[arg-type]


def test_up_runs_what_the_role_registry_lists_each_child_on_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    from runstream.ops.roles import Role
    from runstream.ops.supervisor import Supervisor
    c = RunstreamConfig()
    c.mlflow.listen = ""
    assert [(r.name, n) for r, n in Supervisor(c, ingest_replicas=3).roles] == [("sink", 1), ("ingest", 3), ("process", 1)]
    c.mlflow.listen = "127.0.0.1:5000"
    monkeypatch.setitem(ROLES, "extra", Role("extra", "a role added to the registry", "x:y", "ingest.metrics_port"))
    assert [r.name for r, _ in Supervisor(c).roles] == ["sink", "ingest", "process", "mlflow", "extra"]
    # Replica i: its own config, the metrics port moved by i; the shared config is untouched.
    base = c.ingest.metrics_port
    own = ROLES["ingest"].replica(c, 2)
    own.kafka.bootstrap = "elsewhere:1"
    assert own.ingest.metrics_port == base + 2 and c.ingest.metrics_port == base and c.kafka.bootstrap != "elsewhere:1"
    assert ROLES["sink"].ready_url(c) == f"http://{c.sink.sql_listen}/ping"
    c.clickhouse.url = "http://ch:8123"
    assert ROLES["sink"].ready_url(c) == f"http://127.0.0.1:{c.sink.metrics_port}/metrics"


def test_table_registry_matches_the_migrated_schema(chdb_path: Path) -> None:
    client = open_embedded(chdb_path)
    db = "t_registry"
    migrate(client, db)
    cols: dict[str, set[str]] = {}
    for table, column in client.query("SELECT c.table, c.name FROM system.columns AS c INNER JOIN system.tables AS t "
                                      "ON t.database = c.database AND t.name = c.table WHERE c.database = %(d)s "
                                      "AND t.engine NOT IN ('View', 'MaterializedView')", parameters={"d": db}).result_rows:
        cols.setdefault(table, set()).add(column)
    assert set(cols) - {"schema_migrations"} == {t.name for t in tables.TABLES}
    for t in tables.TABLES:
        scope = "run" if {"project", "run_id"} <= cols[t.name] else "project" if "project" in cols[t.name] else "global"
        assert t.scope == scope, t.name
        assert set(t.columns) <= cols[t.name], t.name
    client.command(f"DROP DATABASE {db}")


@pytest.mark.slow
def test_slim_sdk_install_logs_to_a_running_stack(wheel: Path, stack: Stack, token: str, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    res = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth")) and p.name != "__pycache__"}
    assert "runstream" in ours and not ours & {"ingest", "mlflow_api", "storage", "processors", "dashboards"}, ours
    script = f"""
import importlib.util, runstream
import runstream.wire.errors as runstream_errors
for mod in ("faust", "chdb", "aiokafka", "clickhouse_connect", "pyarrow"):
    assert importlib.util.find_spec(mod) is None, mod
run = runstream.init(project="slim", url={stack.ingest_addr!r}, token={token!r})
for step in range(100):
    run.log({{"loss": 1.0 / (step + 1)}}, step=step)
assert run.finish(timeout=60)
try:
    runstream.Api(url="http://127.0.0.1:9")
    raise SystemExit("the read API worked without its extra")
except runstream_errors.RunstreamError as exc:
    assert "pip install 'runstream[read]'" in str(exc), exc
print(run.id, run.stats.acked_points)
"""
    res = subprocess.run([str(py), "-c", script], cwd=tmp_path, env={"RUNSTREAM_DATA_DIR": str(tmp_path / "home"),
                         "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    run_id, acked = res.stdout.split()
    assert int(acked) == 100
    assert stack.wait_points(100, where=f"run_id = '{run_id}'") == 100
    # The CLI is there too: client commands work, server commands say which extra they need.
    cli = env_dir / "bin" / "runstream"
    res = subprocess.run([str(cli), "sql", "SELECT 1"], env={"RUNSTREAM_DATA_DIR": str(tmp_path / "home")},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "pip install 'runstream[server]'" in res.stderr, res.stderr
    res = subprocess.run([str(cli), "sync", "--spool-dir", str(tmp_path / "nothing")], capture_output=True, text=True,
                         env={"RUNSTREAM_DATA_DIR": str(tmp_path / "home")}, timeout=60)
    assert res.returncode == 0 and "Sent 0 batches" in res.stdout, res.stderr
