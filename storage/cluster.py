"""Where the schema lives: one node, or a ClickHouse cluster (``clickhouse.cluster``).

On a cluster every stored table is a ``Replicated*MergeTree`` table ``<name>_local`` on every node (replicas of
a shard copy each other through Keeper) and a ``Distributed`` table under the single-node name, sharded so that
every row of a run lands on one shard (``cityHash64(run_id)``; project-wide tables by project). Because a run
never spans shards, the views are computed on each shard over its local tables (``<view>_local``) and read
through a ``Distributed`` table under the view's name: every query written for one node reads the same rows.

Writes stay idempotent across replicas: the sink inserts through the Distributed tables synchronously
(``distributed_foreground_insert``), so an insert returns only once its shard has it. A replayed batch carries
the same run id, so it reaches the same shard, where the replicated tables drop an identical insert block and
the ReplacingMergeTree key (batch, idx) collapses any other copy, exactly as on one node; reads use FINAL.

Migration files are written once, for one node; ``Layout.statements`` derives each statement's cluster form
(``ON CLUSTER``, local and distributed tables). A statement it does not know is an error, never passed through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runstream.storage.tables import TABLES

SHARD_KEYS = {"run": "cityHash64(run_id)", "project": "cityHash64(project)"}
GLOBAL_SHARD_KEYS = {"governance_events": "cityHash64(partition, offset)"}

_CREATE_TABLE = re.compile(
    r"CREATE TABLE (?P<ine>IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*(?P<cols>\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)", re.S)
_CREATE_VIEW = re.compile(r"CREATE VIEW (?P<ine>IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+) AS\s+(?P<select>.*)", re.S)
_CREATE_MV = re.compile(r"CREATE MATERIALIZED VIEW (?P<ine>IF NOT EXISTS )?(?P<db>\w+)\.(?P<name>\w+) "
                        r"TO (?P<tdb>\w+)\.(?P<target>\w+) AS\s+(?P<select>.*)", re.S)
_DROP_VIEW = re.compile(r"DROP VIEW (?P<ie>IF EXISTS )?(?P<db>\w+)\.(?P<name>\w+)\s*")
_ALTER = re.compile(r"ALTER TABLE (?P<db>\w+)\.(?P<name>\w+) (?P<rest>.*)", re.S)
_INSERT_SELECT = re.compile(r"INSERT INTO \w+\.\w+\s+(\([\w, ]+\)\s*)?SELECT ", re.S)
_CREATE_ROLE = re.compile(r"CREATE ROLE (?P<ine>IF NOT EXISTS )?(?P<name>\w+)")
_GRANT = re.compile(r"GRANT (?P<rest>.*)", re.S)
_ROW_POLICY = re.compile(r"CREATE ROW POLICY (?P<ine>IF NOT EXISTS )?(?P<name>\w+) ON (?P<db>\w+)\.(?P<table>\w+) "
                         r"(?P<rest>.*)", re.S)
# ALTERs that change a table's columns apply to the Distributed table too; the rest (indexes, TTL, mutations)
# concern the stored parts only.
_COLUMN_ALTER = re.compile(r"(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN ", re.I)


def shard_key(table: str) -> str:
    if table in GLOBAL_SHARD_KEYS:
        return GLOBAL_SHARD_KEYS[table]
    scope = next((t.scope for t in TABLES if t.name == table), None)
    if scope not in SHARD_KEYS:
        raise ValueError(f"table {table!r} has no shard key: add it to storage/tables.py (its scope) or "
                         "storage/cluster.py GLOBAL_SHARD_KEYS")
    return SHARD_KEYS[scope]


@dataclass(frozen=True)
class Layout:
    db: str
    cluster: str = ""             # empty: one node, every statement as written

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    @property
    def insert_settings(self) -> dict[str, int]:
        # An insert returns once its shard has the rows, so committing the Kafka offset after it loses nothing.
        return {"distributed_foreground_insert": 1} if self.cluster else {}

    def database(self) -> list[str]:
        return [f"CREATE DATABASE IF NOT EXISTS {self.db}{self.on_cluster}"]

    def migrations_table(self) -> list[str]:
        cols = "(version UInt32, name String, applied DateTime DEFAULT now())"
        if not self.cluster:
            return [f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations {cols} ENGINE = MergeTree ORDER BY version"]
        # One copy on every node of every shard: each node's replica name is unique in the cluster.
        return [f"CREATE TABLE IF NOT EXISTS {self.db}.schema_migrations{self.on_cluster} {cols} "
                f"ENGINE = ReplicatedMergeTree('/clickhouse/runstream/{self.db}/schema_migrations', '{{replica}}') "
                "ORDER BY version"]

    def _localize(self, sql: str) -> str:
        """A SELECT over the local tables: it runs on each shard, which holds whole runs."""
        names = {t.name for t in TABLES}
        return re.sub(rf"\b{self.db}\.(\w+)\b", lambda m: f"{self.db}.{m[1]}_local" if m[1] in names else m[0], sql)

    def _distributed(self, ine: str, name: str, key: str = "") -> str:
        return (f"CREATE TABLE {ine}{self.db}.{name}{self.on_cluster} AS {self.db}.{name}_local "
                f"ENGINE = Distributed('{self.cluster}', '{self.db}', '{name}_local'{', ' + key if key else ''})")

    def statements(self, stmt: str) -> list[str]:
        """One statement (``{db}`` already replaced) in this layout."""
        stmt = stmt.strip()
        if not self.cluster:
            return [stmt]
        c = self.on_cluster
        if m := _CREATE_TABLE.fullmatch(stmt):
            name, args = m["name"], m["args"]
            path = f"'/clickhouse/tables/{{shard}}/{self.db}/{name}_local', '{{replica}}'"
            engine = f"Replicated{m['engine']}({path}{', ' + args if args else ''})"
            return [f"CREATE TABLE {m['ine'] or ''}{self.db}.{name}_local{c} {m['cols']}\nENGINE = {engine}{m['rest']}",
                    self._distributed(m["ine"] or "", name, shard_key(name))]
        if m := _CREATE_VIEW.fullmatch(stmt):
            return [f"CREATE VIEW {m['ine'] or ''}{self.db}.{m['name']}_local{c} AS\n{self._localize(m['select'])}",
                    self._distributed(m["ine"] or "", m["name"])]
        if m := _CREATE_MV.fullmatch(stmt):
            return [f"CREATE MATERIALIZED VIEW {m['ine'] or ''}{self.db}.{m['name']}{c} "
                    f"TO {self.db}.{m['target']}_local AS\n{self._localize(m['select'])}"]
        if m := _DROP_VIEW.fullmatch(stmt):
            ie = m["ie"] or ""
            return [f"DROP TABLE {ie}{self.db}.{m['name']}{c} SYNC", f"DROP VIEW {ie}{self.db}.{m['name']}_local{c} SYNC"]
        if m := _ALTER.fullmatch(stmt):
            out = [f"ALTER TABLE {self.db}.{m['name']}_local{c} {m['rest']}"]
            if _COLUMN_ALTER.match(m["rest"]):
                out.append(f"ALTER TABLE {self.db}.{m['name']}{c} {m['rest']}")
            return out
        if _INSERT_SELECT.match(stmt):
            return [stmt]  # through the Distributed tables, which shard the rows as the sink's inserts do
        if m := _CREATE_ROLE.fullmatch(stmt):
            return [f"CREATE ROLE {m['ine'] or ''}{m['name']}{c}"]
        if m := _ROW_POLICY.fullmatch(stmt):
            # On the Distributed table (the initiator) and on the local one (a shard reading for the same user).
            return [f"CREATE ROW POLICY {m['ine'] or ''}{m['name']}{c} ON {m['db']}.{t} {m['rest']}"
                    for t in (m["table"], f"{m['table']}_local")]
        if m := _GRANT.fullmatch(stmt):
            return [f"GRANT{c} {m['rest']}"]
        raise ValueError(f"no cluster form for the statement {stmt[:120]!r}: teach storage/cluster.py its shape")
