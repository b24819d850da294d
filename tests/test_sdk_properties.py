"""Property-based: whatever a training script passes to log(), log_params(), set_tags() and init(), the SDK's sender
keeps going. Against the real stack: afterwards every point the SDK accepted is stored exactly once, every one it
refused is counted by reason, and the run finishes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runstream
from runstream.sdk.transport import GrpcTransport
from runstream.wire.names import name_problem, step_of
from tests.conftest import Stack
from tests.helpers import wait_until

names = st.one_of(st.sampled_from(["loss", "acc", "lr", "sys-ish/x"]), st.text(max_size=12), st.integers(-3, 3),
                  st.integers(251, 300).map(lambda n: "x" * n), st.just("bad\udc80name"), st.none())
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30),
                   st.just(10**400), st.text(max_size=6), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
steps = st.one_of(st.none(), st.integers(-5, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.just(2.5),
                  st.just(3.0), st.just(2**63), st.just(2**63 - 1), st.text(max_size=3), st.booleans())
long_text = st.integers(65_537, 70_000).map(lambda n: "t" * n)
long_tag = st.integers(251, 300).map(lambda n: "t" * n)
keys = st.one_of(st.text(max_size=8), st.just("k\udc80"), st.just(""), st.integers(0, 3))
params = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8), st.integers(65_537, 70_000).map(lambda n: "v" * n),
                   st.just("v\udc80"), st.none(), st.lists(st.integers(), max_size=3))
calls = st.lists(st.one_of(
    st.tuples(st.just("log"), st.dictionaries(names, values, max_size=4), steps),
    st.tuples(st.just("params"), st.dictionaries(keys, params, max_size=3), st.none()),
    st.tuples(st.just("tags"), st.dictionaries(keys, st.one_of(st.text(max_size=5), long_text), max_size=3),
              st.none()),
), min_size=1, max_size=25)


def accepted(metrics: dict[Any, Any]) -> int:
    n = 0
    for k, v in metrics.items():
        try:
            float(v)
        except (TypeError, ValueError, OverflowError):
            continue
        n += name_problem(k) is None
    return n


# The in-process stack's Kafka clients draw from the global random module on their own threads while examples are
# drawn; no strategy here uses it.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@pytest.mark.slow
@given(program=calls, tags=st.lists(st.one_of(st.text(max_size=6), long_tag, st.just("x\udc80")), max_size=3))
def test_any_input_leaves_the_sender_alive_and_every_accepted_point_stored_once(
        stack: Stack, token: str, tmp_path: Path, program: list[tuple[str, Any, Any]], tags: list[str]) -> None:
    run = runstream.init("props", tags=tags, config={"n": 1, "big": "c" * 70_000},
                         transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path / "spool"),
                         flush_interval_s=0.05)
    expected, implicit = 0, 0
    for kind, body, step in program:
        if kind == "log":
            run.log(body, step=step)
            effective = step_of(implicit if step is None else step)
            if effective is not None:
                implicit = effective + 1
                expected += accepted(body)
        elif kind == "params":
            run.log_params(body)
        else:
            run.set_tags(body)
    run.log({"after": 1.0}, step=0)  # the sender still takes points after whatever came before
    expected += 1
    assert run.finish(timeout=60), "the run did not finish: the sender died or stalls"
    summary = run.summary()
    assert summary["acked_points"] == expected, summary
    assert stack.wait_points(expected, where=f"run_id = '{run.id}'") == expected
    dropped = sum(summary["dropped"].values())
    assert dropped == summary["dropped_points"]
    assert not math.isnan(dropped)


def test_odd_steps_are_counted_and_logging_goes_on(stack: Stack, token: str, tmp_path: Path) -> None:
    """The steps that stopped a process's logging: a fraction, a numpy float, 2**63, 10**30 (and a non-UTF-8 tag key);
    integral floats and numpy integers are steps."""
    np = pytest.importorskip("numpy")
    run = runstream.init("props", transport=GrpcTransport(stack.ingest_addr, token), spool_dir=str(tmp_path))
    for i in range(10):
        run.log({"loss": float(i)}, step=i)
    run.log({"loss": 1.0}, step=2.5)
    run.log({"loss": 1.0}, step=np.float64(3.5))
    run.log({"loss": 1.0}, step=2**63)
    run.log({"loss": 1.0}, step=10**30)
    run.set_tags({"k\udc80": "v", "ok": "v"})
    run.log({"loss": 2.0}, step=np.int64(20))
    run.log({"loss": 3.0}, step=21.0)
    for i in range(22, 30):
        run.log({"loss": float(i)}, step=i)
    assert run.finish(timeout=30)
    s = run.summary()
    assert s["acked_points"] == 20 and s["dropped"] == {"step not an int64": 4, "tag key not UTF-8": 1}, s
    assert stack.wait_points(20, where=f"run_id = '{run.id}'") == 20
    steps = [r[0] for r in stack.query(f"SELECT step FROM {{db}}.metrics WHERE run_id = '{run.id}' ORDER BY step")]
    assert steps == [*range(10), 20, 21, *range(22, 30)]
    finished = wait_until(lambda: stack.query(f"SELECT status, points_dropped FROM {{db}}.runs WHERE run_id = '{run.id}' "
                                              "AND status != 'running'"), 30, "the run's finish record")
    assert finished == [("finished", 5)]
