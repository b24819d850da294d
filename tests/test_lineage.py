"""Lineage on a seeded graph, logged through the SDK and the real pipeline: parent runs, datasets with
digests computed from local files, artifacts (copied to the artifact directory) that later runs read;
which runs used a dataset, what produced an artifact, and a run's full upstream graph."""

from __future__ import annotations

import time
from pathlib import Path

import runstream
from runstream.sdk.transport import GrpcTransport
from runstream.storage import lineage
from tests.conftest import Stack


def wait_rows(stack: Stack, sql: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while stack.query(sql)[0][0] < n:
        assert time.monotonic() < deadline, sql
        time.sleep(0.2)


def test_lineage_graph(stack: Stack, token: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    raw.write_text("a,b\n1,2\n")
    store = tmp_path / "artifacts"

    def run(name: str, parent: str = "") -> runstream.Run:
        return runstream.init("lin", name, parent_run_id=parent, transport=GrpcTransport(stack.ingest_addr, token),
                              spool_dir=str(tmp_path / "spool"))

    prep = run("prep")
    raw_digest = prep.use_dataset(str(raw))
    features = tmp_path / "features.parquet"
    features.write_bytes(b"feature bytes " * 100)
    art = prep.log_artifact(features, artifact_dir=store)
    prep.finish(timeout=30)
    assert Path(art.stored_uri).read_bytes() == features.read_bytes() and art.size == 1400

    train = run("train", parent=prep.id)  # e.g. a resumed run
    assert train.use_dataset(str(features)) == art.sha256  # same content: linked to prep's artifact
    train.use_dataset("s3://bucket/labels.csv", digest="labels-v3")
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00\x01" * 50)
    model_art = train.log_artifact(model)
    train.finish(timeout=30)

    evaluate = run("eval", parent=train.id)
    evaluate.use_dataset(str(model))
    evaluate.finish(timeout=30)
    other = run("unrelated")
    other.use_dataset("s3://bucket/labels.csv", digest="labels-v3")
    other.finish(timeout=30)

    db = stack.config.clickhouse.database
    wait_rows(stack, "SELECT count() FROM {db}.datasets_used", 5)
    wait_rows(stack, "SELECT count() FROM {db}.artifacts", 2)
    client = stack.sink.client

    assert {r[1] for r in lineage.runs_using(client, "labels-v3", db)} == {train.id, other.id}
    assert {r[1] for r in lineage.runs_using(client, raw_digest, db)} == {prep.id}
    assert [r[1] for r in lineage.producers_of(client, model_art.sha256, db)] == [train.id]
    assert [r[1] for r in lineage.producers_of(client, art.stored_uri, db)] == [prep.id]

    g = lineage.upstream(client, evaluate.id, db)
    assert set(g.runs) == {evaluate.id, train.id, prep.id}  # "unrelated" shares a dataset but is not upstream
    edges = set(g.edges)
    assert (f"run:{evaluate.id}", "child of", f"run:{train.id}") in edges
    assert (f"run:{train.id}", "child of", f"run:{prep.id}") in edges
    used = [e for e in edges if e[0] == f"run:{evaluate.id}" and e[1] == "used"]
    assert used and (used[0][2], "produced by", f"run:{train.id}") in edges
    assert any(e[1] == "produced by" and e[2] == f"run:{prep.id}" for e in edges)
    text = "\n".join(lineage.render(g))
    assert "prep" in text and "train" in text and "used dataset:" in text
    assert g.runs[prep.id]["packages_sha256"] and len(g.runs[prep.id]["packages_sha256"]) == 64

    # A run id that two projects hold: named with its project, never mixed with the other project's run.
    twin = "twin" + prep.id[:8]
    for project, parent in (("lin", evaluate.id), ("lin-other", "")):
        r = runstream.init(project, "twin-" + project, run_id=twin, parent_run_id=parent,
                           transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path / "spool"))
        r.finish(timeout=30)
    wait_rows(stack, f"SELECT count(DISTINCT project) FROM {{db}}.run_starts WHERE run_id = '{twin}'", 2)
    try:
        lineage.upstream(client, twin, db)
        raise AssertionError("an ambiguous run id was resolved")
    except lineage.AmbiguousRun as exc:
        assert "lin, lin-other" in str(exc)
    mine = lineage.upstream(client, twin, db, project="lin")
    assert mine.runs[twin]["project"] == "lin" and evaluate.id in mine.runs
    theirs = lineage.upstream(client, twin, db, project="lin-other")
    assert set(theirs.runs) == {twin} and theirs.runs[twin]["project"] == "lin-other" and not theirs.edges
