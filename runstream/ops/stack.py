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

from prometheus_client.parser import text_string_to_metric_families

from runstream.ops.broker import free_port
from runstream.ops.roles import ROLES, STAGE_STOP_TIMEOUT_S, Stage, stop_stages
from runstream.server.kafka import as_principal, ensure_topics
from runstream.wire.config import RunstreamConfig
from runstream.wire.files import private_dir, write_private


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

    def start(self) -> InProcessRoles:
        self.thread.start()
        self.call(ensure_topics(self.config, acls=bool(self.config.kafka.credentials_dir)))
        for role in self.roles:
            self.start_role(role)
        return self

    def start_role(self, role: str) -> list[Stage]:
        stages = self.call(_build(role, as_principal(self.config, ROLES[role].kafka_principal)))
        for s in stages:
            self.call(s.start())
        self.stages[role] = stages
        return stages

    def stop_role(self, role: str) -> None:
        self.call(stop_stages(self.stages.pop(role, [])))

    def stop(self) -> None:
        """Stop every role and the loop (idempotent)."""
        if self.loop.is_closed():
            return
        for role in list(reversed(list(self.stages))):
            self.stop_role(role)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> InProcessRoles:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _build(role: str, config: RunstreamConfig) -> list[Stage]:
    """Stages are built on the loop that runs them (faust binds its app to the running loop)."""
    return ROLES[role].build(config)


def isolated_config(data_dir: Path | str) -> RunstreamConfig:
    """A config whose data and every port are its own (free loopback ports): benchmarks and tests use it
    so they never collide with a `runstream up` on the same machine."""
    c = RunstreamConfig()
    c.data_dir = str(data_dir)
    c.ingest.listen = f"127.0.0.1:{free_port()}"
    c.ingest.metrics_port = free_port()
    c.sink.metrics_port = free_port()
    c.sink.sql_listen = f"127.0.0.1:{free_port()}"
    c.processors.metrics_port = free_port()
    c.mlflow.listen = f"127.0.0.1:{free_port()}"
    c.mlflow.metrics_port = free_port()
    return c


def child_env() -> dict[str, str]:
    """The environment of a child role: this one without RUNSTREAM_* variables, which the config file carries
    already resolved (so nothing is applied twice, and nothing is dropped)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}


class RoleProcess:
    """One role as a child process: ``python -m runstream <role> --config <data_dir>/run/<name>.yaml``, the
    parent's resolved config written whole (0600) for the child to load."""

    def __init__(self, role: str, config: RunstreamConfig, log_dir: Path, *, name: str = "") -> None:
        self.role = role
        self.config = as_principal(config, ROLES[role].kafka_principal)
        self.name = name or role
        self.log_path = log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.config.data_path / "run" / f"{self.name}.yaml"

    def command(self, *args: str) -> list[str]:
        """The child's argv; ``args`` replace the role (tests run `config show` exactly as a role would start)."""
        return [sys.executable, "-m", "runstream", *(args or (self.role,)), "--config", str(self.config_path)]

    def start(self) -> None:
        private_dir(self.log_path.parent)
        self.config.write(self.config_path)
        # A session of its own, and so a scheduling group of its own where the kernel has autogroups: the reads' nice
        # then orders them against the sink's own threads only. Every role in one group was measured
        # (bench/results/readers-one-group.json): panels' p99 halved, but the fleet shape spent 15% more CPU per point.
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.command(), env=child_env(), stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, for tests."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = STAGE_STOP_TIMEOUT_S + 5) -> None:
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


def kafka_auth(config: RunstreamConfig) -> dict[str, str]:
    """How the CLI signs in to the stack's broker (as its admin: whoever reads the data dir holds its files)."""
    k = config.kafka
    return {"security_protocol": k.security_protocol, "sasl_mechanism": k.sasl_mechanism, "username": k.username,
            "password_file": k.password_file}


def write_stack_file(config: RunstreamConfig, info: dict[str, Any]) -> Path:
    """stack.json holds the dev token: 0600 from its first byte."""
    return write_private(config.stack_file, json.dumps(info, indent=2))
