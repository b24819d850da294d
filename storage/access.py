"""Access control on a ClickHouse server (the embedded engine has none): a read-only role, and per
project a role whose members see only that project's rows.

ClickHouse rule: once a table has a row policy, users without one see nothing. So the sink adds, on a
server, a permissive `USING 1 TO ALL` policy to every table that has a project column, and each project
gets a RESTRICTIVE policy for its role: members see the rows of their project only.
"""

from __future__ import annotations

from runstream.storage.tables import PROJECT_TABLES


def project_role(project: str) -> str:
    return "runstream_project_" + "".join(c if c.isalnum() else "_" for c in project)


def base_statements(db: str) -> list[str]:
    """The permissive policy on every project table that keeps it readable once restrictive ones exist."""
    return [f"CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.{t} FOR SELECT USING 1 TO ALL" for t in PROJECT_TABLES]


def project_statements(db: str, project: str) -> list[str]:
    """Statements that create the project's role and its restrictive row policies (idempotent)."""
    role = project_role(project)
    quoted = project.replace("\\", "\\\\").replace("'", "\\'")
    out = [f"CREATE ROLE IF NOT EXISTS {role}", f"GRANT SELECT ON {db}.* TO {role}"]
    out += [f"CREATE ROW POLICY IF NOT EXISTS {role}_{t} ON {db}.{t} AS RESTRICTIVE FOR SELECT "
            f"USING project = '{quoted}' TO {role}" for t in PROJECT_TABLES]
    return out
