"""runstream scaled out on a 3-node KRaft cluster (replication factor 3, min.insync.replicas 2) with two of every
role: two ingest processes, two processor workers (processes) and two sinks in one group. Under load, one after
the other: the broker leading a busy events partition is killed (SIGKILL) and restarted on its own disk; another
broker's disk is wiped and the node replaced; a sink crashes (its loop cancelled mid-poll, nothing of that poll
committed) and a new one takes its place; a processor worker is killed (SIGKILL) and restarted. Ingest keeps
acknowledging within 10 s of each event, and at the end every acknowledged point is stored once, rollups equal
SQL over the raw points, the fleet view counts every point, a run deletion made meanwhile was applied by both
sinks, and the audit chain is gapless."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

import runstream
from runstream.ops.broker import SHORT_LIVED_JVM, KafkaCluster, free_port
from runstream.ops.stack import InProcessRoles, RoleProcess, scrape, wait_http
from runstream.processors.app import STATE_CODEC
from runstream.sdk.transport import GrpcTransport
from runstream.server.auth import ensure_admin_token, ensure_dev_token
from runstream.server.kafka import client_args
from runstream.wire import audit, encoding, views
from runstream.wire.config import RunstreamConfig
from tests.conftest import Stack, make_config
from tests.helpers import group_lag, metric_batch, read_topic, ready_or_restarted, wait_sink_drained, wait_until
from tests.test_processors_live import ROLLUP_ROWS, ROLLUP_SQL

PROJECT = "scale"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    c = KafkaCluster(tmp_path_factory.mktemp("cluster"), 3, jvm_options=SHORT_LIVED_JVM)
    c.start()
    try:
        yield c
    finally:
        c.stop(timeout=3)  # throwaway data: the last nodes would wait out the whole timeout for a gone quorum


async def topic_settings(config: RunstreamConfig) -> dict[str, tuple[int, str]]:
    """Every topic on the brokers: (replicas of its partitions, at least; its effective min.insync.replicas)."""
    admin = AIOKafkaAdminClient(**client_args(config))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
        replicas = {d["topic"]: min(len(p["replicas"]) for p in d["partitions"]) for d in await admin.describe_topics(names)}
        isr: dict[str, str] = {}
        for response in await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names]):
            for resource in response.resources:
                for entry in resource[4]:
                    if entry[0] == "min.insync.replicas":
                        isr[resource[3]] = entry[1]
        return {n: (replicas[n], isr.get(n, "")) for n in names}
    finally:
        await admin.close()


async def describe(config: RunstreamConfig, topic: str) -> list[dict]:
    # The admin client asks a node of its cached metadata, which can be the broker just killed: ask again.
    for attempt in range(10):
        admin = AIOKafkaAdminClient(**client_args(config))
        try:
            await admin.start()
            (desc,) = await admin.describe_topics([topic])
            return list(desc["partitions"])
        except KafkaError:
            if attempt == 9:
                raise
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
    raise AssertionError("unreachable")


async def processor_trace(config: RunstreamConfig, project: str, workers: list[RoleProcess]) -> str:
    """What a failure of the derived views needs to be told apart: whether a run's batches reached Kafka out of
    sequence order (further than the processors remember), and each run's state records in the changelog
    (written by whichever worker) against the committed offsets."""
    lines: list[str] = []
    seqs: dict[str, list[tuple[int, int, int]]] = {}  # run id -> (partition, offset, seq) in offset order
    for rec in await read_topic(config, config.kafka.events_topic):
        for b in encoding.decode(rec.value, rec.headers):
            if b.project == project:
                seqs.setdefault(b.run_id, []).append((rec.partition, rec.offset, b.seq))
    for run_id, got in seqs.items():
        top, behind = 0, []
        for partition, offset, seq in got:
            if seq < top - 8:
                behind.append(f"seq {seq} at {partition}/{offset} after {top}")
            top = max(top, seq)
        lines.append(f"events {run_id[-6:]}: {len(got)} batches, seqs {got[0][2]}..{top}, "
                     f"{len(behind)} more than 8 behind the highest before them {behind[:3]}")
    admin = AIOKafkaAdminClient(**client_args(config))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(config.processors.app_id)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**client_args(config))
    await consumer.start()
    try:
        ends = await consumer.end_offsets([tp for tp in committed if tp.topic == config.kafka.events_topic])
    finally:
        await consumer.stop()
    lines.append("events committed/end: " + ", ".join(f"{tp.partition}: {committed[tp].offset}/{end}" for tp, end in sorted(ends.items())))
    for table in ("run-state", "fleet-state"):
        records = await read_topic(config, f"{config.processors.app_id}-{table}-changelog")
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            if rec.value is None:
                continue
            st = STATE_CODEC.loads(rec.value)
            key = rec.key.decode()
            if table == "run-state" and key in seqs:
                last = max((k for k in st.windows if k[1] == 10), key=lambda k: k[2], default=None)
                w = st.windows.get(last) if last else None
                lines.append(f"run-state {key[-6:]} {rec.partition}/{rec.offset} t={rec.timestamp % 100_000}: seq {st.max_seq} "
                             f"floor {st.seq_floor}; last 10s window {last and last[:1] + last[2:]}: "
                             f"{w and (w.count, w.first_step, w.last_step, w.version)}")
            elif table == "fleet-state" and key.endswith(f":{project}"):
                points = sum(b.points for b in [*st.buckets.values(), *st.closed.values()])
                lines.append(f"fleet-state {key} {rec.partition}/{rec.offset} t={rec.timestamp % 100_000}: {points} points "
                             f"in {len(st.buckets)} open and {len(st.closed)} closed windows")
    for w in workers:
        try:
            m = scrape(w.config.processors.metrics_port, timeout=5)
        except OSError as exc:
            lines.append(f"{w.name}: no metrics ({exc})")
            continue
        lines.append(f"{w.name} (pid {w.proc and w.proc.pid}): " + ", ".join(
            f"{k}={v:g}" for k, v in m.items() if k.startswith(("runstream_processor_batches", "runstream_processor_ready",
                                                                "runstream_processor_lag", "runstream_processor_points",
                                                                "runstream_processor_states_at_rebalance"))))
    return "\n".join(lines)


def leader_of(config: RunstreamConfig, partition: int) -> int:
    parts = asyncio.run(describe(config, config.kafka.events_topic))
    return int(next(p["leader"] for p in parts if p["partition"] == partition))


def fully_replicated(config: RunstreamConfig) -> bool:
    return all(len(p["isr"]) == 3 for p in asyncio.run(describe(config, config.kafka.events_topic)))


class Job:
    """A training job: its own SDK run and connection, two metrics at about ``rate`` steps/s until stopped."""

    def __init__(self, addr: str, token: str, spool: Path, rate: float = 800) -> None:
        self.run = runstream.init(PROJECT, transport=GrpcTransport(addr, token), spool_dir=str(spool))
        self.rate, self.finished = rate, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._log, daemon=True)
        self._thread.start()

    def _log(self) -> None:
        step, t0 = 0, time.monotonic()
        while not self._stop.is_set():
            self.run.log({"loss": 1.0 / (step + 1), "acc": (step % 1000) / 1000}, step=step)
            step += 1
            if step % 50 == 0:
                self._stop.wait(max(0.0, t0 + step / self.rate - time.monotonic()))
        self.finished = self.run.finish(timeout=120)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)

    @property
    def acked(self) -> int:
        return self.run.stats.acked_points


def report_brokers(cluster: KafkaCluster) -> None:
    """Each node's state and the warnings and errors at the end of its log, for a failure's report."""
    for b in cluster.nodes:
        alive = b.proc is not None and b.proc.poll() is None
        worst = [line for line in b.log_tail(400).splitlines() if " ERROR " in line or " WARN " in line or "FATAL" in line]
        print(f"--- broker {b.node_id} ({'running' if alive else 'not running'})\n" + "\n".join(w[:300] for w in worst[-15:]))


def crash(sinks: InProcessRoles) -> None:
    """A sink dies mid-poll: its loop is cancelled at once (no drain), so the poll in flight is stored or not but
    never committed; the group gives its partitions to the other sink, which reads that poll again."""
    sink = sinks.stages["sink"][0]
    sink.DRAIN_TIMEOUT_S = 0
    sinks.stop()


@pytest.mark.slow
def test_two_of_every_role_survive_broker_sink_and_processor_failures(cluster: KafkaCluster, chdb_path: Path,
                                                                     tmp_path: Path) -> None:
    config = make_config(tmp_path, cluster, chdb_path)
    config.processors.tick_s, config.processors.grace_s = 0.2, 2.0
    config.processors.log_level = "INFO"  # faust's rebalances and recoveries in a failure's log tails
    config.processors.join_timeout_s = 30
    config.processors.recovery_stall_s = 20  # a worker whose recovery stalls exits; the waits below restart it
    config.processors.stuck_s = 30  # so does a worker that stops handling events or committing
    token = ensure_dev_token(config.tokens_path)
    ensure_admin_token(config.tokens_path, config.admin_token_path)  # for `runstream run delete`
    logs = tmp_path / "logs"
    with contextlib.ExitStack() as cleanup:
        cleanup.push(lambda kind, *_: kind is not None and report_brokers(cluster))  # on failure, after the roles' logs
        # The in-process sinks' reconnects to the killed brokers would fill a failure's log tail; the roles' logs remain.
        aiokafka_log = logging.getLogger("aiokafka")
        cleanup.callback(aiokafka_log.setLevel, aiokafka_log.level)
        aiokafka_log.setLevel(logging.CRITICAL)

        def process(role: str, name: str) -> RoleProcess:
            """A role in a process of its own, starting (they start side by side; see serving)."""
            cfg = copy.deepcopy(config)
            cfg.ingest.listen, cfg.ingest.metrics_port = f"127.0.0.1:{free_port()}", free_port()
            cfg.processors.metrics_port = free_port()
            p = RoleProcess(role, cfg, logs, name=name)
            p.start()
            cleanup.callback(lambda: print(f"--- {p.name}\n{p.log_tail(20)}"))
            cleanup.callback(p.stop)
            return p

        def serving(p: RoleProcess) -> RoleProcess:
            port = p.config.ingest.metrics_port if p.role == "ingest" else p.config.processors.metrics_port
            wait_http(f"http://127.0.0.1:{port}/metrics", 90, p)
            return p

        def second_sink() -> InProcessRoles:
            cfg = copy.deepcopy(config)
            cfg.sink.sql_listen = ""  # one SQL endpoint is enough
            s = InProcessRoles(cfg, ["sink"]).start()
            cleanup.callback(s.stop)  # idempotent: also after a crash
            return s

        sink_a = InProcessRoles(config, ["sink"]).start()
        cleanup.callback(sink_a.stop)
        stack = Stack(config, sink_a)
        sink_b = second_sink()
        ingests = [process("ingest", f"ingest-{i}") for i in (1, 2)]
        workers = [process("process", f"process-{i}") for i in (1, 2)]
        for p in [*ingests, *workers]:
            serving(p)
        addrs = [p.config.ingest.listen for p in ingests]
        jobs: list[Job] = []
        cleanup.callback(lambda: [j.stop() for j in jobs])  # first: the jobs finish while every role still runs

        def acked() -> int:
            return sum(j.acked for j in jobs)

        def answering(event: str, act: Callable[[], None]) -> None:
            before = acked()
            act()
            at = time.monotonic()
            wait_until(lambda: acked() > before + 1000, 10, f"ingest to acknowledge within 10 s of: {event}")
            print(f"{event}: acknowledging again after {time.monotonic() - at:.1f} s")

        wait_until(lambda: all(s.stages["sink"][0].consumer.assignment() for s in (sink_a, sink_b)), 60,
                   "both sinks to hold partitions")
        # The load starts on a settled group: both workers joined, their partitions' state recovered. A worker that
        # never gets there exits (processors.join_timeout_s) and is restarted, as `runstream up` restarts it.
        wait_until(lambda: all([ready_or_restarted(w) for w in workers]), 150, "both processor workers to be ready")
        jobs = [Job(addrs[i % 2], token, tmp_path / f"spool{i}") for i in range(4)]
        wait_until(lambda: acked() > 20_000, 60, "the jobs to be acknowledged")
        # A run of another project, deleted while the roles fail around it.
        t = GrpcTransport(addrs[0], token)
        t.send([metric_batch("doomed", 50, project="scale-gov")])
        assert stack.wait_points(50, where="project = 'scale-gov'") == 50

        victim = leader_of(config, 0)
        answering(f"broker {victim} (leading events-0) killed", cluster.node(victim).kill)
        # The cluster saw it go (the ISR shrank) before it comes back.
        wait_until(lambda: not fully_replicated(config), 60, f"broker {victim} to leave the ISR")
        answering(f"broker {victim} restarted", cluster.node(victim).start)
        wait_until(lambda: fully_replicated(config), 60, "the restarted broker to rejoin every ISR")

        wiped = victim % 3 + 1
        answering(f"broker {wiped} disk wiped", cluster.node(wiped).kill)
        answering(f"broker {wiped} replaced on an empty disk", lambda: cluster.replace(wiped))
        # The new node copies every partition back from the others.
        wait_until(lambda: fully_replicated(config), 90, "the replaced broker to hold every partition again")

        answering("sink crashed", lambda: crash(sink_b))
        stored = stack.count_points(f"project = '{PROJECT}'")
        wait_until(lambda: stack.count_points(f"project = '{PROJECT}'") > stored + 5000, 30,
                   "the other sink to store the crashed one's partitions")
        replaced: list[InProcessRoles] = []
        answering("sink replaced", lambda: replaced.append(second_sink()))
        sink_b = replaced[0]

        env = dict(os.environ, RUNSTREAM_URL=addrs[1], RUNSTREAM_DATA_DIR=str(config.data_path))
        res = subprocess.run([sys.executable, "-m", "runstream", "run", "delete", "doomed", "--project", "scale-gov"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr

        answering("processor worker killed", workers[0].kill)
        answering("processor worker restarted", workers[0].start)
        wait_until(lambda: ready_or_restarted(workers[0]), 150, "the restarted worker to be ready")
        for j in jobs:
            j.stop()
        assert all(j.finished for j in jobs), "a job's finish() was not acknowledged"
        sinks = [s.stages["sink"][0] for s in (sink_a, sink_b)]
        # Exactly once: every acknowledged point of every run stored once, the ledger one row per batch.
        logged = {j.run.id: j.acked for j in jobs}
        for run_id, n in logged.items():
            assert stack.wait_points(n, timeout=120, where=f"run_id = '{run_id}'") == n
        wait_sink_drained(config, timeout=120)
        assert {r: stack.count_points(f"run_id = '{r}'") for r in logged} == logged
        # (count() over FINAL equals the distinct batch ids by construction: compared with what was acknowledged.)
        ledger = stack.query(f"SELECT count() FROM {{db}}.batches FINAL WHERE project = '{PROJECT}'")[0]
        assert ledger[0] == sum(j.run.stats.acked_batches for j in jobs)
        total = sum(logged.values())
        # Every topic, runstream's and faust's (changelogs, assignor), read from the brokers: 3 replicas, min ISR 2.
        settings = asyncio.run(topic_settings(config))
        assert any("changelog" in t for t in settings) and config.kafka.events_topic in settings
        assert {t: s for t, s in settings.items() if s != (3, "2")} == {}
        # The deletion reached both sinks (the new one from the control topic) and storage.
        wait_until(lambda: all(("scale-gov", "doomed") in s.deleted_runs for s in sinks), 30, "both sinks to know")
        assert stack.count_points("project = 'scale-gov'") == 0
        assert stack.query("SELECT count() FROM {db}.governance_events FINAL WHERE action = 'run.delete'")[0][0] == 1
        # Rollups equal SQL over the raw points, and the fleet view counts every point, across the worker's kill.
        def workers_running() -> bool:
            """Whether both workers run; one that exited (processors.recovery_stall_s, stuck_s) is started again, as `runstream
            up` would."""
            for w in workers:
                if not w.alive():
                    print(f"{w.name} exited; restarted")
                    w.start()
                    return False
            return True

        try:
            wait_until(lambda: workers_running() and asyncio.run(group_lag(config, config.processors.app_id, ("events",))) == 0,
                       180, "both processor workers to consume everything in events")
        except AssertionError as exc:
            raise AssertionError(f"{asyncio.run(processor_trace(config, PROJECT, workers))}\n{exc}") from None  # CI shows the end
        wait_sink_drained(config, kinds=("rollups", "fleet"), timeout=120)

        def rollups_differ() -> str:
            """'' when the rollups equal SQL over the raw points, else the first differences."""
            diffs: list[str] = []
            for res in (10, 60):
                want = stack.query(ROLLUP_SQL.replace("'roll'", f"'{PROJECT}'").format(res=res))
                got = stack.query(ROLLUP_ROWS.replace("'roll'", f"'{PROJECT}'").format(res=res))
                keyed_want, keyed_got = {w[:3]: w for w in want}, {g[:3]: g for g in got}
                for k in sorted(keyed_want.keys() | keyed_got.keys(), key=str):
                    w, g = keyed_want.get(k), keyed_got.get(k)
                    if w is None or g is None or g[3:7] + g[8:] != w[3:7] + w[8:] or \
                            abs(g[7] - w[7]) > 1e-6 * max(1.0, abs(w[7])):
                        diffs.append(f"{res}s {k[0][-6:]} {k[1]} {k[2]}: stored {g and g[3:]} want {w and w[3:]}")
            return f"{len(diffs)} windows differ, e.g. " + "; ".join(diffs[:4]) if diffs else ""

        def fared() -> list[dict[str, float]]:
            return [{k: v for k, v in scrape(w.config.processors.metrics_port, timeout=5).items()
                     if k.startswith(("runstream_processor_ready", "runstream_processor_late"))} for w in workers]
        # A failure's summary line says what differs (read again at the timeout) and how each worker fared.
        fleet_points = f"SELECT sum(points) FROM {{db}}.fleet WHERE project = '{PROJECT}'"
        try:
            wait_until(lambda: workers_running() and not rollups_differ(), 120,
                       lambda: f"rollups equal to SQL over the raw points ({rollups_differ()}; workers: {fared()})")
            print(f"workers at the end: {fared()}")
            wait_until(lambda: workers_running() and stack.query(fleet_points)[0][0] == total, 60,
                       lambda: f"the fleet view to count {total} points (it counts {stack.query(fleet_points)[0][0]}; "
                               f"workers: {fared()})")
        except AssertionError as exc:
            raise AssertionError(f"{asyncio.run(processor_trace(config, PROJECT, workers))}\n{exc}") from None  # CI shows the end
        # One gapless, verifiable audit chain for the project, whichever sink numbered which record.
        chain = views.rows(stack.sink.client, views.audit_chain(config.clickhouse.database, PROJECT))
        assert len(chain) >= 2 * len(jobs)
        assert [r[0] for r in chain] == list(range(1, len(chain) + 1)) and not audit.verify(chain)
        print(f"{total} points in {ledger[0]} batches stored once; {len(chain)} audit records chained")
