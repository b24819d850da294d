"""The embedded store as the sink opens it (storage.store.open_store)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runstream.storage import store
from runstream.storage.store import may_raise_priority, open_store
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import ConfigError

# Its own process: engine settings apply when a process first opens the engine, and this one has opened it already.
# Inserts enough parts for background merges, then watches the merge threads whose CPU time advances.
BUSY_MERGE_NICES = r"""
import json, os, sys, threading, time
from runstream.ops.stack import isolated_config
from runstream.storage.store import open_store

cfg = isolated_config(sys.argv[1])
cfg.clickhouse.merge_nice = int(sys.argv[2])
client = open_store(cfg)
client.command("CREATE TABLE m (k UInt64, s String) ENGINE = MergeTree ORDER BY k "
               "SETTINGS old_parts_lifetime = 1")
done = threading.Event()

def insert():
    for i in range(40):
        client.command(f"INSERT INTO m SELECT number, toString(rand()) FROM numbers({i * 300_000}, 300_000)")
    done.set()

threading.Thread(target=insert).start()
cpu, nices = {}, []
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (done.is_set() and nices):
    for task in os.listdir("/proc/self/task"):
        try:
            if not open(f"/proc/self/task/{task}/comm").read().startswith("MergeMutate"):
                continue
            fields = open(f"/proc/self/task/{task}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = int(fields[11]) + int(fields[12])
        if used > cpu.get(task, used):
            nices.append(int(fields[16]))
        cpu[task] = used
    time.sleep(0.02)  # the sampling period of the merge threads' nice, not a wait for a signal
print(json.dumps(nices))
"""


def busy_merge_nices(tmp_path: Path, nice: int) -> list[int]:
    out = subprocess.run([sys.executable, "-c", BUSY_MERGE_NICES, str(tmp_path / f"data-{nice}"), str(nice)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # merges under load take ~8 s
@pytest.mark.skipif(not may_raise_priority(), reason="the engine sets a nice only with CAP_SYS_NICE (root here and in CI)")
def test_merges_run_at_the_configured_nice(tmp_path: Path) -> None:
    # A sample can land just after a merge task ended and the engine put its thread back to 0: most are at 10.
    niced = busy_merge_nices(tmp_path, 10)
    assert niced, "no merge thread was seen working"
    assert niced.count(10) > 2 * niced.count(0) and set(niced) <= {0, 10}, niced
    plain = busy_merge_nices(tmp_path, 0)
    assert plain and set(plain) == {0}, plain


def test_merge_nice_must_lower_priority() -> None:
    cfg = RunstreamConfig()
    cfg.clickhouse.merge_nice = -5
    with pytest.raises(ConfigError, match=r"clickhouse.merge_nice: -5 is not 0 \(off\) to 19"):
        cfg.validate()


def test_without_cap_sys_nice_the_sink_says_merges_run_at_normal_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    opened: list[dict[str, object]] = []
    monkeypatch.setattr(store, "open_embedded", lambda path, **kw: opened.append(kw))
    monkeypatch.setattr(store, "may_raise_priority", lambda: False)
    cfg = RunstreamConfig()
    cfg.data_dir = str(tmp_path)
    with caplog.at_level("WARNING", logger="runstream.storage"):
        open_store(cfg)
    assert "clickhouse.merge_nice 10: the engine sets its merge threads' priority only with CAP_SYS_NICE" in caplog.text
    assert opened == [{"chdb_options": {"os_threads_nice_value_merge_mutate": 10}}]
