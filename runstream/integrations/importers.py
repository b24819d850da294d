"""Importers: an MLflow tracking store (a running server, an ``mlruns`` directory, or its SQL database: whatever URI
the `mlflow` client reads) and TensorBoard event files, into runstream through ingest, as any client logs.

Idempotent: every batch's id is derived from the source (the run and the part of it), with the same content each
time, so storage keeps one copy however often an import runs, and the processors skip the replays. Counted: the
report gives the points read from the source and the points ingest acknowledged.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.sdk.transport import Transport
from runstream.v1.ingest_pb2 import (
    RUN_STATUS_FAILED,
    RUN_STATUS_FINISHED,
    RUN_STATUS_KILLED,
    Batch,
    DatasetUse,
    Metrics,
    Params,
    RunFinish,
    RunStart,
    Tags,
)
from runstream.wire.errors import RunstreamError
from runstream.wire.mlflow import LIFECYCLE_TAG, dataset_uri, param_json, project_for_experiment

CHUNK_POINTS = 10_000
SEND_POINTS = 100_000  # points per ingest call
NAMESPACE = uuid.UUID("6f1c2a4e-0d7b-4c55-9a8e-3b5f0e2d9c41")
MLFLOW_STATUS = {"FINISHED": RUN_STATUS_FINISHED, "FAILED": RUN_STATUS_FAILED, "KILLED": RUN_STATUS_KILLED}

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class ImportReport:
    runs: int = 0
    points_source: int = 0     # points read from the source
    points_acked: int = 0      # points ingest acknowledged
    batches: int = 0
    projects: dict[str, str] = field(default_factory=dict)  # source experiment / directory -> project

    def summary(self) -> str:
        return (f"Imported {self.runs} runs: {self.points_acked:,} of {self.points_source:,} points acknowledged "
                f"({self.batches:,} batches) into {', '.join(sorted(set(self.projects.values()))) or 'no project'}.")


class _Run:
    """One source run's batches, in order, with ids derived from ``source`` and the part they carry."""

    def __init__(self, source: str, project: str, run_id: str, created_ms: int) -> None:
        self.source, self.project, self.run_id, self.created_ms = source, project, run_id, created_ms
        self.batches: list[Batch] = []
        self.points = 0

    def add(self, part: str, **body: Any) -> None:
        bid = uuid.uuid5(NAMESPACE, f"{self.source}\0{self.run_id}\0{part}").hex
        self.batches.append(Batch(batch_id=bid, project=self.project, run_id=self.run_id, seq=len(self.batches) + 1,
                                  created_ms=self.created_ms, **body))

    def metrics(self, points: list[tuple[str, int, int, float]]) -> None:
        """(name, step, timestamp ms, value) points, in a fixed order, in chunks."""
        points.sort(key=lambda p: (p[0], p[1], p[2], repr(p[3])))
        for start in range(0, len(points), CHUNK_POINTS):
            chunk = points[start:start + CHUNK_POINTS]
            names: dict[str, int] = {}
            m = Metrics(name_index=[names.setdefault(p[0], len(names)) for p in chunk], steps=[p[1] for p in chunk],
                        timestamps_ms=[p[2] for p in chunk], values=[p[3] for p in chunk])
            m.names.extend(names)
            self.add(f"metrics-{start // CHUNK_POINTS}", metrics=m)
        self.points += len(points)


def _send(transport: Transport, run: _Run, report: ImportReport) -> None:
    group: list[Batch] = []
    size = 0
    for b in run.batches:
        n = len(b.metrics.values) if b.WhichOneof("body") == "metrics" else 0
        if group and size + n > SEND_POINTS:
            transport.send(group)
            group, size = [], 0
        group.append(b)
        size += n
    if group:
        transport.send(group)
    report.points_acked += run.points
    report.batches += len(run.batches)


def _mlflow_client(tracking_uri: str) -> tuple[Any, str]:
    """The client, and the source's URI in one spelling (the batch ids derive from it: a directory given as a path
    or as a file: URI is the same source)."""
    try:
        from mlflow.tracking import MlflowClient
    except ModuleNotFoundError as exc:
        raise RunstreamError("importing from MLflow needs its client: pip install 'runstream[importers]' (or mlflow, "
                             "for a SQL database URI)") from exc
    if "://" not in tracking_uri and not tracking_uri.startswith("file:") and Path(tracking_uri).is_dir():
        tracking_uri = Path(tracking_uri).resolve().as_uri()
    if tracking_uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked; reading an old mlruns directory is what it is kept for.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking_uri = Path(tracking_uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    return MlflowClient(tracking_uri=tracking_uri), tracking_uri.rstrip("/")


def _mlflow_runs(client: Any, experiment_ids: list[str]) -> Iterator[Any]:
    from mlflow.entities import ViewType
    token = None
    while True:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def import_mlflow(tracking_uri: str, transport: Transport, *, experiments: list[str] | None = None,
                  progress: Progress = _stderr) -> ImportReport:
    """Every run of the store's experiments (or of those named), with params, tags, every metric point, datasets,
    status and times. Runs keep their MLflow ids; experiments map to projects (runstream.wire.mlflow)."""
    from mlflow.entities import ViewType
    client, tracking_uri = _mlflow_client(tracking_uri)
    found = client.search_experiments(view_type=ViewType.ALL, max_results=50_000)
    if experiments:
        found = [e for e in found if e.name in experiments or e.experiment_id in experiments]
        missing = set(experiments) - {e.name for e in found} - {e.experiment_id for e in found}
        if missing:
            raise RunstreamError(f"no experiment {sorted(missing)} in {tracking_uri}")
    report = ImportReport()
    source = f"mlflow:{tracking_uri}"
    for exp in found:
        project = project_for_experiment(exp.name, exp.experiment_id)
        report.projects[exp.name] = project
        runs = list(_mlflow_runs(client, [exp.experiment_id]))
        for i, r in enumerate(runs, 1):
            info, data = r.info, r.data
            run = _Run(source, project, info.run_id, info.start_time or 0)
            tags = dict(data.tags)
            start = RunStart(name=info.run_name or tags.get("mlflow.runName", ""), start_ms=info.start_time or 0,
                             parent_run_id=tags.get("mlflow.parentRunId", ""))
            run.add("start", run_start=start)
            if info.user_id:
                tags.setdefault("mlflow.user", info.user_id)
            if info.lifecycle_stage == "deleted":
                tags[LIFECYCLE_TAG] = "deleted"
            if tags:
                run.add("tags", tags=Tags(values=tags))
            if data.params:
                run.add("params", params=Params(values={k: param_json(v) for k, v in data.params.items()}))
            points = [(key, m.step, m.timestamp, m.value) for key in sorted(data.metrics)
                      for m in client.get_metric_history(info.run_id, key)]
            report.points_source += len(points)
            run.metrics(points)
            for d in (r.inputs.dataset_inputs if r.inputs else []):
                uri = dataset_uri(d.dataset.name, d.dataset.source_type, d.dataset.source)
                if uri:
                    run.add(f"dataset-{uri}-{d.dataset.digest}", dataset=DatasetUse(uri=uri, digest=d.dataset.digest))
            if info.status in MLFLOW_STATUS:
                run.add("finish", run_finish=RunFinish(status=MLFLOW_STATUS[info.status], end_ms=info.end_time or info.start_time or 0,
                                                       points_acked=run.points, batches_acked=len(run.batches) + 1))
            _send(transport, run, report)
            report.runs += 1
            progress(f"[{exp.name} {i}/{len(runs)}] {info.run_id} ({start.name or '-'}): {run.points:,} points")
    return report


def _event_dirs(logdir: Path) -> list[Path]:
    return sorted({p.parent for p in logdir.rglob("*") if p.is_file() and "tfevents" in p.name})


def _scalars(path: Path) -> list[tuple[str, int, int, float]]:
    try:
        from tensorboard.backend.event_processing import event_accumulator
        from tensorboard.util import tensor_util
    except ModuleNotFoundError as exc:
        raise RunstreamError("importing TensorBoard logs needs its reader: pip install 'runstream[importers]'") from exc
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0,
                                                                       event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    points = [(tag, e.step, int(e.wall_time * 1000), float(e.value)) for tag in tags.get("scalars", [])
              for e in acc.Scalars(tag)]
    for tag in tags.get("tensors", []):  # TF2's tf.summary.scalar writes scalars as tensors
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        points += [(tag, e.step, int(e.wall_time * 1000), float(tensor_util.make_ndarray(e.tensor_proto).item()))
                   for e in acc.Tensors(tag)]
    return points


def import_tensorboard(logdir: str, transport: Transport, *, project: str, progress: Progress = _stderr) -> ImportReport:
    """Each directory of event files under ``logdir`` becomes a finished run of ``project`` (named by its path
    under logdir) holding its scalars; the run id is derived from the directory's absolute path."""
    root = Path(logdir).resolve()
    if not root.is_dir():
        raise RunstreamError(f"{logdir}: no such directory")
    dirs = _event_dirs(root)
    if not dirs:
        raise RunstreamError(f"{logdir}: no TensorBoard event files (events.out.tfevents.*) under it")
    report = ImportReport()
    report.projects[str(root)] = project
    for i, d in enumerate(dirs, 1):
        points = _scalars(d)
        report.points_source += len(points)
        name = os.path.relpath(d, root) if d != root else root.name
        run_id = uuid.uuid5(NAMESPACE, f"tensorboard:{d}").hex
        times = [p[2] for p in points] or [int(d.stat().st_mtime * 1000)]
        run = _Run(f"tensorboard:{root}", project, run_id, min(times))
        run.add("start", run_start=RunStart(name=name, start_ms=min(times), tags=["tensorboard"]))
        run.add("tags", tags=Tags(values={"tensorboard.logdir": str(d)}))
        run.metrics(points)
        run.add("finish", run_finish=RunFinish(status=RUN_STATUS_FINISHED, end_ms=max(times), points_acked=run.points,
                                               batches_acked=len(run.batches) + 1))
        _send(transport, run, report)
        report.runs += 1
        progress(f"[{i}/{len(dirs)}] {name}: {run.points:,} points")
    return report
