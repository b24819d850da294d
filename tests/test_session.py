"""The Session stream (one long-lived stream per client process, one message per flush) on the real pipeline: the
SDK uses it by default, a bad batch ends it with the accepted count, a restarted ingest costs no error, a revoked
token stops an open session, an ingest without it gets one call per flush, and busy ingest asks for fewer flushes."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
import yaml

import runstream
from runstream.ingest.server import IngestService, Publisher
from runstream.ops.broker import free_port
from runstream.ops.stack import InProcessRoles
from runstream.sdk.transport import GrpcTransport, SendError
from runstream.server.auth import TokenStore
from runstream.wire.config import RunstreamConfig
from tests.conftest import Stack
from tests.helpers import counter, metric_batch


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


def test_a_restarted_ingest_costs_the_client_no_error(config: RunstreamConfig, token: str) -> None:
    config.ingest.listen = f"127.0.0.1:{free_port()}"
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    try:
        stack = Stack(config, roles)
        transport = GrpcTransport(config.ingest.listen, token)
        transport.send([metric_batch("r-before", 10)])
        roles.stop_role("ingest")
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
    assert waits == [2.0]
