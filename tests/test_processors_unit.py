"""Processor logic without a broker: rollups equal brute-force aggregates, detectors find injected anomalies
at the right step and stay quiet on 200 clean noisy runs, replays are not applied twice."""

from __future__ import annotations

import math
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from runstream.processors import anomaly, fleet, rollups, state
from runstream.processors.app import STATE_CODEC
from runstream.v1.ingest_pb2 import Batch, RunStatus
from tests.helpers import metric_batch


def metrics_batch(run_id: str, seq: int, names: list[str], ni, steps, ts, values) -> Batch:
    return metric_batch(run_id, project="p", seq=seq, batch_id=f"b{run_id}{seq:08d}", created_ms=int(min(ts)), names=names,
                        name_index=ni, steps=steps, timestamps_ms=ts, values=values)


@pytest.mark.parametrize("per_batch", [137, 1000])  # below and above rollups.SMALL_BATCH: both ways of grouping
@pytest.mark.parametrize("first_step", [0, -10_000])  # negative steps (MLflow's) too
def test_rollups_equal_brute_force_per_window(per_batch: int, first_step: int) -> None:
    rng = np.random.default_rng(1)
    n = 5000
    names = ["loss", "acc", "lr"]
    ni = rng.integers(0, 3, n)
    ts = np.sort(rng.integers(1_700_000_000_000, 1_700_000_000_000 + 300_000, n))
    steps = np.arange(n) + first_step
    vals = rng.standard_normal(n)
    vals[rng.integers(0, n, 20)] = np.nan
    windows: rollups.Windows = {}
    wm = 0
    emitted = {}
    for i in range(0, n, per_batch):  # uneven batches
        sl = slice(i, i + per_batch)
        b = metrics_batch("r", i + 1, names, ni[sl].tolist(), steps[sl].tolist(), ts[sl].tolist(), vals[sl].tolist())
        wm, late = rollups.apply(windows, b, watermark_ms=wm, grace_ms=5000)
        assert late == 0  # in order: nothing late
        for k, w in rollups.close(windows, watermark_ms=wm, grace_ms=5000):
            emitted[k] = w
    for k, w in windows.items():
        emitted[k] = w
    for res in rollups.RESOLUTIONS_S:
        starts = ts - ts % (res * 1000)
        for (metric_i, start) in set(zip(ni.tolist(), starts.tolist())):
            sel = (ni == metric_i) & (starts == start)
            v, s = vals[sel], steps[sel]
            fin = np.isfinite(v)
            w = emitted[(names[metric_i], res, start)]
            assert w.count == sel.sum() and w.nonfinite == (~fin).sum()
            if fin.any():
                assert w.min == v[fin].min() and w.max == v[fin].max()
                assert w.sum == pytest.approx(v[fin].sum(), rel=1e-12, abs=1e-12)
            assert (w.first_step, w.last_step) == (s.min(), s.max())
            assert w.first == v[s.argmin()] or (math.isnan(w.first) and math.isnan(v[s.argmin()]))
        assert len([k for k in emitted if k[1] == res]) == len(set(zip(ni.tolist(), starts.tolist())))


def test_late_points_are_counted_not_applied() -> None:
    windows: rollups.Windows = {}
    b1 = metrics_batch("r", 1, ["x"], [0], [1], [100_000], [1.0])
    wm, _ = rollups.apply(windows, b1, watermark_ms=0, grace_ms=1000)
    rollups.close(windows, watermark_ms=wm, grace_ms=1000)
    b2 = metrics_batch("r", 2, ["x"], [0, 0], [2, 3], [50_000, 100_500], [2.0, 3.0])
    wm, late = rollups.apply(windows, b2, watermark_ms=wm, grace_ms=1000)
    assert late == 1  # 50 s is far behind the 100 s watermark; 100.5 s is in an open window
    assert windows[("x", 10, 100_000)].count == 2


def clean_run(rng: random.Random, steps: int = 3000) -> dict[str, list[float]]:
    """A realistic loss curve: warm-up, exponential decay, noise, two learning-rate drops; plus accuracy, lr and grad norm."""
    floor, speed, lr0 = rng.uniform(0.05, 0.5), rng.uniform(2, 8), 10 ** rng.uniform(-4, -2)
    out: dict[str, list[float]] = {"loss": [], "acc": [], "lr": [], "grad_norm": []}
    for s in range(steps):
        p = s / steps
        drop = (0.6 if p > 0.5 else 1.0) * (0.7 if p > 0.8 else 1.0)
        loss = (floor + (2.3 - floor) * math.exp(-speed * p)) * drop * (1 + rng.gauss(0, 0.04))
        out["loss"].append(loss)
        out["acc"].append(min(1.0, max(0.0, 1 - loss / 2.5 + rng.gauss(0, 0.01))))
        out["lr"].append(lr0 * min(1.0, (s + 1) / 150) * (0.1 if p > 0.5 else 1) * (0.1 if p > 0.8 else 1))
        out["grad_norm"].append(abs(rng.gauss(1.0, 0.25)) / (1 + 2 * p))
    return out


def run_detectors(series: dict[str, list[float]], rules=None) -> list:
    book = rules or anomaly.RuleBook()
    alerts = []
    for name, values in series.items():
        st = anomaly.MetricState()
        for i in range(0, len(values), 100):
            chunk = values[i:i + 100]
            alerts += anomaly.observe_many("p", "r", [(st, book.for_metric("p", name), name, list(range(i, i + len(chunk))),
                                                       chunk, [0] * len(chunk))], 0)
    return [a for a in alerts if a.status == "open"]


def test_clean_noisy_runs_raise_no_alert() -> None:
    rng = random.Random(7)
    for _ in range(200):
        opened = run_detectors(clean_run(rng))
        assert not opened, [a.message for a in opened]


def test_injected_anomalies_are_found_with_kind_and_step() -> None:
    rng = random.Random(3)
    s = clean_run(rng)
    s["loss"][500] = float("nan")
    opened = run_detectors({"loss": s["loss"]})
    assert [(a.kind, a.step) for a in opened] == [("nonfinite", 500)]

    s = clean_run(rng)
    s["loss"][800] *= 10
    opened = run_detectors({"loss": s["loss"]})
    assert [(a.kind, a.step) for a in opened] == [("spike", 800)]

    s = clean_run(rng)
    # From step 1500 on, the loss climbs back up: divergence, found within a few hundred steps.
    base = s["loss"][1500]
    s["loss"][1500:] = [base * math.exp(i / 300) * (1 + rng.gauss(0, 0.04)) for i in range(1500)]
    opened = run_detectors({"loss": s["loss"]})
    assert len(opened) == 1 and opened[0].kind == "divergence" and 1500 < opened[0].step < 1800


def test_rules_per_project_and_metric() -> None:
    book = anomaly.RuleBook({"defaults": {"spike_z": 12}, "projects": {"vision": {"defaults": {"stall_min_s": 30},
                                                                                  "metrics": {"val_*": {"enabled": False}}}}})
    assert book.for_metric("other", "loss").spike_z == 12
    assert book.for_metric("vision", "loss").stall_min_s == 30
    assert book.for_metric("vision", "val_loss").enabled is False
    with pytest.raises(Exception, match="unknown setting"):
        anomaly.RuleBook({"defaults": {"spike_zz": 1}})


def test_stall_threshold_follows_the_runs_own_cadence() -> None:
    rules = anomaly.Rules(stall_min_s=1.0)
    c = anomaly.Cadence()
    for i in range(10):
        c.update(1_000_000 + i * 2000)  # a batch every 2 s
    assert c.stall_after_s(rules) == pytest.approx(5.0)
    c.update(1_000_000 + 9 * 2000 + 60_000)  # a long stall does not become the usual interval
    assert c.interval_s == pytest.approx(2.0)


def test_state_skips_replayed_batches_and_finishes_windows() -> None:
    st = state.RunState(project="p")
    book = anomaly.RuleBook()
    b = metrics_batch("r", 1, ["x"], [0, 0], [0, 1], [1000, 2000], [1.0, 2.0])
    assert state.apply(st, b, book, grace_ms=1000, now_ms=0).points == 2
    assert state.apply(st, b, book, grace_ms=1000, now_ms=0).duplicate
    fin = Batch(batch_id="f" * 16, project="p", run_id="r", seq=2, created_ms=3000)
    fin.run_finish.status = RunStatus.RUN_STATUS_FINISHED
    out = state.apply(st, fin, book, grace_ms=1000, now_ms=0)
    assert st.finished and {(w.resolution_s, w.count) for w in out.rollups} == {(10, 2), (60, 2)}


def test_a_batch_reordered_behind_a_later_one_is_applied_once() -> None:
    # Seqs 1..40; seq 5 reaches Kafka after 6 and 7 (a producer rebuilt mid-flight), then everything is resent.
    book = anomaly.RuleBook()
    batches = {q: metrics_batch("r", q, ["x"], [0], [q], [1000 * q], [float(q)]) for q in range(1, 41)}
    order = [1, 2, 3, 4, 6, 7, 5, *range(8, 41)]
    st, fs = state.RunState(project="p"), fleet.FleetState()
    applied = [q for q in order if not state.apply(st, batches[q], book, grace_ms=60_000, now_ms=0).duplicate]
    counted = [q for q in order if fleet.apply(fs, batches[q], grace_ms=60_000) is not None]
    assert applied == order and counted == order
    resent = [q for q in order if not state.apply(st, batches[q], book, grace_ms=60_000, now_ms=0).duplicate]
    recounted = [q for q in order if fleet.apply(fs, batches[q], grace_ms=60_000) is not None]
    assert resent == [] and recounted == []
    # Past the memory the floor stands for everything below it: a seq never seen there is taken for a replay.
    assert st.seq_floor == 40 - state.SEQ_MEMORY and len(st.applied) == state.SEQ_MEMORY
    assert state.apply(st, batches[1], book, grace_ms=60_000, now_ms=0).duplicate
    assert state.apply(st, metrics_batch("r", 42, ["x"], [0], [42], [42_000], [1.0]), book, grace_ms=60_000, now_ms=0).points == 1
    assert not state.apply(st, metrics_batch("r", 41, ["x"], [0], [41], [41_000], [1.0]), book, grace_ms=60_000,
                           now_ms=0).duplicate


OLD_RUN_STATE = (
    b"\x80\x05\x95\xf5\x00\x00\x00\x00\x00\x00\x00\x8c\x1arunstream.processors.state\x94\x8c\x08RunState\x94\x93\x94)"
    b"\x81\x94N}\x94(\x8c\x07project\x94\x8c\x01p\x94\x8c\x07max_seq\x94K\x07\x8c\x0cwatermark_ms\x94K\x00\x8c\x08finished"
    b"\x94\x89\x8c\x07windows\x94}\x94\x8c\x07metrics\x94}\x94\x8c\x07cadence\x94\x8c\x1crunstream.processors.anomaly"
    b"\x94\x8c\x07Cadence\x94\x93\x94)\x81\x94N}\x94(\x8c\x07last_ms\x94K\x00\x8c\ninterval_s\x94G\x00\x00\x00\x00\x00\x00"
    b"\x00\x00\x8c\tintervals\x94K\x00u\x86\x94bu\x86\x94b."
)


def test_states_pickled_before_the_applied_seqs_were_kept_still_skip_replays() -> None:
    # A changelog record written by the previous release (RunState(project="p", max_seq=7) as it pickled it):
    # no seq_floor/applied; its fleet seqs were (seq, time).
    st = STATE_CODEC.loads(OLD_RUN_STATE)
    book = anomaly.RuleBook()
    assert (st.seq_floor, st.applied) == (7, [])
    assert state.apply(st, metrics_batch("r", 7, ["x"], [0], [7], [7000], [1.0]), book, grace_ms=0, now_ms=0).duplicate
    assert state.apply(st, metrics_batch("r", 8, ["x"], [0], [8], [8000], [1.0]), book, grace_ms=0, now_ms=0).points == 1
    fs = fleet.FleetState(seqs={"r": (7, 7000)})
    assert fleet.apply(fs, metrics_batch("r", 7, ["x"], [0], [7], [7000], [1.0]), grace_ms=0) is None
    assert fleet.apply(fs, metrics_batch("r", 8, ["x"], [0], [8], [8000], [1.0]), grace_ms=0) == fleet.OPEN
    assert fs.seqs["r"] == (7, 8000, 8)
    again = STATE_CODEC.loads(STATE_CODEC.dumps(st))  # and the new fields survive their own changelog
    assert (again.seq_floor, again.applied, again.max_seq) == (7, [8], 8)


# A run's state as the release before pickled it into the changelog (each window, metric state and cadence by its
# slots' names): a window of "loss", its detector with an open spike alert, a cadence.
SLOTS_RUN_STATE = (
    b'\x80\x05\x95\x8a\x02\x00\x00\x00\x00\x00\x00\x8c\x1arunstream.processors.state\x94\x8c\x08RunState\x94\x93'
    b'\x94)\x81\x94N}\x94(\x8c\x07project\x94\x8c\x01p\x94\x8c\x07max_seq\x94K\x03\x8c\x0cwatermark_ms\x94M N\x8c'
    b"\x08finished\x94\x89\x8c\x07windows\x94}\x94\x8c\x04loss\x94K\nM\x10'\x87\x94\x8c\x1crunstream.processors.rol"
    b'lups\x94\x8c\x06Window\x94\x93\x94)\x81\x94N}\x94(\x8c\x05count\x94K\x02\x8c\tnonfinite\x94K\x01\x8c\x03min'
    b'\x94G?\xe0\x00\x00\x00\x00\x00\x00\x8c\x03max\x94G?\xe8\x00\x00\x00\x00\x00\x00\x8c\x03sum\x94G?\xf4\x00\x00'
    b'\x00\x00\x00\x00\x8c\x05first\x94G?\xe8\x00\x00\x00\x00\x00\x00\x8c\nfirst_step\x94K\x04\x8c\x04last\x94G?'
    b'\xe0\x00\x00\x00\x00\x00\x00\x8c\tlast_step\x94K\x05\x8c\x07version\x94K\x01u\x86\x94bs\x8c\x07metrics\x94}'
    b'\x94h\x0c\x8c\x1crunstream.processors.anomaly\x94\x8c\x0bMetricState\x94\x93\x94)\x81\x94N}\x94(\x8c\x01n\x94'
    b'K\x02\x8c\x04mean\x94G?\xe3333333\x8c\x03mad\x94G?\xb9\x99\x99\x99\x99\x99\x9a\x8c\x04slow\x94G?\xe6ffffff'
    b'\x8c\nslow_first\x94G?\xe8\x00\x00\x00\x00\x00\x00\x8c\tslow_best\x94G?\xe0\x00\x00\x00\x00\x00\x00\x8c\x06sl'
    b'ow_n\x94K\x02\x8c\x04open\x94}\x94\x8c\x05spike\x94\x8c\x02a1\x94K\x05\x86\x94su\x86\x94bs\x8c\x07cadence\x94'
    b'h \x8c\x07Cadence\x94\x93\x94)\x81\x94N}\x94(\x8c\x07last_ms\x94M N\x8c\ninterval_s\x94G?\xf8\x00\x00\x00\x00'
    b'\x00\x00\x8c\tintervals\x94K\x02u\x86\x94b\x8c\tseq_floor\x94K\x03\x8c\x07applied\x94]\x94u\x86\x94b.'
)


def test_states_pickled_by_slot_names_load_and_states_pickle_as_their_fields() -> None:
    old = STATE_CODEC.loads(SLOTS_RUN_STATE)
    assert old.windows == {("loss", 10, 10_000): rollups.Window(count=2, nonfinite=1, min=0.5, max=0.75, sum=1.25, first=0.75,
                                                                first_step=4, last=0.5, last_step=5, version=1)}
    assert old.metrics == {"loss": anomaly.MetricState(n=2, mean=0.6, mad=0.1, slow=0.7, slow_first=0.75, slow_best=0.5,
                                                       slow_n=2, open={"spike": ("a1", 5)})}
    assert old.cadence == anomaly.Cadence(last_ms=20_000, interval_s=1.5, intervals=2)
    assert (old.project, old.max_seq, old.watermark_ms, old.seq_floor, old.applied) == ("p", 3, 20_000, 3, [])
    raw = STATE_CODEC.dumps(old)
    assert STATE_CODEC.loads(raw) == old
    # Fields in order, no slot names: the changelog's write is the processors' hot path.
    assert b"first_step" not in raw and b"slow_best" not in raw and len(raw) < len(SLOTS_RUN_STATE) * 0.7


class _Gadget:
    """What a forged changelog record would carry: a callable the unpickler runs while loading."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, ...]:
        return os.makedirs, (self.target,)


@pytest.mark.parametrize("protocol", [0, 2, 5])  # GLOBAL (0, 2) and STACK_GLOBAL (5) name the callable
def test_a_changelog_record_naming_a_callable_outside_the_allowlist_is_refused_before_it_runs(
        protocol: int, tmp_path: Path) -> None:
    target = tmp_path / "made-by-a-record"
    forged = pickle.dumps(state.RunState(project="p", windows={("x", 10, 0): _Gadget(str(target))}),  # type: ignore[dict-item]
                          protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="posix.makedirs|os.makedirs"):
        STATE_CODEC.loads(forged)
    assert not target.exists()
    assert STATE_CODEC.loads(pickle.dumps(state.RunState(project="p"), protocol=protocol)) == state.RunState(project="p")


plain = hst.recursive(hst.none() | hst.booleans() | hst.integers() | hst.floats(allow_nan=False) | hst.text(max_size=8)
                      | hst.binary(max_size=8),
                      lambda kids: hst.lists(kids, max_size=4) | hst.tuples(kids, kids)
                      | hst.dictionaries(hst.text(max_size=4), kids, max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(windows=hst.dictionaries(hst.tuples(hst.text(max_size=6), hst.sampled_from([10, 60]), hst.integers(0, 2**40)),
                                hst.builds(rollups.Window, count=hst.integers(0, 10**6), sum=hst.floats(allow_nan=False),
                                           version=hst.integers(0, 10**6)), max_size=5),
       seqs=hst.lists(hst.integers(1, 2**40), max_size=32), extra=plain)
def test_states_round_trip_through_the_changelog_codec(windows: dict, seqs: list[int], extra: object) -> None:
    st = state.RunState(project="p", windows=windows, applied=sorted(seqs), max_seq=max(seqs, default=0))
    assert STATE_CODEC.loads(STATE_CODEC.dumps(st)) == st
    fs = fleet.FleetState(seqs={"r": (1, 2, 3)}, buckets={0: fleet.Bucket(runs={"r"}, points=5, version=2)})
    assert STATE_CODEC.loads(STATE_CODEC.dumps(fs)) == fs
    assert STATE_CODEC.loads(STATE_CODEC.dumps(extra)) == extra  # plain values (containers, numbers, text, bytes)


def test_fleet_counts_runs_points_and_lifecycle() -> None:
    fs = fleet.FleetState()
    start = Batch(batch_id="s" * 16, project="p", run_id="a", seq=1, created_ms=1000)
    start.run_start.name = "a"
    fleet.apply(fs, start, grace_ms=0)
    fleet.apply(fs, metrics_batch("a", 2, ["x"], [0] * 3, [0, 1, 2], [1500] * 3, [1.0] * 3), grace_ms=0)
    fleet.apply(fs, metrics_batch("b", 1, ["x"], [0] * 2, [0, 1], [2000] * 2, [1.0] * 2), grace_ms=0)
    failed = Batch(batch_id="f" * 16, project="p", run_id="b", seq=2, created_ms=12_000)
    failed.run_finish.status = RunStatus.RUN_STATUS_FAILED
    fleet.apply(fs, failed, grace_ms=0)
    (s, bucket), = fleet.close(fs, grace_ms=0)
    assert s == 0 and len(bucket.runs) == 2 and bucket.points == 5 and bucket.started == 1
    assert fs.buckets[10_000].failed == 1
    assert fleet.apply(fs, failed, grace_ms=0) is None  # a replayed batch is not counted twice
    # A batch that arrives after its window closed (a spooled client after an outage) is counted there, and the
    # window goes out again with a higher version: the stored row is replaced, not lost.
    late = metrics_batch("c", 1, ["x"], [0] * 4, [0, 1, 2, 3], [2500] * 4, [1.0] * 4)
    late.created_ms = 2500
    assert fleet.apply(fs, late, grace_ms=0) == fleet.LATE
    again = fs.closed[0]
    assert (again.points, again.version, again.active_closed) == (9, bucket.version + 1, 2)
    assert fleet.to_proto("p", 0, 0, again).points == 9
    ancient = metrics_batch("d", 1, ["x"], [0], [0], [5], [1.0])
    ancient.created_ms = 5
    fleet.apply(fs, metrics_batch("e", 1, ["x"], [0], [0], [fleet.LATE_MEMORY_MS + 60_000], [1.0]), grace_ms=0)
    fleet.close(fs, grace_ms=0)
    assert 0 not in fs.closed and fleet.apply(fs, ancient, grace_ms=0) == fleet.DROPPED


def test_small_and_large_batch_paths_agree() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    ni = rng.integers(0, 4, n).tolist()
    ts = np.sort(rng.integers(0, 120_000, n)).tolist()
    vals = rng.standard_normal(n).tolist()
    big: rollups.Windows = {}
    small: rollups.Windows = {}
    rollups.apply(big, metrics_batch("r", 1, ["a", "b", "c", "d"], ni, list(range(n)), ts, vals), watermark_ms=0, grace_ms=0)
    for i in range(0, n, 100):
        rollups.apply(small, metrics_batch("r", 2 + i, ["a", "b", "c", "d"], ni[i:i + 100], list(range(i, i + 100)),
                                           ts[i:i + 100], vals[i:i + 100]), watermark_ms=0, grace_ms=0)
    assert big.keys() == small.keys()
    for k in big:
        b, s = big[k], small[k]
        assert (b.count, b.min, b.max, b.first_step, b.first, b.last_step, b.last) == \
               (s.count, s.min, s.max, s.first_step, s.first, s.last_step, s.last)
        assert b.sum == pytest.approx(s.sum, rel=1e-12, abs=1e-12)


def test_stalls_are_judged_on_the_streams_clock_not_the_wall_clock() -> None:
    from runstream.processors.app import stream_clock
    rules = anomaly.Rules(stall_min_s=5.0)
    cad = anomaly.Cadence()
    for ms in range(0, 10_000, 500):  # a run sending every 0.5 s of its own time
        cad.update(ms)
    limit = cad.stall_after_s(rules)
    assert limit == 5.0
    wall_now = 9_500 + 6_000  # the pipeline runs 6 s behind: wall-clock silence would be 6 s, past the limit
    newest = 9_500 + 200      # while other runs' newer batches (client time) keep arriving
    clock = stream_clock(newest, since_last_s=0.01, caught_up=False)
    assert (clock - cad.last_ms) / 1000 < limit < (wall_now - cad.last_ms) / 1000
    # Everything written was read and nothing came for 6 s: that is silence, judged by the wall clock.
    clock = stream_clock(9_500, since_last_s=6.0, caught_up=True)
    assert (clock - cad.last_ms) / 1000 > limit
    # Behind, with nothing new read: the stream's clock stands still (lag, not a stall).
    assert stream_clock(9_500, since_last_s=30.0, caught_up=False) == 9_500
    assert stream_clock(0, since_last_s=30.0, caught_up=True) == 0  # nothing read yet: no clock


@settings(max_examples=60, deadline=None)
@given(seed=hst.integers(0, 2**32 - 1), per_batch=hst.integers(1, 400), spikes=hst.lists(hst.integers(0, 2999), max_size=3),
       nans=hst.lists(hst.integers(0, 2999), max_size=2), diverge_at=hst.none() | hst.integers(1000, 2800),
       span=hst.integers(2, 60), block_min=hst.sampled_from([1, 50, anomaly.BLOCK_MIN]), as_arrays=hst.booleans())
def test_the_detectors_whole_batch_arithmetic_agrees_with_the_per_point_loop(seed, per_batch, spikes, nans, diverge_at,
                                                                            span, block_min, as_arrays) -> None:
    """A batch's metrics go through the detectors together: those alike in length and rules by whole-array arithmetic
    where nothing happens, the rest point by point. They find the same alerts at the same steps, and end in the same
    states, as the per-point loop alone over each metric."""
    rng = random.Random(seed)
    series = clean_run(rng)
    loss = series["loss"]
    for i in spikes:
        loss[i] *= 10
    for i in nans:
        loss[i] = float("nan")
    if diverge_at is not None:
        loss[diverge_at:] = [loss[diverge_at] * math.exp(i / 300) for i in range(3000 - diverge_at)]
    common = anomaly.Rules(span=span, warmup_points=rng.choice([0, 1, 30]))
    # lr has rules of its own and logs every other step: it never shares a block with the others.
    rules = {"loss": common, "acc": common, "grad_norm": common, "lr": anomaly.Rules(span=span + 1)}
    every = {"lr": 2}

    def chunks(name: str, i: int) -> tuple[list[int], list[float], list[int]]:
        steps = [s for s in range(i, min(i + per_batch, 3000)) if s % every.get(name, 1) == 0]
        return steps, [series[name][s] for s in steps], [1000 * s for s in steps]

    loop_alerts = []
    loop_states = {name: anomaly.MetricState() for name in series}
    for name in series:
        for i in range(0, 3000, per_batch):
            loop_alerts += anomaly._observe_loop(loop_states[name], rules[name], "p", "r", name, *chunks(name, i), 0)
    block_alerts = []
    block_states = {name: anomaly.MetricState() for name in series}
    saved, anomaly.BLOCK_MIN = anomaly.BLOCK_MIN, block_min
    try:
        for i in range(0, 3000, per_batch):
            batch = []
            for name in series:
                steps, vals, ts = chunks(name, i)
                if not steps:
                    continue
                if as_arrays:
                    steps, vals, ts = np.array(steps, dtype=np.int64), np.array(vals), np.array(ts, dtype=np.int64)
                batch.append((block_states[name], rules[name], name, steps, vals, ts))
            block_alerts += anomaly.observe_many("p", "r", batch, 0)
    finally:
        anomaly.BLOCK_MIN = saved
    def key(a):
        return (a.metric, a.step, a.kind, a.status)
    assert sorted(map(key, block_alerts)) == sorted(map(key, loop_alerts))
    for name, a in block_states.items():
        b = loop_states[name]
        assert (a.n, a.slow_n, a.open) == (b.n, b.slow_n, b.open)
        for field in ("mean", "mad", "slow", "slow_first", "slow_best"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-9, abs=1e-12), field


@settings(max_examples=100, deadline=None)
@given(k=hst.integers(1, 6), steps_per=hst.integers(1, 40), cyclic=hst.booleans(), seed=hst.integers(0, 2**32 - 1),
       spread_ms=hst.sampled_from([500, 15_000, 130_000]), nonfinite=hst.booleans())
def test_small_batches_split_by_metric_agree_with_the_numpy_path(k, steps_per, cyclic, seed, spread_ms,
                                                                 nonfinite) -> None:
    """A small batch is split once by metric (by slicing when every step logs the same metrics in order, else point
    by point) for both the rollups and the detectors; windows and per-metric series equal the numpy path's."""
    rng = random.Random(seed)
    n = k * steps_per
    ni = list(range(k)) * steps_per if cyclic else [rng.randrange(k) for _ in range(n)]
    # Any order, repeated steps too: a window's first and last are the earliest points holding its lowest and
    # highest step, both ways.
    steps = [i // k for i in range(n)] if cyclic else [rng.randrange(-10, 10) for _ in range(n)]
    ts = sorted(1_700_000_000_000 + rng.randrange(spread_ms) for _ in range(n))
    vals = [rng.gauss(0, 1) for _ in range(n)]
    if nonfinite:
        vals[rng.randrange(n)] = float("nan")
    b = metrics_batch("r", 1, [f"m{i}" for i in range(k)], ni, steps, ts, vals)
    small: rollups.Windows = {}
    big: rollups.Windows = {}
    assert n <= rollups.SMALL_BATCH
    assert rollups.apply_split(small, b.metrics.names, rollups.split_small(b.metrics), watermark_ms=0, grace_ms=0) == \
        (max(ts), 0)
    saved, rollups.SMALL_BATCH = rollups.SMALL_BATCH, 0  # the numpy path for the same batch
    try:
        rollups.apply(big, b, watermark_ms=0, grace_ms=0)
        numpy_series = state._per_metric(b.metrics.names, rollups.columns_of(b.metrics))
    finally:
        rollups.SMALL_BATCH = saved
    assert small.keys() == big.keys()
    for key in small:
        s, g = small[key], big[key]
        assert nan_equal((s.count, s.nonfinite, s.min, s.max, s.first_step, s.first, s.last_step, s.last),
                         (g.count, g.nonfinite, g.min, g.max, g.first_step, g.first, g.last_step, g.last)), key
        assert s.sum == pytest.approx(g.sum, rel=1e-12, abs=1e-12)
    split_series = state._in_step_order(b.metrics, rollups.split_small(b.metrics))
    assert [name for name, *_ in split_series] == [name for name, *_ in numpy_series]
    for (_, *lists), (_, *arrays) in zip(split_series, numpy_series):
        assert all(nan_equal(a, b.tolist()) for a, b in zip(lists, arrays))


def nan_equal(a, b) -> bool:
    """Sequences equal element by element, NaN equal to NaN."""
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))


@settings(max_examples=100, deadline=None)
@given(seed=hst.integers(0, 2**32 - 1), batches=hst.integers(1, 6), size=hst.sampled_from([1, 7, 50, 300, 900]),
       spread_ms=hst.sampled_from([0, 800, 15_000, 130_000]), back_ms=hst.integers(-40_000, 40_000))
def test_no_window_a_batch_touches_is_due_before_the_batchs_due_time(seed, batches, size, spread_ms, back_ms) -> None:
    """The timer looks at a run again only when ``Output.due_ms`` says (or earlier): every window a batch created or
    changed must be due at or after it, whichever path the batch takes (under and over SMALL_BATCH), with points out
    of order, late ones and ones behind the watermark among them."""
    rng = np.random.default_rng(seed)
    st = state.RunState(project="p")
    rules = anomaly.RuleBook()
    grace = 10_000
    t0 = 1_700_000_000_000
    for seq in range(1, batches + 1):
        base = t0 + seq * 5_000 + (back_ms if seq == batches else 0)  # the last batch may reach back or ahead
        ts = (base + rng.integers(0, spread_ms + 1, size)).tolist()
        ni = rng.integers(0, 3, size).tolist()
        b = metrics_batch("r", seq, ["loss", "acc", "lr"], ni, list(range(seq * 1000, seq * 1000 + size)), ts,
                          rng.standard_normal(size).tolist())
        before = {k: w.version for k, w in st.windows.items()}
        out = state.apply(st, b, rules, grace_ms=grace, now_ms=t0)
        # (A window the batch both opened and closed went out with it: not the timer's.)
        touched = [k for k, w in st.windows.items() if before.get(k) != w.version]
        assert all(k[2] + k[1] * 1000 + grace >= out.due_ms for k in touched)
        if spread_ms == 0 and any(k[1] == rollups.RESOLUTIONS_S[0] for k in touched):
            # One first-resolution window, still open (not late): the bound is its due time exactly.
            assert min(k[2] + k[1] * 1000 + grace for k in touched) == out.due_ms


def test_a_window_the_timer_emitted_is_not_emitted_again_when_it_closes_unchanged() -> None:
    rules = anomaly.RuleBook()
    t0 = 1_700_000_000_000
    st = state.RunState(project="p")
    sent: dict[rollups.WindowKey, int] = {}
    state.apply(st, metrics_batch("r", 1, ["loss"], [0, 0], [1, 2], [t0, t0 + 100], [0.5, 0.4]), rules,
                grace_ms=1000, now_ms=t0, sent=sent)
    start = t0 - t0 % 10_000
    # The timer emits both resolutions' windows as they stand; then a point changes the 60 s one.
    fresh, _ = state.windows_due(st, sent, now_ms=t0 + 120_000, grace_ms=1000)
    assert {k[1] for k, _ in fresh} == {10, 60}
    sent.update((k, w.version) for k, w in fresh)
    st.windows[("loss", 60, t0 - t0 % 60_000)].version += 1
    # A later batch moves the watermark past both: the changed window goes out, the unchanged one does not.
    out = state.apply(st, metrics_batch("r", 2, ["loss"], [0], [3], [t0 + 200_000], [0.3]), rules,
                      grace_ms=1000, now_ms=t0, sent=sent)
    assert [(w.resolution_s, w.window_start_ms) for w in out.rollups] == [(60, t0 - t0 % 60_000)]
    assert ("loss", 10, start) not in sent and ("loss", 60, t0 - t0 % 60_000) not in sent
    # Without a record of what the timer sent, both go out, as before.
    st2 = state.RunState(project="p")
    state.apply(st2, metrics_batch("r", 1, ["loss"], [0, 0], [1, 2], [t0, t0 + 100], [0.5, 0.4]), rules,
                grace_ms=1000, now_ms=t0)
    out2 = state.apply(st2, metrics_batch("r", 2, ["loss"], [0], [3], [t0 + 200_000], [0.3]), rules,
                       grace_ms=1000, now_ms=t0)
    assert sorted(w.resolution_s for w in out2.rollups) == [10, 60]
    # A finish emits what is open unless the timer sent it as it stands.
    st3 = state.RunState(project="p")
    sent3: dict[rollups.WindowKey, int] = {}
    state.apply(st3, metrics_batch("r", 1, ["loss"], [0], [1], [t0], [0.5]), rules, grace_ms=1000, now_ms=t0)
    sent3.update((k, w.version) for k, w in state.windows_due(st3, sent3, now_ms=t0 + 120_000, grace_ms=1000)[0]
                 if k[1] == 10)
    fin = Batch(batch_id="bfin", project="p", run_id="r", seq=2, created_ms=t0 + 1)
    fin.run_finish.status = RunStatus.RUN_STATUS_FINISHED
    out3 = state.apply(st3, fin, rules, grace_ms=1000, now_ms=t0, sent=sent3)
    assert [w.resolution_s for w in out3.rollups] == [60]
