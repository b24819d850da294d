"""The ClickHouse cluster schema (clickhouse.cluster, storage/cluster.py). No server runs here, so: every
statement the sink would send to a cluster is parsed by the engine, and the cluster schema is executed on the
embedded engine as one shard (ON CLUSTER dropped, Replicated engines without their Keeper path, each Distributed
table a Merge over its local table), where the dashboards' queries must return what they return on one node."""

from __future__ import annotations

import re

import pytest
from clickhouse_connect.driver.binding import finalize_query

from runstream.dashboards import build
from runstream.storage import access
from runstream.storage.cluster import Layout
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import migrations
from runstream.storage.tables import TABLES
from runstream.v1.ingest_pb2 import ControlEvent, ProjectRecord, RetentionPolicy, RunDeletion
from runstream.wire.config import ConfigError, RunstreamConfig
from tests.grafana_macros import Context, expand, interpolate
from tests.test_dashboards import all_targets, seeded  # noqa: F401  (the seeded one-node store)

CLUSTER = Layout("runstream", "rs")


class Recorder:
    """Stands in for a server connection to capture the statements governance sends (they are parsed below)."""
    def __init__(self) -> None:
        self.sql: list[str] = []

    def command(self, sql: str, parameters: dict | None = None, settings: dict | None = None) -> None:
        self.sql.append(finalize_query(sql, parameters) if parameters else sql)


def cluster_statements() -> list[str]:
    out = CLUSTER.database() + CLUSTER.migrations_table()
    for _, _, statements in migrations(server=True):
        for stmt in statements:
            out += CLUSTER.statements(stmt.replace("{db}", "runstream"))
    rec = Recorder()
    gov = GovernanceApplier(rec, "runstream", cluster="rs")  # type: ignore[arg-type]
    gov.install_access()
    for ev in (ControlEvent(project=ProjectRecord(name="vision")),
               ControlEvent(run_delete=RunDeletion(project="vision", run_id="r'1")),
               ControlEvent(retention=RetentionPolicy(project="vision", raw_days=30, rollup_days=365))):
        gov.apply(ev)
    assert len(rec.sql) > len(access.PROJECT_TABLES) * 2, rec.sql
    return out + rec.sql


def test_every_cluster_statement_parses_and_names_the_cluster(seeded) -> None:  # noqa: F811
    client = seeded[0]
    statements = cluster_statements()
    for stmt in statements:
        formatted = client.query("SELECT formatQuery(%(q)s)", parameters={"q": stmt}).result_rows[0][0]
        if not stmt.startswith("INSERT"):
            assert " ON CLUSTER rs" in formatted, stmt
    # Every stored table: a replicated local table (its own Keeper path per shard) and a Distributed table
    # under the one-node name, sharded by run (or project) so that a run lives on one shard.
    text = "\n".join(statements)
    for t in TABLES:
        assert re.search(rf"CREATE TABLE IF NOT EXISTS runstream\.{t.name}_local ON CLUSTER 'rs' \(.*?\)\s*ENGINE = "
                         rf"Replicated\w*MergeTree\('/clickhouse/tables/{{shard}}/runstream/{t.name}_local', '{{replica}}'",
                         text, re.S), t.name
        key = "cityHash64(run_id)" if t.scope == "run" else "cityHash64(project)" if t.scope == "project" else "cityHash64("
        assert f"ENGINE = Distributed('rs', 'runstream', '{t.name}_local', {key}" in text, t.name
    # Views and materialized views on a shard read only that shard's tables.
    shard_side = [s for s in statements if re.match(r"CREATE (MATERIALIZED )?VIEW ", s)]
    assert len(shard_side) >= 7
    for stmt in shard_side:
        select = stmt.split(" AS\n", 1)[1]
        assert all(n.endswith("_local") for n in re.findall(r"runstream\.(\w+)", select)), stmt
    # Mutations and TTLs go to the stored tables on every node.
    assert "ALTER TABLE runstream.metric_points_local ON CLUSTER 'rs' DELETE WHERE project = 'vision' AND run_id = 'r\\'1'" in text
    assert "ALTER TABLE runstream.metric_points_local ON CLUSTER 'rs' MODIFY TTL" in text
    # One node: every statement exactly as written.
    one = Layout("runstream")
    assert all(one.statements(s) == [s] for _, _, st in migrations() for s in st)
    assert not one.insert_settings and CLUSTER.insert_settings == {"distributed_foreground_insert": 1}


def test_a_statement_without_a_cluster_form_is_refused() -> None:
    with pytest.raises(ValueError, match="no cluster form"):
        CLUSTER.statements("RENAME TABLE runstream.a TO runstream.b")


def test_cluster_config_needs_a_server() -> None:
    with pytest.raises(ConfigError, match="clickhouse.cluster: a cluster needs a server"):
        RunstreamConfig.load(None, env={"RUNSTREAM_CLICKHOUSE_CLUSTER": "rs"})
    c = RunstreamConfig.load(None, env={"RUNSTREAM_CLICKHOUSE_CLUSTER": "rs",
                                        "RUNSTREAM_CLICKHOUSE_URL": "http://ch-s1r1:8123"})
    assert c.clickhouse.cluster == "rs"


def as_one_shard(stmt: str, db: str) -> str | None:
    """A cluster statement as the embedded engine can run it: one shard, one replica, no Keeper."""
    if stmt.startswith(("GRANT", "CREATE ROLE", "CREATE ROW POLICY")):
        return None
    stmt = stmt.replace(" ON CLUSTER 'rs'", "").replace("runstream.", f"{db}.")
    stmt = re.sub(r"Replicated(\w*MergeTree)\('[^']*', '\{replica\}'(, )?", r"\1(", stmt)
    stmt = re.sub(r"Distributed\('rs', 'runstream', '(\w+)'(, [^)]*\)*)?\)", rf"Merge('{db}', '^\1$')", stmt)
    return stmt.replace("MergeTree()", "MergeTree")


def test_the_cluster_schema_answers_like_one_node(seeded) -> None:  # noqa: F811
    client, values, now_ms = seeded
    db = "cluster_emu"
    client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
    client.command(f"CREATE DATABASE {db}")
    try:
        for _, _, statements in migrations(server=False):
            for stmt in statements:
                for part in CLUSTER.statements(stmt.replace("{db}", "runstream")):
                    if (sql := as_one_shard(part, db)) and not sql.startswith("INSERT"):
                        client.command(sql)
        # The one-node rows into the local tables (the materialized view fills metric_latest_local), the points
        # twice: a replayed batch lands on the same shard, where the views' FINAL collapses it.
        for t in TABLES:
            if t.rows:
                client.command(f"INSERT INTO {db}.{t.name}_local SELECT * FROM runstream.{t.name}")
        client.command(f"INSERT INTO {db}.metric_points_local SELECT * FROM runstream.metric_points")
        assert client.command(f"SELECT count() FROM {db}.metric_points") == 2 * client.command(
            "SELECT count() FROM runstream.metric_points") > 0
        compared = 0
        for name in sorted(build.DASHBOARDS):
            for panel, target in all_targets(build.generate()[name]):
                if "rawSql" not in target:
                    continue
                ctx = Context(from_s=now_ms // 1000 - 6 * 3600, to_s=now_ms // 1000, interval_s=120,
                              variables={"project": ["$__all"], "run": values["run"][:2], "metric": ["loss"]},
                              all_values=values)
                sql = expand(interpolate(target["rawSql"], ctx), ctx)
                one = sorted(map(repr, client.query(sql).result_rows))
                emu = sorted(map(repr, client.query(sql.replace("runstream.", f"{db}.")).result_rows))
                assert one and emu == one, f"{name} / {panel.get('title')}: the cluster schema differs\n{sql}"
                compared += 1
        assert compared >= 10  # every ClickHouse panel of the dashboards
        for view in ("metrics", "runs", "latest", "rollups", "fleet", "alerts"):
            rows = [client.query(f"SELECT * FROM {d}.{view} ORDER BY ALL").result_rows for d in (db, "runstream")]
            assert rows[0] and rows[0] == rows[1], view
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
