"""Opening ClickHouse (embedded chDB or a server URL) and applying migrations.

Migrations are the ``migrations/NNNN_*.sql`` files beside this module, applied
in order and recorded in ``<db>.schema_migrations``; statements are separated
by ``;`` at the end of a line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from runstream.storage.cluster import Layout
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import StorageError, StoreLocked
from runstream.wire.files import private_dir

log = logging.getLogger("runstream.storage")
MIGRATIONS = Path(__file__).with_name("migrations")


@contextmanager
def map_clickhouse_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ClickHouseError as exc:
        raise StorageError(f"{what} failed: {exc}") from exc


def open_embedded(path: Path, **kwargs: Any) -> Client:
    """The in-process engine at ``path``. One process may hold a path at a time."""
    private_dir(path)
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(path), **kwargs)
    except Exception as exc:  # chdb reports the lock as BAD_ARGUMENTS; the real cause is on stderr
        if "BAD_ARGUMENTS" in str(exc) or "lock" in str(exc).lower():
            raise StoreLocked(
                f"the embedded ClickHouse store at {path} is open in another process (Cannot lock file {path}/status). "
                "Only one process may own it: query through that process's SQL endpoint "
                "(runstream sql uses it when `runstream up` runs), or stop it first.") from exc
        raise StorageError(f"opening the embedded ClickHouse store at {path} failed: {exc}") from exc


def open_url(url: str, *, token: str = "", **kwargs: Any) -> Client:
    """A client for a ClickHouse HTTP endpoint (a server, or the runstream read endpoint with ``token``)."""
    u = urlparse(url)
    try:
        return clickhouse_connect.get_client(
            host=u.hostname or "127.0.0.1", port=u.port or (8443 if u.scheme == "https" else 8123),
            secure=u.scheme == "https", username=u.username or ("runstream" if token else "default"),
            password=u.password or token, **kwargs)
    except Exception as exc:
        raise StorageError(f"cannot reach ClickHouse at {u.scheme}://{u.hostname}:{u.port}: {exc}. "
                           "Is the server (or `runstream up`) running, and is the token right?") from exc


def may_raise_priority() -> bool:
    """Whether this process may set its threads' nice (CAP_SYS_NICE): the engine's nice settings need it, and a
    negative nice (reads first) does too."""
    status = Path("/proc/self/status")  # Linux; elsewhere nice values do not apply
    for line in status.read_text().splitlines() if status.exists() else ():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 23))  # CAP_SYS_NICE
    return False


def open_store(config: RunstreamConfig) -> Client:
    """The writable store the sink owns: the server at clickhouse.url, else the embedded engine, its merges at
    clickhouse.merge_nice (engine settings apply when the process first opens the engine: the sink opens it first)."""
    if config.clickhouse.url:
        return open_url(config.clickhouse.url)
    nice = config.clickhouse.merge_nice
    if nice and not may_raise_priority():
        log.warning("clickhouse.merge_nice %d: the engine sets its merge threads' priority only with CAP_SYS_NICE (run "
                    "as root or grant it, e.g. compose `cap_add: [SYS_NICE]`), so merges run at the normal priority "
                    "and compete with ingest for the cores on a saturated machine.", nice)
    return open_embedded(config.clickhouse_path, chdb_options={"os_threads_nice_value_merge_mutate": nice} if nice else None)


def migrations(*, server: bool = True) -> list[tuple[int, str, list[str]]]:
    """Migration files in order; ``*.server.sql`` ones (access control) only for a ClickHouse server."""
    out = []
    for f in sorted(MIGRATIONS.glob("*.sql")):
        if f.name.endswith(".server.sql") and not server:
            continue
        version = int(f.name.split("_", 1)[0])
        text = "\n".join(line for line in f.read_text().splitlines() if not line.lstrip().startswith("--"))
        statements = [s.strip() for s in text.split(";\n") if s.strip().rstrip(";")]
        out.append((version, f.name, [s.rstrip(";") for s in statements]))
    return out


def is_embedded(client: Client) -> bool:
    return type(client).__name__ == "ChdbClient"


def migrate(client: Client, database: str, cluster: str = "") -> list[str]:
    """Apply pending migrations (on every node of ``cluster`` when given); returns the names applied."""
    layout = Layout(database, cluster)
    applied: list[str] = []
    with map_clickhouse_errors("migration"):
        for stmt in layout.database() + layout.migrations_table():
            client.command(stmt)
        done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
        for version, name, statements in migrations(server=not is_embedded(client)):
            if version in done:
                continue
            for stmt in statements:
                for part in layout.statements(stmt.replace("{db}", database)):
                    client.command(part)
            client.insert(f"{database}.schema_migrations", [[version, name]], column_names=["version", "name"])
            applied.append(name)
            log.info("Applied migration %s.", name)
    return applied
