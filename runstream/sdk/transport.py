"""How the SDK reaches ingest: a one-method Transport, and its gRPC implementation.

Tests pass their own Transport (recording batches, or failing on purpose);
everything else uses GrpcTransport.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc

from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.v1.ingest_pb2 import Batch
from runstream.wire.config import RunstreamConfig

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MAX_REQUEST_BYTES = 4 * 1024 * 1024

log = logging.getLogger("runstream")


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


class _Session:
    """One open Session stream: requests go in through a queue, acks come back in order."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self.requests: queue.Queue[ingest_pb2.SessionRequest | None] = queue.Queue()
        self.call = stub.Session(iter(self.requests.get, None), metadata=metadata)
        self.next_id = 1
        self.timed_out = False

    def expire(self) -> None:
        self.timed_out = True
        self.call.cancel()

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


class GrpcTransport:
    """Sends over one long-lived Session stream (one message per flush); against an ingest without Session, over
    one SendStream call per flush. ``send`` returns once ingest acknowledged every batch, or raises SendError."""

    def __init__(self, target: str, token: str | None, *, timeout_s: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None, session: bool = True,
                 keepalive_s: float = 60.0) -> None:
        # Keepalive pings find a connection a NAT or a proxy dropped while the job was quiet; ingest accepts them
        # down to ingest.client_ping_min_s apart.
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.enable_retries", 0),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000),
                   ("grpc.keepalive_time_ms", int(keepalive_s * 1000)), ("grpc.keepalive_timeout_ms", 20_000),
                   ("grpc.http2.max_pings_without_data", 0),
                   ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive_s * 1000))]
        self.channel = (grpc.secure_channel(target, credentials, options=options) if credentials
                        else grpc.insecure_channel(target, options=options))
        self.stub = ingest_pb2_grpc.IngestStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s
        self.use_session = session
        self.min_flush_interval_s = 0.0  # ingest's flow-control hint, from the last SessionAck
        self._session: _Session | None = None
        self._lock = threading.Lock()

    def send(self, batches: Sequence[Batch]) -> None:
        with self._lock:
            if self.use_session:
                try:
                    self._send_session(batches)
                    return
                except _Unimplemented:
                    log.info("runstream: this ingest has no Session stream; sending one call per flush")
                    self.use_session = False
            self._send_stream(batches)

    def _send_stream(self, batches: Sequence[Batch]) -> None:
        try:
            self.stub.SendStream(_requests(batches), timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise _send_error(exc, 0) from None

    def _send_session(self, batches: Sequence[Batch]) -> None:
        for attempt in (0, 1):
            s = self._session
            reused = s is not None
            if s is None:
                s = self._session = _Session(self.stub, self.metadata)
            try:
                self._exchange(s, batches)
                return
            except (grpc.RpcError, _StreamEnded) as exc:
                self._session = None
                s.close()
                code = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise _Unimplemented() from None
                done = getattr(exc, "runstream_done", 0)
                # A stream that broke while idle (a restarted ingest, a dropped connection) gets one fresh try.
                if (attempt == 0 and reused and done == 0 and not s.timed_out
                        and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)):
                    continue
                raise _send_error(exc, done) from None

    def _exchange(self, s: _Session, batches: Sequence[Batch]) -> None:
        """Send the batches as one or more requests and wait for each ack; an RpcError carries how many were done."""
        done = 0
        timer = threading.Timer(self.timeout_s, s.expire)  # a deadline per exchange, not per stream
        timer.daemon = True
        timer.start()
        try:
            for chunk in _chunks(batches):
                rid = s.next_id
                s.next_id += 1
                s.requests.put(ingest_pb2.SessionRequest(id=rid, batches=chunk))
                try:
                    ack = next(s.call)
                except StopIteration:
                    raise _StreamEnded(done) from None
                except grpc.RpcError as exc:
                    exc.runstream_done = done + _accepted(exc)
                    raise
                if ack.id != rid or ack.accepted != len(chunk):
                    raise _StreamEnded(done, f"ingest acknowledged request {ack.id} ({ack.accepted} batches), expected "
                                             f"{rid} ({len(chunk)})")
                done += len(chunk)
                self.min_flush_interval_s = ack.min_flush_interval_ms / 1000
        finally:
            timer.cancel()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        self.channel.close()


class _Unimplemented(Exception):
    pass


class _StreamEnded(Exception):
    """The session ended without a status (ingest is stopping) or answered out of turn: retry on a new one."""

    def __init__(self, done: int, details: str = "ingest ended the session") -> None:
        self.runstream_done = done
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def _accepted(exc: Any) -> int:
    trailing = dict(exc.trailing_metadata() or ())
    return int(trailing.get("runstream-accepted", 0) or 0)


def _send_error(exc: Any, done: int) -> SendError:
    code = exc.code()
    accepted = done if done else _accepted(exc)
    return SendError(code.name if code else "UNKNOWN", exc.details() or "", accepted=accepted, retryable=code in RETRYABLE)


def _chunks(batches: Sequence[Batch]) -> Iterator[list[Batch]]:
    chunk: list[Batch] = []
    size = 0
    for b in batches:
        n = b.ByteSize()
        if chunk and size + n > MAX_REQUEST_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(b)
        size += n
    if chunk:
        yield chunk


def _requests(batches: Sequence[Batch]) -> Iterator[ingest_pb2.SendRequest]:
    for chunk in _chunks(batches):
        yield ingest_pb2.SendRequest(batches=chunk)
