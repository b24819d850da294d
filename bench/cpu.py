"""CPU per point, the figure every bench reports beside throughput: each role's CPU (/proc, every thread of the
process) over the measured window, as core-seconds per million stored points, core-microseconds per request, and
cores (mean and the busiest second); the clients that make the load are counted apart from the stack. A calibration
taken in the same run (a fixed Python loop, a fixed numpy reduction) lets figures from different machines, or from
one machine on different days, be compared: divide by it, or compare versions in one session."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
CLIENTS = "clients"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process (all its threads) has used so far; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU per thread name of a process (threads of one name summed): where a role spends it."""
    out: dict[str, float] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
            name = text[text.index("(") + 1:text.rindex(")")].rstrip("0123456789")
            fields = text.rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return out


def with_descendants(pid: int) -> list[int]:
    """A process and every process under it (a server's worker processes), as /proc lists them now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def calibration() -> dict[str, float]:
    """How fast this machine runs the kind of code the roles run, now (best of three, so a busy moment counts less)."""
    import numpy as np

    def loop() -> float:
        t, x = time.perf_counter(), 0
        for i in range(2_000_000):
            x += i
        return (time.perf_counter() - t) / 2_000_000 * 1e9

    a = np.random.default_rng(0).random(4_000_000)

    def reduce() -> float:
        t = time.perf_counter()
        float(np.sort(a[:1_000_000]).sum() + a.sum())
        return (time.perf_counter() - t) * 1e3

    return {"python_loop_ns": round(min(loop() for _ in range(3)), 2),
            "numpy_sort_sum_ms": round(min(reduce() for _ in range(3)), 2)}


class CpuMeter:
    """Samples the CPU of each role's processes once a second from start() to stop(). A process that exits keeps its
    last sample (a client that reports its own total through ``set_total`` is counted exactly)."""

    def __init__(self, roles: dict[str, list[int]], interval_s: float = 1.0) -> None:
        self._pids = {role: list(pids) for role, pids in roles.items()}
        self._interval = interval_s
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._totals: dict[str, float] = {}
        self._per_second: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)
        self._threads0: dict[int, dict[str, float]] = {}
        self._threads1: dict[int, dict[str, float]] = {}
        self._lock = threading.Lock()
        self.wall_s = 0.0
        self._t0 = 0.0

    def add(self, role: str, pid: int) -> None:
        """A process that joins after start() (a client, a restarted role), counted from now."""
        with self._lock:
            self._pids.setdefault(role, []).append(pid)
            self._read(pid)

    def set_total(self, role: str, seconds: float) -> None:
        """A role's CPU as its processes measured it themselves (clients: getrusage at their end)."""
        self._totals[role] = seconds

    def start(self) -> CpuMeter:
        self._t0 = time.monotonic()
        with self._lock:
            for pids in self._pids.values():
                for pid in pids:
                    self._read(pid)
                    self._threads0[pid] = thread_seconds(pid)
        self._thread.start()
        return self

    def _read(self, pid: int) -> None:
        now = cpu_seconds(pid)
        if now is not None:
            self._first.setdefault(pid, now)
            self._last[pid] = now

    def _role_s(self, role: str) -> float:
        return sum(self._last.get(p, 0.0) - self._first.get(p, 0.0) for p in self._pids.get(role, []))

    def _sample_loop(self) -> None:
        prev = {role: 0.0 for role in self._pids}
        while not self._stop.wait(self._interval):
            with self._lock:
                for pids in self._pids.values():
                    for pid in pids:
                        self._read(pid)
                for role in self._pids:
                    used = self._role_s(role)
                    self._per_second.setdefault(role, []).append((used - prev.get(role, 0.0)) / self._interval)
                    prev[role] = used

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for pids in self._pids.values():
                for pid in pids:
                    self._read(pid)
                    if pid in self._threads0:
                        self._threads1[pid] = thread_seconds(pid)
        self.wall_s = time.monotonic() - self._t0

    def seconds(self) -> dict[str, float]:
        """CPU seconds per role over the window (clients: their own total when they reported one)."""
        out = {role: self._role_s(role) for role in self._pids}
        out.update(self._totals)
        return out

    def report(self, points: int, requests: int | None = None) -> dict[str, Any]:
        """The figures: core-seconds per million points per role and for the stack (every role but the clients),
        core-µs per request (requests: the batches ingest acknowledged), mean and peak cores per role."""
        secs = self.seconds()
        stack = sum(s for role, s in secs.items() if role != CLIENTS)
        per_m = {role: round(s / points * 1e6, 3) if points else None for role, s in secs.items()}
        per_m["stack"] = round(stack / points * 1e6, 3) if points else None
        out: dict[str, Any] = {
            "core_s_per_m_points": per_m,
            "cpu_s": {role: round(s, 2) for role, s in secs.items()},
            "cores_mean": {role: round(s / self.wall_s, 3) for role, s in secs.items()} if self.wall_s else {},
            "cores_peak_1s": {role: round(max(xs), 2) for role, xs in self._per_second.items() if xs},
            "window_s": round(self.wall_s, 1), "points": points,
        }
        # The stack's busiest threads by name (threads alive at both ends of the window), per million points.
        by_thread: dict[str, float] = {}
        for role, pids in self._pids.items():
            for pid in pids:
                if pid in self._threads1:
                    for name, sec in self._threads1[pid].items():
                        key = f"{role}/{name}"
                        by_thread[key] = by_thread.get(key, 0.0) + sec - self._threads0[pid].get(name, 0.0)
        top = sorted(by_thread.items(), key=lambda kv: -kv[1])[:12]
        out["threads_core_s_per_m_points"] = {k: round(v / points * 1e6, 3) for k, v in top if points and v > 0}
        if requests:
            out["requests"] = requests
            out["core_us_per_request"] = {role: round(secs[role] / requests * 1e6, 1) for role in ("ingest",) if role in secs}
            out["core_us_per_request"]["stack"] = round(stack / requests * 1e6, 1)
        return out
