"""Typed configuration: one tree, defaults in code, a YAML file, then RUNSTREAM_* env vars.

Env vars name a section and a key: ``RUNSTREAM_KAFKA_BOOTSTRAP=host:9092``,
``RUNSTREAM_CLICKHOUSE_URL=http://ch:8123``; ``RUNSTREAM_DATA_DIR`` sets the
top-level data directory. ``validate()`` reports every problem at once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from runstream.errors import ConfigError

EVENTS_TOPIC = "runstream.events"
ROLLUPS_TOPIC = "runstream.rollups"
ALERTS_TOPIC = "runstream.alerts"
FLEET_TOPIC = "runstream.fleet"
CONTROL_TOPIC = "runstream.control"
AUDIT_TOPIC = "runstream.audit"


@dataclass
class KafkaConfig:
    bootstrap: str = ""            # empty: the broker that `runstream up` starts
    events_topic: str = EVENTS_TOPIC
    rollups_topic: str = ROLLUPS_TOPIC
    alerts_topic: str = ALERTS_TOPIC
    fleet_topic: str = FLEET_TOPIC
    control_topic: str = CONTROL_TOPIC  # governance events; one partition
    audit_topic: str = AUDIT_TOPIC      # audit records, keyed by project
    partitions: int = 8            # per-run order holds because records are keyed by run id
    max_record_bytes: int = 8 * 1024 * 1024


@dataclass
class IngestConfig:
    listen: str = "127.0.0.1:50051"
    metrics_port: int = 9101       # Prometheus /metrics; 0 disables
    tokens_file: str = ""          # empty: <data_dir>/tokens.yaml
    max_batch_points: int = 100_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_name_length: int = 250
    max_inflight_batches: int = 4_000  # beyond this, RESOURCE_EXHAUSTED instead of buffering
    publish_timeout_s: float = 15.0
    tls_cert: str = ""             # PEM certificate chain for the ingest port; empty: plaintext
    tls_key: str = ""              # PEM private key for tls_cert
    tls_client_ca: str = ""        # PEM CA bundle: when set, clients must present a certificate it signed


@dataclass
class SinkConfig:
    group_id: str = "runstream-sink"
    max_rows_per_insert: int = 500_000
    flush_interval_s: float = 0.25
    metrics_port: int = 9102
    sql_listen: str = "127.0.0.1:8124"  # ClickHouse HTTP endpoint over the embedded store; "" disables


@dataclass
class ProcessorsConfig:
    app_id: str = "runstream-processors"  # faust app id: consumer group and state topic prefix
    grace_s: float = 10.0          # late points inside this period still update their window
    tick_s: float = 0.5            # wall-clock checks: stalls, windows of quiet runs
    rules_file: str = ""           # anomaly thresholds per project / metric (YAML); empty: defaults
    webhook_url: str = ""          # Slack-compatible webhook for new alerts; empty disables
    metrics_port: int = 9103


@dataclass
class ClickHouseConfig:
    url: str = ""                  # empty: the embedded engine (chDB) at `path`
    path: str = ""                 # empty: <data_dir>/clickhouse
    database: str = "runstream"


@dataclass
class RunstreamConfig:
    data_dir: str = "~/.runstream"
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    processors: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    @property
    def tokens_path(self) -> Path:
        return Path(os.path.expanduser(self.ingest.tokens_file)) if self.ingest.tokens_file else self.data_path / "tokens.yaml"

    @property
    def clickhouse_path(self) -> Path:
        return Path(os.path.expanduser(self.clickhouse.path)) if self.clickhouse.path else self.data_path / "clickhouse"

    def validate(self) -> None:
        """Raise ConfigError listing every problem, each prefixed with its section."""
        problems: list[str] = []
        if self.kafka.partitions < 1:
            problems.append("kafka.partitions: must be at least 1")
        for name, addr in (("ingest.listen", self.ingest.listen), ("sink.sql_listen", self.sink.sql_listen)):
            if addr and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
                problems.append(f"{name}: {addr!r} is not host:port (e.g. 127.0.0.1:50051)")
        if bool(self.ingest.tls_cert) != bool(self.ingest.tls_key):
            problems.append("ingest.tls_cert / ingest.tls_key: set both (PEM files) or neither")
        if self.ingest.tls_client_ca and not self.ingest.tls_cert:
            problems.append("ingest.tls_client_ca: client certificates need TLS; set ingest.tls_cert and ingest.tls_key")
        if self.ingest.max_batch_points < 1:
            problems.append("ingest.max_batch_points: must be at least 1")
        if self.clickhouse.url and not self.clickhouse.url.startswith(("http://", "https://")):
            problems.append(f"clickhouse.url: {self.clickhouse.url!r} must start with http:// or https://")
        if not self.clickhouse.database.isidentifier():
            problems.append(f"clickhouse.database: {self.clickhouse.database!r} is not a plain identifier")
        if problems:
            raise ConfigError("CONFIG ERROR: " + "; ".join(problems))

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> "RunstreamConfig":
        """Defaults, then the YAML file (if any), then RUNSTREAM_* env vars; validated."""
        env = os.environ if env is None else env
        config = cls()
        path = path or env.get("RUNSTREAM_CONFIG")
        if path:
            try:
                raw = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"CONFIG ERROR: cannot read {path}: {exc}") from exc
            _apply(config, raw, str(path))
        for key, value in env.items():
            if key.startswith("RUNSTREAM_") and key not in ("RUNSTREAM_CONFIG",):
                _apply_env(config, key[len("RUNSTREAM_"):].lower(), value)
        config.validate()
        return config


def _coerce(current: Any, value: Any, where: str) -> Any:
    try:
        if isinstance(current, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"CONFIG ERROR: {where}: {value!r} is not a {type(current).__name__}") from exc


def _apply(obj: Any, raw: Mapping[str, Any], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"CONFIG ERROR: {where}: expected a mapping")
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"CONFIG ERROR: {where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{where}: {key}")
        else:
            setattr(obj, key, _coerce(current, value, f"{key}"))


def _apply_env(config: RunstreamConfig, name: str, value: str) -> None:
    if name == "data_dir":
        config.data_dir = value
        return
    section, _, key = name.partition("_")
    target = getattr(config, section, None)
    if dataclasses.is_dataclass(target) and key in {f.name for f in dataclasses.fields(target)}:
        setattr(target, key, _coerce(getattr(target, key), value, f"RUNSTREAM_{name.upper()}"))
