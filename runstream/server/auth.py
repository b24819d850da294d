"""Tokens, for every surface that accepts requests (ingest's gRPC, the SQL endpoint): governance tokens from the
control topic (runstream.server.governance), and a YAML file for development and bootstrap (the dev token
`runstream up` creates). Only sha256 digests are kept in memory.

File layout (``<data_dir>/tokens.yaml``)::

    tokens:
      - token: rs_...          # the secret the SDK sends as "authorization: Bearer <token>"
        name: dev
        projects: ["*"]        # or a list of project names
        scopes: [ingest, read]

The file is re-read when it changes (checked at most every ``reload_s``), so a
removed token stops working on every replica within seconds.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from runstream.v1.ingest_pb2 import ControlEvent, TokenRecord
from runstream.wire.errors import AuthError, PermissionDenied
from runstream.wire.files import write_private

log = logging.getLogger("runstream.auth")


@dataclass(frozen=True)
class Token:
    name: str
    projects: frozenset[str]
    scopes: frozenset[str]

    def allows(self, project: str, scope: str) -> bool:
        return scope in self.scopes and ("*" in self.projects or project in self.projects)


def new_token() -> str:
    return "rs_" + secrets.token_urlsafe(24)


def ensure_dev_token(path: Path) -> str:
    """Return the first token in the file, creating the file with one all-projects token (ingest, read, admin) if
    missing."""
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        for entry in data.get("tokens") or []:
            return str(entry["token"])
    token = new_token()
    # The local owner's token (stack.json, 0600): whoever reads it also reads the admin token beside the data, so
    # it carries admin too, and MLflow code that creates its experiments runs with it unchanged.
    write_private(path, yaml.safe_dump({"tokens": [{"token": token, "name": "dev", "projects": ["*"],
                                                     "scopes": ["ingest", "read", "admin"]}]}))
    return token


def ensure_admin_token(tokens_path: Path, admin_path: Path) -> str:
    """The bootstrap admin token (all projects, admin scope): kept in ``admin_path`` (0600) and listed in the token
    file; created on first use. Governance actions through ingest's Admin service need it (or one it made)."""
    return ensure_file_token(tokens_path, admin_path, "admin", ["admin"])


def ensure_file_token(tokens_path: Path, secret_path: Path, name: str, scopes: list[str]) -> str:
    """An all-projects token kept in ``secret_path`` (0600) and listed in the token file; created on first use."""
    if secret_path.exists():
        return secret_path.read_text().strip()
    secret = new_token()
    data = (yaml.safe_load(tokens_path.read_text()) or {}) if tokens_path.exists() else {}
    entries = list(data.get("tokens") or [])
    entries.append({"token": secret, "name": name, "projects": ["*"], "scopes": scopes})
    write_private(secret_path, secret + "\n")
    write_private(tokens_path, yaml.safe_dump({**data, "tokens": entries}))
    return secret


class TokenStore:
    def __init__(self, path: Path, *, reload_s: float = 2.0) -> None:
        self.path = path
        self.reload_s = reload_s
        self._tokens: dict[str, Token] = {}
        self._control: dict[str, TokenRecord] = {}  # sha256 -> record, from the control topic
        self.by_id: dict[str, TokenRecord] = {}       # token id -> record (admin: list, revoke)
        self.projects: set[str] = set()               # projects created through governance
        self._mtime: float | None = None
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._tokens, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
            entries = list(data.get("tokens") or [])
        except (OSError, yaml.YAMLError, AttributeError) as exc:
            # Keep serving with the tokens we had rather than locking everyone out.
            log.error("Token file %s is unreadable (%s); keeping the previous tokens.", self.path, exc)
            self._mtime = mtime
            return
        tokens = {}
        for entry in entries:
            # Keyed by a digest so the secret itself is not kept around in a dict of strings.
            tokens[_digest(str(entry["token"]))] = Token(
                name=str(entry.get("name", "")),
                projects=frozenset(entry.get("projects") or ["*"]),
                scopes=frozenset(entry.get("scopes") or ["ingest"]))
        self._tokens, self._mtime = tokens, mtime

    def authenticate(self, authorization: str | None) -> Token:
        """The token for an ``authorization`` metadata value; AuthError if missing or unknown."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError("missing bearer token: send metadata 'authorization: Bearer <token>' (set RUNSTREAM_TOKEN)")
        return self.lookup(authorization[7:].strip())

    def lookup(self, secret: str) -> Token:
        """The token for a secret; AuthError if unknown, revoked or expired."""
        now = time.monotonic()
        if now - self._checked > self.reload_s:
            self._checked = now
            self._reload()
        digest = _digest(secret)
        token = self._tokens.get(digest)
        if token is not None:
            return token
        rec = self._control.get(digest)
        if rec is None:
            raise AuthError("unknown token")
        if rec.revoked:
            raise AuthError(f"token {rec.token_id} was revoked")
        if rec.expires_ms and rec.expires_ms <= time.time() * 1000:
            raise AuthError(f"token {rec.token_id} has expired")
        return Token(name=rec.token_id, projects=frozenset(rec.projects), scopes=frozenset(rec.scopes))

    def apply_control(self, ev: ControlEvent) -> None:
        """Follow governance: a token created, changed or revoked (see runstream.server.governance)."""
        if ev.HasField("token"):
            self._control[ev.token.sha256] = ev.token
            self.by_id[ev.token.token_id] = ev.token
        elif ev.HasField("project"):
            self.projects.add(ev.project.name)


def authorize(token: Token, project: str, scope: str = "ingest") -> None:
    if not token.allows(project, scope):
        raise PermissionDenied(f"token {token.name!r} may not {scope} project {project!r}")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
