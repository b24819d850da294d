"""What the stack already holds of a run, asked once by ``init(run_id=...)`` so that naming an existing run
resumes it (as MLflow's ``start_run(run_id=...)`` does) instead of writing a second start record.

The question goes to the read path (the stack's SQL endpoint, ClickHouse's HTTP interface) with the run's token;
only the standard library is used, so the slim SDK gains no dependency.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from runstream.wire import views
from runstream.wire.config import RunstreamConfig


@dataclass(frozen=True)
class StoredRun:
    name: str
    last_step: int | None  # the highest step stored for any of its metrics; None before its first point


class LookupFailed(Exception):
    """The read path could not say whether the run exists (the message says why)."""


def endpoint(config: RunstreamConfig, sql_url: str | None) -> tuple[str, str | None]:
    """(SQL endpoint URL, database or None for the endpoint's own), as the read API picks them."""
    if sql_url:
        return sql_url, None
    if config.client.sql_url:
        return config.client.sql_url, config.clickhouse.database
    return config.sql_url(), config.stack_info().get("database")


def stored_run(config: RunstreamConfig, project: str, run_id: str, *, token: str | None, sql_url: str | None = None,
               timeout_s: float = 5.0) -> StoredRun | None:
    """The run as stored, or None when the store has no start record for it. Raises LookupFailed."""
    url, database = endpoint(config, sql_url)
    if not url:
        raise LookupFailed("no SQL endpoint known (set client.sql_url / RUNSTREAM_SQL_URL, or start `runstream up`)")
    if "://" not in url:
        url = "http://" + url
    statement = views.resume_point("", project, run_id)
    args = {**{f"param_{k}": v for k, v in statement.params.items()}, **({"database": database} if database else {})}
    req = urllib.request.Request(url.rstrip("/") + "/?" + urllib.parse.urlencode(args),
                                 data=(statement.sql + " FORMAT JSONEachRow").encode(), method="POST")
    if token:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"runstream:{token}".encode()).decode())
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=config.client.tls_ca or None)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            body = resp.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace").strip().splitlines()
        raise LookupFailed(f"the SQL endpoint answered {exc.code}: {detail[0][:200] if detail else exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise LookupFailed(f"the SQL endpoint {url} is unreachable: {exc}") from exc
    line = body.strip().splitlines()
    if not line:
        return None
    row = json.loads(line[0])
    step = row.get("last_step")
    return StoredRun(name=str(row.get("name", "")), last_step=None if step is None else int(step))
