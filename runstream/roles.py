"""Roles: named sets of stages. ``runstream ingest|sink`` run one role, ``runstream up`` runs all.

Every stage has ``async start()`` and ``async stop()`` (idempotent, drains);
the table below is the one place that says which stages make a role.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable, Protocol

from runstream import telemetry
from runstream.config import RunstreamConfig
from runstream.topics import ensure_topics

log = logging.getLogger("runstream")


class Stage(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _ingest(config: RunstreamConfig) -> list[Stage]:
    import ingest
    return [ingest.build(config)]


def _sink(config: RunstreamConfig) -> list[Stage]:
    from storage import sink
    from storage.sqlserver import SqlEndpoint
    stages: list[Stage] = [sink.build(config)]
    if not config.clickhouse.url and config.sink.sql_listen:
        stages.append(SqlEndpoint(config.clickhouse_path, config.sink.sql_listen, database=config.clickhouse.database))
    return stages


ROLES: dict[str, Callable[[RunstreamConfig], list[Stage]]] = {
    "ingest": _ingest,
    "sink": _sink,
}
METRICS_PORT: dict[str, Callable[[RunstreamConfig], int]] = {
    "ingest": lambda c: c.ingest.metrics_port,
    "sink": lambda c: c.sink.metrics_port,
    "process": lambda c: c.processors.metrics_port,
}


def run_process_role(config: RunstreamConfig) -> None:
    """The processors run as a faust worker, which owns its event loop and signal handling."""
    from processors.app import run_worker
    asyncio.run(ensure_topics(config))
    telemetry.serve_metrics(config.processors.metrics_port)
    run_worker(config)


async def run_role(name: str, config: RunstreamConfig, *, ready: Callable[[list[Any]], None] | None = None) -> None:
    """Start a role's stages, wait for SIGINT/SIGTERM, stop them in reverse order."""
    await ensure_topics(config)
    telemetry.serve_metrics(METRICS_PORT[name](config))
    stages = ROLES[name](config)
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
        await stop.wait()
    finally:
        for stage in reversed(started):
            try:
                await asyncio.wait_for(stage.stop(), 35)
            except Exception:
                log.exception("Stopping %s failed.", type(stage).__name__)
        log.info("Role %s stopped.", name)
