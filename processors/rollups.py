"""Rollups: per (run, metric), tumbling event-time windows at 10 s and 1 min.

Each window keeps count, nonfinite count, min, max, sum (finite values only),
and first/last by step. A batch's points are grouped with numpy (one pass per
resolution), then merged into the run's open windows. A window closes when the
run's watermark (newest point time) passes its end plus the grace period;
points for a closed window are late: counted, not applied. Emitted windows
carry ``version`` = events applied, so storage keeps the most complete one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runstream.v1.ingest_pb2 import Batch, RollupWindow

RESOLUTIONS_S = (10, 60)
assert all(r % RESOLUTIONS_S[0] == 0 for r in RESOLUTIONS_S)  # a first-resolution window lies in one of each


@dataclass(slots=True)
class Window:
    count: int = 0
    nonfinite: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    sum: float = 0.0
    first: float = 0.0
    first_step: int = 2**63 - 1
    last: float = 0.0
    last_step: int = -1
    version: int = 0

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its fields in order (the changelog's hot path): the default, a dict of slot names per window,
        # took twice as long to write.
        return Window, (self.count, self.nonfinite, self.min, self.max, self.sum, self.first, self.first_step, self.last,
                        self.last_step, self.version)


# Open windows of one run: (metric, resolution_s, window_start_ms) -> Window
WindowKey = tuple[str, int, int]  # (metric, resolution s, window start ms)
Windows = dict[WindowKey, Window]


SMALL_BATCH = 256  # below this many points a plain loop beats numpy's per-call overhead


def apply(windows: Windows, batch: Batch, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    """Merge a metrics batch into ``windows``; returns (new watermark, late points)."""
    m = batch.metrics
    if len(m.values) <= SMALL_BATCH:
        return _apply_small(windows, batch, watermark_ms=watermark_ms, grace_ms=grace_ms)
    return apply_columns(windows, m.names, columns_of(m), watermark_ms=watermark_ms, grace_ms=grace_ms)


# A large batch's points as arrays: (metric index, step, time ms, value)
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def columns_of(m: Any) -> Columns:
    return (np.array(m.name_index, dtype=np.int64), np.array(m.steps, dtype=np.int64),
            np.array(m.timestamps_ms, dtype=np.int64), np.array(m.values, dtype=np.float64))


def apply_columns(windows: Windows, names: Any, cols: Columns, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    """``apply`` for a large batch's arrays; returns (new watermark, late points)."""
    ni, steps, ts, vals = cols
    finite = np.isfinite(vals)
    # Group by (metric, first-resolution window) once, sorted by step inside a group; every coarser window is a
    # union of such groups, so the groups' aggregates are merged into each resolution's window.
    r0 = RESOLUTIONS_S[0] * 1000
    key = ni * (2**40) + (ts - ts % r0) // 1000
    order = np.lexsort((steps, key))
    k, st, v, fin = key[order], steps[order], vals[order], finite[order]
    bounds = np.flatnonzero(np.diff(k)) + 1
    begins = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(k)]))
    sums = np.add.reduceat(np.where(fin, v, 0.0), begins)
    mins = np.minimum.reduceat(np.where(fin, v, np.inf), begins)
    maxs = np.maximum.reduceat(np.where(fin, v, -np.inf), begins)
    nonfin = np.add.reduceat((~fin).astype(np.int64), begins)
    # The last by step is the earliest point holding the group's highest step (as a small batch and _merge have it):
    # the first of the trailing run of equal steps in the stably sorted group.
    top = st == np.repeat(st[ends - 1], ends - begins)
    last = np.minimum.reduceat(np.where(top, np.arange(len(st)), len(st)), begins)
    groups = [(kk >> 40, (kk & (2**40 - 1)) * 1000, n, nf, s, lo, hi, fs, fv, ls, lv) for kk, n, nf, s, lo, hi, fs, fv, ls, lv in zip(
        k[begins].tolist(), (ends - begins).tolist(), nonfin.tolist(), sums.tolist(), mins.tolist(), maxs.tolist(),
        st[begins].tolist(), v[begins].tolist(), st[last].tolist(), v[last].tolist())]
    late = _merge(windows, names, groups, watermark_ms=watermark_ms, grace_ms=grace_ms)
    return max(watermark_ms, int(ts.max())), late


# One first-resolution group: (metric index, window start ms, points, nonfinite, sum of the finite, min, max of the
# finite (inf / -inf when none), first step, its value, last step, its value)
Group = tuple[int, int, int, int, float, float, float, int, float, int, float]


def _merge(windows: Windows, names: Any, groups: list[Group], *, watermark_ms: int, grace_ms: int) -> int:
    """Merge groups into the open windows of every resolution; returns the late points (first resolution)."""
    late = 0
    touched: set[tuple[str, int, int]] = set()
    for idx, start0, n, nonfinite, total, lo, hi, first_step, first, last_step, last in groups:
        name = names[idx]
        for res in RESOLUTIONS_S:
            res_ms = res * 1000
            start = start0 - start0 % res_ms  # every resolution is a multiple of the first: one window each
            if start + res_ms + grace_ms <= watermark_ms:
                if res == RESOLUTIONS_S[0]:
                    late += n
                continue
            wkey = (name, res, start)
            w = windows.get(wkey)
            if w is None:
                w = windows[wkey] = Window()
            touched.add(wkey)
            fresh = w.count == 0
            w.count += n
            w.nonfinite += nonfinite
            if n > nonfinite:
                w.sum += total
                if lo < w.min:
                    w.min = lo
                if hi > w.max:
                    w.max = hi
            if fresh or first_step < w.first_step:  # steps may be any int64, negative ones too
                w.first_step, w.first = first_step, first
            if fresh or last_step > w.last_step:
                w.last_step, w.last = last_step, last
    for wkey in touched:
        windows[wkey].version += 1
    return late


# A small batch's points per metric: (metric index, steps, values, times), in batch order within a metric.
Split = list[tuple[int, list[int], list[float], list[int]]]


def split_small(m: Any) -> Split:
    """A small batch's points per metric index. A batch whose every step logs the same metrics in the same order
    (the usual layout: name_index 0..k-1 over and over) is split by slicing, any other point by point."""
    ni = m.name_index[:]  # slices copy a repeated field to a list faster than list() iterates it
    if not ni:
        return []
    steps, vals, ts = m.steps[:], m.values[:], m.timestamps_ms[:]
    k = len(m.names)
    if len(ni) % k == 0 and ni == list(range(k)) * (len(ni) // k):
        return [(j, steps[j::k], vals[j::k], ts[j::k]) for j in range(k)]
    groups: dict[int, tuple[list[int], list[float], list[int]]] = {}
    for idx, step, t, v in zip(ni, steps, ts, vals):
        g = groups.get(idx)
        if g is None:
            g = groups[idx] = ([], [], [])
        g[0].append(step)
        g[1].append(v)
        g[2].append(t)
    return [(idx, *g) for idx, g in sorted(groups.items())]


def _apply_small(windows: Windows, batch: Batch, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    return apply_split(windows, batch.metrics.names, split_small(batch.metrics), watermark_ms=watermark_ms,
                       grace_ms=grace_ms)


def apply_split(windows: Windows, names: Any, split: Split, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    """``apply`` for a small batch already split by metric; returns (new watermark, late points)."""
    r0 = RESOLUTIONS_S[0] * 1000
    newest = watermark_ms
    groups: list[Group] = []
    for idx, steps, vals, ts in split:
        lo, hi = min(ts), max(ts)
        newest = max(newest, hi)
        if lo - lo % r0 == hi - hi % r0:  # a flush's points usually share one first-resolution window
            groups.append(_group(idx, lo - lo % r0, steps, vals))
            continue
        by_window: dict[int, tuple[list[int], list[float]]] = {}
        for step, t, v in zip(steps, ts, vals):
            g = by_window.get(t - t % r0)
            if g is None:
                by_window[t - t % r0] = ([step], [v])
            else:
                g[0].append(step)
                g[1].append(v)
        groups += [_group(idx, start0, s, v) for start0, (s, v) in by_window.items()]
    return newest, _merge(windows, names, groups, watermark_ms=watermark_ms, grace_ms=grace_ms)


def _group(idx: int, start0: int, steps: list[int], vals: list[float]) -> Group:
    total = sum(vals)
    if math.isfinite(total):  # no NaN or infinity among them (an overflow to inf takes the careful way)
        finite, nonfinite = vals, 0
    else:
        finite = [v for v in vals if math.isfinite(v)]
        total = sum(finite)
        nonfinite = len(vals) - len(finite)
    lo, hi = (min(finite), max(finite)) if finite else (math.inf, -math.inf)
    # First and last by step: the earliest point holding the lowest / highest step, as per point before.
    first_step, last_step = min(steps), max(steps)
    return (idx, start0, len(vals), nonfinite, total, lo, hi, first_step, vals[steps.index(first_step)],
            last_step, vals[steps.index(last_step)])


def close(windows: Windows, *, watermark_ms: int, grace_ms: int) -> list[tuple[tuple[str, int, int], Window]]:
    """Remove and return the windows whose end plus grace is behind the watermark."""
    done = [(k, w) for k, w in windows.items() if k[2] + k[1] * 1000 + grace_ms <= watermark_ms]
    for k, _ in done:
        del windows[k]
    return done


def to_proto(project: str, run_id: str, key: tuple[str, int, int], w: Window) -> RollupWindow:
    metric, res, start = key
    return RollupWindow(project=project, run_id=run_id, metric=metric, resolution_s=res, window_start_ms=start,
                        count=w.count, nonfinite=w.nonfinite,
                        min=w.min if w.count > w.nonfinite else float("nan"),
                        max=w.max if w.count > w.nonfinite else float("nan"), sum=w.sum,
                        first=w.first, first_step=w.first_step, last=w.last, last_step=w.last_step, version=w.version)
