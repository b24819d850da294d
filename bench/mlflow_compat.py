"""The `mlflow` client logging through runstream's MLflow API vs through an MLflow tracking server, on this machine.

    python bench/mlflow_compat.py --json

Both servers run here at the same time, idle while the other is measured: MLflow 3.17.2 from .venv-mlflow
(scripts/setup makes it; SQLite store, ``--workers 4``) and a `runstream up` stack of its own (the mlflow role in
front of ingest, Kafka, the sink, the embedded store). Measured, per server, with the same client code:
- ``log_batch``: K client processes (``--clients``), each its own run, each call 1,000 metric points (MLflow's
  limit per call) for ``--seconds``; points acknowledged per second and the call's p50 / p99. For runstream,
  also how long after the last acknowledgement every point was stored (queryable).
- ``get_metric_history`` of one run's 100,000-point metric (p50 of ``--repeat``).
- ``search_runs`` over 1,000 runs with a metric and a param filter (p50 of ``--repeat``).
Each with the server's CPU per million points logged (bench/cpu.py: MLflow's server and its workers; every role of
runstream's stack, Kafka included, until the points are stored) and the clients' own (their processes' CPU while
logging). Before the servers start, ``client_floor``: what the client itself spends to make one 1,000-point
log_batch request and to turn a 100,000-point history answer into Metric objects, with no server at all: the ceiling
of any ratio between two servers measured through this client. Prints one JSON line.
Leaves out: artifacts, the MLflow UI, a remote network, a PostgreSQL/MySQL MLflow store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import CpuMeter, calibration, with_descendants  # noqa: E402  (bench/ is the script's own directory)
from fleetload import pct, role_pids, start_stack  # noqa: E402

MLFLOW = ROOT / ".venv-mlflow" / "bin" / "mlflow"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # stdout carries the JSON line only


def _client(uri: str, token: str) -> Any:
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)


def _logger(uri: str, token: str, exp: str, seconds: float, out: Any) -> None:
    """One client process: its own run, log_batch of 1,000 points until the time is up."""
    from mlflow.entities import Metric
    c = _client(uri, token)
    run = c.create_run(exp)
    step, lat = 0, []
    began, cpu0 = time.monotonic(), time.process_time()
    end = began + seconds
    while time.monotonic() < end:
        now = int(time.time() * 1000)
        batch = [Metric(f"m{i % 10}", float(i), now, step + i // 10) for i in range(1000)]
        t0 = time.perf_counter()
        c.log_batch(run.info.run_id, metrics=batch)
        lat.append((time.perf_counter() - t0) * 1000)
        step += 100
    took, cpu = time.monotonic() - began, time.process_time() - cpu0
    c.set_terminated(run.info.run_id)
    out.put((run.info.run_id, len(lat) * 1000, lat, took, cpu))


def throughput(uri: str, token: str, exp: str, clients: int, seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_logger, args=(uri, token, exp, seconds, q)) for _ in range(clients)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get(timeout=seconds + 300) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    lat = [x for _, _, ls, _, _ in results for x in ls]
    points = sum(n for _, n, _, _, _ in results)
    # Each client's points over its own logging time (process start-up left out), summed.
    rate = sum(n / took for _, n, _, took, _ in results)
    # The clients' own CPU while logging (the mlflow client turning metrics into JSON): the same in both columns.
    clients = sum(cpu for *_, cpu in results)
    return {"points": points, "points_per_s": round(rate), "log_batch_p50_ms": pct(lat, 0.5, 2),
            "log_batch_p99_ms": pct(lat, 0.99, 2), "calls": len(lat), "elapsed_s": round(elapsed, 1),
            "clients_core_s_per_m_points": round(clients / points * 1e6, 2) if points else None,
            "runs": {r: n for r, n, _, _, _ in results}}


def reads(uri: str, token: str, exp: str, repeat: int, console: Any) -> dict[str, Any]:
    from mlflow.entities import Metric, Param
    c = _client(uri, token)
    long = c.create_run(c.create_experiment(exp), run_name="long")
    console.print("  100,000-point history ...")
    for start in range(0, 100_000, 1000):
        c.log_batch(long.info.run_id, metrics=[Metric("loss", 1.0 / (s + 1), 1000 + s, s) for s in range(start, start + 1000)])
    c.set_terminated(long.info.run_id)
    console.print("  1,000 runs to search ...")
    search_exp = c.create_experiment(f"{exp}-search")
    for i in range(1000):
        r = c.create_run(search_exp, run_name=f"r{i}")
        c.log_batch(r.info.run_id, metrics=[Metric("score", (i % 100) / 100, 1000, 0)], params=[Param("p", "ab"[i % 2])])
    out: dict[str, Any] = {}
    c.get_metric_history(long.info.run_id, "loss")  # warm, and (runstream) wait for storage once
    deadline = time.monotonic() + 120
    while len(c.get_metric_history(long.info.run_id, "loss")) < 100_000:
        if time.monotonic() > deadline:
            raise SystemExit("the 100,000 points were not readable within 120 s")
        time.sleep(0.5)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = c.get_metric_history(long.info.run_id, "loss")
        times.append((time.perf_counter() - t0) * 1000)
    out["get_metric_history_100k"] = {"p50_ms": pct(times, 0.5, 2), "p99_ms": pct(times, 0.99, 2), "points": len(got)}
    query = {"filter_string": "metrics.score > 0.5 and params.p = 'a'", "max_results": 1000}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        found = c.search_runs([search_exp], **query)
        times.append((time.perf_counter() - t0) * 1000)
    out["search_runs_1000"] = {"p50_ms": pct(times, 0.5, 2), "p99_ms": pct(times, 0.99, 2), "rows": len(found)}
    return out


def client_floor(repeat: int) -> dict[str, Any]:
    """What the `mlflow` client itself spends, in this process, with no server at all: turning one 1,000-point
    log_batch into its request body, and turning a 100,000-point get_metric_history answer into Metric objects (the
    steps its RestStore takes). A server answering in no time is still bound by these: the ceiling of any ratio."""
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory, LogBatch
    from mlflow.utils.proto_json_utils import message_to_json, parse_dict

    now = int(time.time() * 1000)
    batch = [Metric(f"m{i % 10}", float(i), now, i // 10) for i in range(1000)]
    t0 = time.perf_counter()
    for _ in range(repeat * 10):
        message_to_json(LogBatch(run_id="r" * 32, metrics=[m.to_proto() for m in batch], params=[], tags=[]))
    write_ms = (time.perf_counter() - t0) * 1000 / (repeat * 10)
    raw = json.dumps({"metrics": [{"key": "loss", "value": 1.0 / (s + 1), "timestamp": 1000 + s, "step": s}
                                  for s in range(100_000)]})
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        resp = GetMetricHistory.Response()
        parse_dict(json.loads(raw), resp)
        [Metric.from_proto(m) for m in resp.metrics]
        times.append((time.perf_counter() - t0) * 1000)
    return {"log_batch_1000_points_ms": round(write_ms, 2),
            "core_s_per_m_points_logged": round(write_ms, 2),  # ms per 1,000 points = core-s per million
            "get_metric_history_100k_parse_ms": pct(times, 0.5, 1)}


def start_mlflow(home: Path, console: Any) -> tuple[subprocess.Popen[bytes], str]:
    if not MLFLOW.exists():
        raise SystemExit(f"no MLflow server at {MLFLOW}: run scripts/setup")
    port = 5600 + os.getpid() % 300
    console.print(f"Starting an MLflow server (SQLite, 4 workers) on :{port} ...")
    log = open(home / "mlflow-server.log", "wb")
    proc = subprocess.Popen([str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "4",
                             "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                             "--artifacts-destination", str(home / "artifacts")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the MLflow server did not start; see {home / 'mlflow-server.log'}") from None
            time.sleep(0.3)


def main() -> None:
    from rich.console import Console
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--servers", default="mlflow_server,runstream", help="which to measure, in order")
    args = ap.parse_args()
    console = Console(stderr=True)
    home = Path(tempfile.mkdtemp(prefix="runstream-mlflow-compat-"))
    # Taken first, on a quiet machine: the servers starting (a JVM compiling) would inflate both.
    result: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "repeat": args.repeat,
                              "mlflow_version": "3.17.2", "cores": os.cpu_count(),
                              "calibration": calibration(), "client_floor": client_floor(args.repeat)}
    sup, cfg, token = start_stack("runstream-mlflow-compat-", console)
    mlflow_proc, mlflow_url = start_mlflow(home, console)
    try:
        targets = {"mlflow_server": (mlflow_url, ""), "runstream": (f"http://{cfg.mlflow.listen}", token)}
        for name, (uri, tok) in [(n, targets[n]) for n in args.servers.split(",")]:
            console.print(f"[bold]{name}[/]: {args.clients} clients logging for {args.seconds:.0f} s ...")
            exp = _client(uri, tok).create_experiment(f"bench-{name}")
            # The server's CPU through logging (and, for runstream, until every point is stored): per million points.
            meter = CpuMeter(role_pids(sup) if name == "runstream" else
                             {"mlflow_server": with_descendants(mlflow_proc.pid)}).start()
            t = throughput(uri, tok, exp, args.clients, args.seconds)
            if name == "runstream":  # every acknowledged point stored (queryable by SQL): how long after the last ack?
                from runstream.read import Api
                acked_at = time.monotonic()
                sql = Api(f"http://{cfg.sink.sql_listen}", token, database=cfg.clickhouse.database).client
                ids = "', '".join(t["runs"])
                while sql.query(f"SELECT count() FROM {cfg.clickhouse.database}.metric_points "
                                f"WHERE run_id IN ('{ids}')").result_rows[0][0] < t["points"]:
                    time.sleep(0.05)
                t["all_stored_after_s"] = round(time.monotonic() - acked_at, 2)
            meter.stop()
            t["cpu"] = meter.report(t["points"])
            del t["runs"]
            console.print(f"  {t['points_per_s']:,} points/s, log_batch p50 {t['log_batch_p50_ms']} ms p99 {t['log_batch_p99_ms']} ms")
            t.update(reads(uri, tok, f"bench-{name}-reads", args.repeat, console))
            console.print(f"  history 100k p50 {t['get_metric_history_100k']['p50_ms']} ms, search 1,000 runs p50 "
                          f"{t['search_runs_1000']['p50_ms']} ms")
            result[name] = t
        if args.json:
            print(json.dumps(result))
    finally:
        mlflow_proc.terminate()
        mlflow_proc.wait(30)
        sup.stop()


if __name__ == "__main__":
    main()
