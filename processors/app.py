"""The faust app: one agent over the events topic, two tables, one wall-clock timer.

- table ``run-state``: run id -> state.RunState (rollup windows, detectors, cadence)
- table ``fleet-state``: "<partition>:<project>" -> fleet.FleetState
Both are co-partitioned with the events topic (keyed by run id), so a worker
owns the state of exactly the partitions it consumes, and their changelogs in
Kafka restore it after a restart. Outputs go to the rollups, alerts and fleet
topics (protobuf values, keyed by run id or project) for the storage sink.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import math
import pickle  # states are loaded only through RestrictedUnpickler (StateCodec)
import platform
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.serializers.codecs import RestrictedUnpickler, restricted_pickle
from faust.tables import TableManager
from faust.tables.recovery import Recovery

from runstream.processors import anomaly, fleet, rollups, state
from runstream.processors.notify import Webhook
from runstream.server import telemetry as tm
from runstream.server.kafka import client_args
from runstream.v1.ingest_pb2 import Alert, Batch, FleetWindows, Rollups
from runstream.wire import encoding
from runstream.wire.config import RunstreamConfig

log = logging.getLogger("runstream.processors")

# Table state is pickled into Kafka changelogs; loading is restricted to these classes (and plain containers).
RestrictedUnpickler.ALLOWED_CLASSES = {
    **RestrictedUnpickler.ALLOWED_CLASSES,
    state.__name__: frozenset({"RunState"}),
    rollups.__name__: frozenset({"Window"}),
    anomaly.__name__: frozenset({"MetricState", "Cadence"}),
    fleet.__name__: frozenset({"FleetState", "Bucket"}),
}


class StateCodec:
    """Run and fleet states in their changelogs: pickled (protocol 5), loaded by faust's RestrictedUnpickler, whose
    ``find_class`` refuses every global outside the allowlist above. CPython's unpickler asks ``find_class`` for every
    global a pickle names (the Python documentation's "Restricting Globals"), so that is the whole restriction there;
    faust's codec also walks every opcode in Python first, for runtimes whose unpickler may not ask (PyPy), which
    took 711-754 µs to load a 3.5 KB state against 30 without (bench/processor_apply.py: state_loads_us). Other
    runtimes keep the walk."""

    _walked = restricted_pickle()
    _cpython = platform.python_implementation() == "CPython"

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=5)

    def loads(self, raw: bytes) -> Any:
        if not self._cpython:
            return self._walked.loads(raw)
        return RestrictedUnpickler(io.BytesIO(raw)).load()


STATE_CODEC = StateCodec()


class _Recovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        # faust resumes the events partitions, seeks them to the committed offsets, and only then resumes flow
        # control, which empties the streams' queues: a record fetched in between was dropped there, yet counted as
        # read, and the offsets after it committed (an event lost to the rollups at every restart that raced).
        # Suspended, flow control holds such a record back until the queues were emptied.
        self.app.flow_control.suspend()
        await super().on_recovery_completed(generation_id)


class _TableManager(TableManager):
    # Awaited before a rebalance's recovery reads the changelogs (Processors._states_before_recovery).
    before_recovery: Callable[[], Awaitable[None]] | None = None

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any, generation_id: int = 0) -> None:
        if self.before_recovery is not None:
            await self.before_recovery()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class Processors:
    """Builds the faust app for a config and holds what the agent and timer share."""

    def __init__(self, config: RunstreamConfig) -> None:
        self.config = config
        pc = config.processors
        self.grace_ms = int(pc.grace_s * 1000)
        self.rules = anomaly.RuleBook.load(pc.rules_file)
        self.webhook = Webhook(pc.webhook_url) if pc.webhook_url else None
        # What the timer already emitted for still-open windows / stalls (memory only: a restart re-emits,
        # and storage keeps one row per window version / alert id).
        self._emitted: dict[bytes, dict[rollups.WindowKey, int]] = {}  # run key -> its open windows' versions sent
        self._fleet_emitted: dict[Any, int] = {}  # (fleet key, window start) -> version sent
        self._stalled: dict[str, int] = {}  # run id -> the last client time before the stall the timer opened
        # Run key -> the wall-clock ms before which the timer has nothing to do for the run (no window to emit, no
        # stall to open); dropped when a batch of the run is applied. A run that went quiet without finishing (a
        # killed job) then costs a tick nothing: scanning every such run's windows on every tick cost 19 ms per tick
        # for 2,000 of them, 137 for 10,000 (bench/results/processor-tick.json).
        self._due: dict[bytes, float] = {}
        self._was_unready = False  # the timer saw the worker not ready since it last dropped the caches
        # Decoded mirror of the tables for the partitions this worker owns; the tables (bytes, with
        # changelogs) stay the source of truth and refill it after a restart or a rebalance.
        self._run_cache: dict[bytes, state.RunState] = {}
        # How far behind ingest the agent reads: EWMA of now - each record's Kafka timestamp (set as ingest publishes
        # it). Not the batch's client time: a job's spool resent after an outage, or a client's skewed clock, would
        # show as the pipeline's lag (one backlog of batches 20 minutes old read as 20 minutes).
        self._lag_ms = 0.0
        self._last_event = 0.0      # monotonic time of the last batch handled
        # "commit" / "group" -> (monotonic time it began, the task doing it) while an offset commit or a group of
        # batches is under way: how long, for the stuck check, and what to end when stuck.
        self._busy: dict[str, tuple[float, asyncio.Task[Any]]] = {}
        # The stream's own clock for stalls: the newest client time read, and per events partition the last offset
        # handled (to know when everything written has been read).
        self._newest_ms: dict[int, int] = {}   # events partition -> newest client time read on it
        self._offsets: dict[int, int] = {}
        self._read_at: dict[int, float] = {}  # events partition -> monotonic time a record was last read from it
        self._partition_of: dict[str, int] = {}  # run id -> its events partition (runs are keyed by id)
        self._fleet_cache: dict[bytes, fleet.FleetState] = {}
        # States changed since they were last written to their changelogs (partition, state; a finished run's is
        # deleted there). They are written just before faust commits the events' offsets (_write_states), so a run's
        # state goes to Kafka once per commit (processors.commit_interval_s), not once per group of its batches.
        self._dirty_runs: dict[bytes, tuple[int, state.RunState]] = {}
        self._dirty_fleets: dict[bytes, tuple[int, fleet.FleetState]] = {}
        self._group = asyncio.Lock()  # held while a group is applied: states are written only between groups
        self._hooked = False
        self._unsafe = False  # a group failed midway: no state may be written or offset committed any more
        self.failed: BaseException | None = None  # why (ProcessorsStage._watch ends the role)
        self._pinned = False  # the producer's metadata covers every topic written (_pin_producer_topics)
        k = config.kafka
        self.app = app = faust.App(
            pc.app_id, broker=f"kafka://{k.bootstrap}", store="memory://", autodiscover=False,
            datadir=str(config.data_path / "processors"),  # faust's default is relative to the working directory
            topic_partitions=k.partitions, topic_replication_factor=max(1, k.replication_factor), web_enabled=False,
            consumer_auto_offset_reset="earliest", producer_acks=-1, broker_commit_interval=pc.commit_interval_s,
            # At-least-once: faust's exactly_once needs its own Worker (transactions are off without it), and
            # its at-least-once commit sends the buffered changelog records before the offsets behind them.
            processing_guarantee="at_least_once", TableManager=_TableManager,
            producer_linger_ms=1, stream_buffer_maxsize=2048, table_cleanup_interval=3600.0,
            # A crashed worker's partitions move to the others after this long, not faust's default minute.
            broker_session_timeout=10.0, broker_heartbeat_interval=2.0, broker_rebalance_timeout=30.0,
            # No standby replicas: a worker taking back partitions it kept as standbys sometimes never received their
            # changelog during recovery (faust 0.15.3) and stalled; the state is small, so reading it whole is cheap.
            table_standby_replicas=0,
            producer_max_request_size=k.max_record_bytes + 4096, broker_credentials=broker_credentials(config))
        raw: dict[str, Any] = dict(key_serializer="raw", value_serializer="raw")
        self.events = app.topic(k.events_topic, key_type=bytes, value_type=bytes, **raw)
        self.rollups_topic = app.topic(k.rollups_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        self.alerts_topic = app.topic(k.alerts_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        self.fleet_topic = app.topic(k.fleet_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        # Values are bytes we encode ourselves (faust derives a table's codec from its value type).
        self.runs = app.Table("run-state", default=None, partitions=k.partitions, key_type=bytes, value_type=bytes)
        self.fleet = app.Table("fleet-state", default=None, partitions=k.partitions, key_type=bytes, value_type=bytes)
        app.agent(self.events, name="process")(self._agent)
        app.timer(interval=pc.tick_s)(self._tick)
        if self.webhook is not None:
            app.task(self.webhook.run)
        app.on_partitions_revoked.connect(self._forget)
        app.on_partitions_assigned.connect(self._forget)
        app.tables.before_recovery = self._states_before_recovery  # type: ignore[attr-defined]
        tm.PROC_READY.set_function(self.ready)  # read at scrape time: timers may not run during a recovery

    def ready(self) -> float:
        """1.0 once faust's recovery of this worker's partitions completed and no rebalance is under way.

        Runs in the metrics server's thread too: it must not make faust's recovery service (the TableManager's
        ``recovery`` property creates it on first use, bound to the caller's event loop; made from this thread,
        the worker hung at start), so it reads what faust made, if anything."""
        recovery = getattr(self.app.tables, "_recovery", None)
        return float(recovery is not None and recovery.completed.is_set() and not self.app.rebalancing)

    def recovery_stalled(self, limit_s: float) -> list[Any]:
        """The changelog partitions this worker's recovery still has records to read from and has read nothing from
        for ``limit_s`` seconds (none while it is not recovering). After a rebalance faust's recovery sometimes never
        receives a partition's records and waits for them forever (seen after a broker was replaced), with the
        worker's events unread meanwhile; a restarted worker reads them."""
        recovery = getattr(self.app.tables, "_recovery", None)  # not made here: see ready()
        started = getattr(recovery, "_recovery_started_at", None)
        if recovery is None or not recovery.in_recovery or started is None:
            return []
        now = time.monotonic()  # faust's clock for both times
        received = recovery._active_events_received_at
        return sorted(tp for tp, left in recovery.active_remaining().items()
                      if left > 0 and now - max(started, received.get(tp, started)) > limit_s)

    def stuck(self, limit_s: float, ready_since: float, ends: Mapping[int, int] | None = None) -> str:
        """Why this worker is stuck ('' if it is not): an offset commit (its states' writes first) or a group of
        batches under way for more than ``limit_s``, or, ready since ``ready_since`` (monotonic), an events partition
        it holds with records left unread and none of them read for more than ``limit_s``, whether or not its other
        partitions move. Each way nothing more is committed there: the rollups and the fleet view stop. ``ends``: each
        partition's end offset as the broker gives it (Processors.end_offsets); else as the last fetch saw it."""
        now = time.monotonic()
        for what, (began, _) in list(self._busy.items()):
            if now - began > limit_s:
                return f"{self.BUSY[what]} for {now - began:.0f}s"
        if self.ready() and (waiting := self._unread(limit_s, ready_since, ends)):
            idle = now - max(max(self._read_at.get(p, 0.0) for p in waiting), ready_since)
            return f"events wait on partitions {waiting} and none of them was read for {idle:.0f}s"
        return ""

    BUSY = {"commit": "an offset commit (its run states written first) has not finished",
            "group": "a group of batches has not been handled (nor failed)"}

    def idle_partitions(self, limit_s: float, ready_since: float) -> list[Any]:
        """The events partitions this worker holds and has read nothing from for more than ``limit_s`` (while ready
        since ``ready_since``)."""
        now = time.monotonic()
        return [tp for tp in self._events_tps() if now - max(self._read_at.get(tp.partition, 0.0), ready_since) > limit_s]

    async def end_offsets(self, tps: list[Any]) -> dict[int, int] | None:
        """The end offsets of these events partitions, asked of the broker: a partition the consumer does not fetch
        has no end offset from fetches, so the stuck check would see nothing waiting there (a restarted worker read
        nothing from one of its partitions for minutes in 1 of 5 loaded cluster test runs, unnoticed). None when the
        broker does not answer (the fetches' end offsets then)."""
        try:
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*tps), 10)
            return {tp.partition: end for tp, end in ends.items() if end is not None}
        except Exception as exc:
            log.warning("The broker did not give the events partitions' end offsets: %r", exc)
            return None

    def consumer_state(self) -> str:
        """What the consumer holds and has paused (faust's record and aiokafka's), for a stuck worker's log."""
        try:
            consumer = self.app.consumer
            fetching = consumer._thread._ensure_consumer()  # type: ignore[attr-defined]  # aiokafka's consumer
            def tps(found: Any) -> list[tuple[Any, ...]]:
                return sorted(map(tuple, found or ()))
            # faust fetches only its active partitions: neither paused nor held back while a stream's buffer is full
            return (f"Events partitions held {sorted(tp.partition for tp in self._events_tps())}; paused by faust "
                    f"{tps(consumer._paused_partitions)}, by aiokafka {tps(fetching.paused())}; fetched by faust "  # type: ignore[attr-defined]
                    f"{tps(consumer._active_partitions)}, held back for a full buffer {tps(consumer._buffered_partitions)}")  # type: ignore[attr-defined]
        except Exception as exc:
            return f"The consumer's state is not known ({exc!r})"

    def _unread(self, limit_s: float, ready_since: float, ends: Mapping[int, int] | None) -> list[int]:
        """The events partitions this worker holds with records it has neither read nor committed, idle for more
        than ``limit_s``: a partition another worker consumed to its end has nothing unread though this one read
        none of it."""
        try:
            committed = self.app.consumer._committed_offset  # type: ignore[attr-defined]  # faust's record of its commits
            out = []
            for tp in self.idle_partitions(limit_s, ready_since):
                end = self.app.consumer.highwater(tp) if ends is None else ends.get(tp.partition)
                if end is not None and max(self._offsets.get(tp.partition, -1) + 1, committed.get(tp) or 0) < end:
                    out.append(tp.partition)
            return sorted(out)
        except Exception:  # not known (yet): nothing is said to wait
            return []

    async def _states_before_recovery(self) -> None:
        """Write the states changed since the last commit before a rebalance's recovery reads the changelogs. The
        revocation's commit writes them, so normally there are none; any left would be written while the recovery
        reads a partition the worker keeps, and the recovery, reading up to the end it found when it began, would put
        each such run's older record back over the newer state, losing what the worker applied in between."""
        if self._dirty_runs or self._dirty_fleets:
            n = len(self._dirty_runs) + len(self._dirty_fleets)
            log.warning("%d run and fleet states changed since the last commit as a rebalance's recovery begins; "
                        "writing them first", n)
            tm.PROC_STATES_AT_REBALANCE.inc(n)
            await self._write_states()

    async def _forget(self, *args: Any, **kwargs: Any) -> None:
        if self._dirty_runs or self._dirty_fleets:  # the revocation's commit wrote them, unless it had none to make
            await self._write_states()
        self._run_cache.clear()
        self._fleet_cache.clear()
        self._due.clear()
        self._pinned = False

    def _pin_producer_topics(self) -> None:
        """Keep every topic this worker writes to in the producer's metadata requests.

        aiokafka asks for all topics until a send names one it does not know (a changelog faust created after the
        producer started); from then on it asks only for the topics sends named that way, and an update drops the
        others from its metadata. A batch already queued for a dropped topic then finds no leader, the sender asks
        again for the same few topics, thousands of times a second, and the batch (and the worker awaiting it) waits
        forever: no rollups, the processors and Kafka busy (seen on fresh stacks in about a third of starts)."""
        if self._pinned:
            return
        client = self.app.producer._ensure_producer().client  # type: ignore[attr-defined]
        for topic in (self.rollups_topic.get_topic_name(), self.alerts_topic.get_topic_name(),
                      self.fleet_topic.get_topic_name(), self.runs.changelog_topic.get_topic_name(),
                      self.fleet.changelog_topic.get_topic_name()):
            client.add_topic(topic)  # a new one forces a metadata update, not awaited: sends wait on it themselves
        self._pinned = True

    def _run_state(self, key: bytes, project: str) -> state.RunState:
        st = self._run_cache.get(key)
        if st is None:
            dirty = self._dirty_runs.get(key)
            if dirty is not None:  # newer than the table (a finished run's is gone)
                st = dirty[1] if not dirty[1].finished else state.RunState(project=project)
            else:
                raw = self.runs.get(key)
                st = STATE_CODEC.loads(raw) if raw else state.RunState(project=project)
            self._run_cache[key] = st
        return st

    def _fleet_state(self, key: bytes) -> fleet.FleetState:
        fs = self._fleet_cache.get(key)
        if fs is None:
            dirty = self._dirty_fleets.get(key)
            if dirty is not None:
                fs = dirty[1]
            else:
                raw = self.fleet.get(key)
                fs = STATE_CODEC.loads(raw) if raw else fleet.FleetState()
            self._fleet_cache[key] = fs
        return fs

    def _hook_commits(self) -> None:
        """Write the changed states before every offset commit faust makes (periodic, on a rebalance, at stop): its
        consumer sends what is attached to the offsets it is about to commit first, and awaits it."""
        if self._hooked:
            return
        consumer: Any = self.app.consumer
        send_attached = consumer._handle_attached

        async def handle_attached(commit_offsets: Any) -> None:
            if self._unsafe:
                # Commit nothing: faust's consumer commits the very mapping it handed here (faust-streaming 0.15).
                commit_offsets.clear()
                return
            self._busy["commit"] = (time.monotonic(), asyncio.current_task())  # type: ignore[assignment]
            try:
                await self._write_states()
                await send_attached(commit_offsets)
            finally:
                self._busy.pop("commit", None)
        consumer._handle_attached = handle_attached
        self._hooked = True

    async def _write_states(self) -> None:
        """Write every state changed since the last time to its changelog (the partition of the events it comes from:
        co-partitioned tables) and wait for Kafka to acknowledge them. Between groups only: a group's outputs are
        acknowledged before its states may be written, so a kill never leaves a state ahead of outputs that were lost
        (a replay skips the batches the state holds)."""
        async with self._group:
            if self._unsafe:
                return  # what is left may be ahead of what Kafka acknowledged (handle)
            runs, self._dirty_runs = self._dirty_runs, {}
            fleets, self._dirty_fleets = self._dirty_fleets, {}
            written = []
            for key, (partition, st) in runs.items():
                if st.finished:
                    written.append(self.runs.send_changelog(partition, key, None, value_serializer="raw"))
                else:
                    raw = STATE_CODEC.dumps(st)
                    self.runs.data[key] = raw
                    written.append(self.runs.send_changelog(partition, key, raw))
            for fkey, (partition, fs) in fleets.items():
                raw = STATE_CODEC.dumps(fs)
                self.fleet.data[fkey] = raw
                written.append(self.fleet.send_changelog(partition, fkey, raw))
            try:
                if written:
                    await asyncio.gather(*written)
            except BaseException as exc:
                self._unsafe = True  # those states are in no changelog now: the offsets behind them must stay
                self.failed = exc
                raise

    async def _agent(self, stream: faust.StreamT) -> None:
        # Events are handled in small groups: their outputs are awaited together, not batch by batch.
        async for events in stream.take_events(self.TAKE, within=0.05):  # type: ignore[attr-defined]
            items: list[tuple[Batch, int]] = []
            for event in events:
                self._offsets[event.message.partition] = event.message.offset  # read, decodable or not
                self._read_at[event.message.partition] = time.monotonic()
                if event.message.timestamp:
                    self._lag_ms += 0.05 * ((time.time() - event.message.timestamp) * 1000 - self._lag_ms)
                try:
                    items.extend((b, event.message.partition) for b in encoding.decode(event.value, event.message.headers))
                except Exception as exc:
                    tm.PROC_BATCHES.labels("undecodable").inc()
                    log.error("Skipping an undecodable events record: %s", exc)
            await self.handle(items)

    TAKE = 500

    async def handle(self, items: list[tuple[Batch, int]]) -> None:
        """Apply a group of batches. Outputs are acknowledged by Kafka before the new states may be written, so a
        crash in between replays the group and emits the same outputs again (storage keeps one of each)."""
        self._hook_commits()
        self._busy["group"] = (time.monotonic(), asyncio.current_task())  # type: ignore[assignment]
        async with self._group:
            try:
                await self._handle(items)
            except BaseException as exc:
                # States may be ahead of outputs Kafka never acknowledged now: none of them may reach a changelog, nor
                # may any offset be committed past the last states written. The worker ends and is restarted.
                self._unsafe = True
                if not isinstance(exc, asyncio.CancelledError):  # a stop midway is no failure
                    self.failed = exc
                self._run_cache.clear()
                self._fleet_cache.clear()
                self._dirty_runs.clear()
                self._dirty_fleets.clear()
                raise
            finally:
                self._busy.pop("group", None)

    async def _handle(self, items: list[tuple[Batch, int]]) -> None:
        self._pin_producer_topics()
        now_ms = int(time.time() * 1000)
        # The states this group changed, held here: the caches may be dropped while the group awaits Kafka.
        runs_dirty: dict[bytes, tuple[int, state.RunState]] = {}
        fleets_dirty: dict[bytes, tuple[int, fleet.FleetState]] = {}
        acks = []
        for batch, partition in items:
            self._last_event = time.monotonic()
            self._newest_ms[partition] = max(self._newest_ms.get(partition, 0), batch.created_ms)
            self._partition_of[batch.run_id] = partition
            key = batch.run_id.encode()
            fkey = f"{partition}:{batch.project}".encode()
            st = self._run_state(key, batch.project)
            out = state.apply(st, batch, self.rules, grace_ms=self.grace_ms, now_ms=now_ms, sent=self._emitted.get(key))
            opened = self._stalled.get(batch.run_id)
            if opened is not None and not out.duplicate and not any(a.kind == "stall" for a in out.alerts):
                # The timer's stall, judged on the stream's clock, is over whatever the client's own gap says (a
                # batch, its finish too, written before the limit and read after it).
                out.alerts.append(anomaly.stall_resolved(batch.project, batch.run_id, opened,
                                                         max(0.0, (batch.created_ms - opened) / 1000), now_ms))
            if not out.duplicate:
                self._next_look(key, st, out, resolved=opened is not None)
            fs = self._fleet_state(fkey)
            counted = fleet.apply(fs, batch, grace_ms=self.grace_ms)
            if counted == fleet.DROPPED:
                tm.PROC_LATE.labels("fleet").inc(len(batch.metrics.values))
            closed = fleet.close(fs, grace_ms=self.grace_ms)
            if counted == fleet.LATE:  # its closed window, counted again: emitted again (a higher version)
                start = batch.created_ms - batch.created_ms % fleet.WINDOW_MS
                again = fleet.closed_windows(fs).get(start)
                if again is not None:
                    closed.append((start, again))
            if out.duplicate and counted is None:
                tm.PROC_BATCHES.labels("duplicate").inc()
                continue
            if out.rollups:
                acks.append(await self._send(self.rollups_topic, key, Rollups(windows=out.rollups).SerializeToString()))
                tm.PROC_EMITTED.labels("rollup").inc(len(out.rollups))
            if closed:
                fw = [fleet.to_proto(batch.project, partition, s, b) for s, b in closed]
                acks.append(await self._send(self.fleet_topic, batch.project.encode(), FleetWindows(windows=fw).SerializeToString()))
                tm.PROC_EMITTED.labels("fleet").inc(len(fw))
            for a in out.alerts:
                if a.kind == "stall":
                    self._stalled.pop(batch.run_id, None)
                acks.append(await self._alert(a))
            if not out.duplicate:
                runs_dirty[key] = (partition, st)
                tm.PROC_BATCHES.labels("applied").inc()
                tm.PROC_POINTS.inc(out.points)
                if out.late_points:
                    tm.PROC_LATE.labels("rollup").inc(out.late_points)
            if counted is not None:
                fleets_dirty[fkey] = (partition, fs)
        if acks:
            await asyncio.gather(*acks)
        for key, (partition, st) in runs_dirty.items():
            if st.finished:
                self._run_cache.pop(key, None)
                self._emitted.pop(key, None)
                self._stalled.pop(key.decode(), None)
                self._partition_of.pop(key.decode(), None)
                self.runs.data.pop(key, None)
            self._dirty_runs[key] = (partition, st)
        self._dirty_fleets.update(fleets_dirty)

    def _next_look(self, key: bytes, st: state.RunState, out: state.Output, *, resolved: bool) -> None:
        """When the timer must look at a run again after a batch of it: no later than before, nor than the first
        window the batch touched or the run's stall is due. Looking at every run a batch came for on every tick
        cost the processors 8% of their CPU with 2,000 jobs logging, whose windows are due every 10 s."""
        due = self._due.get(key)
        if due is None:
            return  # not looked at since it was last dropped: the next tick looks
        if resolved or st.finished:
            self._due.pop(key, None)  # a stall over, a finish: the next tick looks
            return
        limit = st.cadence.stall_after_s(self.rules.for_metric(st.project, ""))
        stall = st.cadence.last_ms + limit * 1000 if limit is not None and st.cadence.last_ms else math.inf
        self._due[key] = min(due, out.due_ms, stall)

    def _events_tps(self) -> list[Any]:
        """The events partitions this worker holds now; none while the consumer cannot tell."""
        topic = self.config.kafka.events_topic
        try:
            return [tp for tp in self.app.consumer.assignment() if tp.topic == topic]
        except Exception:
            return []

    def _held(self) -> set[int]:
        """The events partitions this worker holds now (-1 too: runs not seen since it started, all recovered
        for partitions it holds, since faust drops a recovered key whose partition it no longer holds)."""
        return {-1} | {tp.partition for tp in self._events_tps()}

    def _caught_up(self) -> bool:
        """Whether every events partition this worker holds has been read to its end (as of the last fetch)."""
        held = self._events_tps()
        if not held:
            return False
        try:
            for tp in held:
                end = self.app.consumer.highwater(tp)
                if end is None or self._offsets.get(tp.partition, -1) + 1 < end:
                    return False
        except Exception:  # not known (yet): no wall-clock time is added to the stream's clock
            return False
        return True

    async def _send(self, topic: Any, key: bytes, value: bytes) -> Any:
        """Hand a record to the producer; the returned future resolves when Kafka acknowledged it.

        This goes straight to the Kafka producer rather than through faust's send buffer, so that
        waiting for the acknowledgement cannot stall behind the buffer."""
        return await self.app.producer.send(topic.get_topic_name(), key=key, value=value, partition=None,
                                            timestamp=None, headers=None)

    async def _alert(self, a: Alert) -> Any:
        fut = await self._send(self.alerts_topic, a.run_id.encode(), a.SerializeToString())
        tm.PROC_ALERTS.labels(a.kind, a.status).inc()
        if self.webhook is not None and a.status == "open":
            self.webhook.submit(a)
        return fut

    async def _tick(self) -> None:
        """Wall-clock work the events cannot trigger: stalls, and windows of runs that went quiet."""
        if not self.ready():
            # Rebalancing or recovering: the tables may still hold states other workers have moved on since
            # (recovery has not overwritten them yet). Cached now, such a state would outlive the recovery and
            # the next batch of its run would be applied to it, losing what the other worker applied.
            self._was_unready = True
            return
        if self._was_unready:
            self._was_unready = False
            self._run_cache.clear()
            self._fleet_cache.clear()
            self._due.clear()
        held = self._held()
        now_ms = int(time.time() * 1000)
        tm.PROC_LAG_SECONDS.set(max(0.0, self._lag_ms / 1000))
        since_last, caught_up = time.monotonic() - self._last_event, self._caught_up()
        # Runs are keyed by id, so a run's batches are read in order with the others of its partition: judged there.
        clocks = {p: stream_clock(ms, since_last, caught_up) for p, ms in self._newest_ms.items()}
        fallback = min(clocks.values(), default=0)  # a run not seen since this worker started
        examined = 0
        for key in list(self.runs.keys()):
            if self._due.get(key, 0) > now_ms:
                continue
            run_id = key.decode()
            if self._partition_of.get(run_id, -1) not in held:
                continue  # its partition moved to another worker (the table keeps what this one wrote)
            examined += 1
            st = self._run_state(key, "")
            if st.finished:
                continue
            cad = st.cadence
            limit = cad.stall_after_s(self.rules.for_metric(st.project, ""))
            # Never longer than the wall clock says: other clients' times may run ahead of this run's (skew).
            clock = min(clocks.get(self._partition_of.get(run_id, -1), fallback), now_ms)
            silent_s = (clock - cad.last_ms) / 1000
            if clock and limit is not None and cad.last_ms and silent_s > limit and run_id not in self._stalled:
                self._stalled[run_id] = cad.last_ms
                await self._alert(anomaly.stall_alert(st.project, run_id, cad, limit, now_ms, silent_s=silent_s))
            fresh, due = state.windows_due(st, self._emitted.get(key, {}), now_ms=now_ms, grace_ms=self.grace_ms)
            if fresh:
                sent = self._emitted.setdefault(key, {})  # only runs something was sent for hold an entry
                for k, w in fresh:
                    sent[k] = w.version
                await self._send(self.rollups_topic, key, Rollups(
                    windows=[rollups.to_proto(st.project, run_id, k, w) for k, w in fresh]).SerializeToString())
                tm.PROC_EMITTED.labels("rollup").inc(len(fresh))
            # Next time: the first window still to emit, or the stall; clock <= now_ms, so a stall is never due before
            # its deadline on the wall clock.
            if limit is not None and cad.last_ms and run_id not in self._stalled:
                due = min(due, cad.last_ms + limit * 1000)
            self._due[key] = due
        tm.PROC_TICK_RUNS.set(examined)
        for fkey in list(self.fleet.keys()):
            partition, project = fkey.decode().split(":", 1)
            if int(partition) not in held:
                continue
            fs = self._fleet_state(fkey)
            fresh_b = [(s, b) for s, b in fleet.quiet(fs, now_ms=now_ms, grace_ms=self.grace_ms)
                       if self._fleet_emitted.get((fkey, s)) != b.version]
            if fresh_b:
                for s, b in fresh_b:
                    self._fleet_emitted[(fkey, s)] = b.version
                await self._send(self.fleet_topic, project.encode(), FleetWindows(
                    windows=[fleet.to_proto(project, int(partition), s, b) for s, b in fresh_b]).SerializeToString())
        # Only caches of what was sent; forgetting costs a re-send. A run's entries go as its windows close.
        if len(self._fleet_emitted) > 200_000:
            self._fleet_emitted.clear()
        if len(self._emitted) > 20_000:
            self._emitted.clear()


class ProcessorsStage:
    """The processors as a stage like the others: the faust app started and stopped on the role's event loop."""

    def __init__(self, config: RunstreamConfig) -> None:
        logging.getLogger("faust").setLevel(config.processors.log_level.upper())
        self.config = config
        self.processors = Processors(config)
        self._started = False

    async def start(self) -> None:
        await self.processors.app.start()
        self._started = True
        self.task = asyncio.create_task(self._watch())  # the role exits non-zero when it ends

    async def _watch(self) -> None:
        """Fail the role, so that a supervisor restarts it, when the worker never becomes ready after starting (stuck
        joining its group or in its first recovery), when a recovery stalls (Processors.recovery_stalled), or when a
        group of batches failed midway (Processors.failed: nothing is committed after it, and a restarted worker
        resumes from its changelogs and committed offsets). A recovery that reads on may take as long as it needs."""
        pc = self.config.processors
        p = self.processors
        deadline = time.monotonic() + pc.join_timeout_s
        joined = pc.join_timeout_s <= 0
        ready_since = 0.0  # since when the worker is ready without a break (as seen here, every 0.5 s)
        ends: dict[int, int] | None = None  # the broker's end offsets of the idle events partitions, asked at ends_at
        ends_at = 0.0
        while True:
            ready_since = (ready_since or time.monotonic()) if p.ready() else 0.0
            watched = pc.stuck_s > 0 and ready_since
            # The broker's end offsets, asked only while partitions are idle past the limit (a quiet stack's all are),
            # at most every 5 s.
            if not watched or not (idle := p.idle_partitions(pc.stuck_s, ready_since)):
                ends, ends_at = None, 0.0
            elif time.monotonic() - ends_at > 5:
                ends, ends_at = await p.end_offsets(idle), time.monotonic()
            if watched and (why := p.stuck(pc.stuck_s, ready_since, ends)):
                log.error("This processor worker is stuck: %s. %s. Where each task waits:\n%s", why, p.consumer_state(),
                          task_stacks())
                p._unsafe = True  # nothing is committed after this
                # The stop waits for the stuck commit or the stuck group's events: they end here (cancelled).
                for _, task in list(p._busy.values()):
                    task.cancel()
                raise RuntimeError(f"this processor worker is stuck: {why} (processors.stuck_s); exiting so that it is "
                                   "restarted")
            if p.failed is not None:
                raise RuntimeError(f"this processor worker failed with run states Kafka does not hold ({p.failed!r}); "
                                   "exiting so that it is restarted") from p.failed
            if not joined:
                joined = bool(p.ready())
                if not joined and time.monotonic() > deadline:
                    raise RuntimeError(f"this processor worker did not join its group and recover within "
                                       f"{pc.join_timeout_s:.0f}s (processors.join_timeout_s); exiting so that it is restarted")
            elif pc.recovery_stall_s > 0:
                stalled = p.recovery_stalled(pc.recovery_stall_s)
                if stalled:
                    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in stalled)
                    raise RuntimeError(f"this processor worker's recovery read nothing from {names} for "
                                       f"{pc.recovery_stall_s:.0f}s (processors.recovery_stall_s) though records are left "
                                       "there; exiting so that it is restarted")
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
        if self._started:
            self._started = False
            await self.processors.app.stop()


def task_stacks(limit: int = 8) -> str:
    """Every task of the running loop with the innermost ``limit`` coroutines of the chain it waits in (a suspended
    task's own stack shows only its outermost one): what a stuck worker logs. The chain is followed through what
    wraps an awaited coroutine (an awaited task, ``__await__``, an async generator's step) by their references."""
    lines = []
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 200:
            if isinstance(awaited, asyncio.Task):
                awaited = awaited.get_coro()
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno})")
                awaited = (getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
                           or getattr(awaited, "gi_yieldfrom", None))
                continue
            inner = [r for r in gc.get_referents(awaited) if isinstance(r, (types.CoroutineType, types.AsyncGeneratorType,
                                                                              types.GeneratorType, asyncio.Task))]
            if not inner:
                chain.append(f"awaiting {type(awaited).__name__}")
                break
            awaited = inner[0]
        lines.append(f"{task.get_name()[:60]}: " + " > ".join(chain[-limit:]))
    return "\n".join(sorted(lines))


def stages(config: RunstreamConfig) -> list[ProcessorsStage]:
    """The process role: one faust app."""
    return [ProcessorsStage(config)]


def broker_credentials(config: RunstreamConfig) -> faust.auth.Credentials | None:
    """How faust signs in: the same kafka.* settings as every other client (runstream.server.kafka.client_args)."""
    args = client_args(config)
    if args["security_protocol"].startswith("SASL"):
        return faust.SASLCredentials(username=args["sasl_plain_username"], password=args["sasl_plain_password"],
                                     mechanism=args["sasl_mechanism"], ssl_context=args.get("ssl_context"))
    if args["security_protocol"] == "SSL":
        return faust.SSLCredentials(args["ssl_context"])
    return None


def stream_clock(newest_ms: int, since_last_s: float, caught_up: bool) -> int:
    """What "now" is for stall detection: the newest client time read from the stream, plus the wall time since the
    last batch arrived only when everything written has been read. A pipeline that runs behind moves every run's
    clock alike, so it shows as lag (runstream_processor_lag_seconds), never as every run stalling at once; a
    fleet that truly went silent, with the stream read to its end, is judged by the wall clock."""
    if not newest_ms:
        return 0
    return newest_ms + (int(since_last_s * 1000) if caught_up else 0)
