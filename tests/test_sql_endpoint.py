"""The read endpoint as real clients use it, on a sink role serving a seeded store.

Proves: every ClickHouse panel query of dashboards/json answers through clickhouse-go v2 over HTTP (Grafana's
plugin: database/sql, gzip, max_execution_time; also lz4 and zstd, which use ClickHouse's compressed blocks) with
the same rows as clickhouse-connect; the official JS client and clickhouse-connect's DataFrame, Arrow, parameter
and settings paths work; the HTTP conventions (ping, parameters, headers, compression, exceptions) hold; every
probe that got through before is refused (files, URLs, INTO OUTFILE, SYSTEM, SET, multi-statements, writes,
credentials), and refused work leaves no trace; a long query neither blocks another reader nor outlives its client.

Leaves out: Grafana itself (it cannot run here); the library inside its plugin is what runs.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import math
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import brotli
import clickhouse_connect
import pytest
import yaml
import zstandard
from clickhouse_connect import common
from clickhouse_connect.driver.exceptions import DatabaseError, ProgrammingError
from prometheus_client import REGISTRY

from runstream.dashboards import build
from runstream.ops.broker import KafkaBroker
from runstream.ops.stack import InProcessRoles
from runstream.server.auth import ensure_dev_token, ensure_file_token
from runstream.storage.sqlserver import SqlEndpoint, may_raise_priority
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import ConfigError
from tests.conftest import build_go_client, make_config, wait_done
from tests.grafana_macros import Context, expand, interpolate
from tests.helpers import wait_until
from tests.test_dashboards import RANGES, all_targets, seed

CLIENTS = Path(__file__).with_name("clients")


class Endpoint:
    def __init__(self, config: RunstreamConfig, token: str, values: dict[str, list[str]], now_ms: int,
                 server: SqlEndpoint) -> None:
        self.config, self.token, self.values, self.now_ms, self.server = config, token, values, now_ms, server
        self.url = f"http://{config.sink.sql_listen}"
        self.db = config.clickhouse.database

    def http(self, sql: str | None = None, *, params: dict[str, str] | None = None, body: bytes | None = None,
             headers: dict[str, str] | None = None, auth: bool = True, timeout: float = 60,
             method: str | None = None) -> tuple[int, dict[str, str], bytes]:
        q = dict(params or {})
        if sql is not None:
            q["query"] = sql
        q.setdefault("database", self.db)
        h = dict(headers or {})
        if auth:
            h.setdefault("X-ClickHouse-User", "tester")
            h.setdefault("X-ClickHouse-Key", self.token)
        req = urllib.request.Request(f"{self.url}/?{urllib.parse.urlencode(q)}", data=body, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                return res.status, dict(res.headers), res.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def client(self, **kwargs: Any) -> Any:
        host, port = self.config.sink.sql_listen.rsplit(":", 1)
        return clickhouse_connect.get_client(host=host, port=int(port), username="analyst", password=self.token,
                                             database=self.db, **kwargs)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory, kafka: KafkaBroker | str, chdb_path: Path) -> Iterator[Endpoint]:
    config = make_config(tmp_path_factory.mktemp("sql"), kafka, chdb_path)
    config.clickhouse.database = "runstream"  # the dashboards name it in their queries
    token = ensure_dev_token(config.tokens_path)
    roles = InProcessRoles(config, ["sink"]).start()
    roles.stages["sink"][0].client.command("DROP DATABASE IF EXISTS runstream SYNC")
    roles.stop()
    roles = InProcessRoles(config, ["sink"]).start()
    try:
        sink = roles.stages["sink"][0]
        now_ms = int(time.time() * 1000)
        values = seed(sink.client, config.clickhouse.database, now_ms)  # through the sink's own writer
        server = next(s for s in roles.stages["sink"] if isinstance(s, SqlEndpoint))
        yield Endpoint(config, token, values, now_ms, server)
    finally:
        roles.stages["sink"][0].client.command("DROP DATABASE IF EXISTS runstream SYNC")
        roles.stop()


def panel_queries(ep: Endpoint) -> list[tuple[str, str]]:
    out = []
    for (range_name, (span_s, interval_s)), project in zip(sorted(RANGES.items()), ("$__all", "vision")):
        ctx = Context(from_s=ep.now_ms // 1000 - span_s, to_s=ep.now_ms // 1000, interval_s=interval_s,
                      variables={"project": [project], "run": ep.values["run"][:2], "metric": ["loss"]},
                      all_values=ep.values)
        for name, dash in sorted(build.generate().items()):
            for panel, target in all_targets(dash):
                if "rawSql" in target:
                    out.append((f"{name} / {panel.get('title')} ({range_name})", expand(interpolate(target["rawSql"], ctx), ctx)))
    return out


@pytest.fixture(scope="module")
def go_client() -> Path:
    """The clickhouse-go client, building in the background since the tests were collected (tests/conftest.py)."""
    home = build_go_client()
    wait_done(home, 900, "building the clickhouse-go client (needs Go and the Go module proxy)")
    return home / "chclient"


def run_go(binary: Path, ep: Endpoint, queries: list[str], compression: str = "gzip") -> list[dict[str, Any]]:
    res = subprocess.run([str(binary), "-addr", ep.config.sink.sql_listen, "-password", ep.token, "-database", ep.db,
                          "-compression", compression], input=json.dumps(queries), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    answers: list[dict[str, Any]] = json.loads(res.stdout)
    return answers


def canonical(v: Any) -> Any:
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).timestamp()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return v
    if isinstance(v, (list, tuple)):
        return [canonical(x) for x in v]
    if isinstance(v, float) and math.isfinite(v):
        return round(v, 9)
    return v


def same_rows(a: list[list[Any]], b: list[list[Any]]) -> bool:
    return len(a) == len(b) and all(canonical(list(x)) == canonical(list(y)) for x, y in zip(a, b))


def test_every_panel_query_through_clickhouse_go_matches_clickhouse_connect(endpoint: Endpoint, go_client: Path) -> None:
    queries = panel_queries(endpoint)
    assert len(queries) >= 20
    reference = endpoint.client()
    answers = run_go(go_client, endpoint, [sql for _, sql in queries])
    for (where, sql), got in zip(queries, answers):
        assert not got.get("error"), f"{where}: clickhouse-go failed: {got['error']}\n{sql}"
        want = reference.query(sql)
        assert got["columns"] == list(want.column_names), where
        assert got["rows"], f"{where}: no rows"
        assert same_rows(got["rows"], [list(r) for r in want.result_rows]), f"{where}: rows differ\n{sql}"
    # The other compressions clickhouse-go offers over HTTP: ClickHouse's compressed blocks (lz4, zstd), and br.
    sample = [sql for _, sql in queries[:4]]
    for method in ("lz4", "zstd", "br", "none"):
        for got, sql in zip(run_go(go_client, endpoint, sample, method), sample):
            assert not got.get("error"), f"{method}: {got.get('error')}"
            assert same_rows(got["rows"], [list(r) for r in reference.query(sql).result_rows]), method


def test_types_survive_native_at_the_clients_revision(endpoint: Endpoint, go_client: Path) -> None:
    """Types whose Native data have variable length or state prefixes, in one block with several rows."""
    sql = ("SELECT number AS n, toString(number) AS s, [number, number + 1] AS a, toNullable(if(number = 1, NULL, number)) AS nn, "
           "toLowCardinality(toString(number % 2)) AS lc, map('k', number) AS m, (number, toString(number)) AS t, "
           "toDateTime64(1700000000.5 + number, 3, 'UTC') AS ts, toDecimal64(number / 3, 4) AS d, "
           "toUUID('00000000-0000-0000-0000-000000000001') AS u, "
           "[toLowCardinality('x')] AS alc, toFixedString('ab', 2) AS fs FROM numbers(3)")
    (got,) = run_go(go_client, endpoint, [sql])
    assert not got.get("error"), got.get("error")
    assert got["types"][:5] == ["UInt64", "String", "Array(UInt64)", "Nullable(UInt64)", "LowCardinality(String)"]
    assert [r[0] for r in got["rows"]] == [0, 1, 2] and [r[1] for r in got["rows"]] == ["0", "1", "2"]
    assert got["rows"][1][2] == [1, 2] and got["rows"][1][3] is None and got["rows"][2][4] == "0"
    assert got["rows"][2][5] == {"k": 2} and got["rows"][2][11] == "ab"


def test_clickhouse_connect_and_the_js_client(endpoint: Endpoint, tmp_path: Path) -> None:
    c = endpoint.client()
    df = c.query_df("SELECT run_id, count() AS n FROM metrics GROUP BY run_id ORDER BY run_id")
    arrow = c.query_arrow("SELECT run_id, count() AS n FROM metrics GROUP BY run_id ORDER BY run_id")
    assert list(df["run_id"]) == arrow.column("run_id").to_pylist() == sorted(endpoint.values["run"])
    assert list(df["n"]) == arrow.column("n").to_pylist() and all(n == 14_400 for n in df["n"])
    got = c.query("SELECT count() FROM metrics WHERE run_id = {r:String} AND step < {s:UInt32}",
                  parameters={"r": endpoint.values["run"][0], "s": 100}).result_rows
    assert got == [(200,)]
    # Large parameters go as a multipart/form-data body (clickhouse-connect does so on its own past a size; this
    # client always does): the form's query and param_* fields are read as a server reads them.
    form = endpoint.client(form_encode_query_params=True)
    many = endpoint.values["run"] + [f"no-such-run-{i:05d}" for i in range(5000)]
    got = form.query("SELECT run_id, count() FROM metrics WHERE run_id IN {ids:Array(String)} GROUP BY run_id ORDER BY run_id",
                     parameters={"ids": many}).result_rows
    assert got == [(r, 14_400) for r in sorted(endpoint.values["run"])]
    # The endpoint is a readonly=1 server to clickhouse-connect (system.settings says so), which then refuses to
    # send settings unless told to; sent, the endpoint applies the ones on its allow-list.
    with pytest.raises(ProgrammingError, match="readonly"):
        c.query("SELECT 1", settings={"max_result_rows": 10})
    common.set_setting("invalid_setting_action", "send")
    try:
        with pytest.raises(DatabaseError, match="TOO_MANY_ROWS_OR_BYTES|396"):
            c.query("SELECT number FROM numbers(100)", settings={"max_result_rows": 10, "result_overflow_mode": "throw"})
        assert len(c.query("SELECT number FROM numbers(100)", settings={"max_block_size": 10}).result_rows) == 100
    finally:
        common.set_setting("invalid_setting_action", "error")
    # Statements whose output is not a SELECT's: clickhouse-connect asks for Native and reads it.
    plan = "\n".join(r[0] for r in c.query("EXPLAIN indexes = 1 SELECT count() FROM metrics WHERE run_id = 'x'").result_rows)
    assert "ReadFromMergeTree" in plan and "PrimaryKey" in plan
    assert "CREATE VIEW" in c.query("SHOW CREATE TABLE runs").result_rows[0][0]
    with pytest.raises(DatabaseError, match="164|readonly|READONLY"):
        c.insert("metric_points", [[1]], column_names=["step"])
    assert c.query("SELECT count() FROM metric_points").result_rows[0][0] == 4 * 14_400

    node_modules = CLIENTS / "js" / "node_modules"
    if not (node_modules / "@clickhouse" / "client").exists():
        res = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=CLIENTS / "js", capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, f"npm install failed: {res.stderr[-2000:]}"
    job = {"url": endpoint.url, "username": "js", "password": endpoint.token, "database": endpoint.db, "queries": [
        {"query": "SELECT run_id, count() AS n FROM metrics GROUP BY run_id ORDER BY run_id"},
        {"query": "SELECT {x:UInt32} * 2 AS y", "query_params": {"x": 21}},
        {"query": "SELECT * FROM file('/etc/passwd', 'LineAsString')"},
    ]}
    res = subprocess.run(["node", str(CLIENTS / "js" / "query.mjs")], input=json.dumps(job), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    answers = json.loads(res.stdout)
    assert [r["run_id"] for r in answers[0]["rows"]] == sorted(endpoint.values["run"])
    assert [int(r["n"]) for r in answers[0]["rows"]] == [14_400] * 4
    assert answers[1]["rows"] == [{"y": 42}]
    assert "table function file() is not allowed" in answers[2]["error"] and str(answers[2]["code"]) == "497"


def test_http_conventions(endpoint: Endpoint) -> None:
    ep = endpoint
    assert ep.http(auth=False, params={}, method="GET")[2] == b"Ok.\n"
    assert urllib.request.urlopen(f"{ep.url}/ping").read() == b"Ok.\n"
    status, headers, body = ep.http("SELECT 1 AS x FORMAT JSONCompact", params={"query_id": "q-123"})
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONCompact" and json.loads(body)["data"] == [[1]]
    assert headers["X-ClickHouse-Query-Id"] == "q-123" and headers["Content-Type"].startswith("application/json")
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert summary["written_rows"] == "0" and summary["read_rows"] == "1" and summary["result_rows"] == "1"
    # read_rows counts what the query read, result_rows what it returned, as a server's summary does.
    summary = json.loads(ep.http("SELECT count() FROM numbers(123456)")[1]["X-ClickHouse-Summary"])
    assert (summary["read_rows"], summary["read_bytes"], summary["result_rows"]) == ("123456", str(8 * 123456), "1")
    # Query in the URL and the body together; a typed parameter; default format and database by header.
    status, _, body = ep.http("SELECT {n:UInt8} +", params={"param_n": "40"}, body=b"2")
    assert (status, body) == (200, b"42\n")
    status, headers, body = ep.http("SELECT currentDatabase()", headers={"X-ClickHouse-Format": "CSV",
                                                                         "X-ClickHouse-Database": "system"},
                                    params={"database": ""})
    assert headers["X-ClickHouse-Format"] == "CSV" and body == b'"system"\n'
    # Credentials the ways clients send them.
    basic = "Basic " + base64.b64encode(f"grafana:{ep.token}".encode()).decode()
    assert ep.http("SELECT 1", auth=False, headers={"Authorization": basic})[0] == 200
    assert ep.http("SELECT 1", auth=False, params={"user": "u", "password": ep.token})[0] == 200
    # Compression both ways.
    status, headers, body = ep.http("SELECT number FROM numbers(1000)", params={"enable_http_compression": "1"},
                                    headers={"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip" and gzip.decompress(body).splitlines()[-1] == b"999"
    for enc, decode in (("zstd", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
                        ("br", brotli.decompress)):
        _, headers, body = ep.http("SELECT 7", params={"enable_http_compression": "1"}, headers={"Accept-Encoding": enc})
        assert headers.get("Content-Encoding") == enc and decode(body) == b"7\n"
    _, headers, body = ep.http("SELECT 7", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers and body == b"7\n"  # as a server: only with enable_http_compression=1
    status, _, body = ep.http(None, body=gzip.compress(b"SELECT 8"), headers={"Content-Encoding": "gzip"})
    assert (status, body) == (200, b"8\n")
    # Errors as a server words and codes them.
    status, headers, body = ep.http("SELEC 1")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "62" and body.startswith(b"Code: 62. DB::Exception:")
    status, headers, _ = ep.http("SELECT * FROM no_such_table")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "60"
    # session_id is accepted (a read-only session holds nothing between queries).
    assert ep.http("SELECT 1", params={"session_id": "s1"})[0] == 200
    # A FORMAT clause is the output format, also after EXPLAIN; a table's name never is.
    status, headers, body = ep.http("EXPLAIN SELECT 1 FORMAT JSONCompact")
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONCompact" and json.loads(body)["data"]
    status, headers, body = ep.http("SHOW CREATE TABLE runs", params={"default_format": "TSVRaw"})
    assert status == 200 and headers["X-ClickHouse-Format"] == "TSVRaw" and body.startswith(b"CREATE VIEW")
    status, headers, body = ep.http("EXISTS TABLE runs FORMAT CSV")
    assert (status, headers["X-ClickHouse-Format"], body) == (200, "CSV", b"1\n")


PROBES = [
    "INSERT INTO FUNCTION file('{tmp}/written.tsv', 'TSV', 'a String') SELECT 'x'",
    "INSERT INTO FUNCTION file('{tokens}', 'TSV', 'a String') SELECT 'tokens: [{{token: rs_forged}}]'",
    "SELECT 1 INTO OUTFILE '{tmp}/outfile.txt'",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file('../../../../../../etc/passwd', 'LineAsString')",
    "SELECT * FROM file('/proc/self/environ', 'LineAsString')",
    "SELECT * FROM file('{tokens}', 'LineAsString')",
    "SELECT * FROM file('{stack}', 'LineAsString')",
    "SELECT * FROM url('{url}/ping', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:9/bucket-name/key.csv', 'CSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:9000', system.one)",
    "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'a String')",
    "SELECT * FROM mysql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:9', 'd', 't', 'u', 'p')",
    "SELECT * FROM python(x)",
    "SYSTEM STOP MERGES",
    "KILL QUERY WHERE 1",
    "SET max_result_rows = 1",
    "SELECT 1 SETTINGS max_threads = 64",
    "SELECT 1; SYSTEM STOP MERGES",
    "CREATE TABLE probe (a Int8) ENGINE = Memory",
    "CREATE DICTIONARY probe (a UInt64) PRIMARY KEY a SOURCE(FILE(path '/etc/passwd' format 'TSV')) LAYOUT(FLAT()) LIFETIME(0)",
    "DROP TABLE metric_points",
    "TRUNCATE TABLE metric_points",
    "ALTER TABLE metric_points DELETE WHERE 1",
    "OPTIMIZE TABLE metric_points FINAL",
    "INSERT INTO metric_points (step) VALUES (1)",
    "USE system",
]


def test_abuse_probes_are_refused_and_leave_no_trace(endpoint: Endpoint, tmp_path: Path) -> None:
    ep = endpoint
    tokens_before = ep.config.tokens_path.read_bytes()
    stack_file = ep.config.data_path / "stack.json"
    stack_file.write_text(json.dumps({"token": ep.token}))
    for probe in PROBES:
        sql = probe.format(tmp=tmp_path, tokens=ep.config.tokens_path, stack=stack_file, url=ep.url)
        status, headers, body = ep.http(sql)
        assert status != 200, f"got through: {sql}\n{body[:300]!r}"
        assert b"Code: " in body and headers.get("X-ClickHouse-Exception-Code"), sql
        assert b"root:" not in body and ep.token.encode() not in body, f"leaked data: {sql}"
    assert not list(tmp_path.iterdir()), "a probe wrote a file"
    assert ep.config.tokens_path.read_bytes() == tokens_before
    assert ep.http("SELECT count() FROM metric_points")[2] == b"57600\n"
    # Nothing a request sets reaches the next one, and limits cannot be raised.
    assert ep.http("SELECT number FROM numbers(5)", params={"max_result_rows": "1", "result_overflow_mode": "throw"})[0] != 200
    assert ep.http("SELECT count() FROM numbers(5)")[2] == b"5\n"
    _, _, body = ep.http("SELECT getSetting('max_execution_time'), getSetting('readonly'), getSetting('max_threads')",
                         params={"max_execution_time": "100000", "readonly": "0", "max_threads": "64"})
    assert body == b"60\t1\t2\n"
    status, _, body = ep.http("SELECT 1", params={"allow_ddl": "1"})
    assert status == 500 and b"(READONLY)" in body


def secrets_of(ep: Endpoint) -> list[bytes]:
    """Every secret the sink's machine holds that a probe could try to read: tokens and the admin token."""
    found = [ep.token.encode()]
    for f in ep.config.data_path.rglob("*"):
        if f.is_file() and f.suffix in (".token", ".key") and f.stat().st_size < 4096:
            found += [line.strip().encode() for line in f.read_text().splitlines() if len(line.strip()) >= 16]
    return found


def refused_without_leak(ep: Endpoint, sql: str, secrets: list[bytes]) -> None:
    status, headers, body = ep.http(sql)
    assert status != 200, f"got through: {sql}\n{body[:300]!r}"
    assert headers.get("X-ClickHouse-Exception-Code"), sql
    assert b"root:" not in body and not any(s in body for s in secrets), f"leaked data: {sql}\n{body[:300]!r}"


def test_no_table_function_reaches_outside_in_any_statement(endpoint: Endpoint, tmp_path: Path) -> None:
    """Every table function the engine knows, enumerated from the engine itself, under DESC, EXPLAIN, SELECT, a
    subquery, a CTE, IN and view(): only the number generators run."""
    ep = endpoint
    secret_file = ep.config.tokens_path
    secrets = secrets_of(ep)
    status, _, body = ep.http("SELECT name FROM system.table_functions ORDER BY name")
    names = body.decode().split()
    assert status == 200 and {"file", "url", "s3", "remote", "mysql", "executable"} <= set(names)
    allowed = {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateSeries"}
    for name in names:
        call = f"{name}('{secret_file}', 'LineAsString')"
        forms = [f"DESC {call}", f"DESCRIBE TABLE {call}", f"EXPLAIN SELECT * FROM {call}",
                 f"EXPLAIN SYNTAX SELECT * FROM {call}", f"EXPLAIN QUERY TREE SELECT * FROM {call}",
                 f"SELECT * FROM (SELECT * FROM {call})", f"WITH t AS (SELECT * FROM {call}) SELECT * FROM t",
                 f"SELECT 1 WHERE 'x' IN (SELECT * FROM {call})", f"DESC (SELECT * FROM {call})",
                 f"SELECT * FROM view(SELECT * FROM {call})"]
        for sql in forms if name not in allowed else forms[-1:]:
            refused_without_leak(ep, sql, secrets)
    status, _, body = ep.http("DESC numbers(3)")
    assert status == 200 and body.startswith(b"number\tUInt64")


def test_scalar_functions_that_reach_outside_are_refused(endpoint: Endpoint) -> None:
    ep = endpoint
    secrets = secrets_of(ep)
    for sql in [f"SELECT file('{ep.config.tokens_path}')", f"SELECT FILE('{ep.config.tokens_path}')",
                "SELECT file('/etc/passwd')", f"SELECT 1 WHERE file('{ep.config.tokens_path}') != ''",
                "SELECT hasColumnInTable('127.0.0.1', 'system', 'one', 'dummy')", "SELECT aiGenerate('say hi')",
                "SELECT dictGet('d', 'a', toUInt64(1))", "SELECT getServerSetting('user_files_path')",
                "SELECT filesystemAvailable()", "SELECT joinGet('j', 'v', 1)", "SELECT showCertificate()",
                "SELECT naiveBayesClassifier('m', 'text')", "SELECT addressToLine(1)", "SELECT generateSerialID('s')"]:
        refused_without_leak(ep, sql, secrets)
    # What clients and dashboards call still runs: server info, aggregates with combinators, lambdas, windows.
    status, _, body = ep.http("SELECT version() != '', currentDatabase(), toTypeName(1), countIf(number > 1), "
                              "sumArray([number]), arrayMap(x -> x * 2, [number])[1], row_number() OVER () "
                              "FROM numbers(3) GROUP BY number ORDER BY number LIMIT 1")
    assert status == 200 and body == b"1\trunstream\tUInt8\t0\t0\t0\t1\n", body


def test_credentials_are_checked_before_a_compressed_body_is_decoded(endpoint: Endpoint) -> None:
    """A zstd body of 1 GiB of text, 32 KiB on the wire: refused unread without credentials, and with them refused
    at the request limit without the process ever holding the decoded body."""
    import resource
    ep = endpoint
    packer = zstandard.ZstdCompressor(level=3).compressobj()
    spaces = b" " * (1 << 20)
    bomb = packer.compress(b"SELECT 1 -- ") + b"".join(packer.compress(spaces) for _ in range(1024)) + packer.flush()
    assert len(bomb) < 64 * 1024
    others = (("gzip", gzip.compress(spaces * 64)), ("br", brotli.compress(spaces * 64)))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the endpoint runs in this process
    status, headers, _ = ep.http(None, body=bomb, headers={"Content-Encoding": "zstd"}, auth=False)
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "194"
    status, headers, body = ep.http(None, body=bomb, headers={"Content-Encoding": "zstd"})
    assert status == 413 and headers["X-ClickHouse-Exception-Code"] == "229" and b"sql_max_request_bytes" in body
    for enc, packed in others:
        status, headers, _ = ep.http(None, body=packed, headers={"Content-Encoding": enc})
        assert status == 413 and headers["X-ClickHouse-Exception-Code"] == "229", enc
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert grown_mib < 256, f"the process peaked {grown_mib:.0f} MiB higher: the body was decoded whole"
    status, _, _ = ep.http(None, body=b"\x28\xb5\x2f\xfd garbage", headers={"Content-Encoding": "zstd"})
    assert status == 400
    status, _, body = ep.http(None, body=zstandard.ZstdCompressor().compress(b"SELECT 9"), headers={"Content-Encoding": "zstd"})
    assert (status, body) == (200, b"9\n")


def test_a_running_query_id_is_not_reused(endpoint: Endpoint) -> None:
    ep = endpoint
    qid = "probe-" + uuid.uuid4().hex
    answers: list[tuple[int, dict[str, str], bytes]] = []
    first = threading.Thread(target=lambda: answers.append(ep.http(
        "SELECT count() FROM numbers(100000000000)", params={"query_id": qid, "max_execution_time": "3"})))
    first.start()
    wait_until(lambda: qid in ep.server._query_ids, 10, "the first query to run")
    status, headers, body = ep.http("SELECT 1", params={"query_id": qid})
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "216", body
    first.join(30)
    assert answers and answers[0][0] != 200  # stopped by its own time limit
    assert ep.http("SELECT 1", params={"query_id": qid})[0] == 200  # free again once it ended


def test_credentials_and_scopes(endpoint: Endpoint) -> None:
    ep = endpoint
    status, headers, _ = ep.http("SELECT 1", auth=False)
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "194"
    status, headers, _ = ep.http("SELECT 1", headers={"X-ClickHouse-Key": "rs_not_a_token"})
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "516"
    data = yaml.safe_load(ep.config.tokens_path.read_text())
    limited, ingest_only = "rs_" + uuid.uuid4().hex, "rs_" + uuid.uuid4().hex
    data["tokens"] += [{"token": limited, "name": "team", "projects": ["vision"], "scopes": ["read"]},
                       {"token": ingest_only, "name": "ci", "projects": ["*"], "scopes": ["ingest"]}]
    ep.config.tokens_path.write_text(yaml.safe_dump(data))  # reloaded by the endpoint: waited for below

    def refused(secret: str, needle: bytes) -> bool:
        status, _, body = ep.http("SELECT 1", headers={"X-ClickHouse-Key": secret})
        return status == 403 and needle in body
    wait_until(lambda: refused(limited, b"ClickHouse server mode"), 10, "the project-limited token to be read and refused")
    assert refused(ingest_only, b"lacks the read scope")


def test_a_long_query_neither_blocks_readers_nor_outlives_its_client(endpoint: Endpoint) -> None:
    ep = endpoint
    marker = str(10**12 + int(time.time()) % 1000)
    long_sql = f"SELECT count() FROM numbers(100000000000) WHERE number != {marker}"

    # The client sends the query, then goes away: its connection is closed here, not whenever a timed-out
    # urllib response happens to be collected.
    host, port = ep.config.sink.sql_listen.rsplit(":", 1)
    client = http.client.HTTPConnection(host, int(port), timeout=30)
    client.request("GET", "/?" + urllib.parse.urlencode({"query": long_sql, "database": ep.db}),
                   headers={"X-ClickHouse-User": "tester", "X-ClickHouse-Key": ep.token})
    running = f"SELECT count() FROM system.processes WHERE query LIKE '%{marker}%' AND query NOT LIKE '%processes%'"
    wait_until(lambda: ep.http(running)[2] == b"1\n", 10, "the long query to run")
    t0 = time.monotonic()
    assert ep.http("SELECT 1")[2] == b"1\n"
    assert time.monotonic() - t0 < 1.0  # another reader is not held up by it
    client.close()
    wait_until(lambda: ep.http(running)[2] == b"0\n", 10, "the abandoned query to be cancelled")
    # A query that runs past its own limit stops with the server's code.
    t0 = time.monotonic()
    status, headers, _ = ep.http(long_sql, params={"max_execution_time": "1"})
    assert status == 408 and headers["X-ClickHouse-Exception-Code"] == "159" and time.monotonic() - t0 < 5


def engine_threads_at(nices: set[int], keep: int) -> set[str]:
    """The sink process's threads at any of ``nices`` but the endpoint's own loop (``keep``): the engine's, and the
    workers that call it."""
    out = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        if task.name != str(keep) and int(stat.rsplit(")", 1)[1].split()[16]) in nices:  # field 19: nice
            out.add(task.name)
    return out


def dashboard_token(ep: Endpoint) -> str:
    """Grafana's read token as `runstream up` makes it, once the endpoint knows it (it reloads the token file)."""
    secret = ensure_file_token(ep.config.tokens_path, ep.config.dashboard_token_path, "grafana", ["read"])
    wait_until(lambda: ep.http("SELECT 1", headers={"X-ClickHouse-Key": secret})[0] == 200, 10, "Grafana's token")
    return secret


@pytest.mark.skipif(not may_raise_priority(), reason="needs CAP_SYS_NICE (root here and in CI)")
def test_dashboards_run_ahead_of_the_sinks_work_and_ad_hoc_reads_behind_it(endpoint: Endpoint) -> None:
    ep = endpoint
    ahead, behind = ep.config.sink.sql_thread_nice, ep.config.sink.sql_adhoc_nice
    assert ahead < 0 < behind
    thread = ep.server._thread
    assert thread is not None and thread.native_id is not None
    keep = thread.native_id
    assert os.getpriority(os.PRIO_PROCESS, keep) == ahead  # the endpoint's own loop
    grafana = dashboard_token(ep)

    def settled(what: str) -> None:
        # One read, then no more: the reset follows the last read on its own thread (it also covers threads an earlier
        # endpoint of this process left behind), and a read per poll would race it every time.
        assert ep.http("SELECT 1")[0] == 200
        try:
            wait_until(lambda: not engine_threads_at({ahead, behind}, keep), 10, what)
        except AssertionError as e:
            at = engine_threads_at({ahead, behind}, keep)
            names = {t: (Path("/proc/self/task") / t / "comm").read_text().strip() for t in at}
            raise AssertionError(f"{e}; still at {ahead} or {behind}: {names}") from None

    # Threads the engine started during earlier reads inherited their nice until the endpoint reset them, when no read
    # ran any more: none is left at it.
    settled("no engine thread at a read's nice between reads")
    # Each query's threads run at its class's nice: the engine's own per-query setting (what the threads of a query get
    # from it is the engine's documented behaviour; sampling them from here proved too racy to be a test).
    nice_sql = "SELECT getSetting('os_threads_nice_value_query')"
    status, headers, body = ep.http(nice_sql, headers={"X-ClickHouse-Key": grafana})
    assert (status, headers["X-Runstream-Workload"], body) == (200, "dashboard", f"{ahead}\n".encode())
    status, headers, body = ep.http(nice_sql)  # the dev token: a notebook's, ad-hoc
    assert (status, headers["X-Runstream-Workload"], body) == (200, "adhoc", f"{behind}\n".encode())
    # A read at a client's own priority is not one of the settings a client may send.
    status, _, body = ep.http("SELECT 1", params={"os_threads_nice_value_query": "0"})
    assert status != 200 and b"os_threads_nice_value_query" in body
    # Once no read runs, no thread keeps a read's priority (one started during a read inherits it).
    settled("every engine thread back at the normal priority")
    assert os.getpriority(os.PRIO_PROCESS, keep) == ahead


def test_ad_hoc_queries_never_hold_a_dashboards_slot(endpoint: Endpoint) -> None:
    """Every ad-hoc slot busy with a slow notebook query: a dashboard's query still answers at once, in its own line,
    while they run."""
    ep = endpoint
    grafana = dashboard_token(ep)
    tag = 10**12 + time.time_ns() % 10**9
    running = f"SELECT count() FROM system.processes WHERE query LIKE '%{tag}%' AND query NOT LIKE '%processes%'"
    n = ep.config.sink.sql_max_concurrent
    answers: list[int] = []

    def notebook(i: int) -> None:  # each its own query: identical ones would share one run
        slow = f"SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) != {tag} AND number != {i}"
        answers.append(ep.http(slow, params={"max_execution_time": "10"})[0])  # outlives the checks, even on a busy machine
    notebooks = [threading.Thread(target=notebook, args=(i,)) for i in range(n)]
    for t in notebooks:
        t.start()
    as_dashboard = {"X-ClickHouse-Key": grafana}
    wait_until(lambda: ep.http(running, headers=as_dashboard)[2] == f"{n}\n".encode(), 10, f"{n} slow notebook queries")
    t0 = time.monotonic()
    status, headers, body = ep.http("SELECT 1", headers=as_dashboard)
    waited = time.monotonic() - t0
    assert (status, headers["X-Runstream-Workload"], body) == (200, "dashboard", b"1\n")
    assert waited < 2.0, waited
    # They still ran when it answered: it did not wait for a slot one of them gave back.
    assert ep.http(running, headers=as_dashboard)[2] == f"{n}\n".encode()
    for t in notebooks:
        t.join(60)
    assert answers == [408] * n  # each ran to its own time limit


def test_a_large_result_is_sent_as_the_engine_produces_it(endpoint: Endpoint) -> None:
    """Past STREAM_AFTER_BYTES the rest of a result goes out chunk by chunk (chunked transfer, no Content-Length):
    the same bytes as the whole answer a server gives with wait_end_of_query=1, in every encoding a client may ask
    for, read row for row by clickhouse-connect; an error after the first rows ends the body with the engine's
    message, as a server's HTTP interface does."""
    import lz4.frame

    from runstream.storage.sqlserver import STREAM_AFTER_BYTES

    ep = endpoint
    n = 2_000_000
    sql = f"SELECT number FROM numbers({n})"
    expected = "".join(f"{i}\n" for i in range(n)).encode()
    assert len(expected) > 4 * STREAM_AFTER_BYTES
    host, port = ep.config.sink.sql_listen.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/?" + urllib.parse.urlencode({"query": sql, "database": ep.db}),
                 headers={"X-ClickHouse-Key": ep.token})
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("Transfer-Encoding") == "chunked"
    assert res.getheader("Content-Length") is None
    assert res.read() == expected
    conn.close()
    status, headers, whole = ep.http(sql, params={"wait_end_of_query": "1"})
    assert (status, whole, headers["Content-Length"]) == (200, expected, str(len(expected)))
    for enc, decode in (("gzip", gzip.decompress), ("deflate", zlib.decompress), ("br", brotli.decompress),
                        ("zstd", lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)),
                        ("lz4", lz4.frame.decompress)):
        status, headers, body = ep.http(sql, params={"enable_http_compression": "1"}, headers={"Accept-Encoding": enc})
        assert (status, headers.get("Content-Encoding"), headers.get("Transfer-Encoding")) == (200, enc, "chunked"), enc
        assert decode(body) == expected, enc
    # clickhouse-connect: Native at its revision, in ClickHouse's compressed blocks.
    client = ep.client(compress="lz4")
    got = client.query_np(sql)
    assert len(got) == n and int(got[0][0]) == 0 and int(got[-1][0]) == n - 1
    client.close()
    # A failure past the first chunks: the rows sent, then the error.
    status, _, body = ep.http(f"SELECT throwIf(number = {n - 10}) FROM numbers({n})")
    assert status == 200 and body.rstrip().splitlines()[-1].startswith(b"Code: 395. DB::Exception:")


def executions() -> dict[str, float]:
    return {e: REGISTRY.get_sample_value("runstream_sql_queries_total", {"execution": e}) or 0.0 for e in ("ran", "shared")}


@pytest.mark.slow
def test_identical_reads_in_flight_share_one_run(endpoint: Endpoint) -> None:
    ep = endpoint
    tag = 10**12 + time.time_ns() % 10**9
    running = f"SELECT count() FROM system.processes WHERE query LIKE '%{tag}%' AND query NOT LIKE '%processes%'"

    def together(sql: str, n: int, runs: int, params: dict[str, str] | None = None) -> list[tuple[int, dict[str, str], bytes]]:
        """The first request, then n - 1 more once the engine runs it; returns once ``runs`` were seen running."""
        out: list[tuple[int, dict[str, str], bytes]] = []
        threads = [threading.Thread(target=lambda: out.append(ep.http(sql, params=params))) for _ in range(n)]
        threads[0].start()
        wait_until(lambda: int(ep.http(running)[2]) >= 1, 10, "the first query to run")
        for t in threads[1:]:
            t.start()
        wait_until(lambda: len(out) == n or int(ep.http(running)[2]) >= runs, 10, f"{runs} runs at once")
        for t in threads:
            t.join(60)
        assert len(out) == n
        return out

    before = executions()
    # (A hash per row: the engine counts a plain filter over numbers() too fast for a poll to see it run.)
    answers = together(f"SELECT count() FROM numbers(100000000) WHERE sipHash64(number) != {tag}", 5, 1)
    assert {a[2] for a in answers} == {b"100000000\n"} and {a[0] for a in answers} == {200}
    assert executions()["shared"] - before["shared"] == 4
    # rand() makes each answer its own: three runs at once (each stopped by its time limit), none shared.
    before = executions()
    answers = together(f"SELECT count() + 0 * any(rand()) FROM numbers(100000000000) WHERE number != {tag}", 3, 3,
                       params={"max_execution_time": "3"})
    assert [a[0] for a in answers] == [408] * 3 and executions()["shared"] == before["shared"]
    # The request that started a shared run goes away: the others still get its result (here: its own time limit,
    # TIMEOUT_EXCEEDED, not the cancellation its departure would have caused).
    long_sql = f"SELECT count() FROM numbers(100000000001) WHERE number != {tag}"
    limited = {"max_execution_time": "4"}
    t = threading.Thread(target=lambda: pytest.raises(OSError, ep.http, long_sql, params=limited, timeout=1))
    t.start()
    wait_until(lambda: int(ep.http(running)[2]) >= 1, 10, "the long query to run")
    status, headers, _ = ep.http(long_sql, params=limited)
    t.join()
    assert status == 408 and headers["X-ClickHouse-Exception-Code"] == "159"


def test_beyond_loopback_needs_tls(tmp_path: Path) -> None:
    c = RunstreamConfig(data_dir=str(tmp_path))
    c.sink.sql_listen = "0.0.0.0:8124"
    with pytest.raises(ConfigError, match="sink.sql_listen: 0.0.0.0:8124 is beyond loopback without TLS"):
        c.validate()
    with pytest.raises(ConfigError, match="not a loopback address"):
        SqlEndpoint(c)


def test_without_the_capability_reads_keep_the_normal_priority_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from runstream.storage import sqlserver
    monkeypatch.setattr(sqlserver, "may_raise_priority", lambda: False)
    server = SqlEndpoint(RunstreamConfig(data_dir=str(tmp_path)))
    t = threading.Thread(target=time.sleep, args=(0.5,))
    t.start()
    assert t.native_id is not None
    with caplog.at_level("WARNING", logger=sqlserver.log.name):
        server._prioritise(t)
    assert os.getpriority(os.PRIO_PROCESS, t.native_id) == 0
    assert "needs CAP_SYS_NICE" in caplog.text and "normal CPU priority" in caplog.text
    t.join()


def test_panels_read_rows_by_runs_not_by_the_points_table(endpoint: Endpoint) -> None:
    """Every provisioned panel's query reads rows by the runs, metrics and windows it shows: 400k more points in runs
    it does not show add next to nothing to what it reads (X-ClickHouse-Summary's read_rows), where a scan of the
    points table would add them all. Last in this module: it adds data the tests above do not expect."""
    from runstream.storage import columns
    from runstream.storage.governance import GovernanceApplier
    from runstream.storage.writer import Writer
    from runstream.v1.ingest_pb2 import Batch

    ep = endpoint

    def reads() -> dict[str, int]:
        out = {}
        for name, sql in panel_queries(ep):
            status, headers, body = ep.http(sql)
            assert status == 200, (name, body[:300])
            out[name] = int(json.loads(headers["X-ClickHouse-Summary"])["read_rows"])
        return out
    before = reads()
    sink_client = clickhouse_connect.get_client(interface="chdb", path=str(ep.config.clickhouse_path))  # the sink's engine
    items, tables = [], columns.Tables()
    runs, steps = 40, 5000
    for i in range(runs):
        b = Batch(batch_id=uuid.uuid4().hex, project="bulk", run_id=f"bulk-{i}", seq=2, created_ms=ep.now_ms - 600_000)
        b.metrics.names.extend(["loss", "acc"])
        b.metrics.name_index.extend([0, 1] * steps)
        b.metrics.steps.extend([s for s in range(steps) for _ in (0, 1)])
        b.metrics.timestamps_ms.extend([ep.now_ms - 600_000 + s * 100 for s in range(steps) for _ in (0, 1)])
        b.metrics.values.extend([0.5] * (2 * steps))
        items.append((b, 0, i))
    columns.build(items, tables)
    Writer(sink_client, ep.db, GovernanceApplier(sink_client, ep.db)).write(tables)
    added = runs * steps * 2
    assert ep.http("SELECT count() FROM metric_points WHERE project = 'bulk'")[2] == f"{added}\n".encode()
    after = reads()
    grew = {name: after[name] - before[name] for name in before}
    assert max(grew.values()) < added // 20, sorted(grew.items(), key=lambda kv: -kv[1])[:5]
