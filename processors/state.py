"""Per-run processor state and the pure step that applies one batch to it (no faust here).

A run's state lives in a faust table keyed by run id (changelog in Kafka), so a
restarted worker resumes where it stopped. Batches are applied at most once:
each run's batches carry increasing sequence numbers; the run remembers the
highest SEQ_MEMORY seqs it applied and a floor below which every seq counts as
applied. A batch whose seq it applied (a replay, a resend) is skipped; one that
arrives after a later batch of its run (reordered on its way to Kafka) but is
above the floor is still applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runstream.processors import anomaly, rollups, seqs
from runstream.v1.ingest_pb2 import Alert, Batch, Metrics, RollupWindow
from runstream.wire.names import SYSTEM_PREFIX

# Applied seqs a run remembers above its floor: how far out of order a batch may reach Kafka and still be applied.
SEQ_MEMORY = 32


@dataclass(slots=True)
class RunState:
    project: str
    max_seq: int = 0
    watermark_ms: int = 0
    finished: bool = False
    windows: rollups.Windows = field(default_factory=dict)
    metrics: dict[str, anomaly.MetricState] = field(default_factory=dict)
    cadence: anomaly.Cadence = field(default_factory=anomaly.Cadence)
    seq_floor: int = 0  # every seq at or below it counts as applied
    applied: list[int] = field(default_factory=list)  # applied seqs above seq_floor, ascending, at most SEQ_MEMORY

    def __reduce__(self) -> tuple[Any, ...]:
        # Its fields in order (its windows and metrics likewise): a run's state is pickled into the changelog after
        # every group of its batches. State pickled by slot names before still loads (__setstate__).
        return RunState, (self.project, self.max_seq, self.watermark_ms, self.finished, self.windows, self.metrics,
                          self.cadence, self.seq_floor, self.applied)

    def __setstate__(self, state: tuple[Any, dict[str, Any]]) -> None:
        _, slots = state  # what object.__getstate__ gives for a slots class: (None, {slot: value})
        for name, value in slots.items():
            object.__setattr__(self, name, value)
        if "seq_floor" not in slots:  # pickled before seq_floor/applied: everything up to max_seq was applied
            self.seq_floor, self.applied = self.max_seq, []

    def seen(self, seq: int) -> bool:
        """Whether the batch with this seq was applied; records it as applied if not."""
        floor = seqs.record(self.seq_floor, self.applied, seq, SEQ_MEMORY)
        if floor is None:
            return True
        self.seq_floor, self.max_seq = floor, max(self.max_seq, seq)
        return False


@dataclass
class Output:
    rollups: list[RollupWindow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    late_points: int = 0
    points: int = 0
    duplicate: bool = False
    # No window this batch created or changed is due on the wall clock before this (ms): the timer need not look at
    # the run sooner for them.
    due_ms: float = math.inf


def apply(st: RunState, batch: Batch, rules: anomaly.RuleBook, *, grace_ms: int, now_ms: int,
          sent: dict[rollups.WindowKey, int] | None = None) -> Output:
    """Apply one batch to its run's state; returns what to emit. ``sent``: the versions of the run's open windows the
    timer emitted; a window that closes as it was emitted is not emitted again (its entry goes)."""
    out = Output()
    if st.seen(batch.seq):
        out.duplicate = True
        return out
    kind = batch.WhichOneof("body")
    limit = st.cadence.stall_after_s(rules.for_metric(st.project, ""))
    previous = st.cadence.last_ms
    gap = st.cadence.update(batch.created_ms)
    if previous and limit is not None and gap > limit:
        # The run was silent long enough for a stall alert: it is over now.
        out.alerts.append(anomaly.stall_resolved(st.project, batch.run_id, previous, gap, now_ms))
    if kind == "metrics":
        m = batch.metrics
        out.points = len(m.values)
        if len(m.values) <= rollups.SMALL_BATCH:
            split = rollups.split_small(m)  # once for the rollups and the detectors
            first_ms = min(m.timestamps_ms[:], default=0)  # a slice copies the field in C; min() over it is quicker
            st.watermark_ms, out.late_points = rollups.apply_split(st.windows, m.names, split,
                                                                   watermark_ms=st.watermark_ms, grace_ms=grace_ms)
            per_metric = _in_step_order(m, split)
        else:
            cols = rollups.columns_of(m)  # once for the rollups and the detectors
            first_ms = int(cols[2].min())
            st.watermark_ms, out.late_points = rollups.apply_columns(st.windows, m.names, cols,
                                                                     watermark_ms=st.watermark_ms, grace_ms=grace_ms)
            per_metric = _per_metric(m.names, cols)
        series: list[anomaly.Series] = []
        for name, steps, vals, ts in per_metric:
            if name.startswith(SYSTEM_PREFIX):
                continue  # a busy CPU or a GPU at 100% is no anomaly of the training
            ms = st.metrics.get(name)
            if ms is None:
                ms = st.metrics[name] = anomaly.MetricState()
            series.append((ms, rules.for_metric(st.project, name), name, steps, vals, ts))
        out.alerts += anomaly.observe_many(st.project, batch.run_id, series, now_ms)
        if out.points:
            # Every window a point touches ends no sooner than the first resolution's window of the earliest point.
            r0 = rollups.RESOLUTIONS_S[0] * 1000
            out.due_ms = first_ms - first_ms % r0 + r0 + grace_ms
        _emit(out, st, batch.run_id, rollups.close(st.windows, watermark_ms=st.watermark_ms, grace_ms=grace_ms), sent)
    elif kind == "run_resume":
        st.finished = False
    elif kind == "run_finish":
        st.finished = True
        # Nothing more will come: every window is final, every open alert of the run resolves.
        _emit(out, st, batch.run_id, sorted(st.windows.items()), sent)
        st.windows.clear()
        for name, ms in st.metrics.items():
            for kind_ in list(ms.open):
                a = anomaly._resolve(ms, st.project, batch.run_id, name, kind_, -1, 0.0, batch.created_ms, now_ms, "run finished")
                if a:
                    out.alerts.append(a)
    return out


def _emit(out: Output, st: RunState, run_id: str, closed: list[tuple[rollups.WindowKey, rollups.Window]],
          sent: dict[rollups.WindowKey, int] | None) -> None:
    for key, w in closed:
        if sent is not None and sent.pop(key, None) == w.version:
            continue  # the timer emitted it as it stands (a run whose next batch came after the window was due)
        out.rollups.append(rollups.to_proto(st.project, run_id, key, w))


def _in_step_order(m: Metrics, split: rollups.Split) -> list[tuple[str, list[int], list[float], list[int]]]:
    """A small batch's points per metric, each in step order."""
    out = []
    for idx, steps, vals, ts in split:
        if steps != sorted(steps):
            order = sorted(range(len(steps)), key=steps.__getitem__)
            steps, vals, ts = [steps[i] for i in order], [vals[i] for i in order], [ts[i] for i in order]
        out.append((m.names[idx], steps, vals, ts))
    return out


def _per_metric(names: Any, cols: rollups.Columns) -> list[tuple[str, Any, Any, Any]]:
    """A large batch's points split by metric, each in step order, as numpy arrays."""
    ni, steps_a, ts_a, vals_a = cols
    perm = np.lexsort((steps_a, ni))
    ni_s = ni[perm]
    bounds = np.flatnonzero(np.diff(ni_s)) + 1
    vals_a, ts_a, steps_a = vals_a[perm], ts_a[perm], steps_a[perm]
    return [(names[int(ni_s[b])], steps_a[b:e], vals_a[b:e], ts_a[b:e])
            for b, e in zip(np.concatenate(([0], bounds)).tolist(), np.concatenate((bounds, [len(ni_s)])).tolist())]


def windows_due(st: RunState, sent: Mapping[rollups.WindowKey, int], *, now_ms: int,
                grace_ms: int) -> tuple[list[tuple[rollups.WindowKey, rollups.Window]], float]:
    """A run's open windows not yet emitted as they stand (``sent``: the versions emitted, by window key): those
    whose end plus grace is behind the wall clock, to emit now (they stay open), and when the first of the others
    is due (inf: none)."""
    now: list[tuple[rollups.WindowKey, rollups.Window]] = []
    later = math.inf
    for k, w in st.windows.items():
        if sent.get(k) == w.version:
            continue
        at = k[2] + k[1] * 1000 + grace_ms
        if at <= now_ms:
            now.append((k, w))
        else:
            later = min(later, at)
    return now, later

