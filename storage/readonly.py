"""Read-only queries on the embedded engine, one isolated session per query.

Every query runs on its own engine connection opened with ``readonly = 1`` and its limits in the connection string,
so the engine refuses writes, DDL, ``SET`` and a ``SETTINGS`` clause, and nothing a query changes outlives it.

readonly alone does not keep a query inside the data in the embedded engine (measured, chDB 4.4 / engine 26.9):
``DESC file(...)``/``DESC url(...)`` infer a schema by reading the file or fetching the URL, the scalar ``file()``
returns a file's bytes, and the engine's own jails do not apply (``user_files_path`` does not confine absolute paths
in embedded mode, and neither ``remote_url_allow_hosts`` nor per-user grants from a config file take effect). So the
statement is decided here from the engine's own parse (``formatQuery`` and ``EXPLAIN AST``, never by matching text),
by allow-lists:
- exactly one statement, whose root is a read (``READ_KINDS``), without ``INTO OUTFILE``;
- a table function (a function in a table position, or any name the engine lists in ``system.table_functions``) only
  from ``TABLE_FUNCTIONS`` (generators of numbers and literal rows), in every statement kind and at any depth
  (``DESC``, ``EXPLAIN``, subqueries, CTEs, ``view()``, ``IN``);
- a scalar or aggregate function only from the engine's categories of pure computation (``FUNCTION_CATEGORIES``,
  aliases by their target, every aggregate) or ``OTHER_FUNCTIONS``; the rest (``file``, ``hasColumnInTable``, the AI,
  dictionary, introspection and model functions, server state) is refused, and so is a category the engine adds later.
A ClickHouse server (clickhouse.url) is read directly with its own ``runstream_reader`` user, whose grants hold no
sources (deploy/clickhouse-users.xml). Queries run on worker threads (the engine releases the GIL), and a query can be
cancelled by the marker it carries in ``log_comment``.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import chdb

from runstream.wire.config import SinkConfig

# Statements a read-only client may send, by the root node of the engine's AST.
READ_KINDS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery", "ShowTables", "ShowColumns", "DescribeQuery",
              "ShowCreateTableQuery", "ShowCreateViewQuery", "ShowCreateDatabaseQuery", "ShowCreateDictionaryQuery",
              "ExistsTableQuery", "ExistsDatabaseQuery", "ExistsViewQuery", "ExistsDictionaryQuery", "Explain")
# Settings a client may set per query (URL parameters or the driver's settings); the limits below cap some of them.
CLIENT_SETTINGS = frozenset({
    "max_execution_time", "max_result_rows", "max_result_bytes", "result_overflow_mode", "max_rows_to_read",
    "max_bytes_to_read", "read_overflow_mode", "timeout_overflow_mode", "max_block_size", "limit", "offset", "max_threads",
    "max_memory_usage", "join_use_nulls", "extremes", "session_timezone", "date_time_output_format",
    "output_format_json_quote_64bit_integers", "output_format_json_quote_64bit_floats", "output_format_json_quote_denormals",
    "output_format_json_quote_decimals", "output_format_json_named_tuples_as_objects", "output_format_write_statistics",
    "output_format_decimal_trailing_zeros", "output_format_tsv_crlf_end_of_line", "output_format_csv_crlf_end_of_line",
    "output_format_pretty_max_rows", "output_format_pretty_color", "output_format_native_encode_types_in_binary_format",
    "output_format_binary_encode_types_in_binary_format", "format_csv_delimiter", "cast_keep_nullable",
    "aggregate_functions_null_for_empty", "prefer_column_name_to_alias", "joined_subquery_requires_alias",
    "low_cardinality_allow_in_native_format", "totals_mode", "use_query_cache",
})
AGGREGATE_COMBINATORS = ("If", "Array", "Map", "ForEach", "Distinct", "OrDefault", "OrNull", "State", "Merge",
                         "SimpleState", "Resample", "ArgMin", "ArgMax")
SYSTEM_DATABASES = ("system", "information_schema")  # the server's own state, not stored data
# Table functions a query may call: generators that read nothing (every other one reaches files, the network,
# other tables or the server's state).
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateSeries"})
# The engine's function categories that compute on values only.
FUNCTION_CATEGORIES = frozenset({
    "Aggregate Functions", "Arithmetic", "Arrays", "Bit", "Bitmap", "Comparison", "Conditional", "Dates and Times",
    "Distance", "Encoding", "Encryption", "Financial", "Geo", "Geo Polygon", "Hash", "IP Address", "Internal", "JSON",
    "Logical", "Map", "Mathematical", "Null", "NumericIndexedVector", "QBit", "Random Number", "Rounding", "String",
    "String Replacement", "String Search", "String Splitting", "Time Series", "Time Window", "Tuple", "Type Conversion",
    "URL", "UUID"})
# Functions of the engine's "Other" category that clients and dashboards use and that read nothing beyond the query.
OTHER_FUNCTIONS = frozenset({
    "version", "revision", "uptime", "currentDatabase", "currentUser", "authenticatedUser", "currentSchemas",
    "currentRoles", "enabledRoles", "defaultRoles", "currentProfiles", "enabledProfiles", "defaultProfiles", "hostName",
    "FQDN", "displayName", "queryID", "currentQueryID", "initialQueryID", "initialQueryStartTime", "connectionId",
    "getSetting", "getSettingOrDefault", "toTypeName", "toColumnTypeName", "dumpColumnStructure", "byteSize", "ignore",
    "materialize", "identity", "isConstant", "bar", "transform", "throwIf", "neighbor", "runningDifference",
    "runningDifferenceStartingWithFirstValue", "runningAccumulate", "finalizeAggregation", "initializeAggregation",
    "blockSize", "blockNumber", "rowNumberInBlock", "rowNumberInAllBlocks", "formatReadableSize",
    "formatReadableDecimalSize", "formatReadableQuantity", "formatReadableTimeDelta", "parseTimeDelta",
    "parseReadableSize", "parseReadableSizeOrNull", "parseReadableSizeOrZero", "parseISO8601Duration", "visibleWidth",
    "countDigits", "digits", "isDecimalOverflow", "defaultValueOfArgumentType", "defaultValueOfTypeName",
    "getSizeOfEnumType", "errorCodeToName", "variantElement", "variantType", "lowCardinalityIndices",
    "lowCardinalityKeys", "MACNumToString", "MACStringToNum", "MACStringToOUI", "getSubcolumn", "indexHint",
    "formatQuery", "formatQueryOrNull", "formatQuerySingleLine", "formatQuerySingleLineOrNull", "normalizeQuery",
    "normalizeQueryKeepNames", "normalizedQueryHash", "normalizedQueryHashKeepNames", "minSampleSizeContinuous",
    "minSampleSizeConversion", "shardNum", "shardCount", "sleep", "sleepEachRow"})
CHECKED_CACHE = 1000  # statements remembered as checked
SETTING_VALUE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+/:")


class QueryError(Exception):
    """A query the endpoint refuses or the engine failed, with the ClickHouse code and name to answer with."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(f"Code: {code}. DB::Exception: {message}. ({name})")
        self.code = code
        self.name = name


def readonly_error(what: str) -> QueryError:
    return QueryError(164, "READONLY", f"Cannot execute query in readonly mode: {what}; the runstream read endpoint "
                                       "answers reads only (SELECT, SHOW, DESCRIBE, EXISTS, EXPLAIN)")


@dataclass(frozen=True)
class Statement:
    sql: str                  # the statement as the engine formatted it: exactly one, checked
    kind: str                 # root AST node
    output_format: str = ""   # the statement's own FORMAT clause, if any
    deterministic: bool = False  # a SELECT whose result depends on the stored data alone (no now(), rand(), system.*)


@dataclass
class Result:
    data: bytes
    rows_read: int      # rows the query read from storage (or a table function), as a server's summary counts them
    bytes_read: int
    result_rows: int
    elapsed_s: float


STREAMED_KINDS = ("SelectWithUnionQuery", "SelectIntersectExceptQuery")


class Stream:
    """A query's output in the engine's chunks (whole blocks each, in the requested format), with what it has read so
    far. Closed once read to its end, on an error, or by :meth:`close` (which cancels the rest)."""

    def __init__(self, conn: Any, res: Any) -> None:
        self._conn, self._res = conn, res
        self.rows_read = self.bytes_read = self.result_rows = 0
        self.elapsed_s = 0.0
        self.done = False
        self._lock = threading.Lock()  # a close waits for a fetch in progress on another thread

    def next(self) -> bytes | None:
        """The next chunk; None at the end. Raises the engine's error (QueryError) when the query fails."""
        with self._lock:
            if self.done:
                return None
            try:
                chunk = self._res.fetch()
            except Exception as exc:
                self._close()
                raise engine_error(exc) from None
            if chunk is None:
                self._close()
                return None
        self.rows_read += int(chunk.storage_rows_read())
        self.bytes_read += int(chunk.storage_bytes_read())
        self.result_rows += int(chunk.rows_read())
        self.elapsed_s += float(chunk.elapsed())
        return bytes(chunk.bytes())

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            with contextlib.suppress(Exception):  # the engine's work ends with the connection either way
                self._res.cancel()
        finally:
            self._conn.close()


@dataclass
class Limits:
    max_execution_time_s: float
    max_memory_bytes: int
    max_result_rows: int
    max_result_bytes: int
    max_threads: int
    thread_nice: int = 0

    @classmethod
    def from_config(cls, sink: SinkConfig) -> Limits:
        return cls(sink.sql_max_execution_time_s, sink.sql_max_memory_bytes, sink.sql_max_result_rows,
                   sink.sql_max_result_bytes, sink.sql_max_threads, sink.sql_thread_nice)

    def with_client(self, requested: dict[str, str], nice: int | None = None) -> dict[str, str]:
        """The settings one query runs with: the client's allowed ones, never above the configured limits; its
        threads at ``nice`` (its workload class's; default: thread_nice)."""
        out = {"readonly": "1", "allow_python_table_function": "0", "allow_introspection_functions": "0",
               "max_execution_time": _num(self.max_execution_time_s), "max_memory_usage": str(self.max_memory_bytes),
               "max_result_rows": str(self.max_result_rows), "max_result_bytes": str(self.max_result_bytes),
               "result_overflow_mode": "throw", "max_threads": str(self.max_threads),
               # The engine's own per-query priority: a no-op without CAP_SYS_NICE.
               "os_threads_nice_value_query": str(self.thread_nice if nice is None else nice)}
        for name, value in requested.items():
            if name not in CLIENT_SETTINGS:
                raise QueryError(164, "READONLY", f"Cannot modify '{name}' setting in readonly mode (the runstream "
                                                  f"read endpoint accepts: {', '.join(sorted(CLIENT_SETTINGS))})")
            if not value or not set(value) <= SETTING_VALUE_CHARS:
                raise QueryError(36, "BAD_ARGUMENTS", f"setting {name}: value {value[:40]!r} is not a plain number or word")
            out[name] = value
        for name, cap in (("max_execution_time", self.max_execution_time_s), ("max_memory_usage", self.max_memory_bytes),
                          ("max_result_rows", self.max_result_rows), ("max_result_bytes", self.max_result_bytes),
                          ("max_threads", self.max_threads)):
            out[name] = _num(_capped(out[name], cap, name))
        return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _capped(value: str, cap: float, name: str) -> float:
    try:
        v = float(value)
    except ValueError as exc:
        raise QueryError(36, "BAD_ARGUMENTS", f"setting {name}: {value!r} is not a number") from exc
    if cap and (v <= 0 or v > cap):  # 0 means unlimited to ClickHouse: not beyond the configured limit
        return cap
    return v


class ReadEngine:
    """Checks and runs read-only statements on the embedded store at ``path`` (opened by this process)."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = str(path.resolve())
        self.limits = limits
        self._admin = chdb.connect(self.path)  # type: ignore[no-untyped-call]  # the engine's function lists
        # Dashboards send the same statements on every refresh: a checked statement is remembered by its text
        # (the verdict depends on the text alone; parameter values only fill {name:Type} slots at run time).
        self._checked: OrderedDict[str, Statement] = OrderedDict()
        self._checked_lock = threading.Lock()
        # The engine's own word on which functions are deterministic (aggregates have none: NULL).
        rows = self._admin.query("SELECT name, deterministic, is_aggregate, case_insensitive, categories, alias_to "
                                 "FROM system.functions", "TabSeparatedRaw")
        self._deterministic: set[str] = set()
        self._aggregates: set[str] = set()
        self._callable: set[str] = set()  # functions a query may call (FUNCTION_CATEGORIES, OTHER_FUNCTIONS)
        self._functions: set[str] = set()  # every function the engine knows
        category: dict[str, str] = {}
        aliases: list[tuple[tuple[str, ...], str]] = []
        names: tuple[str, ...]
        for line in rows.bytes().decode().splitlines():
            name, det, agg, anycase, categories, alias_to = line.split("\t")
            names = (name, name.lower()) if anycase == "1" else (name,)
            self._functions.update(names)
            if agg == "1":
                self._aggregates.update(names)
            elif det == "1":
                self._deterministic.update(names)
            if alias_to:
                aliases.append((names, alias_to))
            else:
                category[name] = categories
            if agg == "1" or categories in FUNCTION_CATEGORIES or name in OTHER_FUNCTIONS:
                self._callable.update(names)
        for alias_names, target in aliases:  # an alias is what it stands for
            if target in self._callable or category.get(target) in FUNCTION_CATEGORIES:
                self._callable.update(alias_names)
        tables = self._admin.query("SELECT name FROM system.table_functions", "TabSeparated")
        self._table_functions = {name.lower() for name in tables.bytes().decode().split()}

    def close(self) -> None:
        self._admin.close()

    def known(self, sql: str) -> Statement | None:
        """``sql`` checked before (no engine call): a dashboard's refresh."""
        with self._checked_lock:
            known = self._checked.get(sql)
            if known is not None:
                self._checked.move_to_end(sql)
            return known

    def check(self, sql: str, params: dict[str, str]) -> Statement:
        """The one statement in ``sql``, if it is a read; QueryError otherwise (raised by the engine's parser)."""
        known = self.known(sql)
        if known is not None:
            return known
        stmt = self._check(sql, params)
        with self._checked_lock:
            self._checked[sql] = stmt
            if len(self._checked) > CHECKED_CACHE:
                self._checked.popitem(last=False)
        return stmt

    def _check(self, sql: str, params: dict[str, str]) -> Statement:
        conn = self._connect({"readonly": "1"})
        try:
            formatted = self._run(conn, "SELECT formatQuerySingleLine({q:String})", "TabSeparatedRaw", {"q": _escaped(sql)})
            one = formatted.decode().rstrip("\n")
            ast = self._run(conn, "EXPLAIN AST " + one, "TabSeparatedRaw", params).decode().splitlines()
        finally:
            conn.close()
        root = ast[0].split(" ", 1)[0] if ast else ""
        if root not in READ_KINDS:
            raise readonly_error(f"{root or 'this statement'} is not a read")
        # Direct children of a query with output: a Literal is INTO OUTFILE (or its COMPRESSION), Set the SETTINGS
        # clause (refused by readonly when the query runs), the last Identifier the FORMAT clause, unless it names
        # the table (SHOW CREATE TABLE db.t, EXISTS t): the engine's own formatting tells them apart.
        identifiers = []
        for line in ast[1:]:
            if line.startswith(" ") and not line.startswith("  "):
                child = line.strip()
                if child.startswith("Literal"):
                    raise readonly_error("INTO OUTFILE writes a file")
                if child.startswith("Identifier "):
                    identifiers.append(child.split(" ", 1)[1])
        self._check_functions(ast)
        output_format = identifiers[-1] if identifiers else ""
        if output_format and not (one.endswith(f" FORMAT {output_format}") or f" FORMAT {output_format} SETTINGS " in one):
            output_format = ""
        return Statement(one, root, output_format, self._is_deterministic(root, ast))

    def _check_functions(self, ast: list[str]) -> None:
        """Every function the statement calls, at any depth, is on the allow-lists (module docstring)."""
        parents: list[str] = []  # node kinds along the path to the current line, by indentation
        for line in ast:
            depth = len(line) - len(line.lstrip(" "))
            node, _, rest = line.strip().partition(" ")
            del parents[depth:]
            parent = parents[-1] if parents else ""
            parents.append(node)
            if node != "Function":
                continue
            name = rest.split(" ", 1)[0]
            if parent == "TableExpression" or (name.lower() in self._table_functions and not self._known(name)):
                if name not in TABLE_FUNCTIONS:
                    raise QueryError(497, "ACCESS_DENIED", f"table function {name}() is not allowed on the runstream read "
                                     f"endpoint: queries read the stored data only (allowed: {', '.join(sorted(TABLE_FUNCTIONS))})")
            elif name != "lambda" and self._known(name) and not self._may_call(name):
                raise QueryError(497, "ACCESS_DENIED", f"function {name}() is not allowed on the runstream read endpoint: "
                                 "it reaches beyond the stored data (files, the network, dictionaries, models or the "
                                 "server's state)")

    def _known(self, name: str) -> bool:
        """A function the engine has (unknown names are the engine's UNKNOWN_FUNCTION to answer)."""
        return name in self._functions or name.lower() in self._functions

    def _may_call(self, name: str) -> bool:
        return bool({name, name.lower()} & self._callable) or self._aggregate(name)

    def _is_deterministic(self, root: str, ast: list[str]) -> bool:
        """A SELECT that calls only functions the engine calls deterministic (table functions and unknown names are
        not) and reads no system table: two runs of it at the same moment give the same rows."""
        if root not in ("SelectWithUnionQuery", "SelectIntersectExceptQuery"):
            return False
        for line in ast:
            node, _, rest = line.strip().partition(" ")
            name = rest.split(" ", 1)[0]
            if node == "Function" and name != "lambda" and not self._deterministic_function(name):
                return False
            if node == "TableIdentifier" and "." in name and name.split(".", 1)[0].lower() in SYSTEM_DATABASES:
                return False
        return True

    def _deterministic_function(self, name: str) -> bool:
        return bool({name, name.lower()} & self._deterministic) or name in TABLE_FUNCTIONS or self._aggregate(name)

    def _aggregate(self, name: str) -> bool:
        if name in self._aggregates or name.lower() in self._aggregates:
            return True
        for suffix in AGGREGATE_COMBINATORS:  # countIf, sumArrayIf, ...: an aggregate with combinators
            if name.endswith(suffix) and len(name) > len(suffix):
                return self._aggregate(name[:-len(suffix)])
        return False

    def run(self, stmt: Statement, *, fmt: str, database: str, settings: dict[str, str], params: dict[str, str],
            marker: str, nice: int | None = None) -> Result:
        conn = self._connect({**self.limits.with_client(settings, nice), "database": database, "log_comment": marker})
        try:
            res = conn.query(stmt.sql, fmt, params=params or None)
            if res is None:
                return Result(b"", 0, 0, 0, 0.0)
            # The engine's rows_read() counts the result's rows; storage_rows_read() what was read.
            return Result(res.bytes(), int(res.storage_rows_read()), int(res.storage_bytes_read()), int(res.rows_read()),
                          float(res.elapsed()))
        except Exception as exc:
            raise engine_error(exc) from None
        finally:
            conn.close()

    def start(self, stmt: Statement, *, fmt: str, database: str, settings: dict[str, str], params: dict[str, str],
              marker: str, nice: int | None = None) -> Stream:
        """The query running, its output read chunk by chunk as the engine produces it (:class:`Stream`). The engine
        streams STREAMED_KINDS only, and writes each chunk as a document of its own (headers, footers): a reader joins
        chunks only for formats without any."""
        conn = self._connect({**self.limits.with_client(settings, nice), "database": database, "log_comment": marker})
        try:
            return Stream(conn, conn.send_query(stmt.sql, fmt, params=params or None))
        except Exception as exc:
            conn.close()
            raise engine_error(exc) from None

    def kill(self, marker: str) -> int:
        """Cancel the query that carries ``marker`` (its client went away); how many queries the engine found."""
        conn = self._connect({})  # a connection of its own: a kill never waits on another caller's
        try:
            res = conn.query("KILL QUERY WHERE Settings['log_comment'] = {m:String} ASYNC", "TabSeparated",
                             params={"m": marker})
            return len(res.bytes().splitlines()) if res is not None else 0
        finally:
            conn.close()

    @staticmethod
    def marker() -> str:
        return "runstream-read-" + uuid.uuid4().hex

    def _connect(self, settings: dict[str, str]) -> Any:
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in settings.items())
        return chdb.connect(f"{self.path}?{query}")  # type: ignore[no-untyped-call]

    @staticmethod
    def _run(conn: Any, sql: str, fmt: str, params: dict[str, str]) -> bytes:
        try:
            res = conn.query(sql, fmt, params=params or None)
        except Exception as exc:
            raise engine_error(exc) from None
        return res.bytes() if res is not None else b""


def _escaped(text: str) -> str:
    """A query parameter value in the escaped (TSV) form the engine parses parameters from."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
            .replace("\0", "\\0"))


def engine_error(exc: Exception) -> QueryError:
    """The engine's exception as (code, name, message): its text is "Code: N. DB::Exception: ... (NAME)"."""
    text = str(exc).strip().removeprefix("Streaming query failed: ")
    code, name = 1000, "UNKNOWN_EXCEPTION"
    if text.startswith("Code: "):
        head, _, rest = text[6:].partition(". ")
        if head.isdigit():
            code = int(head)
            text = rest.removeprefix("DB::Exception: ")
    if text.endswith(")") and "(" in text:
        candidate = text[text.rfind("(") + 1:-1]
        if candidate.isupper() or "_" in candidate and candidate.replace("_", "").isalnum():
            name = candidate
            text = text[:text.rfind("(")].rstrip().rstrip(".")
    return QueryError(code, name, text)
