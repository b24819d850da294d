"""The storage sink: the only writer of ClickHouse. This module is its consume loop.

A Kafka consumer group reads every topic of the registry (runstream.wire.topics), turns each poll into rows
(storage.columns), hands them to the writer (storage.writer: one insert per table) and commits offsets only
after every insert succeeded: a crash replays at most the uncommitted polls, and the replayed rows collapse
on their (batch, idx) key (see migrations/0001_init.sql), so nothing is lost and nothing is counted twice.
An insert that fails is retried with backoff, never skipped, until the stage is stopped. Governance events
are carried out by storage.governance. A record the sink cannot turn into rows (undecodable, or values storage
cannot represent) goes to the dead-letter topic as it came (a bad batch of a pack alone, as a one-batch record),
with its source and the reason, and the rest of the poll is stored: one bad record never stops storage. If the
loop dies anyway, the ``runstream_sink_consuming`` gauge drops to 0 and the role, which watches ``task``, exits
non-zero.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client

from runstream.server import telemetry as tm
from runstream.server.governance import Follower
from runstream.server.kafka import FATAL_PRODUCER_ERRORS, client_args
from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.sqlserver import SqlEndpoint
from runstream.storage.store import migrate, open_store
from runstream.storage.writer import Writer
from runstream.wire import encoding, topics
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import StorageError
from runstream.wire.files import write_private

log = logging.getLogger("runstream.sink")
FETCH_PARTITION_BYTES = 2 * 1024 * 1024


class RecentIds:
    """A bounded memory of batches already stored, to skip obvious resends cheaply. Keyed by project, run and
    batch id, as storage deduplicates: a batch id another project happened to use first never hides a batch.

    Correctness does not depend on it: storage deduplicates anyway.
    """

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._ids: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    @staticmethod
    def key(batch: Any) -> tuple[str, str, str]:
        return batch.project, batch.run_id, batch.batch_id

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._ids

    def add(self, key: tuple[str, str, str]) -> None:
        self._ids[key] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)


class Sink:
    """The sink stage. ``start()`` opens the store, migrates and joins the group; ``stop()`` drains (idempotent)."""

    DRAIN_TIMEOUT_S = 30.0  # stop() lets the loop finish its poll this long, then cancels it

    def __init__(self, config: RunstreamConfig, client: Client | None = None) -> None:
        self.config = config
        self.client = client
        self._own_client = client is None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None  # the dead-letter topic
        self.follower: Follower | None = None  # the control topic, read whole by every sink
        self.governance: GovernanceApplier | None = None
        self.writer: Writer | None = None
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[None]] = set()  # inserts running on worker threads
        self._stopping = asyncio.Event()
        self.recent = RecentIds()
        self._lag_at = 0.0
        self.stored_batches = 0
        self._points_per_record = 1000.0  # EWMA over polls: sizes the next poll

    @property
    def db(self) -> str:
        return self.config.clickhouse.database

    @property
    def deleted_runs(self) -> set[tuple[str, str]]:
        return self.governance.deleted_runs if self.governance is not None else set()

    async def start(self) -> None:
        if self.client is None:
            self.client = await asyncio.to_thread(open_store, self.config)
        await asyncio.to_thread(migrate, self.client, self.db, self.config.clickhouse.cluster)
        self.governance = GovernanceApplier(self.client, self.db, audit_key(self.config), self.config.clickhouse.cluster)
        await asyncio.to_thread(self.governance.install_access)
        await asyncio.to_thread(self.governance.load)
        self.writer = Writer(self.client, self.db, self.governance,
                             purge_every_s=0.0 if self.config.clickhouse.url else self.config.sink.memory_purge_interval_s)
        # The group shares the data topics; governance is followed whole by every sink (below), so that each
        # one drops a deleted run's batches and applies retention, whichever partitions it holds.
        self.topics = {name: t for name, t in topics.by_name(self.config).items() if t is not topics.CONTROL}
        self.consumer = AIOKafkaConsumer(
            **client_args(self.config),
            group_id=self.config.sink.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            group_instance_id=self.config.sink.instance_id or None,
            # The consumer keeps one fetched chunk per partition until polled: small chunks bound that memory. A
            # record larger than a chunk still comes whole (the broker returns it alone; tests/test_sink_fetch.py).
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES, fetch_max_bytes=8 * FETCH_PARTITION_BYTES)
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        self.follower = Follower(self.config, on_record=self._control)
        await self.follower.start()
        self.producer = self._new_producer()
        await self.producer.start()
        self._task = asyncio.create_task(self._run(), name="sink")
        tm.SINK_CONSUMING.set(1)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The consume loop; the role runner watches it and exits non-zero when it dies."""
        return self._task

    async def stop(self) -> None:
        self._stopping.set()
        if self.follower is not None:  # first, so it starts no write after the wait below
            await self.follower.stop()
            self.follower = None
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, self.DRAIN_TIMEOUT_S)
            except TimeoutError:
                task.cancel()
            except Exception:
                pass  # the loop died; it said why when it did, and the rest must still be closed
        if self._writes:  # a cancelled loop leaves its insert running: the client stays open for it
            await asyncio.wait(list(self._writes))
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            await consumer.stop()
        producer, self.producer = self.producer, None
        if producer is not None:
            await producer.stop()
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None

    async def _run(self) -> None:
        try:
            await self._consume()
        except Exception:
            tm.SINK_CONSUMING.set(0)
            log.exception("The sink's consume loop died; nothing more is stored until the role restarts.")
            raise

    async def _consume(self) -> None:
        assert self.consumer is not None
        max_rows = self.config.sink.max_rows_per_insert
        while not self._stopping.is_set():
            try:
                polled = await self._gather(max_rows)
            except KafkaError as exc:
                tm.SINK_ERRORS.labels("consume").inc()
                log.warning("Reading from Kafka failed (%s); retrying.", exc)
                await asyncio.sleep(1)
                continue
            if time.monotonic() - self._lag_at > 1.0:
                self._lag_at = time.monotonic()
                await self._report_lag()
            if not polled:
                continue
            deletions_seen = len(self.governance.deletions) if self.governance is not None else 0
            items = []
            derived = []
            dead: list[tuple[Any, Any, str, Any]] = []  # (topic partition, message, reason, the batch or None)
            records = 0  # events records polled (a pack holds several batches)
            for tp, messages in polled.items():
                topic = self.topics.get(tp.topic, topics.EVENTS)
                for msg in messages:
                    if topic is not topics.EVENTS:
                        derived.append((topic, tp, msg))
                        continue
                    records += 1
                    try:
                        batches = topic.decode(msg.value, msg.headers)
                    except Exception as exc:  # a foreign or corrupt record must not stop the sink
                        dead.append((tp, msg, f"undecodable: {exc}", None))
                        continue
                    for batch in batches:
                        if (batch.project, batch.run_id) in self.deleted_runs:
                            tm.SINK_BATCHES.labels("deleted_run").inc()
                            continue
                        if RecentIds.key(batch) in self.recent:
                            tm.SINK_BATCHES.labels("duplicate").inc()
                            continue
                        items.append((batch, tp, msg))
            tables = self._build(items, dead)
            for topic, tp, msg in derived:
                try:
                    columns.add_derived(tables, topic.kind, msg.value, tp.partition, msg.offset)
                except Exception as exc:
                    dead.append((tp, msg, f"cannot store {topic.kind} record: {exc}", None))
            if dead:
                await self._dead_letter(dead)
            dead_batches = {id(b) for _, _, _, b in dead if b is not None}
            items = [(b, tp, msg) for b, tp, msg in items if id(b) not in dead_batches]
            if not await self._write_until_done(tables, deletions_seen):
                return  # stopped before the poll was stored: not committed, so it is read again after a restart
            for batch, _, _ in items:
                self.recent.add(RecentIds.key(batch))
            await self._commit()
            tm.SINK_BATCHES.labels("stored").inc(len(items))
            self.stored_batches += len(items)
            if items:
                seen = max(1.0, tables.point_count / records)
                self._points_per_record = 0.7 * self._points_per_record + 0.3 * seen
            if tables.newest_created_ms:
                tm.SINK_LAG_SECONDS.set(max(0.0, time.time() - tables.newest_created_ms / 1000))

    async def _gather(self, max_rows: int) -> dict[Any, list[Any]]:
        """One poll's records: about max_rows_per_insert points (records counted from the points records have carried
        lately, so whether batches are large, a backfill, or small, a fleet's flushes), or what came within gather_s
        of the first record."""
        assert self.consumer is not None
        budget = max(1, min(50_000, int(max_rows / self._points_per_record)))
        polled: dict[Any, list[Any]] = await self.consumer.getmany(
            timeout_ms=int(self.config.sink.flush_interval_s * 1000), max_records=budget)
        deadline = time.monotonic() + self.config.sink.gather_s
        taken = sum(map(len, polled.values()))
        while polled and taken < budget and (left := deadline - time.monotonic()) > 0:
            more = await self.consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=budget - taken)
            for tp, messages in more.items():
                polled.setdefault(tp, []).extend(messages)
                taken += len(messages)
        return polled

    def _build(self, items: list[tuple[Any, Any, Any]], dead: list[tuple[Any, Any, str, Any]]) -> columns.Tables:
        """Rows for the poll's batches; a batch that cannot become rows joins ``dead`` and the others still do."""
        rows = [(b, tp.partition, msg.offset) for b, tp, msg in items]
        try:
            return columns.build(rows)
        except Exception:  # find the culprit(s): each batch on its own
            good = []
            for (b, tp, msg), row in zip(items, rows):
                try:
                    columns.build([row])
                    good.append(row)
                except Exception as exc:
                    dead.append((tp, msg, f"cannot store batch {b.batch_id}: {type(exc).__name__}: {exc}", b))
            return columns.build(good)

    async def _dead_letter(self, dead: list[tuple[Any, Any, str, Any]]) -> None:
        """Move records to the dead-letter topic, acknowledged by Kafka before the poll's offsets are committed. A
        batch that failed on its own goes alone, as a one-batch record, even when it came in a pack with others."""
        assert self.producer is not None
        name = self.config.kafka.deadletter_topic
        records = []
        for tp, msg, reason, batch in dead:
            kind = self.topics.get(tp.topic, topics.EVENTS).kind
            tm.SINK_DEAD_LETTERS.labels(kind).inc()
            log.error("Record %s[%d]@%d moved to %s: %s", tp.topic, tp.partition, msg.offset, name, reason)
            value, key, headers = msg.value, msg.key, list(msg.headers or ())
            if batch is not None and dict(headers).get("schema") == encoding.PACK_SCHEMA:
                one = encoding.encode(batch, max_record_bytes=self.config.kafka.max_record_bytes)
                value, key, headers = one.value, one.key, one.headers
            headers += [("source-topic", tp.topic.encode()), ("source-partition", str(tp.partition).encode()),
                        ("source-offset", str(msg.offset).encode()), ("reason", reason[:1000].encode())]
            records.append((value, key, headers))
        while True:
            try:
                await asyncio.gather(*[await self.producer.send(name, v, key=k, headers=h) for v, k, h in records])
                return
            except KafkaError as exc:  # not acknowledged: send again (the consumer has not committed, nothing is lost)
                log.warning("Dead-lettering failed (%s); retrying.", exc)
                if isinstance(exc, FATAL_PRODUCER_ERRORS):  # this producer never recovers: a new one
                    old, self.producer = self.producer, self._new_producer()
                    await self.producer.start()
                    await asyncio.gather(old.stop(), return_exceptions=True)
                await asyncio.sleep(1)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**client_args(self.config), acks="all", enable_idempotence=True,
                                max_request_size=self.config.kafka.max_record_bytes + 4096)

    async def _report_lag(self) -> None:
        assert self.consumer is not None
        lag: dict[str, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - await self.consumer.position(tp))
        for topic, n in lag.items():
            tm.SINK_CONSUMER_LAG.labels(topic).set(n)

    async def _commit(self) -> None:
        assert self.consumer is not None
        while True:
            try:
                await self.consumer.commit()
                return
            except KafkaError as exc:
                # Not committing is safe (the poll is replayed and deduplicated), but retry a few times first.
                tm.SINK_ERRORS.labels("commit").inc()
                log.warning("Committing offsets failed (%s); retrying.", exc)
                if self._stopping.is_set():
                    return
                await asyncio.sleep(1)

    async def _control(self, value: bytes, offset: int) -> None:
        """One governance event, from this sink's own reading of the whole control topic."""
        assert self.governance is not None
        tables = columns.Tables()
        columns.add_derived(tables, topics.CONTROL.kind, value, 0, offset)
        if offset <= self.governance.stored_offset:  # stored and applied before (a restart's replay, or another sink)
            for ev in tables.control:
                self.governance.remember(ev)
            return
        await self._write_until_done(tables, None)
        self.governance.stored_offset = offset

    async def _write_until_done(self, tables: columns.Tables, deletions_seen: int | None) -> bool:
        """Insert with backoff until it succeeds (True) or the stage stops (False)."""
        assert self.writer is not None
        delay = 0.5
        while True:
            started = time.perf_counter()
            write = asyncio.get_running_loop().run_in_executor(None, self.writer.write, tables, deletions_seen)
            self._writes.add(write)  # the consume loop and the control follower both write
            write.add_done_callback(self._writes.discard)
            try:
                await asyncio.shield(write)  # a cancel must not orphan the insert: stop() waits for it
                tm.SINK_INSERT_SECONDS.observe(time.perf_counter() - started)
                return True
            except StorageError as exc:
                tm.SINK_ERRORS.labels("insert").inc()
                log.error("Insert failed, will retry in %.1fs (offsets not committed): %s", delay, exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, 30)


def audit_key(config: RunstreamConfig) -> bytes:
    """The key that signs audit records, made (0600) on first use. Sinks that share a store share the key file."""
    path = config.audit_key_path
    if not path.exists():
        write_private(path, secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Audit partitions another sink was chaining continue from the heads it stored."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        audit = self.sink.config.kafka.audit_topic
        if self.sink.governance is not None and any(tp.topic == audit for tp in assigned):
            await asyncio.get_running_loop().run_in_executor(None, self.sink.governance.load_heads)


def stages(config: RunstreamConfig) -> list[Sink | SqlEndpoint]:
    """The sink role: the sink, and the SQL endpoint when it owns the embedded store."""
    out: list[Sink | SqlEndpoint] = [Sink(config)]
    if not config.clickhouse.url and config.sink.sql_listen:
        out.append(SqlEndpoint(config))
    return out
