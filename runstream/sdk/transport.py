"""How the SDK reaches ingest: a one-method Transport, and its gRPC implementation.

Tests pass their own Transport (recording batches, or failing on purpose);
everything else uses GrpcTransport.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import grpc

from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.v1.ingest_pb2 import Batch
from runstream.wire.config import RunstreamConfig

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MAX_REQUEST_BYTES = 4 * 1024 * 1024


class SendError(Exception):
    """A send failed. ``accepted`` leading batches are durable anyway; ``retryable`` says whether to try the rest again."""

    def __init__(self, code: str, message: str, *, accepted: int, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.accepted = accepted
        self.retryable = retryable


class Transport(Protocol):
    def send(self, batches: Sequence[Batch]) -> None:
        """Deliver every batch durably, or raise SendError."""

    def close(self) -> None: ...


def tls_credentials(ca: str | None = None, cert: str | None = None, key: str | None = None) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files: the CA that signed ingest's certificate, and optionally a client
    certificate and key (when ingest requires them)."""
    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))


def connect(config: RunstreamConfig, *, url: str | None = None, token: str | None = None) -> GrpcTransport:
    """A transport to ingest as the client config says: ``url``/``token`` arguments, else ``client.url`` /
    ``client.token``, else the local stack's stack.json; TLS when ``client.tls_ca`` is set."""
    c = config.client
    target, secret = resolve(config, url=url, token=token)
    credentials = tls_credentials(c.tls_ca, c.tls_cert or None, c.tls_key or None) if c.tls_ca else None
    return GrpcTransport(target, secret, credentials=credentials)


def resolve(config: RunstreamConfig, *, url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """(ingest address, token) as ``connect`` picks them."""
    c = config.client
    info = config.stack_info()
    return url or c.url or info.get("ingest") or "127.0.0.1:50051", token or c.token or info.get("token")


class GrpcTransport:
    def __init__(self, target: str, token: str | None, *, timeout_s: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000)]
        self.channel = (grpc.secure_channel(target, credentials, options=options) if credentials
                        else grpc.insecure_channel(target, options=options))
        self.stub = ingest_pb2_grpc.IngestStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def send(self, batches: Sequence[Batch]) -> None:
        try:
            self.stub.SendStream(_requests(batches), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            code = exc.code()
            trailing = dict(exc.trailing_metadata() or ())
            accepted = int(trailing.get("runstream-accepted", 0) or 0)
            raise SendError(code.name if code else "UNKNOWN", exc.details() or "", accepted=accepted,
                            retryable=code in RETRYABLE) from None

    def close(self) -> None:
        self.channel.close()


def _requests(batches: Sequence[Batch]) -> Iterator[ingest_pb2.SendRequest]:
    chunk: list[Batch] = []
    size = 0
    for b in batches:
        n = b.ByteSize()
        if chunk and size + n > MAX_REQUEST_BYTES:
            yield ingest_pb2.SendRequest(batches=chunk)
            chunk, size = [], 0
        chunk.append(b)
        size += n
    if chunk:
        yield ingest_pb2.SendRequest(batches=chunk)
