"""The audit trail: governance actions and run lifecycle events become hash-chained records per project;
`runstream audit verify` passes on the intact trail, and names the record when one is altered or deleted
in storage; `runstream audit log` filters it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import runstream
from runstream.ops.stack import kafka_auth, write_stack_file
from runstream.sdk.transport import GrpcTransport
from runstream.wire import audit, views
from tests.conftest import Stack
from tests.helpers import wait_until
from tests.test_governance import cli


def run_cli(stack: Stack, *args: str):
    import os
    import subprocess
    import sys
    env = dict(os.environ, RUNSTREAM_DATA_DIR=str(stack.config.data_path),
               RUNSTREAM_CLICKHOUSE_DATABASE=stack.config.clickhouse.database,
               RUNSTREAM_KAFKA_AUDIT_TOPIC=stack.config.kafka.audit_topic)
    return subprocess.run([sys.executable, "-m", "runstream", *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_audit_trail_is_chained_and_tampering_is_found(stack: Stack, token: str, tmp_path: Path) -> None:
    write_stack_file(stack.config, {"sql": f"http://{stack.config.sink.sql_listen}", "token": token,
                                    "database": stack.config.clickhouse.database, "kafka": stack.config.kafka.bootstrap,
                                    "kafka_auth": kafka_auth(stack.config)})
    cli(stack, "project", "create", "audited")
    secret = cli(stack, "token", "create", "--project", "audited", "--scope", "ingest").stdout.strip().splitlines()[-1]
    for name in ("a", "b"):
        run = runstream.init("audited", name, transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path))
        run.log({"x": 1.0})
        assert run.finish(timeout=30)
    cli(stack, "token", "revoke", secret.split("_")[1])

    def trail():
        return stack.query("SELECT seq, action, target, source FROM {db}.audit_log WHERE project = 'audited' ORDER BY seq")
    def seven() -> list | None:
        rows = trail()
        return rows if len(rows) >= 7 else None
    rows: list = wait_until(seven, 30, "the 7 audit records")  # type: ignore[assignment]
    assert [r[0] for r in rows] == list(range(1, 8))
    actions = [r[1] for r in rows]
    assert actions.count("run.start") == 2 and actions.count("run.finish") == 2
    assert {"project.create", "token.create", "token.revoke"} <= set(actions)
    assert all(r[3] for r in rows if r[1].startswith("run.")), "run events carry the client's address"
    assert secret not in str(stack.query("SELECT * FROM {db}.audit_log"))

    ok = run_cli(stack, "audit", "verify", "--project", "audited")
    assert ok.returncode == 0 and "7 records, chain intact" in ok.stdout, ok.stderr
    log = run_cli(stack, "audit", "log", "--project", "audited", "--action", "token.revoke", "--format", "json")
    assert [json.loads(line)["action"] for line in log.stdout.splitlines()] == ["token.revoke"]
    before, after = stack.query("SELECT before, after FROM {db}.audit_log WHERE action = 'token.revoke'")[0]
    assert "revoked" not in json.loads(before) and json.loads(after)["revoked"] is True

    db = stack.config.clickhouse.database
    stack.sink.client.command(f"ALTER TABLE {db}.audit_log UPDATE actor = 'mallory' WHERE project = 'audited' AND seq = 3 "
                              "SETTINGS mutations_sync = 2")
    bad = run_cli(stack, "audit", "verify", "--project", "audited")
    assert bad.returncode == 1 and "record 3" in bad.stderr and "altered" in bad.stderr

    stack.sink.client.command(f"ALTER TABLE {db}.audit_log DELETE WHERE project = 'audited' AND seq IN (3, 5) "
                              "SETTINGS mutations_sync = 2")
    gone = run_cli(stack, "audit", "verify", "--project", "audited")
    assert gone.returncode == 1 and "record 3 is missing" in gone.stderr and "record 5 is missing" in gone.stderr


def trail_of(stack: Stack, project: str) -> list:
    """A project's stored trail once it holds its project and token records."""
    def two() -> list | None:
        rows = views.rows(stack.sink.client, views.audit_chain(stack.config.clickhouse.database, project))
        return rows if len(rows) >= 2 else None
    return wait_until(two, 30, f"the trail of {project}")  # type: ignore[return-value]


@pytest.mark.slow
def test_audit_trail_cut_short_or_rechained_is_found(stack: Stack, token: str) -> None:
    """The attacks the public chaining rule alone misses: deleting the newest record (the chain before it is still
    consistent), and altering a record then recomputing every later hash with the public rule."""
    write_stack_file(stack.config, {"sql": f"http://{stack.config.sink.sql_listen}", "token": token,
                                    "database": stack.config.clickhouse.database, "kafka": stack.config.kafka.bootstrap,
                                    "kafka_auth": kafka_auth(stack.config)})
    for name in ("p1", "p2", "p3"):
        cli(stack, "project", "create", f"cut-{name}")
        cli(stack, "token", "create", "--project", f"cut-{name}", "--scope", "read")
    db = stack.config.clickhouse.database
    rows = trail_of(stack, "cut-p1")
    assert run_cli(stack, "audit", "verify", "--project", "cut-p1").returncode == 0
    # Cut short: the newest record deleted; what remains chains correctly.
    stack.sink.client.command(f"ALTER TABLE {db}.audit_log DELETE WHERE project = 'cut-p1' AND seq = {len(rows)} "
                              "SETTINGS mutations_sync = 2")
    assert not audit.verify(views.rows(stack.sink.client, views.audit_chain(db, "cut-p1")))  # the public rule sees nothing
    cut = run_cli(stack, "audit", "verify", "--project", "cut-p1")
    assert cut.returncode == 1 and "is missing from the trail" in cut.stderr, cut.stderr
    # Re-chained: record 1 altered, every hash recomputed with the public rule (the signatures cannot be).
    rows = trail_of(stack, "cut-p2")
    prev = ""
    for seq, at_ms, actor, action, target, source, before, after, _, _, project, *_ in rows:
        actor = "mallory" if seq == 1 else actor
        h = audit.chain(prev, audit.canonical(project, seq, at_ms, actor, action, target, source, before, after))
        stack.sink.client.command(f"ALTER TABLE {db}.audit_log UPDATE actor = %(a)s, prev_hash = %(p)s, hash = %(h)s "
                                  f"WHERE project = 'cut-p2' AND seq = {seq} SETTINGS mutations_sync = 2",
                                  parameters={"a": actor, "p": prev, "h": h})
        prev = h
    assert not audit.verify(views.rows(stack.sink.client, views.audit_chain(db, "cut-p2")))  # consistent by the public rule
    forged = run_cli(stack, "audit", "verify", "--project", "cut-p2")
    assert forged.returncode == 1 and "signature does not match" in forged.stderr, forged.stderr
