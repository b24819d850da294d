"""Which of a run's batches were applied: a floor (every seq at or below it counts as applied) and the highest
applied seqs above it. A batch that reaches Kafka after a later one of its run (a producer rebuilt mid-flight)
is still applied while its seq is above the floor; a replay or a resend is recognised and skipped."""

from __future__ import annotations

import bisect


def record(floor: int, applied: list[int], seq: int, memory: int) -> int | None:
    """None when ``seq`` was applied already; else adds it to ``applied`` (ascending, at most ``memory`` long)
    and returns the floor, raised to the seq that no longer fits."""
    if seq <= floor:
        return None
    i = bisect.bisect_left(applied, seq)
    if i < len(applied) and applied[i] == seq:
        return None
    applied.insert(i, seq)
    if len(applied) > memory:
        floor = applied.pop(0)
    return floor
