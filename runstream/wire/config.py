"""Typed configuration: one tree, defaults in code, a YAML file, then RUNSTREAM_* env vars.

Env vars name a section and a key: ``RUNSTREAM_KAFKA_BOOTSTRAP=host:9092``,
``RUNSTREAM_CLICKHOUSE_URL=http://ch:8123``; top-level keys drop the section
(``RUNSTREAM_DATA_DIR``). A few client variables keep short names (``ENV_ALIASES``:
``RUNSTREAM_URL``, ``RUNSTREAM_TOKEN``, ``RUNSTREAM_TLS_CA`` ...). An unknown
``RUNSTREAM_*`` variable is an error naming the nearest valid one, as an unknown
YAML key is. ``validate()`` reports every problem at once.

The resolved tree is data: ``dump()`` gives the mapping that ``write()`` stores and
``load()`` reads back, which is how the supervisor hands its config to each role.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runstream.wire.errors import ConfigError
from runstream.wire.files import write_private
from runstream.wire.names import MAX_NAME_LENGTH

EVENTS_TOPIC = "runstream.events"
ROLLUPS_TOPIC = "runstream.rollups"
ALERTS_TOPIC = "runstream.alerts"
FLEET_TOPIC = "runstream.fleet"
CONTROL_TOPIC = "runstream.control"
AUDIT_TOPIC = "runstream.audit"
DEADLETTER_TOPIC = "runstream.deadletter"


@dataclass
class KafkaConfig:
    bootstrap: str = ""            # empty: the broker that `runstream up` starts
    events_topic: str = EVENTS_TOPIC
    rollups_topic: str = ROLLUPS_TOPIC
    alerts_topic: str = ALERTS_TOPIC
    fleet_topic: str = FLEET_TOPIC
    control_topic: str = CONTROL_TOPIC  # governance events; one partition
    audit_topic: str = AUDIT_TOPIC      # audit records, keyed by project
    deadletter_topic: str = DEADLETTER_TOPIC  # records the sink could not store, kept as they came
    partitions: int = 8            # per-run order holds because records are keyed by run id
    max_record_bytes: int = 8 * 1024 * 1024
    jars_dir: str = "~/.cache/runstream"  # where the Apache Kafka jars are fetched to (`runstream up`, tests)
    replication_factor: int = 0    # of every topic runstream and faust create; 0: min(3, brokers in the cluster)
    min_insync_replicas: int = 0   # of runstream's topics; 0: min(2, replication factor)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SASL_PLAINTEXT | SASL_SSL | SSL
    sasl_mechanism: str = "SCRAM-SHA-256"  # SCRAM-SHA-256 | SCRAM-SHA-512 | PLAIN
    username: str = ""             # the principal this process signs in as (SASL)
    password_file: str = ""        # a file holding that principal's password (keep it 0600)
    ssl_ca: str = ""               # PEM CA bundle for SSL / SASL_SSL; empty: the system's
    # The embedded broker's credentials: one <principal>.password per role. When set, each role signs in as
    # its own principal (ingest, process, sink) and the process that creates the topics grants their ACLs.
    credentials_dir: str = ""


@dataclass
class IngestConfig:
    listen: str = "127.0.0.1:50051"
    metrics_port: int = 9101       # Prometheus /metrics; 0 disables
    tokens_file: str = ""          # empty: <data_dir>/tokens.yaml
    max_batch_points: int = 100_000
    max_request_bytes: int = 32 * 1024 * 1024
    max_name_length: int = MAX_NAME_LENGTH
    max_inflight_batches: int = 4_000  # beyond this, RESOURCE_EXHAUSTED instead of buffering
    publish_timeout_s: float = 15.0
    busy_loop_lag_ms: float = 10.0  # past this event-loop lag, acks ask clients to flush less often; 0: never
    busy_requests_per_s: float = 200.0  # ...if Session messages come at least this often (their cost is the load)
    # The shortest interval between an idle client's keepalive pings that ingest accepts (the SDK pings every 60 s).
    # gRPC's default, 5 min, answered an SDK idle for 3 min with GOAWAY "too_many_pings" and an error in its output.
    client_ping_min_s: float = 10.0
    # New calls gRPC's core holds until ingest's loop takes them; past this many it refuses some at random (CANCELLED),
    # all past twice as many. gRPC's default, 1,000, refused sessions when a fleet of 2,000 jobs connected at once.
    max_pending_calls: int = 20_000
    # Requests that come within this long of the last flush to Kafka wait for the next one, which packs them together
    # per partition: a busy ingest sends fewer, larger records; a quiet one still sends each request at once. 0: every
    # turn of the event loop flushes.
    publish_window_ms: float = 20.0
    tls_cert: str = ""             # PEM certificate chain for the ingest port; empty: plaintext
    tls_key: str = ""              # PEM private key for tls_cert
    tls_client_ca: str = ""        # PEM CA bundle: when set, clients must present a certificate it signed


@dataclass
class SinkConfig:
    group_id: str = "runstream-sink"
    # Kafka static membership: a sink restarted with the same id takes its partitions back at once, without waiting
    # for the group to expire the crashed member (~10 s). Unique per sink of a group (a second one fences the first);
    # empty: dynamic membership.
    instance_id: str = ""
    max_rows_per_insert: int = 200_000  # points per poll: more memory, no faster (bench/results/sink-memory.json)
    flush_interval_s: float = 0.25
    # A poll gathers points for up to this long (or until max_rows_per_insert) before one insert: fewer, larger
    # parts cost less CPU per point to insert and to merge (bench/results/sink-gather.json), for up to this much
    # more latency. 0: insert whatever each poll brings.
    gather_s: float = 0.3
    memory_purge_interval_s: float = 2.0  # embedded: hand freed pages (engine, glibc) back to the OS this often; 0: never
    metrics_port: int = 9102
    sql_listen: str = "127.0.0.1:8124"  # ClickHouse HTTP endpoint over the embedded store; "" disables
    audit_key_file: str = ""       # the key that signs audit records; empty: <data_dir>/audit.key (made 0600)
    sql_tls_cert: str = ""         # PEM certificate chain for the SQL endpoint; required beyond loopback
    sql_tls_key: str = ""
    sql_max_concurrent: int = 4    # ad-hoc queries (notebooks, `runstream sql`, BI tools) running at once; more queue
    sql_max_execution_time_s: float = 60.0  # per query; a client may ask for less
    sql_max_memory_bytes: int = 2_000_000_000  # per query (max_memory_usage)
    sql_max_result_rows: int = 10_000_000
    sql_max_result_bytes: int = 1 << 30
    sql_max_threads: int = 2       # engine threads per query, so readers never starve the sink's inserts
    sql_max_request_bytes: int = 16 * 1024 * 1024
    sql_share_identical: bool = True  # identical deterministic reads in flight share one engine run
    sql_thread_nice: int = -10     # Linux nice of the endpoint's and dashboards' query threads (needs CAP_SYS_NICE)
    # Workload classes: queries of these tokens (names, comma-separated) are dashboards': slots of their own and
    # sql_thread_nice, ahead of the sink's inserts; every other token's are ad-hoc, at sql_adhoc_nice, behind them.
    sql_dashboard_tokens: str = "grafana,mlflow"  # the MLflow API and UI read as an interactive viewer does
    sql_dashboard_concurrent: int = 4  # dashboard queries running at once, never waiting behind an ad-hoc one
    # Linux nice of ad-hoc queries' threads: the lowest, so the sink's inserts (nice 0) and dashboards go first and
    # notebooks take what is left (bench/results/readers-mixed.json: at 10 ingest kept 80% of its rate, at 19 92%).
    sql_adhoc_nice: int = 19


@dataclass
class ProcessorsConfig:
    app_id: str = "runstream-processors"  # faust app id: consumer group and state topic prefix
    grace_s: float = 10.0          # late points inside this period still update their window
    tick_s: float = 0.5            # wall-clock checks: stalls, windows of quiet runs
    rules_file: str = ""           # anomaly thresholds per project / metric (YAML); empty: defaults
    webhook_url: str = ""          # Slack-compatible webhook for new alerts; empty disables
    metrics_port: int = 9103
    log_level: str = "WARN"        # faust's own log level
    join_timeout_s: float = 120.0  # a worker not ready this long after starting exits (to be restarted); 0 never
    # A worker whose recovery of its state read nothing from a changelog partition with records left this long exits
    # (to be restarted): faust's recovery can wait forever on such a partition after a rebalance; 0 never.
    recovery_stall_s: float = 60.0
    # A ready worker with events waiting that handles none this long, or whose offset commit (its states' writes
    # first) has not finished this long, exits (to be restarted), logging where each of its tasks waits; 0 never.
    stuck_s: float = 120.0
    # How often the worker commits the events' offsets, writing each run state changed since to its changelog first.
    # Longer: fewer changelog records (3 s cut them by a third with 2,000 jobs, bench/results/processor-commit-interval.json)
    # and a longer replay after a crash.
    commit_interval_s: float = 1.0


@dataclass
class MlflowConfig:
    """The MLflow tracking REST API (`runstream mlflow`): MLflow clients log through it into the pipeline."""
    listen: str = "127.0.0.1:5050"  # "" disables it in `runstream up`
    metrics_port: int = 9104
    tls_cert: str = ""             # PEM certificate chain (HTTPS); required beyond loopback
    tls_key: str = ""
    artifact_dir: str = ""         # artifacts uploaded through the API; empty: <data_dir>/artifacts
    max_artifact_bytes: int = 5 * 1024**3
    upload_part_ttl_h: float = 168.0  # parts of an upload left unfinished this long are removed; 0 keeps them
    sql_url: str = ""              # where it reads: empty: clickhouse.url, else the sink's SQL endpoint
    sql_token_file: str = ""       # a read token for sql_url; empty: <data_dir>/mlflow.token (`runstream up` makes it)
    read_wait_s: float = 10.0      # a read waits this long for the same role's acknowledged writes to be stored


@dataclass
class ClickHouseConfig:
    url: str = ""                  # empty: the embedded engine (chDB) at `path`
    path: str = ""                 # empty: <data_dir>/clickhouse
    database: str = "runstream"
    cluster: str = ""              # a server's cluster name (remote_servers): replicated, sharded schema (storage/cluster.py)
    merge_nice: int = 10           # embedded engine: Linux nice of its merge threads, so merges take what the roles leave


@dataclass
class ClientConfig:
    """How the SDK and `runstream sync` reach ingest (init() arguments win over these)."""
    url: str = ""                  # ingest host:port; empty: the local `runstream up` (stack.json), else 127.0.0.1:50051
    token: str = ""                # empty: the local stack's dev token
    tls_ca: str = ""               # PEM CA that signed ingest's certificate; empty: plaintext
    tls_cert: str = ""             # PEM client certificate, when ingest requires one
    tls_key: str = ""
    spool_dir: str = ""            # empty: <data_dir>/spool
    artifact_dir: str = ""         # log_artifact copies files here (when not uploading); empty: files stay where they are
    artifact_url: str = ""         # log_artifact uploads to this artifact server (the mlflow role); empty: the local stack's
    upload_part_mib: float = 8.0   # files larger than this are uploaded in parts of this size, resumable after a cut
    sql_url: str = ""              # the read API's SQL endpoint (or a ClickHouse server); empty: the local stack's
    system_interval_s: float = 5.0  # system metrics (sys/...) every so many seconds; 0 turns them off


@dataclass
class RunstreamConfig:
    data_dir: str = "~/.runstream"
    metrics_host: str = "127.0.0.1"  # where every role's /metrics binds; beyond loopback it needs the three below
    metrics_tls_cert: str = ""     # PEM certificate for /metrics (HTTPS)
    metrics_tls_key: str = ""      # PEM private key for metrics_tls_cert
    metrics_tls_client_ca: str = ""  # scrapers must present a certificate this CA signed (their authentication)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    processors: ProcessorsConfig = field(default_factory=ProcessorsConfig)
    clickhouse: ClickHouseConfig = field(default_factory=ClickHouseConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    client: ClientConfig = field(default_factory=ClientConfig)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    def _under_data(self, setting: str, default_name: str) -> Path:
        """A path setting, or ``default_name`` in the data dir when it is empty."""
        return Path(os.path.expanduser(setting)) if setting else self.data_path / default_name

    @property
    def tokens_path(self) -> Path:
        return self._under_data(self.ingest.tokens_file, "tokens.yaml")

    @property
    def admin_token_path(self) -> Path:
        """The bootstrap admin token `runstream up` creates (0600); the CLI's governance commands use it."""
        return self.data_path / "admin.token"

    @property
    def audit_key_path(self) -> Path:
        return self._under_data(self.sink.audit_key_file, "audit.key")

    @property
    def stack_file(self) -> Path:
        """Where a running `runstream up` describes itself (addresses, dev token) for the SDK and the CLI."""
        return self.data_path / "stack.json"

    @property
    def mlflow_token_path(self) -> Path:
        return self._under_data(self.mlflow.sql_token_file, "mlflow.token")

    @property
    def dashboard_token_path(self) -> Path:
        """The read token `runstream up` makes for Grafana (named ``grafana``: its queries are dashboards')."""
        return self.data_path / "grafana.token"

    @property
    def mlflow_artifact_path(self) -> Path:
        return self._under_data(self.mlflow.artifact_dir, "artifacts")

    @property
    def spool_path(self) -> Path:
        return self._under_data(self.client.spool_dir, "spool")

    @property
    def clickhouse_path(self) -> Path:
        return self._under_data(self.clickhouse.path, "clickhouse")

    def validate(self) -> None:
        """Raise ConfigError listing every problem, each prefixed with its section."""
        problems: list[str] = []
        if bool(self.client.tls_cert) != bool(self.client.tls_key):
            problems.append("client.tls_cert / client.tls_key: set both (PEM files) or neither")
        k = self.kafka
        if k.security_protocol not in ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"):
            problems.append(f"kafka.security_protocol: {k.security_protocol!r} is not PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL")
        if k.sasl_mechanism not in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            problems.append(f"kafka.sasl_mechanism: {k.sasl_mechanism!r} is not SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN")
        if k.security_protocol.startswith("SASL") and not (k.username and k.password_file):
            problems.append(f"kafka.username / kafka.password_file: {k.security_protocol} needs both")
        if self.ingest.busy_loop_lag_ms < 0:
            problems.append("ingest.busy_loop_lag_ms: must be 0 (off) or more")
        if self.ingest.busy_requests_per_s < 0:
            problems.append("ingest.busy_requests_per_s: must be 0 or more")
        if self.ingest.client_ping_min_s <= 0:
            problems.append("ingest.client_ping_min_s: must be more than 0")
        if self.ingest.max_pending_calls < 1:
            problems.append("ingest.max_pending_calls: must be at least 1")
        if not 0 <= self.ingest.publish_window_ms <= 1000:
            problems.append("ingest.publish_window_ms: must be 0..1000")
        if self.kafka.partitions < 1:
            problems.append("kafka.partitions: must be at least 1")
        for name, addr in (("ingest.listen", self.ingest.listen), ("sink.sql_listen", self.sink.sql_listen),
                           ("mlflow.listen", self.mlflow.listen)):
            if addr and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
                problems.append(f"{name}: {addr!r} is not host:port (e.g. 127.0.0.1:50051)")
        if bool(self.ingest.tls_cert) != bool(self.ingest.tls_key):
            problems.append("ingest.tls_cert / ingest.tls_key: set both (PEM files) or neither")
        if self.ingest.tls_client_ca and not self.ingest.tls_cert:
            problems.append("ingest.tls_client_ca: client certificates need TLS; set ingest.tls_cert and ingest.tls_key")
        ingest_host = self.ingest.listen.rsplit(":", 1)[0] if ":" in self.ingest.listen else ""
        if ingest_host and not is_loopback(ingest_host) and not self.ingest.tls_cert:
            problems.append(f"ingest.listen: {self.ingest.listen} is beyond loopback without TLS; set ingest.tls_cert and "
                            "ingest.tls_key (`runstream tls init DIR --host NAME` makes them), or listen on 127.0.0.1")
        if bool(self.sink.sql_tls_cert) != bool(self.sink.sql_tls_key):
            problems.append("sink.sql_tls_cert / sink.sql_tls_key: set both (PEM files) or neither")
        if (self.sink.sql_listen and not self.clickhouse.url and not self.sink.sql_tls_cert
                and not is_loopback(self.sink.sql_listen.rsplit(":", 1)[0])):
            problems.append(f"sink.sql_listen: {self.sink.sql_listen} is beyond loopback without TLS; set sink.sql_tls_cert "
                            "and sink.sql_tls_key, or listen on 127.0.0.1")
        if self.metrics_host and not is_loopback(self.metrics_host) and not (
                self.metrics_tls_cert and self.metrics_tls_key and self.metrics_tls_client_ca):
            problems.append(f"metrics_host: {self.metrics_host} is beyond loopback without TLS and client certificates; "
                            "set metrics_tls_cert, metrics_tls_key and metrics_tls_client_ca (`runstream tls init DIR "
                            "--client prometheus` makes them), or bind 127.0.0.1")
        if bool(self.mlflow.tls_cert) != bool(self.mlflow.tls_key):
            problems.append("mlflow.tls_cert / mlflow.tls_key: set both (PEM files) or neither")
        mlflow_host = self.mlflow.listen.rsplit(":", 1)[0] if ":" in self.mlflow.listen else ""
        if mlflow_host and not is_loopback(mlflow_host) and not self.mlflow.tls_cert:
            problems.append(f"mlflow.listen: {self.mlflow.listen} is beyond loopback without TLS; set mlflow.tls_cert and "
                            "mlflow.tls_key, or listen on 127.0.0.1")
        if bool(self.metrics_tls_cert) != bool(self.metrics_tls_key):
            problems.append("metrics_tls_cert / metrics_tls_key: set both (PEM files) or neither")
        if self.sink.sql_max_concurrent < 1:
            problems.append("sink.sql_max_concurrent: must be at least 1")
        if self.sink.sql_dashboard_concurrent < 1:
            problems.append("sink.sql_dashboard_concurrent: must be at least 1")
        for key in ("sql_thread_nice", "sql_adhoc_nice"):
            if not -20 <= getattr(self.sink, key) <= 19:
                problems.append(f"sink.{key}: {getattr(self.sink, key)} is not a Linux nice value (-20 to 19)")
        if not 0 <= self.clickhouse.merge_nice <= 19:
            problems.append(f"clickhouse.merge_nice: {self.clickhouse.merge_nice} is not 0 (off) to 19 (merges run last)")
        if not self.processors.recovery_stall_s >= 0:
            problems.append(f"processors.recovery_stall_s: {self.processors.recovery_stall_s} must be 0 (never) or more seconds")
        if not self.processors.stuck_s >= 0:
            problems.append(f"processors.stuck_s: {self.processors.stuck_s} must be 0 (never) or more seconds")
        if not self.processors.commit_interval_s > 0:
            problems.append(f"processors.commit_interval_s: {self.processors.commit_interval_s:g} must be more than 0 seconds")
        if self.sink.gather_s < 0:
            problems.append("sink.gather_s: must be 0 (insert each poll) or more seconds")
        if self.sink.memory_purge_interval_s < 0:
            problems.append("sink.memory_purge_interval_s: must be 0 (never) or more seconds")
        if not self.mlflow.upload_part_ttl_h >= 0:
            problems.append(f"mlflow.upload_part_ttl_h: {self.mlflow.upload_part_ttl_h} must be 0 (keep) or more hours")
        if not self.client.upload_part_mib > 0:
            problems.append(f"client.upload_part_mib: {self.client.upload_part_mib} must be more than 0")
        if self.ingest.max_batch_points < 1:
            problems.append("ingest.max_batch_points: must be at least 1")
        if self.clickhouse.url and not self.clickhouse.url.startswith(("http://", "https://")):
            problems.append(f"clickhouse.url: {self.clickhouse.url!r} must start with http:// or https://")
        if self.clickhouse.cluster and not self.clickhouse.url:
            problems.append("clickhouse.cluster: a cluster needs a server; set clickhouse.url to one of its nodes")
        if self.clickhouse.cluster and not self.clickhouse.cluster.replace("-", "_").isidentifier():
            problems.append(f"clickhouse.cluster: {self.clickhouse.cluster!r} is not a plain cluster name")
        if not self.clickhouse.database.isidentifier():
            problems.append(f"clickhouse.database: {self.clickhouse.database!r} is not a plain identifier")
        if problems:
            raise ConfigError("CONFIG ERROR: " + "; ".join(problems))

    def dump(self) -> dict[str, Any]:
        """The whole resolved tree as plain data (what ``write`` stores and ``load`` reads back)."""
        return dataclasses.asdict(self)

    def write(self, path: Path) -> Path:
        """Store the resolved tree as YAML, 0600 from its first byte (it may hold a token or a password)."""
        return write_private(path, yaml.safe_dump(self.dump(), sort_keys=False))

    def stack_info(self) -> dict[str, Any]:
        """What a running `runstream up` wrote about itself (addresses, dev token), or {}."""
        try:
            info = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def sql_url(self) -> str:
        """The read path a client uses: ``client.sql_url``, else the local stack's SQL endpoint; empty: none known."""
        return self.client.sql_url or str(self.stack_info().get("sql", ""))

    def artifact_url(self) -> str:
        """The artifact server a client uploads to and downloads from: ``client.artifact_url``, else the local
        stack's (its mlflow role); empty: none known."""
        return (self.client.artifact_url or str(self.stack_info().get("mlflow", ""))).rstrip("/")

    @classmethod
    def load(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None,
             flags: Mapping[str, Any] | None = None) -> RunstreamConfig:
        """Defaults, then the YAML file (if any, else $RUNSTREAM_CONFIG), then RUNSTREAM_* env vars, then ``flags``
        ("section.key" -> value, None skipped: the command line's); each checked alike, all validated together."""
        env = os.environ if env is None else env
        config = cls()
        path = path or env.get("RUNSTREAM_CONFIG")
        if path:
            try:
                raw = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"CONFIG ERROR: cannot read {path}: {exc}") from exc
            _apply(config, raw, str(path))
        known = env_names()
        for key, value in sorted(env.items()):
            if not key.startswith("RUNSTREAM_") or key in NOT_CONFIG or key.startswith(TEST_PREFIX):
                continue
            for (sec, name), why in REMOVED.items():
                if key == f"RUNSTREAM_{sec}_{name}".upper():
                    raise ConfigError(f"CONFIG ERROR: {key} ({sec}.{name}) {why}")
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                hint = f"did you mean {near[0]}?" if near else "see docs/configuration.md for the names"
                raise ConfigError(f"CONFIG ERROR: unknown environment variable {key}; {hint}")
            section, name = known[key]
            target = getattr(config, section) if section else config
            setattr(target, name, _coerce(getattr(target, name), value, key))
        for dotted, value in (flags or {}).items():
            if value is None:
                continue
            section, _, name = dotted.rpartition(".")
            target = getattr(config, section) if section else config
            setattr(target, name, _coerce(getattr(target, name), value, f"{dotted} (flag)"))
        config.validate()
        return config


NOT_CONFIG = frozenset({"RUNSTREAM_CONFIG"})  # the file itself
TEST_PREFIX = "RUNSTREAM_TEST_"  # the test fixtures' own variables (e.g. RUNSTREAM_TEST_KAFKA)
# Short names the SDK has always read; each is also reachable as RUNSTREAM_CLIENT_<KEY>.
ENV_ALIASES = {"RUNSTREAM_URL": ("client", "url"), "RUNSTREAM_TOKEN": ("client", "token"),
               "RUNSTREAM_TLS_CA": ("client", "tls_ca"), "RUNSTREAM_TLS_CERT": ("client", "tls_cert"),
               "RUNSTREAM_TLS_KEY": ("client", "tls_key"), "RUNSTREAM_ARTIFACT_DIR": ("client", "artifact_dir"),
               "RUNSTREAM_SQL_URL": ("client", "sql_url")}


def env_names() -> dict[str, tuple[str, str]]:
    """Every RUNSTREAM_* variable that sets a config field: name -> (section, key); section "" is top level."""
    out: dict[str, tuple[str, str]] = dict(ENV_ALIASES)
    root = RunstreamConfig()
    for f in dataclasses.fields(root):
        value = getattr(root, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                out[f"RUNSTREAM_{f.name}_{sub.name}".upper()] = (f.name, sub.name)
        else:
            out[f"RUNSTREAM_{f.name}".upper()] = ("", f.name)
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) only ever means this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TRUE, FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def _coerce(current: Any, value: Any, where: str) -> Any:
    """``value`` (from YAML, the environment or a flag) as the type of the field's default; anything that is not
    exactly one is refused, never guessed (``ture`` is no boolean, ``2.5`` no integer)."""
    kind = type(current).__name__
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if isinstance(value, str | int) and text in TRUE | FALSE:
            return text in TRUE
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
    elif isinstance(current, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    what = {"bool": "a boolean (true/false, yes/no, on/off, 1/0)", "int": "an integer", "float": "a number"}.get(kind, "text")
    raise ConfigError(f"CONFIG ERROR: {where}: {value!r} is not {what}")


# Keys earlier releases accepted, and why they are gone.
REMOVED = {
    ("processors", "guarantee"): (
        "removed: faust uses Kafka transactions only under its own worker, which runstream does not run, so "
        "exactly_once never took effect. The processors are at-least-once; replays are skipped by each run's applied "
        "seqs and their rows are stored idempotently (docs/architecture.md: Stream processors). Delete the key."),
}


def _apply(obj: Any, raw: Mapping[str, Any], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"CONFIG ERROR: {where}: expected a mapping")
    names = {f.name for f in dataclasses.fields(obj)}
    section = type(obj).__name__.removesuffix("Config").lower()
    for key, value in raw.items():
        if (section, key) in REMOVED:
            raise ConfigError(f"CONFIG ERROR: {where}: {section}.{key} {REMOVED[section, key]}")
        if key not in names:
            raise ConfigError(f"CONFIG ERROR: {where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{where}: {key}")
        else:
            setattr(obj, key, _coerce(current, value, f"{key}"))

