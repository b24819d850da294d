"""Governance state (projects, tokens) as events on the control topic: the pure part (no Kafka I/O).

Every change is a ControlEvent on ``runstream.control`` (one partition, so one order; keyed by the
object it changes). Ingest replicas read the topic from the start and follow it, so a revoked token
stops working everywhere within about a second; the sink stores every event in ClickHouse
(``governance_events``) as its history. Token secrets are shown once and never stored: only sha256.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from runstream.v1.ingest_pb2 import ControlEvent, ProjectRecord, TokenRecord
from runstream.wire.errors import ValidationError

SCOPES = ("ingest", "read", "admin")
# Project, run and metric names: ingest refuses others, the sink and the CLI check the same rule.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*\Z")
DURATION_RE = re.compile(r"^(\d+)([smhd])$")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_duration(text: str) -> int:
    """'30d', '12h', '15m', '90s' -> milliseconds."""
    m = DURATION_RE.match(text.strip())
    if not m:
        raise ValidationError("expires", f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000


def new_token(name: str, projects: list[str], scopes: list[str], expires_ms: int = 0) -> tuple[str, TokenRecord]:
    """A fresh token: the secret string (show it once) and the record to publish (its hash only)."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValidationError("scope", f"{bad or scopes} not in {SCOPES}")
    token_id = secrets.token_hex(6)
    secret = f"rs_{token_id}_{secrets.token_urlsafe(24)}"
    now = int(time.time() * 1000)
    return secret, TokenRecord(token_id=token_id, name=name, projects=projects, scopes=scopes, sha256=token_sha256(secret),
                               created_ms=now, expires_ms=now + expires_ms if expires_ms else 0)


def event(action: str, **body: object) -> ControlEvent:
    try:
        actor = getpass.getuser()
    except Exception:
        actor = "unknown"
    return ControlEvent(actor=actor, at_ms=int(time.time() * 1000), action=action, **body)  # type: ignore[arg-type]


def object_id(ev: ControlEvent) -> str:
    kind = ev.WhichOneof("body")
    return {"project": lambda: ev.project.name, "token": lambda: ev.token.token_id,
            "run_delete": lambda: ev.run_delete.run_id, "retention": lambda: ev.retention.project,
            "registered_model": lambda: ev.registered_model.model_key,
            "model_version": lambda: f"{ev.model_version.model_key}/{ev.model_version.version}"}[kind]()


@dataclass
class State:
    projects: dict[str, ProjectRecord]
    tokens: dict[str, TokenRecord]  # by token id

    def apply(self, ev: ControlEvent) -> None:
        kind = ev.WhichOneof("body")
        if kind == "project":
            self.projects[ev.project.name] = ev.project
        elif kind == "token":
            self.tokens[ev.token.token_id] = ev.token


def audit_projects(ev: ControlEvent) -> list[str]:
    """Whose audit trail records this event ('*' for tokens that cover every project)."""
    kind = ev.WhichOneof("body")
    if kind == "token":
        return list(ev.token.projects) or ["*"]
    return [{"project": ev.project.name, "run_delete": ev.run_delete.project, "retention": ev.retention.project,
             "registered_model": ev.registered_model.project, "model_version": ev.model_version.project}[kind]]


