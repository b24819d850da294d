"""The role registry: named sets of stages. ``runstream ingest|process|sink|mlflow`` run one role, ``runstream up``
runs them all.

Every stage has ``async start()`` and ``async stop()`` (idempotent, drains within STAGE_STOP_TIMEOUT_S); the
table below is the one place that says which stages make a role and where its metrics are served.
"""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True)
class Role:
    name: str      # the CLI subcommand, the metrics job and the compose service
    help: str
    factory: str   # "module:function" taking the config and returning the role's stages
    metrics_port: Callable[[RunstreamConfig], int]
    principal: str = ""  # the Kafka principal it signs in as; empty: its name

    @property
    def kafka_principal(self) -> str:
        return self.principal or self.name

    def build(self, config: RunstreamConfig) -> list[Stage]:
        # Imported when the role is built, so a role's process loads its own stages only (the ingest process
        # does not map chDB's 0.5 GB library, the sink does not load faust).
        module, _, function = self.factory.partition(":")
        stages: list[Stage] = getattr(importlib.import_module(module), function)(config)
        return stages


ROLES: dict[str, Role] = {r.name: r for r in (
    Role("ingest", "run the gRPC ingest role", "runstream.ingest.server:stages", lambda c: c.ingest.metrics_port),
    Role("process", "run the stream processors (rollups, fleet view, anomaly detection)",
         "runstream.processors.app:stages", lambda c: c.processors.metrics_port),
    Role("sink", "run the storage sink role (and the SQL endpoint of the embedded store)", "runstream.storage.sink:stages",
         lambda c: c.sink.metrics_port),
    # An edge of ingest (it validates and publishes the same batches), so it signs in to Kafka as ingest.
    Role("mlflow", "serve the MLflow tracking REST API (MLflow clients log into the pipeline through it)",
         "runstream.ingest.mlflow_api:stages", lambda c: c.mlflow.metrics_port, principal="ingest"),
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
