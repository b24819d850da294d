"""The events record format (runstream.wire.encoding): one batch, or a pack of a request's batches for one
partition, decoded back to the same batches in the same order; packs split at the record size limit."""

from __future__ import annotations

import pytest

from runstream.v1.ingest_pb2 import Batch
from runstream.wire import encoding
from runstream.wire.errors import ValidationError
from tests.helpers import metric_batch


def test_a_pack_decodes_to_its_batches_in_order() -> None:
    batches = [metric_batch(f"enc-{i}", 10 + i) for i in range(5)]
    (rec, n), = encoding.pack(batches, max_record_bytes=1 << 20)
    assert n == 5 and rec.key == b"enc-0" and dict(rec.headers) == {"schema": encoding.PACK_SCHEMA}
    assert encoding.decode(rec.value, rec.headers) == batches
    assert encoding.decode(rec.value, dict(rec.headers)) == batches  # headers as a mapping (faust's events)


def test_a_lone_batch_stays_a_plain_record_that_older_readers_decode() -> None:
    b = metric_batch("enc-one", 7)
    (rec, n), = encoding.pack([b], max_record_bytes=1 << 20)
    assert n == 1 and rec == encoding.encode(b, max_record_bytes=1 << 20)
    assert dict(rec.headers) == {"batch-id": b.batch_id.encode(), "schema": encoding.SCHEMA}
    assert Batch.FromString(rec.value) == b and encoding.decode(rec.value) == [b]


def test_packs_split_at_the_record_limit_and_an_oversized_batch_is_refused() -> None:
    batches = [metric_batch(f"enc-split-{i}", 50) for i in range(7)]
    one = len(batches[0].SerializeToString())
    out = encoding.pack(batches, max_record_bytes=3 * (one + 6))
    assert [n for _, n in out] == [3, 3, 1]
    assert all(len(rec.value) <= 3 * (one + 6) for rec, _ in out)
    assert [b for rec, _ in out for b in encoding.decode(rec.value, rec.headers)] == batches
    with pytest.raises(ValidationError, match="bytes encoded; the limit is 100"):
        encoding.pack(batches, max_record_bytes=100)


def test_a_record_of_an_unknown_schema_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="runstream.v2.*too old"):
        encoding.decode(b"", [("schema", b"runstream.v2")])
