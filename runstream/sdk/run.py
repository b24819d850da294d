"""The SDK: ``init()`` a run, ``log()`` metrics, ``finish()``.

``log()`` appends to a per-run deque and returns: it never touches the
network. One background thread per process (the Sender) turns buffered
records into columnar batches (by size and time), sends them over a
client-streaming gRPC call, retries with backoff while ingest is unavailable
and, past ``max_pending_points``, spools them to disk. Nothing is dropped
silently: a batch ingest refuses as invalid is logged with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from runstream.sdk import spool, system
from runstream.sdk.lookup import LookupFailed, StoredRun, stored_run
from runstream.sdk.transport import SendError, Transport, connect, resolve
from runstream.sdk.upload import Upload, Uploader
from runstream.v1.ingest_pb2 import Artifact, Batch, DatasetUse, GitInfo, HostInfo, Metrics, RunStatus
from runstream.wire.config import RunstreamConfig
from runstream.wire.files import file_digest
from runstream.wire.mlflow import experiment_id
from runstream.wire.names import MAX_STEP, name_problem, new_run_id, step_of, value_problem

log = logging.getLogger("runstream")

_PARAMS, _TAGS, _FINISH, _LINEAGE = object(), object(), object(), object()
STATUS = {"finished": RunStatus.RUN_STATUS_FINISHED, "failed": RunStatus.RUN_STATUS_FAILED, "killed": RunStatus.RUN_STATUS_KILLED}


@dataclass
class SenderConfig:
    """Limits of the background sender (keyword arguments of ``init``)."""
    max_batch_points: int = 10_000        # points per batch
    flush_interval_s: float = 0.5         # a partial batch leaves after this long
    max_flight_batches: int = 1024        # batches per exchange with ingest (a process may host many runs)
    max_buffered_records: int = 50_000    # log() records per run before log() drains itself
    max_pending_points: int = 2_000_000   # undelivered points in memory before spooling to disk
    backoff_max_s: float = 5.0
    spool_dir: str = ""
    # Durable logging: every batch is written (fsync) to the spool dir before it is sent and removed once ingest
    # acknowledged it, so a killed process loses at most what it logged in the last flush interval.
    durable: bool = False


def client_config() -> RunstreamConfig:
    """The config as the SDK sees it: $RUNSTREAM_CONFIG, then RUNSTREAM_* variables (read at each init)."""
    return RunstreamConfig.load()


def _git() -> GitInfo:
    """The checkout's commit, branch, origin and whether (and how) its tracked files differ from the commit. Two git
    processes side by side (a third for a dirty tree's diff): git calls were most of init()'s time."""

    def start(*args: str) -> subprocess.Popen[str] | None:
        try:
            # --no-optional-locks: status never rewrites the index, so it never holds index.lock against the user's
            # own git commands in the same checkout.
            return subprocess.Popen(["git", "--no-optional-locks", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
        except OSError:  # no git
            return None

    def output(proc: subprocess.Popen[str] | None) -> str | None:
        """What ``proc`` printed; None when it failed, took over 5 s or never started."""
        if proc is None:
            return None
        try:
            text, _ = proc.communicate(timeout=5)
        except subprocess.SubprocessError:
            proc.kill()
            proc.communicate()
            return None
        return text if proc.returncode == 0 else None

    status = start("status", "--porcelain=v2", "--branch", "--untracked-files=no")
    remote = (output(start("remote", "get-url", "origin")) or "").strip()
    head: dict[str, str] = {}  # "# branch.oid <sha>", "# branch.head <name>"; other lines are changed files
    dirty = False
    for line in (output(status) or "").splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(" ")
            head[key] = value
        elif line:
            dirty = True
    commit = head.get("branch.oid", "")
    if not commit or commit == "(initial)":  # not a checkout, or no commit yet
        return GitInfo()
    patch = output(start("diff", "HEAD")) if dirty else None
    diff = hashlib.sha256(patch.strip().encode()).hexdigest() if patch is not None else ""
    branch = head.get("branch.head", "")
    return GitInfo(commit=commit, branch="HEAD" if branch == "(detached)" else branch, remote=remote,
                   dirty=dirty, diff_sha256=diff)


_packages_fingerprint: str | None = None


def packages_sha256() -> str:
    """A fingerprint of the Python environment: sha256 of the sorted name==version of every distribution."""
    global _packages_fingerprint
    if _packages_fingerprint is None:
        names = sorted(f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions() if d.metadata["Name"])
        _packages_fingerprint = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return _packages_fingerprint


def _local(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[7:])
    return Path(uri) if "://" not in uri else None


class _RunStats:
    __slots__ = ("acked_points", "acked_batches", "dropped_points", "dropped", "done")

    def __init__(self) -> None:
        self.acked_points = 0
        self.acked_batches = 0
        self.dropped_points = 0             # points refused here (bad name, step or value), never sent
        self.dropped: dict[str, int] = {}   # reason -> points
        self.done = threading.Event()


class Run:
    """One training run. Use ``log``, ``log_params``, ``set_tags``, ``finish``; or ``with runstream.init(...) as run``."""

    def __init__(self, sender: Sender, *, project: str, name: str, run_id: str, strict: bool = False) -> None:
        self.project = project
        self.name = name
        self.id = run_id
        self.strict = strict  # raise at log() on what ingest would refuse, instead of dropping it with a warning
        self.system: system.SystemSampler | None = None
        self.session = ""     # a resumed session's id; "" for the run's first
        self.session_start_ms = 0
        self._warned: set[str] = set()
        self._sender = sender
        self._records: deque[tuple[Any, ...]] = deque()
        self._step = 0
        self._seq = 0
        self._finished = False
        self._token: str | None = None  # init()'s token, for artifact uploads
        self.stats = _RunStats()

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values at ``step`` (default: one more than the last step). Never blocks on the network."""
        try:
            values = dict(metrics)  # a copy: the caller may reuse its dict
        except (TypeError, ValueError):
            if self.strict:
                raise TypeError(f"runstream: log() takes a mapping of metric names to values, not {type(metrics).__name__}") from None
            self._drop(1, "not a mapping", f"log({type(metrics).__name__})")
            return
        if step is None:
            step = self._step
            if step > MAX_STEP:  # the step after 2**63-1
                self._drop(len(values), "step not an int64", f"step {step}")
                return
        elif type(step) is not int or not -0x8000_0000_0000_0000 <= step <= 0x7FFF_FFFF_FFFF_FFFF:  # inlined: hot
            given, step = step, step_of(step)
            if step is None:  # 2.5, 2**63, "3": dropped here, so the sender only ever sees int64 steps
                if self.strict:
                    raise ValueError(f"runstream: step {str(given)[:40]} is not an integer step in -2**63..2**63-1")
                self._drop(len(values), "step not an int64", f"step {str(given)[:40]}")
                return
        if self.strict:
            for k, v in values.items():
                problem = name_problem(k)
                if problem:
                    raise ValueError(f"runstream: metric name {str(k)[:60]!r} {problem[1]}")
                float(v)  # TypeError / ValueError for what is not a number
        self._step = step + 1
        self._records.append((step, time.time(), values))
        if len(self._records) > self._sender.config.max_buffered_records:
            try:
                self._sender.drain(self)  # the sender is starved: do its work here rather than grow without bound
            except Exception:  # e.g. a full disk under durable mode: the training loop never sees it
                log.exception("runstream: buffering run %s's points failed", self.id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        values = self._checked({k: _param_json(v) for k, v in params.items()}, "param")
        if values:
            self._records.append((_PARAMS, time.time(), values))

    def set_tags(self, tags: Mapping[str, str] | Iterable[str]) -> None:
        values = dict(tags) if isinstance(tags, Mapping) else {t: "" for t in tags}
        checked = self._checked({k: str(v) for k, v in values.items()}, "tag")
        if checked:
            self._records.append((_TAGS, time.time(), checked))

    def _checked(self, values: dict[Any, str], kind: str) -> dict[str, str]:
        """The entries ingest takes; the others dropped here, counted by reason and warned once per key."""
        out = {}
        for k, v in values.items():
            problem = value_problem(k, v)
            if problem is None:
                out[k] = v
            elif self.strict:
                raise ValueError(f"runstream: {kind} {str(k)[:60]!r}: {problem}")
            else:
                self._drop(1, f"{kind} {problem}", f"{kind} {str(k)[:60]!r}")
        return out

    def use_dataset(self, uri: str, *, digest: str | None = None) -> str:
        """Record that the run reads ``uri``. For a local file or directory the digest (sha256) is computed
        here unless given; returns the digest. Runs that used the same content are linked by it."""
        size = 0
        path = _local(uri)
        if digest is None and path is not None and path.exists():
            digest, size = file_digest(path)
        self._records.append((_LINEAGE, time.time(), DatasetUse(uri=str(uri), digest=digest or "", size=size)))
        return digest or ""

    def log_artifact(self, path_or_uri: str | Path, *, artifact_dir: str | Path | None = None,
                     upload: bool | str | None = None) -> Artifact:
        """Record something the run made (a file or a folder): its size and sha256, and keep its bytes.

        ``upload``: True, or the artifact server's URL, streams the bytes in the background to the stack's artifact
        server (the MLflow role; ``client.artifact_url``, else the local stack's), so any client lists and downloads
        them (read API, MLflow); ``finish()`` waits for the uploads. None (the default) uploads when an artifact
        server is known and no ``artifact_dir`` is given. Otherwise the bytes are copied to ``artifact_dir`` (else
        ``client.artifact_dir``) when one is set, else they stay where they are."""
        uri = str(path_or_uri)
        art = Artifact(uri=uri)
        path = _local(uri)
        if path is None or not path.exists():
            self._records.append((_LINEAGE, time.time(), art))
            return art
        art.sha256, art.size = file_digest(path)
        target_dir = artifact_dir or self._sender.artifact_dir
        client = client_config()
        server = upload if isinstance(upload, str) else None
        if upload is True or (upload is None and not target_dir):
            server = client.artifact_url()
            if not server and upload is True:
                raise ValueError("log_artifact(upload=True): no artifact server known; set client.artifact_url "
                                 "(RUNSTREAM_ARTIFACT_URL) or start `runstream up` with the mlflow role")
        if server:
            uploader = _uploader(server, self._token, client)
            files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
            for f in files:
                sha, size = (art.sha256, art.size) if f == path else file_digest(f)
                local = Artifact(uri=str(f), sha256=sha, size=size)
                name = path.name if f == path else f"{path.name}/{f.relative_to(path).as_posix()}"
                # Given up: the run's lineage still names the file and its digest.
                failed = lambda reason, a=local: self._records.append((_LINEAGE, time.time(), a))
                uploader.submit(Upload(self.project, self.id, f, name, sha, size, failed))
            art.uri = f"mlflow-artifacts:/{experiment_id(self.project)}/{self.id}/artifacts/{path.name}"
            return art  # the server records each file once stored
        if target_dir:
            dest = Path(target_dir) / art.sha256[:2] / art.sha256 / path.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, dest)
            art.stored_uri = str(dest)
        self._records.append((_LINEAGE, time.time(), art))
        return art

    def _log_system(self, values: dict[str, float]) -> None:
        """System metrics at the run's current step, without moving it (called from the sampler thread)."""
        if not self._finished:
            self._records.append((max(0, self._step - 1), time.time(), values))

    def summary(self) -> dict[str, Any]:
        """What happened to this run's points so far: acknowledged by ingest, and dropped here (by reason)."""
        st = self.stats
        return {"run_id": self.id, "acked_points": st.acked_points, "acked_batches": st.acked_batches,
                "dropped_points": st.dropped_points, "dropped": dict(st.dropped)}

    def _drop(self, n: int, reason: str, what: str) -> None:
        """Count ``n`` points that will not be sent; warn once per name (or kind of problem) and run."""
        st = self.stats
        st.dropped_points += n
        st.dropped[reason] = st.dropped.get(reason, 0) + n
        if what not in self._warned:
            self._warned.add(what)
            log.warning("runstream: run %s drops points of %s (%s); the other points are kept. "
                        "init(strict=True) raises instead.", self.id, what, reason)

    def finish(self, status: str = "finished", *, timeout: float = 30.0) -> bool:
        """Flush and close the run. Returns True when everything was acknowledged by ingest within ``timeout``;
        otherwise the rest is still sent in the background, or spooled to disk at exit."""
        if self._finished:
            return self.stats.done.is_set()
        self._finished = True
        with contextlib.suppress(ValueError):
            _active.remove(self)  # the exit handler finishes the runs left open, only those
        if self.system is not None:
            self.system.stop()
        if self.stats.dropped_points:
            log.warning("runstream: run %s dropped %d points before sending: %s", self.id, self.stats.dropped_points,
                        ", ".join(f"{n} {reason}" for reason, n in sorted(self.stats.dropped.items())))
        deadline = time.monotonic() + timeout
        for uploader in list(_uploaders.values()):
            if not uploader.wait(self.id, max(0.0, deadline - time.monotonic())):
                log.warning("runstream: run %s finishes with artifact uploads still running", self.id)
        self._records.append((_FINISH, time.time(), status))
        self._sender.wake()
        while not self.stats.done.wait(max(0.0, min(5.0, deadline - time.monotonic()))):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # A slow finish says what it waits for, every 5 s.
            log.warning("runstream: run %s waits for ingest to acknowledge its last points (%d acknowledged, "
                        "%d points pending in this process; %.0f s left, then they are spooled and resent later)",
                        self.id, self.stats.acked_points, self._sender.pending_points, left)
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.finish("finished" if exc_type is None else ("killed" if exc_type is KeyboardInterrupt else "failed"))


class Sender(threading.Thread):
    """The process's one background sender."""

    def __init__(self, transport: Transport, config: SenderConfig | None = None, *,
                 client: RunstreamConfig | None = None) -> None:
        super().__init__(name="runstream-sender", daemon=True)
        self.transport = transport
        self.config = config or SenderConfig()
        client = client or client_config()
        self.spool_dir = Path(self.config.spool_dir) if self.config.spool_dir else client.spool_path
        self.artifact_dir = client.client.artifact_dir
        self.runs: dict[str, Run] = {}  # by run id; a run leaves when its finish is acknowledged
        self.pending: deque[Batch] = deque()
        self.pending_points = 0
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._closing = False
        self._down_until = 0.0
        self._refusal_said = ""  # the refusal of spooled data last logged: said once, retried quietly
        self._backoff = 0.0
        self._flushed = time.monotonic()  # when the last flush began
        self._has_spool = False  # this process wrote spool files not yet resent
        self.spooled_batches = 0
        self.dropped_batches = 0
        self._wal: dict[str, Path] = {}     # durable: batch id -> the file holding it until acknowledged
        self._wal_left: dict[Path, int] = {}
        self._good_names: set[Any] = set()  # metric names checked once (drain runs under _lock)
        self._bad_names: set[Any] = set()

    def start(self) -> None:
        super().start()
        if self.config.durable:
            threading.Thread(target=self._write_ahead_loop, name="runstream-write-ahead", daemon=True).start()

    def _write_ahead_loop(self) -> None:
        """Durable: every flush interval, what the runs logged becomes batches on disk, also while the sender waits
        on a stalled ingest (it holds no lock while a request is in flight)."""
        while not self._closing:
            time.sleep(self.config.flush_interval_s)
            try:
                with self._lock:
                    for r in list(self.runs.values()):
                        self.drain(r)
            except Exception:  # a full disk: logged; the sender goes on
                log.exception("runstream: writing ahead failed")

    # -- called from user threads ------------------------------------------------
    def add(self, run: Run) -> None:
        with self._lock:
            self.runs[run.id] = run

    def wake(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 30.0) -> None:
        """Finish delivery within ``timeout``; spool whatever could not be delivered. Idempotent."""
        self._closing = True
        self._wake.set()
        if self.is_alive():
            self.join(timeout)
        with self._lock:
            for run in list(self.runs.values()):
                self.drain(run)
            if self.pending:
                self._spool_pending(all_=True)
        self.transport.close()

    # -- batching ----------------------------------------------------------------
    def drain(self, run: Run) -> None:
        """Move a run's buffered records into pending batches."""
        with self._lock:
            records = run._records
            n = len(records)
            if not n:
                return
            first_new = len(self.pending)
            names: dict[str, int] = {}
            ni: list[int] = []
            steps: list[int] = []
            tss: list[int] = []
            vals: list[float] = []
            max_points = self.config.max_batch_points

            good, bad = self._good_names, self._bad_names

            def emit(points: int, **body: Any) -> None:
                try:
                    self._emit(run, **body)
                except Exception as exc:  # a batch that cannot be encoded is dropped whole; logging goes on
                    run._drop(points, "cannot encode", f"a batch ({type(exc).__name__}: {str(exc)[:80]})")

            def close_metrics() -> None:
                nonlocal names, ni, steps, tss, vals
                if vals:
                    try:
                        m, non_numeric = _metrics(names, ni, steps, tss, vals)
                    except Exception as exc:
                        m, non_numeric = Metrics(), {}
                        run._drop(len(vals), "cannot encode", f"a batch ({type(exc).__name__}: {str(exc)[:80]})")
                    for name, count in non_numeric.items():
                        run._drop(count, "not a number", f"metric {name[:60]!r}")
                    if m.values:
                        emit(len(m.values), metrics=m)
                    names, ni, steps, tss, vals = {}, [], [], [], []

            for _ in range(n):
                step, ts, payload = records.popleft()
                if step is _PARAMS or step is _TAGS or step is _FINISH or step is _LINEAGE:
                    close_metrics()
                    if step is _LINEAGE:
                        emit(0, lineage=payload, ts=ts)
                    elif step is _PARAMS:
                        emit(len(payload), params=payload, ts=ts)
                    elif step is _TAGS:
                        emit(len(payload), tags=payload, ts=ts)
                    else:
                        emit(0, finish=payload, ts=ts)
                    continue
                ts_ms = int(ts * 1000)
                for k, v in payload.items():
                    i = names.get(k)
                    if i is None:
                        if k not in good:
                            problem = None if k in bad else name_problem(k)
                            if k in bad or problem:
                                bad.add(k)
                                run._drop(1, problem[0] if problem else _bad_reason(k), f"metric {str(k)[:60]!r}")
                                continue
                            if len(good) > 100_000:  # a name per step: keep the cache bounded
                                good.clear()
                            good.add(k)
                        i = names[k] = len(names)
                    ni.append(i)
                    steps.append(step)
                    tss.append(ts_ms)
                    vals.append(v)
                if len(vals) >= max_points:
                    close_metrics()
            close_metrics()
            if self.config.durable:
                self._write_ahead([self.pending[i] for i in range(first_new, len(self.pending))])

    def _emit(self, run: Run, *, metrics: Metrics | None = None, params: dict[str, str] | None = None,
              tags: dict[str, str] | None = None, finish: str | None = None, ts: float | None = None,
              start: Batch | None = None, lineage: DatasetUse | Artifact | None = None) -> None:
        b = start or Batch(batch_id=uuid.uuid4().hex, project=run.project, run_id=run.id, seq=run._next_seq(),
                           created_ms=int((ts or time.time()) * 1000))
        if metrics is not None:
            b.metrics.CopyFrom(metrics)
            b.created_ms = metrics.timestamps_ms[0]
            self.pending_points += len(metrics.values)
        elif params is not None:
            b.params.values.update(params)
        elif tags is not None:
            b.tags.values.update(tags)
        elif lineage is not None:
            (b.dataset if isinstance(lineage, DatasetUse) else b.artifact).CopyFrom(lineage)
        elif finish is not None:
            rf = b.run_finish
            rf.status = STATUS.get(finish, RunStatus.RUN_STATUS_FINISHED)
            rf.end_ms = b.created_ms
            rf.points_dropped = run.stats.dropped_points
            if run.session:
                rf.session, rf.session_start_ms = run.session, run.session_start_ms
        self.pending.append(b)

    def _write_ahead(self, batches: list[Batch]) -> None:
        if batches:
            path = spool.write(self.spool_dir, batches, suffix=".wal")
            self._wal_left[path] = len(batches)
            for b in batches:
                self._wal[b.batch_id] = path

    def _wal_done(self, b: Batch) -> None:
        """The batch is acknowledged (or safe in a spool file, or refused): its write-ahead copy can go."""
        path = self._wal.pop(b.batch_id, None)
        if path is not None:
            self._wal_left[path] -= 1
            if not self._wal_left[path]:
                del self._wal_left[path]
                path.unlink(missing_ok=True)

    def start_run(self, run: Run, start: Batch) -> None:
        with self._lock:
            start.seq = run._next_seq()
            self.pending.append(start)
            if self.config.durable:
                self._write_ahead([start])
        self.wake()

    # -- the thread --------------------------------------------------------------
    def run(self) -> None:
        while True:
            # Ingest may ask for fewer, larger requests when it is busy (the Session's flow-control hint). The
            # interval runs from the start of the last flush, so the time a flush took is not added to the next wait.
            every = max(self.config.flush_interval_s, getattr(self.transport, "min_flush_interval_s", 0.0))
            self._wake.wait(max(0.0, self._flushed + every - time.monotonic()))
            self._wake.clear()
            self._flushed = time.monotonic()
            stopping = self._closing
            try:
                with self._lock:
                    for r in list(self.runs.values()):
                        self.drain(r)
                now = time.monotonic()
                if now >= self._down_until:
                    if self._has_spool:
                        # Older batches first: each run's batches must reach ingest in sequence order.
                        self._resend_spool()
                    while self.pending and not self._has_spool and time.monotonic() >= self._down_until:
                        self._send_flight()
                if self.pending_points > self.config.max_pending_points:
                    self._spool_pending(all_=False)
            except Exception:  # the sender must survive anything; the training loop never sees it
                log.exception("runstream sender error")
            if stopping:
                return
            if self.pending and time.monotonic() < self._down_until:
                time.sleep(min(0.05, self._down_until - time.monotonic()))

    def _send_flight(self) -> None:
        with self._lock:
            flight = [self.pending[i] for i in range(min(len(self.pending), self.config.max_flight_batches))]
        self._fill_finish_counts(flight)
        try:
            self.transport.send(flight)
            accepted, error = len(flight), None
        except SendError as exc:
            accepted, error = exc.accepted, exc
        with self._lock:
            for _ in range(accepted):
                self._acked(self.pending.popleft())
            if error is None:
                self._backoff = 0.0
                return
            if error.retryable:
                self._backoff = min(self.config.backoff_max_s, max(0.1, self._backoff * 2))
                self._down_until = time.monotonic() + self._backoff * (0.5 + _jitter.random() / 2)
                log.debug("ingest unavailable (%s); retrying in %.2fs", error, self._backoff)
            elif error.code == "INVALID_ARGUMENT" and self.pending:
                bad = self.pending.popleft()
                self.dropped_batches += 1
                self._forget(bad)
                self._wal_done(bad)
                log.error("runstream: ingest refused a batch of run %s and it was dropped: %s", bad.run_id, error)
            else:  # UNAUTHENTICATED / PERMISSION_DENIED: keep the data, the user can fix the token and `runstream sync`
                log.error("runstream: ingest refused the data (%s); spooling to %s. Fix the token, then run `runstream sync`.",
                          error, self.spool_dir)
                self._spool_pending(all_=True, say=False)  # not "resent automatically": the token must change first
                self._down_until = time.monotonic() + self.config.backoff_max_s

    def _fill_finish_counts(self, flight: Sequence[Batch]) -> None:
        """A finish reports the points of its run acknowledged before it (counted here, at send time)."""
        running: dict[str, tuple[int, int]] = {}
        for b in flight:
            p, n = running.get(b.run_id, (0, 0))
            if b.HasField("metrics"):
                p += len(b.metrics.values)
            running[b.run_id] = (p, n + 1)
            if b.HasField("run_finish") and b.run_id in self.runs:
                st = self.runs[b.run_id].stats
                b.run_finish.points_acked = st.acked_points + p
                b.run_finish.batches_acked = st.acked_batches + n

    def _acked(self, b: Batch) -> None:
        self._forget(b)
        self._wal_done(b)
        self._count_acked(b)

    def _acked_from_spool(self, batches: Sequence[Batch]) -> None:
        with self._lock:  # already forgotten (and out of the write-ahead files) when they were spooled
            for b in batches:
                self._count_acked(b)

    def _count_acked(self, b: Batch) -> None:
        run = self.runs.get(b.run_id)
        if run is not None:
            run.stats.acked_batches += 1
            if b.HasField("metrics"):
                run.stats.acked_points += len(b.metrics.values)
            if b.HasField("run_finish"):
                run.stats.done.set()
                del self.runs[run.id]

    def _forget(self, b: Batch) -> None:
        if b.HasField("metrics"):
            self.pending_points -= len(b.metrics.values)

    def _spool_pending(self, *, all_: bool, say: bool = True) -> None:
        with self._lock:
            keep = 0 if all_ else self.config.max_pending_points // 2
            out: list[Batch] = []
            while self.pending and (self.pending_points > keep or all_):
                b = self.pending.popleft()
                self._forget(b)
                out.append(b)
            if not out:
                return
            path = spool.write(self.spool_dir, out)
            for b in out:
                self._wal_done(b)  # the spool file holds it now
            self._has_spool = True
            self.spooled_batches += len(out)
            for b in out:
                if b.HasField("run_finish") and b.run_id in self.runs:
                    self.runs[b.run_id].stats.done.set()
            if say:
                log.warning("runstream: ingest unreachable; spooled %d batches to %s (resent automatically, or "
                            "`runstream sync`).", len(out), path)

    def _resend_spool(self) -> None:
        try:
            for path in spool.files(self.spool_dir, pid=os.getpid()):
                # Resent batches count as acknowledged like any others, and a spooled finish reports the counts as
                # they are when it is finally sent (everything of its run before it was resent first).
                send_spool_file(self.transport, path, self.config.max_flight_batches,
                                prepare=self._fill_finish_counts, acked=self._acked_from_spool)
        except SendError as exc:
            if exc.retryable:
                self._backoff = min(self.config.backoff_max_s, max(0.1, self._backoff * 2))
                self._down_until = time.monotonic() + self._backoff
            else:
                if str(exc) != self._refusal_said:
                    self._refusal_said = str(exc)
                    log.error("runstream: ingest refused spooled data (%s); it stays in %s for `runstream sync`.",
                              exc, self.spool_dir)
                self._down_until = time.monotonic() + self.config.backoff_max_s
            return
        self._has_spool = False
        self._refusal_said = ""


def send_spool_file(transport: Transport, path: Path, flight: int = 64, *,
                    prepare: Callable[[list[Batch]], None] | None = None,
                    acked: Callable[[Sequence[Batch]], None] | None = None) -> int:
    """Send one spool file and delete it; returns batches sent. ``prepare`` sees the batches before they leave,
    ``acked`` each group ingest acknowledged. On SendError the file keeps only what was not acknowledged."""
    batches = list(spool.read(path))
    if prepare is not None:
        prepare(batches)
    for i in range(0, len(batches), flight):
        chunk = batches[i:i + flight]
        try:
            transport.send(chunk)
        except SendError as exc:
            if acked is not None and exc.accepted:
                acked(chunk[:exc.accepted])
            spool.write(path.parent, batches[i + exc.accepted:], name=path.name)
            raise
        if acked is not None:
            acked(chunk)
    path.unlink()
    return len(batches)


def _param_json(value: Any) -> str:
    """A param as JSON keeping its type: numpy scalars and other number-likes as numbers, the rest as text."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalar -> int / float / bool
    try:
        return json.dumps(value, default=str, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(str(value))


def _bad_reason(name: object) -> str:
    found = name_problem(name)
    return found[0] if found else "bad name"


def _metrics(names: dict[str, int], ni: list[int], steps: list[int], tss: list[int],
             vals: list[Any]) -> tuple[Metrics, dict[str, int]]:
    """The batch body, and per metric name how many values were not numbers (left out)."""
    m = Metrics(names=list(names), name_index=ni, steps=steps, timestamps_ms=tss)
    dropped: dict[str, int] = {}
    try:
        m.values.extend(vals)
    except (TypeError, ValueError, OverflowError):  # numpy float32, tensors, strings, 10**400...: one by one
        del m.values[:]
        keep = []
        by_index = list(names)
        for i, v in enumerate(vals):
            try:
                m.values.append(float(v))
                keep.append(i)
            except (TypeError, ValueError, OverflowError):
                name = by_index[ni[i]]
                dropped[name] = dropped.get(name, 0) + 1
        if len(keep) != len(vals):
            m = Metrics(names=list(names), name_index=[ni[i] for i in keep], steps=[steps[i] for i in keep],
                        timestamps_ms=[tss[i] for i in keep], values=list(m.values))
    return m, dropped


# The SDK's own generator: drawing from the global one would change a training script's seeded random sequence.
_jitter = random.Random()
_senders: dict[tuple[str, str | None, str], Sender] = {}  # one per ingest a process logs to
_sender_lock = threading.Lock()
_active: list[Run] = []
_uploaders: dict[tuple[str, str | None], Uploader] = {}


def _uploader(server: str, token: str | None, client: RunstreamConfig) -> Uploader:
    token = resolve(client, token=token)[1]
    with _sender_lock:
        up = _uploaders.get((server, token))
        if up is None:
            up = _uploaders[(server, token)] = Uploader(server, token, tls_ca=client.client.tls_ca,
                                                        part_bytes=int(client.client.upload_part_mib * 2**20))
            up.start()
        return up


def _default_sender(url: str | None, token: str | None, options: Mapping[str, Any]) -> Sender:
    client = client_config()
    key = (*resolve(client, url=url, token=token), client.client.tls_ca)
    with _sender_lock:
        sender = _senders.get(key)
        if sender is None or not sender.is_alive():
            if not _senders:
                atexit.register(_at_exit)
            sender = _senders[key] = Sender(connect(client, url=url, token=token), SenderConfig(**options), client=client)
            sender.start()
        return sender


def init(project: str, name: str | None = None, *, config: Mapping[str, Any] | None = None,
         tags: Sequence[str] | None = None, run_id: str | None = None, parent_run_id: str = "",
         url: str | None = None, token: str | None = None, transport: Transport | None = None,
         strict: bool = False, resume: bool | str | None = None, fork_from: str = "", fork_step: int | None = None,
         start_step: int | None = None, system_interval_s: float | None = None, sql_url: str | None = None,
         **options: Any) -> Run:
    """Start a run. ``url``/``token`` default to ``client.url``/``client.token`` (RUNSTREAM_URL/RUNSTREAM_TOKEN),
    then the local `runstream up`.

    ``run_id`` of a run the stack already holds continues it (as MLflow's ``start_run(run_id=...)``): its start
    record (name, parent, tags, start time) stays as it was, the new session's points and counts add to the earlier
    ones, ``runstream runs`` shows it running until this session finishes, and ``log()`` without a step goes on
    after the run's last stored step. Whether it exists is asked once of the read path (``sql_url``, else
    ``client.sql_url``, else the local stack's). ``resume``: None/"allow" (the default) continues the run if it
    exists and starts it otherwise; True/"must" continues it and raises if the stack has no such run;
    False/"never" raises RunExistsError if it exists. ``start_step`` is the first step ``log()`` numbers by
    itself, when given.

    ``fork_from=<run id>, fork_step=N`` starts a new run that continues that run from its step N: the new run
    names it as parent, its history is the parent's points up to N (the read API joins them), and its own
    steps start at N + 1.

    ``system_interval_s``: sample CPU, memory, disk and network I/O and GPUs every so many seconds into ``sys/``
    metrics (default ``client.system_interval_s``, 5 s; 0 turns them off).

    ``strict``: log() raises on a metric name, step or value that ingest would refuse; by default such points
    are dropped with one warning per name and counted (``run.summary()``), and the points beside them are sent.

    Extra keyword arguments set the sender's limits (see SenderConfig) for the process.
    """
    mode = _RESUME_MODES.get(resume) if isinstance(resume, bool | None) else resume
    if mode not in ("allow", "must", "never"):
        raise ValueError(f"runstream.init(resume={resume!r}): pass None/'allow', True/'must' or False/'never'")
    if mode == "must" and not run_id:
        raise ValueError("runstream.init(resume=True) needs the run_id of the run to continue")
    if mode == "must" and fork_from:
        raise ValueError("runstream.init: resume continues a run, fork_from starts a new one; pass one of them")
    if fork_from and (fork_step is None or fork_step < 0):
        raise ValueError("runstream.init(fork_from=...) needs fork_step, the parent's step to continue from (>= 0)")
    if transport is not None:
        sender = Sender(transport, SenderConfig(**options))
        sender.start()
    else:
        sender = _default_sender(url, token, options)
    stored: StoredRun | None = None
    resuming = False
    if run_id and not fork_from:
        stored, resuming = _existing(project, run_id, mode, token, sql_url)
    run_id = run_id or new_run_id()
    name = name or (stored.name if stored else "") or run_id
    run = Run(sender, project=project, name=name, run_id=run_id, strict=strict)
    run._token = token
    now = time.time()
    now_ms = int(now * 1000)
    host = HostInfo(hostname=socket.gethostname(), pid=os.getpid(), python_version=platform.python_version(),
                    platform=platform.platform(), packages_sha256=packages_sha256())
    start = Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run_id, created_ms=now_ms)
    run._step = start_step or 0
    if resuming:
        if start_step is None and stored is not None and stored.last_step is not None:
            run._step = min(stored.last_step + 1, MAX_STEP)
        # Above every earlier session's numbers: the processors skip a run's batches at or below the last seq seen.
        run._seq = now_ms * 1000
        run.session, run.session_start_ms = uuid.uuid4().hex[:16], now_ms
        start.run_resume.session, start.run_resume.resume_ms = run.session, now_ms
        start.run_resume.host.CopyFrom(host)
        if config:
            run.log_params(config)
        if tags:
            run.set_tags(tags)
    else:
        rs = start.run_start
        rs.name, rs.start_ms, rs.parent_run_id = name, now_ms, fork_from or parent_run_id
        if fork_from:
            rs.fork_step = int(fork_step)  # type: ignore[arg-type]  # checked above
            run._step = max(start_step or 0, int(fork_step) + 1)  # type: ignore[arg-type]
        rs.config.update(run._checked({k: _param_json(v) for k, v in (config or {}).items()}, "config"))
        for tag in tags or []:  # a tag ingest would refuse would keep the whole run from starting
            problem = name_problem(tag)
            if problem is None:
                rs.tags.append(tag)
            elif strict:
                raise ValueError(f"runstream: tag {str(tag)[:60]!r} {problem[1]}")
            else:
                run._drop(1, f"tag {problem[0].replace('name', 'key', 1)}", f"tag {str(tag)[:60]!r}")
        rs.git.CopyFrom(_git())
        rs.host.CopyFrom(host)
    sender.add(run)
    sender.start_run(run, start)
    interval = client_config().client.system_interval_s if system_interval_s is None else system_interval_s
    run.system = system.start(run._log_system, interval)
    _active.append(run)
    return run


_RESUME_MODES: dict[bool | None, str] = {None: "allow", True: "must", False: "never"}


class RunExistsError(ValueError):
    """init(run_id=..., resume="never") named a run the stack already holds."""


def _existing(project: str, run_id: str, mode: str, token: str | None, sql_url: str | None) -> tuple[StoredRun | None, bool]:
    """(the stored run or None, whether to continue it) for init(run_id=...)."""
    config = client_config()
    try:
        stored = stored_run(config, project, run_id, token=resolve(config, token=token)[1], sql_url=sql_url)
    except LookupFailed as exc:
        if mode == "must":
            log.warning("runstream: could not check that run %s exists (%s); continuing it as asked", run_id, exc)
            return None, True
        if mode == "allow":
            log.warning("runstream: could not check whether run %s exists (%s); starting it as a new run. If it "
                        "exists, its start record is replaced: pass resume=True to continue it, or give this job the "
                        "SQL endpoint (client.sql_url) and a token with the read scope", run_id, exc)
        return None, False
    if stored is not None and mode == "never":
        raise RunExistsError(f"runstream.init: run {run_id!r} already exists in project {project!r}; pass resume=True "
                             "to continue it, or another run_id")
    if stored is None and mode == "must":
        raise ValueError(f"runstream.init(resume=True): project {project!r} has no run {run_id!r} (stored); pass "
                         "resume=None to start it if it does not exist")
    return stored, stored is not None or mode == "must"


def _at_exit() -> None:
    failed = getattr(sys, "last_type", None) is not None
    for run in list(_active):
        if not run._finished:
            run.finish("failed" if failed else "finished", timeout=10)
    for uploader in list(_uploaders.values()):
        if not uploader.wait(None, 60):
            log.warning("runstream: exiting with artifact uploads unfinished; log them again to keep their bytes")
    for sender in list(_senders.values()):
        sender.close(timeout=10)
