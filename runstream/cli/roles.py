"""The CLI's role commands: one role (`ingest`, `process`, `sink`) or all of them (`up`). Kept apart from the
other commands so a role's process imports only what it runs."""

from __future__ import annotations

import argparse
import asyncio

from runstream.ops.roles import run_role
from runstream.ops.supervisor import Supervisor
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError


def _config(args: argparse.Namespace) -> RunstreamConfig:
    return RunstreamConfig.load(args.config, flags={"data_dir": args.data_dir or None, "clickhouse.url": args.clickhouse_url
                                                     or None, "kafka.bootstrap": args.kafka or None})


def cmd_role(args: argparse.Namespace) -> int:
    config = _config(args)
    if not config.kafka.bootstrap:
        raise RunstreamError("kafka.bootstrap is not set: pass --kafka HOST:PORT or set RUNSTREAM_KAFKA_BOOTSTRAP "
                             "(`runstream up` starts a broker for you).")
    return asyncio.run(run_role(args.command, config))


def cmd_up(args: argparse.Namespace) -> int:
    return Supervisor(_config(args), ingest_replicas=args.ingest_replicas).run_forever()
