"""Files that hold secrets (tokens, the resolved config, stack.json): 0600 from their first byte, in 0700 dirs; and the
digest artifacts are recorded and checked by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory's files (relative path and digest of each, sorted)."""
    if path.is_dir():
        h, total = hashlib.sha256(), 0
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            d, n = file_digest(f)
            h.update(f"{f.relative_to(path)}\0{d}\n".encode())
            total += n
        return h.hexdigest(), total
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Create ``path`` (and parents) as 0700. An existing directory keeps its mode unless ``tighten`` (for
    directories that are runstream's own, never one a user named, which may be shared)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is masked by the umask
    elif tighten:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: str | bytes) -> Path:
    """Replace ``path`` atomically with ``data``, readable by the owner only from the first byte (a missing
    directory is made 0700)."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode on open
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
