"""A read-only ClickHouse HTTP endpoint over the embedded store.

A persistent chDB path can be opened by one process only. The process that
owns it (the sink) serves this endpoint, so `runstream sql`, `runstream runs`,
the benchmark and Grafana read through it with any ClickHouse HTTP client,
exactly as they would read a server. Writes are refused by the engine:
the endpoint's session runs with ``readonly = 2`` (settings may change,
data and schema may not).

Supported: ``GET``/``POST /`` with ``query`` in the URL and/or the body,
``database`` and ``default_format`` parameters, ``/ping``. Other URL
parameters (client settings) are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

import chdb
from aiohttp import web

log = logging.getLogger("runstream.sql")
CODE_RE = re.compile(r"Code: (\d+)\.")


class SqlEndpoint:
    def __init__(self, path: Path, listen: str, *, database: str = "runstream") -> None:
        self.path = path
        self.host, port = listen.rsplit(":", 1)
        self.port = int(port)
        self.database = database
        self._conn: Any = None
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._conn = chdb.connect(str(self.path.resolve()))  # type: ignore[no-untyped-call]
        self._conn.query("SET readonly = 2")
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/ping", self._ping)
        app.router.add_route("*", "/", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]
        log.info("SQL endpoint on http://%s:%d.", self.host, self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def _run(self, sql: str, fmt: str, database: str) -> bytes:
        with self._lock:
            assert self._conn is not None
            self._conn.query(f"USE `{database}`")
            res = self._conn.query(sql, fmt)
            return res.bytes() if res is not None else b""

    async def _query(self, request: web.Request) -> web.Response:
        params = request.rel_url.query
        body = (await request.read()).decode("utf-8", errors="replace") if request.can_read_body else ""
        sql = "\n".join(p for p in (params.get("query", ""), body) if p).strip()
        if not sql:
            return web.Response(status=400, text="Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)\n")
        fmt = params.get("default_format", "TabSeparated")
        database = params.get("database", self.database)
        headers = {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": "UTC",
                   "X-ClickHouse-Server-Display-Name": "runstream-embedded",
                   "X-ClickHouse-Query-Id": params.get("query_id", "")}
        try:
            data = await asyncio.to_thread(self._run, sql, fmt, database)
        except Exception as exc:
            text = str(exc)
            m = CODE_RE.search(text)
            code = m.group(1) if m else "1000"
            status = 403 if code == "164" else 500 if code == "1000" else 400
            return web.Response(status=status, text=text + "\n", headers={"X-ClickHouse-Exception-Code": code})
        return web.Response(body=data, headers=headers, content_type="application/octet-stream")
