"""How much each role carries, with one and with two of it, on this machine: the figures to size a deployment.

    python bench/scaling.py --json        # about 5 minutes; bench/results/scaling.json

1. **ingest** (1, then 2 processes sharing the port, as `runstream up --ingest-replicas 2` runs them): client
   processes keep ``--streams`` Session streams each busy with fleet-shaped batches (``--steps`` x ``--metrics``
   points, one batch per request, the next sent when the last is acknowledged) for ``--seconds``. Reported:
   points/s acknowledged, ack p50/p99, ingest CPU seconds per second, and points per ingest CPU-second.
2. **sink** (1, then 2 in one group): the backlog phase 1 left in Kafka is drained by fresh sinks, each on its own
   embedded store (with a ClickHouse server they would share it). points/s stored between 10% and 90% of the
   backlog (from the sinks' row counters), CPU and peak RSS per sink.
3. **process** (1, then 2 workers of one faust app): the same backlog drained by fresh processor groups: points/s
   processed (rollups, fleet, anomaly detection), CPU and peak RSS per worker.

A partition is read by one sink and one worker, so the most one partition carries is the slower of one sink's
and one worker's rate. Leaves out: a network between machines (everything is on loopback), a ClickHouse server
(the sinks write the embedded engine), replicated Kafka (one broker), and, in 2 and 3, producers competing for
the cores (the backlog is drained with nothing else running).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import CLIENTS, CpuMeter, calibration, cpu_seconds  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, peak_rss_mib  # noqa: E402

kafka_pids: list[int] = []  # the broker's JVM, counted in every phase


async def _stream(addr: str, token: str, args: Any, stop_at: float, out: dict[str, Any]) -> None:
    import grpc

    from runstream.v1 import ingest_pb2
    from runstream.v1.ingest_pb2 import Batch, Metrics
    # Its own TCP connection, as a separate process would have (channels to one target share one by default).
    channel = grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
    call = channel.stream_stream("/runstream.v1.Ingest/Session", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=ingest_pb2.SessionAck.FromString)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def requests() -> Any:
        while (item := await queue.get()) is not None:
            yield item
    session = call(requests(), metadata=(("authorization", f"Bearer {token}"),))
    run_id, n = uuid.uuid4().hex, args.steps * args.metrics
    names = [f"m{i}" for i in range(args.metrics)]
    seq = 0
    try:
        while time.monotonic() < stop_at:
            seq += 1
            now_ms = int(time.time() * 1000)
            step0 = (seq - 1) * args.steps
            batch = Batch(batch_id=uuid.uuid4().hex, project="scaling", run_id=run_id, seq=seq, created_ms=now_ms,
                          metrics=Metrics(names=names, name_index=[i % args.metrics for i in range(n)],
                                          steps=[step0 + i // args.metrics for i in range(n)], timestamps_ms=[now_ms] * n,
                                          values=[random.random() for _ in range(n)]))
            t0 = time.perf_counter()
            queue.put_nowait(ingest_pb2.SessionRequest(id=seq, batches=[batch]))
            ack = await asyncio.wait_for(session.read(), 30)
            if ack is grpc.aio.EOF or ack.id != seq:
                raise RuntimeError("the session ended")
            out["latency"].append((time.perf_counter() - t0) * 1000)
            out["acked"] += n
    except Exception as exc:  # counted, not retried: a figure with errors is reported as such
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        out["errors"][code] = out["errors"].get(code, 0) + 1
        out.setdefault("error_example", f"{code}: {exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc}"[:300])
    finally:
        queue.put_nowait(None)
        session.cancel()
        await channel.close()


def _client(addr: str, token: str, args: Any, stop_at_wall: float, q: Any) -> None:
    async def main() -> dict[str, Any]:
        stop_at = time.monotonic() + (stop_at_wall - time.time())
        out: dict[str, Any] = {"acked": 0, "latency": [], "errors": {}}
        await asyncio.gather(*(_stream(addr, token, args, stop_at, out) for _ in range(args.streams)))
        return out
    out = asyncio.run(main())
    out["cpu_s"] = time.process_time()
    q.put(out)


def ingest_phase(cfg: Any, token: str, replicas: int, args: Any, logs: Path, console: Any) -> dict[str, Any]:
    from runstream.ops.broker import free_port
    from runstream.ops.stack import RoleProcess, wait_http
    procs = []
    for i in range(replicas):  # one port: the kernel spreads connections over the processes (SO_REUSEPORT)
        c = copy.deepcopy(cfg)
        c.ingest.metrics_port = free_port()
        p = RoleProcess("ingest", c, logs, name=f"ingest{replicas}-{i}")
        p.start()
        wait_http(f"http://127.0.0.1:{c.ingest.metrics_port}/metrics", 60, p)
        procs.append(p)
    for p in procs:  # /metrics answers before the gRPC port listens
        deadline = time.monotonic() + 60
        while "Role ingest started." not in p.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or not p.alive():
                raise RuntimeError(f"{p.name} did not start:\n{p.log_tail()}")
            time.sleep(0.1)
    try:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        start = time.time() + 3.0
        clients = [ctx.Process(target=_client, args=(cfg.ingest.listen, token, args, start + args.seconds, q))
                   for _ in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(max(0.0, start - time.time()))
        meter = CpuMeter({"ingest": [p.proc.pid for p in procs if p.proc], "kafka": kafka_pids}).start()
        cpu0 = [cpu_seconds(p.proc.pid) or 0.0 for p in procs if p.proc]
        console.print(f"ingest x{replicas}: {args.clients} client processes x {args.streams} streams for {args.seconds:.0f}s ...")
        results = [q.get(timeout=args.seconds + 120) for _ in clients]
        meter.stop()
        cpu = [round((cpu_seconds(p.proc.pid) or 0.0) - c0, 1) for p, c0 in zip(procs, cpu0) if p.proc]
        meter.set_total(CLIENTS, sum(r["cpu_s"] for r in results))
        for c in clients:
            c.join(30)
        acked = sum(r["acked"] for r in results)
        lat = [x for r in results for x in r["latency"]]
        errors: dict[str, int] = {}
        example = next((r["error_example"] for r in results if "error_example" in r), "")
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return {"replicas": replicas, "points_acked": acked, "points_per_s": round(acked / args.seconds),
                "ack_p50_ms": pct(lat, 0.5), "ack_p99_ms": pct(lat, 0.99), "errors": errors,
                **({"error_example": example} if example else {}),
                "cpu_per_s": [round(c / args.seconds, 2) for c in cpu],
                "points_per_cpu_s": round(acked / max(0.1, sum(cpu))),
                "peak_rss_mib": [round(peak_rss_mib(p.proc.pid), 1) for p in procs],
                "cpu": meter.report(acked, len(lat))}
    finally:
        for p in procs:
            p.stop()


def drain_phase(role: str, cfg: Any, members: int, backlog: int, tmp: Path, logs: Path, console: Any) -> dict[str, Any]:
    from runstream.ops.broker import free_port
    from runstream.ops.stack import RoleProcess, scrape, wait_http
    from runstream.server.kafka import ensure_topics
    tag = uuid.uuid4().hex[:6]
    counter = "runstream_sink_rows_total{table=metric_points}" if role == "sink" else "runstream_processor_points_total"
    procs, ports = [], []
    t_start = time.monotonic()
    for i in range(members):
        c = copy.deepcopy(cfg)
        if role == "sink":
            c.sink.group_id, c.sink.sql_listen = f"scaling-sink-{tag}", ""
            c.clickhouse.path = str(tmp / f"store-{tag}-{i}")
            c.sink.metrics_port = port = free_port()
        else:
            c.processors.app_id = f"{cfg.processors.app_id}-{tag}"
            c.processors.metrics_port = port = free_port()
        asyncio.run(ensure_topics(c, acls=bool(c.kafka.credentials_dir)))  # grants this group its ACLs
        p = RoleProcess(role, c, logs, name=f"{role}{members}-{i}-{tag}")
        p.start()
        procs.append(p)
        ports.append(port)
    try:
        for p, port in zip(procs, ports):
            wait_http(f"http://127.0.0.1:{port}/metrics", 90, p)
        cpu0 = [cpu_seconds(p.proc.pid) or 0.0 for p in procs if p.proc]
        meter = CpuMeter({role: [p.proc.pid for p in procs if p.proc], "kafka": kafka_pids}).start()
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 900
        with console.status(f"{role} x{members} draining {backlog:,} points ...") as status:
            while time.monotonic() < deadline:
                done = sum(scrape(port).get(counter, 0.0) for port in ports)
                samples.append((time.monotonic(), done))
                status.update(f"{role} x{members}: {done:,.0f} of {backlog:,} points")
                if done >= backlog:
                    break
                time.sleep(0.25)
        meter.stop()
        cpu = [round((cpu_seconds(p.proc.pid) or 0.0) - c0, 1) for p, c0 in zip(procs, cpu0) if p.proc]
        done = samples[-1][1]
        lo = next(s for s in samples if s[1] >= 0.1 * backlog)
        hi = next((s for s in samples if s[1] >= 0.9 * backlog), samples[-1])
        rate = (hi[1] - lo[1]) / max(1e-3, hi[0] - lo[0])
        return {"members": members, "points": int(done), "drained": done >= backlog,
                "points_per_s": round(rate), "seconds_to_drain": round(samples[-1][0] - t_start, 1),
                "cpu_s": cpu, "points_per_cpu_s": round(done / max(0.1, sum(cpu))),
                "peak_rss_mib": [round(peak_rss_mib(p.proc.pid), 1) for p in procs], "cpu": meter.report(int(done))}
    finally:
        for p in procs:
            p.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--streams", type=int, default=64, help="Session streams per client process")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    args = p.parse_args()

    from rich.console import Console

    from runstream.ops.broker import KafkaBroker, free_port
    from runstream.ops.stack import isolated_config
    from runstream.server.auth import ensure_dev_token
    from runstream.server.kafka import ensure_topics
    console = Console(stderr=True, quiet=args.json)
    tmp = Path(tempfile.mkdtemp(prefix="runstream-scaling-"))
    logs = tmp / "logs"
    broker = KafkaBroker(tmp / "kafka")
    console.print(f"Starting Kafka in {tmp} ...")
    broker.start()
    try:
        cfg = broker.client_config(isolated_config(tmp / "data"))
        cfg.ingest.listen = f"127.0.0.1:{free_port()}"
        asyncio.run(ensure_topics(cfg, acls=bool(cfg.kafka.credentials_dir)))
        token = ensure_dev_token(cfg.tokens_path)
        kafka_pids[:] = [broker.proc.pid] if broker.proc else []
        out: dict[str, Any] = {"calibration": calibration(), "cores": os.cpu_count(), "partitions": cfg.kafka.partitions,
                               "batch_points": args.steps * args.metrics, "seconds": args.seconds,
                               "clients": args.clients, "streams_per_client": args.streams}
        out["ingest"] = [ingest_phase(cfg, token, n, args, logs, console) for n in (1, 2)]
        backlog = sum(r["points_acked"] for r in out["ingest"])
        out["backlog_points"] = backlog
        out["sink"] = [drain_phase("sink", cfg, n, backlog, tmp, logs, console) for n in (1, 2)]
        out["process"] = [drain_phase("process", cfg, n, backlog, tmp, logs, console) for n in (1, 2)]
        out["per_partition_points_per_s"] = min(out["sink"][0]["points_per_s"], out["process"][0]["points_per_s"])
        print(json.dumps(out))
        return 0 if all(r["drained"] for r in out["sink"] + out["process"]) and not any(
            r["errors"] for r in out["ingest"]) else 1
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
