"""Resume and fork through the real pipeline: a resumed run keeps its start record and its counts add up across
sessions; a fork names its parent and the step it continues from."""

from __future__ import annotations

from pathlib import Path

import pytest

import runstream
from runstream.cli.output import runs_summary
from runstream.sdk.transport import GrpcTransport
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
    api = runstream.Api(f"http://{stack.config.sink.sql_listen}", token, database=stack.config.clickhouse.database)
    live = api.run(first.id)  # the read API derives the view's fields from run_index itself: the same answers
    assert (live.status, live.points_acked, live.ended, live.sessions) == ("running", None, None, 2)
    assert second.finish(timeout=30)
    assert stack.wait_points(201, where=f"run_id = '{first.id}'") == 201
    after = wait_until(lambda: (r := run_row(stack, first.id))["status"] == "finished" and r, 30, "the second finish")
    assert isinstance(after, dict) and isinstance(before, dict)
    for kept in ("name", "started", "tags", "parent_run_id"):
        assert after[kept] == before[kept], kept
    assert after["parent_run_id"] == parent.id and after["tags"] == ["sweep-7"]
    assert (after["points_acked"], after["sessions"]) == (201, 2)
    done = api.run(first.id)
    assert (done.name, done.status, done.started, done.parent_run_id, done.points_acked, done.sessions) == (
        after["name"], "finished", after["started"], parent.id, 201, 2)
    assert done.ended is not None and done.ended > done.started and done.config == {"lr": 0.01}
    assert list(api.runs("resumable", status="finished", name="long-job").points_acked) == [201]
    # The steps continued where the first session stopped: 0..200, each once.
    steps = stack.query("SELECT min(step), max(step), uniqExact(step) FROM {db}.metrics WHERE run_id = {r:String}", r=first.id)
    assert steps == [(0, 200, 201)]
    header, rows = runs_summary(stack.sink.client, stack.config.clickhouse.database, project="resumable")
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


def test_naming_an_existing_run_continues_it_and_its_steps(stack: Stack, token: str, tmp_path: Path) -> None:
    """init(run_id=<existing>) without resume=True continues the run, as MLflow's start_run(run_id=...) does: the
    start record is untouched and log() without a step goes on after the last stored step. resume="never" refuses
    an existing run, resume=True a missing one, and an unknown run_id starts a new run."""
    sql = f"http://{stack.config.sink.sql_listen}"

    def init(**kw: object) -> runstream.Run:
        return runstream.init("continued", transport=GrpcTransport(stack.ingest_addr, token), token=token, sql_url=sql,
                              spool_dir=str(tmp_path), system_interval_s=0, **kw)

    first = init(name="job", tags=["t1"], config={"lr": 0.1})
    for _ in range(10):
        first.log({"loss": 1.0})
    assert first.finish(timeout=30)
    stack.wait_points(10, where=f"run_id = '{first.id}'")
    before = wait_until(lambda: run_row(stack, first.id).get("points_acked") == 10 and run_row(stack, first.id), 30,
                        "the first session's finish")

    with pytest.raises(runstream.RunExistsError, match=first.id):
        init(run_id=first.id, resume="never")
    with pytest.raises(ValueError, match="has no run"):
        init(run_id="no-such-run", resume=True)

    again = init(run_id=first.id)  # no resume=True
    assert again.name == "job" and again.session
    for _ in range(5):
        again.log({"loss": 0.5})
    assert again.finish(timeout=30)
    assert stack.wait_points(15, where=f"run_id = '{first.id}'") == 15
    after = wait_until(lambda: (r := run_row(stack, first.id))["sessions"] == 2 and r["status"] == "finished" and r, 30,
                       "the second session's finish")
    assert isinstance(after, dict) and isinstance(before, dict)
    for kept in ("name", "started", "tags"):
        assert after[kept] == before[kept], kept
    assert stack.query("SELECT min(step), max(step), uniqExact(step) FROM {db}.metrics WHERE run_id = {r:String}",
                       r=first.id) == [(0, 14, 15)]

    fresh = init(run_id="named-new-run")  # unknown id: a new run with that id
    fresh.log({"loss": 2.0})
    assert fresh.finish(timeout=30) and not fresh.session
    row = wait_until(lambda: run_row(stack, "named-new-run").get("status") == "finished" and run_row(stack, "named-new-run"),
                     30, "the new run's finish")
    assert isinstance(row, dict) and (row["name"], row["sessions"]) == ("named-new-run", 1)


def test_when_the_read_path_cannot_answer_the_sdk_says_so_and_resume_true_still_continues(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runstream.ops.broker import free_port
    from tests.test_sdk import MockTransport
    nowhere = f"http://127.0.0.1:{free_port()}"
    kinds = {}
    for resume in (None, True):
        t = MockTransport()
        run = runstream.init("p", run_id=f"r-{resume}", resume=resume, transport=t, spool_dir=str(tmp_path),
                             system_interval_s=0, sql_url=nowhere)
        run.log({"x": 1.0})
        assert run.finish(timeout=10)
        kinds[resume] = {b.WhichOneof("body") for b in t.batches} & {"run_start", "run_resume"}
    assert kinds == {None: {"run_start"}, True: {"run_resume"}}
    assert "could not check whether run r-None exists" in caplog.text and "unreachable" in caplog.text
    assert "pass resume=True to continue it" in caplog.text
