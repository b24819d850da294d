"""run_index (storage/migrations/0014_run_index.sql): one row per run, kept by materialized views. Whatever the sink
writes, in whatever order and with replays, the runs view over it answers exactly as the joins of 0009 over the source
tables did, and its maps hold each param's and tag's latest value and each metric's latest point; the read API's
derivation (runstream.wire.views.RunRow) gives the view's fields too."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runstream.read.api import _decode, runs_frame
from runstream.storage.store import migrate, open_embedded
from runstream.wire import views
from runstream.wire.names import new_run_id
from runstream.wire.search import DELETED_TAG
from tests.helpers import wait_until

DB = "runidx"
MIGRATIONS = Path(__file__).resolve().parents[1] / "storage" / "migrations"
# The runs view as 0009 defined it: joins of the start, finish and session records. The oracle, with one fix 0014
# made: argMax skips NULLs, so a resumed session still running showed the previous session's end.
OLD_VIEW = ((MIGRATIONS / "0009_sessions.sql").read_text().split("CREATE VIEW {db}.runs AS", 1)[1].replace("{db}", DB)
            .strip().rstrip(";").replace("argMax(ended, resumed)", "argMax(tuple(ended), resumed).1"))
VIEW_COLUMNS = ["run_id", "name", "status", "started", "ended", "tags", "git_commit", "hostname", "parent_run_id",
                "fork_step", "points_acked", "points_dropped", "sessions"]
_projects = itertools.count()


@pytest.fixture(scope="module")
def client(chdb_path: Path) -> Any:
    c = open_embedded(chdb_path)
    c.command(f"DROP DATABASE IF EXISTS {DB} SYNC")
    migrate(c, DB)
    yield c
    c.command(f"DROP DATABASE IF EXISTS {DB} SYNC")


def ms(t: int) -> datetime:
    return datetime.fromtimestamp(t / 1000, tz=UTC)


session_st = st.fixed_dictionaries({"resumed": st.integers(10_000, 20_000), "finished": st.booleans(),
                                    "status": st.sampled_from(["finished", "failed"]), "acked": st.integers(0, 99)})
run_st = st.fixed_dictionaries({
    "fork_step": st.none() | st.integers(-5, 50),
    "finish": st.none() | st.tuples(st.sampled_from(["finished", "failed", "killed"]), st.integers(0, 1000)),
    "sessions": st.lists(session_st, max_size=2, unique_by=lambda s: s["resumed"]),
    # (key, value, time): a key written again later replaces its value; tags may be deleted.
    "params": st.lists(st.tuples(st.sampled_from(["lr", "opt", "n"]), st.sampled_from(['0.1', '"sgd"', '3', 'null', '[1, 2]', '{"a": 1}']),
                                 st.integers(1, 9_000)), max_size=5, unique_by=lambda p: p[2]),
    "tags": st.lists(st.tuples(st.sampled_from(["team", "best"]), st.sampled_from(["a", "b", "", DELETED_TAG]),
                               st.integers(1, 9_000)), max_size=4, unique_by=lambda p: p[2]),
    # (metric, step, value): a metric's latest point has its largest step.
    "points": st.lists(st.tuples(st.sampled_from(["loss", "acc"]), st.integers(-3, 40), st.floats(-1e6, 1e6)),
                       max_size=6, unique_by=lambda p: (p[0], p[1])),
})


def inserts(project: str, run_id: str, r: dict[str, Any]) -> list[str]:
    """The sink's inserts for one run: each record kind on its own, as separate polls write them."""
    out = [f"INSERT INTO {DB}.run_starts (project, run_id, name, started, tags, git_commit, hostname, parent_run_id, "
           f"fork_step) VALUES ('{project}', '{run_id}', 'name-{run_id}', {1_000 + len(run_id)}, ['t1'], 'abc', 'host', "
           f"'parent', {'NULL' if r['fork_step'] is None else r['fork_step']})"]
    if r["finish"]:
        out.append(f"INSERT INTO {DB}.run_finishes (project, run_id, status, ended, points_acked, points_dropped) VALUES "
                   f"('{project}', '{run_id}', '{r['finish'][0]}', 9000, {r['finish'][1]}, 2)")
    for i, s in enumerate(r["sessions"]):
        out.append(f"INSERT INTO {DB}.run_sessions VALUES ('{project}', '{run_id}', 's{i}', {s['resumed']}, NULL, "
                   f"'running', 0, 0, 0, 1)")
        if s["finished"]:
            out.append(f"INSERT INTO {DB}.run_sessions VALUES ('{project}', '{run_id}', 's{i}', {s['resumed']}, "
                       f"{s['resumed'] + 5}, '{s['status']}', {s['acked']}, 1, 1, 2)")
    for table, rows in (("params", r["params"]), ("tags", r["tags"])):
        out += [f"INSERT INTO {DB}.{table} VALUES ('{project}', '{run_id}', '{k}', '{v}', {t})" for k, v, t in rows]
    out += [f"INSERT INTO {DB}.metric_points (project, run_id, metric, step, ts, value, batch, idx) VALUES "
            f"('{project}', '{run_id}', '{m}', {step}, {5_000 + i}, {value!r}, {i}, 0)"
            for i, (m, step, value) in enumerate(r["points"])]
    return out


def frame_row_by_row(found: list[views.RunRow]) -> pd.DataFrame:
    """Api.runs' DataFrame as it was first built: a row of dicts per run (missing params and metrics NaN)."""
    df = pd.DataFrame([r.fields() for r in found], columns=views.RUN_COLUMNS)
    df["ended"] = df["ended"].astype("datetime64[us]")  # NaT while running, a datetime column even if all run
    df["tags"] = [list(r.live_tags()) for r in found]
    wide = pd.DataFrame([{**{f"params.{k}": _decode(v["value"]) for k, v in r.params.items()},
                          **{f"metrics.{k}": v["value"] for k, v in r.metrics.items()}} for r in found], index=df.index)
    return pd.concat([df, wide[sorted(wide.columns)]], axis=1)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(run_st, min_size=1, max_size=3), order=st.randoms(use_true_random=False),
       replays=st.integers(0, 3))
def test_the_runs_view_over_run_index_answers_as_the_joins_did(client: Any, runs: list[dict[str, Any]], order: Any,
                                                                  replays: int) -> None:
    project = f"p{next(_projects)}"
    statements = [s for i, r in enumerate(runs) for s in inserts(project, f"r{i}", r)]
    order.shuffle(statements)
    for stmt in statements + statements[:replays]:  # a replay writes rows again: nothing may change
        client.command(stmt)

    cols = ", ".join(VIEW_COLUMNS)
    new = client.query(f"SELECT {cols} FROM {DB}.runs WHERE project = '{project}' ORDER BY run_id").result_rows
    old = client.query(f"SELECT {cols} FROM ({OLD_VIEW}) WHERE project = '{project}' ORDER BY run_id").result_rows
    assert new == old and len(new) == len(runs)

    # The maps: each param's and tag's latest value, each metric's latest point (largest step), as the tables say.
    statement = views.runs(DB, project, groups=[], orders=[], limit=None)
    found = views.run_rows(client, statement)
    # Api.runs builds its frame from the same rows read as Arrow, column by column.
    pd.testing.assert_frame_equal(runs_frame(client.query_arrow(statement.sql, parameters=statement.params)),
                                  frame_row_by_row(found))
    by_id = {r.run_id: r for r in found}
    for i, r in enumerate(runs):
        row = by_id[f"r{i}"]
        latest_params = {k: v for k, v, _ in sorted(r["params"], key=lambda p: p[2])}
        assert {k: v["value"] for k, v in row.params.items()} == latest_params
        latest_tags = {k: v for k, v, _ in sorted(r["tags"], key=lambda p: p[2])}
        assert row.live_tags() == {k: v for k, v in sorted(latest_tags.items()) if v != DELETED_TAG}
        latest_points = {m: value for m, _, value in sorted(r["points"], key=lambda p: p[1])}
        assert {k: v["value"] for k, v in row.metrics.items()} == latest_points
        # The read API's fields, derived in Python, are the view's.
        view_row = dict(zip(VIEW_COLUMNS, next(o for o in old if o[0] == f"r{i}")))
        fields = row.fields()
        assert {k: fields[k] for k in ("name", "status", "started", "ended", "parent_run_id", "fork_step",
                                       "points_acked", "sessions")} == \
            {k: view_row[k] for k in ("name", "status", "started", "ended", "parent_run_id", "fork_step",
                                      "points_acked", "sessions")}
        assert row.points_dropped == view_row["points_dropped"]


def test_searches_filter_and_order_on_the_maps(client: Any) -> None:
    """Typed params, a deleted tag, a metric's latest value and an attribute, in the read API's one-table search."""
    project = f"p{next(_projects)}"
    runs = [{"fork_step": None, "finish": ("finished", 10), "sessions": [], "points": [("loss", 1, 0.5), ("loss", 9, 0.1)],
             "params": [("lr", "0.1", 1), ("lr", "0.01", 2)], "tags": [("best", "", 1), ("best", DELETED_TAG, 2)]},
            {"fork_step": None, "finish": None, "sessions": [], "points": [("loss", 3, 0.3)],
             "params": [("lr", "10", 1), ("opt", '"sgd"', 1)], "tags": [("best", "", 1)]}]
    for i, r in enumerate(runs):
        for stmt in inserts(project, f"r{i}", r):
            client.command(stmt)
    from runstream.wire import search

    def ids(flt: str = "", order: list[str] | None = None, **kw: Any) -> list[str]:
        groups = search.parse_filter_any(flt or None, where="filter", typed_params=True)
        statement = views.runs(DB, project, groups=groups, orders=search.parse_order_by(order or []), **kw)
        return [r.run_id for r in views.run_rows(client, statement)]

    assert ids("params.lr < 0.05") == ["r0"]  # its latest lr, 0.01, not the 0.1 it replaced
    assert ids("params.lr = 0.1") == []
    assert ids("tags.best IS NOT NULL") == ["r1"] and ids("tags.best IS NULL") == ["r0"]  # r0's tag was deleted
    assert ids("metrics.loss < 0.2") == ["r0"] and ids("metrics.loss > 0.2") == ["r1"]
    assert ids("attributes.status = 'running'") == ["r1"] and ids(status="finished") == ["r0"]
    assert ids(order=["params.lr DESC"]) == ["r1", "r0"] and ids(order=["metrics.loss ASC"]) == ["r0", "r1"]
    assert ids(order=["params.opt ASC"]) == ["r1", "r0"]  # runs without the param last
    assert ids(params={"opt": "sgd"}) == ["r1"] and ids(metrics={"loss": ("<=", 0.1)}) == ["r0"]
    assert ids(tags={"best": None}) == ["r1"]


def test_new_run_ids_are_uuid7_and_sort_after_every_earlier_run() -> None:
    """Runs are keyed by id: ids that sort by creation put new runs after the settled ones, so a FINAL read merges
    only the key ranges that recent runs share with the small new parts."""
    before_ms = int(time.time() * 1000)
    earlier = [new_run_id() for _ in range(2_000)]
    after_ms = int(time.time() * 1000)
    while int(time.time() * 1000) <= after_ms:  # the next millisecond
        pass
    later = new_run_id()
    assert len(set(earlier)) == len(earlier)
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in [*earlier, later])
    assert all(before_ms <= int(i[:12], 16) <= after_ms for i in earlier)
    assert later > max(earlier)


def test_run_index_parts_merge_into_one_once_writes_stop(client: Any) -> None:
    """0015_run_index_merged.sql: a search merges the rows of every unmerged part (FINAL), and the engine merges small
    parts only when more arrive; parts older than min_age_to_force_merge_seconds merge anyway."""
    create = client.query(f"SELECT create_table_query FROM system.tables WHERE database = '{DB}' AND name = 'run_index'"
                          ).result_rows[0][0]
    assert "min_age_to_force_merge_seconds = 60" in create
    # The engine honours the setting: at 1 s, parts written apart become one without another write.
    client.command(f"ALTER TABLE {DB}.run_index MODIFY SETTING min_age_to_force_merge_seconds = 1")
    try:
        project = f"p{next(_projects)}"
        for i in range(3):
            for stmt in inserts(project, f"r{i}", {"fork_step": None, "finish": None, "sessions": [], "params": [],
                                                    "tags": [], "points": []}):
                client.command(stmt)
        parts = f"SELECT count() FROM system.parts WHERE database = '{DB}' AND table = 'run_index' AND active"
        assert client.query(parts).result_rows[0][0] >= 3
        wait_until(lambda: client.query(parts).result_rows[0][0] == 1, 30, "run_index's parts merged into one")
        found = views.run_rows(client, views.runs(DB, project, groups=[], orders=[], limit=None))
        assert sorted(r.run_id for r in found) == ["r0", "r1", "r2"]
    finally:
        client.command(f"ALTER TABLE {DB}.run_index MODIFY SETTING min_age_to_force_merge_seconds = 60")
