"""Lineage: which runs used a dataset, what produced an artifact, and a run's upstream graph (the statements are
runstream.wire.views').

A run's upstream is its parent runs (resume, sweeps) and, for every dataset it read, the runs that
produced an artifact with the same content (dataset digest = artifact sha256), recursively.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runstream.wire import views
from runstream.wire.views import Row


@dataclass
class Graph:
    root: str
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (child, relation, parent) node ids
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)


def runs_using(client: Any, dataset: str, database: str = "runstream") -> list[Row]:
    """Runs that read a dataset, by URI or digest."""
    return views.rows(client, views.runs_using(database, dataset))


def producers_of(client: Any, artifact: str, database: str = "runstream") -> list[Row]:
    """Runs that made an artifact, by URI, stored URI or sha256."""
    return views.rows(client, views.producers_of(database, artifact))


class AmbiguousRun(ValueError):
    """A run id that several projects hold, asked for without its project."""


def run_projects(client: Any, run_id: str, database: str = "runstream") -> list[str]:
    return [r[0] for r in views.rows(client, views.run_projects(database, run_id))]


def upstream(client: Any, run_id: str, database: str = "runstream", max_depth: int = 50, *,
             project: str | None = None) -> Graph:
    """The run's upstream graph. Runs are (project, run id): a run id alone names a run only where one project
    holds it (AmbiguousRun otherwise); a parent is in its child's project, a dataset's producer in any."""
    g = Graph(root=run_id)
    if project is None:
        held = run_projects(client, run_id, database)
        if len(held) > 1:
            raise AmbiguousRun(f"run {run_id!r} is in several projects ({', '.join(held)}): name one with --project")
        if not held:
            return g
        project = held[0]
    frontier, seen = [(project, run_id)], {(project, run_id)}
    for _ in range(max_depth):
        if not frontier:
            break
        info = views.rows(client, views.start_records(database, frontier))
        nxt: list[tuple[str, str]] = []
        for rid, proj, name, commit, dirty, diff, pkgs, parent in info:
            g.runs[rid] = {"project": proj, "name": name, "git_commit": commit, "git_dirty": dirty,
                           "git_diff_sha256": diff, "packages_sha256": pkgs}
            if parent:
                g.edges.append((f"run:{rid}", "child of", f"run:{parent}"))
                nxt.append((proj, parent))
        used = views.rows(client, views.inputs_and_producers(database, frontier))
        for rid, uri, digest, producer_project, producer in used:
            node = f"dataset:{uri}@{digest[:12]}" if digest else f"dataset:{uri}"
            g.edges.append((f"run:{rid}", "used", node))
            if producer:
                g.edges.append((node, "produced by", f"run:{producer}"))
                nxt.append((producer_project, producer))
        frontier = [r for r in dict.fromkeys(nxt) if r not in seen]
        seen.update(frontier)
    return g


def render(g: Graph) -> list[str]:
    """The graph as an indented tree from the run upwards."""
    children: dict[str, list[tuple[str, str]]] = {}
    for child, rel, parent in g.edges:
        children.setdefault(child, []).append((rel, parent))

    def label(node: str) -> str:
        if node.startswith("run:"):
            r = g.runs.get(node[4:], {})
            commit = (r.get("git_commit") or "")[:10] + ("+dirty" if r.get("git_dirty") else "")
            return f"{node} {r.get('name', '?')} [{r.get('project', '?')}] git {commit or '-'}"
        return node

    lines: list[str] = []

    def walk(node: str, depth: int, path: set[str]) -> None:
        for rel, parent in children.get(node, []):
            lines.append("  " * depth + f"└─ {rel} {label(parent)}")
            if parent not in path:
                walk(parent, depth + 1, path | {parent})

    lines.append(label(f"run:{g.root}"))
    walk(f"run:{g.root}", 1, {f"run:{g.root}"})
    return lines
