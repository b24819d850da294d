"""A real single-node Apache Kafka broker (KRaft) run from the official jars.

The jars come from Maven Central through the pom.xml beside this file and are
cached outside the repository (``kafka.jars_dir``, env ``RUNSTREAM_KAFKA_JARS_DIR``,
default ``~/.cache/runstream``); only the first fetch is slow. ``runstream up``, the
test fixtures and the benchmark all start brokers through :class:`KafkaBroker`.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from runstream.wire.config import RunstreamConfig
from runstream.wire.files import private_dir, write_private

KAFKA_VERSION = "4.1.1"  # keep in step with pom.xml
POM = Path(__file__).with_name("pom.xml")

LOG4J2 = """\
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says why and what to do."""


def cache_dir() -> Path:
    return Path(os.path.expanduser(RunstreamConfig.load().kafka.jars_dir)) / f"kafka-{KAFKA_VERSION}"


def fetch_jars(*, quiet: bool = False) -> Path:
    """Resolve the broker jars into the cache (once) and return the lib directory."""
    lib = cache_dir() / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars. Install Maven and Java 17+.")
    if not quiet:
        print(f"Fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {lib} (first run only)...", file=sys.stderr)
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"Fetching the Kafka jars failed (mvn exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    marker.touch()
    return lib


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range: outgoing connections (Kafka clients, a fleet's
    channels) take their local ports from that range, so a port picked there can be taken before its server binds."""
    low = _ephemeral_low()
    for _ in range(200 if low > 1025 else 0):
        port = random.randint(max(1024, low - 16_000), low - 1)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:  # no room below the range, or everything tried was taken: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# SCRAM principals made when the storage is formatted: the admin (super user, also the broker's own
# inter-broker identity) and one per role. The controller listener has its own PLAIN user.
ADMIN = "admin"
PRINCIPALS = (ADMIN, "ingest", "process", "sink")
MECHANISM = "SCRAM-SHA-256"


# For a broker that lives minutes (tests): the JIT's first tier only. The optimizing compiler costs more CPU in a
# broker's first minutes than its faster code saves (tests/test_spine.py: 44 -> 35 s of CPU); a long-lived broker
# keeps the default.
SHORT_LIVED_JVM = ("-XX:TieredStopAtLevel=1",)


class KafkaBroker:
    """One combined broker+controller node on loopback.

    ``start()`` formats the storage on first use and waits until the broker
    accepts connections; ``stop()`` and ``start()`` again keep the same ports
    and data, so a test can take Kafka away and bring it back.

    Secured by default: SASL (SCRAM-SHA-256) on every listener and Kafka's
    StandardAuthorizer, with credentials made at the first format and kept
    0600 in ``<data_dir>/credentials``; nobody but the admin has any right
    until ACLs are granted (``runstream.server.kafka.ensure_topics(acls=True)``).
    """

    def __init__(self, data_dir: Path, *, port: int = 0, controller_port: int = 0, heap: str = "768m",
                 secure: bool = True, node_id: int = 1, cluster: KafkaCluster | None = None,
                 jvm_options: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.cluster = cluster  # a member of a multi-node cluster: voters, cluster id and credentials are shared
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        if secure and formatted and not self.credentials_dir.exists():
            # Made before the broker was secured: its metadata has no SCRAM users to sign in with.
            print(f"WARNING: the Kafka data in {self.data_dir} predates SASL; this broker runs without authentication. "
                  "Start with a new data dir to secure it.", file=sys.stderr)
            secure = False
        self.secure = secure
        # The controller's address is written into the storage when it is
        # formatted, so a data dir keeps the ports it was first given.
        ports_file = self.data_dir / "ports.json"
        saved = json.loads(ports_file.read_text()) if ports_file.exists() else {}
        self.port = port or saved.get("port") or free_port()
        self.controller_port = controller_port or saved.get("controller_port") or free_port()
        private_dir(self.data_dir)  # the log holds every acknowledged point and the governance records
        ports_file.write_text(json.dumps({"port": self.port, "controller_port": self.controller_port}))
        self.heap = heap
        self.jvm_options = list(jvm_options)  # e.g. SHORT_LIVED_JVM for a broker that lives minutes
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._started_from = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def credentials_dir(self) -> Path:
        return self.cluster.credentials_dir if self.cluster is not None else self.data_dir / "credentials"

    def password(self, principal: str) -> str:
        path = self.credentials_dir / f"{principal}.password"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24))  # [A-Za-z0-9_-]: safe inside the JAAS quotes
        return path.read_text().strip()

    def client_config(self, config: RunstreamConfig) -> RunstreamConfig:
        """``config`` pointed at this broker, signed in as its admin; ``credentials_dir`` lets the roles started
        from it sign in as their own principals (runstream.server.kafka.as_principal)."""
        config.kafka.bootstrap = self.bootstrap
        if self.secure:
            config.kafka.security_protocol = "SASL_PLAINTEXT"
            config.kafka.sasl_mechanism = MECHANISM
            config.kafka.username = ADMIN
            config.kafka.password_file = str(self.credentials_dir / f"{ADMIN}.password")
            config.kafka.credentials_dir = str(self.credentials_dir)
        return config

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> Path:
        private_dir(self.data_dir)  # the log holds every acknowledged point and the governance records
        replicas = str(min(3, len(self.cluster.nodes))) if self.cluster is not None else "1"
        min_isr = str(min(2, int(replicas)))
        quorum = ({"controller.quorum.voters": self.cluster.voters} if self.cluster is not None
                  else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"})
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"BROKER://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"BROKER://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "BROKER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,BROKER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "4",
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            # The default for topics made without their own setting (faust's changelog and assignor topics).
            "min.insync.replicas": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "message.max.bytes": str(16 * 1024 * 1024),
            "log.retention.hours": "168",
        }
        if self.cluster is not None:
            # A dead node is fenced (and so dropped from every ISR) after 4 s instead of 9, and a stuck follower
            # after 5 s instead of 30: acks=all writes wait that long, not half a minute.
            props.update({"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "1000",
                          "replica.lag.time.max.ms": "5000"})
        if self.secure:
            props.update(self._security())
        path = self.data_dir / "server.properties"
        write_private(path, "".join(f"{k}={v}\n" for k, v in props.items()))  # it holds passwords
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        return path

    def _security(self) -> dict[str, str]:
        admin, controller = self.password(ADMIN), self.password("controller")
        return {
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,BROKER:SASL_PLAINTEXT",
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.broker.sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.broker.{MECHANISM.lower()}.sasl.jaas.config":
                f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{admin}";',
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                'org.apache.kafka.common.security.plain.PlainLoginModule required username="controller" '
                f'password="{controller}" user_controller="{controller}";',
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};User:controller",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _java(self, lib: Path, main: str, *args: str, heap: str, options: Sequence[str] = ()) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not on PATH; Kafka needs Java 17 or newer.")
        return [java, f"-Xmx{heap}", f"-Xms{heap}" if heap == self.heap else "-Xms64m", "-XX:+UseG1GC", *options,
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", f"{lib}/*", main, *args]

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Format the storage on first use and start the process (a cluster launches every node, then waits)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        lib = fetch_jars()
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = (self.cluster.cluster_id if self.cluster is not None
                          else base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
            scram = [arg for p in PRINCIPALS
                     for arg in ("--add-scram", f"{MECHANISM}=[name={p},password={self.password(p)}]")] if self.secure else []
            # One node: a standalone dynamic quorum. A cluster: the static voters in the config.
            standalone = ["--standalone"] if self.cluster is None else []
            fmt = subprocess.run(
                self._java(lib, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config),
                           *standalone, *scram, heap="256m", options=SHORT_LIVED_JVM),  # a tool: seconds
                capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"Formatting Kafka storage failed:\n{fmt.stdout[-2000:]}{fmt.stderr[-2000:]}")
        self._log = open(self.log_path, "ab")
        self._started_from = self.log_path.stat().st_size  # "Kafka Server started" counts from here
        self.proc = subprocess.Popen(self._java(lib, "kafka.Kafka", str(config), heap=self.heap, options=self.jvm_options),
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_started(self, timeout: float = 90.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"Kafka exited with code {self.proc.returncode} while starting. Log tail:\n{self.log_tail()}")
            if _port_open(self.port) and b"Kafka Server started" in self.log_path.read_bytes()[self._started_from:]:
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"Kafka did not start within {timeout:.0f}s. Log tail:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def kill(self) -> None:
        """SIGKILL: a crash, for tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (idempotent): SIGTERM for a clean shutdown, SIGKILL after timeout."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaCluster:
    """``n`` combined broker+controller nodes on loopback with a static quorum of all of them, secured like one
    node (the credentials are shared). Tests and benches run 3: replication factor 3, min.insync.replicas 2."""

    def __init__(self, data_dir: Path, n: int = 3, *, heap: str = "512m", jvm_options: Sequence[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        private_dir(self.data_dir)
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        self.cluster_id = id_file.read_text().strip()
        self.nodes: list[KafkaBroker] = []
        for i in range(n):  # ports first: every node's config names every voter
            self.nodes.append(KafkaBroker(self.data_dir / f"node{i + 1}", heap=heap, node_id=i + 1, cluster=self,
                                          jvm_options=jvm_options))

    @property
    def credentials_dir(self) -> Path:
        return self.data_dir / "credentials"

    @property
    def voters(self) -> str:
        return ",".join(f"{b.node_id}@127.0.0.1:{b.controller_port}" for b in self.nodes)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def client_config(self, config: RunstreamConfig) -> RunstreamConfig:
        self.nodes[0].client_config(config)
        config.kafka.bootstrap = self.bootstrap
        return config

    def replace(self, node_id: int, timeout: float = 120.0) -> None:
        """A node whose disk was lost: killed, its log directory removed, formatted afresh under the same id and
        started; it copies its partitions back from the other replicas."""
        node = self.node(node_id)
        node.kill()
        shutil.rmtree(node.data_dir / "logs", ignore_errors=True)
        node.start(timeout)

    def start(self, timeout: float = 120.0) -> None:
        for b in self.nodes:
            b.launch()  # a node finishes starting only once a quorum of voters runs
        for b in self.nodes:
            b.wait_started(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Every node at once: one by one, the last ones wait out their timeout for a controller quorum that is gone."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.nodes))) as pool:
            list(pool.map(lambda b: b.stop(timeout), self.nodes))

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
