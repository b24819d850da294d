"""Artifact uploads: ``log_artifact`` hands a file to a background thread that streams it to the stack's artifact
server (the MLflow role's mlflow-artifacts proxy), so every client lists and downloads it without a shared
filesystem. The server checks the sha256 the SDK computed and records the artifact in the run's lineage.

Uploads retry with backoff while the server is unreachable or does not know the run yet (its start record is
still on its way through the pipeline); a refusal (token, size) is final and says why. A file larger than one part
(``client.upload_part_mib``) goes in parts that the server appends to what it holds, so after a cut connection or a
restart the upload resumes from the bytes the server has (runstream/mlflow/uploads.py has the protocol). Only the
standard library is used, so the slim SDK gains no dependency.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runstream.wire.mlflow import OFFSET_HEADER, SHA256_HEADER, experiment_id

log = logging.getLogger("runstream")

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass
class Upload:
    project: str
    run_id: str
    path: Path
    name: str               # the artifact's path under the run's artifacts
    sha256: str
    size: int
    failed: Callable[[str], None]  # called once with the reason when the upload is given up


class Uploader(threading.Thread):
    """One per artifact server and token; uploads one file at a time, in the order logged."""

    def __init__(self, base_url: str, token: str | None, *, tls_ca: str = "", give_up_s: float = 600.0,
                 part_bytes: int = 8 << 20) -> None:
        super().__init__(name="runstream-uploader", daemon=True)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=tls_ca or None) if base_url.startswith("https://") else None
        self.give_up_s = give_up_s  # without a byte of progress for this long, an upload is given up
        self.part_bytes = max(1, part_bytes)
        self.jobs: queue.Queue[Upload] = queue.Queue()
        self._pending: dict[str, int] = {}  # run id -> uploads not yet done
        self._cond = threading.Condition()

    def submit(self, job: Upload) -> None:
        with self._cond:
            self._pending[job.run_id] = self._pending.get(job.run_id, 0) + 1
        self.jobs.put(job)

    def wait(self, run_id: str | None, timeout: float) -> bool:
        """True once every upload of ``run_id`` (None: of every run) is done or given up."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._pending.get(run_id, 0) if run_id else sum(self._pending.values())) > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                self._upload(job)
            except Exception as exc:  # never let one file stop the others
                log.exception("runstream: uploading artifact %s failed", job.name)
                job.failed(f"{type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._pending[job.run_id] -= 1
                    if not self._pending[job.run_id]:
                        del self._pending[job.run_id]
                    self._cond.notify_all()

    def url(self, job: Upload) -> str:
        path = "/".join(urllib.parse.quote(part, safe="") for part in job.name.split("/"))
        return f"{self.base_url}{ARTIFACTS}/{experiment_id(job.project)}/{job.run_id}/artifacts/{path}"

    def _upload(self, job: Upload) -> None:
        deadline, delay = time.monotonic() + self.give_up_s, 0.2
        while True:
            problem, retry, progressed = self._put_parts(job) if job.size > self.part_bytes else (*self._put(job), False)
            if problem is None:
                return
            if progressed:  # bytes went through before it broke: the clock starts again
                deadline, delay = time.monotonic() + self.give_up_s, 0.2
            if not retry or time.monotonic() + delay > deadline:
                log.error("runstream: artifact %s of run %s was not uploaded: %s", job.name, job.run_id, problem)
                job.failed(problem)
                return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _request(self, job: Upload, body: object, length: int, extra: dict[str, str] | None = None) -> bytes:
        headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream",
                   SHA256_HEADER: job.sha256, **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url(job), data=body, headers=headers, method="PUT")  # type: ignore[arg-type]
        with urllib.request.urlopen(req, timeout=60, context=self.context) as resp:
            return bytes(resp.read())

    def _put(self, job: Upload) -> tuple[str | None, bool]:
        """The whole file in one request: (None, _) once stored; else (what went wrong, whether trying again may help)."""
        try:
            with open(job.path, "rb") as body:
                self._request(job, body, job.size)
            return None, False
        except (urllib.error.HTTPError, OSError) as exc:
            return self._problem(exc)

    def _put_parts(self, job: Upload) -> tuple[str | None, bool, bool]:
        """The file in parts, from the bytes the server already holds (asked first): as :meth:`_put`, and whether
        the server took any part."""
        def send(first: int | None, data: bytes = b"") -> tuple[int, bool]:
            span = f"{first}-{first + len(data) - 1}" if first is not None else "*"
            answer = json.loads(self._request(job, data, len(data), {"Content-Range": f"bytes {span}/{job.size}"}))
            return int(answer["offset"]), bool(answer["complete"])
        progressed = False
        try:
            offset, done = send(None)
            if offset:
                log.info("runstream: artifact %s resumes at byte %d of %d", job.name, offset, job.size)
            with open(job.path, "rb") as f:
                while not done:
                    f.seek(offset)
                    data = f.read(min(self.part_bytes, job.size - offset))
                    if not data:
                        return f"the file is shorter than the {job.size} bytes logged", False, progressed
                    try:
                        held, done = send(offset, data)
                    except urllib.error.HTTPError as exc:
                        if exc.code != 409 or OFFSET_HEADER not in exc.headers:
                            raise
                        held = int(exc.headers[OFFSET_HEADER])  # the server holds other bytes: go on from there
                    progressed = progressed or held > offset
                    offset = held
            return None, False, progressed
        except (urllib.error.HTTPError, OSError, ValueError, KeyError) as exc:
            return (*self._problem(exc), progressed)

    def _problem(self, exc: BaseException) -> tuple[str, bool]:
        """What went wrong, and whether trying again may help."""
        if isinstance(exc, urllib.error.HTTPError):
            text = exc.read().decode(errors="replace")[:300]
            # 404: the run's start is not stored yet; 409: another request holds the file; 429/5xx: busy or restarting.
            return f"the artifact server answered {exc.code}: {text}", exc.code in (404, 409, 429) or exc.code >= 500
        if isinstance(exc, FileNotFoundError):
            return f"the file is gone: {exc}", False
        if isinstance(exc, OSError):
            return f"the artifact server {self.base_url} is unreachable: {exc}", True
        return f"the artifact server's answer is not understood: {exc}", False
