"""Fleet view: per project, per 10 s of event time, active runs, points, runs started/finished/failed.

State is kept per (events partition, project): runs are keyed by run id, so
partitions hold disjoint runs and storage sums the partitions' rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runstream.v1.ingest_pb2 import Batch, FleetWindow, RunStatus

WINDOW_MS = 10_000


@dataclass(slots=True)
class Bucket:
    runs: set[str] = field(default_factory=set)
    points: int = 0
    started: int = 0
    finished: int = 0
    failed: int = 0
    version: int = 0


SEQ_MEMORY_MS = 15 * 60_000  # how long a run's last applied seq is remembered after its last batch


@dataclass(slots=True)
class FleetState:
    watermark_ms: int = 0
    buckets: dict[int, Bucket] = field(default_factory=dict)
    # run id -> (last applied seq, its time): replays are skipped here independently of the run state.
    seqs: dict[str, tuple[int, int]] = field(default_factory=dict)


def apply(state: FleetState, batch: Batch, *, grace_ms: int) -> bool | None:
    """Count one batch in its window. None: already counted (a replay); False: its window closed (late)."""
    last = state.seqs.get(batch.run_id)
    if last is not None and batch.seq <= last[0]:
        return None
    t = batch.created_ms
    state.seqs[batch.run_id] = (batch.seq, t)
    if len(state.seqs) > 64 and t % 64 == 0:  # prune now and then
        for run_id in [r for r, (_, ms) in state.seqs.items() if ms < state.watermark_ms - SEQ_MEMORY_MS]:
            del state.seqs[run_id]
    start = t - t % WINDOW_MS
    if start + WINDOW_MS + grace_ms <= state.watermark_ms:
        return False
    b = state.buckets.get(start)
    if b is None:
        b = state.buckets[start] = Bucket()
    b.runs.add(batch.run_id)
    kind = batch.WhichOneof("body")
    if kind == "metrics":
        b.points += len(batch.metrics.values)
    elif kind == "run_start":
        b.started += 1
    elif kind == "run_finish":
        if batch.run_finish.status in (RunStatus.RUN_STATUS_FAILED, RunStatus.RUN_STATUS_KILLED):
            b.failed += 1
        else:
            b.finished += 1
    b.version += 1
    state.watermark_ms = max(state.watermark_ms, t)
    return True


def close(state: FleetState, *, grace_ms: int) -> list[tuple[int, Bucket]]:
    """Remove and return the windows the watermark (event time) has passed, grace included."""
    done = [(s, b) for s, b in state.buckets.items() if s + WINDOW_MS + grace_ms <= state.watermark_ms]
    for s, _ in done:
        del state.buckets[s]
    return done


def quiet(state: FleetState, *, now_ms: int, grace_ms: int) -> list[tuple[int, Bucket]]:
    """Open windows whose end plus grace is behind the wall clock: emitted as they are, kept open."""
    return [(s, b) for s, b in state.buckets.items() if s + WINDOW_MS + grace_ms <= now_ms]


def to_proto(project: str, partition: int, start: int, b: Bucket) -> FleetWindow:
    return FleetWindow(project=project, window_start_ms=start, partition=partition, active_runs=len(b.runs),
                       points=b.points, runs_started=b.started, runs_finished=b.finished, runs_failed=b.failed,
                       version=b.version)
