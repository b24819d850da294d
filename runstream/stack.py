"""Running roles: in this process (tests, embedding) or as supervised child processes (`runstream up`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from runstream.config import RunstreamConfig
from runstream.roles import ROLES, Stage
from runstream.topics import ensure_topics


class InProcessRoles:
    """Runs roles' stages on an event loop in a background thread."""

    def __init__(self, config: RunstreamConfig, roles: list[str]) -> None:
        self.config = config
        self.roles = roles
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="runstream-roles", daemon=True)
        self.stages: dict[str, list[Stage]] = {}

    def call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> "InProcessRoles":
        self.thread.start()
        self.call(ensure_topics(self.config))
        for role in self.roles:
            self.start_role(role)
        return self

    def start_role(self, role: str) -> list[Stage]:
        stages = ROLES[role](self.config)
        for s in stages:
            self.call(s.start())
        self.stages[role] = stages
        return stages

    def stop_role(self, role: str) -> None:
        for s in reversed(self.stages.pop(role, [])):
            self.call(s.stop())

    def stop(self) -> None:
        for role in list(reversed(list(self.stages))):
            self.stop_role(role)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> "InProcessRoles":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def isolated_config(data_dir: Path | str) -> RunstreamConfig:
    """A config whose data and every port are its own (free loopback ports): benchmarks and tests use it
    so they never collide with a `runstream up` on the same machine."""
    from runstream.broker import free_port
    c = RunstreamConfig()
    c.data_dir = str(data_dir)
    c.ingest.listen = f"127.0.0.1:{free_port()}"
    c.ingest.metrics_port = free_port()
    c.sink.metrics_port = free_port()
    c.sink.sql_listen = f"127.0.0.1:{free_port()}"
    c.processors.metrics_port = free_port()
    return c


def role_env(config: RunstreamConfig) -> dict[str, str]:
    """Environment that hands a config to a child role process."""
    env = dict(os.environ)
    env.update({
        "RUNSTREAM_DATA_DIR": str(config.data_path),
        "RUNSTREAM_KAFKA_BOOTSTRAP": config.kafka.bootstrap,
        "RUNSTREAM_KAFKA_EVENTS_TOPIC": config.kafka.events_topic,
        "RUNSTREAM_KAFKA_PARTITIONS": str(config.kafka.partitions),
        "RUNSTREAM_KAFKA_ROLLUPS_TOPIC": config.kafka.rollups_topic,
        "RUNSTREAM_KAFKA_ALERTS_TOPIC": config.kafka.alerts_topic,
        "RUNSTREAM_KAFKA_FLEET_TOPIC": config.kafka.fleet_topic,
        "RUNSTREAM_KAFKA_CONTROL_TOPIC": config.kafka.control_topic,
        "RUNSTREAM_KAFKA_AUDIT_TOPIC": config.kafka.audit_topic,
        "RUNSTREAM_PROCESSORS_APP_ID": config.processors.app_id,
        "RUNSTREAM_PROCESSORS_GRACE_S": str(config.processors.grace_s),
        "RUNSTREAM_PROCESSORS_TICK_S": str(config.processors.tick_s),
        "RUNSTREAM_PROCESSORS_RULES_FILE": config.processors.rules_file,
        "RUNSTREAM_PROCESSORS_WEBHOOK_URL": config.processors.webhook_url,
        "RUNSTREAM_PROCESSORS_METRICS_PORT": str(config.processors.metrics_port),
        "RUNSTREAM_INGEST_LISTEN": config.ingest.listen,
        "RUNSTREAM_INGEST_METRICS_PORT": str(config.ingest.metrics_port),
        "RUNSTREAM_INGEST_TOKENS_FILE": str(config.tokens_path),
        "RUNSTREAM_SINK_METRICS_PORT": str(config.sink.metrics_port),
        "RUNSTREAM_SINK_SQL_LISTEN": config.sink.sql_listen,
        "RUNSTREAM_SINK_GROUP_ID": config.sink.group_id,
        "RUNSTREAM_CLICKHOUSE_URL": config.clickhouse.url,
        "RUNSTREAM_CLICKHOUSE_PATH": str(config.clickhouse_path),
        "RUNSTREAM_CLICKHOUSE_DATABASE": config.clickhouse.database,
    })
    return env


class RoleProcess:
    """One role as a child process (`python -m runstream <role>`)."""

    def __init__(self, role: str, config: RunstreamConfig, log_dir: Path) -> None:
        self.role = role
        self.config = config
        self.log_path = log_dir / f"{role}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "runstream", self.role], env=role_env(self.config),
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, for tests."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def scrape(port: int, timeout: float = 1.0) -> dict[str, float]:
    """Sum of each metric family's samples from a role's /metrics (names as exported)."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return out
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def wait_http(url: str, timeout: float, proc: RoleProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.role} exited while starting. Log tail:\n{proc.log_tail()}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s" + (f". Log tail:\n{proc.log_tail()}" if proc else ""))


def write_stack_file(config: RunstreamConfig, info: dict[str, Any]) -> Path:
    path = config.data_path / "stack.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))
    path.chmod(0o600)
    return path
