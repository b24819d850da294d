"""The Session stream (one long-lived stream per client process, one message per flush) on the real pipeline: the
SDK uses it by default, a bad batch ends it with the accepted count, a restarted ingest costs no error, a revoked
token stops an open session, an ingest without it gets one call per flush, and busy ingest asks for fewer flushes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

import runstream
from runstream.ingest.server import IngestService, LoopLag, Publisher
from runstream.ops.broker import free_port
from runstream.ops.stack import InProcessRoles
from runstream.sdk.transport import GrpcTransport, SendError
from runstream.server.auth import TokenStore
from runstream.wire.config import IngestConfig, RunstreamConfig
from tests.conftest import Stack
from tests.helpers import counter, metric_batch, read_records, wait_until

ROOT = Path(__file__).resolve().parent.parent
# A job that sends, stays quiet while its channel pings every second (gRPC's keepalive trace on stderr), and sends
# again when told to on stdin.
QUIET_JOB = """
import sys
from runstream.sdk.transport import GrpcTransport
from tests.helpers import metric_batch
t = GrpcTransport(sys.argv[1], sys.argv[2], keepalive_s=1.0)
t.send([metric_batch("quiet-1", 5)])
print("sent", flush=True)
sys.stdin.readline()
t.send([metric_batch("quiet-2", 5)])
print("sent again", flush=True)
"""

# n sessions over 10 connections, one request each, sent at once; "sent" once the requests are out and 1 s has
# passed (the caller then lets ingest's loop go), then the counts as JSON.
BURST_JOB = """
import asyncio, json, sys
import grpc
from runstream.v1.ingest_pb2 import SessionAck, SessionRequest
from tests.helpers import metric_batch
addr, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

async def main():
    channels = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(10)]
    meta = (("authorization", "Bearer " + token),)
    calls = [channels[i % 10].stream_stream("/runstream.v1.Ingest/Session", request_serializer=SessionRequest.SerializeToString,
                                            response_deserializer=SessionAck.FromString)(metadata=meta) for i in range(n)]
    # A refused call's write fails; its read then says why.
    await asyncio.gather(*(c.write(SessionRequest(id=1, batches=[metric_batch(f"burst-{i}", 1)])) for i, c in enumerate(calls)),
                         return_exceptions=True)
    reads = [asyncio.ensure_future(c.read()) for c in calls]
    done, _ = await asyncio.wait(reads, timeout=1.0)
    print("sent", flush=True)
    await asyncio.wait(reads, timeout=60)
    acked, errors = 0, {}
    for r in reads:
        if not r.done() or r.exception() is not None:
            code = r.exception().code().name if r.done() and isinstance(r.exception(), grpc.aio.AioRpcError) else "NOT_DONE"
            errors[code] = errors.get(code, 0) + 1
        elif r.result().accepted == 1:
            acked += 1
    for c in calls:
        c.cancel()
    await asyncio.gather(*(ch.close() for ch in channels))
    print(json.dumps({"ended_while_held": len(done), "acked": acked, "errors": errors}), flush=True)

asyncio.run(main())
"""


def session_burst(roles: InProcessRoles, token: str, n: int) -> dict[str, Any]:
    """``n`` sessions opened at once over 10 connections while ingest's loop is held (a burst of reconnecting jobs
    on a saturated CPU), each sending one request (BURST_JOB, a process of its own); the loop is let go 1 s after the
    burst was sent. Returns the job's counts: sessions ended while the loop was held, acknowledged, errors by code."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # on ingest's loop: the load, not a wait
        held.set()
        release.wait(60)

    roles.loop.call_soon_threadsafe(hold)
    try:
        assert held.wait(10)
        with subprocess.Popen([sys.executable, "-c", BURST_JOB, roles.config.ingest.listen, token, str(n)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as job:
            assert job.stdout is not None and job.stdin is not None
            assert job.stdout.readline().strip() == "sent", "the burst job did not get its requests out"
            release.set()
            out, _ = job.communicate(timeout=120)
        return dict(json.loads(out))
    finally:
        release.set()


def test_a_fleet_connecting_at_once_has_no_session_refused(config: RunstreamConfig, token: str) -> None:
    """A fleet whose jobs open their sessions together while ingest's loop is busy (after an ingest restart, all
    reconnect): gRPC's core holds the new calls until the loop takes them, and past its backlog limit refuses some
    (gRPC's default limit is 1,000). With a limit of 100 the burst is refused in part, on arrival; with ingest's
    default (ingest.max_pending_calls) every session is acknowledged."""
    config.ingest.listen = f"127.0.0.1:{free_port()}"
    config.ingest.max_pending_calls = 100
    roles = InProcessRoles(config, ["ingest"]).start()
    try:
        small = session_burst(roles, token, 1500)
        # A refused call ends CANCELLED, or INTERNAL ("Internal error from Core") for a Python client whose write it
        # cut: the two errors a 2,000-job fleet saw.
        refused = sum(small["errors"].get(code, 0) for code in ("CANCELLED", "INTERNAL"))
        assert refused >= 1000 and small["ended_while_held"] >= 1000, small  # refused on arrival, before the loop was let go
        assert small["acked"] + refused == 1500, small
        roles.stop_role("ingest")
        config.ingest.max_pending_calls = IngestConfig().max_pending_calls
        roles.start_role("ingest")
        assert session_burst(roles, token, 1500) == {"ended_while_held": 0, "acked": 1500, "errors": {}}
    finally:
        roles.stop()


def test_requests_taken_in_one_turn_of_ingests_loop_share_records(config: RunstreamConfig, token: str) -> None:
    """A fleet's requests carry one batch each. Those ingest takes in one turn of its loop (here: 300 sessions that
    arrived while it was held) go to Kafka packed per partition, a few records instead of one per request, and the
    events topic holds every batch once."""
    from runstream.wire import encoding

    config.ingest.listen = f"127.0.0.1:{free_port()}"
    roles = InProcessRoles(config, ["ingest"]).start()
    try:
        records, batches = counter("runstream_ingest_records_total"), counter("runstream_ingest_batches_total")
        assert session_burst(roles, token, 300) == {"ended_while_held": 0, "acked": 300, "errors": {}}
        assert counter("runstream_ingest_batches_total") - batches == 300
        published = counter("runstream_ingest_records_total") - records
        assert published <= 60, f"{published} records for 300 one-batch requests"  # one per request before
    finally:
        roles.stop()

    on_topic = asyncio.run(read_records(config, config.kafka.events_topic, int(published)))
    assert len(on_topic) == published
    runs = sorted(b.run_id for m in on_topic for b in encoding.decode(m.value, m.headers))
    assert runs == sorted(f"burst-{i}" for i in range(300))


def session_messages(code: str = "OK") -> float:
    return counter("runstream_ingest_requests_total", method="Session", code=code)


def test_sdk_logs_over_one_session_exactly_once(stack: Stack, token: str, tmp_path: Path) -> None:
    before = session_messages()
    calls_before = counter("runstream_ingest_requests_total", method="SendStream", code="OK")
    transport = GrpcTransport(stack.ingest_addr, token)
    runs = [runstream.init("sess", f"job-{i}", transport=transport, spool_dir=str(tmp_path), flush_interval_s=0.05)
            for i in range(3)]
    for step in range(3000):
        for r in runs:
            r.log({"loss": 1.0 / (step + 1), "acc": step / 3000}, step=step)
    assert all(r.finish(timeout=60) for r in runs)
    assert stack.wait_points(18_000, where="project = 'sess'") == 18_000
    assert session_messages() - before >= 2  # flushes went as Session messages...
    assert counter("runstream_ingest_requests_total", method="SendStream", code="OK") == calls_before  # ...not calls
    assert stack.query("SELECT count(), uniqExact(run_id, metric, step) FROM {db}.metrics WHERE project = 'sess'") == [(18_000, 18_000)]
    transport.close()


def test_bad_batch_ends_the_session_with_the_accepted_count_and_the_next_send_works(stack: Stack, token: str) -> None:
    transport = GrpcTransport(stack.ingest_addr, token)
    transport.send([metric_batch("s-ok", 5)])
    bad = metric_batch("s-bad")
    bad.metrics.steps.append(99)
    with pytest.raises(SendError) as exc:
        transport.send([metric_batch("s-ok2", 7), bad, metric_batch("s-never")])
    assert exc.value.code == "INVALID_ARGUMENT" and "batches[1].metrics.steps" in str(exc.value)
    assert exc.value.accepted == 1 and not exc.value.retryable
    transport.send([metric_batch("s-after", 3)])  # a new session
    assert stack.wait_points(15, where="run_id IN ('s-ok', 's-ok2', 's-after')") == 15
    assert stack.count_points("run_id = 's-never'") == 0


@pytest.mark.slow
def test_a_restarted_ingest_costs_the_client_no_error(config: RunstreamConfig, token: str) -> None:
    config.ingest.listen = f"127.0.0.1:{free_port()}"
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    try:
        stack = Stack(config, roles)
        transport = GrpcTransport(config.ingest.listen, token)
        open_before = counter("runstream_ingest_sessions")
        transport.send([metric_batch("r-before", 10)])
        assert counter("runstream_ingest_sessions") == open_before + 1  # the session stays open, idle
        t0 = time.monotonic()
        roles.stop_role("ingest")
        # An idle session does not hold the stop's grace (5 s): nothing of it is waiting for an answer.
        assert time.monotonic() - t0 < 1.5
        roles.start_role("ingest")
        transport.send([metric_batch("r-after", 10)])  # the broken idle session is replaced once, silently
        assert stack.wait_points(20, where="run_id IN ('r-before', 'r-after')") == 20
    finally:
        roles.stop()


def test_revoking_the_token_stops_an_open_session(stack: Stack, token: str) -> None:
    secret = "rs_" + uuid.uuid4().hex
    data = yaml.safe_load(stack.config.tokens_path.read_text())
    data["tokens"].append({"token": secret, "name": "short-lived", "projects": ["*"], "scopes": ["ingest"]})
    stack.config.tokens_path.write_text(yaml.safe_dump(data))
    ingest = stack.roles.stages["ingest"][0]
    ingest.tokens._checked = 0
    transport = GrpcTransport(stack.ingest_addr, secret)
    transport.send([metric_batch("rev-1")])
    data["tokens"] = [t for t in data["tokens"] if t["token"] != secret]
    stack.config.tokens_path.write_text(yaml.safe_dump(data))
    ingest.tokens._checked = 0
    with pytest.raises(SendError) as exc:
        transport.send([metric_batch("rev-2")])
    assert exc.value.code == "UNAUTHENTICATED"


def test_an_ingest_without_session_gets_one_call_per_flush(stack: Stack, token: str) -> None:
    """An older ingest (no Session method): the transport falls back to SendStream and keeps delivering."""
    async def serve_old() -> tuple[grpc.aio.Server, int]:
        ingest = stack.roles.stages["ingest"][0]
        service = IngestService(stack.config, ingest.publisher, ingest.tokens)
        full = service.handler()
        old = grpc.method_handlers_generic_handler("runstream.v1.Ingest", {
            "SendStream": full.service(_Details("/runstream.v1.Ingest/SendStream"))})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((old,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port
    server, port = stack.roles.call(serve_old())
    try:
        transport = GrpcTransport(f"127.0.0.1:{port}", token)
        transport.send([metric_batch("old-1", 4)])
        assert not transport.use_session
        transport.send([metric_batch("old-2", 4)])
        assert stack.wait_points(8, where="run_id IN ('old-1', 'old-2')") == 8
    finally:
        stack.roles.call(server.stop(0))


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_busy_ingest_asks_for_longer_flush_intervals(tmp_path: Path) -> None:
    config = RunstreamConfig()
    config.ingest.max_inflight_batches = 1000
    service = IngestService(config, Publisher(config), TokenStore(tmp_path / "none.yaml"))
    hints = []
    for inflight in (0, 200, 250, 600, 1000, 5000):
        service.publisher.inflight = inflight
        hints.append(service.flush_hint_ms())
    assert hints[:2] == [0, 0] and hints[2] == 500 and hints[2] < hints[3] < hints[4] == 5000 == hints[5]
    # The SDK's sender waits the longer of its own interval and ingest's hint.
    from runstream.sdk.run import Sender, SenderConfig

    class Hinted:
        min_flush_interval_s = 2.0
        def send(self, batches) -> None: ...
        def close(self) -> None: ...
    sender = Sender(Hinted(), SenderConfig(flush_interval_s=0.1, spool_dir=str(tmp_path)))  # type: ignore[arg-type]
    waits: list[float] = []
    sender._wake.wait = lambda t=None: waits.append(t) or True  # type: ignore[method-assign, assignment, func-returns-value]
    sender._closing = True
    sender.run()
    assert waits == [pytest.approx(2.0, abs=0.05)]
    # The interval runs from the start of the last flush: a flush that took 0.3 s shortens the next wait by as much.
    sender = Sender(Hinted(), SenderConfig(flush_interval_s=0.1, spool_dir=str(tmp_path)))  # type: ignore[arg-type]
    sender._wake.wait = lambda t=None: waits.append(t) or True  # type: ignore[method-assign, assignment, func-returns-value]
    sender._flushed = time.monotonic() - 0.3
    sender._closing = True
    sender.run()
    assert waits[1] == pytest.approx(1.7, abs=0.05)


def test_a_saturated_ingest_loop_raises_the_hint_gradually_and_lowers_it_slowly() -> None:
    lag = LoopLag(busy_s=0.010, busy_requests_per_s=200)
    for _ in range(5):
        lag.observe(0.002, 1000)
    assert lag.hint_ms == 0  # not busy
    few = LoopLag(busy_s=0.010, busy_requests_per_s=200)
    for _ in range(60):  # late, but requests are few: the saturation is not theirs, fewer would free nothing
        few.observe(0.060, 50)
    assert few.hint_ms == 0 and few.seconds > 0.05
    hints = []
    for _ in range(60):  # 3 s at 60 ms late per tick, 1,000 requests/s
        lag.observe(0.060, 1000)
        hints.append(lag.hint_ms)
    first = next(i for i, h in enumerate(hints) if h)
    assert hints[first] == LoopLag.FIRST_HINT_MS and hints[first + 1] == pytest.approx(660)  # +10 % per busy tick
    assert hints[-1] == LoopLag.MAX_HINT_MS
    for _ in range(40):  # between half the limit and the limit: the hint holds
        lag.observe(0.008, 1000)
    assert LoopLag.FIRST_HINT_MS < lag.hint_ms <= LoopLag.MAX_HINT_MS
    held = lag.hint_ms
    falling = []
    for _ in range(400):  # idle: 1 % per tick, then off below the first hint
        lag.observe(0.0, 1000)
        falling.append(lag.hint_ms)
    assert 0 < falling[20] < held and falling[-1] == 0
    service = IngestService(RunstreamConfig(), Publisher(RunstreamConfig()), TokenStore(Path("/nonexistent/tokens.yaml")), lag)
    lag.hint_ms = 1500.0
    # Only clients whose requests are small are asked to wait: a large request already spreads the per-request cost.
    assert service.flush_hint_ms(50) == 1500 and service.flush_hint_ms(IngestService.AMORTIZED_REQUEST_POINTS) == 0
    off = LoopLag(busy_s=0.0)
    for _ in range(60):
        off.observe(0.5, 5000)
    assert off.hint_ms == 0 and off.seconds > 0.1  # measured, never hinted


@pytest.mark.slow
def test_a_saturated_ingest_asks_the_sdk_to_flush_less_often_until_it_recovers(config: RunstreamConfig, token: str) -> None:
    """The real ingest's event loop kept busy (a task that holds it 80 ms of every 100 ms, as a saturated CPU would):
    its acks carry a flush hint the SDK's transport picks up; freed, the hint falls back to 0."""
    config.ingest.listen = f"127.0.0.1:{free_port()}"
    config.ingest.busy_loop_lag_ms = 20
    config.ingest.busy_requests_per_s = 0  # one client sending one request at a time
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    hogging = True

    async def hog() -> None:
        while hogging:
            time.sleep(0.08)  # the load, not a wait: a blocking call holds ingest's loop 80 ms, as a saturated CPU would
            await asyncio.sleep(0.02)

    try:
        stack = Stack(config, roles)
        transport = GrpcTransport(config.ingest.listen, token)
        transport.send([metric_batch("hint-0", 4)])
        busy = asyncio.run_coroutine_threadsafe(hog(), roles.loop)
        sent, deadline = 1, time.monotonic() + 30
        while transport.min_flush_interval_s == 0 and time.monotonic() < deadline:
            transport.send([metric_batch(f"hint-{sent}", 4)])
            sent += 1
        assert transport.min_flush_interval_s >= LoopLag.FIRST_HINT_MS / 1000
        hogging = False
        busy.result(10)
        deadline = time.monotonic() + 60
        while transport.min_flush_interval_s > 0 and time.monotonic() < deadline:
            transport.send([metric_batch(f"hint-{sent}", 4)])
            sent += 1
            time.sleep(0.2)  # a job's flush pace; the loop ends on the signal asserted below
        assert transport.min_flush_interval_s == 0
        assert stack.wait_points(4 * sent, where="run_id LIKE 'hint-%'") == 4 * sent
    finally:
        hogging = False
        roles.stop()


def test_a_quiet_job_keeps_its_connection_through_keepalive_pings(config: RunstreamConfig, token: str) -> None:
    """A job quiet for minutes (a long evaluation) pings ingest every minute to find a dropped connection. gRPC's
    default would count each ping as abuse and end the connection with GOAWAY "too_many_pings" after the third,
    printing an error into the job's output; ingest accepts pings down to ingest.client_ping_min_s apart. Here the
    same at a thousandth of the scale: a ping a second, accepted down to 0.5 s."""
    config.ingest.client_ping_min_s = 0.5
    roles = InProcessRoles(config, ["ingest"]).start()
    trace: list[str] = []
    try:
        with subprocess.Popen([sys.executable, "-c", QUIET_JOB, f"127.0.0.1:{roles.stages['ingest'][0].port}", token],
                              cwd=ROOT, env={**os.environ, "GRPC_TRACE": "http_keepalive", "GRPC_VERBOSITY": "debug"},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
            assert job.stdin is not None and job.stdout is not None and job.stderr is not None
            reader = threading.Thread(target=lambda: trace.extend(iter(job.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
            reader.start()
            try:
                assert job.stdout.readline().strip() == "sent"
                sent_at = len(trace)
                # Six pings, or the GOAWAY that ends the connection (asserted on below).
                wait_until(lambda: refused(trace) or sum(" Ping " in line and " sent " in line for line in trace[sent_at:]) >= 6,
                           30, lambda: "six keepalive pings from the quiet job; its trace ends:\n" + "".join(trace[-5:]))
                job.stdin.write("go\n")
                job.stdin.flush()
                assert job.stdout.readline().strip() == "sent again"  # (after a GOAWAY on a new connection)
                assert job.wait(30) == 0
            finally:
                if job.poll() is None:
                    job.kill()
            reader.join(10)
        assert not refused(trace)
    finally:
        roles.stop()


def refused(trace: list[str]) -> list[str]:
    return [line for line in trace if "GOAWAY" in line or "too_many_pings" in line]
