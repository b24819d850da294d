"""The CLI's commands that read storage (the server extra): SQL, runs, lineage, the audit trail, artifacts, and a
run's deletion (checked against storage first)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from runstream.cli.commands import admin
from runstream.cli.output import print_result, resolve_config, runs_summary
from runstream.ops.supervisor import stack_running
from runstream.server import governance as gov_io
from runstream.storage import lineage
from runstream.storage.store import open_embedded, open_url
from runstream.v1 import ingest_pb2
from runstream.v1.ingest_pb2 import RunDeletion
from runstream.wire import audit, views
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError
from runstream.wire.files import file_digest


def sql_client(config: RunstreamConfig) -> Client:
    """A ClickHouse client for reading: the server at clickhouse.url (read-only), else the running stack's SQL
    endpoint, else (no stack running) the embedded store itself, opened read-only in this process."""
    if config.clickhouse.url:
        return open_url(config.clickhouse.url, database=config.clickhouse.database, settings={"readonly": 1})
    info = config.stack_info()
    if not stack_running(config) and (config.clickhouse_path / "metadata").is_dir():
        print(f"(no stack running: reading the store in {config.clickhouse_path} directly, read-only)", file=sys.stderr)
        return open_embedded(config.clickhouse_path, database=config.clickhouse.database, settings={"readonly": 1})
    if not info.get("sql"):
        raise RunstreamError(f"no running stack found (no {config.stack_file}): start `runstream up`, "
                             "or pass --clickhouse-url for a ClickHouse server.")
    return open_url(info["sql"], database=info.get("database", config.clickhouse.database),
                    token=config.client.token or info.get("token", ""))


def cmd_sql(args: argparse.Namespace) -> int:
    client = sql_client(resolve_config(args))
    try:
        res = client.query(args.query)
    except ClickHouseError as exc:
        raise RunstreamError(f"query failed: {exc}") from exc
    print_result(list(res.column_names), res.result_rows, args.format)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    cols, rows = runs_summary(sql_client(resolve_config(args)), project=args.project, limit=args.limit)
    print_result(cols, rows, args.format)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    client = sql_client(config)
    db = config.clickhouse.database
    if args.dataset:
        print_result(["project", "run_id", "uri", "digest"], lineage.runs_using(client, args.dataset, db), args.format)
    elif args.artifact:
        print_result(["project", "run_id", "uri", "sha256"], lineage.producers_of(client, args.artifact, db), args.format)
    elif args.run:
        try:
            g = lineage.upstream(client, args.run, db, project=args.project)
        except lineage.AmbiguousRun as exc:
            raise RunstreamError(str(exc)) from None
        if args.run not in g.runs:
            raise RunstreamError(f"no run {args.run!r} in storage")
        if args.format == "json":
            print(json.dumps({"run": args.run, "edges": g.edges, "runs": g.runs}, default=str))
        else:
            print("\n".join(lineage.render(g)))
    else:
        raise RunstreamError("give a RUN, or --dataset URI|DIGEST, or --artifact URI|SHA256")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    client = sql_client(config)
    db = config.clickhouse.database
    if args.action == "verify":
        rows = views.rows(client, views.audit_chain(db, args.project))
        key = bytes.fromhex(config.audit_key_path.read_text().strip()) if config.audit_key_path.exists() else None
        if key is None:
            print(f"audit verify: signatures not checked: the sink's key ({config.audit_key_path}) is not readable here",
                  file=sys.stderr)
        info = config.stack_info()
        offsets = None
        if not config.kafka.bootstrap and info.get("kafka"):
            config.kafka.bootstrap = info["kafka"]  # the running stack's broker, signed in as its admin
            for field, value in info.get("kafka_auth", {}).items():
                setattr(config.kafka, field, value)
        if config.kafka.bootstrap:
            offsets = asyncio.run(gov_io.audit_offsets(config, args.project))
        else:
            print("audit verify: the trail's end is not checked against Kafka: no broker known (--kafka)", file=sys.stderr)
        problems = audit.verify(rows, key=key, source_offsets=offsets)
        if problems:
            for p in problems:
                print(f"audit verify {args.project}: {p}", file=sys.stderr)
            return 1
        print(f"audit trail of {args.project}: {len(rows)} records, chain intact.")
        return 0
    rows = views.rows(client, views.audit_log(db, args.project, action=args.action_filter, target=args.target,
                                              limit=args.limit))
    print_result(views.AUDIT_COLUMNS, rows, args.format)
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    client = sql_client(config)
    project = args.project
    if project is None:  # a run id alone names a run only where one project holds it
        held = lineage.run_projects(client, args.run_id, config.clickhouse.database)
        if len(held) > 1:
            raise RunstreamError(f"run {args.run_id!r} is in several projects ({', '.join(held)}): name one with --project")
    found = views.rows(client, views.artifacts(config.clickhouse.database, args.run_id, project))
    if args.action == "list":
        print_result(views.ARTIFACT_COLUMNS, found, args.format)
        return 0
    chosen = [a for a in found if not args.name or Path(a[0]).name == args.name]
    if not chosen:
        raise RunstreamError(f"run {args.run_id} has no artifact{' named ' + args.name if args.name else ''} "
                             "(`runstream artifacts list RUN` shows what it has)")
    target = Path(args.to)
    target.mkdir(parents=True, exist_ok=True)
    for uri, stored, _size, sha, _ts in chosen:
        source = Path(stored or uri)
        if not source.exists():
            raise RunstreamError(f"{uri}: its bytes are not here ({source} does not exist); artifacts are kept in "
                                 "client.artifact_dir when the run set one, else where they were made")
        digest, _ = file_digest(source)
        if sha and digest != sha:
            raise RunstreamError(f"{source}: sha256 {digest[:12]}... differs from the recorded {sha[:12]}...; "
                                 "the file changed after the run logged it")
        dest = target / Path(uri).name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest)
        print(f"{dest} ({sha[:12] or 'no sha256'}...)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.force:
        try:
            client = sql_client(resolve_config(args))
        except RunstreamError:
            client = None
            print("runstream run: storage is not reachable from here, so the run id is not checked", file=sys.stderr)
        if client is not None and not views.rows(client, views.batch_count("", args.project, args.run_id))[0][0]:
            raise RunstreamError(f"no run {args.run_id!r} in project {args.project!r} is stored; check the id "
                                 "(`runstream runs --project ...`), or pass --force to record the deletion anyway")
    res = admin(args, ingest_pb2.AdminRequest(delete_run=RunDeletion(project=args.project, run_id=args.run_id,
                                                                      reason=args.reason)))
    print(res.message)
    return 0
