"""Kafka records -> columnar Arrow tables, one per ClickHouse table.

Metric points stay columnar all the way: packed protobuf fields become numpy
arrays, strings become Arrow dictionaries (ClickHouse LowCardinality), and
each poll of the sink is one insert per table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
from google.protobuf import json_format

from runstream.v1.ingest_pb2 import Alert, AuditRecord, Batch, ControlEvent, FleetWindows, Rollups, RunStatus
from runstream.wire.encoding import MAX_TIME_MS
from runstream.wire.governance import object_id

STATUS = {RunStatus.RUN_STATUS_FINISHED: "finished", RunStatus.RUN_STATUS_FAILED: "failed",
          RunStatus.RUN_STATUS_KILLED: "killed", RunStatus.RUN_STATUS_UNSPECIFIED: "finished"}


def to_datetime(ms: int) -> datetime:
    if not 0 <= ms < MAX_TIME_MS:  # a record written past ingest: the sink dead-letters its batch
        raise ValueError(f"time {ms} ms is outside 1970..2100")
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def batch_key(batch_id: str) -> int:
    """The 64-bit dedup key stored with every point of a batch."""
    return int.from_bytes(hashlib.blake2b(batch_id.encode(), digest_size=8).digest(), "little")


class _Dict:
    """Builds an Arrow dictionary column incrementally."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        c = self.codes.get(value)
        if c is None:
            c = self.codes[value] = len(self.codes)
        return c

    def array(self, indices: np.ndarray) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(list(self.codes), pa.string()))


@dataclass
class Tables:
    """One poll's worth of rows, ready to insert."""
    points: pa.Table | None = None
    batches: list[list[Any]] = field(default_factory=list)
    run_starts: list[list[Any]] = field(default_factory=list)
    run_finishes: list[list[Any]] = field(default_factory=list)
    run_sessions: list[list[Any]] = field(default_factory=list)
    params: list[list[Any]] = field(default_factory=list)
    tags: list[list[Any]] = field(default_factory=list)
    rollups: list[list[Any]] = field(default_factory=list)
    fleet: list[list[Any]] = field(default_factory=list)
    alerts: list[list[Any]] = field(default_factory=list)
    governance: list[list[Any]] = field(default_factory=list)
    control: list[ControlEvent] = field(default_factory=list)
    audit: list[tuple[AuditRecord, int, int]] = field(default_factory=list)  # (record, partition, offset)
    audit_rows: list[list[Any]] = field(default_factory=list)  # chained by the sink  # run deletions and retention changes to apply
    datasets: list[list[Any]] = field(default_factory=list)
    artifacts: list[list[Any]] = field(default_factory=list)
    newest_created_ms: int = 0

    @property
    def point_count(self) -> int:
        return 0 if self.points is None else self.points.num_rows


BATCH_COLUMNS = ["project", "run_id", "batch_id", "seq", "kind", "points", "created", "partition", "offset"]
RUN_START_COLUMNS = ["project", "run_id", "name", "started", "tags", "git_commit", "git_branch", "git_remote",
                     "git_dirty", "hostname", "pid", "python_version", "parent_run_id", "git_diff_sha256", "packages_sha256",
                     "fork_step"]
DATASET_COLUMNS = ["project", "run_id", "uri", "digest", "size", "ts", "name", "source_type", "source", "schema",
                   "profile", "input_tags"]
ARTIFACT_COLUMNS = ["project", "run_id", "uri", "stored_uri", "size", "sha256", "ts", "step"]
RUN_FINISH_COLUMNS = ["project", "run_id", "status", "ended", "points_acked", "batches_acked", "points_dropped"]
RUN_SESSION_COLUMNS = ["project", "run_id", "session", "resumed", "ended", "status", "points_acked", "batches_acked",
                       "points_dropped", "version"]
KV_COLUMNS = ["project", "run_id", "key", "value", "ts"]
ROLLUP_COLUMNS = ["project", "run_id", "metric", "resolution_s", "window_start", "count", "nonfinite", "min", "max", "sum",
                  "first", "first_step", "last", "last_step", "version"]
FLEET_COLUMNS = ["project", "window_start", "partition", "active_runs", "points", "runs_started", "runs_finished",
                 "runs_failed", "version"]
ALERT_COLUMNS = ["project", "alert_id", "status", "run_id", "metric", "kind", "severity", "step", "value", "expected_low",
                 "expected_high", "event_time", "detected_at", "message"]


AUDIT_COLUMNS = ["project", "seq", "at", "actor", "action", "target", "source", "before", "after", "prev_hash", "hash",
                 "partition", "offset", "sig"]
GOVERNANCE_COLUMNS = ["at", "actor", "action", "object", "record", "partition", "offset"]


def add_derived(t: Tables, kind: str, value: bytes, partition: int = 0, offset: int = 0) -> None:
    """Rows from a record that is not a batch (``kind`` is rollups, fleet, alerts or control)."""
    if kind == "audit":
        t.audit.append((AuditRecord.FromString(value), partition, offset))
    elif kind == "control":
        ev = ControlEvent.FromString(value)
        body = getattr(ev, ev.WhichOneof("body") or "project")
        t.governance.append([to_datetime(ev.at_ms), ev.actor, ev.action, object_id(ev),
                             json_format.MessageToJson(body, indent=None, preserving_proto_field_name=True), partition, offset])
        if ev.HasField("run_delete") or ev.HasField("retention") or ev.HasField("project"):
            t.control.append(ev)
    elif kind == "rollups":
        for w in Rollups.FromString(value).windows:
            t.rollups.append([w.project, w.run_id, w.metric, w.resolution_s, to_datetime(w.window_start_ms), w.count, w.nonfinite,
                              w.min, w.max, w.sum, w.first, w.first_step, w.last, w.last_step, w.version])
    elif kind == "fleet":
        for f in FleetWindows.FromString(value).windows:
            t.fleet.append([f.project, to_datetime(f.window_start_ms), f.partition, f.active_runs, f.points, f.runs_started,
                            f.runs_finished, f.runs_failed, f.version])
    elif kind == "alerts":
        a = Alert.FromString(value)
        t.alerts.append([a.project, a.alert_id, a.status, a.run_id, a.metric, a.kind, a.severity, a.step, a.value,
                         a.expected_low, a.expected_high, to_datetime(a.event_ms),
                         to_datetime(a.resolved_ms if a.status == "resolved" else a.detected_ms), a.message])


def build(items: list[tuple[Batch, int, int]], t: Tables | None = None) -> Tables:
    """``items`` are (batch, kafka partition, kafka offset), in consumption order."""
    t = t or Tables()
    projects, runs, metrics = _Dict(), _Dict(), _Dict()
    # Per batch only what differs point by point; what is one value per batch is repeated once for the whole poll
    # (a fleet's poll holds thousands of small batches, and per-batch arrays cost more than their points).
    counts: list[int] = []
    proj_codes: list[int] = []
    run_codes: list[int] = []
    keys: list[int] = []
    metric_idx: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    values: list[np.ndarray] = []
    lookups: dict[tuple[str, ...], np.ndarray] = {}  # a run logs the same metric names flush after flush
    for b, partition, offset in items:
        kind = b.WhichOneof("body")
        n = 0
        if kind == "metrics":
            m = b.metrics
            n = len(m.values)
            names = tuple(m.names)
            lookup = lookups.get(names)
            if lookup is None:
                lookup = lookups[names] = np.array([metrics.code(name) for name in names], dtype=np.int32)
            metric_idx.append(lookup[np.array(m.name_index, dtype=np.int64)])
            steps.append(np.array(m.steps, dtype=np.int64))
            ts.append(np.array(m.timestamps_ms, dtype=np.int64))
            values.append(np.array(m.values, dtype=np.float64))
            counts.append(n)
            proj_codes.append(projects.code(b.project))
            run_codes.append(runs.code(b.run_id))
            keys.append(batch_key(b.batch_id))
        elif kind == "run_start":
            rs = b.run_start
            t.run_starts.append([b.project, b.run_id, rs.name, to_datetime(rs.start_ms), list(rs.tags), rs.git.commit, rs.git.branch,
                                 rs.git.remote, rs.git.dirty, rs.host.hostname, rs.host.pid, rs.host.python_version, rs.parent_run_id,
                                 rs.git.diff_sha256, rs.host.packages_sha256,
                                 rs.fork_step if rs.HasField("fork_step") else None])
            t.params.extend([b.project, b.run_id, k, v, to_datetime(rs.start_ms)] for k, v in rs.config.items())
            t.tags.extend([b.project, b.run_id, tag, "", to_datetime(rs.start_ms)] for tag in rs.tags)
        elif kind == "run_finish":
            rf = b.run_finish
            if rf.session:  # a resumed session's finish replaces its resume row
                t.run_sessions.append([b.project, b.run_id, rf.session, to_datetime(rf.session_start_ms),
                                       to_datetime(rf.end_ms), STATUS.get(rf.status, "finished"), rf.points_acked,
                                       rf.batches_acked, rf.points_dropped, 2])
            else:
                t.run_finishes.append([b.project, b.run_id, STATUS.get(rf.status, "finished"), to_datetime(rf.end_ms),
                                       rf.points_acked, rf.batches_acked, rf.points_dropped])
        elif kind == "run_resume":
            rr = b.run_resume
            t.run_sessions.append([b.project, b.run_id, rr.session, to_datetime(rr.resume_ms), None, "running", 0, 0, 0, 1])
        elif kind == "params":
            t.params.extend([b.project, b.run_id, k, v, to_datetime(b.created_ms)] for k, v in b.params.values.items())
        elif kind == "tags":
            t.tags.extend([b.project, b.run_id, k, v, to_datetime(b.created_ms)] for k, v in b.tags.values.items())
        elif kind == "dataset":
            d = b.dataset
            t.datasets.append([b.project, b.run_id, d.uri, d.digest, d.size, to_datetime(b.created_ms), d.name, d.source_type,
                               d.source, d.schema, d.profile, dict(d.input_tags)])
        elif kind == "artifact":
            a = b.artifact
            t.artifacts.append([b.project, b.run_id, a.uri, a.stored_uri, a.size, a.sha256, to_datetime(b.created_ms), a.step])
        t.batches.append([b.project, b.run_id, b.batch_id, b.seq, kind or "", n, to_datetime(b.created_ms), partition, offset])
        t.newest_created_ms = max(t.newest_created_ms, b.created_ms)
    if values:
        all_ts, all_steps = np.concatenate(ts), np.concatenate(steps)
        # Once per poll; the sink then builds batch by batch to find the one to dead-letter.
        if all_ts.min() < 0 or all_ts.max() >= MAX_TIME_MS:
            raise ValueError("a point's time is outside 1970..2100")
        n_by_batch = np.array(counts, dtype=np.int64)
        starts = np.cumsum(n_by_batch) - n_by_batch  # each batch's first row
        t.points = pa.table({
            "project": projects.array(np.repeat(np.array(proj_codes, dtype=np.int32), n_by_batch)),
            "run_id": runs.array(np.repeat(np.array(run_codes, dtype=np.int32), n_by_batch)),
            "metric": metrics.array(np.concatenate(metric_idx)),
            "step": pa.array(all_steps),
            "ts": pa.array(all_ts).cast(pa.timestamp("ms")),
            "value": pa.array(np.concatenate(values)),
            "batch": pa.array(np.repeat(np.array(keys, dtype=np.uint64), n_by_batch)),
            # a point's position in its batch
            "idx": pa.array((np.arange(int(n_by_batch.sum()), dtype=np.int64) - np.repeat(starts, n_by_batch)).astype(np.uint32)),
        })
    return t

