"""System metrics of a run's process and machine, sampled on a background thread and logged under ``sys/``:
CPU, memory, disk and network I/O (psutil), and per GPU utilisation, memory, power and temperature (NVML, when
nvidia-ml-py is installed and a GPU answers). The training loop pays nothing: the thread only appends a record to
the run's buffer every interval, as log() does."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from runstream.wire.names import SYSTEM_PREFIX

log = logging.getLogger("runstream")

PREFIX = SYSTEM_PREFIX
MB = 1024 * 1024


class _Gpus:
    """NVML, if present: one handle per device. Any NVML failure turns GPU sampling off, never the run."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.nvml = pynvml
        except Exception:  # no package, no driver, no device: no GPU metrics
            self.handles = []

    def sample(self, out: dict[str, float]) -> None:
        nv = self.nvml
        for i, h in enumerate(self.handles):
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out[f"{PREFIX}gpu{i}/util_percent"] = float(util.gpu)
                out[f"{PREFIX}gpu{i}/mem_used_mb"] = mem.used / MB
                out[f"{PREFIX}gpu{i}/mem_percent"] = 100.0 * mem.used / max(1, mem.total)
                out[f"{PREFIX}gpu{i}/power_w"] = nv.nvmlDeviceGetPowerUsage(h) / 1000.0
                out[f"{PREFIX}gpu{i}/temp_c"] = float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
            except Exception as exc:
                log.warning("runstream: GPU %d metrics stopped: %s", i, exc)
                self.handles = []
                return


class SystemSampler(threading.Thread):
    """Every ``interval_s``, hands ``emit`` a dict of ``sys/...`` values until ``stop()``."""

    def __init__(self, emit: Callable[[dict[str, float]], None], interval_s: float) -> None:
        super().__init__(name="runstream-system", daemon=True)
        self.psutil = psutil
        self.emit = emit
        self.interval_s = interval_s
        self._stop = threading.Event()
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # the first call only sets the baseline
        psutil.cpu_percent(None)
        self.gpus = _Gpus()
        self._last = (time.monotonic(), self._io())
        self.samples = 0

    def _io(self) -> tuple[float, float, float, float]:
        disk = self.psutil.disk_io_counters()
        net = self.psutil.net_io_counters()
        return (disk.read_bytes if disk else 0.0, disk.write_bytes if disk else 0.0,
                net.bytes_sent if net else 0.0, net.bytes_recv if net else 0.0)

    def sample(self) -> dict[str, float]:
        ps = self.psutil
        out: dict[str, float] = {
            f"{PREFIX}cpu_percent": ps.cpu_percent(None),             # the machine, all cores
            f"{PREFIX}proc_cpu_percent": self.proc.cpu_percent(None),  # this process (100 = one core)
            f"{PREFIX}mem_percent": ps.virtual_memory().percent,
            f"{PREFIX}proc_rss_mb": self.proc.memory_info().rss / MB,
            f"{PREFIX}proc_threads": float(self.proc.num_threads()),
        }
        now, io = time.monotonic(), self._io()
        then, last = self._last
        dt = max(now - then, 1e-3)
        for name, a, b in zip(("disk_read", "disk_write", "net_sent", "net_recv"), last, io):
            out[f"{PREFIX}{name}_mb_s"] = max(0.0, b - a) / MB / dt
        self._last = (now, io)
        self.gpus.sample(out)
        return out

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.emit(self.sample())
                self.samples += 1
            except Exception as exc:  # never the training loop's problem
                log.warning("runstream: system metrics stopped: %s", exc)
                return

    def stop(self) -> None:
        self._stop.set()


def start(emit: Callable[[dict[str, float]], None], interval_s: float) -> SystemSampler | None:
    """A running sampler, or None when ``interval_s`` is 0."""
    if interval_s <= 0:
        return None
    sampler = SystemSampler(emit, interval_s)
    sampler.start()
    return sampler
