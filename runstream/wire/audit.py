"""The audit trail: records on ``runstream.audit`` (keyed by project), chained per project by the sink.

Chain rule, the one place it is defined: ``hash = sha256(prev_hash + "\\n" + canonical)`` where
``canonical`` is the record's fields joined in a fixed order, and the first record of a project has
``prev_hash = ""``. Records are numbered per project (``seq`` from 1). `verify` recomputes it all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterable
from typing import Any

from runstream.v1.ingest_pb2 import AuditRecord

Row = tuple[Any, ...]

def canonical(project: str, seq: int, at_ms: int, actor: str, action: str, target: str, source: str,
              before: str, after: str) -> str:
    return json.dumps([project, seq, at_ms, actor, action, target, source, before, after], separators=(",", ":"))


def chain(prev_hash: str, record: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + record).encode()).hexdigest()


def record(project: str, actor: str, action: str, target: str, *, after: Any = None, before: Any = None,
           source: str | None = None, at_ms: int = 0) -> AuditRecord:
    return AuditRecord(project=project, at_ms=at_ms or int(time.time() * 1000), actor=actor, action=action, target=target,
                       source=source if source is not None else socket.gethostname(),
                       before=json.dumps(before, sort_keys=True, default=str) if before is not None else "",
                       after=json.dumps(after, sort_keys=True, default=str) if after is not None else "")


def sign(key: bytes, record_hash: str) -> str:
    """The sink's signature of a chained record: without the key, a re-chained trail cannot be signed again."""
    return hmac.new(key, record_hash.encode(), hashlib.sha256).hexdigest()


def verify(rows: Iterable[Row], *, key: bytes | None = None, source_offsets: Iterable[tuple[int, int]] | None = None) -> list[str]:
    """Problems in one project's chain; rows are (seq, at_ms, actor, action, target, source, before, after,
    prev_hash, hash, project, partition, offset, sig) ordered by seq. With ``key``, every signature is checked;
    with ``source_offsets`` (the project's records in the audit topic, as (partition, offset)), every one must be
    in the trail, which is what catches a trail cut short at its end. Empty list: intact."""
    problems: list[str] = []
    prev, expected_seq = "", 1
    stored: set[tuple[int, int]] = set()
    for seq, at_ms, actor, action, target, source, before, after, prev_hash, h, project, partition, offset, sig in rows:
        stored.add((int(partition), int(offset)))
        if seq != expected_seq:
            problems.append(f"record {expected_seq} is missing (next is {seq}): deleted from the trail")
            expected_seq = seq
        if prev_hash != prev:
            problems.append(f"record {seq} ({action} {target}): prev_hash does not match record {seq - 1}")
        if chain(prev_hash, canonical(project, seq, at_ms, actor, action, target, source, before, after)) != h:
            problems.append(f"record {seq} ({action} {target}): content does not match its hash: altered")
        if key is not None and not hmac.compare_digest(sign(key, h), sig or ""):
            problems.append(f"record {seq} ({action} {target}): signature does not match: forged or re-chained")
        prev, expected_seq = h, seq + 1
    for partition, offset in sorted(set(source_offsets or ()) - stored):
        problems.append(f"the audit topic's record at partition {partition}, offset {offset} is missing from the trail")
    return problems
