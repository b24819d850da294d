"""MLflow's model in runstream's terms: shared by the MLflow API (runstream.mlflow.api) and the importer
(runstream.integrations.importers), so a run logged through one reads back the same as a run imported by the other."""

from __future__ import annotations

import json
import re
from typing import Any

from runstream.wire.governance import NAME_RE

DEFAULT_PROJECT = "default"  # MLflow's experiment "0", named "Default"
LIFECYCLE_TAG = "runstream.lifecycle"  # MLflow's soft delete of a run (its data stays)
# An artifact upload's headers beyond MLflow's (the SDK and the mlflow role): the whole file's digest, and the bytes
# the server holds of a resumable upload (runstream/mlflow/uploads.py).
SHA256_HEADER = "X-Runstream-Sha256"
OFFSET_HEADER = "X-Runstream-Upload-Offset"


def experiment_id(project: str) -> str:
    return "0" if project == DEFAULT_PROJECT else project


def project_for_experiment(name: str, experiment_id: str = "") -> str:
    """A project name for an MLflow experiment name: itself when it is one, else its letters and digits joined
    by '-' (the importer's rule; the API refuses such names instead)."""
    if name == "Default":
        return DEFAULT_PROJECT
    if NAME_RE.match(name) and len(name) <= 250:
        return name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:250]
    return slug if slug and NAME_RE.match(slug) else f"experiment-{experiment_id or 'unnamed'}"


def param_json(value: str) -> str:
    """A param as stored (JSON): a number or bool whose text is its canonical JSON stays typed (runstream's read API
    compares it as a number); anything else is a JSON string. Either way MLflow reads back the exact text."""
    try:
        parsed = json.loads(value)
        if not isinstance(parsed, str | list | dict) and json.dumps(parsed) == value:
            return value
    except ValueError:
        pass
    return json.dumps(value)


def param_text(stored: str) -> str:
    """What MLflow shows of a stored param: a JSON string's text, anything else as stored."""
    if stored.startswith('"'):
        try:
            return str(json.loads(stored))
        except ValueError:
            pass
    return stored


def dataset_uri(name: str, source_type: str, source: str) -> str:
    """Where an MLflow dataset came from, as runstream's lineage keeps it: its source's location, or for a source
    without one (MLflow's "code" source) its kind and name. Empty when there is neither."""
    try:
        src: Any = json.loads(source or "{}")
    except ValueError:
        src = {}
    if isinstance(src, dict):
        for key in ("uri", "url", "path"):
            if src.get(key):
                return str(src[key])
    return f"mlflow:{source_type or 'dataset'}/{name}" if name else ""
