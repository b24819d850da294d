"""Read-only queries on the embedded engine, one isolated session per query.

Every query runs on its own engine connection opened with ``readonly = 1`` and its limits in the connection string,
so the engine refuses writes, DDL, ``SET``, a ``SETTINGS`` clause and the table functions that reach files or the
network (file, url, s3, remote, executable, ...), and nothing a query changes outlives it. Two things readonly does
not stop in the embedded engine are refused from the engine's own parse of the statement (``formatQuery`` and
``EXPLAIN AST``, never by matching the SQL text): more than one statement, and a statement that is not a read
(``SYSTEM``, ``KILL``, ``USE``, ...) or that writes its result to a file (``INTO OUTFILE``). Queries run on worker
threads (the engine releases the GIL), and a query can be cancelled by the marker it carries in ``log_comment``.
"""

from __future__ import annotations

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
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series"})  # deterministic ones
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

    def with_client(self, requested: dict[str, str]) -> dict[str, str]:
        """The settings one query runs with: the client's allowed ones, never above the configured limits."""
        out = {"readonly": "1", "allow_python_table_function": "0", "allow_introspection_functions": "0",
               "max_execution_time": _num(self.max_execution_time_s), "max_memory_usage": str(self.max_memory_bytes),
               "max_result_rows": str(self.max_result_rows), "max_result_bytes": str(self.max_result_bytes),
               "result_overflow_mode": "throw", "max_threads": str(self.max_threads),
               # The engine's own per-query priority: a no-op without CAP_SYS_NICE.
               "os_threads_nice_value_query": str(self.thread_nice)}
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
        self._admin = chdb.connect(self.path)  # type: ignore[no-untyped-call]  # parsing and KILL only
        self._admin_lock = threading.Lock()
        # Dashboards send the same statements on every refresh: a checked statement is remembered by its text
        # (the verdict depends on the text alone; parameter values only fill {name:Type} slots at run time).
        self._checked: OrderedDict[str, Statement] = OrderedDict()
        self._checked_lock = threading.Lock()
        # The engine's own word on which functions are deterministic (aggregates have none: NULL).
        rows = self._admin.query("SELECT name, deterministic, is_aggregate, case_insensitive FROM system.functions",
                                 "TabSeparated")
        self._deterministic: set[str] = set()
        self._aggregates: set[str] = set()
        for line in rows.bytes().decode().splitlines():
            name, det, agg, anycase = line.split("\t")
            names = (name, name.lower()) if anycase == "1" else (name,)
            if agg == "1":
                self._aggregates.update(names)
            elif det == "1":
                self._deterministic.update(names)

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
        output_format = identifiers[-1] if identifiers else ""
        if output_format and not (one.endswith(f" FORMAT {output_format}") or f" FORMAT {output_format} SETTINGS " in one):
            output_format = ""
        return Statement(one, root, output_format, self._is_deterministic(root, ast))

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
            marker: str) -> Result:
        conn = self._connect({**self.limits.with_client(settings), "database": database, "log_comment": marker})
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

    def kill(self, marker: str) -> None:
        """Cancel the query that carries ``marker`` (its client went away)."""
        with self._admin_lock:
            self._admin.query("KILL QUERY WHERE Settings['log_comment'] = {m:String} ASYNC", "TabSeparated",
                              params={"m": marker})

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
    text = str(exc).strip()
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
