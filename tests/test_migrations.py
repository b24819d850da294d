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


def test_points_codec_migration_rewrites_no_stored_part(chdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = open_embedded(chdb_path)
    db = "t_codec"
    every = store.migrations
    monkeypatch.setattr(store, "migrations", lambda **kw: [m for m in every(**kw) if m[0] < 11])
    migrate(client, db)
    insert_points(client, db, "before", 1000)
    parts_before = {r[0] for r in client.query("SELECT name FROM system.parts WHERE active AND database = %(d)s "
                                               "AND table = 'metric_points'", parameters={"d": db}).result_rows}
    assert parts_before
    mutations = "SELECT command FROM system.mutations WHERE database = %(d)s ORDER BY create_time"
    mutations_before = client.query(mutations, parameters={"d": db}).result_rows

    monkeypatch.setattr(store, "migrations", every)
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
