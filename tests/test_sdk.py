"""The SDK against an in-memory Transport: batching, ordering, backoff, spooling, finish accounting; and
client-side validation against the real stack.

The transport is the seam; the sender, spool and Run are the real code. Delivery
to a real ingest is covered in test_spine.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import runstream
from runstream.sdk import send_spool_file, spool
from runstream.sdk.run import Run, Sender, SenderConfig
from runstream.sdk.transport import GrpcTransport, SendError
from runstream.v1.ingest_pb2 import Batch
from tests.conftest import Stack
from tests.helpers import wait_until


class MockTransport:
    """Records delivered batches; ``handler`` may raise SendError to simulate ingest failures."""

    def __init__(self, handler: Callable[[Sequence[Batch]], None] | None = None) -> None:
        self.handler = handler
        self.batches: list[Batch] = []
        self.calls = 0
        self.lock = threading.Lock()

    def send(self, batches: Sequence[Batch]) -> None:
        with self.lock:
            self.calls += 1
        if self.handler:
            self.handler(batches)
        with self.lock:
            self.batches.extend(Batch.FromString(b.SerializeToString()) for b in batches)

    def close(self) -> None:
        pass

    def points(self) -> list[tuple[str, int, float]]:
        out = []
        for b in self.batches:
            if b.HasField("metrics"):
                m = b.metrics
                out += [(m.names[i], s, v) for i, s, v in zip(m.name_index, m.steps, m.values)]
        return out


def test_batches_are_columnar_ordered_and_complete(tmp_path: Path) -> None:
    t = MockTransport()
    run = runstream.init("p", "r", config={"lr": 0.1}, tags=["a"], transport=t, max_batch_points=1000,
                         spool_dir=str(tmp_path))
    for step in range(2500):
        run.log({"loss": step * 0.5, "acc": -step}, step=step)
    run.log_params({"bs": 32})
    run.set_tags({"team": "vision"})
    assert run.finish(timeout=10)
    kinds = [b.WhichOneof("body") for b in t.batches]
    assert kinds[0] == "run_start" and kinds[-1] == "run_finish"
    assert kinds.count("params") == 1 and kinds.count("tags") == 1
    assert [b.seq for b in t.batches] == list(range(1, len(t.batches) + 1))
    assert len({b.batch_id for b in t.batches}) == len(t.batches)
    assert all(len(b.metrics.values) <= 1000 for b in t.batches if b.HasField("metrics"))
    pts = t.points()
    assert len(pts) == 5000
    assert sorted(pts) == sorted([("loss", s, s * 0.5) for s in range(2500)] + [("acc", s, float(-s)) for s in range(2500)])
    fin = t.batches[-1].run_finish
    assert fin.points_acked == 5000 and fin.batches_acked == len(t.batches) - 1
    assert t.batches[0].run_start.config["lr"] == "0.1"


def test_a_process_with_many_runs_sends_a_flush_in_one_exchange(tmp_path: Path) -> None:
    # Each exchange waits for ingest's ack (Kafka's): 300 runs' batches in 64-batch exchanges took 5 round trips
    # per flush, and detection latency grew with the runs a process hosts.
    t = MockTransport()
    sender = Sender(t, SenderConfig(flush_interval_s=3600, spool_dir=str(tmp_path)))
    for i in range(300):
        run = Run(sender, project="p", name=f"r{i}", run_id=f"r{i}")
        sender.add(run)
        with sender._lock:
            sender.pending.append(Batch(batch_id=uuid.uuid4().hex, project="p", run_id=run.id, created_ms=1,
                                        seq=run._next_seq()))
        run.log({"loss": 1.0}, step=0)
    sender.start()
    sender.wake()
    wait_until(lambda: len(t.batches) == 600, 10, "the 300 runs' start and metric batches")
    assert t.calls == 1
    sender.close()


def test_auto_step_and_numpy_values(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    t = MockTransport()
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path))
    run.log({"x": np.float32(1.5)})
    run.log({"x": 2, "bad": "text"})
    run.finish(timeout=10)
    assert sorted(t.points()) == [("x", 0, 1.5), ("x", 1, 2.0)]


def test_backs_off_while_unavailable_then_delivers(tmp_path: Path) -> None:
    state = {"fail": 5}

    def flaky(batches: Sequence[Batch]) -> None:
        if state["fail"] > 0:
            state["fail"] -= 1
            raise SendError("UNAVAILABLE", "down", accepted=0, retryable=True)

    t = MockTransport(flaky)
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path), backoff_max_s=0.2)
    start = time.perf_counter()
    for i in range(1000):
        run.log({"v": i})
    log_time = time.perf_counter() - start
    assert run.finish(timeout=20)
    assert len(t.points()) == 1000
    assert t.calls >= 6
    assert log_time < 1.0  # log() never waited for the failing transport


def test_spools_when_pending_bound_is_hit_and_resends(tmp_path: Path) -> None:
    down = threading.Event()
    down.set()

    def gate(batches: Sequence[Batch]) -> None:
        if down.is_set():
            raise SendError("UNAVAILABLE", "down", accepted=0, retryable=True)

    t = MockTransport(gate)
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path), max_pending_points=2000, max_batch_points=500,
                         backoff_max_s=0.1)
    for i in range(10_000):
        run.log({"v": float(i)}, step=i)
    deadline = time.monotonic() + 10
    while not spool.files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spool.files(tmp_path), "nothing was spooled although pending exceeded its bound"
    assert run._sender.pending_points <= 2000 + 500
    down.clear()  # ingest is back: the sender resends its own spool files
    assert run.finish(timeout=20)
    deadline = time.monotonic() + 10
    while spool.files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not spool.files(tmp_path)
    assert sorted(s for _, s, _ in t.points()) == list(range(10_000))
    # Resent points count as acknowledged, and the finish reports every one of them.
    assert run.stats.acked_points == 10_000
    finishes = [b for b in t.batches if b.HasField("run_finish")]
    assert [f.run_finish.points_acked for f in finishes] == [10_000]


def test_a_partly_sent_spool_file_keeps_only_the_rest(tmp_path: Path) -> None:
    batches = [Batch(batch_id=f"b{i:07d}", project="p", run_id="r", seq=i + 1, created_ms=1) for i in range(10)]
    for b in batches:
        b.metrics.names.append("x")
        b.metrics.name_index.append(0)
        b.metrics.steps.append(b.seq)
        b.metrics.timestamps_ms.append(1)
        b.metrics.values.append(1.0)
    path = spool.write(tmp_path, batches)
    calls = []

    def flaky(chunk: Sequence[Batch]) -> None:
        calls.append(len(chunk))
        if len(calls) == 2:
            raise SendError("UNAVAILABLE", "down", accepted=1, retryable=True)

    acked: list[str] = []
    with pytest.raises(SendError):
        send_spool_file(MockTransport(flaky), path, flight=4, acked=lambda bs: acked.extend(b.batch_id for b in bs))
    assert acked == [f"b{i:07d}" for i in range(5)]  # the first group, and the one accepted of the second
    assert [b.batch_id for b in spool.read(path)] == [f"b{i:07d}" for i in range(5, 10)]
    send_spool_file(MockTransport(), path, flight=4, acked=lambda bs: acked.extend(b.batch_id for b in bs))
    assert acked == [f"b{i:07d}" for i in range(10)] and not path.exists()


def test_close_spools_what_it_cannot_deliver_and_sync_resends(tmp_path: Path) -> None:
    def dead(batches: Sequence[Batch]) -> None:
        raise SendError("UNAVAILABLE", "down", accepted=0, retryable=True)

    run = runstream.init("p", transport=MockTransport(dead), spool_dir=str(tmp_path), backoff_max_s=0.1)
    for i in range(300):
        run.log({"v": i})
    assert not run.finish(timeout=0.5)
    run._sender.close(timeout=2)
    files = spool.files(tmp_path)
    assert files
    later = MockTransport()
    assert sum(send_spool_file(later, f) for f in files) >= 3
    assert not spool.files(tmp_path)
    assert len(later.points()) == 300
    assert later.batches[-1].HasField("run_finish")


def test_invalid_batch_is_dropped_others_delivered(tmp_path: Path) -> None:
    def picky(batches: Sequence[Batch]) -> None:
        for i, b in enumerate(batches):
            if b.HasField("metrics") and "bad name!" in b.metrics.names:
                raise SendError("INVALID_ARGUMENT", f"batches[{i}].metrics.names", accepted=i, retryable=False)

    t = MockTransport(picky)
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path))
    run.log({"ok": 1.0})
    assert run.finish(timeout=10)  # nothing of this run is refused
    run2 = runstream.init("p", transport=t, spool_dir=str(tmp_path))
    run2.log({"bad name!": 1.0})
    time.sleep(0.5)
    run2.log({"fine": 2.0})
    assert run2.finish(timeout=10)
    assert run2._sender.dropped_batches == 1
    assert ("fine", 1, 2.0) in t.points()


def test_log_is_bounded_when_sender_cannot_keep_up(tmp_path: Path) -> None:
    t = MockTransport()
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path), max_buffered_records=100, flush_interval_s=60)
    for i in range(1000):
        run.log({"v": i})
        assert len(run._records) <= 101
    assert run.finish(timeout=10)
    assert len(t.points()) == 1000


def test_context_manager_marks_failure(tmp_path: Path) -> None:
    t = MockTransport()
    with pytest.raises(RuntimeError):
        with runstream.init("p", transport=t, spool_dir=str(tmp_path)) as run:
            run.log({"v": 1})
            raise RuntimeError("boom")
    assert t.batches[-1].run_finish.status == 2  # RUN_STATUS_FAILED


def test_bad_names_steps_and_values_are_dropped_at_log_and_the_rest_is_stored(stack: Stack, token: str, tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """What ingest would refuse never reaches it: a 300-character name, an empty one, a non-string key, a string
    value and a step beyond int64 are dropped here (one warning per name, counted by reason), and every good point
    beside them is stored, a negative step's too (MLflow keeps them); the run finishes with its acked count equal to
    what was stored."""
    long_name = "x" * 300
    run = runstream.init("validate", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path))
    for step in range(100):
        run.log({"loss": 1.0 / (step + 1), long_name: 1.0, "": 2.0, 7: 3.0, "acc": "high" if step % 10 == 0 else 0.5},
                step=step)
    run.log({"loss": 9.0}, step=-1)
    run.log({"loss": 8.0}, step=2**63)
    assert run.finish(timeout=30)
    summary = run.summary()
    assert summary["dropped"] == {"name too long": 100, "name empty": 100, "name not a string": 100,
                                  "not a number": 10, "step not an int64": 1}
    assert summary["dropped_points"] == 311 and summary["acked_points"] == 191
    assert stack.wait_points(191, where=f"run_id = '{run.id}'") == 191
    assert stack.query("SELECT value FROM {db}.metrics WHERE run_id = {r:String} AND step = -1", r=run.id) == [(9.0,)]
    assert stack.count_points(f"run_id = '{run.id}' AND metric = 'acc'") == 90
    warnings = [r.getMessage() for r in caplog.records if "drops points of" in r.getMessage()]
    assert len(warnings) == 5, warnings  # once per name / kind, not once per point

    strict = runstream.init("validate", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path),
                            strict=True)
    with pytest.raises(ValueError, match="is 300 characters; the limit is 250"):
        strict.log({long_name: 1.0})
    with pytest.raises(ValueError, match=r"not an integer step in -2\*\*63..2\*\*63-1"):
        strict.log({"loss": 1.0}, step=2.5)
    with pytest.raises(ValueError):
        strict.log({"loss": "high"})
    strict.log({"loss": 1.0})
    assert strict.finish(timeout=30) and strict.summary()["acked_points"] == 1


def test_system_metrics_are_sampled_into_sys_and_the_off_switch_holds(stack: Stack, token: str, tmp_path: Path) -> None:
    def init(**kw: object) -> runstream.Run:
        return runstream.init("sysmetrics", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path), **kw)

    on = init(system_interval_s=0.2)
    off = init(system_interval_s=0)
    for step in range(15):
        on.log({"loss": 1.0}, step=step)
        off.log({"loss": 1.0}, step=step)
        time.sleep(0.1)
    assert on.finish(timeout=30) and off.finish(timeout=30)
    assert stack.wait_points(15, where=f"run_id = '{off.id}'") == 15
    names = {"sys/cpu_percent", "sys/proc_cpu_percent", "sys/mem_percent", "sys/proc_rss_mb", "sys/proc_threads",
             "sys/disk_read_mb_s", "sys/disk_write_mb_s", "sys/net_sent_mb_s", "sys/net_recv_mb_s"}
    rows = wait_until(lambda: (r := stack.query(
        "SELECT metric, count(), min(value), max(value), max(step) FROM {db}.metrics WHERE run_id = {r:String} "
        "AND startsWith(metric, 'sys/') GROUP BY metric", r=on.id)) and {m for m, *_ in r} >= names and r, 30,
        "the sampled system metrics")
    by = {m: (n, lo, hi, top) for m, n, lo, hi, top in rows}  # type: ignore[union-attr]
    assert by["sys/proc_rss_mb"][0] >= 3 and by["sys/proc_rss_mb"][1] > 10  # this process holds more than 10 MiB
    assert 1 <= by["sys/proc_threads"][1] and 0 <= by["sys/cpu_percent"][1] <= by["sys/cpu_percent"][2] <= 100
    assert by["sys/proc_rss_mb"][3] <= 14  # logged at the training step, which it never moves
    assert stack.wait_points(15, where=f"run_id = '{on.id}' AND metric = 'loss'") == 15
    assert stack.count_points(f"run_id = '{off.id}' AND startsWith(metric, 'sys/')") == 0


@pytest.mark.slow  # kill -9 and a restart
def test_durable_logging_survives_kill_9_and_sync_delivers(stack: Stack, token: str, tmp_path: Path) -> None:
    """durable=True: batches are on disk before they are sent. A process killed while ingest is unreachable
    leaves them in the spool dir and `runstream sync` delivers every point; without it they are gone."""
    import os
    import signal
    import subprocess
    import sys

    from runstream.ops.broker import free_port
    script = """
import os, signal, sys, time, runstream
run = runstream.init("durable", name=sys.argv[2], url=f"127.0.0.1:{sys.argv[3]}", token="rs_x_y", spool_dir=sys.argv[1],
                     durable=sys.argv[2] == "durable", backoff_max_s=30, system_interval_s=0)
for i in range(1000):
    run.log({"x": float(i)}, step=i)
time.sleep(1.5)  # past the flush interval: the points are batches now, unacknowledged (ingest is unreachable)
print(run.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    dead_port = str(free_port())
    ids = {}
    for mode in ("durable", "plain"):
        spool_dir = tmp_path / mode
        res = subprocess.run([sys.executable, "-c", script, str(spool_dir), mode, dead_port], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "RUNSTREAM_DATA_DIR": str(tmp_path / "home")})
        assert res.returncode == -signal.SIGKILL, res.stderr
        ids[mode] = res.stdout.strip()
    assert spool.files(tmp_path / "plain", wal=True) == []  # nothing of the plain run reached the disk
    assert spool.files(tmp_path / "durable", wal=True)
    sync = subprocess.run([sys.executable, "-m", "runstream", "sync", "--spool-dir", str(tmp_path / "durable"),
                           "--url", stack.ingest_addr], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RUNSTREAM_TOKEN": token, "RUNSTREAM_DATA_DIR": str(tmp_path / "home")})
    assert sync.returncode == 0, sync.stderr
    assert stack.wait_points(1000, where=f"run_id = '{ids['durable']}'") == 1000
    assert spool.files(tmp_path / "durable", wal=True) == []


def test_durable_write_ahead_files_go_once_acknowledged(tmp_path: Path) -> None:
    seen: list[int] = []

    def watch(batches: Sequence[Batch]) -> None:  # when a batch is sent, its write-ahead copy is on disk
        seen.append(len(spool.files(tmp_path, wal=True)))

    t = MockTransport(watch)
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path), durable=True, system_interval_s=0)
    for i in range(5000):
        run.log({"v": float(i)}, step=i)
    assert run.finish(timeout=20)
    assert seen and min(seen) >= 1
    assert spool.files(tmp_path, wal=True) == [] and len(t.points()) == 5000


def test_a_refused_token_says_to_fix_it_and_not_that_data_is_resent(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    sends = []

    def refuse(batches: Sequence[Batch]) -> None:
        sends.append(len(batches))
        raise SendError("UNAUTHENTICATED", "unknown token", accepted=0, retryable=False)
    run = runstream.init("p", transport=MockTransport(refuse), spool_dir=str(tmp_path), flush_interval_s=0.01,
                         backoff_max_s=0.2)
    run.log({"x": 1.0})
    run.finish(timeout=2)
    wait_until(lambda: list(tmp_path.glob("*.spool")), 10, "the refused batches spooled")
    text = caplog.text
    assert "Fix the token, then run `runstream sync`" in text and "resent automatically" not in text
    # The sender retries the spool now and then (the token may be fixed on the server), quietly: said once.
    tried = len(sends)
    wait_until(lambda: len(sends) >= tried + 3, 20, "three more tries of the spooled data")
    run._sender.close(timeout=2)
    assert caplog.text.count("ingest refused spooled data") == 1


def test_durable_points_reach_disk_while_the_sender_waits_on_a_stalled_ingest(tmp_path: Path) -> None:
    """The sender blocks in send() for a stalled ingest: what is logged meanwhile is still on disk within about a
    flush interval (a kill -9 then loses at most that), and once ingest answers it is delivered once."""
    stalled, release = threading.Event(), threading.Event()

    def stall(batches: Sequence[Batch]) -> None:
        stalled.set()
        release.wait(30)
    t = MockTransport(stall)
    run = runstream.init("p", transport=t, spool_dir=str(tmp_path), durable=True, system_interval_s=0,
                         flush_interval_s=0.1)
    run.log({"v": 0.0}, step=0)
    assert stalled.wait(10)
    for i in range(1, 2001):
        run.log({"v": float(i)}, step=i)

    def on_disk() -> int:
        steps = set()
        for path in spool.files(tmp_path, wal=True):
            for b in spool.read(path):
                steps.update(b.metrics.steps)
        return len(steps)
    wait_until(lambda: on_disk() == 2001, 2, "every logged point written ahead while the sender waits")
    release.set()
    assert run.finish(timeout=20)
    assert sorted(s for _, s, _ in t.points()) == list(range(2001))
    assert spool.files(tmp_path, wal=True) == []


@pytest.mark.slow
@pytest.mark.parametrize("ingest", ["healthy", "stalled"])
def test_durable_kill_9_while_logging_loses_at_most_a_flush_interval(stack: Stack, token: str, tmp_path: Path,
                                                                     ingest: str) -> None:
    """A job logging 2,000 points/s with durable=True is killed mid-loop, with ingest answering, or after ingest
    stopped answering for 2 s (its connection open, as a SIGSTOPped ingest): after `runstream sync` every point
    but at most one flush interval's (0.5 s) is stored, and none twice."""
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import StallingProxy, wait_sink_drained
    script = """
import sys, time, runstream
run = runstream.init("durable-kill", url=sys.argv[2], token=sys.argv[3], spool_dir=sys.argv[1], durable=True,
                     flush_interval_s=0.5, backoff_max_s=1, system_interval_s=0)
print(run.id, flush=True)
i, t0 = 0, time.monotonic()
while True:
    run.log({"x": float(i)}, step=i)
    i += 1
    if i % 100 == 0:
        print(i, flush=True)  # points logged so far
        ahead = i / 2000 - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
"""
    proxy = StallingProxy(stack.ingest_addr)
    spool_dir = tmp_path / "spool"
    env = {**os.environ, "RUNSTREAM_DATA_DIR": str(tmp_path / "home")}
    err = (tmp_path / "child.err").open("w")
    child = subprocess.Popen([sys.executable, "-c", script, str(spool_dir), proxy.addr, token], stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env)
    assert child.stdout is not None
    run_id = child.stdout.readline().strip()
    logged = [0]

    def read() -> None:
        for line in child.stdout:  # type: ignore[union-attr]
            logged[0] = int(line)
    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: logged[0] >= 4000 and proxy.forwarded > 0, 30, "2 s of logging, delivered")
        if ingest == "stalled":
            proxy.stalled.set()
        mark = logged[0]
        wait_until(lambda: logged[0] >= mark + 4000, 30, "2 more seconds of logging")
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        err.close()
        proxy.close()
    last = logged[0]  # at least this many were logged (printed every 100)
    sync = subprocess.run([sys.executable, "-m", "runstream", "sync", "--spool-dir", str(spool_dir), "--url",
                           stack.ingest_addr], capture_output=True, text=True, timeout=60,
                          env={**env, "RUNSTREAM_TOKEN": token})
    assert sync.returncode == 0, sync.stderr
    wait_sink_drained(stack.config)
    (stored, distinct, top), = stack.query("SELECT count(), uniqExact(step), max(step) FROM {db}.metrics "
                                           "WHERE run_id = {r:String}", r=run_id)
    assert stored == distinct, "a point stored twice"
    assert top < last + 100
    assert last - stored <= 1000 + 200, (ingest, last, stored)  # one flush interval at 2,000/s, plus the pacing's slack


def test_finished_runs_are_not_kept_for_the_exit_handler(tmp_path: Path) -> None:
    from runstream.sdk import run as run_module
    runs = [runstream.init("p", transport=MockTransport(lambda batches: None), spool_dir=str(tmp_path),
                           system_interval_s=0) for _ in range(3)]
    assert all(r in run_module._active for r in runs)
    assert runs[0].finish(timeout=10) and runs[2].finish(timeout=10)
    assert runs[1] in run_module._active and runs[0] not in run_module._active and runs[2] not in run_module._active
    runs[1].finish(timeout=10)
    assert runs[1] not in run_module._active


def test_reading_git_state_never_writes_the_checkouts_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """init() reads the commit and whether the tree is dirty; it must not refresh (write) the index, which holds
    index.lock and makes a user's `git commit` in the same checkout fail."""
    import os
    import subprocess

    from runstream.sdk.run import _git

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-qm", "first")
    stat = (tmp_path / "train.py").stat()
    os.utime(tmp_path / "train.py", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # stale stat data, same bytes
    index = tmp_path / ".git" / "index"
    before = index.stat().st_mtime_ns, index.read_bytes()
    monkeypatch.chdir(tmp_path)
    info = _git()
    assert info.commit == git("rev-parse", "HEAD") and info.branch and not info.dirty
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before


def test_git_state_is_what_git_says_in_every_state_of_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's git fields against git's own answers: outside a checkout, before the first commit, clean on a branch
    with an origin, dirty (the diff's sha256), and on a detached HEAD; two git processes for a clean checkout."""
    import hashlib
    import subprocess

    from runstream.sdk import run as run_module

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    assert run_module._git() == run_module.GitInfo()  # not a checkout
    git("init", "-q", "-b", "main")
    assert run_module._git() == run_module.GitInfo()  # no commit yet
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-qm", "first")
    git("remote", "add", "origin", "https://example.com/team/repo.git")
    spawned: list[list[str]] = []
    popen = subprocess.Popen

    def counting(args: list[str], *a: object, **kw: object) -> subprocess.Popen[str]:
        spawned.append(list(args))
        return popen(args, *a, **kw)  # type: ignore[call-overload, no-any-return]
    monkeypatch.setattr(subprocess, "Popen", counting)
    info = run_module._git()
    assert len(spawned) == 2, spawned
    assert (info.commit, info.branch, info.remote, info.dirty, info.diff_sha256) == \
        (git("rev-parse", "HEAD"), "main", "https://example.com/team/repo.git", False, "")
    (tmp_path / "train.py").write_text("print(2)\n")
    info = run_module._git()
    assert info.dirty and info.diff_sha256 == hashlib.sha256(git("diff", "HEAD").encode()).hexdigest()
    assert info.commit == git("rev-parse", "HEAD")
    git("checkout", "-q", "--", "train.py")
    git("checkout", "-q", "--detach")
    info = run_module._git()
    assert (info.commit, info.branch, info.dirty) == (git("rev-parse", "HEAD"), git("rev-parse", "--abbrev-ref", "HEAD"), False)
    assert info.branch == "HEAD"
