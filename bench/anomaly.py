"""Anomaly detection benchmark on the local stack (real Kafka, ingest, processors, sink, embedded ClickHouse).

    python bench/anomaly.py --json

A labelled synthetic fleet (default 1,000 runs: clean runs with realistic noisy loss curves, warm-up,
learning-rate drops and evaluation pauses, plus runs with one injected anomaly each: NaN, x10 spike,
divergence, stall) logs through the SDK. Prints one JSON line with precision, recall (per kind too),
false positives by kind, detection_p50_ms / detection_p99_ms (the log() call of the injected point, in the
client, to the alert row in ClickHouse; NaN, spike and divergence), stall_detection_p50_ms / _p99_ms (from the
moment the run fell silent: it includes the stall limit, 5 s at least), and points_per_s: the processor's
throughput on a backlog of the events topic (1,000-point batches, and the fleet's own ~20-point batches).

Ground truth is what the clients did: a stall alert counts only if it fires for silence that began at or after
the injected stall; a run whose generator paused past the stall limit when it was not meant to (a starved
client) is a real, unplanned stall, counted apart (``unplanned_stalls``, ``unplanned_detected``), neither a hit
nor a false positive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import CpuMeter, calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import sdk_target  # noqa: E402

KINDS = ("nonfinite", "spike", "divergence", "stall")
STALL_LIMIT_MS = 5000  # the default stall_min_s: a silence longer than this is a stall, planned or not


def plan(n_runs: int, anomalous_share: float, steps: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    runs = []
    for i in range(n_runs):
        kind = KINDS[i % 4] if i < n_runs * anomalous_share else "clean"
        runs.append({"i": i, "kind": kind, "seed": rng.randrange(1 << 30),
                     "at": rng.randrange(steps * 3 // 10, steps * 7 // 10)})
    return runs


def loss_at(r: dict, step: int, steps: int, rng: random.Random, state: dict) -> float:
    p = step / steps
    floor, speed, noise = state["floor"], state["speed"], state["noise"]
    drop = (0.6 if p > 0.55 else 1.0) * (0.75 if p > 0.85 else 1.0)
    warm = 1.0 + 0.3 * max(0.0, 1 - step / (0.03 * steps + 1))  # a little higher while lr warms up
    loss = (floor + (2.3 - floor) * math.exp(-speed * p)) * drop * warm * math.exp(rng.gauss(0, noise))
    if r["kind"] == "divergence" and step >= r["at"]:
        loss = state.setdefault("div_base", loss) * math.exp((step - r["at"]) / (0.08 * steps))
    if r["kind"] == "spike" and step == r["at"]:
        loss *= 10
    if r["kind"] == "nonfinite" and step >= r["at"]:
        loss = float("nan")
    return loss


def worker(runs: list[dict], steps: int, rate: float, target: dict, out: mp.Queue) -> None:
    import runstream
    handles = []
    for r in runs:
        rng = random.Random(r["seed"])
        st = {"floor": rng.uniform(0.05, 0.6), "speed": rng.uniform(2, 8), "noise": rng.uniform(0.02, 0.15),
              "eval_every": rng.choice([0, steps // 4, steps // 5]), "rng": rng}
        run = runstream.init(project="anomaly-bench", name=f"run-{r['i']:04d}", config={"label": r["kind"]},
                             system_interval_s=0, **target)
        handles.append((r, run, st))
    t0 = time.monotonic()
    paused_until: dict[int, float] = {}
    injected: dict[int, float] = {}   # run -> client time (ms) of the injected point, or when its stall began
    last_log: dict[int, float] = {}   # run -> client time (ms) of its last log()
    unplanned: dict[int, list[tuple[float, float]]] = {}  # run -> silences past the limit nobody planned
    tick = 0
    active = list(handles)
    while active:
        due = (time.monotonic() - t0) * rate
        if tick > due:
            time.sleep(min(0.01, (tick - due) / rate))
            continue
        tick += 1
        now = time.monotonic()
        still = []
        for r, run, st in active:
            s = st.setdefault("step", 0)
            if s >= steps:
                run.finish(timeout=0)  # queued; delivered in the background
                continue
            still.append((r, run, st))
            if paused_until.get(r["i"], 0) > now:
                continue
            if st["eval_every"] and s and s % st["eval_every"] == 0 and not st.get(f"eval{s}"):
                st[f"eval{s}"] = True
                paused_until[r["i"]] = now + 1.5  # an evaluation pause: must not count as a stall
                continue
            if r["kind"] == "stall" and s == r["at"] and "stalled" not in st:
                st["stalled"] = True
                injected[r["i"]] = last_log.get(r["i"], time.time() * 1000)
                paused_until[r["i"]] = now + 12.0
                continue
            loss = loss_at(r, s, steps, st["rng"], st)
            wall_ms = time.time() * 1000
            if r["kind"] in ("nonfinite", "spike", "divergence") and s == r["at"]:
                injected[r["i"]] = wall_ms
            prev = last_log.get(r["i"])
            planned = r["kind"] == "stall" and s == r["at"] + 0 and st.get("stalled") and not st.get("resumed")
            if planned:
                st["resumed"] = True
            elif prev is not None and wall_ms - prev > STALL_LIMIT_MS:
                unplanned.setdefault(r["i"], []).append((prev, wall_ms))
            last_log[r["i"]] = wall_ms
            run.log({"loss": loss, "acc": max(0.0, min(1.0, 1 - (loss if loss == loss else 2.3) / 2.5))}, step=s)
            st["step"] = s + 1
        active = still
    for _, run, _ in handles:
        run.finish(timeout=60)
    out.put({"ids": {r["i"]: run.id for r, run, _ in handles}, "injected": injected, "unplanned": unplanned})


async def produce_backlog(cfg: Any, points: int, per_batch: int = 1000) -> None:
    import numpy as np
    from aiokafka import AIOKafkaProducer

    from runstream.server.kafka import client_args
    from runstream.v1.ingest_pb2 import Batch
    from runstream.wire import encoding
    topic = cfg.kafka.events_topic
    prod = AIOKafkaProducer(**client_args(cfg), acks="all", linger_ms=5, max_batch_size=1 << 20)
    await prod.start()
    rng = np.random.default_rng(0)
    runs = [f"tp-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    seq = {r: 0 for r in runs}
    now = int(time.time() * 1000)
    sent = 0
    futs = []
    while sent < points:
        for r in runs:
            seq[r] += 1
            b = Batch(batch_id=uuid.uuid4().hex, project="throughput", run_id=r, seq=seq[r], created_ms=now)
            m = b.metrics
            m.names.extend(["loss", "acc", "lr", "grad_norm", "tokens"])
            m.name_index.extend((np.arange(per_batch) % 5).tolist())
            steps = (seq[r] - 1) * (per_batch // 5) + np.arange(per_batch) // 5
            m.steps.extend(steps.tolist())
            m.timestamps_ms.extend((now + steps * 10).tolist())
            m.values.extend(rng.random(per_batch).tolist())
            rec = encoding.encode(b, max_record_bytes=8 << 20)
            futs.append(await prod.send(topic, rec.value, key=rec.key, headers=rec.headers))
            sent += per_batch
            if sent >= points:
                break
    await asyncio.gather(*futs)
    await prod.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--anomalous", type=float, default=0.4, help="share of runs with an injected anomaly")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rate", type=float, default=50, help="steps per second per run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--throughput-points", type=int, default=2_000_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from rich.console import Console
    console = Console(stderr=True, quiet=args.json)

    import stored as queries

    from runstream.ops.stack import isolated_config, scrape
    from runstream.ops.supervisor import Supervisor
    from runstream.storage.store import open_url

    home = Path(tempfile.mkdtemp(prefix="runstream-anomaly-"))
    cfg = isolated_config(home)
    cfg.processors.tick_s = 0.25
    sup = Supervisor(cfg)
    console.print(f"Starting the stack in {home} ...")
    calib = calibration()
    info = sup.start()
    ch = open_url(f"http://{cfg.sink.sql_listen}", token=info["token"], database=cfg.clickhouse.database)
    try:
        runs = plan(args.runs, args.anomalous, args.steps, 1)
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        chunks = [runs[i::args.workers] for i in range(args.workers)]
        procs = [ctx.Process(target=worker, args=(c, args.steps, args.rate, sdk_target(cfg, info["token"]), q)) for c in chunks]
        console.print(f"{args.runs} runs ({args.anomalous:.0%} with one anomaly each) x {args.steps} steps at {args.rate:.0f} steps/s ...")
        for pr in procs:
            pr.start()
        ids: dict[int, str] = {}
        injected: dict[int, float] = {}
        unplanned: dict[int, list[tuple[float, float]]] = {}

        def take(msg: dict) -> None:
            ids.update(msg["ids"])
            injected.update(msg["injected"])
            unplanned.update(msg["unplanned"])
        with console.status("fleet logging...") as status:
            while len(ids) < args.runs and any(pr.is_alive() for pr in procs):
                while not q.empty():
                    take(q.get())
                status.update(sup.status())
                time.sleep(1)
        while not q.empty():
            take(q.get())
        for pr in procs:
            pr.join(60)
        time.sleep(5)  # last windows, alerts and inserts
        rows = queries.alert_times(ch, "anomaly-bench")
        # Where the time goes: log() -> processor fired, processor fired -> row stored.
        split = queries.alert_latency_split_ms(ch, "anomaly-bench")
        by_run: dict[str, list[tuple]] = {}
        for run_id, kind, step, ev, stored in rows:
            by_run.setdefault(run_id, []).append((kind, step, ev, stored))
        tp = {k: 0 for k in KINDS}
        fp = 0
        fp_by: dict[str, int] = {}
        latencies: list[float] = []
        stall_latencies: list[float] = []
        by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
        by_trigger: dict[str, list[float]] = {k: [] for k in KINDS if k != "stall"}
        unplanned_detected = 0
        slack = 1500  # a batch's client time may precede the silence by up to a flush interval and a tick
        for r in runs:
            found = by_run.get(ids.get(r["i"], ""), [])
            at_ms = injected.get(r["i"])
            hit = False
            for kind, step, ev, stored in found:
                ok = (kind == r["kind"] and not hit and at_ms is not None and (
                    (kind in ("nonfinite", "spike") and step == r["at"])
                    or (kind == "divergence" and r["at"] <= step <= r["at"] + args.steps // 3)
                    or (kind == "stall" and ev >= at_ms - slack)))
                if ok:
                    hit = True
                    tp[kind] += 1
                    (stall_latencies if kind == "stall" else latencies).append(stored - at_ms)  # type: ignore[operator]
                    by_kind[kind].append(stored - at_ms)  # type: ignore[operator]
                    if kind in by_trigger:  # from the log() of the point that crossed the threshold
                        by_trigger[kind].append(stored - ev)
                elif kind == "stall" and any(a - slack <= ev <= b for a, b in unplanned.get(r["i"], [])):
                    unplanned_detected += 1  # a silence the client really had: neither hit nor false positive
                else:
                    fp += 1
                    fp_by[f"{kind} on {r['kind']}"] = fp_by.get(f"{kind} on {r['kind']}", 0) + 1
        positives = {k: sum(1 for r in runs if r["kind"] == k) for k in KINDS}
        total_tp = sum(tp.values())
        def pct(xs: list[float], q_: float) -> int | None:
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(q_ * len(xs)))]) if xs else None

        # Throughput: stop the processor, put a backlog on the events topic, time the processor through it; with
        # 1,000-point batches, then with the fleet's own shape (20 points: 2 metrics x 10 steps per flush).
        proc = next(pr for pr in sup.procs if pr.role == "process")
        pps: dict[int, int | None] = {}
        proc_cpu: dict[int, Any] = {}
        for per_batch in (1000, 20):
            proc.stop()
            console.print(f"Producing a backlog of {args.throughput_points:,} points in {per_batch}-point batches ...")
            before = 0.0  # the counter restarts with the worker
            asyncio.run(produce_backlog(cfg, args.throughput_points, per_batch=per_batch))
            proc.start()
            t_first = t_last = None
            n_first = 0.0
            meter = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                n = scrape(cfg.processors.metrics_port).get("runstream_processor_points_total", 0.0) - before
                now = time.monotonic()
                if n > 0 and t_first is None:
                    t_first, n_first = now, n
                    # Counted from its first processed batch: the worker's start-up is not per-point work.
                    meter = CpuMeter({"process": [proc.proc.pid] if proc.proc else []}).start()
                if n >= args.throughput_points:
                    t_last = now
                    break
                time.sleep(0.1)
            if meter is not None:
                meter.stop()
                proc_cpu[per_batch] = meter.report(int(args.throughput_points - n_first))
            pps[per_batch] = (round((args.throughput_points - n_first) / (t_last - t_first))
                              if t_first and t_last and t_last > t_first else None)
        out = {
            "runs": args.runs, "anomalous_runs": sum(positives.values()), "alerts": len(rows),
            "precision": round(total_tp / (total_tp + fp), 4) if total_tp + fp else None,
            "recall": round(total_tp / sum(positives.values()), 4) if positives else None,
            "recall_by_kind": {k: round(tp[k] / positives[k], 4) if positives[k] else None for k in KINDS},
            "false_positives": fp, "false_positives_by_kind": fp_by,
            "detection_p50_ms": pct(latencies, 0.5), "detection_p99_ms": pct(latencies, 0.99),
            "detection_from": "the client's log() of the injected point",
            "detection_by_kind_ms": {k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)} for k, v in by_kind.items()},
            # A divergence is a trend: the detector fires once its slow average climbed divergence_ratio, some steps
            # after the injection. From the point that crossed the threshold, the pipeline's own part remains.
            "detection_from_trigger_by_kind_ms": {k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "n": len(v)}
                                                  for k, v in by_trigger.items()},
            "stall_detection_p50_ms": pct(stall_latencies, 0.5), "stall_detection_p99_ms": pct(stall_latencies, 0.99),
            "unplanned_stalls": sum(len(v) for v in unplanned.values()), "unplanned_detected": unplanned_detected,
            "log_to_processor_ms_p50_p99": [round(x) for x in split[0]], "processor_to_stored_ms_p50_p99": [round(x) for x in split[1]],
            "points_per_s": pps[1000], "points_per_s_fleet_batches": pps[20],
            "points_per_s_note": "one processor worker on a backlog (1,000-point / 20-point batches), while the sink stores it too",
            "cpu_cores": os.cpu_count(), "calibration": calib,
            # The processor worker's CPU through each backlog above, per million points processed.
            "processor_cpu_by_batch_points": proc_cpu,
        }
        print(json.dumps(out))
        return 0
    finally:
        sup.stop()


if __name__ == "__main__":
    sys.exit(main())
