"""Validation of one Batch. Errors name the field, e.g. ``batches[2].metrics.values``."""

from __future__ import annotations

import re

import numpy as np

from runstream.v1.ingest_pb2 import Batch
from runstream.wire.config import IngestConfig
from runstream.wire.encoding import MAX_TIME_MS
from runstream.wire.errors import ValidationError
from runstream.wire.governance import NAME_RE
from runstream.wire.names import metric_name_problem

BATCH_ID_RE = re.compile(r"[A-Za-z0-9_\-]{8,64}\Z")
MAX_KEY_VALUE = 64 * 1024
# A dataset's description within MLflow's own limits (mlflow/utils/validation.py), the profile held to 1 MiB (MLflow's
# is 16 MiB) so that a use stays well inside one Kafka record.
DATASET_LIMITS = {"digest": 4096, "name": 500, "source_type": 4096, "source": 65535, "schema": 1048575,
                  "profile": 1048575}


def _time(field: str, ms: int) -> None:
    if not 0 <= ms < MAX_TIME_MS:
        raise ValidationError(field, f"{ms} is not a time in milliseconds since 1970 before 2100")


def _name(field: str, value: str, limit: int) -> None:
    if not value:
        raise ValidationError(field, "is empty")
    if len(value) > limit:
        raise ValidationError(field, f"is {len(value)} characters; the limit is {limit}")
    if not NAME_RE.match(value):
        raise ValidationError(field, f"{value[:40]!r} may hold only letters, digits, '.', '_' and '-', starting with a letter or digit")


def _session(field: str, value: str) -> None:
    if not BATCH_ID_RE.match(value):
        raise ValidationError(field, "must be 8..64 characters of [A-Za-z0-9_-]")


def _mapping(field: str, values: object, cfg: IngestConfig) -> None:
    for key, value in values.items():  # type: ignore[attr-defined]
        if not key or len(key) > cfg.max_name_length:
            raise ValidationError(f"{field}[{key[:40]!r}]", f"key must be 1..{cfg.max_name_length} characters")
        if len(value) > MAX_KEY_VALUE:
            raise ValidationError(f"{field}[{key[:40]!r}]", f"value is {len(value)} characters; the limit is {MAX_KEY_VALUE}")


def validate_batch(b: Batch, cfg: IngestConfig, where: str = "batch") -> int:
    """Raise ValidationError for the first problem; return the batch's point count."""
    if not BATCH_ID_RE.match(b.batch_id):
        raise ValidationError(f"{where}.batch_id", "must be 8..64 characters of [A-Za-z0-9_-] (a uuid4 hex works)")
    _name(f"{where}.project", b.project, cfg.max_name_length)
    _name(f"{where}.run_id", b.run_id, 128)
    if b.seq < 1:
        raise ValidationError(f"{where}.seq", "must be >= 1 (per-run sequence numbers start at 1)")
    _time(f"{where}.created_ms", b.created_ms)
    kind = b.WhichOneof("body")
    if kind is None:
        raise ValidationError(f"{where}.body", "is empty: set one of run_start, run_finish, params, tags, metrics")
    if kind == "metrics":
        m = b.metrics
        n = len(m.values)
        if n == 0:
            raise ValidationError(f"{where}.metrics.values", "is empty")
        if n > cfg.max_batch_points:
            raise ValidationError(f"{where}.metrics.values", f"has {n} points; the limit is {cfg.max_batch_points} per batch")
        for col in ("name_index", "steps", "timestamps_ms"):
            got = len(getattr(m, col))
            if got != n:
                raise ValidationError(f"{where}.metrics.{col}", f"has {got} entries but values has {n}")
        if not m.names:
            raise ValidationError(f"{where}.metrics.names", "is empty")
        for i, name in enumerate(m.names):
            problem = metric_name_problem(name, cfg.max_name_length)
            if problem:
                raise ValidationError(f"{where}.metrics.names[{i}]", problem)
        # numpy copies a repeated field's values in C (about 1 ns each); Python's min and max iterate it (30-60).
        top = int(np.array(m.name_index, dtype=np.int64).max())
        if top >= len(m.names):
            raise ValidationError(f"{where}.metrics.name_index", f"refers to name {top} but there are {len(m.names)} names")
        times = np.array(m.timestamps_ms, dtype=np.int64)
        for ms in (int(times.min()), int(times.max())):
            _time(f"{where}.metrics.timestamps_ms", ms)
        return n
    if kind == "run_start":
        rs = b.run_start
        if len(rs.name) > cfg.max_name_length:
            raise ValidationError(f"{where}.run_start.name", f"is longer than {cfg.max_name_length} characters")
        if len(rs.tags) > 1000 or any(len(t) > cfg.max_name_length for t in rs.tags):
            raise ValidationError(f"{where}.run_start.tags", f"at most 1000 tags of at most {cfg.max_name_length} characters")
        _mapping(f"{where}.run_start.config", rs.config, cfg)
        _time(f"{where}.run_start.start_ms", rs.start_ms)
        if rs.HasField("fork_step") and (rs.fork_step < 0 or not rs.parent_run_id):
            raise ValidationError(f"{where}.run_start.fork_step", "needs parent_run_id and must not be negative")
    elif kind == "run_finish":
        rf = b.run_finish
        _time(f"{where}.run_finish.end_ms", rf.end_ms)
        if rf.session:
            _session(f"{where}.run_finish.session", rf.session)
            _time(f"{where}.run_finish.session_start_ms", rf.session_start_ms)
    elif kind == "run_resume":
        _session(f"{where}.run_resume.session", b.run_resume.session)
        _time(f"{where}.run_resume.resume_ms", b.run_resume.resume_ms)
    elif kind == "params":
        _mapping(f"{where}.params.values", b.params.values, cfg)
    elif kind == "tags":
        _mapping(f"{where}.tags.values", b.tags.values, cfg)
    elif kind in ("dataset", "artifact"):
        uri = b.dataset.uri if kind == "dataset" else b.artifact.uri
        if not uri or len(uri) > 4096:
            raise ValidationError(f"{where}.{kind}.uri", "must be 1..4096 characters")
        if kind == "dataset":
            d = b.dataset
            for name, limit in DATASET_LIMITS.items():
                if len(getattr(d, name)) > limit:
                    raise ValidationError(f"{where}.dataset.{name}", f"is {len(getattr(d, name))} characters; the limit "
                                                                     f"is {limit}")
            _mapping(f"{where}.dataset.input_tags", d.input_tags, cfg)
    return 0
