"""Resume and fork through the real pipeline: a resumed run keeps its start record and its counts add up across
sessions; a fork names its parent and the step it continues from."""

from __future__ import annotations

from pathlib import Path

import runstream
from runstream.sdk.transport import GrpcTransport
from runstream.storage import queries
from tests.conftest import Stack
from tests.helpers import wait_until


def run_row(stack: Stack, run_id: str) -> dict[str, object]:
    cols = ["name", "status", "started", "tags", "parent_run_id", "fork_step", "points_acked", "points_dropped", "sessions"]
    rows = stack.query(f"SELECT {', '.join(cols)} FROM {{db}}.runs WHERE run_id = {{r:String}}", r=run_id)
    return dict(zip(cols, rows[0])) if rows else {}


def test_resume_keeps_the_start_record_and_counts_add_up(stack: Stack, token: str, tmp_path: Path) -> None:
    def init(**kw: object) -> runstream.Run:
        return runstream.init("resumable", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path), **kw)

    parent = init(name="parent")
    parent.log({"loss": 1.0})
    assert parent.finish(timeout=30)
    first = init(name="long-job", tags=["sweep-7"], parent_run_id=parent.id, config={"lr": 0.01})
    for step in range(100):
        first.log({"loss": 1.0 / (step + 1)}, step=step)
    assert first.finish(timeout=30)
    stack.wait_points(100, where=f"run_id = '{first.id}'")
    before = wait_until(lambda: run_row(stack, first.id).get("points_acked") == 100 and run_row(stack, first.id), 30,
                        "the first session's finish")

    second = init(run_id=first.id, resume=True, start_step=100)
    for _ in range(101):
        second.log({"loss": 0.5})
    # While the second session runs, the run is running again (seen once its resume is stored).
    wait_until(lambda: run_row(stack, first.id)["status"] == "running", 30, "the resumed run to show as running")
    assert second.finish(timeout=30)
    assert stack.wait_points(201, where=f"run_id = '{first.id}'") == 201
    after = wait_until(lambda: (r := run_row(stack, first.id))["status"] == "finished" and r, 30, "the second finish")
    assert isinstance(after, dict) and isinstance(before, dict)
    for kept in ("name", "started", "tags", "parent_run_id"):
        assert after[kept] == before[kept], kept
    assert after["parent_run_id"] == parent.id and after["tags"] == ["sweep-7"]
    assert (after["points_acked"], after["sessions"]) == (201, 2)
    # The steps continued where the first session stopped: 0..200, each once.
    steps = stack.query("SELECT min(step), max(step), uniqExact(step) FROM {db}.metrics WHERE run_id = {r:String}", r=first.id)
    assert steps == [(0, 200, 201)]
    header, rows = queries.runs_summary(stack.sink.client, project="resumable", database=stack.config.clickhouse.database)
    acked, stored = header.index("points_acked"), header.index("points_stored")
    assert [(r[acked], r[stored]) for r in rows if r[0] == first.id] == [(201, 201)]


def test_fork_names_its_parent_and_step(stack: Stack, token: str, tmp_path: Path) -> None:
    transport = GrpcTransport(stack.ingest_addr, token)
    parent = runstream.init("forks", transport=transport, spool_dir=str(tmp_path))
    for step in range(100):
        parent.log({"loss": float(step)}, step=step)
    assert parent.finish(timeout=30)
    child = runstream.init("forks", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path),
                           fork_from=parent.id, fork_step=49)
    for _ in range(10):
        child.log({"loss": -1.0})
    assert child.finish(timeout=30)
    assert stack.wait_points(10, where=f"run_id = '{child.id}'") == 10
    row = wait_until(lambda: run_row(stack, child.id).get("status") == "finished" and run_row(stack, child.id), 30,
                     "the fork's finish")
    assert isinstance(row, dict) and (row["parent_run_id"], row["fork_step"], row["points_acked"]) == (parent.id, 49, 10)
    assert stack.query("SELECT min(step), max(step) FROM {db}.metrics WHERE run_id = {r:String}", r=child.id) == [(50, 59)]
