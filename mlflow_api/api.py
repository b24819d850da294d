"""The MLflow tracking REST API on runstream: `MLFLOW_TRACKING_URI` pointed here, the `mlflow` client (its fluent API,
MlflowClient, autologging) logs into the pipeline unchanged.

Writes become the same batches the SDK sends, validated and published like ingest's, and are answered only once Kafka
acknowledged them. Reads are SQL over the stored tables through a ClickHouse HTTP endpoint; a read first waits (up to
``mlflow.read_wait_s``) until this role's acknowledged writes to the runs it reads are stored, so a client reads what
it just wrote. Mapping: an experiment is a project (its id is the project's name; MLflow's experiment "0", "Default",
is the project ``default``). Its name is any name MLflow accepts: a name that is not a project name gets a project
named after it (its letters and digits, made unique) and keeps the name as the project's title in governance, so
renames change the title and never the project its runs and tokens refer to. A run keeps its MLflow run id, name,
user, status, times, parent (``mlflow.parentRunId``) and tags; params are stored JSON-encoded as every param is.
Errors are MLflow's JSON (``error_code``, ``message``) with its HTTP status, from one translator
(:func:`error_response`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from runstream.ingest.server import Publisher, run_audit
from runstream.ingest.validate import validate_batch
from runstream.mlflow.protocol import MlflowError, as_list, error_response, next_page, page_offset, request_fields
from runstream.mlflow.reads import Reads, RunRow
from runstream.mlflow.registry import Registry
from runstream.mlflow.ui import EMPTY_ANSWERS, MlflowUi, ui_build_dir
from runstream.mlflow.uploads import PartialUploads, parse_range
from runstream.server import governance as gov_io
from runstream.server import telemetry as tm
from runstream.server.auth import Token, TokenStore, authorize
from runstream.server.governance import Follower
from runstream.v1 import ingest_pb2
from runstream.wire import governance as gov
from runstream.wire.config import RunstreamConfig, is_loopback
from runstream.wire.errors import (
    AuthError,
    ConfigError,
    RunstreamError,
    Unavailable,
)
from runstream.wire.mlflow import (
    DEFAULT_PROJECT,
    LIFECYCLE_TAG,
    SHA256_HEADER,
    dataset_uri,
    experiment_id,
    param_json,
    param_text,
    project_for_experiment,
)
from runstream.wire.names import metric_name_problem, new_run_id
from runstream.wire.search import (
    DELETED_TAG,
    EXPERIMENT_ATTRS,
    MODEL_ATTRS,
    MODEL_LABEL,
    Cond,
    Order,
    matches,
    parse_filter,
    parse_order_by,
    parse_run_filter,
)
from runstream.wire.views import MODEL_AS_RUN, MODEL_URI

log = logging.getLogger("runstream.mlflow")

API_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
STATUSES = {"RUNNING": None, "SCHEDULED": None, "FINISHED": ingest_pb2.RUN_STATUS_FINISHED,
            "FAILED": ingest_pb2.RUN_STATUS_FAILED, "KILLED": ingest_pb2.RUN_STATUS_KILLED}
# MLflow's own limits on one log-batch call.
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS, MAX_BATCH_TOTAL = 1000, 100, 100, 1000
MAX_RESULTS = 50_000
SAFE_SEGMENT = re.compile(r"[^/\\\x00]+\Z")


def project_of(exp_id: str, where: str = "experiment_id") -> str:
    if not exp_id:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{where}'.")
    return DEFAULT_PROJECT if exp_id == "0" else exp_id


MAX_EXPERIMENT_NAME = 500
UI_UPLOAD_BYTES = 10 * 1024 * 1024  # MLflow's bound on the UI's upload-artifact
MAX_DATASET_EXPERIMENTS = 20  # MLflow's limit for experiments/search-datasets
MAX_HISTORY_BULK = 25_000  # MLflow's limit for metrics/get-history-bulk


def invalid_value(value: Any, field: str, why: str) -> MlflowError:
    """MLflow's own wording for a field of the wrong kind or range (its clients and tests match on it)."""
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    return MlflowError("INVALID_PARAMETER_VALUE", f"Invalid value {shown[:60]} for parameter '{field}' supplied: {why}")


def checked_experiment_name(value: Any, field: str = "name") -> str:
    """An experiment name as MLflow accepts it: a non-empty string (runstream also caps its length)."""
    if value is None or value == "":
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{field}'.")
    if not isinstance(value, str):
        raise invalid_value(value, field, "expected a string")
    if len(value) > MAX_EXPERIMENT_NAME or "\x00" in value:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid experiment name {value[:60]!r}: at most "
                                                     f"{MAX_EXPERIMENT_NAME} characters, no NUL")
    return value


def project_for_name(name: str, taken: set[str]) -> str:
    """The project a new experiment gets: its name where that is a free project name, else the name's letters and
    digits joined by '-', with a number appended until it is free."""
    base = project_for_experiment(name)
    if base not in taken:
        return base
    stem = base[:240]
    return next(f"{stem}-{i}" for i in range(2, len(taken) + 3) if f"{stem}-{i}" not in taken)


def experiment_name(project: str) -> str:
    return "Default" if project == DEFAULT_PROJECT else project


def _num(value: Any) -> Any:
    """A double as proto3 JSON writes it: NaN and infinities as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _float(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise invalid_value(value, where, "expected a number") from None


def _int(value: Any, where: str, default: int | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{where}'.")
        return default
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        raise invalid_value(value, where, "expected an integer") from None
    if not INT64_MIN <= out <= INT64_MAX:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"{where}: {str(value)[:40]} is out of the 64-bit integer range")
    return out


def _items(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``body[key]`` as a list of JSON objects (MLflow's repeated message fields)."""
    value = body.get(key)
    if value is None or value == "":
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise invalid_value(value, key, "expected a list of objects")
    return value


INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _str(body: dict[str, Any], key: str, *alts: str, required: bool = True) -> str:
    """A string field (MLflow refuses a number or a list where it expects a string, naming the field)."""
    for k in (key, *alts):
        if body.get(k) not in (None, ""):
            if not isinstance(body[k], str):
                raise invalid_value(body[k], k, "expected a string")
            return body[k]
    if required:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Missing value for required parameter '{key}'.")
    return ""




def artifact_location(location: str) -> str:
    """An experiment's artifact location as MLflow's server keeps it: a relative local path made absolute against the
    server's working folder; never a runs:/ URI. Only reported: runs' files always go to runstream's artifact store,
    and the role never reads or writes a location a client names."""
    if location.startswith("runs:"):
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Artifact location cannot be a runs:/ URI. Given: '{location}'")
    if len(location) > 2048:
        raise MlflowError("INVALID_PARAMETER_VALUE", "artifact_location: at most 2048 characters")
    if location and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", location) and not location.startswith("/"):
        return str(Path.cwd() / location)
    return location


@dataclass
class Experiment:
    project: str
    created_ms: int = 0
    updated_ms: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    deleted: bool = False
    title: str = ""  # its name where that is not the project's name
    artifact_location: str = ""  # as its creator named it (resolved as MLflow resolves it)

    @property
    def name(self) -> str:
        return self.title or experiment_name(self.project)

    def json(self) -> dict[str, Any]:
        exp_id = experiment_id(self.project)
        return {"experiment_id": exp_id, "name": self.name,
                "artifact_location": self.artifact_location or f"mlflow-artifacts:/{exp_id}",
                "lifecycle_stage": "deleted" if self.deleted else "active",
                "creation_time": self.created_ms, "last_update_time": self.updated_ms,
                "tags": [{"key": k, "value": v} for k, v in sorted(self.tags.items())]}


@dataclass
class RunMemory:
    """What this role knows of a run it wrote to: for RunFinish's counts, seq numbers and the read barrier."""
    seq: int = 0
    points: int = 0
    batches: int = 0
    session: str = ""
    session_start_ms: int = 0
    pending: set[str] = field(default_factory=set)  # acknowledged batch ids not yet seen stored
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = 0.0  # monotonic time of its last write


# A logged model's metric: where it came from (run, dataset), as a tag of the model, hidden from its tags.
MODEL_METRIC_TAG = "mlflow.model.metric."


def model_json(r: RunRow) -> dict[str, Any]:
    exp_id = experiment_id(r.project)
    tags = {k: v for k, v in r.tags.items() if not k.startswith("mlflow.model.") and k != MODEL_LABEL}
    info: dict[str, Any] = {
        "model_id": r.run_id, "experiment_id": exp_id, "name": r.run_name,
        "artifact_uri": f"mlflow-artifacts:/{exp_id}/{r.run_id}/artifacts", "creation_timestamp_ms": r.start_time,
        "last_updated_timestamp_ms": r.end_time or r.start_time, "model_type": r.tags.get("mlflow.model.type", ""),
        "source_run_id": r.parent_run_id, "status": r.tags.get("mlflow.model.status", "LOGGED_MODEL_PENDING"),
        "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())]}
    metrics = []
    for key, value, ms, step in r.metrics:
        try:
            source = json.loads(r.tags.get(MODEL_METRIC_TAG + key, "{}"))
        except ValueError:
            source = {}
        metrics.append({"key": key, "value": _num(value), "timestamp": ms, "step": step, "model_id": r.run_id,
                        **{k: str(v) for k, v in source.items() if k in ("run_id", "dataset_name", "dataset_digest")}})
    return {"info": info, "data": {"params": [{"key": k, "value": param_text(v)} for k, v in sorted(r.params.items())],
                                   "metrics": metrics}}


def dataset_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def run_json(r: RunRow) -> dict[str, Any]:
    exp_id = experiment_id(r.project)
    tags = {label: "" for label in r.labels}
    tags.update(r.tags)
    if r.parent_run_id:
        tags.setdefault("mlflow.parentRunId", r.parent_run_id)
    tags.setdefault("mlflow.runName", r.run_name)
    info: dict[str, Any] = {"run_id": r.run_id, "run_uuid": r.run_id, "run_name": r.run_name, "experiment_id": exp_id,
                            "user_id": r.user_id, "status": r.status, "start_time": r.start_time,
                            "artifact_uri": f"mlflow-artifacts:/{exp_id}/{r.run_id}/artifacts",
                            "lifecycle_stage": r.lifecycle_stage}
    if r.end_time is not None:
        info["end_time"] = r.end_time
    inputs, models = [], []
    for d in r.datasets:
        if d.uri.startswith(MODEL_URI):
            models.append({"model_id": d.uri[len(MODEL_URI):]})
            continue
        dataset = {"name": d.name or dataset_name(d.uri), "digest": d.digest,
                   "source_type": d.source_type or "runstream", "source": d.source or json.dumps({"uri": d.uri})}
        dataset.update({k: v for k, v in (("schema", d.schema), ("profile", d.profile)) if v})
        inputs.append({"tags": [{"key": k, "value": v} for k, v in sorted(d.tags.items())], "dataset": dataset})
    return {"info": info,
            "data": {"metrics": [{"key": k, "value": _num(v), "timestamp": ts, "step": s} for k, v, ts, s in r.metrics],
                     "params": [{"key": k, "value": param_text(v)} for k, v in sorted(r.params.items())],
                     "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())]},
            "inputs": {"dataset_inputs": inputs, "model_inputs": models},
            "outputs": {"model_outputs": [{"model_id": m, "step": step} for m, step in r.model_outputs]}}


class MlflowApi:
    """The handlers. Each takes the request's fields (JSON body, or the query string of a GET) and the caller's token."""

    def __init__(self, config: RunstreamConfig, publisher: Publisher, tokens: TokenStore, reads: Reads) -> None:
        self.config = config
        self.publisher = publisher
        self.tokens = tokens
        self.reads = reads
        self.experiments: dict[str, Experiment] = {}  # from governance (project records), applied in order
        self._published: set[bytes] = set()  # digests of events applied when this replica published them
        self.runs: dict[tuple[str, str], RunMemory] = {}
        # run id -> (when looked up, the projects holding it): two projects may hold the same run id, and an MLflow
        # request names a run by id alone, so every project holding it is known before one is chosen.
        self.run_projects: dict[str, tuple[float, frozenset[str]]] = {}
        self._stored: tuple[float, dict[str, int]] = (0.0, {})
        self.artifact_root = config.mlflow_artifact_path
        self.partial = PartialUploads()
        self.registry = Registry(self)

    # ---- governance: experiments are projects ----

    def apply_control(self, ev: ingest_pb2.ControlEvent, *, local: bool = False) -> None:
        # An event this replica published was applied when published; its copy from the follower may come after a
        # later local change (a create echoed after the rename that followed it) and is skipped, not applied again.
        key = hashlib.sha256(ev.SerializeToString(deterministic=True)).digest()
        if local:
            self._published.add(key)
        elif key in self._published:
            self._published.discard(key)
            return
        self.tokens.apply_control(ev)
        self.registry.apply(ev)
        if ev.HasField("project"):
            rec = ev.project
            exp = self.experiments.get(rec.name)
            if exp is None:
                exp = self.experiments[rec.name] = Experiment(rec.name, created_ms=ev.at_ms)
            exp.updated_ms, exp.tags, exp.deleted, exp.title = ev.at_ms, dict(rec.tags), rec.deleted, rec.title
            exp.artifact_location = rec.artifact_location

    async def _all_experiments(self) -> dict[str, Experiment]:
        now = time.monotonic()
        if now - self._stored[0] > 2.0:
            self._stored = (now, await asyncio.to_thread(self.reads.stored_projects))
        out = {p: Experiment(p, created_ms=ms, updated_ms=ms) for p, ms in self._stored[1].items()}
        out.setdefault(DEFAULT_PROJECT, Experiment(DEFAULT_PROJECT))
        out.update(self.experiments)
        return out

    async def _experiment(self, project: str, token: Token, *, deleted_ok: bool = True) -> Experiment:
        exp = (await self._all_experiments()).get(project)
        if exp is None:
            # Not yet known here (made through another replica a moment ago): look once more, fresh.
            self._stored = (0.0, {})
            exp = (await self._all_experiments()).get(project)
        if exp is None or not token.allows(project, "read") and not token.allows(project, "ingest"):
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id(project)} exists")
        if exp.deleted and not deleted_ok:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"The experiment {experiment_id(project)} must be in the "
                                                         "'active' state; it is deleted (restore it first)")
        return exp

    async def _publish_project(self, token: Token, action: str, exp: Experiment) -> None:
        ev = gov.event(action, project=ingest_pb2.ProjectRecord(name=exp.project, tags=exp.tags, deleted=exp.deleted,
                                                                 title=exp.title, artifact_location=exp.artifact_location))
        ev.actor = f"token:{token.name}"
        await self.publish_control(ev)

    async def publish_control(self, ev: ingest_pb2.ControlEvent) -> None:
        """A governance change (an experiment's, a registered model's) with its audit record; this replica answers
        from it at once."""
        try:
            await gov_io.publish(self.config, ev, producer=self.publisher.producer)
        except Exception as exc:  # aiokafka's errors: Kafka is down or refused
            raise Unavailable(f"Kafka did not take the {ev.action} change ({type(exc).__name__}); retry") from exc
        self.apply_control(ev, local=True)

    async def run_project_for_lineage(self, run_id: str, token: Token) -> str:
        """The project holding ``run_id`` where the token may read it; "" when no run of that id is visible (MLflow
        registers versions of runs it does not know, so runstream does too, without a project to link)."""
        try:
            project, _ = await self._run({"run_id": run_id}, token, "read")
        except MlflowError as exc:
            if exc.code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return ""
        return project

    async def _named(self, name: str) -> Experiment | None:
        """The experiment (deleted or not) called ``name``: names are unique, as in MLflow."""
        for exp in (await self._all_experiments()).values():
            if exp.name == name:
                return exp
        return None

    async def create_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        name = checked_experiment_name(body.get("name"))
        location = artifact_location(_str(body, "artifact_location", required=False))
        tags = self._pairs(_items(body, "tags"), "tags")
        known = await self._all_experiments()
        if any(e.name == name for e in known.values()):
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) already exists.")
        project = project_for_name(name, set(known))
        authorize(token, project, "admin")  # an experiment is a project: made, renamed, deleted as the admin API does
        exp = Experiment(project, tags=tags, title="" if name == experiment_name(project) else name,
                         artifact_location=location)
        await self._publish_project(token, "project.create", exp)
        return {"experiment_id": experiment_id(project)}

    async def get_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        project = project_of(_str(body, "experiment_id"))
        return {"experiment": (await self._experiment(project, token)).json()}

    async def get_experiment_by_name(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        name = _str(body, "experiment_name")
        exp = await self._named(name)
        if exp is None:
            self._stored = (0.0, {})  # made through another replica a moment ago: look once more, fresh
            exp = await self._named(name)
        if exp is None or not (token.allows(exp.project, "read") or token.allows(exp.project, "ingest")):
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'")
        return {"experiment": exp.json()}

    async def search_experiments(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        conds = parse_filter(body.get("filter"), attrs=EXPERIMENT_ATTRS)
        orders = parse_order_by(as_list(body.get("order_by")), attrs=EXPERIMENT_ATTRS)
        view = str(body.get("view_type") or "ACTIVE_ONLY")
        limit = min(_int(body.get("max_results"), "max_results", 1000), MAX_RESULTS)
        found = []
        for exp in (await self._all_experiments()).values():
            if not (token.allows(exp.project, "read") or token.allows(exp.project, "ingest")):
                continue
            if (view == "ACTIVE_ONLY" and exp.deleted) or (view == "DELETED_ONLY" and not exp.deleted):
                continue
            d = exp.json()
            if matches(conds, d, exp.tags):
                found.append(d)
        found.sort(key=lambda d: (-d["creation_time"], d["experiment_id"]))
        for o in reversed(orders):
            if o.kind != "attr":
                raise MlflowError("INVALID_PARAMETER_VALUE", "experiments are ordered by attributes only")
            found.sort(key=lambda d: d[o.key], reverse=not o.ascending)
        offset = page_offset(body.get("page_token"))
        out: dict[str, Any] = {"experiments": found[offset:offset + limit]}
        if offset + limit < len(found):
            out["next_page_token"] = next_page(offset + limit)
        return out

    async def update_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """A rename changes the experiment's name (its project's title), never its project: runs and tokens keep
        referring to the project."""
        if body.get("new_name") is None:
            await self._experiment(project_of(_str(body, "experiment_id")), token)
            return {}
        new_name = checked_experiment_name(body.get("new_name"), "new_name")
        project = project_of(_str(body, "experiment_id"))
        exp = await self._experiment(project, token)
        authorize(token, project, "admin")
        if exp.deleted:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Cannot rename a non-active experiment.")
        other = await self._named(new_name)
        if other is not None and other.project != project:
            raise MlflowError("BAD_REQUEST", f"Experiment(name={new_name}) already exists.")  # as MLflow answers
        title = "" if new_name == experiment_name(project) else new_name
        return await self._set_experiment(body, token, lambda e: setattr(e, "title", title), "admin")

    async def _set_experiment(self, body: dict[str, Any], token: Token, change: Callable[[Experiment], None],
                              scope: str = "ingest") -> dict[str, Any]:
        project = project_of(_str(body, "experiment_id"))
        authorize(token, project, scope)
        exp = await self._experiment(project, token)
        changed = Experiment(exp.project, exp.created_ms, exp.updated_ms, dict(exp.tags), exp.deleted, exp.title,
                             exp.artifact_location)
        change(changed)
        await self._publish_project(token, "project.update", changed)
        return {}

    async def delete_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        if _str(body, "experiment_id") == "0":
            raise MlflowError("INVALID_PARAMETER_VALUE", "Cannot delete the default experiment '0'.")
        return await self._set_experiment(body, token, lambda e: setattr(e, "deleted", True), "admin")

    async def restore_experiment(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return await self._set_experiment(body, token, lambda e: setattr(e, "deleted", False), "admin")

    async def set_experiment_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        key, value = _str(body, "key"), str(body.get("value", ""))
        return await self._set_experiment(body, token, lambda e: e.tags.__setitem__(key, value))

    async def delete_experiment_tag(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        key = _str(body, "key")
        def drop(e: Experiment) -> None:
            e.tags.pop(key, None)
        return await self._set_experiment(body, token, drop)

    # ---- writes: batches through Kafka ----

    MEMORY_RUNS = 10_000  # runs remembered before idle ones are forgotten
    MEMORY_IDLE_S = 600.0

    def _memory(self, project: str, run_id: str) -> RunMemory:
        mem = self.runs.get((project, run_id))
        if mem is None:
            if len(self.runs) >= self.MEMORY_RUNS:
                self._forget_idle()
            mem = self.runs[(project, run_id)] = RunMemory()
        mem.used = time.monotonic()
        return mem

    def _forget_idle(self) -> None:
        """Bound the memory: drop runs idle for a while with nothing pending. A run written again later starts a new
        memory; its seq numbers still grow (they follow the clock), its finish counts only what came since."""
        cutoff = time.monotonic() - self.MEMORY_IDLE_S
        for key in [k for k, m in self.runs.items() if m.used < cutoff and not m.pending and not m.lock.locked()]:
            del self.runs[key]
        if len(self.run_projects) > 10 * self.MEMORY_RUNS:
            self.run_projects.clear()

    async def _send(self, token: Token, source: str, project: str, run_id: str, bodies: list[dict[str, Any]]) -> None:
        """Publish one batch per body (a Batch oneof field -> message), in order, and wait for Kafka's acks."""
        authorize(token, project, "ingest")
        mem = self._memory(project, run_id)
        futures: list[asyncio.Future[Any]] = []
        points = 0
        ids = []
        now = int(time.time() * 1000)
        async with mem.lock:  # seq numbers follow the order records enter the producer, as the processors require
            batches = []
            for body in bodies:
                mem.seq = max(mem.seq + 1, time.time_ns() // 1000)  # above any earlier session's (SDK resume: ms*1000)
                b = ingest_pb2.Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run_id, seq=mem.seq,
                                     created_ms=now, **body)
                points += validate_batch(b, self.config.ingest, "request")
                batches.append(b)
            for b in batches:
                futures.append(await self.publisher.publish(b))
                ids.append(b.batch_id)
                kind = b.WhichOneof("body") or ""
                if kind in ("run_start", "run_finish", "run_resume"):
                    futures.append(await self.publisher.publish_audit(run_audit(b, kind, token.name, source)))
        await self.publisher.wait(futures)
        mem.points += points
        mem.batches += len(ids)
        mem.pending.update(ids)
        tm.MLFLOW_BATCHES.inc(len(ids))
        tm.MLFLOW_POINTS.inc(points)

    RUN_LOOKUP_S = 5.0  # how long a run id's projects are taken as known

    async def _run(self, body: dict[str, Any], token: Token, scope: str) -> tuple[str, str]:
        """(project, run id) of the request's run, which must exist where the token may ``scope``. A run id that
        several projects the token can see hold is refused: it would otherwise pick one of them silently."""
        run_id = _str(body, "run_id", "run_uuid")
        if not isinstance(body.get("run_id", body.get("run_uuid")), str):
            raise invalid_value(body.get("run_id", body.get("run_uuid")), "run_id", "expected a string")
        known = self.run_projects.get(run_id)
        if known is None or time.monotonic() - known[0] > self.RUN_LOOKUP_S:
            stored = await asyncio.to_thread(self.reads.run_projects, run_id)
            made = {p for p in (known[1] if known else ()) if (p, run_id) in self.runs}  # not stored yet, maybe
            known = self.run_projects[run_id] = (time.monotonic(), frozenset(stored) | made)
        visible = sorted(p for p in known[1] if token.allows(p, "read") or token.allows(p, scope))
        if len(visible) > 1:
            raise MlflowError("INVALID_PARAMETER_VALUE",
                              f"Run id {run_id} is held by several experiments you can see ({', '.join(map(experiment_id, visible))}): "
                              "an MLflow request names a run by id alone, so runstream will not choose one; use a token "
                              "limited to one project, or the runstream SDK and read API, which name the project")
        if not visible:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")  # none the token may see
        project = visible[0]
        authorize(token, project, scope)  # it may see the run, not change it: PERMISSION_DENIED
        return project, run_id

    def _remember(self, project: str, run_id: str) -> None:
        """A run this role just started: known at once, before its start record is stored."""
        _, projects = self.run_projects.get(run_id, (0.0, frozenset()))
        self.run_projects[run_id] = (time.monotonic(), projects | {project})

    async def create_run(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project = project_of(str(body.get("experiment_id") or "0"))
        authorize(token, project, "ingest")
        await self._experiment(project, token, deleted_ok=False)
        tags = {str(t["key"]): str(t.get("value", "")) for t in body.get("tags") or []}
        run_id = new_run_id()
        name = str(body.get("run_name") or tags.get("mlflow.runName") or f"run-{run_id[:8]}")
        tags["mlflow.runName"] = name
        if body.get("user_id"):
            tags.setdefault("mlflow.user", str(body["user_id"]))
        start_ms = _int(body.get("start_time"), "start_time", int(time.time() * 1000))
        start = ingest_pb2.RunStart(name=name, start_ms=start_ms, parent_run_id=tags.get("mlflow.parentRunId", ""),
                                    host=ingest_pb2.HostInfo(hostname=tags.get("mlflow.source.name", "")[:250]))
        await self._send(token, source, project, run_id, [{"run_start": start}, {"tags": ingest_pb2.Tags(values=tags)}])
        self._remember(project, run_id)
        row = RunRow(project, run_id, name, "RUNNING", tags.get("mlflow.user", ""), "active", start_ms, None, [],
                     start.parent_run_id, tags=tags)
        return {"run": run_json(row)}

    async def update_run(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        status = str(body.get("status") or "")
        if status and status not in STATUSES:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"status {status!r} is not one of {', '.join(STATUSES)}")
        out: list[dict[str, Any]] = []
        if body.get("run_name"):
            out.append({"tags": ingest_pb2.Tags(values={"mlflow.runName": str(body["run_name"])})})
        mem = self._memory(project, run_id)
        now = int(time.time() * 1000)
        if status in ("RUNNING", "SCHEDULED"):
            await self._settle([(project, run_id)])
            if (await asyncio.to_thread(self.reads.run_status, project, run_id) or "running") != "running":
                mem.session, mem.session_start_ms = uuid.uuid4().hex, now
                mem.points = mem.batches = 0
                out.append({"run_resume": ingest_pb2.RunResume(session=mem.session, resume_ms=now)})
        elif status:
            end_ms = _int(body.get("end_time"), "end_time", now)
            # The counts of what this role acknowledged for the run (or its resumed session); a finish is a batch too.
            out.append({"run_finish": ingest_pb2.RunFinish(
                status=STATUSES[status], end_ms=end_ms, points_acked=mem.points, batches_acked=mem.batches + 1,
                session=mem.session, session_start_ms=mem.session_start_ms if mem.session else 0)})
        if out:
            await self._send(token, source, project, run_id, out)
        rows = await self._rows(project, [run_id])
        return {"run_info": run_json(rows[0])["info"]} if rows else {}

    async def _set_lifecycle(self, body: dict[str, Any], token: Token, source: str, stage: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        await self._send(token, source, project, run_id, [{"tags": ingest_pb2.Tags(values={LIFECYCLE_TAG: stage})}])
        return {}

    async def delete_run(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        return await self._set_lifecycle(body, token, source, "deleted")

    async def restore_run(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        return await self._set_lifecycle(body, token, source, "active")

    @staticmethod
    def _metrics(items: list[dict[str, Any]], where: str) -> ingest_pb2.Metrics:
        names: dict[str, int] = {}
        m = ingest_pb2.Metrics()
        for i, item in enumerate(items):
            prefix = f"{where}[{i}]." if where else ""
            key = _str(item, "key") if not where else str(item.get("key") or "")
            problem = metric_name_problem(key)
            if problem:
                raise MlflowError("INVALID_PARAMETER_VALUE", f"{prefix}key: {problem}")
            step = _int(item.get("step"), prefix + "step", 0)
            m.name_index.append(names.setdefault(key, len(names)))
            m.steps.append(step)
            m.timestamps_ms.append(_int(item.get("timestamp"), prefix + "timestamp"))  # required, as MLflow has it
            m.values.append(_float(item.get("value"), prefix + "value"))
        m.names.extend(names)
        return m

    @staticmethod
    def _pairs(items: list[dict[str, Any]], where: str) -> dict[str, str]:
        out = {}
        for i, item in enumerate(items):
            if item.get("key") in (None, ""):
                raise MlflowError("INVALID_PARAMETER_VALUE", f"{where}[{i}].key: Missing value for required parameter 'key'.")
            out[_str(item, "key")] = _str(item, "value", required=False)
        return out

    async def log_metric(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        metrics = self._metrics([body], "")
        await self._model_metrics(run_id, [body], metrics, token, source)
        await self._send(token, source, project, run_id, [{"metrics": metrics}])
        return {}

    async def _model_metrics(self, run_id: str, items: list[dict[str, Any]], metrics: ingest_pb2.Metrics, token: Token,
                             source: str) -> None:
        """Metrics that name a logged model are the model's too (MLflow 3): its points, where each came from (run,
        dataset: a tag per metric), and the datasets it was measured on (lineage, and search_logged_models' filter)."""
        by_model: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if item.get("model_id"):
                by_model.setdefault(_str(item, "model_id"), []).append(i)
        for model_id, picked in by_model.items():
            model = await self._model({"model_id": model_id}, token, "ingest")
            m = ingest_pb2.Metrics()
            names: dict[str, int] = {}
            tags: dict[str, str] = {}
            datasets: dict[tuple[str, str], ingest_pb2.DatasetUse] = {}
            for i in picked:
                key = metrics.names[metrics.name_index[i]]
                m.name_index.append(names.setdefault(key, len(names)))
                m.steps.append(metrics.steps[i])
                m.timestamps_ms.append(metrics.timestamps_ms[i])
                m.values.append(metrics.values[i])
                ds_name = _str(items[i], "dataset_name", required=False)
                ds_digest = _str(items[i], "dataset_digest", required=False)
                tags[MODEL_METRIC_TAG + key] = json.dumps({"run_id": run_id, "dataset_name": ds_name,
                                                           "dataset_digest": ds_digest} if ds_name else {"run_id": run_id})
                if ds_name:
                    datasets[(ds_name, ds_digest)] = ingest_pb2.DatasetUse(
                        uri=dataset_uri(ds_name, "", ""), name=ds_name, digest=ds_digest)
            m.names.extend(names)
            out: list[dict[str, Any]] = [{"metrics": m}, {"tags": ingest_pb2.Tags(values=tags)}]
            out += [{"dataset": d} for d in datasets.values()]
            await self._send(token, source, model.project, model.run_id, out)

    async def log_param(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        key = _str(body, "key")
        values = {key: param_json(_str(body, "value", required=False))}
        await self._send(token, source, project, run_id, [{"params": ingest_pb2.Params(values=values)}])
        return {}

    async def set_tag(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        values = {_str(body, "key"): _str(body, "value", required=False)}
        await self._send(token, source, project, run_id, [{"tags": ingest_pb2.Tags(values=values)}])
        return {}

    async def delete_tag(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        key = _str(body, "key")
        rows = await self._rows(project, [run_id])
        if rows and rows[0].lifecycle_stage == "deleted":
            raise MlflowError("INVALID_PARAMETER_VALUE", f"The run {run_id} must be in the 'active' state. Current state "
                                                         "is deleted.")
        if not rows or key not in rows[0].tags:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No tag with name: {key} in run with id {run_id}")
        await self._send(token, source, project, run_id, [{"tags": ingest_pb2.Tags(values={key: DELETED_TAG})}])
        return {}

    async def log_batch(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        metrics, params, tags = (_items(body, k) for k in ("metrics", "params", "tags"))
        for name, items, limit in (("metrics", metrics, MAX_BATCH_METRICS), ("params", params, MAX_BATCH_PARAMS),
                                   ("tags", tags, MAX_BATCH_TAGS)):
            if len(items) > limit:
                raise MlflowError("INVALID_PARAMETER_VALUE", f"A batch logging request can contain at most {limit} "
                                                             f"{name}. Got {len(items)} {name}.")
        if len(metrics) + len(params) + len(tags) > MAX_BATCH_TOTAL:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"A batch logging request can contain at most {MAX_BATCH_TOTAL} "
                                                         "metrics, params and tags in total.")
        out: list[dict[str, Any]] = []
        if params:
            out.append({"params": ingest_pb2.Params(values={k: param_json(v) for k, v in self._pairs(params, "params").items()})})
        if tags:
            out.append({"tags": ingest_pb2.Tags(values=self._pairs(tags, "tags"))})
        if metrics:
            out.append({"metrics": self._metrics(metrics, "metrics")})
            await self._model_metrics(run_id, metrics, out[-1]["metrics"], token, source)
        if out:
            await self._send(token, source, project, run_id, out)
        return {}

    async def log_inputs(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "ingest")
        out = []
        for i, item in enumerate(_items(body, "datasets")):
            ds = item.get("dataset") or {}
            if not isinstance(ds, dict):
                raise MlflowError("INVALID_PARAMETER_VALUE", f"datasets[{i}].dataset: expected an object")
            text = {k: _str(ds, k, required=False) for k in ("name", "digest", "source_type", "source", "schema",
                                                               "profile")}
            uri = dataset_uri(text["name"], text["source_type"], text["source"])
            if not uri:
                raise MlflowError("INVALID_PARAMETER_VALUE", f"datasets[{i}].dataset: needs a name or a source URI")
            tags = self._pairs(_items(item, "tags"), f"datasets[{i}].tags")
            out.append({"dataset": ingest_pb2.DatasetUse(uri=uri, input_tags=tags, name=text["name"], digest=text["digest"],
                                                         source_type=text["source_type"], source=text["source"],
                                                         schema=text["schema"], profile=text["profile"])})
        for item in _items(body, "models"):
            model = await self._model({"model_id": _str(item, "model_id")}, token, "read")
            out.append({"dataset": ingest_pb2.DatasetUse(uri=MODEL_URI + model.run_id, name=model.run_id,
                                                         source_type="mlflow.logged_model")})
        if out:
            await self._send(token, source, project, run_id, out)
        return {}

    async def log_model(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        """MLflow 2's model history: a tag the run keeps, as MLflow stores it."""
        project, run_id = await self._run(body, token, "ingest")
        await self._send(token, source, project, run_id,
                         [{"tags": ingest_pb2.Tags(values={"mlflow.log-model.history": _str(body, "model_json")})}])
        return {}

    # ---- logged models (MLflow 3): each is a run labelled MODEL_LABEL, its source run as the parent ----

    async def _model(self, body: dict[str, Any], token: Token, scope: str) -> RunRow:
        model_id = _str(body, "model_id")
        try:
            project, _ = await self._run({"run_id": model_id}, token, scope)
        except MlflowError:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Logged model with ID '{model_id}' not found.") from None
        rows = await self._rows(project, [model_id], models=True)
        if not rows:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Logged model with ID '{model_id}' not found.")
        if rows[0].lifecycle_stage == "deleted" and str(body.get("allow_deleted", "")).lower() != "true":
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Logged model with ID '{model_id}' not found.")
        return rows[0]

    async def create_logged_model(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        project = project_of(str(body.get("experiment_id") or "0"))
        authorize(token, project, "ingest")
        await self._experiment(project, token, deleted_ok=False)
        model_id = "m-" + uuid.uuid4().hex
        name = str(body.get("name") or f"model-{model_id[2:10]}")
        source_run = str(body.get("source_run_id") or "")
        tags = self._pairs(_items(body, "tags"), "tags")
        tags["mlflow.model.status"] = "LOGGED_MODEL_PENDING"
        if body.get("model_type"):
            tags["mlflow.model.type"] = str(body["model_type"])
        start = ingest_pb2.RunStart(name=name, start_ms=int(time.time() * 1000), parent_run_id=source_run,
                                    tags=[MODEL_LABEL])
        out: list[dict[str, Any]] = [{"run_start": start}, {"tags": ingest_pb2.Tags(values=tags)}]
        params = self._pairs(_items(body, "params"), "params")
        if params:
            out.append({"params": ingest_pb2.Params(values={k: param_json(v) for k, v in params.items()})})
        await self._send(token, source, project, model_id, out)
        self._remember(project, model_id)
        row = RunRow(project, model_id, name, "RUNNING", "", "active", start.start_ms, None, [MODEL_LABEL], source_run,
                     tags=tags, params={k: param_json(v) for k, v in params.items()})
        return {"model": model_json(row)}

    async def get_logged_model(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return {"model": model_json(await self._model(body, token, "read"))}

    async def finalize_logged_model(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        row = await self._model(body, token, "ingest")
        status = str(body.get("status") or "")
        if status not in ("LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED", "LOGGED_MODEL_PENDING"):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"status {status!r} is not LOGGED_MODEL_READY or "
                                                         "LOGGED_MODEL_UPLOAD_FAILED")
        await self._send(token, source, row.project, row.run_id,
                         [{"tags": ingest_pb2.Tags(values={"mlflow.model.status": status})}])
        return {"model": model_json((await self._rows(row.project, [row.run_id], models=True))[0])}

    async def delete_logged_model(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        row = await self._model(body, token, "ingest")
        await self._send(token, source, row.project, row.run_id, [{"tags": ingest_pb2.Tags(values={LIFECYCLE_TAG: "deleted"})}])
        return {}

    async def set_logged_model_tags(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        row = await self._model(body, token, "ingest")
        tags = self._pairs(list(body.get("tags") or []), "tags")
        if tags:
            await self._send(token, source, row.project, row.run_id, [{"tags": ingest_pb2.Tags(values=tags)}])
        return {}

    async def delete_logged_model_tag(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        row = await self._model(body, token, "ingest")
        key = _str(body, "tag_key")
        if key not in row.tags or key.startswith("mlflow.model.") or key == MODEL_LABEL:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"No tag with key {key!r} found for model with ID {row.run_id!r}.")
        await self._send(token, source, row.project, row.run_id, [{"tags": ingest_pb2.Tags(values={key: DELETED_TAG})}])
        return {}

    async def log_logged_model_params(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        row = await self._model(body, token, "ingest")
        params = self._pairs(list(body.get("params") or []), "params")
        if params:
            await self._send(token, source, row.project, row.run_id,
                             [{"params": ingest_pb2.Params(values={k: param_json(v) for k, v in params.items()})}])
        return {}

    async def search_logged_models(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        projects = self._readable_projects(body, token)
        conds = [Cond(c.kind, MODEL_AS_RUN.get(c.key, c.key) if c.kind == "attr" else c.key, c.op, c.value)
                 for c in parse_filter(body.get("filter"), attrs=MODEL_ATTRS)]
        orders = []
        for o in body.get("order_by") or []:
            field_name = str(o.get("field_name") or "")
            kind, key = ("attr", field_name) if "." not in field_name else field_name.split(".", 1)
            kind = {"metrics": "metric", "params": "param", "tags": "tag", "attributes": "attr"}.get(kind, kind)
            if kind == "attr":
                if key not in MODEL_ATTRS:
                    raise MlflowError("INVALID_PARAMETER_VALUE", f"order_by: {field_name!r} is not a logged model field")
                key = MODEL_AS_RUN.get(key, key)
            orders.append(Order(kind, key, bool(o.get("ascending", True))))
        entries = [(_str(d, "dataset_name"), _str(d, "dataset_digest", required=False)) for d in _items(body, "datasets")]
        if entries:  # models measured on any of these datasets (a metric of theirs names it)
            conds.append(Cond("dataset", "entries", "IN", tuple(entries)))
        limit = min(_int(body.get("max_results"), "max_results", 100), MAX_RESULTS)
        offset = page_offset(body.get("page_token"))
        rows, token_out = await self._page(projects, conds, orders, view="ACTIVE_ONLY", offset=offset, limit=limit, models=True)
        return {"models": [model_json(r) for r in rows], **token_out}

    async def log_outputs(self, body: dict[str, Any], token: Token, source: str) -> dict[str, Any]:
        """The logged models a run produced, each at a step: the run's outputs (artifacts named models:/<id>)."""
        project, run_id = await self._run(body, token, "ingest")
        out = []
        for i, item in enumerate(_items(body, "models")):
            model = await self._model({"model_id": _str(item, "model_id")}, token, "read")
            out.append({"artifact": ingest_pb2.Artifact(uri=MODEL_URI + model.run_id,
                                                        step=_int(item.get("step"), f"models[{i}].step", 0))})
        if out:
            await self._send(token, source, project, run_id, out)
        return {}

    # ---- reads ----

    async def _barrier(self, projects: list[str], pending: set[str]) -> set[str]:
        """Wait until these acknowledged batches are stored (or read_wait_s passed: then read what is there); returns
        the ones still not stored."""
        if not pending:
            return pending
        started = time.monotonic()
        deadline = started + self.config.mlflow.read_wait_s
        while pending:
            ids = sorted(pending)
            stored = await asyncio.to_thread(self.reads.stored_batches, projects, ids)
            pending.difference_update(stored)
            if not pending or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        tm.MLFLOW_READ_WAIT.observe(time.monotonic() - started)
        if pending:
            log.warning("%d acknowledged batches were not stored within %.0f s; the read may miss them (is the sink "
                        "running?)", len(pending), self.config.mlflow.read_wait_s)
        return pending

    async def _settle(self, keys: list[tuple[str, str]]) -> None:
        """The read barrier for these runs: wait for this role's acknowledged batches of them to be stored."""
        mems = [m for k in keys if (m := self.runs.get(k)) is not None and m.pending]
        if not mems:
            return
        pending = set().union(*(m.pending for m in mems))
        stored = pending - await self._barrier(sorted({p for p, _ in keys}), set(pending))
        for m in mems:
            m.pending -= stored

    async def _rows(self, project: str, run_ids: list[str], *, models: bool | None = None) -> list[RunRow]:
        await self._settle([(project, r) for r in run_ids])
        rows = await asyncio.to_thread(self.reads.search, [project], [Cond("attr", "run_id", "IN", tuple(run_ids))], [],
                                       view="ALL", offset=0, limit=len(run_ids), models=models)
        await asyncio.to_thread(self.reads.details, rows)
        return rows

    async def get_run(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "read")
        rows = await self._rows(project, [run_id])
        if not rows:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
        return {"run": run_json(rows[0])}

    def _readable_projects(self, body: dict[str, Any], token: Token) -> list[str]:
        """The projects of the request's experiment_ids, each readable by the token."""
        projects = []
        for exp_id in as_list(body.get("experiment_ids")):
            project = project_of(str(exp_id))
            authorize(token, project, "read")
            projects.append(project)
        if not projects:
            raise MlflowError("INVALID_PARAMETER_VALUE", "experiment_ids: name at least one experiment")
        return projects

    async def _page(self, projects: list[str], conds: list[Cond], orders: list[Order], *, view: str, offset: int, limit: int,
                    models: bool) -> tuple[list[RunRow], dict[str, str]]:
        """One page of a search, with details, after this role's pending writes to those projects are stored; and
        the next page's token when there is more."""
        await self._settle([k for k, m in self.runs.items() if k[0] in projects and m.pending])
        rows = await asyncio.to_thread(self.reads.search, projects, conds, orders, view=view, offset=offset,
                                       limit=limit + 1, models=models)
        more = len(rows) > limit
        rows = rows[:limit]
        await asyncio.to_thread(self.reads.details, rows)
        return rows, ({"next_page_token": next_page(offset + limit)} if more else {})

    async def search_runs(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        projects = self._readable_projects(body, token)
        conds = parse_run_filter(body.get("filter"))
        orders = parse_order_by(as_list(body.get("order_by")))
        view = str(body.get("run_view_type") or "ACTIVE_ONLY")
        if view not in ("ACTIVE_ONLY", "DELETED_ONLY", "ALL"):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"run_view_type {view!r} is not ACTIVE_ONLY, DELETED_ONLY or ALL")
        limit = _int(body.get("max_results"), "max_results", 1000)
        if not 0 < limit <= MAX_RESULTS:
            raise invalid_value(limit, "max_results", f"it must be between 1 and {MAX_RESULTS}")
        offset = page_offset(body.get("page_token"))
        rows, token_out = await self._page(projects, conds, orders, view=view, offset=offset, limit=limit, models=False)
        return {"runs": [run_json(r) for r in rows], **token_out}

    async def metric_history(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        project, run_id = await self._run(body, token, "read")
        key = _str(body, "metric_key")
        limit = min(_int(body.get("max_results"), "max_results", 25_000_000), 25_000_000)
        offset = page_offset(body.get("page_token"))
        await self._settle([(project, run_id)])
        points = await asyncio.to_thread(self.reads.history, project, run_id, key, offset=offset, limit=limit + 1)
        out: dict[str, Any] = {"metrics": [{"key": key, "value": _num(v), "timestamp": ts, "step": s}
                                           for v, ts, s in points[:limit]]}
        if len(points) > limit:
            out["next_page_token"] = next_page(offset + limit)
        return out

    async def _histories(self, run_ids: list[str], key: str, token: Token) -> dict[str, list[tuple[str, float, int, int]]]:
        """By run id, (run id, value, timestamp, step) of one metric of each run the token may read, once this role's
        pending writes to them are stored."""
        pairs = [await self._run({"run_id": r}, token, "read") for r in run_ids]
        await self._settle(pairs)
        by_run: dict[str, list[tuple[str, float, int, int]]] = {}
        for p in await asyncio.to_thread(self.reads.history_range, pairs, key, None, None):
            by_run.setdefault(p[0], []).append(p)
        return by_run

    async def metric_history_bulk(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """Several runs' full history of one metric (MLflow's ajax get-history-bulk): by run id, each run's points by
        time, step and value, at most ``max_results`` in all."""
        run_ids = sorted({str(r) for r in as_list(body.get("run_id"))})
        if not run_ids:
            raise MlflowError("INVALID_PARAMETER_VALUE", "GetMetricHistoryBulk request must specify at least one run_id.")
        if len(run_ids) > 100:
            raise MlflowError("INVALID_PARAMETER_VALUE", "GetMetricHistoryBulk request cannot specify more than 100 "
                                                         f"run_ids. Received {len(run_ids)} run_ids.")
        if body.get("metric_key") is None:
            raise MlflowError("INVALID_PARAMETER_VALUE", "GetMetricHistoryBulk request must specify a metric_key.")
        key = str(body["metric_key"])
        limit = min(_int(body.get("max_results"), "max_results", MAX_HISTORY_BULK), MAX_HISTORY_BULK)
        by_run = await self._histories(run_ids, key, token)
        out = [{"key": key, "value": _num(v), "timestamp": ts, "step": s, "run_id": r}
               for run_id in run_ids for r, v, ts, s in sorted(by_run.get(run_id, []), key=lambda p: (p[2], p[3], p[1]))]
        return {"metrics": out[:limit]}

    async def metric_history_bulk_interval(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """Several runs' history of one metric at a sample of steps, as MLflow samples them (the UI's charts): about
        ``max_results`` steps spread over the union of the runs' steps in the range, plus each run's first and last."""
        run_ids = [str(r) for r in as_list(body.get("run_ids"))]
        if not run_ids:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Missing value for required parameter 'run_ids'.")
        if len(run_ids) > 100:
            raise MlflowError("INVALID_PARAMETER_VALUE", "GetMetricHistoryBulkInterval request must specify at most 100 "
                                                         f"run_ids. Received {len(run_ids)} run_ids.")
        key = _str(body, "metric_key")
        limit = _int(body.get("max_results"), "max_results", 320)
        if not 1 <= limit <= 2500:
            raise MlflowError("INVALID_PARAMETER_VALUE", "max_results must be between 1 and 2500.")
        start, end = body.get("start_step"), body.get("end_step")
        if (start is None) != (end is None):
            raise MlflowError("INVALID_PARAMETER_VALUE", "If either start step or end step are specified, both must be "
                                                         "specified.")
        if start is not None and _int(start, "start_step") > _int(end, "end_step"):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"end_step must be greater than start_step. Found "
                                                         f"start_step={start} and end_step={end}.")
        by_run = await self._histories(run_ids, key, token)
        steps = sorted({p[3] for points in by_run.values() for p in points})
        lo = _int(start, "start_step") if start is not None else 0
        hi = _int(end, "end_step") if end is not None else (steps[-1] if steps else 0)
        if lo > hi:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"end_step must be greater than start_step. Found "
                                                         f"start_step={lo} and end_step={hi}.")
        edges = {s for pts in by_run.values() for s in (pts[0][3], pts[-1][3]) if lo <= s <= hi}
        inside = [s for s in steps if lo <= s <= hi]
        if len(inside) <= limit:
            sampled = set(inside)
        else:
            sampled = {inside[int(i * len(inside) / limit)] for i in range(limit)} | {inside[-1]}
        sampled |= edges
        out = []
        for run_id in run_ids:
            pts = [p for p in by_run.get(run_id, []) if p[3] in sampled]
            cap = max(limit, len(sampled))
            if len(pts) > cap:  # many values at one step: evenly spaced over the run's history
                pts = [pts[round(i * (len(pts) - 1) / (cap - 1))] for i in range(cap)] if cap > 1 else pts[-1:]
            out += [{"key": key, "value": _num(v), "timestamp": ts, "step": s, "run_id": r} for r, v, ts, s in pts]
        return {"metrics": out}

    # ---- artifacts (the mlflow-artifacts proxy) ----

    def _artifact_target(self, path: str, token: Token, scope: str) -> tuple[str, str, Path]:
        """(project, run id, file path) for '<experiment id>/<run id>/artifacts/<path>'; nothing outside the root."""
        parts = [p for p in path.strip("/").split("/") if p != ""]
        if any(p in (".", "..") or not SAFE_SEGMENT.match(p) for p in parts) or len(parts) < 2:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid artifact path: {path[:200]!r}")
        project = project_of(parts[0])
        if not gov.NAME_RE.match(project) or not gov.NAME_RE.match(parts[1]):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid artifact path: {path[:200]!r}")
        authorize(token, project, scope)
        target = self.artifact_root.joinpath(project, *parts[1:])
        # Confined to the run's own folder once links are resolved: a link in one run's folder reaches no other's.
        if not target.resolve().is_relative_to(self.artifact_root.resolve() / project / parts[1]):
            raise MlflowError("INVALID_PARAMETER_VALUE", f"Invalid artifact path: {path[:200]!r}")
        return project, parts[1], target

    async def upload_run_artifact(self, request: web.Request, token: Token) -> dict[str, Any]:
        """MLflow's ajax upload-artifact (the UI's): one file of at most 10 MB to a run's ``path``, named by the query
        string (``run_uuid``, ``path``), the bytes as the body."""
        run_id, path = request.query.get("run_uuid", ""), request.query.get("path", "")
        if not run_id:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Request must specify run_uuid.")
        if not path:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Request must specify path.")
        _check_relative(path)
        if (request.content_length or 0) > UI_UPLOAD_BYTES:
            raise MlflowError("INVALID_PARAMETER_VALUE", "Artifact size is too large. Max size is 10MB.")
        project, run_id = await self._run({"run_id": run_id}, token, "ingest")
        return await self.upload(request, f"{experiment_id(project)}/{run_id}/artifacts/{path}", token,
                                 limit=UI_UPLOAD_BYTES, empty="Request must specify data.")

    async def upload(self, request: web.Request, path: str, token: Token, *, limit: int | None = None,
                     empty: str = "") -> dict[str, Any]:
        """The request's body as the file at ``path`` ('<experiment id>/<run id>/artifacts/...'), at most ``limit``
        bytes (mlflow.max_artifact_bytes); an empty body is refused with ``empty`` where that is given."""
        project, run_id, target = self._artifact_target(path, token, "ingest")
        if (await self._run({"run_id": run_id}, token, "ingest"))[0] != project:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found in experiment {experiment_id(project)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        limit = min(limit or self.config.mlflow.max_artifact_bytes, self.config.mlflow.max_artifact_bytes)
        expected = request.headers.get(SHA256_HEADER, "").lower()
        if "Content-Range" in request.headers:  # one part of a resumable upload (runstream/mlflow/uploads.py)
            if not re.fullmatch(r"[0-9a-f]{64}", expected):
                raise MlflowError("INVALID_PARAMETER_VALUE", "a resumable upload (Content-Range) needs the whole "
                                                             f"file's sha256 in {SHA256_HEADER} (64 hex digits)")
            rng = parse_range(request.headers["Content-Range"])
            progress = await self.partial.receive(request, target, expected, rng, limit)
            if progress.completed_now:
                await self._record_artifact(token, request, project, run_id, path, target, rng.total, expected)
            return {"offset": progress.held, "complete": progress.done}
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        digest, size = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise MlflowError("INVALID_PARAMETER_VALUE", f"artifact {path[:200]!r} is larger than "
                                                                     f"{limit} bytes (mlflow.max_artifact_bytes)")
                    digest.update(chunk)
                    f.write(chunk)
            if empty and size == 0:
                raise MlflowError("INVALID_PARAMETER_VALUE", empty)
            if expected and expected != digest.hexdigest():  # cut or changed in flight: keep nothing
                raise MlflowError("INVALID_PARAMETER_VALUE", f"artifact {path[:200]!r}: the bytes received have sha256 "
                                                             f"{digest.hexdigest()}, not {expected}; send it again")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        await self._record_artifact(token, request, project, run_id, path, target, size, digest.hexdigest())
        return {}

    async def _record_artifact(self, token: Token, request: web.Request, project: str, run_id: str, path: str,
                               target: Path, size: int, sha256: str) -> None:
        """The stored file in the run's lineage (an artifact record through the pipeline)."""
        art = ingest_pb2.Artifact(uri=f"mlflow-artifacts:/{path.strip('/')}", stored_uri=str(target), size=size,
                                  sha256=sha256)
        await self._send(token, request.remote or "", project, run_id, [{"artifact": art}])

    async def _run_artifact_path(self, body: dict[str, Any], token: Token, path: str) -> tuple[str, Path]:
        """(the run's artifact root as '<experiment id>/<run id>/artifacts', the file or folder ``path`` under it) of
        the request's run, readable by the token."""
        _check_relative(path)
        project, run_id = await self._run(body, token, "read")
        root = f"{experiment_id(project)}/{run_id}/artifacts"
        return root, self._artifact_target(f"{root}/{path}", token, "read")[2]

    async def list_run_artifacts(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """MLflow's artifacts/list: a run's files under ``path``, named from the run's artifact root."""
        path = str(body.get("path") or "").strip("/")
        root, target = await self._run_artifact_path(body, token, path)
        return {"root_uri": f"mlflow-artifacts:/{root}", "files": _listing(target, f"{path}/" if path else "")}

    async def version_artifact(self, body: dict[str, Any], token: Token) -> Path:
        """The file behind MLflow's model-versions/get-artifact (``name``, ``version``, ``path``): ``path`` under the
        version's files where they are a run's or a logged model's (runs:/, mlflow-artifacts:/ or models:/m-...)."""
        path = _check_relative(_str(body, "path"))
        where = (await self.registry.download_uri(body, token))["artifact_uri"]
        if where.startswith("runs:/"):
            run_id, _, sub = where[len("runs:/"):].partition("/")
        elif m := re.match(r"mlflow-artifacts:/+[^/]+/([^/]+)/artifacts/?(.*)\Z", where):
            run_id, sub = m.group(1), m.group(2)
        else:
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"model version files at {where[:200]!r} are not kept by runstream")
        return await self.run_artifact({"run_id": run_id, "path": f"{sub.strip('/')}/{path}".strip("/")}, token)

    async def list_model_artifacts(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """A logged model's files under ``artifact_directory_path`` (its files are kept as a run's are)."""
        model = await self._model(body, token, "read")
        path = str(body.get("artifact_directory_path") or "").strip("/")
        root, target = await self._run_artifact_path({"run_id": model.run_id}, token, path)
        return {"root_uri": f"mlflow-artifacts:/{root}", "files": _listing(target, f"{path}/" if path else "")}

    async def model_artifact(self, body: dict[str, Any], token: Token) -> Path:
        """The file behind MLflow's logged-models/<id>/artifacts/files (``artifact_file_path``)."""
        model = await self._model(body, token, "read")
        if not body.get("artifact_file_path"):
            raise MlflowError("BAD_REQUEST", 'Request must include the "artifact_file_path" query parameter.')
        return await self.run_artifact({"run_id": model.run_id, "path": _str(body, "artifact_file_path")}, token)

    async def run_artifact(self, body: dict[str, Any], token: Token) -> Path:
        """The file behind MLflow's get-artifact (``run_uuid`` or ``run_id``, ``path``)."""
        path = _str(body, "path").strip("/")
        _, target = await self._run_artifact_path(body, token, path)
        run_id = _str(body, "run_id", "run_uuid")
        if not target.is_file():
            raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"artifact {path[:200]!r} of run {run_id} does not exist")
        return target

    async def search_model_versions(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        return await self.registry.search_versions(body, token)

    async def search_datasets(self, body: dict[str, Any], token: Token) -> dict[str, Any]:
        """The datasets the experiments' runs used (MLflow's experiments/search-datasets)."""
        if not as_list(body.get("experiment_ids")):
            raise MlflowError("INVALID_PARAMETER_VALUE", "SearchDatasets request must specify at least one experiment_id.")
        if (n := len(as_list(body.get("experiment_ids")))) > MAX_DATASET_EXPERIMENTS:
            raise MlflowError("INVALID_PARAMETER_VALUE", "SearchDatasets request cannot specify more than "
                                                         f"{MAX_DATASET_EXPERIMENTS} experiment_ids. Received {n} experiment_ids.")
        projects = self._readable_projects(body, token)
        await self._settle([k for k, m in self.runs.items() if k[0] in projects and m.pending])
        rows = await asyncio.to_thread(self.reads.datasets, projects)
        out = []
        for project, uri, name, digest, context in rows:
            summary = {"experiment_id": experiment_id(project), "name": name or dataset_name(uri), "digest": digest}
            out.append(summary | ({"context": context} if context else {}))
        return {"dataset_summaries": out}

    def list_artifacts(self, path: str, token: Token) -> dict[str, Any]:
        if not path.strip("/"):
            raise MlflowError("INVALID_PARAMETER_VALUE", "path: name '<experiment id>/<run id>/artifacts[/...]'")
        _, _, target = self._artifact_target(path, token, "read")
        if not target.is_dir():
            return {}
        return {"files": _listing(target)}


def _listing(folder: Path, prefix: str = "") -> list[dict[str, Any]]:
    """A folder's entries as MLflow lists files (path, is_dir, file_size), named ``prefix`` + name; uploads still in
    flight (.part files) left out; an absent folder lists nothing."""
    if not folder.is_dir():
        return []
    files: list[dict[str, Any]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.startswith(".") and entry.name.endswith(".part"):
            continue
        name = prefix + entry.name
        files.append({"path": name, "is_dir": True} if entry.is_dir()
                     else {"path": name, "is_dir": False, "file_size": entry.stat().st_size})
    return files


def _check_relative(path: str) -> str:
    """``path`` if it stays under its root (no '..', '.', NUL or leading '/'), else MLflow's 'Invalid path' 400."""
    if any(p in ("..", ".") for p in path.split("/")) or "\x00" in path or path.startswith("/"):
        raise MlflowError("INVALID_PARAMETER_VALUE", "Invalid path")
    return path


def _token(tokens: TokenStore, request: web.Request) -> Token:
    """The caller's token: MLflow's bearer token (MLFLOW_TRACKING_TOKEN) or basic auth whose password is one."""
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (ValueError, binascii.Error):
            raise AuthError("malformed basic authorization header") from None
        return tokens.lookup(password or user)
    return tokens.authenticate(auth)


Handler = Callable[..., Awaitable[dict[str, Any]]]


class MlflowServer:
    """The stage: the governance follower (tokens, experiments), a Kafka producer, an aiohttp server."""

    def __init__(self, config: RunstreamConfig) -> None:
        self.config = config
        self.publisher = Publisher(config)
        self.tokens = TokenStore(config.tokens_path)
        self.api = MlflowApi(config, self.publisher, self.tokens, Reads(config))
        self.follower = Follower(config, self.api.apply_control)
        self.api.registry.caught_up = self.follower.caught_up
        self.ui = MlflowUi(self.api, ui_build_dir())
        self.host, port = config.mlflow.listen.rsplit(":", 1)
        self.port = int(port)
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.ssl: ssl.SSLContext | None = None
        if config.mlflow.tls_cert:
            self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl.load_cert_chain(config.mlflow.tls_cert, config.mlflow.tls_key)
        if not is_loopback(self.host) and self.ssl is None:
            raise ConfigError(f"mlflow.listen: {config.mlflow.listen} is not a loopback address and has no TLS; set "
                              "mlflow.tls_cert and mlflow.tls_key, or listen on 127.0.0.1")

    def routes(self) -> dict[str, tuple[str, Handler, bool]]:
        """endpoint -> (HTTP method, handler, whether it takes the request's source)."""
        a = self.api
        return {
            "experiments/create": ("POST", a.create_experiment, False),
            "experiments/get": ("GET", a.get_experiment, False),
            "experiments/get-by-name": ("GET", a.get_experiment_by_name, False),
            "experiments/search": ("POST", a.search_experiments, False),
            "experiments/update": ("POST", a.update_experiment, False),
            "experiments/delete": ("POST", a.delete_experiment, False),
            "experiments/restore": ("POST", a.restore_experiment, False),
            "experiments/set-experiment-tag": ("POST", a.set_experiment_tag, False),
            "experiments/delete-experiment-tag": ("POST", a.delete_experiment_tag, False),
            "runs/create": ("POST", a.create_run, True),
            "runs/get": ("GET", a.get_run, False),
            "runs/update": ("POST", a.update_run, True),
            "runs/delete": ("POST", a.delete_run, True),
            "runs/restore": ("POST", a.restore_run, True),
            "runs/search": ("POST", a.search_runs, False),
            "artifacts/list": ("GET", a.list_run_artifacts, False),
            "experiments/search-datasets": ("POST", a.search_datasets, False),
            "runs/log-metric": ("POST", a.log_metric, True),
            "runs/log-parameter": ("POST", a.log_param, True),
            "runs/set-tag": ("POST", a.set_tag, True),
            "runs/delete-tag": ("POST", a.delete_tag, True),
            "runs/log-batch": ("POST", a.log_batch, True),
            "runs/log-inputs": ("POST", a.log_inputs, True),
            "runs/log-model": ("POST", a.log_model, True),
            "metrics/get-history": ("GET", a.metric_history, False),
            "metrics/get-history-bulk-interval": ("GET", a.metric_history_bulk_interval, False),
            "metrics/get-history-bulk": ("GET", a.metric_history_bulk, False),
            "runs/outputs": ("POST", a.log_outputs, True),
            "logged-models": ("POST", a.create_logged_model, True),
            "logged-models/search": ("POST", a.search_logged_models, False),
            "logged-models/{model_id}": ("GET", a.get_logged_model, False),
            "logged-models/{model_id} PATCH": ("PATCH", a.finalize_logged_model, True),
            "logged-models/{model_id} DELETE": ("DELETE", a.delete_logged_model, True),
            "logged-models/{model_id}/tags": ("PATCH", a.set_logged_model_tags, True),
            "logged-models/{model_id}/tags/{tag_key}": ("DELETE", a.delete_logged_model_tag, True),
            "logged-models/{model_id}/params": ("POST", a.log_logged_model_params, True),
            "logged-models/{model_id}/artifacts/directories": ("GET", a.list_model_artifacts, False),
            **self.registry_routes(),
        }

    def registry_routes(self) -> dict[str, tuple[str, Handler, bool]]:
        r = self.api.registry
        return {
            "registered-models/create": ("POST", r.create_model, False),
            "registered-models/get": ("GET", r.get_model, False),
            "registered-models/rename": ("POST", r.rename_model, False),
            "registered-models/update PATCH": ("PATCH", r.update_model, False),
            "registered-models/delete DELETE": ("DELETE", r.delete_model, False),
            "registered-models/search": ("GET", r.search_models, False),
            "registered-models/get-latest-versions": ("POST", r.latest_versions, False),
            "registered-models/set-tag": ("POST", r.set_model_tag, False),
            "registered-models/delete-tag DELETE": ("DELETE", r.delete_model_tag, False),
            "registered-models/alias POST": ("POST", r.set_alias, False),
            "registered-models/alias DELETE": ("DELETE", r.delete_alias, False),
            "registered-models/alias GET": ("GET", r.version_by_alias, False),
            "model-versions/create": ("POST", r.create_version, False),
            "model-versions/get": ("GET", r.get_version, False),
            "model-versions/update PATCH": ("PATCH", r.update_version, False),
            "model-versions/transition-stage": ("POST", r.transition_stage, False),
            "model-versions/delete DELETE": ("DELETE", r.delete_version, False),
            "model-versions/search": ("GET", r.search_versions, False),
            "model-versions/get-download-uri": ("GET", r.download_uri, False),
            "model-versions/set-tag": ("POST", r.set_version_tag, False),
            "model-versions/delete-tag DELETE": ("DELETE", r.delete_version_tag, False),
        }

    def _endpoint(self, name: str, method: str, handler: Handler, with_source: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def serve(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                token = _token(self.tokens, request)
                body = await request_fields(request)
                body.update(request.match_info)
                args = (body, token, request.remote or "") if with_source else (body, token)
                response = web.json_response(await handler(*args), dumps=_dumps)
            except (RunstreamError, MlflowError) as exc:
                response = error_response(exc)
            except Exception as exc:
                response = error_response(exc)
            tm.MLFLOW_REQUESTS.labels(name, str(response.status)).inc()
            tm.MLFLOW_SECONDS.labels(name).observe(time.perf_counter() - started)
            return response
        return serve

    async def _artifact(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("path", "")
        try:
            token = _token(self.tokens, request)
            if request.method == "PUT":
                return web.json_response(await self.api.upload(request, path, token))
            if not path:  # a listing: GET .../artifacts?path=...
                return web.json_response(self.api.list_artifacts(request.query.get("path", ""), token))
            _, _, target = self.api._artifact_target(path, token, "read")
            if not target.is_file():
                raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"artifact {path[:200]!r} does not exist")
            return web.FileResponse(target, headers={"Content-Type": "application/octet-stream"})
        except Exception as exc:
            return error_response(exc)

    def _ui_route(self, serve: Callable[[web.Request, Token], Awaitable[web.StreamResponse]]
                  ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A UI route: the caller's token first (a browser without one is asked for basic auth), errors as MLflow's."""
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await serve(request, _token(self.tokens, request))
            except Exception as exc:
                return error_response(exc)
        return handle

    def _ui_routes(self, app: web.Application) -> None:
        ui = self.ui

        async def page(request: web.Request, _: Token) -> web.StreamResponse:
            return ui.file(request.match_info.get("path", ""))

        async def artifact(request: web.Request, token: Token) -> web.StreamResponse:
            target = await self.api.run_artifact(await request_fields(request), token)
            return web.FileResponse(target, headers={"Content-Type": "application/octet-stream",
                                                     "X-Content-Type-Options": "nosniff"})

        def fixed(answer: dict[str, Any]) -> Callable[[web.Request, Token], Awaitable[web.StreamResponse]]:
            async def serve(request: web.Request, _: Token) -> web.StreamResponse:
                return web.json_response(answer)
            return serve

        app.router.add_get("/", self._ui_route(page))
        app.router.add_get("/static-files/{path:.+}", self._ui_route(page))
        app.router.add_post("/graphql", self._ui_route(ui.graphql))
        async def version_artifact(request: web.Request, token: Token) -> web.StreamResponse:
            target = await self.api.version_artifact(await request_fields(request), token)
            return web.FileResponse(target, headers={"Content-Type": "application/octet-stream",
                                                     "X-Content-Type-Options": "nosniff"})

        async def upload(request: web.Request, token: Token) -> web.StreamResponse:
            return web.json_response(await self.api.upload_run_artifact(request, token))

        async def model_artifact(request: web.Request, token: Token) -> web.StreamResponse:
            body = {**await request_fields(request), **request.match_info}
            return web.FileResponse(await self.api.model_artifact(body, token),
                                    headers={"Content-Type": "application/octet-stream", "X-Content-Type-Options": "nosniff"})

        for prefix in API_PREFIXES:
            app.router.add_get(f"{prefix}/logged-models/{{model_id}}/artifacts/files", self._ui_route(model_artifact))
        for where in ("/get-artifact", "/ajax-api/2.0/mlflow/get-artifact"):
            app.router.add_get(where, self._ui_route(artifact))
        app.router.add_post("/ajax-api/2.0/mlflow/upload-artifact", self._ui_route(upload))
        for where in ("/model-versions/get-artifact", "/ajax-api/2.0/mlflow/model-versions/get-artifact"):
            app.router.add_get(where, self._ui_route(version_artifact))
        for where, answer in EMPTY_ANSWERS.items():
            app.router.add_route("GET", where, self._ui_route(fixed(answer)))
            app.router.add_route("POST", where, self._ui_route(fixed(answer)))

    async def start(self) -> None:
        await self.follower.start()
        await self.publisher.start()
        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[_merge_slashes])
        for prefix in API_PREFIXES:
            for name, (method, handler, with_source) in self.routes().items():
                path = name.split(" ")[0]
                serve = self._endpoint(path, method, handler, with_source)
                if method in ("GET", "POST") and " " not in name:
                    # Clients send GET endpoints' fields as a query string, and some send POST bodies to GET endpoints.
                    app.router.add_route("GET", f"{prefix}/{path}", serve)
                    app.router.add_route("POST", f"{prefix}/{path}", serve)
                else:
                    app.router.add_route(method, f"{prefix}/{path}", serve)
        app.router.add_route("GET", ARTIFACTS, self._artifact)
        app.router.add_route("GET", ARTIFACTS + "/{path:.+}", self._artifact)
        app.router.add_route("PUT", ARTIFACTS + "/{path:.+}", self._artifact)
        self._ui_routes(app)
        app.router.add_get("/health", _health)
        app.router.add_get("/version", _version)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # A request line of up to 64 KiB: the UI's and MLflow's bulk calls name up to 100 runs in the query string.
        self._runner = web.AppRunner(app, access_log=None, max_line_size=65536)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("MLflow tracking API on %s://%s:%d.", "https" if self.ssl else "http", self.host, self.port)
        if self.config.mlflow.upload_part_ttl_h > 0:
            self._sweeper = asyncio.create_task(self._sweep_parts(), name="upload-part-sweeper")

    async def _sweep_parts(self) -> None:
        """Now and then, the part files of uploads left unfinished longer than mlflow.upload_part_ttl_h go."""
        ttl_s = self.config.mlflow.upload_part_ttl_h * 3600
        while True:
            try:
                removed = await asyncio.to_thread(self.api.partial.sweep, self.api.artifact_root, ttl_s)
                if removed:
                    log.info("Removed %d part files of uploads unfinished for %.0f h.", removed, ttl_s / 3600)
            except OSError as exc:
                log.warning("Sweeping unfinished uploads failed: %s", exc)
            await asyncio.sleep(min(3600.0, ttl_s / 4))

    @staticmethod
    async def _unknown(request: web.Request) -> web.Response:
        return error_response(MlflowError("ENDPOINT_NOT_FOUND", f"{request.method} {request.path}: no such endpoint here "
                                                                "(runstream serves MLflow's tracking and artifact APIs)"))

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.publisher.stop()
        await self.follower.stop()


@web.middleware
async def _merge_slashes(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """'//model-versions/...' as MLflow's clients and tests send it: redirected (method kept) to the single-slash path."""
    if "//" in request.path:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPPermanentRedirect(re.sub("/+", "/", request.raw_path.split("?", 1)[0]) + query)
    return await handler(request)


async def _health(_: web.Request) -> web.Response:
    return web.Response(text="OK")


async def _version(_: web.Request) -> web.Response:
    return web.Response(text="runstream")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


def stages(config: RunstreamConfig) -> list[MlflowServer]:
    """The mlflow role: one HTTP server."""
    return [MlflowServer(config)]
