"""Dashboards as code and the production stack description.

Proves: the committed dashboard JSON is what the code generates; every dashboard is structurally valid
(unique panel ids, provisioned datasource uids, defined variables); every ClickHouse panel query, with
the plugin's macros and the dashboard variables expanded, runs on the real engine against a seeded fleet
and returns the columns its panel type needs, with plausible values, for a short range (raw points)
and a long one (rollups); compose.yaml is valid against the Compose Specification and everything it
mounts or builds exists. PromQL is checked against live scrapes in test_cli.py.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from runstream.dashboards import build
from runstream.processors import anomaly
from runstream.server.kafka import ROLE_PRINCIPALS
from runstream.storage import columns
from runstream.storage.governance import GovernanceApplier
from runstream.storage.store import migrate, open_embedded
from runstream.storage.writer import Writer
from runstream.v1.ingest_pb2 import Alert, Batch, FleetWindow, FleetWindows, Rollups, RollupWindow, RunStatus
from runstream.wire.config import RunstreamConfig
from tests.grafana_macros import Context, expand, interpolate

ROOT = Path(__file__).resolve().parents[1]
PROVISIONING = ROOT / "dashboards" / "provisioning"


def test_committed_json_matches_the_code() -> None:
    for name, d in build.generate().items():
        path = build.OUT / f"{name}.json"
        assert path.exists(), f"{path} is missing: run `python -m runstream.dashboards.build` and commit"
        assert path.read_text() == build.render(d), f"{path} is stale: run `python -m runstream.dashboards.build` and commit"
    assert {p.stem for p in build.OUT.glob("*.json")} == set(build.DASHBOARDS)


def datasource_uids() -> set[str]:
    data = yaml.safe_load((PROVISIONING / "datasources" / "runstream.yaml").read_text())
    return {d["uid"] for d in data["datasources"]}


def all_targets(d: dict) -> list[tuple[dict, dict]]:
    out = [(p, t) for p in d["panels"] for t in p.get("targets", [])]
    out += [({"type": "annotation", "title": a["name"]}, a["target"]) for a in d.get("annotations", {}).get("list", [])
            if "target" in a and "rawSql" in a.get("target", {})]
    return out


@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_dashboard_structure(name: str) -> None:
    d = build.generate()[name]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    uids = datasource_uids()
    defined = {v["name"] for v in d.get("templating", {}).get("list", [])}
    for panel, target in all_targets(d):
        ds = target.get("datasource") or panel.get("datasource")
        assert ds and ds["uid"] in uids, f"{panel.get('title')}: datasource {ds} is not provisioned"
        text = target.get("rawSql") or target.get("expr", "")
        used = {m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(?!__)(\w+)", text)}
        assert used <= defined, f"{panel.get('title')}: undefined variables {used - defined}"
    assert d["uid"].startswith("runstream-")


def seed(client, db: str, now_ms: int) -> dict[str, list[str]]:
    """A small fleet through the sink's own insert path: runs, params, tags, points, rollups, fleet, alerts."""
    writer = Writer(client, db, GovernanceApplier(client, db))
    rng = np.random.default_rng(1)
    runs = [f"seed-{i}" for i in range(4)]
    items = []
    tables = columns.Tables()
    for k, run in enumerate(runs):
        project = "vision" if k < 3 else "nlp"
        start = Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run, seq=1, created_ms=now_ms - 7_200_000)
        start.run_start.name, start.run_start.start_ms = run, now_ms - 7_200_000
        start.run_start.config["lr"] = json.dumps(0.001 * (k + 1))
        start.run_start.tags.append("seeded")
        items.append((start, 0, 0))
        steps = np.arange(7200)
        ts = now_ms - 7_200_000 + steps * 1000
        b = Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run, seq=2, created_ms=int(ts[0]))
        b.metrics.names.extend(["loss", "acc"])
        b.metrics.name_index.extend(np.tile([0, 1], 7200).tolist())
        b.metrics.steps.extend(np.repeat(steps, 2).tolist())
        b.metrics.timestamps_ms.extend(np.repeat(ts, 2).tolist())
        b.metrics.values.extend(np.abs(rng.standard_normal(14400)).tolist())
        items.append((b, 0, 1))
        if k == 3:
            fin = Batch(batch_id=uuid.uuid4().hex, project=project, run_id=run, seq=3, created_ms=now_ms - 60_000)
            fin.run_finish.status = RunStatus.RUN_STATUS_FAILED
            fin.run_finish.end_ms = now_ms - 60_000
            items.append((fin, 0, 2))
        for metric in ("loss", "acc"):
            for res in (10, 60):
                ws = [RollupWindow(project=project, run_id=run, metric=metric, resolution_s=res,
                                   window_start_ms=now_ms - 7_200_000 + w * res * 1000, count=res, min=0.1, max=2.0,
                                   sum=res * 0.8, first=1.0, first_step=w * res, last=0.5, last_step=w * res + res - 1,
                                   version=1) for w in range(7200 // res)]
                columns.add_derived(tables, "rollups", Rollups(windows=ws).SerializeToString())
        aid = anomaly.alert_id(run, "loss", "spike", 100)
        columns.add_derived(tables, "alerts", Alert(alert_id=aid, project=project, run_id=run, metric="loss", kind="spike",
                                                    severity="warning", step=100, value=9.0, expected_low=0, expected_high=2,
                                                    event_ms=now_ms - 600_000, detected_ms=now_ms - 599_000, status="open",
                                                    message="loss spiked").SerializeToString())
    fw = [FleetWindow(project=p, window_start_ms=now_ms - 3_600_000 + w * 10_000, partition=0, active_runs=3, points=600,
                      runs_started=1 if w == 0 else 0, version=1) for p in ("vision", "nlp") for w in range(360)]
    columns.add_derived(tables, "fleet", FleetWindows(windows=fw).SerializeToString())
    columns.build(items, tables)
    writer.write(tables)
    return {"project": ["vision", "nlp"], "run": runs, "metric": ["loss", "acc"]}


@pytest.fixture(scope="module")
def seeded(chdb_path: Path):
    client = open_embedded(chdb_path)
    client.command("DROP DATABASE IF EXISTS runstream SYNC")
    migrate(client, "runstream")
    now_ms = int(time.time() * 1000)
    values = seed(client, "runstream", now_ms)
    yield client, values, now_ms
    client.command("DROP DATABASE IF EXISTS runstream SYNC")


RANGES = {"short (raw points)": (900, 5), "long (rollups)": (6 * 3600, 120)}


@pytest.mark.parametrize("project", ["$__all", "vision"])  # All, and one project picked in the variable
@pytest.mark.parametrize("range_name", sorted(RANGES))
@pytest.mark.parametrize("name", sorted(build.DASHBOARDS))
def test_every_clickhouse_query_runs_with_the_columns_its_panel_needs(name: str, range_name: str, project: str, seeded) -> None:
    client, values, now_ms = seeded
    span_s, interval_s = RANGES[range_name]
    ctx = Context(from_s=now_ms // 1000 - span_s, to_s=now_ms // 1000, interval_s=interval_s,
                  variables={"project": [project], "run": values["run"][:2], "metric": ["loss"]},
                  all_values=values)
    # The most any panel value can be: every raw point and every point the fleet windows count, together.
    ceiling = client.query("SELECT (SELECT count() FROM runstream.metric_points) + "
                           "(SELECT sum(points) FROM runstream.fleet)").result_rows[0][0]
    checked = 0
    for panel, target in all_targets(build.generate()[name]):
        if "rawSql" not in target:
            continue
        sql = expand(interpolate(target["rawSql"], ctx), ctx)
        res = client.query(sql)
        cols, rows = list(res.column_names), res.result_rows
        where = f"{name} / {panel.get('title')} ({range_name})"
        assert rows, f"{where}: no rows on the seeded fleet\n{sql}"
        kind = panel["type"]
        if kind == "timeseries":
            assert cols[0] == "time" and isinstance(rows[0][0], datetime), f"{where}: first column must be the time"
            numeric = [i for i, v in enumerate(rows[0]) if isinstance(v, (int, float)) and not isinstance(v, bool)]
            assert numeric, f"{where}: no numeric column"
            # Seeded values and counts are never negative and no count exceeds every point seeded, and a panel of
            # zeros would mean it read nothing.
            bad = [r[i] for r in rows for i in numeric if not (math.isfinite(r[i]) and 0 <= r[i] <= ceiling)]
            assert not bad, f"{where}: values outside 0..{ceiling}: {bad[:5]}"
            assert any(r[i] > 0 for r in rows for i in numeric), f"{where}: every value is zero"
            assert [r[0] for r in rows] == sorted(r[0] for r in rows), f"{where}: time must be ascending"
        elif kind == "stat":
            # The seeded fleet has a failed and running runs in all projects together, not in each one.
            assert len(rows) == 1 and isinstance(rows[0][0], int) and rows[0][0] >= (project == "$__all"), f"{where}: {rows}"
        elif kind == "trend":
            assert cols[0] == "step" and all(isinstance(r[0], int) for r in rows), f"{where}: x must be the step"
            assert len(rows) <= 2 * 1100, f"{where}: not downsampled ({len(rows)} rows)"
        elif kind == "annotation":
            assert cols[:2] == ["time", "text"], f"{where}: annotations need time and text"
        else:
            assert kind == "table" and len(cols) >= 2
        checked += 1
    if name != "pipeline-health":  # that one is Prometheus only
        assert checked, f"{name} has no ClickHouse queries"


def test_long_ranges_read_rollups_short_ranges_raw_points(seeded) -> None:
    client, values, now_ms = seeded
    panel = next(p for p in build.generate()["run-explorer"]["panels"] if p["title"] == "${metric} by time")
    assert "rollups" in panel["description"] and "Raw points" in panel["description"]
    sql = panel["targets"][0]["rawSql"]
    for (span_s, interval_s), expected in (((900, 5), "raw"), ((6 * 3600, 120), "rollup")):
        ctx = Context(from_s=now_ms // 1000 - span_s, to_s=now_ms // 1000, interval_s=interval_s,
                      variables={"project": ["$__all"], "run": values["run"][:1], "metric": ["loss"]}, all_values=values)
        rows = client.query(expand(interpolate(sql, ctx), ctx)).result_rows
        # Seeded rollups average exactly 0.8; raw points are random.
        from_rollups = all(abs(r[2] - 0.8) < 1e-9 for r in rows)
        assert from_rollups == (expected == "rollup"), (span_s, rows[:3])


def test_compose_is_valid_and_complete() -> None:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    # The Compose Specification's schema (compose-spec/compose-spec, Apache-2.0), kept in testdata.
    # The Compose Specification's schema is draft-07 (its $schema URL lacks the '#' jsonschema looks for).
    jsonschema.Draft7Validator(json.loads((ROOT / "tests" / "testdata" / "compose-spec.json").read_text())).validate(doc)
    services = doc["services"]
    assert {"kafka", "clickhouse", "grafana", "prometheus", "ingest", "process", "sink"} <= set(services)
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: needs an image or a build context"
        if svc.get("build"):
            assert (ROOT / svc["build"] / "Dockerfile").exists() if isinstance(svc["build"], str) else True
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name}: mounts {src}, which is not in the repo"
    assert services["ingest"]["deploy"]["replicas"] >= 2
    # Every runstream service's environment must load as a valid config (e.g. ingest beyond loopback needs TLS),
    # as Compose interpolates it by default and with the cluster profile's env file.
    cluster_env = dict(line.split("=", 1) for line in (ROOT / "deploy" / "clickhouse-cluster" / "cluster.env")
                       .read_text().splitlines() if line and not line.startswith("#"))
    for shell in ({}, cluster_env):
        for svc in services.values():
            if svc.get("image") == "runstream:local" and "tls" not in svc.get("command", []):
                env = {k: compose_interpolate(str(v), shell) for k, v in svc["environment"].items()}
                c = RunstreamConfig.load(None, env={k: v for k, v in env.items() if k != "RUNSTREAM_INGEST_TOKENS_FILE"})
                assert c.clickhouse.cluster == shell.get("CLICKHOUSE_CLUSTER", "")
                assert f"@{shell.get('CLICKHOUSE_HOST', 'clickhouse')}:8123" in c.clickhouse.url
    # The cluster profile: Keeper and 2 shards x 2 replicas, each node its own shard/replica macros and volume,
    # all of them in the remote_servers cluster the roles name.
    assert cluster_env["COMPOSE_PROFILES"] == "cluster"
    nodes = {n: s for n, s in services.items() if s.get("profiles") == ["cluster"] and n.startswith("ch-")}
    assert services["clickhouse-keeper"]["profiles"] == ["cluster"] and len(nodes) == 4
    assert cluster_env["CLICKHOUSE_HOST"] in nodes
    assert len({(s["environment"]["CH_SHARD"], s["environment"]["CH_REPLICA"]) for s in nodes.values()}) == 4
    assert all(s["environment"]["CH_REPLICA"] == n for n, s in nodes.items())
    assert len({s["volumes"][0] for s in nodes.values()}) == 4
    assert all(any("clickhouse-cluster/config.xml" in v for v in s["volumes"]) for s in nodes.values())
    xml = (ROOT / "deploy" / "clickhouse-cluster" / "config.xml").read_text()
    assert f"<{cluster_env['CLICKHOUSE_CLUSTER']}>" in xml
    shards = re.findall(r"<shard>(.*?)</shard>", xml, re.S)
    assert [sorted(re.findall(r"<host>([\w-]+)</host>", sh)) for sh in shards] == [
        sorted(n for n, s in nodes.items() if s["environment"]["CH_SHARD"] == str(i + 1)) for i in range(2)]
    assert services["sink"]["depends_on"]["ch-s1r1"] == {"condition": "service_healthy", "required": False}
    ingest_env = services["ingest"]["environment"]
    assert ingest_env["RUNSTREAM_INGEST_LISTEN"].startswith("0.0.0.0") and ingest_env["RUNSTREAM_INGEST_TLS_CERT"]
    assert services["ingest"]["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
    assert services["kafka"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    # Kafka is no open door: SASL on every listener, TLS beyond the container, the authorizer on, and each role
    # signs in as its own principal (the names the ACLs are granted to) with its own secret.
    kafka_env = services["kafka"]["environment"]
    assert "PLAINTEXT:" not in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace("SASL_PLAINTEXT", "")
    assert "BROKER:SASL_SSL" in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka_env["KAFKA_LISTENERS"].split(",")[1].startswith("CONTROLLER://127.0.0.1:")
    assert kafka_env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka_env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    for role in ROLE_PRINCIPALS:
        env = services[role]["environment"]
        assert env["RUNSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["RUNSTREAM_KAFKA_USERNAME"] == role
        assert services[role]["secrets"] == [f"kafka_{role}"] and f"kafka_{role}" in doc["secrets"]
        assert env["RUNSTREAM_KAFKA_PASSWORD_FILE"] == f"/run/secrets/kafka_{role}"
    assert set(re.findall(r"for role in ([\w ]+);", (ROOT / "deploy" / "kafka-users.sh").read_text())[0].split()) == set(ROLE_PRINCIPALS)
    assert services["sink"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert {j["job_name"] for j in prom["scrape_configs"]} == {"ingest", "process", "sink", "mlflow"}
    # The MLflow API: its own service, TLS beyond loopback, signed in to Kafka as ingest (it publishes the same batches).
    mlflow_env = services["mlflow"]["environment"]
    assert services["mlflow"]["command"] == ["mlflow"] and mlflow_env["RUNSTREAM_MLFLOW_TLS_CERT"]
    assert mlflow_env["RUNSTREAM_KAFKA_USERNAME"] == "ingest" and services["mlflow"]["secrets"] == ["kafka_ingest"]
    assert "runstream_reader:" in mlflow_env["RUNSTREAM_MLFLOW_SQL_URL"]
    # /metrics listens beyond loopback in the containers: HTTPS with client certificates, and Prometheus has one.
    common = services["sink"]["environment"]
    assert common["RUNSTREAM_METRICS_HOST"] == "0.0.0.0" and common["RUNSTREAM_METRICS_TLS_CLIENT_CA"]
    assert all(j["scheme"] == "https" and j["tls_config"]["cert_file"] for j in prom["scrape_configs"])
    assert "prometheus" in services["certs"]["command"][services["certs"]["command"].index("--client") + 1]
    for copied in re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), re.M):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which is missing"


def compose_interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} and ${VAR:-default} (nested: innermost first)."""
    pattern = re.compile(r"\$\{(\w+)(?::-([^${}]*))?\}")
    while (new := pattern.sub(lambda m: env.get(m[1]) or m[2] or "", value)) != value:
        value = new
    return value


def promql_metrics() -> set[str]:
    names = set()
    for d in build.generate().values():
        for _, t in all_targets(d):
            if "expr" in t:
                names |= set(re.findall(r"\b(runstream_[a-z_]+|process_[a-z_]+)\b", t["expr"]))
    return names
