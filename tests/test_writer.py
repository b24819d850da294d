"""The sink's writer on the embedded engine: a batch delivered twice into one poll (Kafka's at-least-once) is read
once, through the views and the latest values kept beside them; the latest values hold over polls and replays."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import migrate, open_embedded
from runstream.storage.writer import Writer
from tests.helpers import metric_batch


@pytest.fixture(scope="module")
def stored_db(chdb_path: Path) -> Iterator[tuple]:
    client = open_embedded(chdb_path)
    db = f"w_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    migrate(client, db)
    yield client, db
    client.command(f"DROP DATABASE {db}")


def test_a_batch_twice_in_one_poll_is_read_once(chdb_path: Path) -> None:
    client = open_embedded(chdb_path)
    db = f"w_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {db}")
    try:
        migrate(client, db)
        client.command(f"SYSTEM STOP MERGES {db}.metric_points")  # no merge collapses the copy for the views
        b = metric_batch("twice", 500, values=[float(i) for i in range(500)])
        Writer(client, db, GovernanceApplier(client, db)).write(columns.build([(b, 0, 7), (b, 0, 8)]))
        assert client.command(f"SELECT count() FROM {db}.batches FINAL") == 1
        assert client.query(f"SELECT count(), sum(value) FROM {db}.metrics").result_rows == [(500, sum(range(500)))]
        assert client.query(f"SELECT step, value FROM {db}.latest").result_rows == [(499, 499.0)]
    finally:
        client.command(f"DROP DATABASE {db}")


POINT = hst.tuples(hst.sampled_from(["p", "q"]), hst.sampled_from(["r1", "r2"]), hst.sampled_from(["loss", "acc", "lr"]),
                   hst.integers(-3, 40), hst.floats(allow_nan=False, width=32))


@given(polls=hst.lists(hst.lists(hst.lists(POINT, min_size=1, max_size=12), min_size=1, max_size=4), min_size=1, max_size=3),
       replay=hst.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_latest_holds_each_runs_highest_step_over_polls_and_replays(stored_db: tuple, polls: list, replay: bool) -> None:
    """Several polls of batches (two projects sharing run ids, steps out of order and repeated, a poll replayed):
    the latest view answers per run and metric the highest step ever stored, with a value and time logged at it."""
    client, db = stored_db
    tag = uuid.uuid4().hex[:8]
    writer = Writer(client, db, GovernanceApplier(client, db))
    logged: dict[tuple[str, str, str], dict[int, set[tuple[float, int]]]] = {}
    written = []
    for n, poll in enumerate(polls):
        items = []
        for i, points in enumerate(poll):
            by_run: dict[tuple[str, str], list] = {}
            for project, run, metric, step, value in points:
                by_run.setdefault((project, f"{tag}-{run}"), []).append((metric, step, value))
            for (project, run_id), pts in by_run.items():
                names = sorted({m for m, _, _ in pts})
                ts = [1_700_000_000_000 + 1000 * n + 10 * i + j for j in range(len(pts))]
                items.append((metric_batch(run_id, project=project, names=names, name_index=[names.index(m) for m, _, _ in pts],
                                           steps=[s for _, s, _ in pts], values=[v for _, _, v in pts], timestamps_ms=ts), 0, 0))
                for (m, s, v), t in zip(pts, ts):
                    logged.setdefault((project, run_id, m), {}).setdefault(s, set()).add((v, t))
        written.append(items)
        writer.write(columns.build(items))
    if replay:  # Kafka's at-least-once: the first poll again, after the others
        writer.write(columns.build(written[0]))
    rows = client.query(f"SELECT project, run_id, metric, step, value, toUnixTimestamp64Milli(ts) FROM {db}.latest "
                        "WHERE run_id LIKE %(t)s", parameters={"t": f"{tag}-%"}).result_rows
    got = {(p, r, m): (s, v, ts) for p, r, m, s, v, ts in rows}
    assert set(got) == set(logged)
    for k, (step, value, ts) in got.items():
        assert step == max(logged[k]), k
        assert (value, ts) in logged[k][step], (k, value, ts, logged[k][step])
