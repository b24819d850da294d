"""Online anomaly detection per (run, metric), in O(1) memory each.

- nonfinite: NaN or +-Inf. Resolves when finite values resume.
- spike: a robust score against the metric's own recent history: an
  exponentially weighted mean and mean absolute deviation, not updated by the
  outliers themselves. Fires when the point is ``spike_z`` deviations away AND
  ``spike_ratio`` times the level away (so learning-rate drops and noise on
  tiny values stay quiet), after ``warmup_points`` points and ``min_step``.
- divergence: for loss-like metrics, a slow EWMA that climbed ``divergence_ratio``
  above its best after the curve had trended down.
- stall: a running run that sent nothing for ``stall_factor`` x its usual interval
  (and at least ``stall_min_s``), or for ``stall_timeout_s`` whatever its interval.
  Checked on wall-clock ticks, not only on events.

Thresholds come from a rules file: defaults, then per project, then per metric.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from runstream.v1.ingest_pb2 import Alert
from runstream.wire.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Rules:
    spike_z: float = 10.0
    spike_ratio: float = 3.0
    span: int = 30                       # EWMA span (points) of the spike baseline
    warmup_points: int = 30
    min_step: int = 0
    divergence_metrics: tuple[str, ...] = ("*loss*",)
    divergence_ratio: float = 0.5
    divergence_span: int = 50
    divergence_min_points: int = 100
    stall_factor: float = 2.5
    stall_min_s: float = 5.0
    stall_timeout_s: float = 600.0
    enabled: bool = True


class RuleBook:
    """Rules per project and metric: ``defaults``, then ``projects.<p>.defaults``, then ``projects.<p>.metrics.<glob>``."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.defaults = self._rules(Rules(), data.get("defaults") or {}, "defaults")
        self.projects: dict[str, tuple[Rules, list[tuple[str, dict]]]] = {}
        for project, pdata in (data.get("projects") or {}).items():
            base = self._rules(self.defaults, pdata.get("defaults") or {}, f"projects.{project}.defaults")
            metrics = list((pdata.get("metrics") or {}).items())
            for glob, mdata in metrics:
                self._rules(base, mdata, f"projects.{project}.metrics.{glob}")  # validate now
            self.projects[project] = (base, metrics)
        self._cache: dict[tuple[str, str], Rules] = {}

    @staticmethod
    def _rules(base: Rules, overrides: dict[str, Any], where: str) -> Rules:
        known = {f.name: f.type for f in fields(Rules)}
        bad = [k for k in overrides if k not in known]
        if bad:
            raise ConfigError(f"anomaly rules {where}: unknown setting(s) {bad}; known: {sorted(known)}")
        clean: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return replace(base, **clean)

    @classmethod
    def load(cls, path: str | Path | None) -> RuleBook:
        if not path:
            return cls()
        try:
            return cls(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"anomaly rules file {path}: {exc}") from exc

    def for_metric(self, project: str, metric: str) -> Rules:
        key = (project, metric)
        r = self._cache.get(key)
        if r is None:
            base, metrics = self.projects.get(project, (self.defaults, []))
            r = base
            for glob, mdata in metrics:
                if fnmatch.fnmatchcase(metric, glob):
                    r = self._rules(r, mdata, glob)
            self._cache[key] = r
        return r


def alert_id(run_id: str, metric: str, kind: str, anchor: int) -> str:
    return hashlib.blake2b(f"{run_id}|{metric}|{kind}|{anchor}".encode(), digest_size=8).hexdigest()


@dataclass(slots=True)
class MetricState:
    n: int = 0
    mean: float = 0.0
    mad: float = 0.0
    slow: float = 0.0
    slow_first: float = 0.0
    slow_best: float = math.inf
    slow_n: int = 0
    open: dict[str, tuple[str, int]] = field(default_factory=dict)  # kind -> (alert id, opening step)

    def __reduce__(self) -> tuple[Any, ...]:
        return MetricState, (self.n, self.mean, self.mad, self.slow, self.slow_first, self.slow_best, self.slow_n, self.open)


def _alert(project: str, run_id: str, metric: str, kind: str, severity: str, step: int, value: float,
           lo: float, hi: float, event_ms: int, now_ms: int, message: str) -> Alert:
    return Alert(alert_id=alert_id(run_id, metric, kind, step), project=project, run_id=run_id, metric=metric,
                 kind=kind, severity=severity, step=step, value=value, expected_low=lo, expected_high=hi,
                 event_ms=event_ms, detected_ms=now_ms, status="open", message=message)


def _resolve(st: MetricState, project: str, run_id: str, metric: str, kind: str, step: int, value: float,
             event_ms: int, now_ms: int, why: str) -> Alert | None:
    opened = st.open.pop(kind, None)
    if opened is None:
        return None
    aid, first_step = opened
    return Alert(alert_id=aid, project=project, run_id=run_id, metric=metric, kind=kind, step=first_step, value=value,
                 event_ms=event_ms, detected_ms=now_ms, resolved_ms=now_ms, status="resolved",
                 severity="critical" if kind in ("nonfinite", "divergence") else "warning",
                 message=f"{metric} {kind} resolved at step {step}: {why}")


@functools.lru_cache(maxsize=65_536)
def _diverges(metric: str, globs: tuple[str, ...]) -> bool:
    """Whether divergence is watched for the metric (asked once per metric and batch)."""
    return any(fnmatch.fnmatchcase(metric, g) for g in globs)


# Below this many points in one batch's metrics of a like shape, the per-point loop beats numpy's per-call overhead.
BLOCK_MIN = 320
_BLOCK = 512  # points per closed-form block: (1 - alpha) ** -512 stays far from overflow for alpha <= 0.5

# One metric's points of a batch, in step order: (its state, its rules, its name, steps, values, times)
Series = tuple[MetricState, Rules, str, Any, Any, Any]


@functools.lru_cache(maxsize=64)
def _powers(a: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(1, _BLOCK + 1, dtype=np.float64)
    return (1.0 - a) ** -k, (1.0 - a) ** k


def _ewma(x: np.ndarray, y0: np.ndarray, a: float) -> np.ndarray:
    """Each row's y_k = y_(k-1) + a * (x_k - y_(k-1)) from its y0, as the per-point loop updates it, in closed form:
    y_k = r^k * (y0 + a * sum_(j<=k) r^-j * x_j) with r = 1 - a, block by block along the row."""
    grow, shrink = _powers(a)
    n = x.shape[1]
    if n <= _BLOCK:
        return shrink[:n] * (y0[:, None] + a * np.cumsum(x * grow[:n], axis=1))
    out = np.empty(x.shape)
    for b in range(0, n, _BLOCK):
        xs = x[:, b:b + _BLOCK]
        m = xs.shape[1]
        out[:, b:b + m] = shrink[:m] * (y0[:, None] + a * np.cumsum(xs * grow[:m], axis=1))
        y0 = out[:, b + m - 1]
    return out


def _quiet_block(sts: list[MetricState], rules: Rules, diverge: list[bool], values: np.ndarray) -> list[bool]:
    """The detectors over metrics of one batch with as many points each (rows of ``values``, in step order) and the
    same rules, with whole-array arithmetic. A row in which no point would open or resolve an alert (the usual case)
    has its state updated and is True; any other row keeps its state and is False, for the per-point loop."""
    alpha, beta = 2.0 / (rules.span + 1), 2.0 / (rules.divergence_span + 1)
    rows = len(sts)
    with np.errstate(all="ignore"):
        mean0 = np.fromiter((s.mean for s in sts), np.float64, rows)
        mad0 = np.fromiter((s.mad for s in sts), np.float64, rows)
        mean = _ewma(values, mean0, alpha)
        before = np.concatenate((mean0[:, None], mean[:, :-1]), axis=1)  # the level each point is judged against
        dev = np.abs(values - before)
        mad = _ewma(dev, mad0, alpha)
        sigma = 1.2533 * np.concatenate((mad0[:, None], mad[:, :-1]), axis=1)
        spikes = (dev > rules.spike_z * sigma) & (dev > rules.spike_ratio * np.maximum(np.abs(before), sigma))
        # A NaN or infinity anywhere in a row makes its last mean or MAD non-finite.
        ok = (np.isfinite(mean[:, -1]) & np.isfinite(mad[:, -1]) & ~spikes.any(axis=1)).tolist()
        div = [i for i in range(rows) if diverge[i] and ok[i]]
        if div:
            d = [sts[i] for i in div]
            slow0 = np.fromiter((s.slow for s in d), np.float64, len(d))
            slow = _ewma(values[div], slow0, beta)
            slow_n = np.fromiter((s.slow_n for s in d), np.int64, len(d))[:, None] + np.arange(1, values.shape[1] + 1)
            best0 = np.fromiter((s.slow_best for s in d), np.float64, len(d))
            best = np.minimum(best0[:, None], np.minimum.accumulate(
                np.where(slow_n >= rules.divergence_min_points // 2, slow, np.inf), axis=1))
            first = np.fromiter((s.slow_first for s in d), np.float64, len(d))
            fired = ((slow_n >= rules.divergence_min_points) & (best < first[:, None] * 0.9)
                     & (slow > best * (1 + rules.divergence_ratio)) & (best > 0)).any(axis=1)
            for j, (i, fine) in enumerate(zip(div, (np.isfinite(slow[:, -1]) & ~fired).tolist())):
                if fine:
                    sts[i].slow, sts[i].slow_best, sts[i].slow_n = float(slow[j, -1]), float(best[j, -1]), int(slow_n[j, -1])
                else:
                    ok[i] = False
    last_mean, last_mad, n = mean[:, -1].tolist(), mad[:, -1].tolist(), values.shape[1]
    for i, st in enumerate(sts):
        if ok[i]:
            st.n += n
            st.mean, st.mad = last_mean[i], last_mad[i]
    return ok


def observe_many(project: str, run_id: str, series: list[Series], now_ms: int) -> list[Alert]:
    """Run the detectors over the metrics of one batch; returns the alerts opened or resolved.

    Metrics with as many points and the same rules, past their warm-up and with no alert open, go through the
    whole-array arithmetic together when they hold BLOCK_MIN points or more between them; the rest, and any metric
    in which a point does open or resolve an alert, through the per-point loop."""
    out: list[Alert] = []
    total = 0
    for s in series:
        total += len(s[4])
    if total < BLOCK_MIN:  # the usual small batch: straight to the loop
        for st, rules, metric, steps, values, ts in series:
            out += _observe_loop(st, rules, project, run_id, metric, steps, values, ts, now_ms)
        return out
    blocks: dict[tuple[int, int], list[Series]] = {}
    loop: list[Series] = []
    for s in series:
        st, rules, _, steps, values, _ = s
        if not rules.enabled:
            continue
        if (st.open or st.n < max(1, rules.warmup_points) or steps[0] < rules.min_step
                or rules.span < 3 or rules.divergence_span < 3):  # alpha or beta above 0.5: the loop
            loop.append(s)
        else:
            blocks.setdefault((id(rules), len(values)), []).append(s)
    for (_, n), group in blocks.items():
        if n * len(group) < BLOCK_MIN:
            loop += group
            continue
        rules = group[0][1]
        ok = _quiet_block([s[0] for s in group], rules, [_diverges(s[2], rules.divergence_metrics) for s in group],
                          np.array([s[4] for s in group], dtype=np.float64))
        loop += [s for s, fine in zip(group, ok) if not fine]
    for st, rules, metric, steps, values, ts in loop:
        out += _observe_loop(st, rules, project, run_id, metric, steps, values, ts, now_ms)
    return out


def _observe_loop(st: MetricState, rules: Rules, project: str, run_id: str, metric: str,
                  steps: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray, ts: Sequence[int] | np.ndarray,
                  now_ms: int) -> list[Alert]:
    """The detectors point by point (in step order); returns the alerts opened or resolved."""
    out: list[Alert] = []
    if not rules.enabled:
        return out
    if isinstance(values, np.ndarray):  # Python floats: numpy scalars are slow one by one
        steps, values, ts = steps.tolist(), values.tolist(), ts.tolist()  # type: ignore[union-attr]
    alpha = 2.0 / (rules.span + 1)
    beta = 2.0 / (rules.divergence_span + 1)
    diverge = _diverges(metric, rules.divergence_metrics)
    # The state and the rules in locals for the per-point loop (the processors' hottest), written back at the end.
    n, mean, mad, slow, slow_first, slow_best, slow_n = st.n, st.mean, st.mad, st.slow, st.slow_first, st.slow_best, st.slow_n
    opened = st.open
    warmup, min_step, spike_z, spike_ratio = rules.warmup_points, rules.min_step, rules.spike_z, rules.spike_ratio
    div_min, div_up, div_back = rules.divergence_min_points, 1 + rules.divergence_ratio, 1 + rules.divergence_ratio / 2
    isfinite = math.isfinite
    for step, x, t in zip(steps, values, ts):
        if not isfinite(x):
            if "nonfinite" not in opened:
                opened["nonfinite"] = (alert_id(run_id, metric, "nonfinite", step), step)
                out.append(_alert(project, run_id, metric, "nonfinite", "critical", step, x, mean, mean, t, now_ms,
                                  f"{metric} became {x} at step {step} (last level {mean:.4g})"))
            continue
        if opened and "nonfinite" in opened:
            a = _resolve(st, project, run_id, metric, "nonfinite", step, x, t, now_ms, "finite values again")
            if a:
                out.append(a)
        if n == 0:
            n, mean, mad = 1, x, 0.0
            slow = slow_first = x
            continue
        dev = abs(x - mean)
        sigma = 1.2533 * mad  # E|x - mu| = 0.7979 sigma for a normal distribution
        if (n >= warmup and step >= min_step
                and dev > spike_z * sigma and dev > spike_ratio * max(abs(mean), sigma)):
            if "spike" not in opened:
                opened["spike"] = (alert_id(run_id, metric, "spike", step), step)
                lo, hi = mean - spike_z * sigma, mean + spike_z * sigma
                ratio = x / mean if mean else math.inf
                out.append(_alert(project, run_id, metric, "spike", "warning", step, x, lo, hi, t, now_ms,
                                  f"{metric} = {x:.4g} at step {step} is {ratio:.3g}x its recent level {mean:.4g} "
                                  f"(expected {lo:.4g}..{hi:.4g})"))
            continue  # outliers do not move the baseline
        if opened and "spike" in opened:
            a = _resolve(st, project, run_id, metric, "spike", step, x, t, now_ms, f"back to {x:.4g}")
            if a:
                out.append(a)
        n += 1
        mad += alpha * (dev - mad)
        mean += alpha * (x - mean)
        if diverge:
            slow += beta * (x - slow)
            slow_n += 1
            if slow_n >= div_min // 2 and slow < slow_best:
                slow_best = slow
            trended_down = slow_best < slow_first * 0.9
            limit = slow_best * div_up
            if slow_n >= div_min and trended_down and slow > limit and slow_best > 0:
                if "divergence" not in opened:
                    opened["divergence"] = (alert_id(run_id, metric, "divergence", step), step)
                    out.append(_alert(project, run_id, metric, "divergence", "critical", step, x, 0.0, limit, t, now_ms,
                                      f"{metric} is diverging: trend {slow:.4g} at step {step} is "
                                      f"{slow / slow_best:.2f}x its best {slow_best:.4g}"))
            elif "divergence" in opened and slow < slow_best * div_back:
                a = _resolve(st, project, run_id, metric, "divergence", step, x, t, now_ms, f"trend back to {slow:.4g}")
                if a:
                    out.append(a)
    st.n, st.mean, st.mad, st.slow, st.slow_first, st.slow_best, st.slow_n = n, mean, mad, slow, slow_first, slow_best, slow_n
    return out


@dataclass(slots=True)
class Cadence:
    """A run's usual interval between batches (client time), for stall detection."""
    last_ms: int = 0
    interval_s: float = 0.0
    intervals: int = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return Cadence, (self.last_ms, self.interval_s, self.intervals)

    def update(self, created_ms: int) -> float:
        """Record a batch; returns the gap since the previous one (s)."""
        gap = (created_ms - self.last_ms) / 1000 if self.last_ms else 0.0
        if self.last_ms and created_ms > self.last_ms:
            # A stall must not teach the run that long gaps are usual.
            if self.intervals < 5 or gap < 4 * self.interval_s:
                self.interval_s = gap if self.intervals == 0 else self.interval_s + 0.2 * (gap - self.interval_s)
                self.intervals += 1
        self.last_ms = max(self.last_ms, created_ms)
        return gap

    def stall_after_s(self, rules: Rules) -> float | None:
        if self.intervals < 5:
            return rules.stall_timeout_s
        return min(rules.stall_timeout_s, max(rules.stall_min_s, rules.stall_factor * self.interval_s))


def stall_alert(project: str, run_id: str, cadence: Cadence, limit_s: float, now_ms: int, *,
                silent_s: float | None = None) -> Alert:
    silent = (now_ms - cadence.last_ms) / 1000 if silent_s is None else silent_s
    return Alert(alert_id=alert_id(run_id, "", "stall", cadence.last_ms), project=project, run_id=run_id, kind="stall",
                 severity="warning", expected_high=limit_s, value=silent, event_ms=cadence.last_ms, detected_ms=now_ms,
                 status="open", message=f"run {run_id} sent nothing for {silent:.1f}s (usual interval "
                                        f"{cadence.interval_s:.2f}s, limit {limit_s:.1f}s)")


def stall_resolved(project: str, run_id: str, last_ms: int, gap_s: float, now_ms: int) -> Alert:
    return Alert(alert_id=alert_id(run_id, "", "stall", last_ms), project=project, run_id=run_id, kind="stall",
                 severity="warning", value=gap_s, event_ms=last_ms, detected_ms=now_ms, resolved_ms=now_ms,
                 status="resolved", message=f"run {run_id} sent data again after {gap_s:.1f}s")
