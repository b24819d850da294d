"""The CLI's commands that set up or exercise a stack (the server extra): Grafana dashboards, Kafka topics and ACLs,
TLS material, the demo fleet."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from runstream.cli.demo import run_demo
from runstream.cli.output import resolve_config
from runstream.dashboards import build as dashboards_build
from runstream.dashboards.push import push as dashboards_push
from runstream.ops import tls
from runstream.server.kafka import ROLE_PRINCIPALS, ensure_topics
from runstream.wire.errors import RunstreamError


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


def cmd_kafka(args: argparse.Namespace) -> int:
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
    paths = tls.init(Path(args.directory), args.host or ["localhost", "127.0.0.1"], clients=tuple(args.client))
    print(f"CA {paths['ca']} (give it to clients: RUNSTREAM_TLS_CA), server certificate {paths['cert']} and key "
          f"{paths['key']} (ingest.tls_cert / ingest.tls_key; metrics_tls_cert / metrics_tls_key), Kafka's PEM keystore "
          f"{paths['bundle']}.")
    for name in args.client:
        print(f"Client certificate {paths['client:' + name]} and key {Path(args.directory) / (name + '.key')} "
              "(signed by the CA: metrics_tls_client_ca accepts it).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(resolve_config(args), jobs=args.jobs, seconds=args.seconds, rate=args.rate)
