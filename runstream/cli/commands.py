"""The CLI's governance commands (the server extra): projects, tokens, retention, each one call to ingest's Admin
service. They speak gRPC only, so they start quickly (the Kafka and ClickHouse clients are not imported)."""

from __future__ import annotations

import argparse
import time

import grpc

from runstream.cli.output import print_result, resolve_config
from runstream.sdk import connect
from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.v1.ingest_pb2 import ProjectRecord, RetentionPolicy
from runstream.wire import governance as gov
from runstream.wire.errors import RunstreamError


def admin(args: argparse.Namespace, request: ingest_pb2.AdminRequest) -> ingest_pb2.AdminResponse:
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
    res = admin(args, ingest_pb2.AdminRequest(create_project=ProjectRecord(name=args.name, description=args.description)))
    print(res.message)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    if args.action == "create":
        if not args.project or not args.scope:
            raise RunstreamError("token create needs --project P (or '*') and --scope ingest|read|admin")
        expires = gov.parse_duration(args.expires) if args.expires else 0
        res = admin(args, ingest_pb2.AdminRequest(create_token=ingest_pb2.TokenRequest(
            name=args.name or ",".join(args.project), projects=args.project, scopes=args.scope, expires_in_ms=expires)))
        rec = res.tokens[0]
        print(f"Token {rec.token_id} created for {', '.join(rec.projects)} ({', '.join(rec.scopes)}). "
              "It is shown once; store it now:")
        print(res.secret)
    elif args.action == "revoke":
        if not args.token_id:
            raise RunstreamError("token revoke needs the token id (see `runstream token list`)")
        print(admin(args, ingest_pb2.AdminRequest(revoke_token=args.token_id)).message)
    else:
        now = time.time() * 1000
        tokens = admin(args, ingest_pb2.AdminRequest(list_tokens=ingest_pb2.ListTokens())).tokens
        rows = [(r.token_id, r.name, ",".join(r.projects), ",".join(r.scopes),
                 "revoked" if r.revoked else ("expired" if r.expires_ms and r.expires_ms <= now else "active"),
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires_ms / 1000)) if r.expires_ms else "never")
                for r in tokens]
        print_result(["token_id", "name", "projects", "scopes", "state", "expires (UTC)"], rows, args.format)
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
    print(admin(args, ingest_pb2.AdminRequest(set_retention=policy)).message)
    return 0
