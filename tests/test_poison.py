"""One bad record never stops storage: ingest refuses out-of-range times naming the field; records that reach the
events topic anyway (written past ingest, or by an older version) go to the dead-letter topic with their source,
counted and logged, while every good point around them is stored. A stage whose own task dies makes its role exit
non-zero, so a supervisor restarts it.

Leaves out: the supervisor's restart loop itself (runstream up), exercised by hand and in the CLI tests' stacks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from runstream.ops import roles
from runstream.sdk.transport import GrpcTransport, SendError
from runstream.wire import encoding
from runstream.wire.config import RunstreamConfig
from tests.conftest import BackgroundClient, Stack
from tests.helpers import counter, group_lag, metric_batch, produce_events, read_records, wait_until


def test_poison_records_go_to_the_dead_letter_topic_and_good_points_are_stored(stack: Stack, token: str,
                                                                                tmp_path: Path) -> None:
    t = GrpcTransport(stack.ingest_addr, token)
    with pytest.raises(SendError) as exc:
        t.send([metric_batch("poison-direct", created_ms=2**62)])
    assert exc.value.code == "INVALID_ARGUMENT" and "created_ms" in str(exc.value)

    poison = metric_batch("poison-run", 5, project="good", created_ms=2**62, timestamps_ms=[2**62] * 5)
    after = metric_batch("after-run", 7, project="good")
    dead_before = counter("runstream_sink_dead_letters_total", kind="events")
    with BackgroundClient(stack.ingest_addr, token, "good", tmp_path) as good:
        wait_until(lambda: good.acked > 1000, 30, "the good client to be logging")
        records = [(b.run_id.encode(), encoding.encode(b, max_record_bytes=1 << 20).value,
                    encoding.encode(b, max_record_bytes=1 << 20).headers) for b in (poison,)]
        records.append((b"garbage", b"\xff\x00 not a batch", [("schema", encoding.SCHEMA)]))
        records.append((b"after-run", after.SerializeToString(), [("schema", encoding.SCHEMA)]))
        asyncio.run(produce_events(stack.config, records))
        wait_until(lambda: counter("runstream_sink_dead_letters_total", kind="events") == dead_before + 2, 30,
                   "both bad records to be dead-lettered")
    acked = good.acked
    assert acked > 1000 and stack.wait_points(acked, where="project = 'good' AND run_id NOT IN ('after-run')") == acked
    assert stack.wait_points(7, where="run_id = 'after-run'") == 7
    assert stack.count_points("run_id = 'poison-run'") == 0
    dead = asyncio.run(read_records(stack.config, stack.config.kafka.deadletter_topic, 2))
    sources = {(dict(m.headers)["source-partition"], dict(m.headers)["source-offset"]) for m in dead}
    assert len(dead) == 2 and all(dict(m.headers)["source-topic"] == stack.config.kafka.events_topic.encode() for m in dead)
    assert len(set(sources)) == 2 and b"cannot store batch" in b" ".join(dict(m.headers)["reason"] for m in dead)
    assert dead[0].value in (records[0][1], records[1][1])
    assert counter("runstream_sink_consuming") == 1


class _Dies:
    """A stage whose background task fails after a moment."""

    async def start(self) -> None:
        async def run() -> None:
            await asyncio.sleep(0.2)
            raise RuntimeError("the loop died")
        self.task = asyncio.create_task(run())

    async def stop(self) -> None:
        pass


def dying_stages(config: RunstreamConfig) -> list[Any]:
    return [_Dies()]


def test_a_stage_whose_task_dies_makes_its_role_exit_non_zero(config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(roles.ROLES, "dying", roles.Role("dying", "test", f"{__name__}:dying_stages", "ingest.metrics_port"))
    assert asyncio.run(asyncio.wait_for(roles.run_role("dying", config), 60)) == 1


@pytest.mark.slow  # waits out a readiness deadline
def test_a_processor_worker_that_never_gets_ready_exits_non_zero(config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A worker whose first join never completes ends its role with exit code 1 after processors.join_timeout_s,
    so a supervisor restarts it."""
    from runstream.processors import app

    config.processors.join_timeout_s = 3
    config.data_path.mkdir(parents=True, exist_ok=True)  # as `runstream up` makes it
    monkeypatch.setattr(app.Processors, "ready", lambda self: 0.0)
    assert asyncio.run(asyncio.wait_for(roles.run_role("process", config), 120)) == 1
    assert "did not join its group and recover within 3s" in caplog.text


def test_a_stalled_recovery_is_found_from_fausts_own_recovery_state(config: RunstreamConfig) -> None:
    """Processors.recovery_stalled reads faust's Recovery (the real class): a changelog partition with records left
    and nothing read from it for longer than the limit is stalled; one read from lately, one read to its end, or a
    worker not recovering is not."""
    from faust.types import TP

    from runstream.processors import app

    async def check() -> None:
        procs = app.Processors(config)
        recovery = procs.app.tables.recovery  # made on this loop, as a worker makes it
        assert procs.recovery_stalled(5) == []  # not recovering
        left, done, read = (TP(f"{config.processors.app_id}-run-state-changelog", p) for p in (1, 2, 3))
        recovery.in_recovery = True
        recovery._recovery_started_at = time.monotonic() - 30
        for tp in (left, done, read):
            recovery.active_highwaters[tp] = 51
            recovery.active_offsets[tp] = -1
        recovery.active_offsets[done] = 51
        recovery._active_events_received_at[read] = time.monotonic() - 2
        assert procs.recovery_stalled(5) == [left]
        assert procs.recovery_stalled(60) == []  # within the limit since the recovery began
        recovery.in_recovery = False
        assert procs.recovery_stalled(5) == []

    asyncio.run(check())


@pytest.mark.slow  # a real worker joins its group first
def test_a_processor_worker_whose_recovery_stalls_exits_non_zero(config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A worker that got ready once, then finds a recovery stalled, ends its role with exit code 1 naming the
    partition, so a supervisor restarts it."""
    from faust.types import TP

    from runstream.processors import app

    config.processors.recovery_stall_s = 2
    config.data_path.mkdir(parents=True, exist_ok=True)  # as `runstream up` makes it
    asked: list[float] = []

    def stalled(self: app.Processors, limit_s: float) -> list[TP]:
        asked.append(limit_s)
        return [TP("changelog-x", 3)] if self.ready() else []

    monkeypatch.setattr(app.Processors, "recovery_stalled", stalled)
    assert asyncio.run(asyncio.wait_for(roles.run_role("process", config), 120)) == 1
    assert asked and asked[-1] == 2
    assert "recovery read nothing from changelog-x[3] for 2s (processors.recovery_stall_s)" in caplog.text


def test_states_left_unwritten_at_a_rebalance_are_written_before_its_recovery_reads_the_changelogs(
        config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebalance's recovery reads each kept partition's changelog up to the end it finds when it begins and puts
    those records over the table: a state still unwritten then, written during the recovery, would be overwritten by
    its older record. So the worker writes any such state (counted) before faust's recovery begins."""
    from faust.tables.manager import TableManager

    from runstream.processors import app, state

    async def check() -> None:
        procs = app.Processors(config)
        events: list[str] = []

        async def write() -> None:
            events.append(f"written {sorted(procs._dirty_runs)}")
            procs._dirty_runs.clear()

        async def recovery(self: TableManager, *args: Any) -> None:
            events.append("recovery begins")

        monkeypatch.setattr(procs, "_write_states", write)
        monkeypatch.setattr(TableManager, "on_rebalance", recovery)
        procs._dirty_runs[b"run-a"] = (1, state.RunState(project="p"))
        before = counter("runstream_processor_states_at_rebalance_total")
        await procs.app.tables.on_rebalance(set(), set(), set(), 1)
        assert events == ["written [b'run-a']", "recovery begins"]
        assert counter("runstream_processor_states_at_rebalance_total") == before + 1
        await procs.app.tables.on_rebalance(set(), set(), set(), 2)  # nothing left: nothing written
        assert events[2:] == ["recovery begins"]

    asyncio.run(check())


def test_a_worker_is_stuck_only_with_events_it_has_neither_read_nor_seen_committed(config: RunstreamConfig,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Processors.stuck over faust's real consumer: a ready worker idle past the limit is stuck only while one of its
    events partitions has records it has not read and that are not committed; a partition another worker consumed to
    its end before this one got it (nothing read here) is quiet, not stuck; nor is a worker not idle that long."""
    from faust.types import TP

    from runstream.processors import app

    async def check() -> None:
        procs = app.Processors(config)
        topic = config.kafka.events_topic
        held = [TP(topic, 0), TP(topic, 1)]
        ends = {held[0]: 40, held[1]: 25}
        monkeypatch.setattr(procs, "ready", lambda: 1.0)
        monkeypatch.setattr(procs.app.consumer, "assignment", lambda: set(held))
        monkeypatch.setattr(procs.app.consumer, "highwater", ends.get)
        committed = procs.app.consumer._committed_offset  # type: ignore[attr-defined]
        long_ago = time.monotonic() - 30
        committed[held[0]], committed[held[1]] = 40, 25  # consumed to their ends by another worker
        assert procs.stuck(5, long_ago) == ""
        ends[held[1]] = 31  # six more records on partition 1, none read here
        assert procs.stuck(5, long_ago) == "events wait on partitions [1] and none of them was read for 30s"
        assert procs.stuck(60, long_ago) == ""  # idle for less than the limit
        procs._read_at[0] = time.monotonic()  # partition 0 moves; partition 1 still starves
        assert procs.stuck(5, long_ago) == "events wait on partitions [1] and none of them was read for 30s"
        procs._offsets[1], procs._read_at[1] = 30, time.monotonic() - 20  # read up to the end 20 s ago
        assert procs.stuck(5, long_ago) == ""
        # A partition the consumer never fetched has no highwater: the broker's end offsets tell.
        monkeypatch.setattr(procs.app.consumer, "highwater", lambda tp: None)
        assert procs.stuck(5, long_ago) == ""
        assert procs.stuck(5, long_ago, ends={0: 40, 1: 35}) == "events wait on partitions [1] and none of them was read for 20s"
        assert procs.idle_partitions(5, long_ago) == [held[1]]  # partition 0 was read just now

    asyncio.run(check())


@pytest.mark.slow  # a real worker joins its group first
@pytest.mark.parametrize("stuck_in", ["commit", "handling", "reading"])
def test_a_processor_worker_that_gets_stuck_exits_non_zero_saying_where(config: RunstreamConfig, stuck_in: str,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A ready worker whose offset commit never finishes (its states' writes hang), whose handling of a group never
    ends, or that reads nothing while events wait, commits nothing any more: it ends its role with exit code 1 once
    processors.stuck_s passed, naming why and where each of its tasks waits, and promptly, so a supervisor restarts
    it."""
    from runstream.processors import app

    config.processors.stuck_s = 2
    config.data_path.mkdir(parents=True, exist_ok=True)  # as `runstream up` makes it
    entered: list[str] = []

    async def forever(self: app.Processors, *args: Any) -> None:
        entered.append(stuck_in)
        await asyncio.Event().wait()

    patched = {"commit": "_write_states", "handling": "_handle", "reading": "_agent"}[stuck_in]
    monkeypatch.setattr(app.Processors, patched, forever)  # before the worker is made: faust keeps the agent it got
    asyncio.run(produce_events(config, [(b"stuck-run", metric_batch("stuck-run", 5).SerializeToString(), [])]))
    began = time.monotonic()
    assert asyncio.run(asyncio.wait_for(roles.run_role("process", config), 120)) == 1
    assert entered  # the patched step was reached and held
    why = {"commit": "an offset commit (its run states written first) has not finished for",
           "handling": "a group of batches has not been handled (nor failed) for",
           "reading": "events wait on partitions"}[stuck_in]
    assert f"This processor worker is stuck: {why}" in caplog.text
    assert "Events partitions held [0, 1, 2, 3]; paused by faust" in caplog.text  # what it held and had paused
    assert "; fetched by faust [" in caplog.text and "held back for a full buffer [" in caplog.text
    assert "The broker did not give" not in caplog.text  # judged with the broker's end offsets
    assert "> forever (test_poison.py:" in caplog.text.split("Where each task waits:")[1]  # the task held there
    # Promptly: the stuck commit or group is ended first, else the stop would wait on it up to STAGE_STOP_TIMEOUT_S.
    assert time.monotonic() - began < roles.STAGE_STOP_TIMEOUT_S - 5


def test_a_bad_batch_in_a_pack_is_dead_lettered_alone_and_its_pack_mates_are_stored(stack: Stack) -> None:
    good = [metric_batch(f"pack-good-{i}", 3, project="pk") for i in range(3)]
    bad = metric_batch("pack-bad", 4, project="pk", created_ms=2**62, timestamps_ms=[2**62] * 4)
    # A point time of int64's largest value fits the column type (it would be clamped to 9999-12-31): range-checked.
    late = metric_batch("pack-late", 4, project="pk", timestamps_ms=[1_700_000_000_000, 2**63 - 1, 0, 1])
    (rec, n), = encoding.pack([good[0], bad, good[1], late, good[2]], max_record_bytes=1 << 20)
    assert n == 5 and dict(rec.headers)["schema"] == encoding.PACK_SCHEMA
    dead_before = counter("runstream_sink_dead_letters_total", kind="events")
    asyncio.run(produce_events(stack.config, [(rec.key, rec.value, rec.headers)]))
    assert stack.wait_points(9, where="project = 'pk'") == 9
    wait_until(lambda: counter("runstream_sink_dead_letters_total", kind="events") == dead_before + 2, 30,
               "the bad batches to be dead-lettered")
    dead = sorted(asyncio.run(read_records(stack.config, stack.config.kafka.deadletter_topic, 2)), key=lambda r: r.key)
    assert [r.key for r in dead] == [b"pack-bad", b"pack-late"]
    for record, batch in zip(dead, (bad, late)):
        headers = dict(record.headers)
        assert headers["schema"] == encoding.SCHEMA and headers["batch-id"] == batch.batch_id.encode()
        assert encoding.decode(record.value, record.headers) == [batch]
    assert stack.count_points("run_id = 'pack-late'") == 0
    assert stack.count_points("run_id = 'pack-bad'") == 0


@pytest.mark.slow  # a real worker joins its group first
def test_a_processor_worker_whose_group_fails_midway_commits_nothing_more_and_exits_non_zero(
        config: RunstreamConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A group that raises midway may leave run states ahead of outputs Kafka never acknowledged: the worker writes
    no state and commits no offset after it, and ends its role with exit code 1, so that a supervisor restarts it and
    the restarted worker replays the group."""
    from runstream.processors import state

    config.data_path.mkdir(parents=True, exist_ok=True)  # as `runstream up` makes it
    tried: list[str] = []

    def broken(st: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(batch.batch_id)
        raise ValueError("injected into the group")

    monkeypatch.setattr(state, "apply", broken)
    batch = metric_batch("failing-run", 3)
    record = encoding.encode(batch, max_record_bytes=config.kafka.max_record_bytes)

    async def run() -> int:
        role = asyncio.create_task(roles.run_role("process", config))
        await produce_events(config, [(record.key, record.value, record.headers)])
        return await asyncio.wait_for(role, 120)

    assert asyncio.run(run()) == 1
    assert tried == [batch.batch_id]
    assert "failed with run states Kafka does not hold (ValueError('injected into the group'))" in caplog.text
    assert asyncio.run(group_lag(config, config.processors.app_id, ("events",))) == 1, "its offset was committed"


def test_after_a_failed_group_faust_commits_nothing(config: RunstreamConfig) -> None:
    """The check above, on faust's own consumer: the worker's hook runs before every commit faust makes, and after a
    failed group the offsets faust was about to commit come back empty, so it commits none (a group applied before
    the failure has its states dropped with the failed one's: its offsets must not be committed either)."""
    from faust.types import TP

    from runstream.processors import app

    async def check() -> None:
        procs = app.Processors(config)
        procs._hook_commits()
        consumer: Any = procs.app.consumer
        offsets = {TP(config.kafka.events_topic, 0): 5, TP(config.kafka.events_topic, 1): 9}
        committed: list[Any] = []

        async def commit(offsets: Any) -> bool:
            committed.append(dict(offsets))
            return True
        consumer.assignment = lambda: set(offsets)  # as if it held both partitions (it is not started here)
        consumer._commit = commit
        procs._unsafe = True
        await consumer._handle_attached(offsets)  # what faust's _commit_tps does, then _commit_offsets
        assert offsets == {}
        assert await consumer._commit_offsets(offsets) is False
        assert committed == []

    asyncio.run(check())
