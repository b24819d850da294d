"""Artifact uploads: ``log_artifact`` hands a file to a background thread that streams it to the stack's artifact
server (the MLflow role's mlflow-artifacts proxy), so every client lists and downloads it without a shared
filesystem. The server checks the sha256 the SDK computed and records the artifact in the run's lineage.

Uploads retry with backoff while the server is unreachable or does not know the run yet (its start record is
still on its way through the pipeline); a refusal (token, size) is final and says why. Only the standard library
is used, so the slim SDK gains no dependency.
"""

from __future__ import annotations

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

from runstream.wire.mlflow import experiment_id

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

    def __init__(self, base_url: str, token: str | None, *, tls_ca: str = "", give_up_s: float = 600.0) -> None:
        super().__init__(name="runstream-uploader", daemon=True)
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=tls_ca or None) if base_url.startswith("https://") else None
        self.give_up_s = give_up_s
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
            problem, retry = self._put(job)
            if problem is None:
                return
            if not retry or time.monotonic() + delay > deadline:
                log.error("runstream: artifact %s of run %s was not uploaded: %s", job.name, job.run_id, problem)
                job.failed(problem)
                return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _put(self, job: Upload) -> tuple[str | None, bool]:
        """(None, _) once stored; else (what went wrong, whether trying again may help)."""
        headers = {"Content-Length": str(job.size), "Content-Type": "application/octet-stream",
                   "X-Runstream-Sha256": job.sha256}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with open(job.path, "rb") as body:
                req = urllib.request.Request(self.url(job), data=body, headers=headers, method="PUT")
                with urllib.request.urlopen(req, timeout=60, context=self.context) as resp:
                    resp.read()
            return None, False
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")[:300]
            # 404: the run's start is not stored yet; 429/5xx: busy or restarting.
            return f"the artifact server answered {exc.code}: {text}", exc.code in (404, 429) or exc.code >= 500
        except FileNotFoundError as exc:
            return f"the file is gone: {exc}", False
        except OSError as exc:
            return f"the artifact server {self.base_url} is unreachable: {exc}", True
