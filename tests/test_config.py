"""Config: file, env overrides, and validation that reports every problem with its section."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstream.ops.stack import RoleProcess, child_env
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import ConfigError

DATA = Path(__file__).with_name("testdata")


def test_file_then_env() -> None:
    c = RunstreamConfig.load(DATA / "config.yaml", env={"RUNSTREAM_KAFKA_PARTITIONS": "3", "RUNSTREAM_DATA_DIR": "/x"})
    assert c.kafka.bootstrap == "127.0.0.1:9092"
    assert c.kafka.partitions == 3  # env wins over the file
    assert c.ingest.max_batch_points == 5000
    assert c.ingest.listen == "0.0.0.0:6000"
    assert c.clickhouse.url == "http://ch:8123"
    assert c.sink.group_id == "runstream-sink"  # untouched default
    assert str(c.data_path) == "/x"


def test_every_problem_is_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        RunstreamConfig.load(DATA / "bad.yaml", env={})
    msg = str(exc.value)
    assert "kafka.partitions" in msg and "ingest.listen" in msg and "clickhouse.database" in msg
    assert "ingest.busy_loop_lag_ms: must be 0 (off) or more" in msg and "ingest.busy_requests_per_s: must be 0" in msg
    assert "sink.memory_purge_interval_s: must be 0 (never) or more" in msg
    assert "sink.gather_s: must be 0 (insert each poll) or more" in msg
    assert "sink.sql_thread_nice: -25 is not a Linux nice value" in msg
    assert "processors.commit_interval_s: 0 must be more than 0 seconds" in msg


def test_unknown_key_and_bad_type(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("kafka:\n  partitons: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'partitons'"):
        RunstreamConfig.load(tmp_path / "c.yaml", env={})
    with pytest.raises(ConfigError, match="RUNSTREAM_KAFKA_PARTITIONS"):
        RunstreamConfig.load(None, env={"RUNSTREAM_KAFKA_PARTITIONS": "many"})


def test_tls_settings_must_come_together() -> None:
    with pytest.raises(ConfigError, match="ingest.tls_cert / ingest.tls_key"):
        RunstreamConfig.load(None, env={"RUNSTREAM_INGEST_TLS_CERT": "/x.pem"})
    with pytest.raises(ConfigError, match="ingest.tls_client_ca"):
        RunstreamConfig.load(None, env={"RUNSTREAM_INGEST_TLS_CLIENT_CA": "/ca.pem"})


def _non_default(config: RunstreamConfig) -> RunstreamConfig:
    """Every field of every section changed from its default, to values that still validate."""
    valid = {"data_dir": "/tmp/rs-roundtrip", "metrics_host": "127.0.0.2", "ingest.listen": "127.0.0.1:6001",
             "sink.sql_listen": "127.0.0.1:6002", "mlflow.listen": "127.0.0.1:6003",
             "clickhouse.url": "http://ch.example:8123", "clickhouse.database": "rt_db", "clickhouse.cluster": "rt_cluster",
             "processors.log_level": "INFO", "client.url": "ingest.example:443",
             "kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "SCRAM-SHA-512", "sink.sql_adhoc_nice": 12}
    for section in [None, *(f.name for f in dataclasses.fields(config) if dataclasses.is_dataclass(getattr(config, f.name)))]:
        target = getattr(config, section) if section else config
        for f in dataclasses.fields(target):
            key = f"{section}.{f.name}" if section else f.name
            value = getattr(target, f.name)
            if dataclasses.is_dataclass(value):
                continue
            if key in valid:
                new = valid[key]
            elif isinstance(value, bool):
                new = not value
            elif isinstance(value, int):
                new = value + 7
            elif isinstance(value, float):
                new = value + 0.25
            else:
                new = f"/tmp/rt/{key}.pem" if "tls" in key else f"{key}-x"
            setattr(target, f.name, new)
    return config


def test_every_field_reaches_a_child_role_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's hand-off: the child loads exactly the resolved tree, whatever RUNSTREAM_* the parent has."""
    config = _non_default(RunstreamConfig())
    config.data_dir = str(tmp_path / "data")
    config.validate()
    default = RunstreamConfig().dump()
    flat = lambda d, p="": {k2: v2 for k, v in d.items()
                            for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else {f"{p}{k}": v}.items())}
    unchanged = [k for k, v in flat(config.dump()).items() if flat(default)[k] == v]
    assert not unchanged, f"the round trip would not notice these fields: {unchanged}"
    monkeypatch.setenv("RUNSTREAM_INGEST_METRICS_PORT", "1")  # the parent's env must not leak past the file
    proc = RoleProcess("ingest", config, tmp_path / "logs")
    config.write(proc.config_path)
    assert proc.config_path.stat().st_mode & 0o777 == 0o600
    res = subprocess.run(proc.command("config", "show", "--format", "json"), env=child_env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == config.dump()


def test_a_removed_key_says_why_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "runstream.yaml"
    path.write_text("processors:\n  guarantee: exactly_once\n")
    with pytest.raises(ConfigError, match=r"processors\.guarantee removed: faust uses Kafka transactions only .* Delete the key"):
        RunstreamConfig.load(path, env={})
    with pytest.raises(ConfigError, match=r"RUNSTREAM_PROCESSORS_GUARANTEE \(processors\.guarantee\) removed"):
        RunstreamConfig.load(None, env={"RUNSTREAM_PROCESSORS_GUARANTEE": "exactly_once"})


def test_unknown_env_var_names_the_nearest_valid_one() -> None:
    with pytest.raises(ConfigError, match="RUNSTREAM_KAFKA_BOOTSTRAPP; did you mean RUNSTREAM_KAFKA_BOOTSTRAP"):
        RunstreamConfig.load(None, env={"RUNSTREAM_KAFKA_BOOTSTRAPP": "x:1"})
    with pytest.raises(ConfigError, match="RUNSTREAM_PROCESSORS_LOGLEVEL; did you mean RUNSTREAM_PROCESSORS_LOG_LEVEL"):
        RunstreamConfig.load(None, env={"RUNSTREAM_PROCESSORS_LOGLEVEL": "INFO"})
    # The SDK's short names and the test fixtures' own variables are fine.
    c = RunstreamConfig.load(None, env={"RUNSTREAM_URL": "h:1", "RUNSTREAM_TOKEN": "rs_x", "RUNSTREAM_TLS_CA": "/ca.pem",
                                        "RUNSTREAM_METRICS_HOST": "127.0.0.2", "RUNSTREAM_TEST_KAFKA": "k:9"})
    assert (c.client.url, c.client.token, c.client.tls_ca, c.metrics_host) == ("h:1", "rs_x", "/ca.pem", "127.0.0.2")


def test_metrics_beyond_loopback_need_tls_and_client_certificates() -> None:
    with pytest.raises(ConfigError, match="metrics_host: 0.0.0.0 is beyond loopback without TLS and client certificates"):
        RunstreamConfig.load(None, env={"RUNSTREAM_METRICS_HOST": "0.0.0.0", "RUNSTREAM_METRICS_TLS_CERT": "/c.pem",
                                        "RUNSTREAM_METRICS_TLS_KEY": "/c.key"})
    c = RunstreamConfig.load(None, env={"RUNSTREAM_METRICS_HOST": "0.0.0.0", "RUNSTREAM_METRICS_TLS_CERT": "/c.pem",
                                        "RUNSTREAM_METRICS_TLS_KEY": "/c.key", "RUNSTREAM_METRICS_TLS_CLIENT_CA": "/ca.pem"})
    assert c.metrics_tls_client_ca == "/ca.pem"


def test_ingest_beyond_loopback_needs_tls() -> None:
    with pytest.raises(ConfigError, match="ingest.listen: 0.0.0.0:50051 is beyond loopback without TLS"):
        RunstreamConfig.load(None, env={"RUNSTREAM_INGEST_LISTEN": "0.0.0.0:50051"})
    c = RunstreamConfig.load(None, env={"RUNSTREAM_INGEST_LISTEN": "[::1]:50051"})
    assert c.ingest.listen == "[::1]:50051"


@pytest.mark.parametrize(("key", "value", "want"), [
    ("RUNSTREAM_SINK_SQL_SHARE_IDENTICAL", "ture", "is not a boolean"),
    ("RUNSTREAM_SINK_SQL_SHARE_IDENTICAL", "2", "is not a boolean"),
    ("RUNSTREAM_KAFKA_PARTITIONS", "2.5", "is not an integer"),
    ("RUNSTREAM_KAFKA_PARTITIONS", "", "is not an integer"),
    ("RUNSTREAM_SINK_MEMORY_PURGE_INTERVAL_S", "soon", "is not a number"),
])
def test_a_value_that_is_not_exactly_its_type_is_refused(key: str, value: str, want: str) -> None:
    with pytest.raises(ConfigError, match=f"{key}: '{value}' {want}"):
        RunstreamConfig.load(None, env={key: value})


def test_typed_values_from_the_file_are_not_guessed(tmp_path: Path) -> None:
    for text, want in (("kafka:\n  partitions: 2.5\n", "partitions: 2.5 is not an integer"),
                       ("kafka:\n  partitions: true\n", "partitions: True is not an integer"),
                       ("sink:\n  sql_share_identical: maybe\n", "is not a boolean"),
                       ("clickhouse:\n  url: [1, 2]\n", "url: [1, 2] is not text")):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match=want.replace("[", r"\[").replace("]", r"\]")):
            RunstreamConfig.load(tmp_path / "c.yaml", env={})
    (tmp_path / "c.yaml").write_text("kafka:\n  partitions: 6\nsink:\n  sql_share_identical: off\n  memory_purge_interval_s: 3\n")
    c = RunstreamConfig.load(tmp_path / "c.yaml", env={"RUNSTREAM_INGEST_MAX_BATCH_POINTS": " 7 "})
    assert (c.kafka.partitions, c.sink.sql_share_identical, c.sink.memory_purge_interval_s) == (6, False, 3.0)
    assert c.ingest.max_batch_points == 7 and isinstance(c.sink.memory_purge_interval_s, float)


@given(st.text(max_size=8))
@settings(max_examples=300, deadline=None)
def test_a_boolean_is_one_of_its_spellings_or_refused(text: str) -> None:
    spellings = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False,
                 "": False}
    try:
        got = RunstreamConfig.load(None, env={"RUNSTREAM_SINK_SQL_SHARE_IDENTICAL": text}).sink.sql_share_identical
    except ConfigError:
        assert text.strip().lower() not in spellings
    else:
        assert got is spellings[text.strip().lower()]


def test_flags_are_checked_like_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="clickhouse.url: 'ftp://x' must start with http"):
        RunstreamConfig.load(None, env={}, flags={"clickhouse.url": "ftp://x"})
    c = RunstreamConfig.load(None, env={"RUNSTREAM_KAFKA_BOOTSTRAP": "a:1"}, flags={"kafka.bootstrap": "b:2", "data_dir": None})
    assert c.kafka.bootstrap == "b:2"
    res = subprocess.run([sys.executable, "-m", "runstream", "sql", "SELECT 1", "--clickhouse-url", "ftp://x"],
                         capture_output=True, text=True, timeout=60, env={**child_env(), "RUNSTREAM_DATA_DIR": str(tmp_path)})
    assert res.returncode != 0 and "clickhouse.url: 'ftp://x' must start with http" in res.stderr, res.stderr
