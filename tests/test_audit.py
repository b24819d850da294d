"""The audit trail: governance actions and run lifecycle events become hash-chained records per project;
`runstream audit verify` passes on the intact trail, and names the record when one is altered or deleted
in storage; `runstream audit log` filters it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import runstream
from runstream.ops.stack import write_stack_file
from runstream.sdk.transport import GrpcTransport
from tests.conftest import Stack
from tests.test_governance import cli


def run_cli(stack: Stack, *args: str):
    import os
    import subprocess
    import sys
    env = dict(os.environ, RUNSTREAM_DATA_DIR=str(stack.config.data_path),
               RUNSTREAM_CLICKHOUSE_DATABASE=stack.config.clickhouse.database)
    return subprocess.run([sys.executable, "-m", "runstream", *args], env=env, capture_output=True, text=True, timeout=120)


def test_audit_trail_is_chained_and_tampering_is_found(stack: Stack, token: str, tmp_path: Path) -> None:
    write_stack_file(stack.config, {"sql": f"http://{stack.config.sink.sql_listen}", "token": token,
                                    "database": stack.config.clickhouse.database})
    cli(stack, "project", "create", "audited")
    secret = cli(stack, "token", "create", "--project", "audited", "--scope", "ingest").stdout.strip().splitlines()[-1]
    for name in ("a", "b"):
        run = runstream.init("audited", name, transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path))
        run.log({"x": 1.0})
        assert run.finish(timeout=30)
    cli(stack, "token", "revoke", secret.split("_")[1])

    def trail():
        return stack.query("SELECT seq, action, target, source FROM {db}.audit_log WHERE project = 'audited' ORDER BY seq")
    deadline = time.monotonic() + 30
    while len(trail()) < 7:
        assert time.monotonic() < deadline, trail()
        time.sleep(0.3)
    rows = trail()
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
