"""`runstream up`: Kafka plus every role (ingest, process, sink, mlflow) as a child process on this machine, with a live status line.

Roles run as separate processes so they use separate cores (and so the sink
alone owns the embedded store). The supervisor writes ``<data_dir>/stack.json``
(addresses and the dev token) so the SDK, `runstream sql` and `runstream runs`
find the stack without configuration.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live

from runstream.ops.broker import KafkaBroker
from runstream.ops.roles import ROLES
from runstream.ops.stack import RoleProcess, kafka_auth, scrape, wait_http, write_stack_file
from runstream.server.auth import ensure_admin_token, ensure_dev_token, ensure_file_token
from runstream.server.kafka import ensure_topics
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError
from runstream.wire.files import private_dir


def _port_free(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    with socket.socket() as s:
        # As the roles' servers bind: a port whose last connections sit in TIME_WAIT after a stop is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
            return True
        except OSError:
            return False


def stack_running(config: RunstreamConfig) -> bool:
    """Whether the stack described by the data dir's stack.json is alive."""
    try:
        os.kill(int(config.stack_info()["pid"]), 0)
        return True
    except (KeyError, ProcessLookupError, PermissionError, TypeError, ValueError):
        return False


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


class Supervisor:
    def __init__(self, config: RunstreamConfig, *, ingest_replicas: int = 1) -> None:
        self.config = config
        self.ingest_replicas = max(1, ingest_replicas)
        # What runs, in start order, from the role registry: (role, how many).
        self.roles = [(r, self.ingest_replicas if r.replicable else 1) for r in ROLES.values() if r.enabled(config)]
        self.broker: KafkaBroker | None = None
        self.procs: list[RoleProcess] = []
        self.log_dir = config.data_path / "logs"
        self._last: tuple[float, float] | None = None

    def _check_free(self) -> None:
        pid = self.config.stack_info().get("pid")
        if pid != os.getpid() and stack_running(self.config):
            raise RunstreamError(f"a stack is already running (pid {pid}, data dir {self.config.data_path}); "
                                 "stop it with Ctrl-C, or use another --data-dir.")
        c = self.config
        addrs = [("ingest.listen", c.ingest.listen), ("sink.sql_listen", c.sink.sql_listen), ("mlflow.listen", c.mlflow.listen)]
        addrs += [(f"{r.metrics}+{i}" if i else r.metrics, f"127.0.0.1:{r.metrics_port(c) + i}")
                  for r, n in self.roles for i in range(n)]
        busy = [f"{name} ({addr})" for name, addr in addrs if addr and not addr.endswith(":0") and not _port_free(addr)]
        if busy:
            raise RunstreamError(f"ports already in use: {', '.join(busy)}. Stop what holds them or change them in the config.")

    def start(self) -> dict[str, Any]:
        c = self.config
        self._check_free()
        private_dir(c.data_path, tighten=True)
        if not c.kafka.bootstrap:
            print(f"Starting Kafka (KRaft, single node) in {c.data_path / 'kafka'} ...", file=sys.stderr, flush=True)
            self.broker = KafkaBroker(c.data_path / "kafka")
            self.broker.start()
            self.broker.client_config(c)
        asyncio.run(ensure_topics(c, acls=bool(c.kafka.credentials_dir)))
        if not c.sink.instance_id:  # one sink per data dir: restarted after a crash, it resumes at once
            c.sink.instance_id = "sink-" + hashlib.sha256(str(c.data_path.resolve()).encode()).hexdigest()[:12]
        token = ensure_dev_token(c.tokens_path)
        ensure_admin_token(c.tokens_path, c.admin_token_path)
        if c.mlflow.listen and not c.clickhouse.url:  # the MLflow API reads through the sink's endpoint with it
            ensure_file_token(c.tokens_path, c.mlflow_token_path, "mlflow", ["read"])
        if c.sink.sql_listen and not c.clickhouse.url:  # Grafana's: its queries get the dashboards' workload class
            ensure_file_token(c.tokens_path, c.dashboard_token_path, "grafana", ["read"])
        waiting: list[tuple[str, RoleProcess]] = []
        for role, n in self.roles:
            for i in range(n):
                own = role.replica(c, i)  # each child gets a copy, written whole for it to load
                p = RoleProcess(role.name, own, self.log_dir, name=f"{role.name}-{i}" if role.replicable else "")
                p.start()
                self.procs.append(p)
                waiting.append((role.ready_url(own), p))
            if role.gate:
                for url, p in waiting:
                    wait_http(url, 60, p)
                waiting = []
        for url, p in waiting:
            wait_http(url, 60, p)
        info = {"pid": os.getpid(), "ingest": c.ingest.listen, "token": token, "kafka": c.kafka.bootstrap,
                "kafka_auth": kafka_auth(c),
                "sql": c.clickhouse.url or f"http://{c.sink.sql_listen}", "database": c.clickhouse.database,
                "metrics": {r.name: [r.metrics_port(c) + i for i in range(n)] if r.replicable else r.metrics_port(c)
                            for r, n in self.roles},
                "logs": str(self.log_dir)}
        if c.mlflow.listen:
            info["mlflow"] = f"{'https' if c.mlflow.tls_cert else 'http'}://{c.mlflow.listen}"
        write_stack_file(c, info)
        return info

    def status(self) -> str:
        c = self.config
        ing = [scrape(c.ingest.metrics_port + i) for i in range(self.ingest_replicas)]
        snk = scrape(c.sink.metrics_port)
        points = sum(m.get("runstream_ingest_points_total", 0.0) for m in ing)
        stored = snk.get("runstream_sink_rows_total{table=metric_points}", 0.0)
        now = time.monotonic()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (points - self._last[1]) / (now - self._last[0])
        self._last = (now, points)
        down = [p.role for p in self.procs if not p.alive()]
        lag = snk.get("runstream_sink_event_lag_seconds", 0.0)
        prc = scrape(c.processors.metrics_port)
        alerts = sum(v for k, v in prc.items() if k.startswith("runstream_processor_alerts_total{") and "status=open" in k)
        text = (f"ingest {rate:>10,.0f} points/s | accepted {points:>12,.0f} | stored {stored:>12,.0f} | "
                f"processed {prc.get('runstream_processor_points_total', 0.0):>12,.0f} | alerts {alerts:,.0f} | "
                f"sink lag {lag:5.2f}s")
        return text + (f" | DOWN: {', '.join(down)} (logs in {self.log_dir})" if down else "")

    def restart_dead(self) -> list[str]:
        """Start again every role process that exited on its own (a crash, or a role that stopped itself)."""
        restarted = []
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is not None:
                p.start()
                restarted.append(p.name)
        return restarted

    def stop(self) -> None:
        """Ingest first (so nothing new arrives), then the sink drains, then Kafka. Idempotent."""
        writers = {r.name for r in ROLES.values() if r.writer}
        for p in [p for p in self.procs if p.role in writers] + [p for p in self.procs if p.role not in writers]:
            p.stop()
        self.procs = []
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        try:
            if self.config.stack_info().get("pid") == os.getpid():
                self.config.stack_file.unlink()
        except OSError:
            pass

    def run_forever(self) -> int:
        console = Console()
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            info = self.start()
            console.print(f"[bold green]runstream is up.[/] ingest grpc://{info['ingest']}  sql {info['sql']}  "
                          + (f"mlflow {info['mlflow']}  " if info.get("mlflow") else "") +
                          f"data {self.config.data_path}\n  dev token in {self.config.tokens_path}, admin token (governance) in "
                          f"{self.config.admin_token_path}; the SDK and CLI find this "
                          f"stack through {self.config.data_path / 'stack.json'}. Ctrl-C stops everything.")
            with Live(self.status(), console=console, refresh_per_second=2) as live:
                while True:
                    time.sleep(1)
                    for name in self.restart_dead():
                        live.console.print(f"[yellow]{name} exited; restarted it[/] (log: {self.log_dir / name}.log)")
                    live.update(self.status())
        except KeyboardInterrupt:
            console.print("Stopping (ingest, then sink drains, then Kafka)...")
        finally:
            self.stop()
        return 0
