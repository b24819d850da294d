"""The CPU accounting every bench reports (bench/cpu.py): a process that burns a known share of a core for a known
time is measured as such, per role, per million points and per request, and a process that exits keeps its CPU. A
role's peak memory counts from the start of the measured load, not from a warm-up before it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from cpu import CLIENTS, CpuMeter, calibration, thread_seconds, with_descendants
from fleetload import peak_rss_mib, reset_peak_rss

from tests.helpers import wait_until

# Processes to measure: one that burns a known CPU time and says how much it used, then idles (blocked reading its
# stdin, which the test holds open until it is done with it), one that only idles.
BURN_ONLY = ("import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
             "print(time.process_time(), flush=True)\n")
IDLE = "import sys; sys.stdin.read()"
BURN = BURN_ONLY + IDLE


def asleep(pid: int) -> bool:
    """The process is in an interruptible sleep (state S in /proc/<pid>/stat)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"


def test_a_busy_and_an_idle_role_are_told_apart_and_counted_per_point() -> None:
    busy = subprocess.Popen([sys.executable, "-c", BURN.format(s=1.0)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    idle = subprocess.Popen([sys.executable, "-c", IDLE], stdin=subprocess.PIPE)
    try:
        meter = CpuMeter({"busy": [busy.pid], "idle": [idle.pid]}, interval_s=0.25).start()
        # The busy one burns 1 s of CPU, says how much it used in all, then sleeps: the window closes once it is asleep.
        assert busy.stdout is not None
        used = float(busy.stdout.readline())
        wait_until(lambda: asleep(busy.pid), 30, "the busy process to go to sleep")
        meter.stop()
        secs = meter.seconds()
        # All of it but what it used before the meter's first read (its interpreter's start, at most).
        assert used - 0.3 <= secs["busy"] <= used + 0.05, (secs, used)
        assert secs["idle"] < 0.2, secs
        meter.set_total(CLIENTS, 4.0)  # clients report their own CPU, and the stack's figure leaves them out
        r = meter.report(points=2_000_000, requests=1000)
        assert r["core_s_per_m_points"]["busy"] == pytest.approx(secs["busy"] / 2, abs=0.01)
        assert r["core_s_per_m_points"]["stack"] == pytest.approx((secs["busy"] + secs["idle"]) / 2, abs=0.01)
        assert r["core_s_per_m_points"][CLIENTS] == 2.0
        assert r["core_us_per_request"]["stack"] == pytest.approx((secs["busy"] + secs["idle"]) * 1000, abs=10)
        assert r["cores_peak_1s"]["busy"] > 0.1  # sampled as it ran
    finally:
        for p in (busy, idle):
            p.kill()
            p.communicate(timeout=10)  # reaps it and closes its pipe


def test_a_process_that_exits_keeps_its_last_sample_and_threads_and_children_are_found(tmp_path: Path) -> None:
    short = subprocess.Popen([sys.executable, "-c", BURN_ONLY.format(s=0.6)], stdout=subprocess.PIPE, text=True)
    meter = CpuMeter({"short": [short.pid]}, interval_s=0.1).start()
    out, _ = short.communicate(timeout=10)
    meter.stop()
    # Gone before the meter stopped: what it used up to its last sample still counts (one interval, 0.1 s, may be
    # missing at the end; its interpreter's start, before the meter's first read, at the beginning).
    used = float(out)
    assert used - 0.45 <= meter.seconds()["short"] <= used + 0.05, (meter.seconds(), used)
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {IDLE!r}])"],
                              stdin=subprocess.PIPE)  # its child idles reading the same stdin
    try:
        wait_until(lambda: len(with_descendants(parent.pid)) == 2, 10, "the parent's child to start")
    finally:
        for pid in with_descendants(parent.pid)[1:]:
            subprocess.run(["kill", str(pid)])
        parent.communicate(timeout=10)  # reaps it and closes its stdin
    assert thread_seconds(os.getpid())  # this process's threads, by name
    calib = calibration()
    assert 1 < calib["python_loop_ns"] < 1000 and calib["numpy_sort_sum_ms"] > 0


def test_a_peak_before_the_reset_is_not_counted() -> None:
    # 300 MiB touched and freed, then idle: its peak is 300 MiB above what it holds now until the peak is reset.
    proc = subprocess.Popen([sys.executable, "-c", "b = bytearray(300 << 20); del b; print('freed', flush=True)\n" + IDLE],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "freed"
        assert peak_rss_mib(proc.pid) > 300
        reset_peak_rss(proc.pid)
        assert peak_rss_mib(proc.pid) < 100
    finally:
        proc.communicate(timeout=10)
