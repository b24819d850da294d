"""The role registry: named sets of stages. ``runstream ingest|process|sink|mlflow`` run one role, ``runstream up``
runs them all.

Every stage has ``async start()`` and ``async stop()`` (idempotent, drains within STAGE_STOP_TIMEOUT_S); the
table below is the one place that says which stages make a role, where its metrics are served, and how
`runstream up` starts, waits for and stops it.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from runstream.server import telemetry
from runstream.server.kafka import ensure_topics
from runstream.wire.config import RunstreamConfig

log = logging.getLogger("runstream")

STAGE_STOP_TIMEOUT_S = 35.0  # a stage drains within this; the supervisor waits a little longer for the process


class Stage(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _get(config: RunstreamConfig, dotted: str) -> Any:
    section, _, name = dotted.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def _always(config: RunstreamConfig) -> bool:
    return True


@dataclass(frozen=True)
class Role:
    name: str      # the CLI subcommand, the metrics job and the compose service
    help: str
    factory: str   # "module:function" taking the config and returning the role's stages
    metrics: str   # the config field of its metrics port ("section.key")
    principal: str = ""  # the Kafka principal it signs in as; empty: its name
    # How `runstream up` runs it (the registry's order is its start order):
    enabled: Callable[[RunstreamConfig], bool] = _always
    ready: Callable[[RunstreamConfig], str] | None = None  # the URL that answers once it is up; None: its metrics
    gate: bool = False       # the roles after it start only once it is ready
    replicable: bool = False  # `up --ingest-replicas N`: replica i serves its metrics on the port + i
    writer: bool = False     # takes requests in: stopped before the others, so the sink drains what it took

    @property
    def kafka_principal(self) -> str:
        return self.principal or self.name

    def metrics_port(self, config: RunstreamConfig) -> int:
        port: int = _get(config, self.metrics)
        return port

    def ready_url(self, config: RunstreamConfig) -> str:
        return self.ready(config) if self.ready else f"http://127.0.0.1:{self.metrics_port(config)}/metrics"

    def replica(self, config: RunstreamConfig, i: int) -> RunstreamConfig:
        """Replica ``i``'s config: a copy of ``config`` (never the shared one), its metrics port moved by ``i``."""
        own = copy.deepcopy(config)
        if i:
            section, _, name = self.metrics.rpartition(".")
            target = getattr(own, section) if section else own
            setattr(target, name, getattr(target, name) + i)
        return own

    def build(self, config: RunstreamConfig) -> list[Stage]:
        # Imported when the role is built, so a role's process loads its own stages only (the ingest process
        # does not map chDB's 0.5 GB library, the sink does not load faust).
        module, _, function = self.factory.partition(":")
        stages: list[Stage] = getattr(importlib.import_module(module), function)(config)
        return stages


def _sink_ready(c: RunstreamConfig) -> str:
    # With the embedded store the others read through its SQL endpoint; with a server, its metrics say it is up.
    return f"http://127.0.0.1:{c.sink.metrics_port}/metrics" if c.clickhouse.url else f"http://{c.sink.sql_listen}/ping"


def _mlflow_ready(c: RunstreamConfig) -> str:
    return f"http://127.0.0.1:{c.mlflow.metrics_port}/metrics" if c.mlflow.tls_cert else f"http://{c.mlflow.listen}/health"


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("sink", "run the storage sink role (and the SQL endpoint of the embedded store)", "runstream.storage.sink:stages",
         "sink.metrics_port", ready=_sink_ready, gate=True),
    Role("ingest", "run the gRPC ingest role", "runstream.ingest.server:stages", "ingest.metrics_port",
         replicable=True, writer=True),
    Role("process", "run the stream processors (rollups, fleet view, anomaly detection)",
         "runstream.processors.app:stages", "processors.metrics_port"),
    # An edge of ingest (it validates and publishes the same batches), so it signs in to Kafka as ingest.
    Role("mlflow", "serve the MLflow tracking REST API (MLflow clients log into the pipeline through it)",
         "runstream.mlflow.api:stages", "mlflow.metrics_port", principal="ingest",
         enabled=lambda c: bool(c.mlflow.listen), ready=_mlflow_ready, writer=True),
)}


async def stop_stages(stages: list[Stage]) -> None:
    """Stop in reverse order, each within STAGE_STOP_TIMEOUT_S; one that fails does not keep the others running."""
    for stage in reversed(stages):
        try:
            await asyncio.wait_for(stage.stop(), STAGE_STOP_TIMEOUT_S)
        except Exception:
            log.exception("Stopping %s failed.", type(stage).__name__)


async def run_role(name: str, config: RunstreamConfig, *, ready: Callable[[list[Any]], None] | None = None) -> int:
    """Start a role's stages, wait for SIGINT/SIGTERM, stop them in reverse order. Returns the exit code: 1 when a
    stage's own task (``task``, e.g. the sink's consume loop) died, so a supervisor restarts the role."""
    role = ROLES[name]
    await ensure_topics(config)
    telemetry.serve_metrics(role.metrics_port(config), config)
    stages = role.build(config)
    started: list[Stage] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for stage in stages:
            await stage.start()
            started.append(stage)
        log.info("Role %s started.", name)
        if ready:
            ready(stages)
        watched: list[asyncio.Future[Any]] = [t for s in stages if (t := getattr(s, "task", None)) is not None]
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiter, *watched], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        died = [t for t in done if t is not waiter]
        if died:
            log.error("Role %s: a stage's task ended (%s); stopping with exit code 1.", name,
                      died[0].exception() if not died[0].cancelled() else "cancelled")
        return 1 if died else 0
    finally:
        await stop_stages(started)
        log.info("Role %s stopped.", name)
