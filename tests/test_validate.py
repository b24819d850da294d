"""Batch validation names the offending field."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from runstream.ingest.validate import validate_batch
from runstream.v1.ingest_pb2 import Batch
from runstream.wire.config import IngestConfig
from runstream.wire.encoding import MAX_TIME_MS
from runstream.wire.errors import ValidationError
from tests.helpers import metric_batch

CFG = IngestConfig(max_batch_points=100)


def good(n: int = 3) -> Batch:
    return metric_batch("run1", n, project="vision", metric="loss", batch_id="a" * 32, created_ms=0,
                        values=[0.5] * n)


def test_good_batch_counts_points() -> None:
    assert validate_batch(good(), CFG) == 3


@pytest.mark.parametrize("mutate, field", [
    (lambda b: setattr(b, "batch_id", "x"), "batch.batch_id"),
    (lambda b: setattr(b, "project", ""), "batch.project"),
    (lambda b: setattr(b, "project", "has space"), "batch.project"),
    (lambda b: setattr(b, "run_id", "r" * 200), "batch.run_id"),
    (lambda b: setattr(b, "seq", 0), "batch.seq"),
    (lambda b: b.metrics.steps.append(9), "batch.metrics.steps"),
    (lambda b: b.metrics.name_index.__setitem__(0, 5), "batch.metrics.name_index"),
    (lambda b: b.metrics.names.__setitem__(0, ""), "batch.metrics.names[0]"),
    (lambda b: b.ClearField("metrics"), "batch.body"),
    (lambda b: setattr(b, "created_ms", 2**62), "batch.created_ms"),           # once clamped, then stopped the sink
    (lambda b: setattr(b, "created_ms", -1), "batch.created_ms"),
    (lambda b: b.metrics.timestamps_ms.__setitem__(1, 2**62), "batch.metrics.timestamps_ms"),
    (lambda b: b.run_start.__setattr__("start_ms", 2**62), "batch.run_start.start_ms"),
])
def test_bad_fields_are_named(mutate, field) -> None:
    b = good()
    mutate(b)
    with pytest.raises(ValidationError) as exc:
        validate_batch(b, CFG)
    assert exc.value.field == field


def test_steps_span_int64_negative_ones_too() -> None:
    b = good()
    b.metrics.steps[:] = [-(2**63), -1, 2**63 - 1]
    assert validate_batch(b, CFG) == 3


def test_oversized_batch() -> None:
    with pytest.raises(ValidationError, match="limit is 100"):
        validate_batch(good(101), CFG)


@given(hst.lists(hst.one_of(hst.integers(0, MAX_TIME_MS - 1), hst.integers(-2**63, 2**63 - 1)), min_size=1, max_size=60))
@settings(max_examples=300, deadline=None)
def test_a_point_time_outside_1970_2100_is_refused_wherever_it_is_in_the_batch(times: list[int]) -> None:
    b = metric_batch("run1", len(times), project="vision", batch_id="a" * 32, created_ms=0, timestamps_ms=times)
    if all(0 <= t < MAX_TIME_MS for t in times):
        assert validate_batch(b, CFG) == len(times)
    else:
        with pytest.raises(ValidationError) as e:
            validate_batch(b, CFG)
        assert e.value.field == "batch.metrics.timestamps_ms"
