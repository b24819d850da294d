"""Resumable uploads into the artifact store.

A large file arrives in parts: ``PUT`` with ``Content-Range: bytes <first>-<last>/<total>`` and the whole file's
``X-Runstream-Sha256``. Each part is appended to a part file named by that digest beside the target, so a cut
connection, a restarted client or a restarted server resumes where the bytes stopped rather than at zero.
``Content-Range: bytes */<total>`` with an empty body asks how many bytes are held. The last part's request checks the
digest of the whole file and moves it into place; a part that does not start at the bytes held is refused with 409
and the offset to send from (``X-Runstream-Upload-Offset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from runstream.mlflow.protocol import MlflowError
from runstream.wire.mlflow import OFFSET_HEADER

_RANGE = re.compile(r"bytes (?:(\d{1,19})-(\d{1,19})|\*)/(\d{1,19})\Z")


@dataclass(frozen=True)
class ContentRange:
    first: int | None  # None: a question (how many bytes are held), no bytes sent
    last: int | None
    total: int


@dataclass(frozen=True)
class Progress:
    held: int            # bytes of the file the server holds
    done: bool           # the whole file is in place
    completed_now: bool  # ... and this request put it there


class OffsetConflict(MlflowError):
    """A part that does not start where the bytes held end: the client sends from ``held``."""

    def __init__(self, held: int, first: int) -> None:
        super().__init__("RESOURCE_CONFLICT", f"this upload holds {held} bytes, the part sent starts at {first}: "
                                              f"send from byte {held}", 409)
        self.headers = {OFFSET_HEADER: str(held)}


def parse_range(header: str) -> ContentRange:
    m = _RANGE.match(header.strip())
    if not m:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Content-Range: {header[:100]!r} is not 'bytes <first>-<last>/"
                                                     "<total>' or 'bytes */<total>'")
    total = int(m.group(3))
    if m.group(1) is None:
        return ContentRange(None, None, total)
    first, last = int(m.group(1)), int(m.group(2))
    if not first <= last < total:
        raise MlflowError("INVALID_PARAMETER_VALUE", f"Content-Range: {header[:100]!r} is not a range of bytes inside "
                                                     f"a file of {total} bytes")
    return ContentRange(first, last, total)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class PartialUploads:
    """The part files of uploads in progress. One request at a time appends to a part file: each holds a flock on
    it, which is per open file, so it keeps out a second request of this process as well as other replicas sharing
    the artifact store, and the sweep."""

    def sweep(self, root: Path, older_than_s: float) -> int:
        """Remove the part files under ``root`` of uploads untouched for ``older_than_s`` (and not being written);
        how many were removed."""
        cutoff, removed = time.time() - older_than_s, 0
        for part in root.rglob(".*.part"):
            with contextlib.suppress(FileNotFoundError, BlockingIOError), open(part, "rb") as f:
                if os.fstat(f.fileno()).st_mtime < cutoff:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    part.unlink()
                    removed += 1
        return removed

    async def receive(self, request: web.Request, target: Path, sha256: str, rng: ContentRange,
                      limit: int) -> Progress:
        if rng.total > limit:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"artifact of {rng.total} bytes is larger than {limit} bytes "
                                                         "(mlflow.max_artifact_bytes)")
        part = target.with_name(f".{target.name}.{sha256}.part")
        if not part.exists() and target.is_file() and target.stat().st_size == rng.total \
                and await asyncio.to_thread(_sha256, target) == sha256:
            return Progress(rng.total, True, False)  # sent whole before (its answer may have been lost)
        with open(part, "ab") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MlflowError("RESOURCE_CONFLICT", "another request is sending this file's bytes; ask again how "
                                                       "many are held (Content-Range: bytes */<total>) in a moment",
                                  409) from None
            held = f.tell()
            if rng.first is None:
                return Progress(held, False, False)
            if rng.first != held:
                raise OffsetConflict(held, rng.first)
            assert rng.last is not None
            await self._append(request, f, rng.last - rng.first + 1)
            held = f.tell()
        if held < rng.total:
            return Progress(held, False, False)
        got = await asyncio.to_thread(_sha256, part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise MlflowError("INVALID_PARAMETER_VALUE", f"the {rng.total} bytes received have sha256 {got}, not "
                                                         f"{sha256}; send the file again from byte 0")
        os.replace(part, target)
        return Progress(rng.total, True, True)

    @staticmethod
    async def _append(request: web.Request, f: BinaryIO, expected: int) -> None:
        """The body, appended as it arrives: a connection cut midway keeps the bytes that came (the next part starts
        after them). A body longer than its range is refused and nothing of it kept."""
        start, size = f.tell(), 0
        try:
            async for chunk in request.content.iter_any():  # as it arrives: a cut keeps all that came
                size += len(chunk)
                if size > expected:
                    f.truncate(start)
                    raise MlflowError("INVALID_PARAMETER_VALUE", f"the body is longer than the {expected} bytes its "
                                                                 "Content-Range names")
                f.write(chunk)
        finally:
            with contextlib.suppress(OSError):
                f.flush()
        if size < expected:
            raise MlflowError("INVALID_PARAMETER_VALUE", f"the body had {size} bytes, its Content-Range names "
                                                         f"{expected}; {size} were kept, send from byte {f.tell()}")
