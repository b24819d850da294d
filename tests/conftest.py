"""Fixtures that start the real dependencies.

Kafka: one real KRaft broker from the cached jars for the session (or the one
named by RUNSTREAM_TEST_KAFKA). ClickHouse: the real engine in process (chDB),
one path for the session since an engine path belongs to one process; each
test gets its own database, topic and consumer group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from runstream.ops.broker import SHORT_LIVED_JVM, KafkaBroker
from runstream.ops.stack import InProcessRoles, isolated_config
from runstream.server.auth import ensure_admin_token, ensure_dev_token, ensure_file_token
from runstream.storage.store import open_embedded
from runstream.wire import topics
from runstream.wire.config import RunstreamConfig

# Runs made by tests count their points exactly: system metrics (sys/...) only where a test asks for them.
os.environ.setdefault("RUNSTREAM_CLIENT_SYSTEM_INTERVAL_S", "0")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker | str]:
    """The session's broker, secured as `runstream up` makes it (SASL, ACLs); RUNSTREAM_TEST_KAFKA names a
    plaintext one instead."""
    if os.environ.get("RUNSTREAM_TEST_KAFKA"):
        yield os.environ["RUNSTREAM_TEST_KAFKA"]
        return
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), jvm_options=SHORT_LIVED_JVM)
    broker.start()  # raises with the broker's log tail if it does not come up
    yield broker
    broker.stop()


def kafka_env(kafka: KafkaBroker | str) -> dict[str, str]:
    """RUNSTREAM_KAFKA_* for a child `runstream` pointed at the test broker, signed in as its admin."""
    c = use_kafka(RunstreamConfig(), kafka).kafka
    env = {"RUNSTREAM_KAFKA_BOOTSTRAP": c.bootstrap, "RUNSTREAM_KAFKA_SECURITY_PROTOCOL": c.security_protocol}
    if c.username:
        env.update(RUNSTREAM_KAFKA_USERNAME=c.username, RUNSTREAM_KAFKA_PASSWORD_FILE=c.password_file,
                   RUNSTREAM_KAFKA_CREDENTIALS_DIR=c.credentials_dir)
    return env


def use_kafka(config: RunstreamConfig, kafka: KafkaBroker | str) -> RunstreamConfig:
    if isinstance(kafka, str):
        config.kafka.bootstrap = kafka
        return config
    return kafka.client_config(config)


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clickhouse")


def make_config(tmp_path: Path, kafka: KafkaBroker | str, chdb_path: Path) -> RunstreamConfig:
    tag = uuid.uuid4().hex[:10]
    c = use_kafka(isolated_config(tmp_path / "data"), kafka)
    for topic in topics.TOPICS:
        setattr(c.kafka, f"{topic.kind}_topic", f"{topic.kind}-{tag}")
    c.processors.app_id = f"proc-{tag}"
    c.processors.metrics_port = 0
    c.kafka.partitions = 4
    c.ingest.listen = "127.0.0.1:0"
    c.ingest.metrics_port = 0
    c.sink.metrics_port = 0
    c.sink.group_id = f"sink-{tag}"
    c.clickhouse.path = str(chdb_path)
    c.clickhouse.database = f"t_{tag}"
    return c


@pytest.fixture
def config(tmp_path: Path, kafka: KafkaBroker | str, chdb_path: Path) -> RunstreamConfig:
    return make_config(tmp_path, kafka, chdb_path)


@pytest.fixture
def token(config: RunstreamConfig) -> str:
    """The dev token (ingest, read, admin on every project); the bootstrap admin token is made beside it, as `runstream up` does."""
    dev = ensure_dev_token(config.tokens_path)
    ensure_admin_token(config.tokens_path, config.admin_token_path)
    return dev


class Stack:
    """Ingest + sink in this process, with helpers to reach them."""

    def __init__(self, config: RunstreamConfig, roles: InProcessRoles) -> None:
        self.config = config
        self.roles = roles

    @property
    def ingest_addr(self) -> str:
        return f"127.0.0.1:{self.roles.stages['ingest'][0].port}"

    @property
    def sink(self):
        return self.roles.stages["sink"][0]

    def query(self, sql: str, **params):
        return self.sink.client.query(sql.replace("{db}", self.config.clickhouse.database), parameters=params).result_rows

    def count_points(self, where: str = "1") -> int:
        return self.query(f"SELECT count() FROM {{db}}.metrics WHERE {where}")[0][0]

    def wait_points(self, n: int, timeout: float = 60.0, where: str = "1") -> int:
        import time
        deadline = time.monotonic() + timeout
        got = -1
        while time.monotonic() < deadline:
            got = self.count_points(where)
            if got >= n:
                return got
            time.sleep(0.2)
        return got


_housekeeping: dict[Path, Client] = {}


def drop_database(config: RunstreamConfig) -> None:
    """Drop a stopped in-process stack's database: the engine's background work over every table of every test's
    database costs about a tenth of a core per worker by the end of a session."""
    if config.clickhouse.url:
        return  # a server's databases are the server's business
    path = config.clickhouse_path
    if path not in _housekeeping:
        _housekeeping[path] = open_embedded(path)  # this process opened the engine at this path already (its sink)
    _housekeeping[path].command(f"DROP DATABASE IF EXISTS {config.clickhouse.database} SYNC")


@pytest.fixture
def stack(config: RunstreamConfig, token: str) -> Iterator[Stack]:
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    try:
        yield Stack(config, roles)
    finally:
        roles.stop()
        drop_database(config)


class BackgroundClient:
    """A well-behaved SDK client that logs in a thread until stopped: the 'concurrent good client' of
    the tests that abuse ingest. ``acked`` is what ingest acknowledged for it."""

    def __init__(self, addr: str, token: str, project: str, spool_dir: Path) -> None:
        import threading

        import runstream
        from runstream.sdk.transport import GrpcTransport
        self.run = runstream.init(project, transport=GrpcTransport(addr, token), spool_dir=str(spool_dir))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._log, daemon=True)

    def _log(self) -> None:
        step = 0
        while not self._stop.is_set():
            self.run.log({"v": float(step)}, step=step)
            step += 1
            if step % 100 == 0:
                self._stop.wait(0.01)
        self.run.finish(timeout=60)

    def __enter__(self) -> BackgroundClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    @property
    def acked(self) -> int:
        return self.run.stats.acked_points


MLFLOW_SERVER = Path(__file__).resolve().parent.parent / ".venv-mlflow" / "bin" / "mlflow"


class MlflowStack(Stack):
    """The sink, ingest and the mlflow role in this process; the mlflow client pointed at it with the dev token."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.roles.stages['mlflow'][0].port}"


@pytest.fixture
def ml(config: RunstreamConfig, token: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowStack]:
    mlflow = pytest.importorskip("mlflow")
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
        drop_database(config)


# Seconds each module took in a full run on the 2-core machine, longest first. scripts/test passes
# --no-loadscope-reorder, so xdist hands modules out in collection order: the longest start first and the two workers
# end together instead of one finishing a long module alone. A module not listed counts 0.5 s per test.
MODULE_SECONDS = {"test_processors_live": 140, "test_cluster": 85, "test_mlflow": 68, "test_spine": 51,
                  "test_sql_endpoint": 47, "test_cli": 46, "test_governance": 38, "test_mlflow_ui": 37, "test_sdk": 28,
                  "test_architecture": 18, "test_mlflow_registry": 17, "test_uploads": 15, "test_examples": 14,
                  "test_integrations": 13, "test_importers": 13, "test_tls": 12, "test_sdk_properties": 12,
                  "test_session": 36, "test_audit": 10, "test_poison": 30, "test_run_index": 8, "test_sink_fetch": 7,
                  "test_resume": 7}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules longest first (MODULE_SECONDS), each module's tests in their own order."""
    def module(item: pytest.Item) -> str:
        return Path(item.nodeid.split("::", 1)[0]).stem
    counts: dict[str, int] = {}
    for item in items:
        counts[module(item)] = counts.get(module(item), 0) + 1
    items.sort(key=lambda item: -MODULE_SECONDS.get(module(item), 0.5 * counts[module(item)]))


SHARED = "RUNSTREAM_TEST_SHARED_DIR"
GO_CLIENT_DIR = Path(__file__).resolve().parent / "clients" / "go"


def pytest_configure(config: pytest.Config) -> None:
    """The controller (or a run without workers) names a folder for what the session's workers share: the one MLflow
    reference server (seconds of CPU to start) and the clickhouse-go client (half a minute to fetch and build)."""
    if not hasattr(config, "workerinput") and SHARED not in os.environ:
        os.environ[SHARED] = tempfile.mkdtemp(prefix="runstream-tests-")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts, in the background, the slow preparations the selected tests need, so they overlap other tests: every
    worker collects every test and the first to get here starts each (start_once), the fixtures wait for them."""
    needed = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if needed & {"mlflow_reference", "mlflow_server"} and MLFLOW_SERVER.exists():
        _start_mlflow()
    if "go_client" in needed:
        build_go_client()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller stops what the workers started in the background once every worker is done with it."""
    if hasattr(config, "workerinput") or SHARED not in os.environ:
        return
    shared = Path(os.environ.pop(SHARED))
    for pid_file in shared.glob("*/pid"):
        stop_group(int(pid_file.read_text()))
    shutil.rmtree(shared, ignore_errors=True)


def stop_group(pid: int) -> None:
    """SIGTERM to the process group ``pid`` leads (a detached process: never this process's child), SIGKILL after
    30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # ProcessLookupError once every process of the group is gone
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)


def shared_dir(name: str) -> Path:
    home = Path(os.environ[SHARED]) / name
    home.mkdir(exist_ok=True)
    return home


def start_once(name: str, cmd: list[str], *, cwd: Path | None = None) -> Path:
    """Starts ``cmd`` (in ``cwd``, else in its folder) once per test session, detached (a process group of its own,
    which the controller stops at the end): the first caller starts it, later callers find it. Returns its folder in
    the shared one, where it leaves ``log``, ``pid`` and, when it exits, ``rc``."""
    home = shared_dir(name)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "pid").exists():
            script = '"$@" > "$HOME_DIR/log" 2>&1; echo $? > "$HOME_DIR/rc.part" && mv "$HOME_DIR/rc.part" "$HOME_DIR/rc"'
            started = subprocess.run(["sh", "-c", f'setsid sh -c \'{script}\' sh "$@" < /dev/null > /dev/null 2>&1 & echo $!',
                                      "sh", *cmd], cwd=cwd or home, env={**os.environ, "HOME_DIR": str(home)},
                                     capture_output=True, text=True, check=True, timeout=30)
            (home / "pid").write_text(started.stdout.strip())
    return home


def build_go_client() -> Path:
    """The clickhouse-go client (tests/clients/go), building in the background: the folder wait_done waits on; the
    binary is ``chclient`` in it."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    return start_once("go-client", [go, "build", "-o", str(shared_dir("go-client") / "chclient"), "."], cwd=GO_CLIENT_DIR)


def wait_done(home: Path, timeout: float, what: str) -> None:
    """Waits for a start_once command to exit; fails with its log unless it exited 0."""
    deadline = time.monotonic() + timeout
    while not (home / "rc").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not finish within {timeout:.0f} s:\n{(home / 'log').read_text()[-3000:]}")
        time.sleep(0.2)  # the poll interval of a wait for the rc file the command writes when it exits
    if (home / "rc").read_text().strip() != "0":
        raise AssertionError(f"{what} failed:\n{(home / 'log').read_text()[-3000:]}")


def _start_mlflow() -> Path:
    """The session's MLflow reference server (SQLite store, artifact proxy), starting."""
    from runstream.ops.broker import free_port
    home = shared_dir("mlflow")
    with open(home / "port.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / "port").exists():
            (home / "port").write_text(str(free_port()))
    port = (home / "port").read_text()
    # Without MLflow's job runner: it starts eight more Python processes (about 20 s of CPU) the tests never use.
    server = [str(MLFLOW_SERVER), "server", "--host", "127.0.0.1", "--port", port, "--workers", "1",
              "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination", str(home / "mlflow-artifacts")]
    return start_once("mlflow", ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", *server])


@pytest.fixture(scope="session")
def mlflow_reference() -> tuple[str, Path]:
    """A real MLflow tracking server (SQLite store, artifact proxy), from the venv scripts/setup makes: its URL and
    its SQLite file. One for the whole session, shared by the workers (tests use experiments of their own), started
    when the tests were collected; the controller stops it at the end."""
    from runstream.ops.stack import wait_http
    if not MLFLOW_SERVER.exists():
        pytest.skip("no MLflow server: scripts/setup installs one into .venv-mlflow")
    home = _start_mlflow()
    url = f"http://127.0.0.1:{(home / 'port').read_text()}"
    try:
        wait_http(f"{url}/health", 120)
    except RuntimeError:
        raise AssertionError((home / "log").read_text()[-3000:]) from None
    return url, home / "mlflow.db"


@pytest.fixture
def mlflow_server(mlflow_reference: tuple[str, Path]) -> str:
    return mlflow_reference[0]
