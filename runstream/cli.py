"""The one CLI: a subcommand per role (`ingest`, `sink`), `up` for all of them on one machine, and tools
(`sql`, `runs`, `sync`, `demo`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runstream.config import RunstreamConfig
from runstream.errors import RunstreamError


def _config(args: argparse.Namespace) -> RunstreamConfig:
    if getattr(args, "data_dir", None):
        os.environ["RUNSTREAM_DATA_DIR"] = args.data_dir
    config = RunstreamConfig.load(getattr(args, "config", None))
    if getattr(args, "clickhouse_url", None):
        config.clickhouse.url = args.clickhouse_url
    if getattr(args, "kafka", None):
        config.kafka.bootstrap = args.kafka
    return config


def cmd_role(args: argparse.Namespace) -> int:
    from runstream.roles import run_role
    config = _config(args)
    if not config.kafka.bootstrap:
        raise RunstreamError("kafka.bootstrap is not set: pass --kafka HOST:PORT or set RUNSTREAM_KAFKA_BOOTSTRAP "
                             "(`runstream up` starts a broker for you).")
    if args.command == "process":
        from runstream.roles import run_process_role
        run_process_role(config)
    else:
        asyncio.run(run_role(args.command, config))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from runstream.supervisor import Supervisor
    sup = Supervisor(_config(args), ingest_replicas=args.ingest_replicas)
    return sup.run_forever()


def sql_client(config: RunstreamConfig, *, readonly: bool = True) -> Any:
    """A ClickHouse client for reading: the server at clickhouse.url, else the running stack's SQL endpoint."""
    from runstream.sdk import stack_info
    from storage.store import open_url
    settings = {"readonly": 1} if readonly and config.clickhouse.url else {}
    if config.clickhouse.url:
        return open_url(config.clickhouse.url, database=config.clickhouse.database, settings=settings)
    info = stack_info()
    if not info.get("sql"):
        raise RunstreamError("no running stack found (no stack.json in the data dir): start `runstream up`, "
                             "or pass --clickhouse-url for a ClickHouse server.")
    return open_url(info["sql"], database=info.get("database", config.clickhouse.database))


def print_result(columns: list[str], rows: list[tuple], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            print(json.dumps(dict(zip(columns, row)), default=str))
    elif fmt == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(columns)
        w.writerows(rows)
    else:
        from rich.console import Console
        from rich.table import Table
        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in row))
        Console().print(table)


def cmd_sql(args: argparse.Namespace) -> int:
    client = sql_client(_config(args))
    from clickhouse_connect.driver.exceptions import ClickHouseError
    try:
        res = client.query(args.query)
    except ClickHouseError as exc:
        raise RunstreamError(f"query failed: {exc}") from exc
    print_result(list(res.column_names), res.result_rows, args.format)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from storage.queries import runs_summary
    client = sql_client(_config(args))
    cols, rows = runs_summary(client, project=args.project, limit=args.limit)
    print_result(cols, rows, args.format)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from runstream import spool
    from runstream.sdk import default_home, send_spool_file, stack_info
    from runstream.transport import GrpcTransport, SendError
    directory = Path(args.spool_dir) if args.spool_dir else default_home() / "spool"
    info = stack_info()
    from runstream.transport import tls_from_env
    transport = GrpcTransport(args.url or os.environ.get("RUNSTREAM_URL") or info.get("ingest") or "127.0.0.1:50051",
                              os.environ.get("RUNSTREAM_TOKEN") or info.get("token"), credentials=tls_from_env())
    files = [p for p in spool.files(directory) if args.all or not spool.owner_alive(p)]
    sent = 0
    for path in files:
        try:
            sent += send_spool_file(transport, path)
        except SendError as exc:
            print(f"runstream sync: {path.name} not sent ({exc}); it stays in {directory}. Try again later.", file=sys.stderr)
            return 1
    print(f"Sent {sent} batches from {len(files)} spool files in {directory}.")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from storage import lineage
    config = _config(args)
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
    from runstream.sdk import stack_info
    config = _config(args)
    if not config.kafka.bootstrap:
        config.kafka.bootstrap = stack_info().get("kafka", "")
    if not config.kafka.bootstrap:
        raise RunstreamError("no Kafka to reach: start `runstream up`, or pass --kafka HOST:PORT.")
    return config


def cmd_project(args: argparse.Namespace) -> int:
    from runstream import governance as gov
    from runstream.topics import ensure_topics
    from runstream.v1.ingest_pb2 import ProjectRecord
    from ingest.validate import NAME_RE
    config = _kafka_config(args)
    if not NAME_RE.match(args.name):
        raise RunstreamError(f"project name {args.name!r}: letters, digits, '.', '_' and '-', starting with a letter or digit")
    asyncio.run(ensure_topics(config))
    asyncio.run(gov.publish(config, gov.event("project.create", project=ProjectRecord(name=args.name,
                                                                                       description=args.description))))
    print(f"Project {args.name} created.")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from runstream import governance as gov
    from runstream.topics import ensure_topics
    from runstream.v1.ingest_pb2 import TokenRecord
    config = _kafka_config(args)
    asyncio.run(ensure_topics(config))
    state = asyncio.run(gov.read_state(config))
    if args.action == "create":
        if not args.project or not args.scope:
            raise RunstreamError("token create needs --project P (or '*') and --scope ingest|read|admin")
        missing = [p for p in args.project if p != "*" and p not in state.projects]
        if missing:
            raise RunstreamError(f"no such project(s): {missing}; create them with `runstream project create NAME`.")
        expires = gov.parse_duration(args.expires) if args.expires else 0
        secret, rec = gov.new_token(args.name or ",".join(args.project), args.project, args.scope, expires)
        asyncio.run(gov.publish(config, gov.event("token.create", token=rec)))
        print(f"Token {rec.token_id} created for {', '.join(rec.projects)} ({', '.join(rec.scopes)}). "
              "It is shown once; store it now:")
        print(secret)
    elif args.action == "revoke":
        if not args.token_id:
            raise RunstreamError("token revoke needs the token id (see `runstream token list`)")
        rec = state.tokens.get(args.token_id)
        if rec is None:
            raise RunstreamError(f"no token {args.token_id!r}; `runstream token list` shows them.")
        previous = TokenRecord()
        previous.CopyFrom(rec)
        rec.revoked, rec.revoked_ms = True, gov.event("x").at_ms
        asyncio.run(gov.publish(config, gov.event("token.revoke", token=rec), before=previous))
        print(f"Token {args.token_id} revoked; every ingest replica refuses it within seconds.")
    else:
        import time as _t
        now = _t.time() * 1000
        rows = [(r.token_id, r.name, ",".join(r.projects), ",".join(r.scopes),
                 "revoked" if r.revoked else ("expired" if r.expires_ms and r.expires_ms <= now else "active"),
                 _t.strftime("%Y-%m-%d %H:%M", _t.gmtime(r.expires_ms / 1000)) if r.expires_ms else "never")
                for r in sorted(state.tokens.values(), key=lambda r: r.created_ms)]
        print_result(["token_id", "name", "projects", "scopes", "state", "expires (UTC)"], rows, args.format)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from runstream import audit
    config = _config(args)
    client = sql_client(config)
    db = config.clickhouse.database
    if args.action == "verify":
        rows = client.query(f"SELECT seq, toUnixTimestamp64Milli(at), actor, action, target, source, before, after, "
                            f"prev_hash, hash, project FROM {db}.audit_log WHERE project = %(p)s ORDER BY seq",
                            parameters={"p": args.project}).result_rows
        problems = audit.verify(rows)
        if problems:
            for p in problems:
                print(f"audit verify {args.project}: {p}", file=sys.stderr)
            return 1
        print(f"audit trail of {args.project}: {len(rows)} records, chain intact.")
        return 0
    where, params = ["project = %(p)s"], {"p": args.project, "n": args.limit}
    if args.action_filter:
        where.append("action = %(a)s")
        params["a"] = args.action_filter
    if args.target:
        where.append("target = %(t)s")
        params["t"] = args.target
    res = client.query(f"SELECT seq, at, actor, action, target, source, after FROM {db}.audit_log "
                       f"WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT %(n)s", parameters=params)
    print_result(list(res.column_names), res.result_rows, args.format)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from runstream import governance as gov
    from runstream.topics import ensure_topics
    from runstream.v1.ingest_pb2 import RunDeletion
    config = _kafka_config(args)
    asyncio.run(ensure_topics(config))
    asyncio.run(gov.publish(config, gov.event("run.delete", run_delete=RunDeletion(
        project=args.project, run_id=args.run_id, reason=args.reason))))
    print(f"Deletion of run {args.run_id} recorded; the sink removes it from every table.")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from runstream import governance as gov
    from runstream.topics import ensure_topics
    from runstream.v1.ingest_pb2 import RetentionPolicy

    def days(text: str | None) -> int:
        if not text:
            return 0
        ms = gov.parse_duration(text)
        if ms % 86_400_000:
            raise RunstreamError(f"retention {text!r}: give whole days, e.g. 30d")
        return ms // 86_400_000
    config = _kafka_config(args)
    asyncio.run(ensure_topics(config))
    policy = RetentionPolicy(project=args.project, raw_days=days(args.raw), rollup_days=days(args.rollups))
    asyncio.run(gov.publish(config, gov.event("retention.set", retention=policy)))
    print(f"Retention for {args.project}: raw points {policy.raw_days or 'kept'} days, "
          f"rollups {policy.rollup_days or 'kept'} days.")
    return 0


def cmd_dashboards(args: argparse.Namespace) -> int:
    if args.action == "build":
        from dashboards.build import main as build_main
        return build_main()
    if not args.grafana_url or not args.token:
        raise RunstreamError("push needs --grafana-url and --token (a Grafana service account token with Editor rights).")
    from dashboards.push import push
    try:
        for url in push(args.grafana_url, args.token, folder=args.folder):
            print(url)
    except Exception as exc:
        raise RunstreamError(f"pushing to {args.grafana_url} failed: {exc}") from exc
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from runstream.demo import run_demo
    return run_demo(_config(args), jobs=args.jobs, seconds=args.seconds, rate=args.rate)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runstream", description="Experiment tracking on Kafka and ClickHouse.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="YAML config file (default: $RUNSTREAM_CONFIG)")
        sp.add_argument("--data-dir", help="data directory (default: $RUNSTREAM_DATA_DIR or ~/.runstream)")
        sp.add_argument("--clickhouse-url", help="a ClickHouse server (http://user:pass@host:8123) instead of the embedded store")
        sp.add_argument("--kafka", help="Kafka bootstrap host:port (default: the broker `up` starts)")
        return sp

    up = common(sub.add_parser("up", help="everything on this machine: Kafka, ingest, sink, storage"))
    up.add_argument("--ingest-replicas", type=int, default=1)
    up.set_defaults(func=cmd_up)
    for role, text in (("ingest", "run the gRPC ingest role"), ("sink", "run the storage sink role"),
                       ("process", "run the stream processors (rollups, fleet view, anomaly detection)")):
        common(sub.add_parser(role, help=text)).set_defaults(func=cmd_role)

    sql = common(sub.add_parser("sql", help="read-only SQL over the stored data"))
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(func=cmd_sql)

    runs = common(sub.add_parser("runs", help="recent runs with latest metrics, points acknowledged vs stored"))
    runs.add_argument("--project")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    runs.set_defaults(func=cmd_runs)

    sync = sub.add_parser("sync", help="resend batches the SDK spooled to disk")
    sync.add_argument("--spool-dir")
    sync.add_argument("--url", help="ingest address host:port")
    sync.add_argument("--all", action="store_true", help="also files of processes still running")
    sync.set_defaults(func=cmd_sync)

    lin = common(sub.add_parser("lineage", help="a run's upstream graph; runs that used a dataset; what made an artifact"))
    lin.add_argument("run", nargs="?")
    lin.add_argument("--dataset")
    lin.add_argument("--artifact")
    lin.add_argument("--format", choices=["table", "csv", "json"], default="table")
    lin.set_defaults(func=cmd_lineage)

    project = common(sub.add_parser("project", help="governance: create a project"))
    project.add_argument("action", choices=["create"])
    project.add_argument("name")
    project.add_argument("--description", default="")
    project.set_defaults(func=cmd_project)

    token = common(sub.add_parser("token", help="governance: create, list and revoke scoped tokens"))
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("token_id", nargs="?", help="for revoke")
    token.add_argument("--project", action="append", default=[], help="project the token may use ('*' for all); repeatable")
    token.add_argument("--scope", action="append", default=[], choices=["ingest", "read", "admin"], help="repeatable")
    token.add_argument("--expires", help="lifetime, e.g. 30d, 12h")
    token.add_argument("--name")
    token.add_argument("--format", choices=["table", "csv", "json"], default="table")
    token.set_defaults(func=cmd_token)

    aud = common(sub.add_parser("audit", help="governance: the hash-chained audit trail (log, verify)"))
    aud.add_argument("action", choices=["log", "verify"])
    aud.add_argument("--project", required=True)
    aud.add_argument("--action", dest="action_filter", help="log: only this action (e.g. token.revoke)")
    aud.add_argument("--target", help="log: only this run / token id")
    aud.add_argument("--limit", type=int, default=100)
    aud.add_argument("--format", choices=["table", "csv", "json"], default="table")
    aud.set_defaults(func=cmd_audit)

    run = common(sub.add_parser("run", help="governance: delete a run's data everywhere it is stored"))
    run.add_argument("action", choices=["delete"])
    run.add_argument("run_id")
    run.add_argument("--project", required=True)
    run.add_argument("--reason", default="")
    run.set_defaults(func=cmd_run)

    ret = common(sub.add_parser("retention", help="governance: per-project retention of raw points and rollups"))
    ret.add_argument("action", choices=["set"])
    ret.add_argument("--project", required=True)
    ret.add_argument("--raw", help="keep raw points this long, e.g. 30d (default: forever)")
    ret.add_argument("--rollups", help="keep rollups this long, e.g. 365d (default: forever)")
    ret.set_defaults(func=cmd_retention)

    dashboards = sub.add_parser("dashboards", help="write the dashboards' JSON (build) or upload them to Grafana (push)")
    dashboards.add_argument("action", choices=["build", "push"])
    dashboards.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL"))
    dashboards.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"))
    dashboards.add_argument("--folder", default="runstream")
    dashboards.set_defaults(func=cmd_dashboards)

    demo = common(sub.add_parser("demo", help="start the stack, run a fleet of training jobs, print query results"))
    demo.add_argument("--jobs", type=int, default=50)
    demo.add_argument("--seconds", type=float, default=15.0, help="how long the simulated jobs log")
    demo.add_argument("--rate", type=float, default=100.0, help="log() calls per second per simulated job")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sys.exit(args.func(args))
    except RunstreamError as exc:
        print(f"runstream {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
