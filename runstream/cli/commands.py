"""The CLI's commands that need the server extra: reads, governance, dashboards, the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from clickhouse_connect.driver.exceptions import ClickHouseError

from runstream.cli.demo import run_demo
from runstream.cli.output import print_result, resolve_config, sql_client
from runstream.dashboards import build as dashboards_build
from runstream.dashboards.push import push as dashboards_push
from runstream.server import governance as gov_io
from runstream.server.kafka import ensure_topics
from runstream.storage import lineage, queries
from runstream.v1.ingest_pb2 import ControlEvent, ProjectRecord, RetentionPolicy, RunDeletion, TokenRecord
from runstream.wire import audit
from runstream.wire import governance as gov
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError


def cmd_sql(args: argparse.Namespace) -> int:
    client = sql_client(resolve_config(args))
    try:
        res = client.query(args.query)
    except ClickHouseError as exc:
        raise RunstreamError(f"query failed: {exc}") from exc
    print_result(list(res.column_names), res.result_rows, args.format)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    cols, rows = queries.runs_summary(sql_client(resolve_config(args)), project=args.project, limit=args.limit)
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
        g = lineage.upstream(client, args.run, db)
        if args.run not in g.runs:
            raise RunstreamError(f"no run {args.run!r} in storage")
        if args.format == "json":
            print(json.dumps({"run": args.run, "edges": g.edges, "runs": g.runs}, default=str))
        else:
            print("\n".join(lineage.render(g)))
    else:
        raise RunstreamError("give a RUN, or --dataset URI|DIGEST, or --artifact URI|SHA256")
    return 0


def _kafka_config(args: argparse.Namespace) -> RunstreamConfig:
    config = resolve_config(args)
    if not config.kafka.bootstrap:
        config.kafka.bootstrap = config.stack_info().get("kafka", "")
    if not config.kafka.bootstrap:
        raise RunstreamError("no Kafka to reach: start `runstream up`, or pass --kafka HOST:PORT.")
    asyncio.run(ensure_topics(config))
    return config


def _publish(config: RunstreamConfig, ev: ControlEvent, before: object = None) -> None:
    asyncio.run(gov_io.publish(config, ev, before=before))


def cmd_project(args: argparse.Namespace) -> int:
    if not gov.NAME_RE.match(args.name):
        raise RunstreamError(f"project name {args.name!r}: letters, digits, '.', '_' and '-', starting with a letter or digit")
    config = _kafka_config(args)
    _publish(config, gov.event("project.create", project=ProjectRecord(name=args.name, description=args.description)))
    print(f"Project {args.name} created.")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = _kafka_config(args)
    state = asyncio.run(gov_io.read_state(config))
    if args.action == "create":
        if not args.project or not args.scope:
            raise RunstreamError("token create needs --project P (or '*') and --scope ingest|read|admin")
        missing = [p for p in args.project if p != "*" and p not in state.projects]
        if missing:
            raise RunstreamError(f"no such project(s): {missing}; create them with `runstream project create NAME`.")
        expires = gov.parse_duration(args.expires) if args.expires else 0
        secret, rec = gov.new_token(args.name or ",".join(args.project), args.project, args.scope, expires)
        _publish(config, gov.event("token.create", token=rec))
        print(f"Token {rec.token_id} created for {', '.join(rec.projects)} ({', '.join(rec.scopes)}). "
              "It is shown once; store it now:")
        print(secret)
    elif args.action == "revoke":
        if not args.token_id:
            raise RunstreamError("token revoke needs the token id (see `runstream token list`)")
        found = state.tokens.get(args.token_id)
        if found is None:
            raise RunstreamError(f"no token {args.token_id!r}; `runstream token list` shows them.")
        rec = found
        previous = TokenRecord()
        previous.CopyFrom(rec)
        rec.revoked, rec.revoked_ms = True, gov.event("x").at_ms
        _publish(config, gov.event("token.revoke", token=rec), before=previous)
        print(f"Token {args.token_id} revoked; every ingest replica refuses it within seconds.")
    else:
        now = time.time() * 1000
        rows = [(r.token_id, r.name, ",".join(r.projects), ",".join(r.scopes),
                 "revoked" if r.revoked else ("expired" if r.expires_ms and r.expires_ms <= now else "active"),
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires_ms / 1000)) if r.expires_ms else "never")
                for r in sorted(state.tokens.values(), key=lambda r: r.created_ms)]
        print_result(["token_id", "name", "projects", "scopes", "state", "expires (UTC)"], rows, args.format)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    client = sql_client(config)
    db = config.clickhouse.database
    if args.action == "verify":
        rows = queries.audit_chain(client, db, args.project)
        problems = audit.verify(rows)
        if problems:
            for p in problems:
                print(f"audit verify {args.project}: {p}", file=sys.stderr)
            return 1
        print(f"audit trail of {args.project}: {len(rows)} records, chain intact.")
        return 0
    cols, rows = queries.audit_log(client, db, args.project, action=args.action_filter, target=args.target, limit=args.limit)
    print_result(cols, rows, args.format)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _kafka_config(args)
    _publish(config, gov.event("run.delete", run_delete=RunDeletion(project=args.project, run_id=args.run_id,
                                                                     reason=args.reason)))
    print(f"Deletion of run {args.run_id} recorded; the sink removes it from every table.")
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
    config = _kafka_config(args)
    _publish(config, gov.event("retention.set", retention=policy))
    print(f"Retention for {args.project}: raw points {policy.raw_days or 'kept'} days, "
          f"rollups {policy.rollup_days or 'kept'} days.")
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
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
    return run_demo(resolve_config(args), jobs=args.jobs, seconds=args.seconds, rate=args.rate)
