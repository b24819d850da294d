"""The CLI's commands that need the server extra: reads, governance, dashboards, the demo. What only one command
needs (Kafka, the ClickHouse client, numpy for the demo, TLS) is imported inside it: a CLI call starts quickly."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import grpc

from runstream.cli.output import print_result, resolve_config, runs_summary, sql_client
from runstream.sdk import connect
from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.v1.ingest_pb2 import ProjectRecord, RetentionPolicy, RunDeletion
from runstream.wire import audit, views
from runstream.wire import governance as gov
from runstream.wire.errors import RunstreamError
from runstream.wire.files import file_digest


def cmd_sql(args: argparse.Namespace) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError

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
    from runstream.storage import lineage

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


def _admin(args: argparse.Namespace, request: ingest_pb2.AdminRequest) -> ingest_pb2.AdminResponse:
    """One call to ingest's Admin service with an admin token: --token, else client.token (RUNSTREAM_TOKEN), else
    the bootstrap admin token `runstream up` wrote to the data dir."""
    config = resolve_config(args)
    token = args.token or config.client.token
    if not token and config.admin_token_path.exists():
        token = config.admin_token_path.read_text().strip()
    if not token:
        raise RunstreamError(f"governance needs a token with the admin scope: pass --token, set RUNSTREAM_TOKEN, or run "
                             f"where `runstream up` wrote {config.admin_token_path}")
    transport = connect(config, token=token)
    try:
        stub = ingest_pb2_grpc.AdminStub(transport.channel)  # type: ignore[no-untyped-call]
        response: ingest_pb2.AdminResponse = stub.Call(request, metadata=transport.metadata, timeout=30)
        return response
    except grpc.RpcError as exc:
        raise RunstreamError(f"{exc.code().name}: {exc.details()}") from None
    finally:
        transport.close()


def cmd_project(args: argparse.Namespace) -> int:
    res = _admin(args, ingest_pb2.AdminRequest(create_project=ProjectRecord(name=args.name, description=args.description)))
    print(res.message)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    if args.action == "create":
        if not args.project or not args.scope:
            raise RunstreamError("token create needs --project P (or '*') and --scope ingest|read|admin")
        expires = gov.parse_duration(args.expires) if args.expires else 0
        res = _admin(args, ingest_pb2.AdminRequest(create_token=ingest_pb2.TokenRequest(
            name=args.name or ",".join(args.project), projects=args.project, scopes=args.scope, expires_in_ms=expires)))
        rec = res.tokens[0]
        print(f"Token {rec.token_id} created for {', '.join(rec.projects)} ({', '.join(rec.scopes)}). "
              "It is shown once; store it now:")
        print(res.secret)
    elif args.action == "revoke":
        if not args.token_id:
            raise RunstreamError("token revoke needs the token id (see `runstream token list`)")
        print(_admin(args, ingest_pb2.AdminRequest(revoke_token=args.token_id)).message)
    else:
        now = time.time() * 1000
        tokens = _admin(args, ingest_pb2.AdminRequest(list_tokens=ingest_pb2.ListTokens())).tokens
        rows = [(r.token_id, r.name, ",".join(r.projects), ",".join(r.scopes),
                 "revoked" if r.revoked else ("expired" if r.expires_ms and r.expires_ms <= now else "active"),
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires_ms / 1000)) if r.expires_ms else "never")
                for r in tokens]
        print_result(["token_id", "name", "projects", "scopes", "state", "expires (UTC)"], rows, args.format)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from runstream.server import governance as gov_io

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
    res = _admin(args, ingest_pb2.AdminRequest(delete_run=RunDeletion(project=args.project, run_id=args.run_id,
                                                                      reason=args.reason)))
    print(res.message)
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    def days(text: str | None) -> int:
        if not text:
            return 0
        ms = gov.parse_duration(text)
        if ms % 86_400_000:
            raise RunstreamError(f"retention {text!r}: give whole days, e.g. 30d")
        return ms // 86_400_000
    policy = RetentionPolicy(project=args.project, raw_days=days(args.raw), rollup_days=days(args.rollups))
    print(_admin(args, ingest_pb2.AdminRequest(set_retention=policy)).message)
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    from runstream.dashboards import build as dashboards_build
    from runstream.dashboards.push import push as dashboards_push

    if args.action == "build":
        return dashboards_build.main()
    if not args.grafana_url or not args.token:
        raise RunstreamError("push needs --grafana-url and --token (a Grafana service account token with Editor rights).")
    try:
        for url in dashboards_push(args.grafana_url, args.token, folder=args.folder):
            print(url)
    except Exception as exc:
        raise RunstreamError(f"pushing to {args.grafana_url} failed: {exc}") from exc
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from runstream.cli.demo import run_demo

    return run_demo(resolve_config(args), jobs=args.jobs, seconds=args.seconds, rate=args.rate)


def cmd_artifacts(args: argparse.Namespace) -> int:
    from runstream.storage import lineage

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


def cmd_kafka(args: argparse.Namespace) -> int:
    from runstream.server.kafka import ROLE_PRINCIPALS, ensure_topics

    config = resolve_config(args)
    if not config.kafka.bootstrap:
        raise RunstreamError("kafka setup: kafka.bootstrap is not set (--kafka HOST:PORT); `runstream up` sets up its "
                             "own broker")
    asyncio.run(ensure_topics(config, acls=True))
    who = config.kafka.username or "an unauthenticated client"
    print(f"Topics ready on {config.kafka.bootstrap} and ACLs granted to principals {', '.join(ROLE_PRINCIPALS)} "
          f"(signed in as {who}).")
    return 0


def cmd_tls(args: argparse.Namespace) -> int:
    from runstream.ops import tls

    paths = tls.init(Path(args.directory), args.host or ["localhost", "127.0.0.1"], clients=tuple(args.client))
    print(f"CA {paths['ca']} (give it to clients: RUNSTREAM_TLS_CA), server certificate {paths['cert']} and key "
          f"{paths['key']} (ingest.tls_cert / ingest.tls_key; metrics_tls_cert / metrics_tls_key), Kafka's PEM keystore "
          f"{paths['bundle']}.")
    for name in args.client:
        print(f"Client certificate {paths['client:' + name]} and key {Path(args.directory) / (name + '.key')} "
              "(signed by the CA: metrics_tls_client_ca accepts it).")
    return 0
