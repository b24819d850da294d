"""Config: file, env overrides, and validation that reports every problem with its section."""

from pathlib import Path

import pytest

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
