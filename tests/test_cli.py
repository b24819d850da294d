"""The CLI as a user runs it: `runstream up` as a real process tree (Kafka, ingest, sink), an SDK client
that finds it through stack.json, `runstream runs` / `runstream sql` reading through the SQL endpoint,
read-only enforcement, a clean SIGTERM shutdown, and `runstream demo` end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from runstream.ops.broker import KafkaBroker, free_port
from runstream.wire import topics
from tests.conftest import kafka_env
from tests.helpers import wait_until


def env_for(tmp_path: Path, kafka: KafkaBroker | str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RUNSTREAM_DATA_DIR": str(tmp_path / "home"),
        "RUNSTREAM_INGEST_LISTEN": f"127.0.0.1:{free_port()}",
        "RUNSTREAM_INGEST_METRICS_PORT": str(free_port()),
        "RUNSTREAM_SINK_METRICS_PORT": str(free_port()),
        "RUNSTREAM_SINK_SQL_LISTEN": f"127.0.0.1:{free_port()}",
        "RUNSTREAM_PROCESSORS_METRICS_PORT": str(free_port()),
        "RUNSTREAM_MLFLOW_LISTEN": f"127.0.0.1:{free_port()}",
        "RUNSTREAM_MLFLOW_METRICS_PORT": str(free_port()),
    })
    tag = tmp_path.name[-12:].replace("_", "-")
    for topic in topics.TOPICS:
        env[f"RUNSTREAM_KAFKA_{topic.kind.upper()}_TOPIC"] = f"{topic.kind}-{tag}"
    env["RUNSTREAM_PROCESSORS_APP_ID"] = f"proc-{tag}"
    for k in ("RUNSTREAM_URL", "RUNSTREAM_TOKEN", "RUNSTREAM_CLICKHOUSE_URL"):
        env.pop(k, None)
    if kafka:
        env.update(kafka_env(kafka))
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runstream", *args], env=env, capture_output=True, text=True, timeout=timeout)


CLIENT = """
import runstream
run = runstream.init(project="vision", name="resnet-lr3e-4", config={"lr": 3e-4, "bs": 256}, tags=["baseline"])
for step in range(5000):
    run.log({"loss": 1.0 / (step + 1), "acc": step / 5000}, step=step)
open("model.bin", "wb").write(b"weights" * 1000)
run.log_artifact("model.bin")
assert run.finish(timeout=60)
print(run.id, run.stats.acked_points)
"""


MLFLOW_CLIENT = """
import mlflow
mlflow.set_experiment("from-mlflow")
with mlflow.start_run(run_name="mlflow-run") as run:
    mlflow.log_param("lr", 0.1)
    for step in range(100):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
print(run.info.run_id)
"""


@pytest.mark.slow
def test_up_client_runs_sql_and_clean_shutdown(tmp_path: Path, kafka: KafkaBroker | str) -> None:
    env = env_for(tmp_path, kafka)
    up = subprocess.Popen([sys.executable, "-m", "runstream", "up"], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    stack_file = tmp_path / "home" / "stack.json"
    try:
        wait_until(lambda: stack_file.exists() or up.poll() is not None, 90, "stack.json (or `up` to exit)")
        assert stack_file.exists(), up.stdout.read() if up.poll() is not None else "stack.json never appeared"
        # Its one sink is a static group member (sink.instance_id from the data dir): back at once after a crash.
        import yaml
        sink_config = yaml.safe_load((tmp_path / "home" / "run" / "sink.yaml").read_text())
        assert re.fullmatch(r"sink-[0-9a-f]{12}", sink_config["sink"]["instance_id"]), sink_config["sink"]
        client = subprocess.run([sys.executable, "-c", CLIENT], env={**env, "RUNSTREAM_ARTIFACT_DIR": str(tmp_path / "art")},
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr
        run_id, acked = client.stdout.split()
        assert int(acked) == 10_000

        def stored_and_finished() -> list[dict] | None:
            res = cli(env, "runs", "--format", "json")
            assert res.returncode == 0, res.stderr
            rows = [json.loads(line) for line in res.stdout.splitlines()]
            return rows if rows and rows[0]["points_stored"] == 10_000 and rows[0]["status"] == "finished" else None
        rows: list[dict] = wait_until(stored_and_finished, 60, "the run stored and finished")  # type: ignore[assignment]
        assert rows[0]["run_id"] == run_id and rows[0]["points_acked"] == rows[0]["points_stored"] == 10_000
        assert "loss=0.0002" in rows[0]["latest"]

        res = cli(env, "sql", f"SELECT metric, max(step), argMax(value, step) FROM metrics WHERE run_id = '{run_id}' "
                              "GROUP BY metric ORDER BY metric", "--format", "csv")
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["metric,max(step),\"argMax(value, step)\"", "acc,4999,0.9998", "loss,4999,0.0002"]

        # The CLI's edges: whole ids at 80 columns, valid JSON for NaN, quiet when piped into head, a typo'd run id.
        narrow = cli({**env, "COLUMNS": "80"}, "runs")
        assert run_id in narrow.stdout, narrow.stdout
        res = cli(env, "sql", "SELECT nan AS x, inf AS y", "--format", "json")
        assert json.loads(res.stdout) == {"x": "NaN", "y": "Infinity"}
        piped = subprocess.run(f"{sys.executable} -m runstream sql 'SELECT number FROM numbers(200000)' --format csv | head -1",
                               shell=True, env=env, capture_output=True, text=True, timeout=120)
        assert piped.stdout.strip() == "number" and "Traceback" not in piped.stderr, piped.stderr
        typo = cli(env, "run", "delete", "no-such-run", "--project", "vision")
        assert typo.returncode == 2 and "no run 'no-such-run'" in typo.stderr

        # A run's artifacts: listed, and fetched from the artifact dir with their sha256 checked.
        listed = wait_until(lambda: (r := cli(env, "artifacts", "list", run_id, "--format", "json")).stdout and r, 30,
                            "the artifact row")
        art = json.loads(listed.stdout.splitlines()[0])  # type: ignore[union-attr]
        assert art["uri"] == "model.bin" and art["size"] == 7000 and len(art["sha256"]) == 64
        fetched = cli(env, "artifacts", "fetch", run_id, "--to", str(tmp_path / "got"))
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "got" / "model.bin").read_bytes() == b"weights" * 1000

        res = cli(env, "sql", "DROP TABLE metric_points")
        assert res.returncode == 2 and "readonly" in res.stderr.lower()
        res = cli(env, "sql", "SELECT count() FROM metric_points", "--format", "csv")
        assert res.stdout.splitlines()[1] == "10000"

        # An MLflow client pointed at the stack's MLflow API: its run is in `runstream runs` like any other.
        info = json.loads(stack_file.read_text())
        ml = subprocess.run([sys.executable, "-c", MLFLOW_CLIENT], capture_output=True, text=True, timeout=120,
                            env={**env, "MLFLOW_TRACKING_URI": info["mlflow"], "MLFLOW_TRACKING_TOKEN": info["token"]})
        assert ml.returncode == 0, ml.stderr
        ml_run = ml.stdout.split()[-1]
        res = cli(env, "runs", "--project", "from-mlflow", "--format", "json")
        ml_rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert [(r["run_id"], r["status"], r["points_stored"]) for r in ml_rows] == [(ml_run, "finished", 100)], res.stdout

        # Every metric a dashboard's PromQL uses is exported by a running role.
        from tests.test_dashboards import promql_metrics
        info = json.loads(stack_file.read_text())
        exported: set[str] = set()
        for port in [info["metrics"]["sink"], info["metrics"]["process"], *info["metrics"]["ingest"]]:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
                total = name if name.endswith("_total") else name + "_total"
                exported |= {"counter": {total}, "histogram": {name + "_bucket", name + "_sum", name + "_count"}}.get(
                    kind, {name})
        used = promql_metrics()
        assert used and used <= exported, f"dashboards use metrics no role exports: {sorted(used - exported)}"

        # The store belongs to the sink process: a second opener gets the real cause, not BAD_ARGUMENTS.
        probe = subprocess.run([sys.executable, "-c",
                                "from pathlib import Path; from runstream.storage.store import open_embedded\n"
                                f"open_embedded(Path({str(tmp_path / 'home' / 'clickhouse')!r}))"],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "open in another process" in probe.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out
    assert not stack_file.exists()
    # With the stack stopped, `runstream sql` reads the store itself, still read-only (the SDK run's points and the MLflow run's).
    res = cli(env, "sql", "SELECT count() FROM metric_points", "--format", "csv")
    assert res.returncode == 0 and res.stdout.splitlines()[1] == "10100", res.stderr
    assert "no stack running" in res.stderr
    res = cli(env, "sql", "DROP TABLE metric_points")
    assert res.returncode == 2 and "readonly" in res.stderr.lower()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The README's main job, small: starts its own Kafka and stack, runs jobs, prints real results."""
    # A 2 s grace (10 by default) so the fleet windows the demo prints close sooner: the suite's longest test.
    env = {**env_for(tmp_path), "RUNSTREAM_PROCESSORS_GRACE_S": "2"}
    res = cli(env, "demo", "--jobs", "4", "--seconds", "2", "--rate", "50", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "nothing lost, nothing duplicated" in res.stdout
    assert "digits-sgd-real" in res.stdout or "val_acc" in res.stdout


def test_ports_for_the_roles_are_outside_the_range_outgoing_connections_use() -> None:
    # A port the kernel could hand to an outgoing connection (a Kafka client, one of a fleet's channels) may be
    # taken before the role binds it: "Address already in use" at start.
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(40)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), (low, high, ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free when handed out


def test_a_port_left_in_time_wait_by_a_stop_counts_as_free_and_a_listener_does_not() -> None:
    """`runstream up` right after a stop: the roles' servers bind with SO_REUSEADDR, so the check does too."""
    from runstream.ops.supervisor import _port_free
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    addr = f"127.0.0.1:{srv.getsockname()[1]}"
    client = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    assert not _port_free(addr)  # listening
    conn.close()  # the server's side closes first: its end of the connection waits in TIME_WAIT
    client.close()
    srv.close()
    with socket.socket() as plain, pytest.raises(OSError):  # the TIME_WAIT is there: a plain bind is refused
        plain.bind(("127.0.0.1", int(addr.rsplit(":", 1)[1])))
    assert _port_free(addr)


def test_json_output_writes_nonfinite_values_inside_arrays(capsys: pytest.CaptureFixture[str]) -> None:
    from runstream.cli.output import print_result
    print_result(["run", "values", "m"], [["r1", [1.5, float("nan"), float("-inf")], {"k": float("inf")}]], "json")
    assert json.loads(capsys.readouterr().out) == {"run": "r1", "values": [1.5, "NaN", "-Infinity"], "m": {"k": "Infinity"}}


def test_table_output_to_a_pipe_keeps_every_cell_whole(capsys: pytest.CaptureFixture[str]) -> None:
    from runstream.cli.output import print_result
    cols = ["run_id", "name", "status", "acked", "stored", "dropped", "latest", "started", "finished"]
    row = ["3f9c0a1b22de4e01", "resnet-lr3e-4-long-name", "finished", 123_456_789, 123_456_789, 0,
           "loss=0.123456 acc=0.987654 val_loss=0.2345", "2026-12-04 16:50:46", "2026-12-04 17:50:46"]
    print_result(cols, [row], "table")
    out = capsys.readouterr().out
    for cell in row:
        assert str(cell) in out, f"{cell!r} was cut:\n{out}"


def test_cli_flags_reach_the_config_and_not_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runstream.cli.main import build_parser
    from runstream.cli.output import resolve_config
    for var in ("RUNSTREAM_DATA_DIR", "RUNSTREAM_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "runstream.yaml"
    conf.write_text("sink:\n  sql_max_concurrent: 3\n")
    before = dict(os.environ)
    args = build_parser().parse_args(["sql", "SELECT 1", "--config", str(conf), "--data-dir", str(tmp_path / "d")])
    config = resolve_config(args)
    assert config.data_path == tmp_path / "d" and config.sink.sql_max_concurrent == 3
    assert dict(os.environ) == before  # nothing passed on to what runs next in this process


def test_governance_commands_start_without_kafka_clickhouse_or_numpy() -> None:
    """Token and project commands speak gRPC only: the commands that need the Kafka and ClickHouse clients, numpy or
    the stack's supervisor live in modules of their own (runstream.cli.reads, .tools), loaded when one of them runs
    (a governance call took 1.4 s, 0.4 s after)."""
    probe = ("import sys; from runstream.cli import commands, main; "
             "print(','.join(m for m in ('aiokafka', 'clickhouse_connect', 'numpy', 'runstream.ops.supervisor') "
             "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == ""
