"""The CLI's commands that need only the slim SDK install: `sync`, `config show`, `import`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from runstream.integrations import importers
from runstream.sdk import SendError, client_config, connect, send_spool_file, spool
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import RunstreamError


def cmd_sync(args: argparse.Namespace) -> int:
    config = client_config()
    directory = Path(args.spool_dir) if args.spool_dir else config.spool_path
    transport = connect(config, url=args.url)
    # Durable logging's write-ahead files count only once their process is gone (a live one still sends them).
    files = [p for p in spool.files(directory, wal=True)
             if not spool.owner_alive(p) or (args.all and p.suffix == ".spool")]
    sent = 0
    for i, path in enumerate(files, 1):
        try:
            sent += send_spool_file(transport, path)
            print(f"[{i}/{len(files)}] {path.name}: sent ({sent} batches so far)", file=sys.stderr)
        except SendError as exc:
            print(f"runstream sync: {path.name} not sent ({exc}); it stays in {directory}. Try again later.", file=sys.stderr)
            return 1
    print(f"Sent {sent} batches from {len(files)} spool files in {directory}.")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The resolved config (file, then env), as the roles receive it."""
    config = RunstreamConfig.load(args.config)
    data = config.dump()
    print(json.dumps(data, indent=2) if args.format == "json" else yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """MLflow or TensorBoard runs into runstream through ingest; a second import of the same source adds nothing."""
    transport = connect(client_config(), url=args.url, token=args.token)
    try:
        if args.source == "mlflow":
            if not args.tracking_uri:
                raise RunstreamError("import mlflow needs --tracking-uri (a server URL, an mlruns directory or a database URI)")
            report = importers.import_mlflow(args.tracking_uri, transport, experiments=args.experiment or None)
        else:
            if not args.logdir:
                raise RunstreamError("import tensorboard needs the log directory: runstream import tensorboard DIR")
            project = args.project or Path(args.logdir).resolve().name
            report = importers.import_tensorboard(args.logdir, transport, project=project)
    except SendError as exc:
        raise RunstreamError(f"ingest refused the import ({exc}); what was acknowledged is stored, and importing "
                             "again resends the rest without duplicating anything") from exc
    finally:
        transport.close()
    print(report.summary())
    return 0 if report.points_acked == report.points_source else 1
