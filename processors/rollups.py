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


# Open windows of one run: (metric, resolution_s, window_start_ms) -> Window
Windows = dict[tuple[str, int, int], Window]


SMALL_BATCH = 256  # below this many points a plain loop beats numpy's per-call overhead


def apply(windows: Windows, batch: Batch, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    """Merge a metrics batch into ``windows``; returns (new watermark, late points)."""
    m = batch.metrics
    if len(m.values) <= SMALL_BATCH:
        return _apply_small(windows, batch, watermark_ms=watermark_ms, grace_ms=grace_ms)
    ts = np.array(m.timestamps_ms, dtype=np.int64)
    steps = np.array(m.steps, dtype=np.int64)
    vals = np.array(m.values, dtype=np.float64)
    ni = np.array(m.name_index, dtype=np.int64)
    finite = np.isfinite(vals)
    late = 0
    for res in RESOLUTIONS_S:
        res_ms = res * 1000
        start = ts - ts % res_ms
        # Drop points whose window closed already (by the watermark before this batch).
        ok = start + res_ms + grace_ms > watermark_ms
        if res == RESOLUTIONS_S[0]:
            late = int((~ok).sum())
        if not ok.all():
            start, s_steps, s_vals, s_ni, s_fin = start[ok], steps[ok], vals[ok], ni[ok], finite[ok]
        else:
            s_steps, s_vals, s_ni, s_fin = steps, vals, ni, finite
        if not len(start):
            continue
        # Group by (metric, window start): sort on a combined key, reduce per run of equal keys.
        key = s_ni * (2**40) + (start // 1000)
        order = np.lexsort((s_steps, key))
        k, st, v, fin = key[order], s_steps[order], s_vals[order], s_fin[order]
        bounds = np.flatnonzero(np.diff(k)) + 1
        begins = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(k)]))
        vf = np.where(fin, v, 0.0)
        sums = np.add.reduceat(vf, begins)
        mins = np.minimum.reduceat(np.where(fin, v, np.inf), begins)
        maxs = np.maximum.reduceat(np.where(fin, v, -np.inf), begins)
        nonfin = np.add.reduceat((~fin).astype(np.int64), begins)
        for b, e, s, lo, hi, nf in zip(begins.tolist(), ends.tolist(), sums.tolist(), mins.tolist(), maxs.tolist(), nonfin.tolist()):
            kk = int(k[b])
            wkey = (m.names[kk >> 40], res, (kk & (2**40 - 1)) * 1000)
            w = windows.get(wkey)
            if w is None:
                w = windows[wkey] = Window()
            w.count += e - b
            w.nonfinite += nf
            w.sum += s
            if lo < w.min:
                w.min = lo
            if hi > w.max:
                w.max = hi
            # Points are sorted by step inside the group: first and last are at the ends.
            if int(st[b]) < w.first_step:
                w.first_step, w.first = int(st[b]), float(v[b])
            if int(st[e - 1]) > w.last_step:
                w.last_step, w.last = int(st[e - 1]), float(v[e - 1])
            w.version += 1
    return max(watermark_ms, int(ts.max())), late


def _apply_small(windows: Windows, batch: Batch, *, watermark_ms: int, grace_ms: int) -> tuple[int, int]:
    m = batch.metrics
    names = m.names
    r0 = RESOLUTIONS_S[0] * 1000
    # Points grouped by (metric, first-resolution window) in one pass; a fleet's flush is a few such groups, so the
    # windows are updated once per group, not once per point and resolution.
    groups: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
    newest = watermark_ms
    for idx, step, t, v in zip(m.name_index, m.steps, m.timestamps_ms, m.values):
        if t > newest:
            newest = t
        gkey = (idx, t - t % r0)
        g = groups.get(gkey)
        if g is None:
            groups[gkey] = ([step], [v])
        else:
            g[0].append(step)
            g[1].append(v)
    late = 0
    touched: set[tuple[str, int, int]] = set()
    isfinite = math.isfinite
    for (idx, start0), (steps, vals) in groups.items():
        total = sum(vals)
        if isfinite(total):  # no NaN or infinity among them (an overflow to inf takes the careful way)
            finite, nonfinite = vals, 0
        else:
            finite = [v for v in vals if isfinite(v)]
            total = sum(finite)
            nonfinite = len(vals) - len(finite)
        lo, hi = (min(finite), max(finite)) if finite else (math.inf, -math.inf)
        # First and last by step: the earliest point holding the lowest / highest step, as per point before.
        first_step, last_step = min(steps), max(steps)
        first, last = vals[steps.index(first_step)], vals[steps.index(last_step)]
        name = names[idx]
        for res in RESOLUTIONS_S:
            res_ms = res * 1000
            start = start0 - start0 % res_ms  # every resolution is a multiple of the first: one window each
            if start + res_ms + grace_ms <= watermark_ms:
                if res == RESOLUTIONS_S[0]:
                    late += len(vals)
                continue
            key = (name, res, start)
            w = windows.get(key)
            if w is None:
                w = windows[key] = Window()
            touched.add(key)
            w.count += len(vals)
            w.nonfinite += nonfinite
            if finite:
                w.sum += total
                if lo < w.min:
                    w.min = lo
                if hi > w.max:
                    w.max = hi
            if first_step < w.first_step:
                w.first_step, w.first = first_step, first
            if last_step > w.last_step:
                w.last_step, w.last = last_step, last
    for key in touched:
        windows[key].version += 1
    return newest, late


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
