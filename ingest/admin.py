"""Governance through ingest: the Admin service. A token with the admin scope for the projects an action touches
is required ("*" to create projects or all-project tokens); the action becomes a control event with its audit
records, published here, so the CLI never writes Kafka itself and the actor on the audit trail is the token."""

from __future__ import annotations

import logging
import time

import grpc

from runstream.server import governance as gov_io
from runstream.server.auth import Token, TokenStore
from runstream.v1 import ingest_pb2
from runstream.wire import governance as gov
from runstream.wire.config import RunstreamConfig
from runstream.wire.errors import AuthError, PermissionDenied, RunstreamError, ValidationError

log = logging.getLogger("runstream.admin")


class AdminService:
    def __init__(self, config: RunstreamConfig, tokens: TokenStore) -> None:
        self.config = config
        self.tokens = tokens

    def _require(self, token: Token, projects: list[str], what: str) -> None:
        if "admin" not in token.scopes:
            raise PermissionDenied(f"token {token.name!r} lacks the admin scope needed to {what}")
        missing = [p for p in projects if not ("*" in token.projects or (p != "*" and p in token.projects))]
        if missing:
            raise PermissionDenied(f"token {token.name!r} may not {what}: it does not administer {missing}")

    async def _publish(self, caller: Token, action: str, before: object = None, **body: object) -> None:
        ev = gov.event(action, **body)
        ev.actor = f"token:{caller.name}"
        await gov_io.publish(self.config, ev, before=before)

    async def call(self, request: ingest_pb2.AdminRequest, token: Token) -> ingest_pb2.AdminResponse:
        kind = request.WhichOneof("action")
        if kind == "create_project":
            p = request.create_project
            if not gov.NAME_RE.match(p.name):
                raise ValidationError("create_project.name", f"{p.name[:40]!r}: letters, digits, '.', '_' and '-', "
                                                             "starting with a letter or digit")
            self._require(token, ["*"], "create projects")
            await self._publish(token, "project.create", project=p)
            return ingest_pb2.AdminResponse(message=f"Project {p.name} created.")
        if kind == "create_token":
            r = request.create_token
            if not r.projects or not r.scopes:
                raise ValidationError("create_token", "needs projects (or '*') and scopes (ingest, read, admin)")
            self._require(token, list(r.projects), "create tokens for these projects")  # before saying what exists
            unknown = [p for p in r.projects if p != "*" and p not in self.tokens.projects]
            if unknown:
                raise ValidationError("create_token.projects", f"no such project(s) {unknown}; create them first")
            secret, rec = gov.new_token(r.name or ",".join(r.projects), list(r.projects), list(r.scopes), r.expires_in_ms)
            await self._publish(token, "token.create", token=rec)
            shown = ingest_pb2.TokenRecord()
            shown.CopyFrom(rec)
            shown.ClearField("sha256")
            return ingest_pb2.AdminResponse(message=f"Token {rec.token_id} created.", secret=secret, tokens=[shown])
        if kind == "list_tokens":
            self._require(token, [], "list tokens")
            out = []
            for rec in sorted(self.tokens.by_id.values(), key=lambda r: r.created_ms):
                if "*" in token.projects or set(rec.projects) <= token.projects:
                    shown = ingest_pb2.TokenRecord()
                    shown.CopyFrom(rec)
                    shown.ClearField("sha256")
                    out.append(shown)
            return ingest_pb2.AdminResponse(message=f"{len(out)} tokens.", tokens=out)
        if kind == "revoke_token":
            found = self.tokens.by_id.get(request.revoke_token)
            if found is None:
                raise ValidationError("revoke_token", f"no token {request.revoke_token!r}")
            self._require(token, list(found.projects), "revoke this token")
            previous = ingest_pb2.TokenRecord()
            previous.CopyFrom(found)
            rec = ingest_pb2.TokenRecord()
            rec.CopyFrom(found)
            rec.revoked, rec.revoked_ms = True, int(time.time() * 1000)
            await self._publish(token, "token.revoke", before=previous, token=rec)
            return ingest_pb2.AdminResponse(message=f"Token {rec.token_id} revoked; every ingest replica refuses it "
                                                    "within seconds.")
        if kind == "delete_run":
            d = request.delete_run
            if not d.project or not d.run_id:
                raise ValidationError("delete_run", "needs project and run_id")
            self._require(token, [d.project], f"delete runs of project {d.project!r}")
            await self._publish(token, "run.delete", run_delete=d)
            return ingest_pb2.AdminResponse(message=f"Deletion of run {d.run_id} recorded; every sink removes it.")
        if kind == "set_retention":
            r = request.set_retention
            if not gov.NAME_RE.match(r.project):
                raise ValidationError("set_retention.project", f"{r.project[:40]!r} is not a project name")
            self._require(token, [r.project], f"set retention of project {r.project!r}")
            await self._publish(token, "retention.set", retention=r)
            return ingest_pb2.AdminResponse(message=f"Retention for {r.project}: raw points {r.raw_days or 'kept'} days, "
                                                    f"rollups {r.rollup_days or 'kept'} days.")
        raise ValidationError("action", "is empty")

    def handler(self, status_for: object) -> grpc.GenericRpcHandler:
        async def call(request: ingest_pb2.AdminRequest, context: grpc.aio.ServicerContext) -> ingest_pb2.AdminResponse:
            try:
                token = self.tokens.authenticate(dict(context.invocation_metadata() or ()).get("authorization"))
                return await self.call(request, token)
            except (AuthError, RunstreamError) as exc:
                await context.abort(status_for(exc), str(exc))  # type: ignore[operator]
                raise
        return grpc.method_handlers_generic_handler("runstream.v1.Admin", {
            "Call": grpc.unary_unary_rpc_method_handler(call, request_deserializer=ingest_pb2.AdminRequest.FromString,
                                                        response_serializer=ingest_pb2.AdminResponse.SerializeToString)})
