"""The SDK's on-disk spool: batches that could not be delivered yet.

A spool file is a sequence of (4-byte little-endian length, Batch bytes),
named ``<pid>-<unix ms>-<random>.spool``. The writing process resends its own
files when ingest is back; ``runstream sync`` resends files whose process is gone.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from runstream.v1.ingest_pb2 import Batch
from runstream.wire.files import private_dir

LEN = struct.Struct("<I")


def write(directory: Path, batches: Iterable[Batch], *, name: str = "", suffix: str = ".spool") -> Path:
    """A new spool file (or, with ``name``, that file replaced: what is left of it after a partial resend).
    ``suffix`` ".wal": durable logging's copy of batches still on their way, removed once acknowledged."""
    private_dir(directory)
    name = name or f"{os.getpid()}-{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}{suffix}"
    tmp = directory / (name + ".tmp")
    with open(tmp, "wb") as f:
        for b in batches:
            data = b.SerializeToString()
            f.write(LEN.pack(len(data)))
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    path = directory / name
    tmp.replace(path)  # a file is either whole or absent
    return path


def read(path: Path) -> Iterator[Batch]:
    data = path.read_bytes()
    pos = 0
    while pos + LEN.size <= len(data):
        (n,) = LEN.unpack_from(data, pos)
        pos += LEN.size
        yield Batch.FromString(data[pos:pos + n])
        pos += n


def files(directory: Path, *, pid: int | None = None, wal: bool = False) -> list[Path]:
    """Spool files oldest first; with ``pid``, only that process's; with ``wal``, durable logging's files too
    (those of a process that ended hold what it sent and never saw acknowledged)."""
    if not directory.is_dir():
        return []
    found = [*directory.glob("*.spool"), *(directory.glob("*.wal") if wal else ())]
    out = sorted(found, key=lambda p: p.name.split("-", 1)[1])
    if pid is not None:
        out = [p for p in out if p.name.startswith(f"{pid}-")]
    return out


def owner_alive(path: Path) -> bool:
    try:
        pid = int(path.name.split("-", 1)[0])
        os.kill(pid, 0)
        return True
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
