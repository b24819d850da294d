"""`runstream demo`: the local stack, a fleet of simulated training jobs and one real (scikit-learn) training
run, all logging through the SDK; ends with real query results and a check that nothing was lost."""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

import runstream
from runstream.cli.output import print_result, runs_summary
from runstream.cli.reads import sql_client
from runstream.ops.supervisor import Supervisor, stack_running
from runstream.sdk import Transport, connect
from runstream.wire import views
from runstream.wire.config import RunstreamConfig

ALERT_COLUMNS = ["name", "kind", "severity", "step", "status", "message"]
FLEET_COLUMNS = ["window_start", "active_runs", "points", "runs_started", "runs_finished", "runs_failed"]


def simulated_job(run: runstream.Run, seconds: float, rate: float, seed: int, stop: threading.Event,
                  fault: str = "") -> None:
    """A realistic-looking loss/accuracy curve with noise, warm-up and learning-rate drops;
    ``fault`` injects one anomaly (``nan`` or ``spike``) at 60 % of the run."""
    rng = random.Random(seed)
    lr0 = 10 ** rng.uniform(-4, -2)
    floor = rng.uniform(0.05, 0.4)
    speed = rng.uniform(0.5, 3.0)
    run.log_params({"lr": lr0, "batch_size": rng.choice([64, 128, 256]), "optimizer": rng.choice(["adam", "sgd"])})
    steps = int(seconds * rate)
    t0 = time.monotonic()
    for step in range(steps):
        if stop.is_set():
            break
        p = step / max(1, steps)
        lr = lr0 * min(1.0, (step + 1) / (0.05 * steps + 1)) * (0.1 if p > 0.6 else 1.0) * (0.1 if p > 0.85 else 1.0)
        loss = floor + (2.3 - floor) * math.exp(-speed * 5 * p) + rng.gauss(0, 0.02)
        if fault == "spike" and step == int(0.6 * steps):
            loss *= 10
        elif fault == "nan" and step >= int(0.6 * steps):
            loss = float("nan")
        acc = max(0.0, min(1.0, 1 - loss / 2.5 + rng.gauss(0, 0.01)))
        run.log({"loss": loss, "acc": acc, "lr": lr, "grad_norm": abs(rng.gauss(1.0, 0.3)) / (1 + 3 * p),
                 "throughput": rng.gauss(1200, 50), "gpu_util": rng.uniform(0.85, 0.99),
                 "val_loss": loss * 1.1 + rng.gauss(0, 0.02), "val_acc": acc * 0.97, "epoch": p * 10,
                 "tokens": float(step * 4096)}, step=step)
        ahead = (step + 1) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)


def real_training(project: str, transport: Transport) -> runstream.Run:
    """A small real model: logistic regression by SGD on scikit-learn's digits data set (ships with the package)."""
    # scikit-learn is the [demo] extra: imported here so the other commands work without it.
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.25, random_state=0)
    config: dict[str, Any] = {"model": "SGDClassifier(log_loss)", "alpha": 1e-4, "epochs": 30, "batch_size": 64}
    with runstream.init(project=project, name="digits-sgd-real", config=config, tags=["real", "sklearn"],
                        transport=transport) as run:
        clf = SGDClassifier(loss="log_loss", alpha=config["alpha"], random_state=0)
        classes = np.unique(y)
        rng = np.random.default_rng(0)
        step = 0
        for epoch in range(config["epochs"]):
            order = rng.permutation(len(xtr))
            for i in range(0, len(order), config["batch_size"]):
                idx = order[i:i + config["batch_size"]]
                clf.partial_fit(xtr[idx], ytr[idx], classes=classes)
                step += 1
            run.log({"train_loss": log_loss(ytr, clf.predict_proba(xtr), labels=classes),
                     "val_loss": log_loss(yva, clf.predict_proba(xva), labels=classes),
                     "val_acc": accuracy_score(yva, clf.predict(xva)), "epoch": epoch}, step=step)
    return run


def run_demo(config: RunstreamConfig, *, jobs: int, seconds: float, rate: float) -> int:
    console = Console()
    sup = None
    if not stack_running(config):
        sup = Supervisor(config)
        console.print("[bold]Starting the local stack[/] (Kafka, ingest, sink, embedded ClickHouse)...")
        sup.start()
    try:
        project = "demo"
        stop = threading.Event()
        # The stack this config names (its data dir's stack.json, TLS from its client section), not the environment's.
        transport = connect(config)
        runs = [runstream.init(project=project, name=f"sim-{i:03d}", config={"job": i, "kind": "simulated"}, transport=transport,
                               tags=["simulated"]) for i in range(jobs)]
        faults = {1: "nan", 2: "spike"}  # two jobs go wrong, so the anomaly detector has something to find
        threads = [threading.Thread(target=simulated_job, args=(r, seconds, rate, i, stop, faults.get(i, "")), daemon=True)
                   for i, r in enumerate(runs)]
        for t in threads:
            t.start()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                      TimeRemainingColumn(), console=console) as progress:
            task = progress.add_task(f"{jobs} simulated jobs + 1 real run", total=seconds, status="")
            real = real_training(project, transport)
            t0 = time.monotonic()
            while any(t.is_alive() for t in threads):
                acked = sum(r.stats.acked_points for r in runs)
                progress.update(task, completed=min(seconds, time.monotonic() - t0 + 1e-9),
                                status=f"{acked:,} points acknowledged")
                time.sleep(0.25)
            progress.update(task, completed=seconds)
        for r in runs:
            r.finish()
        acked = sum(r.stats.acked_points for r in runs) + real.stats.acked_points
        client = sql_client(config)
        deadline = time.monotonic() + 60
        stored = 0
        while time.monotonic() < deadline:
            stored = views.rows(client, views.points_stored("", project, [r.id for r in runs] + [real.id]))[0][0]
            if stored >= acked:
                break
            time.sleep(0.5)
        console.rule("Runs (points acknowledged by ingest vs stored in ClickHouse)")
        cols, rows = runs_summary(client, project=project, limit=8)
        print_result(cols, rows, "table")
        console.rule("The real run: validation accuracy by epoch (every 5th)")
        cols, rows = ["step", "value"], views.rows(client, views.series("", real.id, "val_acc"))
        print_result(cols, rows[::5] + rows[-1:], "table")
        console.rule("Best simulated runs by final val_acc, with their learning rate")
        print_result(["name", "final_val_acc", "lr"], views.rows(client, views.best_runs("", project, "val_acc", "lr", "simulated")),
                     "table")
        console.rule("Alerts raised by the stream processors")
        deadline = time.monotonic() + 15
        while True:
            cols, alerts = ALERT_COLUMNS, views.rows(client, views.alerts("", project))
            if sum(1 for a in alerts if a[1] in ("nonfinite", "spike")) >= min(2, max(0, jobs - 1)) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        print_result(cols, alerts, "table")
        console.rule("Fleet view: the busiest 10 s windows")
        with console.status("waiting for the fleet windows to close (10 s grace)..."):
            deadline = time.monotonic() + 30
            while True:
                cols, windows = FLEET_COLUMNS, views.rows(client, views.busiest_fleet_windows("", project))
                if windows or time.monotonic() > deadline:
                    break
                time.sleep(1)
        print_result(cols, windows, "table")
        ok = stored == acked
        console.print(f"[bold {'green' if ok else 'red'}]points acknowledged {acked:,} | stored {stored:,} | "
                      f"{'nothing lost, nothing duplicated' if ok else 'MISMATCH'}[/]")
        if sup is None:
            console.print("The stack keeps running: try `runstream runs` or `runstream sql \"SELECT ...\"`.")
        return 0 if ok else 1
    finally:
        if sup is not None:
            sup.stop()

