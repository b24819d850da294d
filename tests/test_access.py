"""Server access control: the embedded engine skips it (it has none); every statement that a server
would run (the server migration, a project's role and row policies) parses on the real engine."""

from __future__ import annotations

from pathlib import Path

from runstream.storage import access
from runstream.storage.store import migrate, migrations, open_embedded


def test_server_statements_parse_and_embedded_skips_them(chdb_path: Path) -> None:
    client = open_embedded(chdb_path)
    db = "t_access"
    client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
    applied = migrate(client, db)
    assert applied and not any(name.endswith(".server.sql") for name in applied)
    server_only = [m for m in migrations(server=True) if m[1].endswith(".server.sql")]
    assert server_only, "the server migration is missing"
    statements = [s.replace("{db}", db) for _, _, stmts in server_only for s in stmts]
    statements += access.base_statements(db) + access.project_statements(db, "vision-2") + access.project_statements(db, "o'brien")
    for stmt in statements:
        client.query(f"EXPLAIN AST {stmt}")  # raises on a syntax error
    policies = [s for s in access.project_statements(db, "vision") if "ROW POLICY" in s]
    assert len(policies) == len(access.PROJECT_TABLES) and all("AS RESTRICTIVE" in p for p in policies)
    assert len(access.base_statements(db)) == len(access.PROJECT_TABLES)
    client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
