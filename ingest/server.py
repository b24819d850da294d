"""gRPC ingest: authenticate, validate, publish to Kafka, answer only once Kafka acknowledged.

An OK answer means every batch of the call is durable in Kafka (acks=all,
idempotent producer). Errors map to gRPC status in one place
(:func:`status_for`): bad input INVALID_ARGUMENT naming the field, tokens
UNAUTHENTICATED / PERMISSION_DENIED, Kafka down UNAVAILABLE, too much in flight
RESOURCE_EXHAUSTED. Nothing is buffered beyond ``max_inflight_batches``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from google.protobuf.message import DecodeError

from runstream.ingest.admin import AdminService
from runstream.ingest.validate import validate_batch
from runstream.server import telemetry as tm
from runstream.server.auth import Token, TokenStore, authorize
from runstream.server.governance import Follower
from runstream.server.kafka import FATAL_PRODUCER_ERRORS, client_args
from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.wire import audit, encoding
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import (
    AuthError,
    ConfigError,
    Overloaded,
    PermissionDenied,
    RunstreamError,
    Unavailable,
    ValidationError,
)

log = logging.getLogger("runstream.ingest")

ACCEPTED_KEY = "runstream-accepted"


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The one error translator of this boundary."""
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


@asynccontextmanager
async def map_kafka_errors(on_error: Callable[[BaseException], None] | None = None) -> AsyncIterator[None]:
    try:
        yield
    except KafkaError as exc:
        if on_error is not None:
            on_error(exc)
        raise Unavailable(f"Kafka is unavailable ({type(exc).__name__}: {exc}); retry with backoff") from exc
    except TimeoutError as exc:
        raise Unavailable("Kafka did not acknowledge in time; retry with backoff") from exc


def _retrieved(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class Publisher:
    """Publishes batches and tracks how many are in flight. A producer that hits a fatal error is replaced (the
    calls that saw it answer UNAVAILABLE and their clients resend; storage dedups on the batch id)."""

    def __init__(self, config: RunstreamConfig) -> None:
        self.config = config
        self.producer: AIOKafkaProducer | None = None
        self.inflight = 0
        self._rebuilding: asyncio.Task[None] | None = None
        # Requests' batches waiting for the next flush, which packs all of them per partition: (their partitions'
        # groups, the batches in request order, the request's waiter).
        self._queue: list[tuple[dict[int, list[tuple[ingest_pb2.Batch, bytes]]], list[ingest_pb2.Batch], asyncio.Future]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flushed_at = 0.0  # the event loop's clock at the last flush
        self._partition_of: dict[str, int] = {}  # run id -> partition, for the current partition count
        self._partition_count = 0

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_args(self.config), acks="all", enable_idempotence=True,
            linger_ms=2, max_batch_size=1024 * 1024, max_request_size=self.config.kafka.max_record_bytes + 4096,
            request_timeout_ms=int(self.config.ingest.publish_timeout_s * 1000), retry_backoff_ms=200)

    async def start(self) -> None:
        self.producer = self._new_producer()
        await self.producer.start()

    async def stop(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._rebuilding is not None:
            await asyncio.gather(self._rebuilding, return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None

    def _fatal(self, exc: BaseException) -> None:
        """Replace the producer once per failure, in the background (the failing call answers at once)."""
        if not isinstance(exc, FATAL_PRODUCER_ERRORS) or (self._rebuilding is not None and not self._rebuilding.done()):
            return
        log.warning("Kafka producer hit %s (%s); replacing it.", type(exc).__name__, exc)
        self._rebuilding = asyncio.create_task(self._rebuild(), name="producer-rebuild")

    async def _rebuild(self) -> None:
        old, fresh = self.producer, self._new_producer()
        await fresh.start()
        self.producer = fresh
        tm.INGEST_PRODUCER_REBUILDS.inc()
        if old is not None:
            try:
                await old.stop()
            except Exception:  # its pending sends fail; their calls already answered or will answer UNAVAILABLE
                log.exception("Stopping the replaced producer failed.")

    async def publish(self, batch: ingest_pb2.Batch) -> asyncio.Future:
        """Queue one batch; the returned future resolves when Kafka acknowledged it."""
        return (await self.publish_many([batch]))[0]

    async def publish_many(self, batches: list[ingest_pb2.Batch], values: list[bytes] | None = None) -> list[asyncio.Future]:
        """Queue a request's batches, in order (``values``: their serialized bytes, when the caller has them); one
        future per batch, resolved when Kafka acknowledged the record that holds it. Requests queued until the next
        flush go out together, packed per partition (runstream.wire.encoding): a fleet's one-batch requests become
        fewer records and produce calls, and every stage after ingest pays per record. A flush comes at once, or
        ``ingest.publish_window_ms`` after the last one, whichever is later: a quiet ingest sends each request at
        once."""
        if not batches:
            return []
        if self.inflight >= self.config.ingest.max_inflight_batches:
            raise Overloaded(f"{self.inflight} batches are waiting for Kafka; retry later")
        assert self.producer is not None
        # Serialized once (a batch of 3,000 points takes about 90 µs): sized here, sent as these bytes.
        values = values if values is not None else [b.SerializeToString() for b in batches]
        for value in values:  # refused here, alone, not in the flush with other requests' batches
            encoding.check_size(len(value), self.config.kafka.max_record_bytes)
        async with map_kafka_errors(self._fatal):  # once per request: it is a generator-based context
            partitions = sorted(await self.producer.partitions_for(self.config.kafka.events_topic))
        if len(partitions) != self._partition_count or len(self._partition_of) > 100_000:
            self._partition_of.clear()
            self._partition_count = len(partitions)
        groups: dict[int, list[tuple[ingest_pb2.Batch, bytes]]] = {}
        for b, value in zip(batches, values):  # the partition the key would choose (Kafka's default partitioner)
            partition = self._partition_of.get(b.run_id)
            if partition is None:
                partition = partitions[(murmur2(b.run_id.encode()) & 0x7FFFFFFF) % len(partitions)]
                self._partition_of[b.run_id] = partition
            groups.setdefault(partition, []).append((b, value))
        waiter: asyncio.Future[list[asyncio.Future]] = asyncio.get_running_loop().create_future()
        self._queue.append((groups, batches, waiter))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="publish-flush")
        return await waiter

    async def _flush(self) -> None:
        """Send what the queue holds, packed per partition, until it is empty; each request's waiter gets its
        batches' record futures, or the error that stopped the flush (its client resends; storage dedups)."""
        topic = self.config.kafka.events_topic
        loop = asyncio.get_running_loop()
        window = self.config.ingest.publish_window_ms / 1000
        while self._queue:
            if (wait := self._flushed_at + window - loop.time()) > 0:
                await asyncio.sleep(wait)  # requests come often: gather the next ones too
            self._flushed_at = loop.time()
            queued, self._queue = self._queue, []
            by_partition: dict[int, list[tuple[ingest_pb2.Batch, bytes]]] = {}
            for groups, _, _ in queued:
                for partition, group in groups.items():
                    by_partition.setdefault(partition, []).extend(group)
            record_of: dict[int, asyncio.Future] = {}  # id(batch) -> its record's future
            try:
                assert self.producer is not None
                async with map_kafka_errors(self._fatal):
                    for partition, group in by_partition.items():
                        at = 0
                        for rec, n in encoding.pack_encoded(group, max_record_bytes=self.config.kafka.max_record_bytes):
                            fut = await self.producer.send(topic, rec.value, key=rec.key, headers=rec.headers,
                                                           partition=partition)
                            self._count_inflight(fut, n)
                            tm.INGEST_RECORDS.inc()
                            for b, _ in group[at:at + n]:
                                record_of[id(b)] = fut
                            at += n
            except asyncio.CancelledError:
                for _, _, waiter in queued:
                    waiter.cancel()
                raise
            except Exception as exc:
                for _, _, waiter in queued:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for _, batches, waiter in queued:
                if not waiter.done():  # a cancelled request's batches went all the same: at least once
                    waiter.set_result([record_of[id(b)] for b in batches])

    def _count_inflight(self, fut: asyncio.Future, n: int) -> None:
        self.inflight += n
        tm.INGEST_INFLIGHT.inc(n)

        def done(_: asyncio.Future) -> None:
            self.inflight -= n
            tm.INGEST_INFLIGHT.dec(n)
        fut.add_done_callback(done)

    async def publish_audit(self, rec: ingest_pb2.AuditRecord) -> asyncio.Future:
        """Queue one audit record (keyed by project: one partition keeps a project's trail in order)."""
        assert self.producer is not None
        async with map_kafka_errors(self._fatal):
            return await self.producer.send(self.config.kafka.audit_topic, rec.SerializeToString(), key=rec.project.encode())

    async def wait(self, futures: list[asyncio.Future]) -> None:
        if not futures:
            return
        # One deadline over plain awaits: no gather and no wait_for wrapper per request (ingest's hot path). As
        # before, a timeout cancels the awaited future and answers UNAVAILABLE.
        try:
            async with map_kafka_errors(self._fatal), asyncio.timeout(self.config.ingest.publish_timeout_s):
                for fut in futures:
                    await fut
        except BaseException:
            for fut in futures:  # the outcome of those not awaited is of no interest now: never "not retrieved"
                fut.add_done_callback(_retrieved)
            raise


class IngestService(ingest_pb2_grpc.IngestServicer):
    def __init__(self, config: RunstreamConfig, publisher: Publisher, tokens: TokenStore,
                 loop_lag: LoopLag | None = None) -> None:
        self.config = config
        self.publisher = publisher
        self.tokens = tokens
        self.loop_lag = loop_lag
        self.busy = 0  # requests between their arrival and their answer: what a stop waits for
        self.draining = False

    def _check(self, batch: ingest_pb2.Batch, where: str, token: Token, seqs: dict[str, int]) -> tuple[int, bytes]:
        """The batch's points and its serialized bytes (what is published), or the refusal naming its index."""
        points = validate_batch(batch, self.config.ingest, where)
        value = batch.SerializeToString()
        size, limit = len(value), self.config.kafka.max_record_bytes
        if size > limit:  # refused here, at its index, so the client knows which batch to drop
            raise ValidationError(where, f"is {size} bytes encoded; the limit is {limit} (kafka.max_record_bytes). "
                                         "Send smaller batches.")
        authorize(token, batch.project, "ingest")
        last = seqs.get(batch.run_id, 0)
        if batch.seq <= last:
            raise ValidationError(f"{where}.seq", f"{batch.seq} does not follow {last} for run {batch.run_id!r} in this call")
        seqs[batch.run_id] = batch.seq
        return points, value

    async def _publish_batches(self, batches: Iterable[ingest_pb2.Batch], token: Token, context: grpc.aio.ServicerContext,
                               seqs: dict[str, int], futures: list[asyncio.Future], audit_futures: list[asyncio.Future]) -> int:
        """Validate the batches, publish those before the first one refused (packed per partition) and the audit
        record of a run's start, finish or resume, appending their Kafka futures; returns their points, or raises
        the refusal once the earlier batches are published."""
        points = 0
        good: list[ingest_pb2.Batch] = []
        values: list[bytes] = []
        refused: RunstreamError | None = None
        for batch in batches:
            try:
                n, value = self._check(batch, f"batches[{len(futures) + len(good)}]", token, seqs)
            except RunstreamError as exc:
                if isinstance(exc, ValidationError):
                    tm.INGEST_REJECTED.labels("invalid").inc()
                refused = exc
                break
            points += n
            good.append(batch)
            values.append(value)
        futures.extend(await self.publisher.publish_many(good, values))
        for batch in good:
            kind = batch.WhichOneof("body")
            if kind in ("run_start", "run_finish", "run_resume"):
                audit_futures.append(await self.publisher.publish_audit(run_audit(batch, kind, token.name, context.peer() or "")))
        if refused is not None:
            raise refused
        return points

    async def _refuse(self, exc: RunstreamError, futures: list[asyncio.Future], context: grpc.aio.ServicerContext,
                      method: str) -> None:
        """End the call with the error's status. Batches published before the failure are durable once Kafka acks
        them: the trailer says how many, so a client resends only the rest."""
        code = status_for(exc)
        accepted = 0
        try:
            await self.publisher.wait(futures)
            accepted = len(futures)
        except RunstreamError:
            pass
        context.set_trailing_metadata(((ACCEPTED_KEY, str(accepted)),))
        if code != grpc.StatusCode.INVALID_ARGUMENT:
            log.warning("%s refused: %s", method, exc)
        tm.INGEST_REQUESTS.labels(method, code.name).inc()
        await context.abort(code, str(exc))

    @staticmethod
    def _count(method: str, batches: int, points: int, started: float) -> None:
        tm.INGEST_REQUESTS.labels(method, "OK").inc()
        tm.INGEST_BATCHES.inc(batches)
        tm.INGEST_POINTS.inc(points)
        tm.INGEST_PUBLISH_SECONDS.observe(time.perf_counter() - started)

    async def _handle(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext, method: str) -> ingest_pb2.SendResponse:
        started = time.perf_counter()
        auth = dict(context.invocation_metadata() or ()).get("authorization")
        futures: list[asyncio.Future] = []
        audit_futures: list[asyncio.Future] = []
        points = 0
        seqs: dict[str, int] = {}
        self.busy += 1
        try:
            token = self.tokens.authenticate(auth)
            async for raw in requests:
                # Every message is checked again: a token revoked while a stream is open stops that stream too.
                token = self.tokens.authenticate(auth)
                points += await self._publish_batches(parse_request(raw).batches, token, context, seqs, futures, audit_futures)
            await self.publisher.wait(futures + audit_futures)
        except RunstreamError as exc:
            await self._refuse(exc, futures, context, method)
        finally:
            self.busy -= 1
        self._count(method, len(futures), points, started)
        return ingest_pb2.SendResponse(accepted=len(futures))

    # A request this large already spreads ingest's cost per request thin: flushing it less often gains nothing.
    AMORTIZED_REQUEST_POINTS = 5_000

    def flush_hint_ms(self, request_points: int = 0) -> int:
        """Flow control: how often a client should flush at most (0: as it likes). From how full the Kafka pipeline
        is (past a quarter of max_inflight_batches it grows to 5 s at the limit) and, for clients whose requests are
        small (fewer than AMORTIZED_REQUEST_POINTS points), from how busy this process is (LoopLag): a busy ingest
        receives fewer, larger requests instead of refusing or queueing them, since its cost is per request."""
        fill = self.publisher.inflight / max(1, self.config.ingest.max_inflight_batches)
        kafka = 0 if fill < 0.25 else int(500 + 4500 * min(1.0, (fill - 0.25) / 0.75))
        if self.loop_lag is None or request_points >= self.AMORTIZED_REQUEST_POINTS:
            return kafka
        return max(kafka, int(self.loop_lag.hint_ms))

    async def Session(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """One long-lived stream per client: each request is acknowledged by its own SessionAck once Kafka holds all
        of its batches. A failing request ends the session (status as for SendStream; trailing "runstream-accepted":
        how many of that request's batches are durable)."""
        auth = dict(context.invocation_metadata() or ()).get("authorization")
        tm.INGEST_SESSIONS.inc()
        try:
            async for raw in request_iterator:
                started = time.perf_counter()
                self.busy += 1  # until its answer is written
                try:
                    seqs: dict[str, int] = {}  # order is checked per request, as per call: a resend is a new request
                    futures: list[asyncio.Future] = []
                    audit_futures: list[asyncio.Future] = []
                    try:
                        # Every message is authenticated: a token revoked while the session is open stops it too.
                        token = self.tokens.authenticate(auth)
                        request = parse_session_request(raw)
                        points = await self._publish_batches(request.batches, token, context, seqs, futures, audit_futures)
                        await self.publisher.wait(futures + audit_futures)
                    except RunstreamError as exc:
                        await self._refuse(exc, futures, context, "Session")
                    self._count("Session", len(futures), points, started)
                    if self.loop_lag is not None:
                        self.loop_lag.requests += 1
                    yield ingest_pb2.SessionAck(id=request.id, accepted=len(futures),
                                                min_flush_interval_ms=self.flush_hint_ms(points)).SerializeToString()
                finally:
                    self.busy -= 1
                if self.draining:
                    return  # the client opens a new session, on another ingest if there is one
        finally:
            tm.INGEST_SESSIONS.dec()

    async def Send(self, request: bytes, context: grpc.aio.ServicerContext) -> ingest_pb2.SendResponse:
        async def one() -> AsyncIterator[bytes]:
            yield request
        return await self._handle(one(), context, "Send")

    async def SendStream(self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> ingest_pb2.SendResponse:
        return await self._handle(request_iterator, context, "SendStream")

    def handler(self) -> grpc.GenericRpcHandler:
        """The service with requests left as bytes: a body that does not parse is INVALID_ARGUMENT here,
        where grpc's own deserializer would answer UNKNOWN."""
        ser = ingest_pb2.SendResponse.SerializeToString
        return grpc.method_handlers_generic_handler("runstream.v1.Ingest", {
            "Send": grpc.unary_unary_rpc_method_handler(self.Send, response_serializer=ser),
            "SendStream": grpc.stream_unary_rpc_method_handler(self.SendStream, response_serializer=ser),
            "Session": grpc.stream_stream_rpc_method_handler(self.Session),
        })


def run_audit(batch: ingest_pb2.Batch, kind: str, actor: str, source: str) -> ingest_pb2.AuditRecord:
    """The audit record of a run's start, finish or resume (``actor``: the token's name; ``source``: the peer)."""
    if kind == "run_start":
        rs = batch.run_start
        after = {"name": rs.name, "git_commit": rs.git.commit, "git_dirty": rs.git.dirty, "host": rs.host.hostname,
                 "parent_run_id": rs.parent_run_id, "tags": list(rs.tags)}
        if rs.HasField("fork_step"):
            after["fork_step"] = rs.fork_step
    elif kind == "run_resume":
        after = {"session": batch.run_resume.session, "host": batch.run_resume.host.hostname}
    else:
        rf = batch.run_finish
        after = {"status": ingest_pb2.RunStatus.Name(rf.status), "points_acked": rf.points_acked}
        if rf.session:
            after["session"] = rf.session
    return audit.record(batch.project, actor, kind.replace("_", "."), batch.run_id, after=after, source=source,
                        at_ms=batch.created_ms)


def parse_session_request(raw: bytes) -> ingest_pb2.SessionRequest:
    try:
        return ingest_pb2.SessionRequest.FromString(raw)
    except DecodeError as exc:
        raise ValidationError("request", f"is not a valid runstream.v1.SessionRequest ({exc})") from exc


def parse_request(raw: bytes) -> ingest_pb2.SendRequest:
    try:
        return ingest_pb2.SendRequest.FromString(raw)
    except DecodeError as exc:
        raise ValidationError("request", f"is not a valid runstream.v1.SendRequest ({exc})") from exc


class LoopLag:
    """How late this process's event loop runs a timer, as a moving average over about half a second: every
    request waits that long for its turn, so it is the CPU saturation requests see, whatever its cause. When it is
    above ``busy_s`` and requests come at ``busy_requests_per_s`` or more (below that, fewer requests would free
    little: the saturation is not theirs), the flush hint for clients grows by a tenth per tick (from 0.6 s, to 5 s
    at most); when either falls below half, it shrinks by 1 % per tick, so a fleet that slowed down comes back
    gradually instead of all at once."""

    INTERVAL_S = 0.05
    FIRST_HINT_MS, MAX_HINT_MS = 600.0, 5000.0

    def __init__(self, busy_s: float, busy_requests_per_s: float = 0.0) -> None:
        self.busy_s = busy_s
        self.busy_requests_per_s = busy_requests_per_s
        self.seconds = 0.0
        self.requests_per_s = 0.0
        self.hint_ms = 0.0
        self.requests = 0  # counted by the service, one per request or Session message
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        seen = 0
        while True:
            asked = loop.time()
            await asyncio.sleep(self.INTERVAL_S)
            took = loop.time() - asked
            self.observe(max(0.0, took - self.INTERVAL_S), (self.requests - seen) / took)
            seen = self.requests

    def observe(self, lag_s: float, requests_per_s: float) -> None:
        self.seconds = 0.9 * self.seconds + 0.1 * lag_s
        self.requests_per_s = 0.9 * self.requests_per_s + 0.1 * requests_per_s
        tm.INGEST_LOOP_LAG.set(self.seconds)
        if not self.busy_s:
            return
        if self.seconds > self.busy_s and self.requests_per_s >= self.busy_requests_per_s:
            self.hint_ms = min(self.MAX_HINT_MS, max(self.FIRST_HINT_MS, self.hint_ms * 1.1))
        elif self.hint_ms and (self.seconds < self.busy_s / 2 or self.requests_per_s < self.busy_requests_per_s / 2):
            self.hint_ms = 0.0 if self.hint_ms * 0.99 < self.FIRST_HINT_MS else self.hint_ms * 0.99
        tm.INGEST_BUSY_HINT.set(self.hint_ms)


class IngestServer:
    """The ingest stage: ``start()`` binds the port and connects to Kafka; ``stop()`` drains (idempotent)."""

    def __init__(self, config: RunstreamConfig) -> None:
        self.config = config
        self.publisher = Publisher(config)
        self.tokens = TokenStore(config.tokens_path)
        self.server: grpc.aio.Server | None = None
        self.follower = Follower(config, self.tokens.apply_control)
        self.loop_lag = LoopLag(config.ingest.busy_loop_lag_ms / 1000, config.ingest.busy_requests_per_s)
        self.port = 0

    async def start(self) -> None:
        await self.follower.start()
        await self.publisher.start()
        limit = self.config.ingest.max_request_bytes
        ping_ms = int(self.config.ingest.client_ping_min_s * 1000)
        pending = self.config.ingest.max_pending_calls
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", 4 * 1024 * 1024),
                                               ("grpc.http2.min_ping_interval_without_data_ms", ping_ms),
                                               ("grpc.keepalive_permit_without_calls", 1),
                                               ("grpc.server.max_pending_requests", pending),
                                               ("grpc.server.max_pending_requests_hard_limit", 2 * pending)])
        self.service = IngestService(self.config, self.publisher, self.tokens, self.loop_lag)
        self.server.add_generic_rpc_handlers((self.service.handler(),
                                              AdminService(self.config, self.tokens).handler(status_for)))
        self.port = self._bind()
        if self.port == 0:
            raise Unavailable(f"ingest cannot listen on {self.config.ingest.listen}: the port is taken; set ingest.listen")
        await self.server.start()
        self.loop_lag.start()
        log.info("Ingest listening on port %d.", self.port)

    def _bind(self) -> int:
        ic = self.config.ingest
        assert self.server is not None
        if not ic.tls_cert:
            return self.server.add_insecure_port(ic.listen)
        try:
            key, cert = Path(ic.tls_key).read_bytes(), Path(ic.tls_cert).read_bytes()
            client_ca = Path(ic.tls_client_ca).read_bytes() if ic.tls_client_ca else None
        except OSError as exc:
            raise ConfigError(f"ingest TLS: cannot read {exc.filename}: {exc.strerror}") from exc
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                            require_client_auth=client_ca is not None)
        return self.server.add_secure_port(ic.listen, creds)

    async def stop(self, grace: float = 5.0) -> None:
        """Answers the requests in progress (up to ``grace`` seconds), then ends every stream: an idle Session
        stream would otherwise hold the whole grace, and its client reconnects either way."""
        server, self.server = self.server, None
        if server is not None:
            deadline = time.monotonic() + grace
            self.service.draining = True
            while self.service.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await server.stop(max(0.0, deadline - time.monotonic()) if self.service.busy else 0)
        await self.loop_lag.stop()
        await self.publisher.stop()
        await self.follower.stop()


def stages(config: RunstreamConfig) -> list[IngestServer]:
    """The ingest role: one gRPC server."""
    return [IngestServer(config)]
