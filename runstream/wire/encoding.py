"""The Kafka record format, encode and decode as a pair.

One record per batch on the events topic (``runstream.events``):
  key     = run id (UTF-8): all of a run's batches land on one partition, in order
  value   = the ``runstream.v1.Batch`` protobuf, exactly as the client sent it
  headers = ``batch-id`` (the dedup key) and ``schema`` (``runstream.v1``)
A record larger than ``max_record_bytes`` is refused before it reaches Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from runstream.v1.ingest_pb2 import Batch
from runstream.wire.errors import ValidationError

SCHEMA = b"runstream.v1"


@dataclass(frozen=True)
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(batch: Batch, *, max_record_bytes: int) -> Record:
    value = batch.SerializeToString()
    if len(value) > max_record_bytes:
        raise ValidationError("batch", f"is {len(value)} bytes encoded; the limit is {max_record_bytes}. Send smaller batches.")
    return Record(key=batch.run_id.encode(), value=value,
                  headers=[("batch-id", batch.batch_id.encode()), ("schema", SCHEMA)])


def decode(value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> Batch:
    for name, hval in headers or ():
        if name == "schema" and hval != SCHEMA:
            raise ValueError(f"record schema {hval!r} is not {SCHEMA!r}; this sink is too old for it")
    batch: Batch = Batch.FromString(value)
    return batch
