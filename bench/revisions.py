"""One module as the working tree has it and as a git revision had it, loaded side by side in one process, and a
call timed on each in alternation: both figures come from the same minutes of a noisy machine.
(bench/validate_batch.py, bench/split_small.py)"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # a dataclass looks its module up while it is defined
    spec.loader.exec_module(mod)
    return mod


def versions(path: str, against: str) -> dict[str, ModuleType]:
    """``path`` (relative to the repository) from the working tree, and from revision ``against`` when given."""
    stem = Path(path).stem
    out = {"working tree": load(ROOT / path, f"{stem}_now")}
    if against:
        old = Path(tempfile.mkdtemp()) / Path(path).name
        old.write_bytes(subprocess.run(["git", "show", f"{against}:{path}"], cwd=ROOT, check=True,
                                       capture_output=True).stdout)
        out[against] = load(old, f"{stem}_then")
    return out


def alternate(fns: dict[str, Callable[[], Any]], *, calls: int, rounds: int) -> dict[str, float]:
    """µs per call of each function: the median of ``rounds`` rounds of ``calls`` calls, their order swapped every
    round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: round(statistics.median(v), 2) for name, v in times.items()}


def alternate_calls(fns: dict[str, Callable[[], Any]], *, repeat: int) -> dict[str, list[float]]:
    """ms of each of ``repeat`` calls of each function, called in turn, their order swapped every round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeat):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times
