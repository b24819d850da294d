"""A fleet of independent training jobs against one `runstream up` stack on this machine.

    python bench/fleet.py --json                       # 2,000 jobs, 200k points/s offered, Session streams
    python bench/fleet.py --jobs 2000,3000,4000 --json # the largest fleet that still meets the goals
    python bench/fleet.py --protocol call --json       # the same fleet, one SendStream call per flush
    python bench/fleet.py --clients python --json      # the jobs as asyncio Python processes instead

Each job is what one training process is to ingest: its own gRPC channel (its own connection), its own run,
``--steps`` steps x ``--metrics`` metrics (5 x 10) logged per ``--flush-s`` (0.5 s) at a steady pace whatever its
sends wait on, and every ``--flush-s`` (with jitter, and no sooner than ingest's flow-control hint) one batch of the
steps logged since the last, sent as one Session message (``session``) or one call (``call``); a failed send is
retried after a backoff, as the SDK does. The jobs run in one compiled process (bench/fleetgen, Go and
grpc-go, its messages generated from proto/ at build time), so the fleet costs the two cores little of what the stack
needs; ``--clients python`` runs the same jobs as asyncio tasks over ``--procs`` Python processes. Reported per fleet
size: points offered, acknowledged and stored (SQL, after the fleet stops), ack latency p50/p99/max, errors by code,
log -> queryable p50/p99 (the batches ledger: stored time minus the time of the batch's first point, which includes
the job's flush wait), each role's CPU per million points stored and per batch (bench/cpu.py; clients apart),
the batches per events record ingest published (its requests packed together), and the records each Kafka topic
took during the run.
The first fleet size runs ``--warmup-s`` first, unmeasured (its CPU is under ``warmup``).
Goals (issue #11): all acknowledged, ack p99 <= 1 s,
log -> queryable p99 <= 2 s, no errors. Leaves out: the SDK's own thread (jobs speak the wire protocol directly,
the way bench/fleetload.py does), the processors' lag, a network between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import CLIENTS, CpuMeter, calibration  # noqa: E402  (bench/ is the script's own directory)
from fleetload import ingest_total, pct, role_pids, start_stack, topic_records  # noqa: E402

GOALS = {"ack_p99_ms": 1000.0, "e2e_p99_ms": 2000.0}


async def _job(addr: str, token: str, project: str, protocol: str, args: Any, start_at: float, stop_at: float,
               out: dict[str, Any]) -> None:
    """One job; ``start_at`` is wall-clock time, ``stop_at`` monotonic."""
    import grpc

    from runstream.v1 import ingest_pb2
    from runstream.v1.ingest_pb2 import Batch, Metrics
    # Its own TCP connection, as a separate process would have (channels to one target share one by default).
    channel = grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
    meta = (("authorization", f"Bearer {token}"),)
    send_stream = channel.stream_unary("/runstream.v1.Ingest/SendStream", request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=ingest_pb2.SendResponse.FromString)
    session_call = channel.stream_stream("/runstream.v1.Ingest/Session", request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=ingest_pb2.SessionAck.FromString)
    run_id = uuid.uuid4().hex
    names = [f"m{i}" for i in range(args.metrics)]
    session: Any = None
    seq, step, rid = 0, 0, 0
    hint_s = 0.0  # ingest's flow-control hint from the last ack: the SDK flushes no more often than that
    began = start_at + random.random() * args.flush_s  # jobs do not start in lockstep
    await asyncio.sleep(max(0.0, began - time.time()))
    steps_per_s = args.steps / args.flush_s
    try:
        while time.monotonic() < stop_at:
            interval = max(args.flush_s, hint_s)
            wait = min(interval * (0.8 + 0.4 * random.random()), max(0.05, stop_at - time.monotonic()))
            await asyncio.sleep(wait)
            out["intervals"].append(interval)
            # The job logs at its pace whatever its sends wait on (the SDK sends from a thread of its own): the
            # batch holds every step due by now, each point stamped with its step's time.
            due = int((time.time() - began) * steps_per_s)
            if due <= step:
                continue
            seq += 1
            n = (due - step) * args.metrics
            batch = Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run_id, seq=seq,
                          created_ms=int((began + step / steps_per_s) * 1000),
                          metrics=Metrics(names=names, name_index=[i % args.metrics for i in range(n)],
                                          steps=[step + i // args.metrics for i in range(n)],
                                          timestamps_ms=[int((began + (step + i // args.metrics) / steps_per_s) * 1000)
                                                         for i in range(n)],
                                          values=[random.random() for _ in range(n)]))
            step = due
            out["offered"] += n
            backoff = 0.1
            while True:
                t0 = time.perf_counter()
                try:
                    if protocol == "call":
                        await send_stream(iter([ingest_pb2.SendRequest(batches=[batch])]), metadata=meta, timeout=30)
                    else:
                        if session is None:
                            queue: asyncio.Queue[Any] = asyncio.Queue()

                            async def requests(q: asyncio.Queue[Any] = queue) -> Any:
                                while (item := await q.get()) is not None:
                                    yield item
                            session = (queue, session_call(requests(), metadata=meta))
                        rid += 1
                        session[0].put_nowait(ingest_pb2.SessionRequest(id=rid, batches=[batch]))
                        ack = await asyncio.wait_for(session[1].read(), 30)
                        if ack is grpc.aio.EOF or ack.id != rid:
                            raise RuntimeError("session ended")
                        hint_s = ack.min_flush_interval_ms / 1000
                    out["latency"].append((time.perf_counter() - t0) * 1000)
                    out["acked"] += n
                    break
                except (TimeoutError, grpc.aio.AioRpcError, RuntimeError) as exc:
                    code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                    detail = f"{code}: {exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc}"[:200]
                    out["error_details"][detail] = out["error_details"].get(detail, 0) + 1
                    if session is not None:
                        session[1].cancel()
                        session = None
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(5.0, backoff * 2)
    finally:
        if session is not None:
            session[0].put_nowait(None)
            session[1].cancel()
        await channel.close()


def _proc(addr: str, token: str, project: str, protocol: str, jobs: int, args: Any, start_wall: float, stop_at_wall: float,
          q: Any) -> None:
    if args.client_nice:
        os.nice(args.client_nice)  # the simulated fleet yields the cores to the stack, as jobs on other machines would
    async def main() -> dict[str, Any]:
        stop_at = time.monotonic() + (stop_at_wall - time.time())
        out: dict[str, Any] = {"offered": 0, "acked": 0, "latency": [], "error_details": {}, "intervals": []}
        await asyncio.gather(*(_job(addr, token, project, protocol, args, start_wall, stop_at, out) for _ in range(jobs)))
        return out
    out = asyncio.run(main())
    out["cpu_s"] = time.process_time()
    q.put(out)


FLEETGEN = ROOT / "bench" / "fleetgen"


def build_fleetgen(console: Any) -> Path:
    """The compiled fleet (bench/fleetgen), built with the messages generated from proto/ (its pb/ package)."""
    go = shutil.which("go")
    if not go:
        raise SystemExit("--clients go needs Go (https://go.dev/dl/), or pass --clients python")
    out = ROOT / "build" / "fleetgen"
    out.mkdir(parents=True, exist_ok=True)
    console.print("Building the compiled fleet (bench/fleetgen; the first build fetches grpc-go) ...")
    steps = [[go, "build", "-o", str(out / "protoc-gen-go"), "google.golang.org/protobuf/cmd/protoc-gen-go"],
             [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--plugin=protoc-gen-go={out / 'protoc-gen-go'}",
              f"--go_out={FLEETGEN}",
              "--go_opt=module=runstream.dev/bench/fleetgen,Mrunstream/v1/ingest.proto=runstream.dev/bench/fleetgen/pb",
              "runstream/v1/ingest.proto"],
             [go, "build", "-o", str(out / "fleetgen"), "."]]
    for cmd in steps:
        done = subprocess.run(cmd, cwd=FLEETGEN, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"building bench/fleetgen failed at `{' '.join(cmd[:3])}`:\n{done.stderr.strip()}")
    return out / "fleetgen"


def _go_fleet(binary: Path, addr: str, token: str, project: str, jobs: int, args: Any, start: float, stop_at: float,
              meter: Any) -> list[dict[str, Any]]:
    """The fleet as one compiled process; its result in the keys _proc gives."""
    cmd = [str(binary), "-addr", addr, "-project", project, "-protocol", args.protocol, "-jobs", str(jobs),
           "-steps", str(args.steps), "-metrics", str(args.metrics), "-flush-s", str(args.flush_s),
           "-start", str(start), "-stop", str(stop_at)]
    nice = (lambda: os.nice(args.client_nice)) if args.client_nice else None
    with subprocess.Popen(cmd, env={**os.environ, "RUNSTREAM_TOKEN": token}, stdout=subprocess.PIPE, text=True,
                          preexec_fn=nice) as proc:
        meter.add(CLIENTS, proc.pid)
        stdout, _ = proc.communicate(timeout=args.seconds + 300)
    if proc.returncode:
        raise SystemExit(f"bench/fleetgen exited with {proc.returncode} (its stderr is above)")
    return [json.loads(stdout)]


def run_fleet(sup: Any, cfg: Any, token: str, jobs: int, args: Any, console: Any) -> dict[str, Any]:
    from runstream.read import Api
    project = f"fleet-{jobs}-{args.protocol}-{uuid.uuid4().hex[:6]}"
    calib = calibration()
    batches0, records0 = ingest_total(sup), ingest_total(sup, "runstream_ingest_records_total")
    topics0 = topic_records(sup)
    meter = CpuMeter(role_pids(sup)).start()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    start = time.time() + 3.0  # the processes start their jobs together
    stop_at = start + args.seconds
    offered = jobs * args.steps * args.metrics / args.flush_s
    console.print(f"{jobs:,} jobs ({args.protocol}, {args.clients} clients), about {offered:,.0f} points/s offered for "
                  f"{args.seconds:.0f} s ...")
    if args.clients == "go":
        results = _go_fleet(args.fleetgen, cfg.ingest.listen, token, project, jobs, args, start, stop_at, meter)
    else:
        per = [jobs // args.procs + (1 if i < jobs % args.procs else 0) for i in range(args.procs)]
        procs = [ctx.Process(target=_proc, args=(cfg.ingest.listen, token, project, args.protocol, n, args, start, stop_at, q))
                 for n in per]
        for p in procs:
            p.start()
            meter.add(CLIENTS, p.pid or 0)
        results = [q.get(timeout=args.seconds + 300) for _ in procs]
        for p in procs:
            p.join()
    intervals = [x for r in results for x in r["intervals"]]
    acked = sum(r["acked"] for r in results)
    sql = Api(f"http://{cfg.sink.sql_listen}", token, database=cfg.clickhouse.database).client
    db = cfg.clickhouse.database
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline:
        stored = int(sql.query(f"SELECT count() FROM {db}.metric_points WHERE project = '{project}'").result_rows[0][0])
        if stored >= acked:
            break
        time.sleep(0.5)
    # The window: the fleet's start to the last acknowledged point stored (the stack's work for these points).
    meter.stop()
    meter.set_total(CLIENTS, sum(r["cpu_s"] for r in results))
    batches = ingest_total(sup) - batches0
    records = ingest_total(sup, "runstream_ingest_records_total") - records0
    cpu = meter.report(stored, batches)
    topics1 = topic_records(sup)
    e2e = sql.query(f"SELECT quantiles(0.5, 0.99)(toUnixTimestamp64Milli(stored) - toUnixTimestamp64Milli(created)) "
                    f"FROM {db}.batches FINAL WHERE project = '{project}'").result_rows[0][0]
    # The same by 5 s of log time: whether a backlog is built once (the fleet's start) or all along.
    by_5s = sql.query(f"SELECT intDiv(toUnixTimestamp64Milli(created) - {int(start * 1000)}, 5000) * 5 AS s, "
                      f"quantiles(0.5, 0.99)(toUnixTimestamp64Milli(stored) - toUnixTimestamp64Milli(created)) "
                      f"FROM {db}.batches FINAL WHERE project = '{project}' GROUP BY s ORDER BY s").result_rows
    lat = [x for r in results for x in r["latency"]]
    details: dict[str, int] = {}  # what each error said ("CODE: message"), so a cause can be found
    for r in results:
        for k, v in r["error_details"].items():
            details[k] = details.get(k, 0) + v
    errors: dict[str, int] = {}
    for k, v in details.items():
        code = k.split(":", 1)[0]
        errors[code] = errors.get(code, 0) + v
    out = {"jobs": jobs, "protocol": args.protocol, "points_offered": sum(r["offered"] for r in results),
           "points_acked": acked, "points_stored": stored, "offered_per_s": round(offered),
           "acked_per_s": round(acked / args.seconds), "sends": len(lat),
           "ack_p50_ms": pct(lat, 0.5), "ack_p99_ms": pct(lat, 0.99), "ack_max_ms": pct(lat, 1.0),
           "errors": errors, "error_details": details, "e2e_p50_ms": float(e2e[0]), "e2e_p99_ms": float(e2e[1]),
           "e2e_by_5s": [{"from_s": int(s), "p50_ms": float(q[0]), "p99_ms": float(q[1])} for s, q in by_5s],
           "cpu": cpu, "calibration": calib,
           # how well ingest packed the fleet's one-batch requests into events records
           "batches_per_record": round(batches / records, 2) if records else None,
           # records each topic took during the run (the processors' outputs and their state changelogs among them)
           "kafka_records": {t: n - topics0.get(t, 0) for t, n in sorted(topics1.items())},
           "flush_interval_s": {"p50": round(pct(intervals, 0.5), 2), "max": round(pct(intervals, 1.0), 2)}}
    out["meets_goals"] = bool(acked == out["points_offered"] and stored == acked and not errors
                              and out["ack_p99_ms"] <= GOALS["ack_p99_ms"] and out["e2e_p99_ms"] <= GOALS["e2e_p99_ms"])
    console.print(f"  acked {acked:,}/{out['points_offered']:,}, stored {stored:,}; ack p50/p99/max {out['ack_p50_ms']}/"
                  f"{out['ack_p99_ms']}/{out['ack_max_ms']} ms; e2e p50/p99 {out['e2e_p50_ms']:.0f}/{out['e2e_p99_ms']:.0f} ms; "
                  f"flush interval p50/max {out['flush_interval_s']['p50']}/{out['flush_interval_s']['max']} s; "
                  f"errors {errors or 'none'}; core-s per M points {cpu['core_s_per_m_points']}; "
                  f"goals {'met' if out['meets_goals'] else 'NOT met'}")
    return out


def main() -> None:
    from rich.console import Console
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", default="2000", help="fleet sizes, comma-separated")
    ap.add_argument("--protocol", choices=["session", "call"], default="session")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--flush-s", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--metrics", type=int, default=10)
    ap.add_argument("--clients", choices=["go", "python"], default="go",
                    help="the simulated jobs: compiled (bench/fleetgen, one process) or asyncio Python processes")
    ap.add_argument("--procs", type=int, default=4, help="Python client processes (--clients python)")
    ap.add_argument("--client-nice", type=int, default=0, help="run the client processes at this nice level")
    ap.add_argument("--warmup-s", type=float, default=0.0,
                    help="run the first fleet this long first, unmeasured: a fresh broker's JIT compilers spend about "
                         "a core for its first minute, but the measured window then also merges the warm-up's points "
                         "(docs/benchmarks.md; 0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    console = Console(stderr=True)
    args.fleetgen = build_fleetgen(console) if args.clients == "go" else None
    sup, cfg, token = start_stack("runstream-fleet-", console)
    result: dict[str, Any] = {"goals": GOALS, "seconds": args.seconds, "flush_s": args.flush_s, "steps": args.steps,
                              "metrics": args.metrics, "clients": args.clients,
                              "client_procs": 1 if args.clients == "go" else args.procs, "client_nice": args.client_nice,
                              "cores": os.cpu_count(), "warmup_s": args.warmup_s, "fleets": []}
    sizes = [int(j) for j in args.jobs.split(",")]
    try:
        if args.warmup_s:
            warm = run_fleet(sup, cfg, token, sizes[0], argparse.Namespace(**{**vars(args), "seconds": args.warmup_s}),
                             console)
            result["warmup"] = {k: warm[k] for k in ("jobs", "points_acked", "cpu")}  # what a fresh stack spends
        for jobs in sizes:
            result["fleets"].append(run_fleet(sup, cfg, token, jobs, args, console))
        met = [f["jobs"] for f in result["fleets"] if f["meets_goals"]]
        result["largest_meeting_goals"] = max(met) if met else None
        if args.json:
            print(json.dumps(result))
    finally:
        sup.stop()


if __name__ == "__main__":
    main()
