"""The spine end to end on real services: SDK -> gRPC ingest -> real Kafka -> sink -> real ClickHouse engine.

Proves: a million points from 50 concurrent clients land exactly once and bit-identical; a resent batch
is counted once; bad, oversized and unauthenticated requests get the right status without hurting
concurrent good clients; Kafka going away makes clients back off and everything lands when it returns;
a sink killed with SIGKILL mid-stream loses and duplicates nothing after restart.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

import runstream
from runstream.ops.broker import SHORT_LIVED_JVM, KafkaBroker, free_port
from runstream.ops.stack import InProcessRoles, RoleProcess, wait_http
from runstream.sdk.transport import GrpcTransport, SendError
from runstream.storage.store import open_url
from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from runstream.v1.ingest_pb2 import Batch
from tests.conftest import Stack, make_config
from tests.helpers import counter, metric_batch, wait_sink_drained, wait_until

METRICS = [f"m{i}" for i in range(10)]


def expected_values(client: int, steps: int) -> np.ndarray:
    """Deterministic values per client, shape (steps, 10); extreme but finite doubles included."""
    shape = (steps, len(METRICS))
    v = np.random.default_rng(client).standard_normal(shape) * 10.0 ** np.random.default_rng(client + 1000).integers(-300, 300, shape)
    return v


def log_client(addr: str, token: str, client: int, steps: int, project: str, spool_dir: str, runs: dict) -> None:
    vals = expected_values(client, steps)
    run = runstream.init(project, f"client-{client}", transport=GrpcTransport(addr, token), spool_dir=spool_dir)
    runs[client] = run
    for step in range(steps):
        run.log(dict(zip(METRICS, vals[step].tolist())), step=step)
    run.finish(timeout=120)


@pytest.mark.slow  # a million points
def test_million_points_from_50_clients_exactly_once(stack: Stack, token: str, tmp_path: Path) -> None:
    runs: dict[int, runstream.Run] = {}
    threads = [threading.Thread(target=log_client, args=(stack.ingest_addr, token, c, 2000, "fleet", str(tmp_path), runs))
               for c in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sum(r.stats.acked_points for r in runs.values()) == 1_000_000
    assert stack.wait_points(1_000_000, timeout=120) == 1_000_000
    wait_sink_drained(stack.config)  # every record in Kafka is stored: a duplicate would be counted now
    assert stack.count_points() == 1_000_000
    for c in (0, 17, 49):
        rows = stack.query("SELECT metric, step, value FROM {db}.metrics WHERE run_id = %(r)s ORDER BY step, metric", r=runs[c].id)
        got = np.array([r[2] for r in rows]).reshape(2000, 10)
        order = np.argsort(np.array(METRICS))  # metric names sort m0..m9, same as METRICS
        assert np.array_equal(got.view(np.uint64), expected_values(c, 2000)[:, order].view(np.uint64))
    finished = stack.query("SELECT count(), sum(points_acked) FROM {db}.runs WHERE status = 'finished'")
    assert finished == [(50, 1_000_000)]
    # The latest value per run and metric, kept by a materialized view, equals the one computed from every point.
    latest = stack.query("SELECT run_id, metric, step, value FROM {db}.latest ORDER BY run_id, metric")
    computed = stack.query("SELECT run_id, metric, max(step), argMax(value, step) FROM {db}.metrics "
                           "GROUP BY run_id, metric ORDER BY run_id, metric")
    assert len(latest) == 500 and latest == computed


def test_same_batch_twice_is_counted_once(stack: Stack, token: str) -> None:
    t = GrpcTransport(stack.ingest_addr, token)
    b = metric_batch("dup-run", 100)
    db = stack.config.clickhouse.database
    t.send([b])
    assert stack.wait_points(100, where="run_id = 'dup-run'") == 100
    dups = counter("runstream_sink_batches_total", outcome="duplicate")
    t.send([b])  # a client retry after a lost answer: ingest publishes it again
    t.send([b])
    wait_until(lambda: counter("runstream_sink_batches_total", outcome="duplicate") == dups + 2, 30,
               "the sink to read both resends")
    assert stack.count_points("run_id = 'dup-run'") == 100
    # Even with the sink's memory of recent ids out of the way, storage collapses the replay.
    stack.sink.client.command(f"SYSTEM STOP MERGES {db}.metric_points")  # keep the raw replay visible
    try:
        stored = counter("runstream_sink_batches_total", outcome="stored")
        stack.sink.recent = type(stack.sink.recent)()
        t.send([b])
        wait_until(lambda: counter("runstream_sink_batches_total", outcome="stored") >= stored + 1, 30,
                   "the sink to store the replay")
        raw = "SELECT count() FROM {db}.metric_points WHERE run_id = 'dup-run'"
        assert stack.query(raw)[0][0] == 200  # the replay is in the raw table...
        assert stack.count_points("run_id = 'dup-run'") == 100  # ...and the view shows each point once
    finally:
        stack.sink.client.command(f"SYSTEM START MERGES {db}.metric_points")
    stack.sink.client.command(f"OPTIMIZE TABLE {db}.metric_points FINAL")
    assert stack.query(raw)[0][0] == 100  # a merge collapses the replay on (batch, idx)
    t.close()


def _call(addr: str, request: ingest_pb2.SendRequest, token: str | None):
    with grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = ingest_pb2_grpc.IngestStub(ch)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        try:
            stub.Send(request, metadata=md, timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def test_bad_requests_get_right_status_and_good_clients_are_unaffected(stack: Stack, token: str, tmp_path: Path) -> None:
    runs: dict[int, runstream.Run] = {}
    good = [threading.Thread(target=log_client, args=(stack.ingest_addr, token, c, 1000, "good", str(tmp_path), runs))
            for c in range(4)]
    for t in good:
        t.start()
    addr = stack.ingest_addr
    bad_len = metric_batch("r1")
    bad_len.metrics.steps.append(11)
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[bad_len]), token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batches[0].metrics.steps" in msg
    bad_name = metric_batch("r1")
    bad_name.project = "no spaces allowed"
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[metric_batch("ok-1"), bad_name]), token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batches[1].project" in msg
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[metric_batch("r2", stack.config.ingest.max_batch_points + 1)]), token)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "limit" in msg
    big = Batch(batch_id=uuid.uuid4().hex, project="p", run_id="r4", seq=1)
    big.params.values["blob"] = "x" * (40 * 1024 * 1024)
    code, _ = _call(addr, ingest_pb2.SendRequest(batches=[big]), token)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # over the server's max message size
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[metric_batch("r5")]), None)
    assert code == grpc.StatusCode.UNAUTHENTICATED and "bearer" in msg
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[metric_batch("r5")]), "rs_not-a-token")
    assert code == grpc.StatusCode.UNAUTHENTICATED
    restricted = "rs_" + uuid.uuid4().hex
    import yaml
    data = yaml.safe_load(stack.config.tokens_path.read_text())
    data["tokens"].append({"token": restricted, "name": "other", "projects": ["other"], "scopes": ["ingest"]})
    stack.config.tokens_path.write_text(yaml.safe_dump(data))
    stack.roles.stages["ingest"][0].tokens._checked = 0  # re-read now rather than within reload_s
    code, msg = _call(addr, ingest_pb2.SendRequest(batches=[metric_batch("r6")]), restricted)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'p'" in msg
    for t in good:
        t.join(120)
    assert all(r.stats.acked_points == 10_000 for r in runs.values()) and len(runs) == 4
    assert stack.wait_points(40_000, where="project = 'good'") == 40_000
    assert stack.count_points("run_id = 'ok-1'") == 10  # accepted before the bad batch in its request: durable


@pytest.mark.slow
def test_kafka_outage_clients_back_off_then_everything_lands(tmp_path: Path, chdb_path: Path, token: str) -> None:
    broker = KafkaBroker(tmp_path / "own-kafka", jvm_options=SHORT_LIVED_JVM)
    broker.start()
    config = make_config(tmp_path / "c", broker, chdb_path)
    config.ingest.publish_timeout_s = 3.0
    from runstream.server.auth import ensure_dev_token
    tok = ensure_dev_token(config.tokens_path)
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    stack = Stack(config, roles)
    try:
        run = runstream.init("outage", transport=GrpcTransport(stack.ingest_addr, tok, timeout_s=5),
                             spool_dir=str(tmp_path / "spool"), backoff_max_s=1.0, max_pending_points=20_000)
        for i in range(2000):
            run.log({"a": float(i), "b": -float(i)}, step=i)
        assert stack.wait_points(4000, where="project = 'outage'") == 4000
        broker.stop()
        t0 = time.perf_counter()
        for i in range(2000, 32_000):
            run.log({"a": float(i), "b": -float(i)}, step=i)
            if i % 1000 == 0:
                time.sleep(0.05)  # a training loop's pace, not a wait: the steps span many flushes into the outage
        assert time.perf_counter() - t0 < 10  # logging carried on while Kafka was down
        # 60k points over max_pending_points (20k) with nothing acknowledged: the sender spools them to disk.
        wait_until(lambda: run._sender.spooled_batches > 0, 30, "the sender to spool the points Kafka cannot take")
        broker.start()
        assert run.finish(timeout=120)
        assert stack.wait_points(64_000, timeout=120, where="project = 'outage'") == 64_000
        wait_sink_drained(config)
        assert stack.count_points("project = 'outage'") == 64_000
        steps = stack.query("SELECT count(DISTINCT step), min(step), max(step) FROM {db}.metrics WHERE project = 'outage'")
        assert steps == [(32_000, 0, 31_999)]
    finally:
        roles.stop()
        broker.stop()


@pytest.mark.slow
def test_sink_killed_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, kafka: KafkaBroker | str, token: str) -> None:
    """The sink runs as its own process on its own engine path; SIGKILL it while data flows, restart it."""
    config = make_config(tmp_path, kafka, tmp_path / "sink-ch")
    config.sink.metrics_port = free_port()
    config.sink.instance_id = "crash-test-sink"  # each restart takes the partitions back at once
    from runstream.server.auth import ensure_dev_token
    tok = ensure_dev_token(config.tokens_path)
    ingest = InProcessRoles(config, ["ingest"]).start()
    addr = f"127.0.0.1:{ingest.stages['ingest'][0].port}"
    sink = RoleProcess("sink", config, tmp_path / "logs")
    sink.start()
    sql = f"http://{config.sink.sql_listen}"
    wait_http(sql + "/ping", 60, sink)
    stop = threading.Event()
    runs: list[runstream.Run] = []

    def producer(k: int) -> None:
        run = runstream.init("crash", f"c{k}", transport=GrpcTransport(addr, tok), spool_dir=str(tmp_path / "spool"))
        runs.append(run)
        step = 0
        while not stop.is_set():
            run.log({"x": float(step), "y": float(k)}, step=step)
            step += 1
            if step % 100 == 0:
                time.sleep(0.02)  # at most ~5k steps/s each: data flows through every crash, and the backlog the
                # restarted sink drains stays seconds long
        run.finish(timeout=60)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()

        def stored() -> int:
            client = open_url(f"http://{config.sink.sql_listen}", token=tok, database=config.clickhouse.database)
            return client.query("SELECT count() FROM metrics").result_rows[0][0]

        deadline = time.monotonic() + 60
        while stored() < 20_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        for _ in range(2):  # crash it twice while the producers keep going
            sink.kill()
            time.sleep(1.0)
            sink.start()
            wait_http(sql + "/ping", 60, sink)
            time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(90)
        acked = sum(r.stats.acked_points for r in runs)
        assert acked > 20_000
        wait_sink_drained(config, timeout=90)  # the restarted sink stored (and committed) everything in Kafka
        assert stored() == acked
        client = open_url(f"http://{config.sink.sql_listen}", token=tok, database=config.clickhouse.database)
        per_run = client.query("SELECT run_id, count(), uniqExact(metric, step), max(step) + 1 FROM metrics GROUP BY run_id").result_rows
        assert len(per_run) == 4
        for _, count, distinct, steps in per_run:
            assert count == distinct == 2 * steps  # every step of every run present once, no gaps
        # Every acknowledged batch is in the ledger exactly once, however often the crashes replayed it.
        # (count() over FINAL equals the distinct batch ids by construction: compared with what was acknowledged.)
        ledger = client.query("SELECT count() FROM batches FINAL").result_rows[0]
        assert ledger[0] == sum(r.stats.acked_batches for r in runs)
    finally:
        stop.set()
        sink.stop()
        ingest.stop()


def test_ingest_exports_prometheus_metrics(stack: Stack, token: str) -> None:
    from runstream.server import telemetry
    port = free_port()
    telemetry.serve_metrics(port, stack.config)
    t = GrpcTransport(stack.ingest_addr, token)
    t.send([metric_batch("prom-run")])
    with pytest.raises(SendError):
        t.send([metric_batch("")])
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert 'runstream_ingest_requests_total{code="OK",method="Session"}' in text  # the SDK's path
    assert 'runstream_ingest_requests_total{code="INVALID_ARGUMENT",method="Session"}' in text
    assert "runstream_ingest_points_total" in text
