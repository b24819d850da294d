"""The read endpoint: ClickHouse's HTTP interface over the embedded store, read-only, for every common client.

A chDB path is opened by one process only; the sink owns it and serves this endpoint, so `runstream sql`,
`runstream runs`, notebooks, BI tools and Grafana's ClickHouse plugin read through it as they read a server.

What a client sees, as a read-only ClickHouse server answers it:
- ``GET /`` and ``/ping``: ``Ok.``. ``GET``/``POST /`` with the query in ``query`` and/or the body; ``database``,
  ``default_format``, ``query_id``, ``param_<name>`` for ``{name:Type}``, ``X-ClickHouse-Database`` and
  ``X-ClickHouse-Format``; settings as URL parameters on an allow-list (storage/readonly.py).
- Credentials as clients send them: basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``, ``user``/``password``
  parameters, or a bearer token. The password (key) is a runstream token with the ``read`` scope.
- Responses carry ``X-ClickHouse-Format``, ``-Query-Id``, ``-Timezone``, ``-Server-Display-Name`` and
  ``-Summary``; errors carry the code in ``X-ClickHouse-Exception-Code`` and the status ClickHouse uses for it.
- Compression: request bodies by ``Content-Encoding`` (gzip, deflate, br, zstd, lz4); responses by
  ``Accept-Encoding`` when ``enable_http_compression=1``, or in ClickHouse's own compressed blocks with
  ``compress=1`` (what clickhouse-go's LZ4/ZSTD options ask for).
- Native output at the revision the client announces (``client_protocol_version``; storage/native.py).
- ``session_id`` is accepted; a read-only session holds no state, so each query stands alone.

Limits: each query runs in its own read-only session (storage/readonly.py) with ``sql_max_execution_time_s``,
memory and result caps; a query whose client goes away is cancelled. Workload classes, by the token that asks:
dashboards (``sql_dashboard_tokens``: Grafana's and the MLflow API's) run ``sql_dashboard_concurrent`` at once at
``sql_thread_nice``, ahead of the sink's inserts; ad-hoc queries (every other token: notebooks, ``runstream sql``)
run ``sql_max_concurrent`` at once at ``sql_adhoc_nice``, behind them (the other roles are scheduling groups of their
own: docs/security.md). Each class queues in its own line, so an
ad-hoc query never holds a dashboard's slot. The class is in the ``X-Runstream-Workload`` response header.
Identical deterministic reads in flight share one run (``sql_share_identical``).

Results: up to STREAM_AFTER_BYTES a result is answered whole, with its complete summary; a larger one in a format
that is a plain concatenation of blocks (STREAMED_FORMATS: TSV, CSV, JSONEachRow, Native, RowBinary, ...) is sent on
chunk by chunk as the engine produces it (chunked transfer, each chunk encoded as the client asked), so it never sits
whole in the sink's memory; ``wait_end_of_query=1`` asks for the whole answer first, as a server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import brotli
import lz4.block
import lz4.frame
import zstandard
from aiohttp import BasicAuth, BodyPartReader, web
from clickhouse_cityhash.cityhash import CityHash128

from runstream.server.auth import TokenStore
from runstream.server.governance import Follower
from runstream.server.telemetry import SQL_QUERIES
from runstream.storage import native
from runstream.storage.readonly import (
    STREAMED_KINDS,
    SYSTEM_DATABASES,
    Limits,
    QueryError,
    ReadEngine,
    Result,
    Statement,
    Stream,
)
from runstream.storage.store import may_raise_priority
from runstream.wire.config import RunstreamConfig, is_loopback
from runstream.wire.errors import AuthError, ConfigError

log = logging.getLogger("runstream.sql")
T = TypeVar("T")

# ClickHouse's mapping of exception codes to HTTP statuses (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
STATUS_BY_NAME = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"), 403),
    **dict.fromkeys(("BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
                     "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
                     "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
                     "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
                     "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
                     "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
                     "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys(("UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
                     "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
                     "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413, "CANNOT_DECOMPRESS": 400, "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING": 400,
    "NOT_IMPLEMENTED": 501, "SOCKET_TIMEOUT": 503, "CANNOT_OPEN_FILE": 503,
    "HTTP_LENGTH_REQUIRED": 411, "TIMEOUT_EXCEEDED": 408, "CANNOT_SCHEDULE_TASK": 503, "UNSUPPORTED_MEDIA_TYPE": 415,
}
# URL parameters that are part of the HTTP interface, not settings.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "query_id", "user", "password", "session_id", "session_timeout",
    "session_check", "client_protocol_version", "compress", "decompress", "quota_key", "buffer_size", "wait_end_of_query",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms", "enable_http_compression",
    "http_zlib_compression_level", "cancel_http_readonly_queries_on_client_close", "add_http_cors_header",
    "network_compression_method", "network_zstd_compression_level", "readonly", "stacktrace",
})
CONTENT_TYPES = {"TabSeparated": "text/tab-separated-values; charset=UTF-8", "TSV": "text/tab-separated-values; charset=UTF-8",
                 "CSV": "text/csv; charset=UTF-8; header=absent", "CSVWithNames": "text/csv; charset=UTF-8; header=present",
                 "Native": "application/octet-stream", "RowBinary": "application/octet-stream",
                 "RowBinaryWithNamesAndTypes": "application/octet-stream", "Parquet": "application/octet-stream",
                 "Arrow": "application/octet-stream", "ArrowStream": "application/octet-stream"}
ENCODINGS = ("zstd", "br", "gzip", "deflate", "lz4")
COMPRESSED_BLOCK = 1 << 20  # uncompressed bytes per block with compress=1 (max_compress_block_size)
# A result up to this size is answered whole (with the complete X-ClickHouse-Summary, and shared with identical reads);
# beyond it the rest is sent on as the engine produces it, so a large result never sits whole in the sink's memory.
STREAM_AFTER_BYTES = 1 << 20
# Formats whose output is the plain concatenation of its blocks' (no header, footer or separator between blocks): the
# engine writes each streamed chunk as a document of its own, so only these are sent on chunk by chunk.
STREAMED_FORMATS = frozenset(f.lower() for f in (
    "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "CSV", "JSONEachRow", "JSONLines", "NDJSON",
    "JSONCompactEachRow", "JSONStringsEachRow", "JSONCompactStringsEachRow", "Native", "RowBinary", "TSKV", "MsgPack",
    "BSONEachRow", "LineAsString", "CustomSeparated", "Raw"))


async def _form_fields(request: web.Request) -> dict[str, str]:
    """The text fields of a multipart/form-data request; a file part (external data) is refused."""
    fields: dict[str, str] = {}
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.filename is not None or not part.name:
            raise QueryError(48, "NOT_IMPLEMENTED", "external data (file parts of a form) is not supported here")
        fields[part.name] = (await part.read(decode=True)).decode("utf-8", errors="replace")
    return fields


def _content_type(fmt: str) -> str:
    if fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    return CONTENT_TYPES.get(fmt, "text/plain; charset=UTF-8")


def _decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded by its Content-Encoding, streamed, refused once the decoded text passes ``limit`` bytes: a
    small compressed body can expand to gigabytes."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding in ("gzip", "x-gzip", "deflate"):
            z = zlib.decompressobj(31 if encoding != "deflate" else 15)
            out = z.decompress(body, limit + 1)
        elif encoding == "br":
            out = brotli.Decompressor().process(body, output_buffer_limit=limit + 1)
        elif encoding == "zstd":
            with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                out = reader.read(limit + 1)
        elif encoding == "lz4":
            out = lz4.frame.LZ4FrameDecompressor().decompress(body, max_length=limit + 1)
        else:
            raise QueryError(36, "BAD_ARGUMENTS",
                             f"Content-Encoding {encoding!r} is not supported (gzip, deflate, br, zstd, lz4)")
    except QueryError:
        raise
    except Exception as exc:
        raise QueryError(271, "CANNOT_DECOMPRESS", f"the request body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise QueryError(229, "QUERY_IS_TOO_LARGE", f"the request body decodes to more than {limit} bytes "
                                                    "(sink.sql_max_request_bytes); send a shorter query")
    return bytes(out)


def compress_blocks(data: bytes, method: str = "lz4") -> bytes:
    """ClickHouse's compressed blocks: CityHash128 of the rest, method byte, sizes with the header, data."""
    out = bytearray()
    for i in range(0, max(1, len(data)), COMPRESSED_BLOCK):
        chunk = data[i:i + COMPRESSED_BLOCK]
        if method == "zstd":
            body, code = zstandard.ZstdCompressor(level=1).compress(chunk), 0x90
        else:
            body, code = lz4.block.compress(chunk, store_size=False), 0x82
        block = struct.pack("<BII", code, len(body) + 9, len(chunk)) + body
        h = CityHash128(block)
        out += struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF) + block  # CityHash128 v1.0.2 as (first, second)
    return bytes(out)


@dataclass
class _Streaming:
    """A result larger than STREAM_AFTER_BYTES: its first chunks, and the query still running (its slot held) for
    the request that sends it on as the engine produces it."""
    stream: Stream
    chunks: list[bytes]
    workload: Workload
    taken: bool = False


@dataclass
class _Execution:
    """One engine run of a query and how many requests wait for its result."""
    task: asyncio.Future[Result | _Streaming]
    marker: str
    waiters: int = 0


class _Encoder:
    """A streamed result's chunks as the client asked for them: Native at its revision, ClickHouse's compressed
    blocks (``compress=1``) or an HTTP Content-Encoding, one chunk at a time."""

    def __init__(self, native_revision: int | None, blocks: str | None, encoding: str, level: int) -> None:
        self.native_revision, self.blocks, self.encoding = native_revision, blocks, encoding
        self._z: Any = None
        if encoding == "gzip":
            self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        elif encoding == "deflate":
            self._z = zlib.compressobj(level)
        elif encoding == "br":
            self._z = brotli.Compressor(quality=min(level, 11))
        elif encoding == "zstd":
            self._z = zstandard.ZstdCompressor(level=level).compressobj()
        elif encoding == "lz4":
            self._z = lz4.frame.LZ4FrameCompressor()
            self._head = self._z.begin()

    def encode(self, data: bytes) -> bytes:
        if self.native_revision is not None:
            data = native.transcode(data, self.native_revision)
        if self.blocks is not None:
            return compress_blocks(data, self.blocks)
        if self._z is None:
            return data
        if self.encoding == "br":
            return bytes(self._z.process(data))
        if self.encoding == "lz4":
            head, self._head = self._head, b""
            return bytes(head + self._z.compress(data))
        return bytes(self._z.compress(data))

    def flush(self) -> bytes:
        if self._z is None:
            return b""
        if self.encoding == "br":
            return bytes(self._z.finish())
        if self.encoding == "lz4":
            return bytes(self._head + self._z.flush())
        return bytes(self._z.flush())

    def whole(self, data: bytes) -> bytes:
        return self.encode(data) + self.flush()

    @staticmethod
    def for_request(request: web.Request, params: Mapping[str, str], out_fmt: str) -> _Encoder:
        """What the client asked for: Native at its revision, compressed blocks (``compress=1``), else with
        ``enable_http_compression=1`` the first encoding it accepts, in ENCODINGS' order."""
        encoding = ""
        if params.get("compress") != "1" and params.get("enable_http_compression") == "1":
            accepted = {e.split(";")[0].strip().lower() for e in request.headers.get("Accept-Encoding", "").split(",")}
            encoding = next((e for e in ENCODINGS if e in accepted), "")
        return _Encoder(int(params.get("client_protocol_version", "0") or 0) if out_fmt == "Native" else None,
                        params.get("network_compression_method", "lz4").lower() if params.get("compress") == "1"
                        else None, encoding, int(params.get("http_zlib_compression_level", "3") or 3))


def _summary(rows_read: int, bytes_read: int, result_rows: int, result_bytes: int, started: float) -> str:
    """X-ClickHouse-Summary as a server writes it."""
    return json.dumps({"read_rows": str(rows_read), "read_bytes": str(bytes_read), "written_rows": "0",
                       "written_bytes": "0", "total_rows_to_read": str(rows_read), "result_rows": str(result_rows),
                       "result_bytes": str(result_bytes), "elapsed_ns": str(int((time.perf_counter() - started) * 1e9))},
                      separators=(",", ":"))


def _retrieve(task: asyncio.Future[Result | _Streaming]) -> None:
    if not task.cancelled():
        task.exception()  # each waiter gets the error; retrieved here so none is reported as lost


@dataclass
class Workload:
    """A workload class: its own slots (a line of its own) and the nice of its queries' threads."""
    name: str
    slots: asyncio.Semaphore
    nice: int
    setting: str  # the config key of its concurrency, for errors


def _normal_priority(nices: set[int], keep: int, seen: set[int]) -> set[int]:
    """With no read running, every thread still at a read's nice goes back to 0 but the endpoint's own (``keep``):
    threads the engine started during a read inherited its nice and would carry it into the sink's inserts. Only
    threads not ``seen`` by the last pass are read (a thread keeps the nice it started with; /proc reads of every
    thread after every read cost more than a small query). Returns the threads seen now."""
    tids = set()
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        tids.add(tid)
        if tid == keep or tid in seen:
            continue
        try:
            with open(f"/proc/self/task/{name}/stat", "rb") as f:
                if int(f.read().rsplit(b")", 1)[1].split()[16]) in nices:
                    os.setpriority(os.PRIO_PROCESS, tid, 0)
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return tids


# How often, at most, threads a read left at its nice go back to normal priority (see _normal_priority).
RESET_EVERY_S = 0.5


class SqlEndpoint:
    """The stage: an aiohttp server in the sink's process (on a thread and event loop of its own), reading the store
    the sink writes."""

    def __init__(self, config: RunstreamConfig, *, tokens: TokenStore | None = None) -> None:
        sink = config.sink
        self.config = config
        self.host, port = sink.sql_listen.rsplit(":", 1)
        self.port = int(port)
        self.database = config.clickhouse.database
        self.limits = Limits.from_config(sink)
        self.tokens = tokens or TokenStore(config.tokens_path)
        self.follower: Follower | None = None
        self.engine: ReadEngine | None = None
        self._pool = ThreadPoolExecutor(max_workers=sink.sql_max_concurrent + sink.sql_dashboard_concurrent,
                                        thread_name_prefix="sql-read")
        self._killer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-kill")  # never queued behind reads
        # Priority resets on a thread of their own, at most one queued: a pass over a process with many threads takes
        # a while, and a kill must never wait behind a queue of them.
        self._resetter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sql-nice")
        self._reset_queued = False
        self._last_reset = 0.0  # monotonic time of the last priority pass
        self.dashboard_tokens = {t.strip() for t in sink.sql_dashboard_tokens.split(",") if t.strip()}
        self.workloads = {
            "dashboard": Workload("dashboard", asyncio.Semaphore(max(1, sink.sql_dashboard_concurrent)),
                                  sink.sql_thread_nice, "sink.sql_dashboard_concurrent"),
            "adhoc": Workload("adhoc", asyncio.Semaphore(max(1, sink.sql_max_concurrent)), sink.sql_adhoc_nice,
                              "sink.sql_max_concurrent")}
        self._inflight: dict[tuple[Any, ...], _Execution] = {}
        self._query_ids: set[str] = set()  # of the queries running: a server refuses a second one with the same id
        self._running = 0  # queries on worker threads
        self._reniced: int | None = None  # the endpoint's thread, once it runs at sql_thread_nice
        self._threads_seen: set[int] = set()  # threads the last priority pass found at normal priority
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.timezone = "UTC"
        self.version = ""
        self.ssl: ssl.SSLContext | None = None
        if sink.sql_tls_cert:
            self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl.load_cert_chain(sink.sql_tls_cert, sink.sql_tls_key)
        if not is_loopback(self.host) and self.ssl is None:
            raise ConfigError(f"sink.sql_listen: {sink.sql_listen} is not a loopback address and the endpoint has no TLS; "
                              "set sink.sql_tls_cert and sink.sql_tls_key, or listen on 127.0.0.1")

    async def start(self) -> None:
        # Its own thread and event loop: the sink's loop decodes and builds each poll (hundreds of ms at full
        # rate), and a query's few loop turns must not queue behind that.
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="sql-endpoint", daemon=True)
        self._thread.start()
        self._loop = loop
        self._prioritise(self._thread)
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._start(), loop))
        except BaseException:
            await self.stop()
            raise

    def _prioritise(self, thread: threading.Thread) -> None:
        # A dashboard waits on every read while ingest's work can queue in Kafka: on a saturated box the reads'
        # threads go first. The engine does the same for each query's threads (os_threads_nice_value_query).
        nice = self.limits.thread_nice
        if nice == 0 or thread.native_id is None:
            return
        try:
            if not may_raise_priority():
                raise PermissionError("no CAP_SYS_NICE")
            os.setpriority(os.PRIO_PROCESS, thread.native_id, nice)
            self._reniced = thread.native_id
        except OSError:
            log.warning("sink.sql_thread_nice %d: this process may not raise its threads' priority (it needs "
                        "CAP_SYS_NICE: run as root or grant it, e.g. compose `cap_add: [SYS_NICE]`), so reads run at "
                        "the normal CPU priority and wait for cores behind the sink's inserts on a saturated machine.", nice)

    async def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stop(), loop))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(self._thread.join)  # type: ignore[union-attr]
            loop.close()

    async def _start(self) -> None:
        self.engine = ReadEngine(self.config.clickhouse_path, self.limits)
        if self.config.kafka.bootstrap:  # governance tokens; without Kafka only the token file counts
            self.follower = Follower(self.config, self.tokens.apply_control)
            await self.follower.start()
        head = await asyncio.get_running_loop().run_in_executor(self._pool, self._server_info)
        self.version, self.timezone = head
        app = web.Application(client_max_size=self.config.sink.sql_max_request_bytes)
        app.router.add_get("/ping", self._ping)
        app.router.add_route("*", "/", self._root)
        # Bodies are decoded here (zstd and lz4 too), so aiohttp must hand them over as sent.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("SQL endpoint on %s://%s:%d (read-only, tokens with the read scope).",
                 "https" if self.ssl else "http", self.host, self.port)

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.follower is not None:
            await self.follower.stop()
            self.follower = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._killer.shutdown(wait=True)
        self._resetter.shutdown(wait=True)
        if self._reniced is not None:  # no reset is scheduled any more: nothing keeps the reads' nice past the endpoint
            _normal_priority(self._read_nices(), self._reniced, set())
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _server_info(self) -> tuple[str, str]:
        assert self.engine is not None
        stmt = Statement("SELECT version(), timezone()", "SelectWithUnionQuery")
        res = self.engine.run(stmt, fmt="TabSeparated", database="system", settings={}, params={}, marker="info")
        version, tz = res.data.decode().strip().split("\t")
        return version, tz

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def _authenticate(self, request: web.Request, params: Mapping[str, str]) -> str:
        """The token's name; QueryError (with ClickHouse's codes) when missing, unknown or not allowed to read. Runs on
        the headers and the URL alone, before any of the body is read or decoded."""
        secret = request.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        auth = request.headers.get("Authorization", "")
        if not secret and auth.startswith("Basic "):
            try:
                secret = BasicAuth.decode(auth).password
            except ValueError:
                pass
        if not secret and auth.startswith("Bearer "):
            secret = auth[7:].strip()
        if not secret:
            raise QueryError(194, "REQUIRED_PASSWORD", "Authentication required: send a runstream token with the read "
                                                       "scope as the password (basic auth, X-ClickHouse-Key or password=)")
        try:
            token = self.tokens.lookup(secret)
        except AuthError as exc:
            raise QueryError(516, "AUTHENTICATION_FAILED", f"Authentication failed: {exc}") from None
        if "read" not in token.scopes:
            raise QueryError(497, "ACCESS_DENIED", f"token {token.name!r} lacks the read scope")
        if "*" not in token.projects:
            raise QueryError(497, "ACCESS_DENIED",
                             f"token {token.name!r} is limited to projects {sorted(token.projects)}: per-project isolation "
                             "of SQL reads needs the ClickHouse server mode (clickhouse.url; see storage/access.py). Here, "
                             "use a token for all projects ('*')")
        return token.name

    async def _root(self, request: web.Request) -> web.StreamResponse:
        params: dict[str, str] = dict(request.rel_url.query)
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": self.timezone,
                   "X-ClickHouse-Server-Display-Name": "runstream"}
        try:
            if request.method in ("GET", "HEAD") and "query" not in params and not request.can_read_body:
                return web.Response(text="Ok.\n", headers=headers)  # a server's liveness answer, as for /ping
            workload = self.workloads["dashboard" if self._authenticate(request, params) in self.dashboard_tokens
                                      else "adhoc"]
            headers["X-Runstream-Workload"] = workload.name
            if query_id in self._query_ids:
                raise QueryError(216, "QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING", f"Query with id = {query_id} is already running")
            body = b""
            if request.content_type == "multipart/form-data":
                # As a server reads a form (clients send one when the parameters are large): `query` and
                # `param_*` fields join the URL's parameters.
                params.update(await _form_fields(request))
            elif request.can_read_body:
                body = await request.read()
            sql = params.get("query", "")
            if body:
                if params.get("decompress") == "1":
                    raise QueryError(48, "NOT_IMPLEMENTED", "decompress=1 is for INSERT bodies; this endpoint is read-only")
                text = _decode_body(body, request.headers.get("Content-Encoding", ""),
                                    self.config.sink.sql_max_request_bytes).decode("utf-8", errors="replace")
                sql = f"{sql}\n{text}" if sql else text
            if not sql.strip():
                if request.method in ("GET", "HEAD"):
                    return web.Response(text="Ok.\n", headers=headers)
                raise QueryError(62, "SYNTAX_ERROR", "Empty query")
            self._query_ids.add(query_id)
            try:
                return await self._query(request, params, sql.strip(), headers, workload)
            finally:
                self._query_ids.discard(query_id)
        except QueryError as exc:
            return self._error(exc, headers)

    async def _query(self, request: web.Request, params: Mapping[str, str], sql: str,
                     headers: dict[str, str], workload: Workload) -> web.StreamResponse:
        assert self.engine is not None
        fmt = params.get("default_format") or request.headers.get("X-ClickHouse-Format") or "TabSeparated"
        database = params.get("database") or request.headers.get("X-ClickHouse-Database") or self.database
        query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        stmt = self.engine.known(sql)
        if stmt is None:
            stmt = await self._in_slot(workload, self.engine.check, sql, query_params)
        # Identical deterministic reads in flight share one execution: dashboards that several people (or a wall
        # screen) watch send the same panel queries at the same moment.
        key = None
        if self.config.sink.sql_share_identical and stmt.deterministic and database.lower() not in SYSTEM_DATABASES:
            key = (workload.name, stmt.sql, fmt, database, tuple(sorted(settings.items())), tuple(sorted(query_params.items())))
        out_fmt = stmt.output_format or fmt
        wait_end = params.get("wait_end_of_query") == "1"
        whole = wait_end or out_fmt.lower() not in STREAMED_FORMATS or stmt.kind not in STREAMED_KINDS
        if wait_end:
            key = None  # the whole result first, as a server buffers it: never a stream another request could take
        run = self._inflight.get(key) if key is not None else None
        if run is None:
            marker = self.engine.marker()
            stream_after = None if whole else STREAM_AFTER_BYTES
            task = asyncio.ensure_future(self._begin(workload, stmt, fmt, database, settings, query_params, marker,
                                                     stream_after))
            run = _Execution(task, marker)
            task.add_done_callback(_retrieve)
            if key is not None:
                self._inflight[key] = run
                task.add_done_callback(lambda _: self._forget(key, run))
            SQL_QUERIES.labels("ran").inc()
        else:
            SQL_QUERIES.labels("shared").inc()
        run.waiters += 1
        try:
            result: Result | _Streaming = await asyncio.shield(run.task)
        except asyncio.CancelledError:
            if run.waiters == 1 and not run.task.done():  # nobody else waits for it: stop the engine's work
                if key is not None:
                    self._forget(key, run)  # a request arriving now starts afresh
                run.task.cancel()
                self._killer.submit(self._kill, run.marker)
            elif run.waiters == 1 and not run.task.cancelled() and run.task.exception() is None:
                done = run.task.result()  # a stream nobody will send on: stop it and free its slot
                if isinstance(done, _Streaming) and not done.taken:
                    done.taken = True
                    self._killer.submit(self._kill, run.marker)
                    self._finish_stream(done.stream, done.workload)
            log.info("Query %s cancelled: its client went away.", headers["X-ClickHouse-Query-Id"])
            raise
        finally:
            run.waiters -= 1
        if isinstance(result, _Streaming):
            if result.taken:  # another request that shared this run sends it: this one runs the query on its own
                return await self._query(request, {**params, "wait_end_of_query": "1"}, sql, headers, workload)
            result.taken = True
            return await self._send_stream(request, params, headers, result, out_fmt, run.marker, started)
        encoder = _Encoder.for_request(request, params, out_fmt)
        headers.update({"X-ClickHouse-Format": out_fmt, "Content-Type": _content_type(out_fmt),
                        "X-ClickHouse-Summary": _summary(result.rows_read, result.bytes_read, result.result_rows,
                                                         len(result.data), started)})
        try:
            if encoder.encoding:
                data = await loop.run_in_executor(self._pool, encoder.whole, result.data)
                headers["Content-Encoding"] = encoder.encoding
            else:
                data = encoder.whole(result.data)
        except native.NativeError as exc:
            raise QueryError(48, "NOT_IMPLEMENTED", str(exc)) from None
        return web.Response(body=data, headers=headers)

    def _forget(self, key: tuple[Any, ...], run: _Execution) -> None:
        if self._inflight.get(key) is run:
            del self._inflight[key]

    async def _acquire(self, workload: Workload) -> None:
        """One of the workload class's slots, waiting in its line up to the execution time limit."""
        try:
            await asyncio.wait_for(workload.slots.acquire(), self.limits.max_execution_time_s)
        except TimeoutError:
            raise QueryError(202, "TOO_MANY_SIMULTANEOUS_QUERIES",
                             f"{workload.name} queries fill their {workload.setting} slots and none finished within "
                             f"{self.limits.max_execution_time_s:.0f}s; retry later") from None
        self._running += 1

    def _release(self, workload: Workload) -> None:
        workload.slots.release()
        self._running -= 1
        if self._running == 0 and self._reniced is not None and not self._reset_queued:
            self._reset_queued = True
            with contextlib.suppress(RuntimeError):  # the endpoint is stopping: its reset thread is gone
                self._resetter.submit(self._reset_priority)

    async def _in_slot(self, workload: Workload, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on a worker thread once one of its workload class's slots is free."""
        await self._acquire(workload)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._release(workload)

    async def _begin(self, workload: Workload, stmt: Statement, fmt: str, database: str, settings: dict[str, str],
                     params: dict[str, str], marker: str, stream_after: int | None) -> Result | _Streaming:
        """Run the query in a slot of its class: its whole result when it ends within ``stream_after`` bytes (or
        ``stream_after`` is None), else its first chunks with the query still running and its slot still held."""
        assert self.engine is not None
        engine, loop = self.engine, asyncio.get_running_loop()
        if stream_after is None:
            return await self._in_slot(workload, lambda: engine.run(
                stmt, fmt=fmt, database=database, settings=settings, params=params, marker=marker, nice=workload.nice))
        await self._acquire(workload)
        running: Stream | None = None
        handed = False  # the stream and its slot went on to the request that sends it
        try:
            live: Stream = await loop.run_in_executor(self._pool, lambda: engine.start(
                stmt, fmt=fmt, database=database, settings=settings, params=params, marker=marker, nice=workload.nice))
            running = live
            chunks: list[bytes] = []
            size = 0
            while size <= stream_after:
                chunk = await loop.run_in_executor(self._pool, live.next)
                if chunk is None:
                    return Result(b"".join(chunks), live.rows_read, live.bytes_read, live.result_rows, live.elapsed_s)
                chunks.append(chunk)
                size += len(chunk)
            handed = True
            return _Streaming(live, chunks, workload)
        finally:
            if handed:
                pass
            elif running is None:  # it never started
                self._release(workload)
            else:  # ended, failed or cancelled: nothing runs on; the slot is free again
                self._finish_stream(running, workload)

    def _finish_stream(self, stream: Stream, workload: Workload) -> None:
        self._release(workload)
        if not stream.done:  # cancelled mid-fetch: the close waits for that fetch, on a thread of its own
            self._killer.submit(stream.close)

    async def _send_stream(self, request: web.Request, params: Mapping[str, str], headers: dict[str, str],
                           result: _Streaming, out_fmt: str, marker: str, started: float) -> web.StreamResponse:
        """A large result sent on as the engine produces it; its summary counts what was read before the first byte.
        An error after that ends the body with the engine's message, as a server's HTTP interface does."""
        stream = result.stream
        encoder = _Encoder.for_request(request, params, out_fmt)
        headers.update({"X-ClickHouse-Format": out_fmt, "Content-Type": _content_type(out_fmt),
                        "X-ClickHouse-Summary": _summary(stream.rows_read, stream.bytes_read, stream.result_rows,
                                                         sum(map(len, result.chunks)), started)})
        if encoder.encoding:
            headers["Content-Encoding"] = encoder.encoding
        response = web.StreamResponse(headers=headers)
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            for chunk in result.chunks:
                await response.write(encoder.encode(chunk))
            result.chunks.clear()
            try:
                while True:
                    more: bytes | None = await loop.run_in_executor(self._pool, stream.next)
                    if more is None:
                        break
                    await response.write(encoder.encode(more))
            except QueryError as exc:
                log.info("Query %s failed after its first %d result rows: %s", headers["X-ClickHouse-Query-Id"],
                         stream.result_rows, exc)
                await response.write(encoder.encode(f"\n{exc}\n".encode()))
            await response.write(encoder.flush())
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            if not stream.done:  # the client went away: stop the engine's work
                self._killer.submit(self._kill, marker)
            raise
        finally:
            self._finish_stream(stream, result.workload)
        return response

    def _kill(self, marker: str) -> None:
        assert self.engine is not None
        try:
            if not self.engine.kill(marker):
                log.warning("Cancelling a read whose client went away: the engine found no query marked %s.", marker)
        except Exception:
            log.exception("Cancelling a read whose client went away failed; it runs to its time limit.")

    def _reset_priority(self) -> None:
        # At most one pass per RESET_EVERY_S: a pass over the process's threads cost ~1.5 ms of CPU after every query,
        # a third of a small query's time through the endpoint. Reads that end meanwhile find this one queued.
        time.sleep(max(0.0, self._last_reset + RESET_EVERY_S - time.monotonic()))
        self._reset_queued = False  # first: a read that ends during the pass queues the next one
        self._last_reset = time.monotonic()
        if self._reniced is not None and self._running == 0:  # a read started meanwhile: its end queues the next
            self._threads_seen = _normal_priority(self._read_nices(), self._reniced, self._threads_seen)

    def _read_nices(self) -> set[int]:
        return {w.nice for w in self.workloads.values()} - {0}

    def _error(self, exc: QueryError, headers: dict[str, str]) -> web.Response:
        status = STATUS_BY_NAME.get(exc.name, 500)
        headers = {**headers, "X-ClickHouse-Exception-Code": str(exc.code), "X-ClickHouse-Exception-Name": exc.name,
                   "Content-Type": "text/plain; charset=UTF-8"}
        return web.Response(status=status, text=f"{exc} (version {self.version or 'runstream'})\n", headers=headers)
