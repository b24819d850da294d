"""Fleet view: per project, per 10 s of event time, active runs, points, runs started/finished/failed.

State is kept per (events partition, project): runs are keyed by run id, so
partitions hold disjoint runs and storage sums the partitions' rows.

A batch that arrives after its window closed (a client that spooled through a Kafka outage, say) is still
counted: closed windows keep their counts (not their run sets) for LATE_MEMORY_MS of event time, and a late
batch re-emits its window with a higher version, which replaces the stored row. Its run is added to the
window's active runs only if the window was still open; points and run starts/finishes are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runstream.processors import seqs
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
    active_closed: int = 0  # len(runs) when the window closed (the set itself is dropped then)


SEQ_MEMORY_MS = 15 * 60_000  # how long a run's applied seqs are remembered after its last batch
SEQ_MEMORY = 8  # applied seqs remembered per run above its floor (see seqs.py); the state holds every run of its window
LATE_MEMORY_MS = 60 * 60_000  # how long a closed window still takes late batches (event time)


@dataclass(slots=True)
class FleetState:
    watermark_ms: int = 0
    buckets: dict[int, Bucket] = field(default_factory=dict)
    # run id -> (seq floor, time of its last batch, applied seqs above the floor...): replays are skipped here
    # independently of the run state. (Before the applied seqs were kept, the floor was the last applied seq.)
    seqs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    closed: dict[int, Bucket] = field(default_factory=dict)  # window start -> its counts, for late batches


OPEN, LATE, DROPPED = "open", "late", "dropped"


def apply(state: FleetState, batch: Batch, *, grace_ms: int) -> str | None:
    """Count one batch in its window. OPEN: counted in an open window; LATE: counted in a closed one, which must
    be emitted again; DROPPED: its window is older than LATE_MEMORY_MS; None: already counted (a replay)."""
    known = state.seqs.get(batch.run_id)
    applied = list(known[2:]) if known else []
    floor = seqs.record(known[0] if known else 0, applied, batch.seq, SEQ_MEMORY)
    if floor is None:
        return None
    t = batch.created_ms
    state.seqs[batch.run_id] = (floor, max(t, known[1]) if known else t, *applied)
    if len(state.seqs) > 64 and t % 64 == 0:  # prune now and then
        for run_id in [r for r, v in state.seqs.items() if v[1] < state.watermark_ms - SEQ_MEMORY_MS]:
            del state.seqs[run_id]
    start = t - t % WINDOW_MS
    outcome = OPEN
    if start + WINDOW_MS + grace_ms <= state.watermark_ms:
        late = closed_windows(state).get(start)
        if late is None:
            return DROPPED
        b, outcome = late, LATE
    else:
        opened = state.buckets.get(start)
        if opened is None:
            opened = state.buckets[start] = Bucket()
        b = opened
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
    return outcome


def closed_windows(state: FleetState) -> dict[int, Bucket]:
    if not hasattr(state, "closed"):  # a state written before closed windows were kept
        state.closed = {}
    return state.closed


def close(state: FleetState, *, grace_ms: int) -> list[tuple[int, Bucket]]:
    """Remove and return the windows the watermark (event time) has passed, grace included; their counts stay
    (without the run set) for late batches."""
    done = [(s, b) for s, b in state.buckets.items() if s + WINDOW_MS + grace_ms <= state.watermark_ms]
    kept = closed_windows(state)
    for s, b in done:
        del state.buckets[s]
        kept[s] = Bucket(points=b.points, started=b.started, finished=b.finished, failed=b.failed, version=b.version,
                         active_closed=len(b.runs))
    if done:
        for s in [s for s in kept if s < state.watermark_ms - LATE_MEMORY_MS]:
            del kept[s]
    return done


def quiet(state: FleetState, *, now_ms: int, grace_ms: int) -> list[tuple[int, Bucket]]:
    """Open windows whose end plus grace is behind the wall clock: emitted as they are, kept open."""
    return [(s, b) for s, b in state.buckets.items() if s + WINDOW_MS + grace_ms <= now_ms]


def to_proto(project: str, partition: int, start: int, b: Bucket) -> FleetWindow:
    return FleetWindow(project=project, window_start_ms=start, partition=partition,
                       active_runs=len(b.runs) or getattr(b, "active_closed", 0),
                       points=b.points, runs_started=b.started, runs_finished=b.finished, runs_failed=b.failed,
                       version=b.version)
