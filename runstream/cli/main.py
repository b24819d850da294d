"""The one CLI: a subcommand per role (`ingest`, `process`, `sink`, `mlflow`), `up` for all of them on one machine, and
tools (`sql`, `runs`, `sync`, `demo`, governance). This module only parses: the commands live in
runstream.cli.commands, reads and tools (server extra) and runstream.cli.client (slim SDK)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from runstream.wire.errors import RunstreamError

# The role registry (runstream.ops.roles) needs the server extra; a test keeps these names equal to it.
ROLE_HELP = {"ingest": "run the gRPC ingest role", "process": "run the stream processors (rollups, fleet view, anomaly detection)",
             "sink": "run the storage sink role (and the SQL endpoint of the embedded store)",
             "mlflow": "serve the MLflow tracking REST API (MLflow clients log into the pipeline through it)"}


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
    up.set_defaults(func="cmd_up")
    for role, text in ROLE_HELP.items():
        common(sub.add_parser(role, help=text)).set_defaults(func="cmd_role")

    sql = common(sub.add_parser("sql", help="read-only SQL over the stored data"))
    sql.add_argument("query")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.set_defaults(func="cmd_sql")

    runs = common(sub.add_parser("runs", help="recent runs with latest metrics, points acknowledged vs stored"))
    runs.add_argument("--project")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    runs.set_defaults(func="cmd_runs")

    conf = sub.add_parser("config", help="print the resolved config (file, then env vars), as every role receives it")
    conf.add_argument("action", choices=["show"])
    conf.add_argument("--config", help="YAML config file (default: $RUNSTREAM_CONFIG)")
    conf.add_argument("--format", choices=["yaml", "json"], default="yaml")
    conf.set_defaults(func="cmd_config")

    sync = sub.add_parser("sync", help="resend batches the SDK spooled to disk")
    sync.add_argument("--spool-dir")
    sync.add_argument("--url", help="ingest address host:port")
    sync.add_argument("--all", action="store_true", help="also files of processes still running")
    sync.set_defaults(func="cmd_sync")

    lin = common(sub.add_parser("lineage", help="a run's upstream graph; runs that used a dataset; what made an artifact"))
    lin.add_argument("run", nargs="?")
    lin.add_argument("--project", help="the run's project (needed when several projects hold the run id)")
    lin.add_argument("--dataset")
    lin.add_argument("--artifact")
    lin.add_argument("--format", choices=["table", "csv", "json"], default="table")
    lin.set_defaults(func="cmd_lineage")

    project = common(sub.add_parser("project", help="governance: create a project"))
    project.add_argument("action", choices=["create"])
    project.add_argument("name")
    project.add_argument("--description", default="")
    project.add_argument("--token", help="a token with the admin scope (default: $RUNSTREAM_TOKEN, then <data_dir>/admin.token)")
    project.set_defaults(func="cmd_project")

    token = common(sub.add_parser("token", help="governance: create, list and revoke scoped tokens"))
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("token_id", nargs="?", help="for revoke")
    token.add_argument("--project", action="append", default=[], help="project the token may use ('*' for all); repeatable")
    token.add_argument("--scope", action="append", default=[], choices=["ingest", "read", "admin"], help="repeatable")
    token.add_argument("--expires", help="lifetime, e.g. 30d, 12h")
    token.add_argument("--name")
    token.add_argument("--format", choices=["table", "csv", "json"], default="table")
    token.add_argument("--token", help="a token with the admin scope (default: $RUNSTREAM_TOKEN, then <data_dir>/admin.token)")
    token.set_defaults(func="cmd_token")

    aud = common(sub.add_parser("audit", help="governance: the hash-chained audit trail (log, verify)"))
    aud.add_argument("action", choices=["log", "verify"])
    aud.add_argument("--project", required=True)
    aud.add_argument("--action", dest="action_filter", help="log: only this action (e.g. token.revoke)")
    aud.add_argument("--target", help="log: only this run / token id")
    aud.add_argument("--limit", type=int, default=100)
    aud.add_argument("--format", choices=["table", "csv", "json"], default="table")
    aud.set_defaults(func="cmd_audit")

    art = common(sub.add_parser("artifacts", help="a run's artifacts: list them, or fetch their bytes (sha256 checked)"))
    art.add_argument("action", choices=["list", "fetch"])
    art.add_argument("run_id")
    art.add_argument("--project")
    art.add_argument("--name", help="fetch: only artifacts whose file name is this")
    art.add_argument("--to", default=".", help="fetch: the directory to copy them into (default: here)")
    art.add_argument("--format", choices=["table", "csv", "json"], default="table")
    art.set_defaults(func="cmd_artifacts")

    run = common(sub.add_parser("run", help="governance: delete a run's data everywhere it is stored"))
    run.add_argument("action", choices=["delete"])
    run.add_argument("run_id")
    run.add_argument("--project", required=True)
    run.add_argument("--reason", default="")
    run.add_argument("--force", action="store_true", help="record the deletion even if no such run is stored (yet)")
    run.add_argument("--token", help="a token with the admin scope (default: $RUNSTREAM_TOKEN, then <data_dir>/admin.token)")
    run.set_defaults(func="cmd_run")

    ret = common(sub.add_parser("retention", help="governance: per-project retention of raw points and rollups"))
    ret.add_argument("action", choices=["set"])
    ret.add_argument("--project", required=True)
    ret.add_argument("--raw", help="keep raw points this long, e.g. 30d (default: forever)")
    ret.add_argument("--rollups", help="keep rollups this long, e.g. 365d (default: forever)")
    ret.add_argument("--token", help="a token with the admin scope (default: $RUNSTREAM_TOKEN, then <data_dir>/admin.token)")
    ret.set_defaults(func="cmd_retention")

    dashboards = sub.add_parser("dashboards", help="write the dashboards' JSON (build) or upload them to Grafana (push)")
    dashboards.add_argument("action", choices=["build", "push"])
    dashboards.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL"))
    dashboards.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"))
    dashboards.add_argument("--folder", default="runstream")
    dashboards.set_defaults(func="cmd_dashboards")

    kafka_cmd = common(sub.add_parser("kafka", help="as a Kafka admin: create runstream's topics and grant each role's "
                                                     "principal (ingest, process, sink) its ACLs"))
    kafka_cmd.add_argument("action", choices=["setup"])
    kafka_cmd.set_defaults(func="cmd_kafka")

    tls_cmd = sub.add_parser("tls", help="make a private CA and a server certificate for ingest (and the SQL endpoint)")
    tls_cmd.add_argument("action", choices=["init"])
    tls_cmd.add_argument("directory")
    tls_cmd.add_argument("--host", action="append", default=[], help="a name or IP the server is reached by; repeatable")
    tls_cmd.add_argument("--client", action="append", default=[],
                         help="also a client certificate NAME.pem / NAME.key (e.g. for Prometheus to scrape /metrics); repeatable")
    tls_cmd.set_defaults(func="cmd_tls")

    imp = sub.add_parser("import", help="import runs from an MLflow store or TensorBoard logs through ingest (idempotent)")
    imp.add_argument("source", choices=["mlflow", "tensorboard"])
    imp.add_argument("logdir", nargs="?", help="tensorboard: the log directory (each directory of event files is a run)")
    imp.add_argument("--tracking-uri", help="mlflow: a server URL, an mlruns directory, or a database URI")
    imp.add_argument("--experiment", action="append", default=[], help="mlflow: only this experiment (name or id); repeatable")
    imp.add_argument("--project", help="tensorboard: the project (default: the log directory's name)")
    imp.add_argument("--url", help="ingest address host:port (default: the local stack)")
    imp.add_argument("--token", help="a token with the ingest scope (default: $RUNSTREAM_TOKEN, then the local stack's)")
    imp.set_defaults(func="cmd_import")

    demo = common(sub.add_parser("demo", help="start the stack, run a fleet of training jobs, print query results"))
    demo.add_argument("--jobs", type=int, default=50)
    demo.add_argument("--seconds", type=float, default=15.0, help="how long the simulated jobs log")
    demo.add_argument("--rate", type=float, default=100.0, help="log() calls per second per simulated job")
    demo.set_defaults(func="cmd_demo")
    return p


CLIENT_COMMANDS = {"cmd_sync", "cmd_config", "cmd_import"}  # these work with the slim SDK install
ROLE_COMMANDS = {"cmd_role", "cmd_up"}        # these load only the roles' own modules
# The server extra's commands by what they load: reads need the ClickHouse client, tools Kafka, TLS and the demo;
# the rest (governance) gRPC only, so a token or project command starts in a fraction of a second.
READ_COMMANDS = {"cmd_sql", "cmd_runs", "cmd_lineage", "cmd_audit", "cmd_artifacts", "cmd_run"}
TOOL_COMMANDS = {"cmd_dashboards", "cmd_kafka", "cmd_tls", "cmd_demo"}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function behind a subcommand. Server commands need the [server] extra, imported only when used."""
    if name in CLIENT_COMMANDS:
        from runstream.cli import client as module
    else:
        try:
            if name in ROLE_COMMANDS:
                from runstream.cli import roles as module  # type: ignore[no-redef]
            elif name in READ_COMMANDS:
                from runstream.cli import reads as module  # type: ignore[no-redef]
            elif name in TOOL_COMMANDS:
                from runstream.cli import tools as module  # type: ignore[no-redef]
            else:
                from runstream.cli import commands as module  # type: ignore[no-redef]
        except ModuleNotFoundError as exc:
            raise RunstreamError(f"this command needs the server roles ({exc.name} is not installed): "
                                 "pip install 'runstream[server]'") from exc
    return getattr(module, name)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        sys.exit(command(args.func)(args))
    except RunstreamError as exc:
        print(f"runstream {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `runstream runs | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
