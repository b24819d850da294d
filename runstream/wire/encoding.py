"""The Kafka record format, encode and decode as a pair.

The events topic (``runstream.events``) holds two kinds of record:
  one batch: key = run id (UTF-8), value = the ``runstream.v1.Batch`` protobuf,
             headers = ``batch-id`` (the dedup key) and ``schema`` (``runstream.v1``)
  a pack:    key = the run id of its first batch, value = ``runstream.v1.BatchPack`` (serialized batches, in order),
             headers = ``schema`` (``runstream.v1.pack``); every batch in it goes to the partition of its own
             run id, which ingest groups by before packing
Either way all of a run's batches land on one partition, in order. A record larger than ``max_record_bytes`` is
refused before it reaches Kafka (a pack is split instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runstream.v1.ingest_pb2 import Batch, BatchPack
from runstream.wire.errors import ValidationError

SCHEMA = b"runstream.v1"
PACK_SCHEMA = b"runstream.v1.pack"
_FRAME = 6  # a packed batch's tag and length prefix, at most
# Times in milliseconds since the epoch that a batch may carry: 1970-01-01 to 2100-01-01. Ingest refuses others, and
# the sink dead-letters a record written past ingest that holds one (storage's DateTime64(3) would clamp it).
MAX_TIME_MS = 4_102_444_800_000


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(batch: Batch, *, max_record_bytes: int) -> Record:
    value = batch.SerializeToString()
    check_size(len(value), max_record_bytes)
    return _one(batch, value)


def _one(batch: Batch, value: bytes) -> Record:
    return Record(key=batch.run_id.encode(), value=value,
                  headers=[("batch-id", batch.batch_id.encode()), ("schema", SCHEMA)])


def pack(batches: Sequence[Batch], *, max_record_bytes: int) -> list[tuple[Record, int]]:
    """Batches bound for one partition, in order, as few records as ``max_record_bytes`` allows: (record, how many
    of the batches it holds). A lone batch stays a plain one-batch record."""
    return pack_encoded([(b, b.SerializeToString()) for b in batches], max_record_bytes=max_record_bytes)


def pack_encoded(items: Sequence[tuple[Batch, bytes]], *, max_record_bytes: int) -> list[tuple[Record, int]]:
    """``pack`` for batches already serialized: (batch, its bytes)."""
    out: list[tuple[Record, int]] = []
    chunk: list[tuple[Batch, bytes]] = []
    size = 0
    for b, value in items:
        check_size(len(value), max_record_bytes)
        if chunk and size + len(value) + _FRAME > max_record_bytes:
            out.append(_record(chunk))
            chunk, size = [], 0
        chunk.append((b, value))
        size += len(value) + _FRAME
    if chunk:
        out.append(_record(chunk))
    return out


def _record(chunk: list[tuple[Batch, bytes]]) -> tuple[Record, int]:
    first, value = chunk[0]
    if len(chunk) == 1:
        return _one(first, value), 1
    return Record(key=first.run_id.encode(), value=BatchPack(batches=[v for _, v in chunk]).SerializeToString(),
                  headers=[("schema", PACK_SCHEMA)]), len(chunk)


def check_size(n: int, max_record_bytes: int) -> None:
    """Refuse a batch of ``n`` encoded bytes that no record may hold."""
    if n > max_record_bytes:
        raise ValidationError("batch", f"is {n} bytes encoded; the limit is {max_record_bytes}. Send smaller batches.")


def decode(value: bytes, headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = ()) -> list[Batch]:
    """The batches of one events record (one, or a pack's, in order); raises on a record that is neither."""
    items: Any = headers.items() if isinstance(headers, Mapping) else (headers or ())
    schema = SCHEMA
    for name, hval in items:
        if name == "schema":
            schema = hval
    if schema == PACK_SCHEMA:
        return [Batch.FromString(v) for v in BatchPack.FromString(value).batches]
    if schema != SCHEMA:
        raise ValueError(f"record schema {schema!r} is not {SCHEMA!r} or {PACK_SCHEMA!r}; this reader is too old for it")
    return [Batch.FromString(value)]
