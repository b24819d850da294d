"""Fuzzing the ingest service (hypothesis): random bytes, truncated and oversized messages, invalid UTF-8,
huge names, extreme numbers. Every answer is a proper gRPC status within a deadline, the server keeps
serving, and a concurrent good client loses nothing."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.v1.ingest_pb2 import Batch, SendRequest
from tests.conftest import BackgroundClient, Stack
from tests.helpers import metric_batch

OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
# INTERNAL or UNKNOWN would mean an input reached code that did not expect it: a bug, never an answer.


def raw_call(channel: grpc.Channel, token: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary("/runstream.v1.Ingest/Send", request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
    try:
        call(payload, metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def valid_batch(project: str = "fuzz") -> Batch:
    return metric_batch("fuzz-run", 1, project=project)


def field(num: int, wire: int, data: bytes) -> bytes:
    """One protobuf field: tag, then a length prefix for length-delimited data."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out
    return varint(num << 3 | wire) + (varint(len(data)) + data if wire == 2 else data)


payloads = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda n: SendRequest(batches=[valid_batch()]).SerializeToString()[:n], st.integers(0, 60)),
    # invalid UTF-8 in a string field (Batch.project) inside SendRequest.batches
    st.builds(lambda junk: field(1, 2, field(2, 2, junk) + field(1, 2, uuid.uuid4().hex.encode())),
              st.binary(min_size=1, max_size=64).filter(lambda b: not _utf8(b))),
    st.builds(lambda name: SendRequest(batches=[valid_batch(project=name)]).SerializeToString(),
              st.text(min_size=0, max_size=5000)),
    st.builds(lambda v, s: _metrics(v, s), st.floats(allow_nan=True, allow_infinity=True),
              st.integers(-(2**63), 2**63 - 1)),
)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _metrics(value: float, step: int) -> bytes:
    b = valid_batch()
    b.metrics.values[0] = value
    b.metrics.steps[0] = step
    b.metrics.timestamps_ms[0] = step
    return SendRequest(batches=[b]).SerializeToString()


# The in-process stack's Kafka clients (aiokafka) draw from the global random module on their own threads while
# hypothesis generates payloads; hypothesis reads that as the strategy using random. It does not.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning")
def test_ingest_survives_fuzzing_and_good_clients_lose_nothing(stack: Stack, token: str, tmp_path: Path) -> None:
    seen: set[grpc.StatusCode] = set()
    with BackgroundClient(stack.ingest_addr, token, "fuzz-good", tmp_path) as good, \
            grpc.insecure_channel(stack.ingest_addr, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
        @given(payloads)
        def fuzz(payload: bytes) -> None:
            code = raw_call(channel, token, payload)
            assert code in OK_CODES, code
            seen.add(code)

        fuzz()
        # Oversized: above the server's receive limit.
        assert raw_call(channel, token, b"\x0a" + struct.pack("B", 0) * (40 << 20)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    # The server still serves, and the good client's every point landed exactly once.
    acked = good.acked
    assert acked > 0
    assert stack.wait_points(acked, where="project = 'fuzz-good'") == acked
    assert stack.count_points("project = 'fuzz-good'") == acked
