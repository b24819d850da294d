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
import os
import logging
import time
from typing import Any

import faust
from faust.serializers.codecs import RestrictedUnpickler, restricted_pickle

from processors import anomaly, fleet, rollups, state
from processors.notify import Webhook
from runstream import telemetry as tm
from runstream.config import RunstreamConfig
from runstream.v1.ingest_pb2 import Alert, Batch, FleetWindows, Rollups

log = logging.getLogger("runstream.processors")

# Table state is pickled into Kafka changelogs; loading is restricted to these classes (and plain containers).
RestrictedUnpickler.ALLOWED_CLASSES = {
    **RestrictedUnpickler.ALLOWED_CLASSES,
    "processors.state": frozenset({"RunState"}),
    "processors.rollups": frozenset({"Window"}),
    "processors.anomaly": frozenset({"MetricState", "Cadence"}),
    "processors.fleet": frozenset({"FleetState", "Bucket"}),
}
STATE_CODEC = restricted_pickle()


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
        self._emitted: dict[Any, int] = {}
        self._stalled: dict[str, str] = {}
        k = config.kafka
        self.app = app = faust.App(
            pc.app_id, broker=f"kafka://{k.bootstrap}", store="memory://", autodiscover=False,
            topic_partitions=k.partitions, topic_replication_factor=1, web_enabled=False,
            consumer_auto_offset_reset="earliest", producer_acks=-1, broker_commit_interval=1.0,
            processing_guarantee="exactly_once",
            producer_linger_ms=1, stream_buffer_maxsize=2048, table_cleanup_interval=3600.0,
            # A crashed worker's partitions move to the others after this long, not faust's default minute.
            broker_session_timeout=10.0, broker_heartbeat_interval=2.0, broker_rebalance_timeout=30.0,
            producer_max_request_size=k.max_record_bytes + 4096)
        raw = dict(key_serializer="raw", value_serializer="raw")
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

    async def _agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                batch = Batch.FromString(event.value)
            except Exception as exc:
                tm.PROC_BATCHES.labels("undecodable").inc()
                log.error("Skipping an undecodable events record: %s", exc)
                continue
            await self.handle(batch, event.message.partition)

    async def handle(self, batch: Batch, partition: int) -> None:
        """Apply one batch. Outputs are acknowledged by Kafka before the new state is written, so a crash
        in between replays the batch and emits the same outputs again (storage keeps one of each)."""
        now_ms = int(time.time() * 1000)
        key = batch.run_id.encode()
        raw_state = self.runs.get(key)
        st = STATE_CODEC.loads(raw_state) if raw_state else state.RunState(project=batch.project)
        out = state.apply(st, batch, self.rules, grace_ms=self.grace_ms, now_ms=now_ms)
        fkey = f"{partition}:{batch.project}".encode()
        raw_fleet = self.fleet.get(fkey)
        fs = STATE_CODEC.loads(raw_fleet) if raw_fleet else fleet.FleetState()
        counted = fleet.apply(fs, batch, grace_ms=self.grace_ms)
        if counted is False:
            tm.PROC_LATE.labels("fleet").inc()
        closed = fleet.close(fs, grace_ms=self.grace_ms)
        if out.duplicate and counted is None:
            tm.PROC_BATCHES.labels("duplicate").inc()
            return
        acks = []
        if out.rollups:
            acks.append(await self._send(self.rollups_topic, key, Rollups(windows=out.rollups).SerializeToString()))
            tm.PROC_EMITTED.labels("rollup").inc(len(out.rollups))
        if closed:
            fw = [fleet.to_proto(batch.project, partition, s, b) for s, b in closed]
            acks.append(await self._send(self.fleet_topic, batch.project.encode(), FleetWindows(windows=fw).SerializeToString()))
            tm.PROC_EMITTED.labels("fleet").inc(len(fw))
        for a in out.alerts:
            acks.append(await self._alert(a))
        if acks:
            await asyncio.gather(*acks)
        if not out.duplicate:
            if st.finished:
                self.runs.pop(key, None)
                self._stalled.pop(batch.run_id, None)
            else:
                self.runs[key] = STATE_CODEC.dumps(st)
            tm.PROC_BATCHES.labels("applied").inc()
            tm.PROC_POINTS.inc(out.points)
            if out.late_points:
                tm.PROC_LATE.labels("rollup").inc(out.late_points)
        if counted is not None:
            self.fleet[fkey] = STATE_CODEC.dumps(fs)

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
        now_ms = int(time.time() * 1000)
        for key, raw_state in list(self.runs.items()):
            if not raw_state:
                continue
            st = STATE_CODEC.loads(raw_state)
            if st.finished:
                continue
            run_id = key.decode()
            cad = st.cadence
            limit = cad.stall_after_s(self.rules.for_metric(st.project, ""))
            silent_s = (now_ms - cad.last_ms) / 1000
            if limit is not None and cad.last_ms and silent_s > limit:
                aid = anomaly.alert_id(run_id, "", "stall", cad.last_ms)
                if self._stalled.get(run_id) != aid:
                    self._stalled[run_id] = aid
                    await self._alert(anomaly.stall_alert(st.project, run_id, cad, limit, now_ms))
            quiet = state.quiet_windows(st, now_ms=now_ms, grace_ms=self.grace_ms)
            fresh = [(k, w) for k, w in quiet if self._emitted.get((key, k)) != w.version]
            if fresh:
                for k, w in fresh:
                    self._emitted[(key, k)] = w.version
                await self._send(self.rollups_topic, key, Rollups(
                    windows=[rollups.to_proto(st.project, run_id, k, w) for k, w in fresh]).SerializeToString())
        for fkey, raw_fleet in list(self.fleet.items()):
            if not raw_fleet:
                continue
            fs = STATE_CODEC.loads(raw_fleet)
            partition, project = fkey.decode().split(":", 1)
            fresh_b = [(s, b) for s, b in fleet.quiet(fs, now_ms=now_ms, grace_ms=self.grace_ms)
                       if self._emitted.get((fkey, s)) != b.version]
            if fresh_b:
                for s, b in fresh_b:
                    self._emitted[(fkey, s)] = b.version
                await self._send(self.fleet_topic, project.encode(), FleetWindows(
                    windows=[fleet.to_proto(project, int(partition), s, b) for s, b in fresh_b]).SerializeToString())
        if len(self._emitted) > 200_000:  # only a cache of what was sent; forgetting costs a re-send
            self._emitted.clear()


def build(config: RunstreamConfig) -> Processors:
    return Processors(config)


def run_worker(config: RunstreamConfig) -> None:
    """Run the processors as a faust worker until SIGINT/SIGTERM (blocks)."""
    procs = build(config)
    worker = faust.Worker(procs.app, loglevel=os.environ.get("RUNSTREAM_PROCESSORS_LOGLEVEL", "WARN"), quiet=True,
                          redirect_stdouts=False)
    worker.execute_from_commandline()


__all__ = ["Processors", "build", "run_worker", "asyncio"]
