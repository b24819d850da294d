"""Migrations over a store that already holds data, on the embedded engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from runstream.storage import store
from runstream.storage.store import migrate, open_embedded

POINTS = "SELECT run_id, metric, step, value FROM {db}.metric_points FINAL ORDER BY run_id, metric, step"


def insert_points(client, db: str, run: str, n: int) -> None:  # type: ignore[no-untyped-def]
    client.insert(f"{db}.metric_points",
                  [["p", run, "loss", s, 1_700_000_000_000 + s, 1.0 / (s + 1), 7, s] for s in range(n)],
                  column_names=["project", "run_id", "metric", "step", "ts", "value", "batch", "idx"])


def migrate_up_to(client, db: str, version: int, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The store as it was before migration ``version``: the earlier ones applied, then ``migrate`` applies the rest."""
    every = store.migrations
    monkeypatch.setattr(store, "migrations", lambda **kw: [m for m in every(**kw) if m[0] < version])
    migrate(client, db)
    monkeypatch.setattr(store, "migrations", every)


def test_points_codec_migration_rewrites_no_stored_part(chdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_embedded(chdb_path)
    db = "t_codec"
    every = store.migrations
    migrate_up_to(client, db, 11, monkeypatch)
    insert_points(client, db, "before", 1000)
    parts_before = {r[0] for r in client.query("SELECT name FROM system.parts WHERE active AND database = %(d)s "
                                               "AND table = 'metric_points'", parameters={"d": db}).result_rows}
    assert parts_before
    mutations = "SELECT command FROM system.mutations WHERE database = %(d)s ORDER BY create_time"
    mutations_before = client.query(mutations, parameters={"d": db}).result_rows

    monkeypatch.setattr(store, "migrations", lambda **kw: [m for m in every(**kw) if m[0] < 12])
    assert migrate(client, db) == ["0011_points_lz4.sql"]
    codecs = dict(client.query("SELECT name, compression_codec FROM system.columns WHERE database = %(d)s AND "
                               "table = 'metric_points'", parameters={"d": db}).result_rows)
    assert codecs["value"] == "CODEC(Gorilla(8), LZ4)" and codecs["step"] == "CODEC(Delta(8), LZ4)", codecs
    # A codec change is metadata: the stored parts stay as they are, no mutation rewrites them.
    assert client.query(mutations, parameters={"d": db}).result_rows == mutations_before
    parts_after = {r[0] for r in client.query("SELECT name FROM system.parts WHERE active AND database = %(d)s "
                                              "AND table = 'metric_points'", parameters={"d": db}).result_rows}
    assert parts_after == parts_before

    # Old ZSTD parts and new LZ4 parts read and merge into the same points.
    insert_points(client, db, "after", 1000)
    expected = [("after", "loss", s, 1.0 / (s + 1)) for s in range(1000)] + \
               [("before", "loss", s, 1.0 / (s + 1)) for s in range(1000)]
    assert client.query(POINTS.format(db=db)).result_rows == expected
    client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    assert client.query(f"SELECT count() FROM system.parts WHERE active AND database = '{db}' "
                        "AND table = 'metric_points'").result_rows[0][0] == 1
    assert client.query(POINTS.format(db=db)).result_rows == expected
    client.command(f"DROP DATABASE {db}")


def test_merge_base_migration_is_a_setting_of_the_points_table(chdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_embedded(chdb_path)
    db = "t_merge_base"
    migrate_up_to(client, db, 12, monkeypatch)
    insert_points(client, db, "before", 100)
    setting = ("SELECT value, changed FROM system.merge_tree_settings WHERE name = 'merge_selector_base'",
               "SELECT create_table_query FROM system.tables WHERE database = %(d)s AND name = 'metric_points'")
    assert "merge_selector_base" not in client.query(setting[1], parameters={"d": db}).result_rows[0][0]
    assert "0012_merge_amplification.sql" in migrate(client, db)
    assert "merge_selector_base = 10" in client.query(setting[1], parameters={"d": db}).result_rows[0][0]
    assert client.query(setting[0]).result_rows[0][0] == "5"  # the engine's default, for every other table
    insert_points(client, db, "after", 100)
    assert client.query(f"SELECT count() FROM {db}.metrics").result_rows[0][0] == 200
    client.command(f"DROP DATABASE {db}")


def test_point_reads_give_each_point_once_after_a_replay(chdb_path: Path) -> None:
    """The read API's point reads (metric_points FINAL) and the metrics view (0016: FINAL without 0010's prewhere
    setting) keep one copy of a replayed poll's points, whether or not its part is merged yet."""
    from runstream.wire import views

    client = open_embedded(chdb_path)
    db = "t_points_once"
    migrate(client, db)
    insert_points(client, db, "r", 3000)
    client.command(f"SYSTEM STOP MERGES {db}.metric_points")
    insert_points(client, db, "r", 1000)  # the first 1,000 points again, as a replay writes them: a part of its own
    parts = client.query(f"SELECT count() FROM system.parts WHERE active AND database = '{db}' AND table = 'metric_points'")
    assert parts.result_rows[0][0] == 2
    expected = [(s, 1.0 / (s + 1)) for s in range(3000)]
    history = views.history(db, [("r", None)], "loss", "p", None)
    assert [(s, v) for s, v, _ in client.query(history.sql, parameters=history.params).result_rows] == expected
    scan = views.history_scan(db, "r", "p", up_to=None, keys=None)
    assert [(s, v) for s, _, v, _ in client.query(scan.sql, parameters=scan.params).result_rows] == expected
    assert client.query(f"SELECT step, value FROM {db}.metrics WHERE run_id = 'r' ORDER BY step").result_rows == expected
    view = client.query(f"SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = 'metrics'")
    assert "prewhere" not in view.result_rows[0][0].lower()
