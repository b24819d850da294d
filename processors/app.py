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
import logging
import time
from typing import Any

import faust
from faust.serializers.codecs import RestrictedUnpickler

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
            producer_linger_ms=1, stream_buffer_maxsize=2048, table_cleanup_interval=3600.0,
            producer_max_request_size=k.max_record_bytes + 4096)
        raw = dict(key_serializer="raw", value_serializer="raw")
        self.events = app.topic(k.events_topic, key_type=bytes, value_type=bytes, **raw)
        self.rollups_topic = app.topic(k.rollups_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        self.alerts_topic = app.topic(k.alerts_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        self.fleet_topic = app.topic(k.fleet_topic, key_type=bytes, value_type=bytes, partitions=k.partitions, **raw)
        schema = faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="pickle_restricted")
        self.runs = app.Table("run-state", default=None, partitions=k.partitions, schema=schema)
        self.fleet = app.Table("fleet-state", default=None, partitions=k.partitions, schema=schema)
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
        now_ms = int(time.time() * 1000)
        key = batch.run_id.encode()
        st = self.runs.get(key)
        if st is None:
            st = state.RunState(project=batch.project)
        out = state.apply(st, batch, self.rules, grace_ms=self.grace_ms, now_ms=now_ms)
        if out.duplicate:
            tm.PROC_BATCHES.labels("duplicate").inc()
            return
        if st.finished:
            self.runs.pop(key, None)
            self._stalled.pop(batch.run_id, None)
        else:
            self.runs[key] = st
        fkey = f"{partition}:{batch.project}".encode()
        fs = self.fleet.get(fkey) or fleet.FleetState()
        if not fleet.apply(fs, batch, grace_ms=self.grace_ms):
            tm.PROC_LATE.labels("fleet").inc()
        closed = fleet.close(fs, grace_ms=self.grace_ms)
        self.fleet[fkey] = fs
        tm.PROC_BATCHES.labels("applied").inc()
        tm.PROC_POINTS.inc(out.points)
        if out.late_points:
            tm.PROC_LATE.labels("rollup").inc(out.late_points)
        if out.rollups:
            await self.rollups_topic.send(key=key, value=Rollups(windows=out.rollups).SerializeToString())
            tm.PROC_EMITTED.labels("rollup").inc(len(out.rollups))
        if closed:
            fw = [fleet.to_proto(batch.project, partition, s, b) for s, b in closed]
            await self.fleet_topic.send(key=batch.project.encode(), value=FleetWindows(windows=fw).SerializeToString())
            tm.PROC_EMITTED.labels("fleet").inc(len(fw))
        for a in out.alerts:
            await self._alert(a)

    async def _alert(self, a: Alert) -> None:
        await self.alerts_topic.send(key=a.run_id.encode(), value=a.SerializeToString())
        tm.PROC_ALERTS.labels(a.kind, a.status).inc()
        if self.webhook is not None and a.status == "open":
            self.webhook.submit(a)

    async def _tick(self) -> None:
        """Wall-clock work the events cannot trigger: stalls, and windows of runs that went quiet."""
        now_ms = int(time.time() * 1000)
        for key, st in list(self.runs.items()):
            if st is None or st.finished:
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
                await self.rollups_topic.send(key=key, value=Rollups(
                    windows=[rollups.to_proto(st.project, run_id, k, w) for k, w in fresh]).SerializeToString())
        for fkey, fs in list(self.fleet.items()):
            if fs is None:
                continue
            partition, project = fkey.decode().split(":", 1)
            fresh_b = [(s, b) for s, b in fleet.quiet(fs, now_ms=now_ms, grace_ms=self.grace_ms)
                       if self._emitted.get((fkey, s)) != b.version]
            if fresh_b:
                for s, b in fresh_b:
                    self._emitted[(fkey, s)] = b.version
                await self.fleet_topic.send(key=project.encode(), value=FleetWindows(
                    windows=[fleet.to_proto(project, int(partition), s, b) for s, b in fresh_b]).SerializeToString())
        if len(self._emitted) > 200_000:  # only a cache of what was sent; forgetting costs a re-send
            self._emitted.clear()


def build(config: RunstreamConfig) -> Processors:
    return Processors(config)


def run_worker(config: RunstreamConfig) -> None:
    """Run the processors as a faust worker until SIGINT/SIGTERM (blocks)."""
    procs = build(config)
    worker = faust.Worker(procs.app, loglevel="WARN", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


__all__ = ["Processors", "build", "run_worker", "asyncio"]
