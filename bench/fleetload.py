"""The load both benches share: simulated training jobs in client processes logging through the SDK to a started
stack, and what was stored for them (throughput, end-to-end latency, loss and duplicates, RSS and CPU per role)."""

from __future__ import annotations

import atexit
import math
import multiprocessing as mp
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpu import CLIENTS, CpuMeter, calibration

METRICS = ["loss", "acc", "lr", "grad_norm", "throughput", "gpu_util", "val_loss", "val_acc", "epoch", "tokens"]


def metric_values(step: int, rng: Any) -> dict[str, float]:
    """What a simulated job logs at ``step``: a decaying loss with noise, and the METRICS beside it."""
    loss = 2.0 * math.exp(-step / 5000) + rng.random() * 0.01
    return {"loss": loss, "acc": 1 - loss / 2, "lr": 3e-4, "grad_norm": rng.random(), "throughput": 1200.0,
            "gpu_util": 0.93, "val_loss": loss * 1.1, "val_acc": 0.9, "epoch": step / 1000, "tokens": step * 4096.0}


def sdk_target(cfg: Any, token: str) -> dict[str, str]:
    """What a bench's job process passes to ``runstream.init`` to reach the bench's own stack (never the
    environment): ingest, the token, the read path and the stack's spool folder."""
    return {"url": cfg.ingest.listen, "token": token, "sql_url": f"http://{cfg.sink.sql_listen}",
            "spool_dir": str(cfg.spool_path)}


def worker(idx: int, jobs: int, rate: float, seconds: float, target: dict, project: str, durable: bool,
           out: mp.Queue) -> None:
    """One client process running ``jobs`` simulated jobs, each ``rate`` log() calls per second, against ``target``
    (see sdk_target)."""
    import random

    import runstream
    # No sys/ metrics: stored points are compared with the points these jobs logged.
    runs = [runstream.init(project=project, name=f"w{idx}-job{j}", config={"job": j}, system_interval_s=0, durable=durable,
                           **target) for j in range(jobs)]
    rng = random.Random(idx)
    samples: list[int] = []
    pc = time.perf_counter_ns
    t0 = time.monotonic()
    tick = 0.01
    calls = 0
    step = 0
    # Jobs log in lockstep at `rate` steps/s: each tick, every job logs the steps that are due.
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        due = int(elapsed * rate) + 1
        while step < due:
            for run in runs:
                values = metric_values(step, rng)
                if calls % 64 == 0:
                    a = pc()
                    run.log(values, step=step)
                    samples.append(pc() - a)
                else:
                    run.log(values, step=step)
                calls += 1
            step += 1
        time.sleep(max(0.0, tick - (time.monotonic() - t0 - elapsed)))
    logged_until = time.time()
    for run in runs:
        run.finish(timeout=120)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"logged": calls * len(METRICS), "acked": sum(r.stats.acked_points for r in runs), "samples": samples,
             "rss_mib": usage.ru_maxrss / 1024, "logged_until": logged_until, "cpu_s": usage.ru_utime + usage.ru_stime,
             "spooled": runs[0]._sender.spooled_batches if runs else 0})


def pct(xs: list[float], q: float, digits: int = 1) -> float:
    """The q-quantile of xs (nearest rank); 0 for no samples."""
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], digits) if xs else 0.0


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    return peak_rss_mib(pid, "VmRSS")


def reset_peak_rss(pid: int) -> None:
    """Start ``pid``'s VmHWM again from its current RSS (the kernel's clear_refs 5), so a peak measured next belongs
    to what runs next, not to an earlier warm-up and its checks."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass  # another user's process: the peak then counts from its start


def load(sup: Any, cfg: Any, token: str, *, jobs: int, seconds: float, points_per_s: float, workers: int,
         project: str = "bench", status: Any = None, durable: bool = False, checks: bool = True) -> dict[str, Any]:
    """Run the simulated jobs against a started Supervisor and measure what was stored for ``project``. Without
    ``checks`` (a warm-up) only until the sink drained: the checks' queries would leave the sink's memory high for the
    load measured next."""
    import stored as queries

    from runstream.storage.store import open_url

    target = sdk_target(cfg, token)
    rate = points_per_s / jobs / len(METRICS)
    per = [jobs // workers + (1 if i < jobs % workers else 0) for i in range(workers)]
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(i, n, rate, seconds, target, project, durable, q)) for i, n in enumerate(per) if n]
    from runstream.ops.stack import scrape
    rows_before = scrape(cfg.sink.metrics_port).get("runstream_sink_rows_total{table=metric_points}", 0)  # a warm-up's
    calib = calibration()  # before the load: the machine's speed now, not its speed under this bench
    pids = role_pids(sup)
    for role_pid in (pid for role in pids.values() for pid in role):
        reset_peak_rss(role_pid)
    sink_rss_start = rss_mib(pids["sink"][0])  # the floor of the peak: what an earlier load left resident
    batches_before = ingest_total(sup)
    topics_before = topic_records(sup)
    meter = CpuMeter(pids).start()
    for pr in procs:
        pr.start()
        meter.add(CLIENTS, pr.pid or 0)
    client = open_url(f"http://{cfg.sink.sql_listen}", token=token, database=cfg.clickhouse.database)
    parts: list[int] = []  # the points table's active parts each second: whether merges keep up with the inserts

    def count_parts() -> None:
        parts.append(int(client.query("SELECT count() FROM system.parts WHERE active AND database = currentDatabase() "
                                      "AND table = 'metric_points'").result_rows[0][0]))
    while any(pr.is_alive() for pr in procs) and q.qsize() < len(procs):
        if status is not None:
            status.update(sup.status())
        count_parts()
        time.sleep(1)
    results = [q.get(timeout=300) for _ in procs]
    for pr in procs:
        pr.join(60)
    logged = sum(r["logged"] for r in results)
    acked = sum(r["acked"] for r in results)
    # The drain is watched through the sink's own count of point rows inserted, not by counting through its engine:
    # a count over the collapsed view every 0.5 s takes hundreds of MiB in the sink's process and would be read as
    # the sink's memory. The queries below then check what is stored.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and scrape(cfg.sink.metrics_port).get(
            "runstream_sink_rows_total{table=metric_points}", 0) - rows_before < acked:
        count_parts()
        time.sleep(0.5)
    count_parts()
    # The sink's high-water mark through ingest and drain, read before this bench's own checks: they run in the
    # sink's engine (exact distinct counts and quantiles over every point) and would count as the sink's memory.
    sink_rss_ingest = peak_rss_mib(pids["sink"][0])
    meter.stop()
    topics = {t: n - topics_before.get(t, 0) for t, n in sorted(topic_records(sup).items())}
    meter.set_total(CLIENTS, sum(r["cpu_s"] for r in results))
    if not checks:
        return {"points_acked": acked}
    while time.monotonic() < deadline and queries.points_in_project(client, project) < acked:
        time.sleep(0.5)
    stored, distinct, first_ts, last_stored = queries.point_stats(client, project)
    # What storage had to collapse: rows the sink inserted beyond the distinct points (replays after a rebalance or
    # a restart), and batches it skipped as already stored. Counted by the sink over the whole run (one project).
    sink_metrics = scrape(cfg.sink.metrics_port)
    p50, p99 = queries.store_latency_ms(client, project)
    by_window = queries.store_latency_by_window_ms(client, project)
    # On disk: the points table's active parts (this stack stores the bench's project only), merged or not yet.
    disk_bytes, disk_rows = client.query("SELECT sum(data_compressed_bytes), sum(rows) FROM system.parts "
                                         "WHERE active AND database = currentDatabase() AND table = 'metric_points'"
                                         ).result_rows[0]
    window = max(1e-3, (last_stored - first_ts).total_seconds())
    samples = sorted(s for r in results for s in r["samples"])
    return {
        "jobs": jobs, "seconds": seconds, "offered_points_per_s": round(points_per_s),
        "points_per_s": round(distinct / window), "points_logged": logged, "points_acked": acked, "points_stored": stored,
        "e2e_p50_ms": p50, "e2e_p99_ms": p99,
        "e2e_by_10s": [{"from_s": int(w), "p50_ms": int(q[0]), "p99_ms": int(q[1])} for w, q in by_window],
        "sdk_log_us": round(samples[len(samples) // 2] / 1000, 2) if samples else None,
        "sdk_log_p99_us": round(samples[int(len(samples) * 0.99)] / 1000, 2) if samples else None,
        "lost": max(0, logged - distinct), "duplicated": stored - distinct,
        "stored_bytes_per_point": round(disk_bytes / disk_rows, 2) if disk_rows else None,
        "points_parts": {"max": max(parts), "at_drain": parts[-1]},
        "replayed_rows_collapsed": int(sink_metrics.get("runstream_sink_rows_total{table=metric_points}", 0) - rows_before) - distinct,
        "duplicate_batches_skipped": int(sink_metrics.get("runstream_sink_batches_total{outcome=duplicate}", 0)),
        "spooled_batches": sum(r["spooled"] for r in results),
        "peak_rss_mib": {"client_max": round(max(r["rss_mib"] for r in results), 1),
                         "ingest": [round(peak_rss_mib(pid), 1) for pid in pids["ingest"]],
                         "sink": round(sink_rss_ingest, 1), "sink_at_start": round(sink_rss_start, 1),
                         "sink_with_bench_checks": round(peak_rss_mib(pids["sink"][0]), 1),
                         "kafka": round(peak_rss_mib(pids["kafka"][0]), 1) if pids["kafka"] else 0.0},
        "cpu_cores": os.cpu_count(),
        # Each role's CPU from the jobs' start to the end of the drain, per million points stored and per batch.
        "cpu": meter.report(distinct, ingest_total(sup) - batches_before),
        "calibration": calib,
        # records each topic took during the run (the processors' outputs and their state changelogs among them)
        "kafka_records": topics,
    }


def role_pids(sup: Any) -> dict[str, list[int]]:
    """The stack's processes by role (a `runstream up` Supervisor), Kafka's JVM as ``kafka``."""
    pids: dict[str, list[int]] = {}
    for p in sup.procs:
        if p.proc is not None:
            pids.setdefault(p.role, []).append(p.proc.pid)
    if sup.broker and sup.broker.proc:
        pids["kafka"] = [sup.broker.proc.pid]
    return pids


def ingest_total(sup: Any, name: str = "runstream_ingest_batches_total") -> int:
    """One of ingest's counters summed over the stack's ingest processes; by default the batches acknowledged so far,
    the requests CPU per request is counted over."""
    from runstream.ops.stack import scrape
    return int(sum(scrape(p.config.ingest.metrics_port).get(name, 0) for p in sup.procs if p.role == "ingest"))


def topic_records(sup: Any) -> dict[str, int]:
    """Records written so far to each of the stack's topics (the sum of its partitions' end offsets), each topic read
    with the credentials of a role allowed to see it: the broker's and its readers' cost is per record as much as per
    byte."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    from runstream.server.kafka import client_args

    async def ends(cfg: Any, skip: set[str]) -> dict[str, int]:
        admin = AIOKafkaAdminClient(**client_args(cfg))
        consumer = AIOKafkaConsumer(**client_args(cfg), enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            topics = [t for t in await admin.list_topics() if not t.startswith("__") and t not in skip]
            tps = [TopicPartition(d["topic"], p["partition"]) for d in await admin.describe_topics(topics)
                   for p in d["partitions"]]
            out: dict[str, int] = {}
            for tp, end in (await consumer.end_offsets(tps)).items() if tps else ():
                out[tp.topic] = out.get(tp.topic, 0) + end
            return out
        finally:
            await consumer.stop()
            await admin.close()

    totals: dict[str, int] = {}
    for role in ("process", "sink", "ingest"):
        proc = next((p for p in sup.procs if p.role == role), None)
        if proc is not None:
            totals.update(asyncio.run(ends(proc.config, set(totals))))
    return totals


def bench_home(prefix: str) -> Path:
    """A fresh folder for a bench's data, removed when the bench exits (after any stack in it stopped: exit handlers
    run last first) unless BENCH_KEEP_DATA is set. A run leaves gigabytes (Kafka's log, the store)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("BENCH_KEEP_DATA"):
        atexit.register(shutil.rmtree, home, True)
    return home


def start_stack(prefix: str, console: Any, configure: Callable[[Any], None] | None = None,
                **supervisor: Any) -> tuple[Any, Any, str]:
    """A `runstream up` stack of its own (data and ports) for a bench: (supervisor, config, dev token);
    ``configure`` may change the config first."""
    from runstream.ops.stack import isolated_config
    from runstream.ops.supervisor import Supervisor

    home = bench_home(prefix)
    keep = bool(os.environ.get("BENCH_KEEP_DATA"))
    cfg = isolated_config(home)
    if configure is not None:
        configure(cfg)
    sup = Supervisor(cfg, **supervisor)
    console.print(f"Starting the stack in {home} ..." + ("" if keep else " (removed at exit; BENCH_KEEP_DATA=1 keeps it)"))
    return sup, cfg, str(sup.start()["token"])
