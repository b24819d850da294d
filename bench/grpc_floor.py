"""The gRPC floor under ingest's cost per request (issue #29, item 3): ingest's own Session stream (SessionRequest in,
SessionAck out, the fleet's path) served by a handler that only decodes and answers, in two servers gRPC's Python
stack offers: grpc.aio (what ingest runs) and the sync server (the C core's completion queue, handlers on a thread
pool). The same client load for each: ``--streams`` long-lived sessions (one per simulated job), each sending one
request of ``--points`` points every ``--interval-s`` seconds, from one client process.

    python bench/grpc_floor.py --json

Prints one JSON line: for each server, its CPU per request (core-µs, /proc, the whole process) and per million
points, the ack latency p50/p99 and the requests answered, beside the client's CPU. Leaves out what ingest does on
top (authentication, validation, packing, Kafka): ingest's own figure is bench/fleet.py's; the difference is ingest's
work, this figure the floor under it. Client and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import calibration, cpu_seconds  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct  # noqa: E402

from runstream.v1 import ingest_pb2, ingest_pb2_grpc  # noqa: E402

OPTIONS = [("grpc.max_receive_message_length", 64 << 20)]


def _ack(req: ingest_pb2.SessionRequest) -> ingest_pb2.SessionAck:
    return ingest_pb2.SessionAck(id=req.id, accepted=len(req.batches))


class SyncIngest(ingest_pb2_grpc.IngestServicer):
    def Session(self, request_iterator, context):  # type: ignore[no-untyped-def]
        for req in request_iterator:
            yield _ack(req)


class AioIngest(ingest_pb2_grpc.IngestServicer):
    async def Session(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for req in request_iterator:
            yield _ack(req)


def serve(mode: str, port: int, threads: int) -> None:
    """One server until killed; prints 'ready' once it listens."""
    if mode == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=OPTIONS,
                                           maximum_concurrent_rpcs=None)
        ingest_pb2_grpc.add_IngestServicer_to_server(SyncIngest(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("ready", flush=True)
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server(options=OPTIONS)
        ingest_pb2_grpc.add_IngestServicer_to_server(AioIngest(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()
    asyncio.run(main())


def request(points: int, run: int) -> ingest_pb2.SessionRequest:
    b = ingest_pb2.Batch(batch_id=os.urandom(16).hex(), project="floor", run_id=f"run-{run}", seq=1, created_ms=1)
    b.metrics.names.extend(["loss", "acc"])
    b.metrics.name_index.extend(i % 2 for i in range(points))
    b.metrics.steps.extend(i // 2 for i in range(points))
    b.metrics.timestamps_ms.extend([1_700_000_000_000 + i for i in range(points)])
    b.metrics.values.extend(1.0 / (i + 1) for i in range(points))
    return ingest_pb2.SessionRequest(batches=[b])


async def load(port: int, streams: int, points: int, interval_s: float, seconds: float) -> dict[str, object]:
    """``streams`` sessions, each one request every ``interval_s``, waiting for its ack, for ``seconds``."""
    lat: list[float] = []
    answered = 0
    stop = time.monotonic() + seconds
    template = request(points, 0).SerializeToString()

    async def session(i: int) -> None:
        nonlocal answered
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
            call = ingest_pb2_grpc.IngestStub(ch).Session()
            n = 0
            await asyncio.sleep(interval_s * i / streams)  # spread over the interval, as independent jobs are
            while time.monotonic() < stop:
                started = time.perf_counter()
                req = ingest_pb2.SessionRequest.FromString(template)
                req.id = n
                await call.write(req)
                ack = await call.read()
                assert ack.id == n
                lat.append((time.perf_counter() - started) * 1000)
                answered += 1
                n += 1
                await asyncio.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
            await call.done_writing()
    await asyncio.gather(*(session(i) for i in range(streams)))
    return {"answered": answered, "ack_p50_ms": pct(lat, 0.5, 2), "ack_p99_ms": pct(lat, 0.99, 2)}


def measure(mode: str, args: argparse.Namespace) -> dict[str, object]:
    from runstream.ops.broker import free_port
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", mode, "--port", str(port),
                               "--threads", str(args.threads)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        asyncio.run(load(port, args.streams, args.points, args.interval_s, 2.0))  # warm-up: connections, code paths
        before, client_before = cpu_seconds(server.pid) or 0.0, time.process_time()
        out = asyncio.run(load(port, args.streams, args.points, args.interval_s, args.seconds))
        server_s = (cpu_seconds(server.pid) or 0.0) - before
        client_s = time.process_time() - client_before
    finally:
        server.kill()
        server.wait()
    n = int(out["answered"])  # type: ignore[call-overload]
    return {**out, "requests_per_s": round(n / args.seconds), "server_core_us_per_request": round(server_s / n * 1e6, 1),
            "server_core_s_per_m_points": round(server_s / (n * args.points) * 1e6, 3),
            "server_cores": round(server_s / args.seconds, 3), "client_core_us_per_request": round(client_s / n * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", choices=["aio", "sync"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help="the sync server's handler threads (0: one per stream, "
                    "since a streaming call holds its thread for its whole life)")
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--points", type=int, default=100, help="points per request")
    ap.add_argument("--interval-s", type=float, default=0.25, help="each stream's time between requests")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.threads = args.threads or args.streams
    if args.serve:
        serve(args.serve, args.port, args.threads)
        return
    out: dict[str, object] = {"streams": args.streams, "points_per_request": args.points, "interval_s": args.interval_s,
                              "seconds": args.seconds, "calibration": calibration()}
    for mode in ("aio", "sync"):
        out[mode] = measure(mode, args)
        if not args.json:
            print(mode, out[mode], file=sys.stderr)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
