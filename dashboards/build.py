"""The dashboards, built with grafana-foundation-sdk and written to dashboards/json/*.json.

    python -m runstream.dashboards.build          # regenerate the committed JSON (tests fail when it is stale)

ClickHouse panels use the official plugin (grafana-clickhouse-datasource) and its macros
($__timeFilter, $__timeInterval, $__interval_s, ...); health panels use Prometheus and the metrics
every role exports. Long ranges read the rollup tables, short ones the raw points; each such panel
says which in its description.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries, trend
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

OUT = Path(__file__).with_name("json")
CLICKHOUSE = model.DataSourceRef(type_val="grafana-clickhouse-datasource", uid="runstream-clickhouse")
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="runstream-prometheus")
DB = "runstream"
RUN_EXPLORER_UID = "runstream-run-explorer"

# Raw points for ranges up to this bucket size, rollups (1 min windows) beyond it.
RAW_MAX_INTERVAL_S = 60


class ClickHouseQuery(cogvariants.Dataquery):
    """A query of the ClickHouse plugin's SQL editor (format 0: time series, 1: table)."""

    def __init__(self, ref_id: str, sql: str, fmt: int) -> None:
        self.ref_id, self.sql, self.fmt = ref_id, sql, fmt

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "editorType": "sql", "rawSql": self.sql, "format": self.fmt,
                "queryType": "timeseries" if self.fmt == 0 else "table",
                "datasource": {"type": CLICKHOUSE.type_val, "uid": CLICKHOUSE.uid}}


class CH(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self, sql: str, *, fmt: int = 0, ref_id: str = "A") -> None:
        self._q = ClickHouseQuery(ref_id, " ".join(sql.split()), fmt)

    def build(self) -> ClickHouseQuery:
        return self._q


def prom(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range()


def ch_variable(name: str, label: str, sql: str, *, multi: bool = False) -> dash.QueryVariable:
    v = (dash.QueryVariable(name).label(label).datasource(CLICKHOUSE).query(" ".join(sql.split()))
         .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
    if multi:
        v = v.multi(True).include_all(True)
    return v


PROJECT_VAR = ch_variable("project", "Project", f"SELECT DISTINCT project FROM {DB}.runs ORDER BY project", multi=True)
PROJECT_FILTER = "$__conditionalAll(project IN (${project:singlequote}), $project)"


def fleet_overview() -> dash.Dashboard:
    d = (dash.Dashboard("runstream / Fleet overview").uid("runstream-fleet").tags(["runstream"])
         .time("now-1h", "now").refresh("10s").timezone("browser").with_variable(PROJECT_VAR))
    d.with_row(dash.Row("Training fleet"))
    d.with_panel(stat.Panel().title("Active runs").span(4).height(4).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT count() AS active_runs FROM {DB}.runs WHERE status = 'running' AND {PROJECT_FILTER}", fmt=1)))
    d.with_panel(stat.Panel().title("Runs failed (range)").span(4).height(4).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT count() AS failed FROM {DB}.runs WHERE status = 'failed' AND $__timeFilter(ended) AND {PROJECT_FILTER}",
        fmt=1)))
    d.with_panel(stat.Panel().title("Open alerts").span(4).height(4).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT count() AS open_alerts FROM {DB}.alerts WHERE status = 'open' AND {PROJECT_FILTER}", fmt=1)))
    d.with_panel(timeseries.Panel().title("Points per second by project").unit("short").span(12).height(8)
                 .description("From the fleet view (10 s windows computed by the stream processors).")
                 .datasource(CLICKHOUSE).with_target(CH(
                     f"SELECT $__timeInterval(window_start) AS time, project, sum(points) / $__interval_s AS points_per_s "
                     f"FROM {DB}.fleet WHERE $__timeFilter(window_start) AND {PROJECT_FILTER} "
                     "GROUP BY time, project ORDER BY time")))
    d.with_panel(table.Panel().title("Noisiest runs (alerts in range)").span(12).height(8).datasource(CLICKHOUSE)
                 .with_target(CH(
                     f"SELECT run_id, project, count() AS alerts, countIf(status = 'open') AS open, "
                     f"groupUniqArray(kind) AS kinds FROM {DB}.alerts WHERE $__timeFilter(detected_at) AND {PROJECT_FILTER} "
                     "GROUP BY project, run_id ORDER BY alerts DESC LIMIT 20", fmt=1)))
    d.with_row(dash.Row("Pipeline"))
    d.with_panel(timeseries.Panel().title("Ingest errors by gRPC code").unit("reqps").span(8).height(8)
                 .datasource(PROMETHEUS).with_target(prom(
                     'sum by (code) (rate(runstream_ingest_requests_total{code!="OK"}[$__rate_interval]))', "{{code}}")))
    d.with_panel(timeseries.Panel().title("Kafka consumer lag (sink)").unit("short").span(8).height(8)
                 .datasource(PROMETHEUS).with_target(prom(
                     "sum by (topic) (runstream_sink_consumer_lag_records)", "{{topic}}")))
    d.with_panel(timeseries.Panel().title("Sink insert latency").unit("s").span(8).height(8)
                 .datasource(PROMETHEUS).with_target(prom(
                     "histogram_quantile(0.99, sum by (le) (rate(runstream_sink_insert_seconds_bucket[$__rate_interval])))",
                     "p99")).with_target(prom(
                     "histogram_quantile(0.5, sum by (le) (rate(runstream_sink_insert_seconds_bucket[$__rate_interval])))",
                     "p50", "B")))
    return d


def run_explorer() -> dash.Dashboard:
    run_var = ch_variable("run", "Runs", f"SELECT run_id FROM {DB}.runs WHERE {PROJECT_FILTER} ORDER BY started DESC LIMIT 500",
                          multi=True)
    metric_var = ch_variable("metric", "Metric", f"SELECT DISTINCT metric FROM {DB}.rollups WHERE "
                                                 "run_id IN (${run:singlequote}) ORDER BY metric")
    d = (dash.Dashboard("runstream / Run explorer").uid(RUN_EXPLORER_UID).tags(["runstream"]).time("now-6h", "now")
         .timezone("browser").with_variable(PROJECT_VAR).with_variable(run_var).with_variable(metric_var))
    d.with_panel(trend.Panel().title("${metric} by step").span(12).height(9)
                 .description("Raw points, averaged into at most ~1000 step buckets per run.")
                 .datasource(CLICKHOUSE).with_target(CH(
                     f"SELECT intDiv(step, b) * b AS step, run_id, avg(value) AS value FROM {DB}.metrics, "
                     f"(SELECT greatest(1, intDiv(max(step), 1000)) AS b FROM {DB}.latest "
                     "WHERE run_id IN (${run:singlequote}) AND metric = '${metric}') AS s "
                     "WHERE run_id IN (${run:singlequote}) AND metric = '${metric}' "
                     "GROUP BY run_id, step ORDER BY run_id, step", fmt=1)))
    d.with_panel(timeseries.Panel().title("${metric} by time").span(12).height(9)
                 .description(f"Raw points while the panel's bucket is under {RAW_MAX_INTERVAL_S} s (short ranges); "
                              "1-minute rollups computed by the stream processors beyond that (long ranges).")
                 .datasource(CLICKHOUSE).with_target(CH(
                     f"SELECT time, run_id, value FROM (SELECT $__timeInterval(ts) AS time, run_id, avg(value) AS value FROM {DB}.metrics "
                     f"WHERE $__interval_s < {RAW_MAX_INTERVAL_S} AND $__timeFilter(ts) "
                     "AND run_id IN (${run:singlequote}) AND metric = '${metric}' GROUP BY time, run_id "
                     "UNION ALL "
                     f"SELECT $__timeInterval(window_start) AS time, run_id, sum(sum) / sum(count - nonfinite) AS value "
                     f"FROM {DB}.rollups WHERE $__interval_s >= {RAW_MAX_INTERVAL_S} AND resolution_s = 60 "
                     "AND $__timeFilter(window_start) AND run_id IN (${run:singlequote}) AND metric = '${metric}' "
                     "GROUP BY time, run_id) ORDER BY time")))
    d.with_panel(table.Panel().title("Params and tags, side by side").span(12).height(9).datasource(CLICKHOUSE)
                 .with_target(CH(
                     f"SELECT * FROM (SELECT 'param' AS kind, key, groupArray((run_id, value)) AS by_run FROM {DB}.params FINAL "
                     "WHERE run_id IN (${run:singlequote}) GROUP BY key "
                     f"UNION ALL SELECT 'tag' AS kind, key, groupArray((run_id, value)) AS by_run FROM {DB}.tags FINAL "
                     "WHERE run_id IN (${run:singlequote}) GROUP BY key) ORDER BY kind, key", fmt=1)))
    d.with_panel(table.Panel().title("Runs").span(12).height(7).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT run_id, name, status, started, ended, git_commit, git_branch, git_dirty, hostname FROM {DB}.runs "
        "WHERE run_id IN (${run:singlequote}) ORDER BY started DESC", fmt=1)))
    return d


def alerts() -> dash.Dashboard:
    d = (dash.Dashboard("runstream / Alerts").uid("runstream-alerts").tags(["runstream"]).time("now-24h", "now")
         .refresh("30s").timezone("browser").with_variable(PROJECT_VAR))
    d.with_panel(table.Panel().title("Open alerts").span(24).height(9).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT detected_at, project, run_id, metric, kind, severity, step, value, message FROM {DB}.alerts "
        f"WHERE status = 'open' AND {PROJECT_FILTER} ORDER BY detected_at DESC LIMIT 500", fmt=1)))
    d.with_panel(table.Panel().title("Recent alerts").span(24).height(10).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT detected_at, resolved_at, status, project, run_id, metric, kind, severity, step, message FROM {DB}.alerts "
        f"WHERE $__timeFilter(detected_at) AND {PROJECT_FILTER} ORDER BY detected_at DESC LIMIT 1000", fmt=1)))
    d.with_panel(timeseries.Panel().title("Alerts by kind").span(24).height(7).datasource(CLICKHOUSE).with_target(CH(
        f"SELECT $__timeInterval(detected_at) AS time, kind, count() AS alerts FROM {DB}.alerts "
        f"WHERE $__timeFilter(detected_at) AND {PROJECT_FILTER} GROUP BY time, kind ORDER BY time")))
    return d


def pipeline_health() -> dash.Dashboard:
    d = (dash.Dashboard("runstream / Pipeline health").uid("runstream-pipeline").tags(["runstream"])
         .time("now-1h", "now").refresh("10s").timezone("browser"))
    d.with_panel(timeseries.Panel().title("Throughput by role (points/s)").unit("short").span(12).height(8)
                 .datasource(PROMETHEUS)
                 .with_target(prom("sum(rate(runstream_ingest_points_total[$__rate_interval]))", "ingest"))
                 .with_target(prom("sum(rate(runstream_processor_points_total[$__rate_interval]))", "process", "B"))
                 .with_target(prom('sum(rate(runstream_sink_rows_total{table="metric_points"}[$__rate_interval]))', "sink", "C")))
    d.with_panel(timeseries.Panel().title("Ingest publish latency (request to Kafka ack)").unit("s").span(12).height(8)
                 .datasource(PROMETHEUS).with_target(prom(
                     "histogram_quantile(0.99, sum by (le) (rate(runstream_ingest_publish_seconds_bucket[$__rate_interval])))",
                     "p99")))
    d.with_panel(timeseries.Panel().title("Ingest saturation and flow control").unit("s").span(12).height(8)
                 .datasource(PROMETHEUS)
                 .with_target(prom("max(runstream_ingest_loop_lag_seconds)", "event-loop lag"))
                 .with_target(prom("max(runstream_ingest_busy_flush_hint_ms) / 1000", "flush interval asked of clients", "B")))
    d.with_panel(timeseries.Panel().title("Queue depths").unit("short").span(12).height(8).datasource(PROMETHEUS)
                 .with_target(prom("sum(runstream_ingest_inflight_batches)", "ingest in flight (batches)"))
                 .with_target(prom("sum(runstream_sink_consumer_lag_records)", "sink lag (records)", "B")))
    d.with_panel(timeseries.Panel().title("Freshness (s behind the clients)").unit("s").span(12).height(8)
                 .datasource(PROMETHEUS)
                 .with_target(prom("max(runstream_sink_event_lag_seconds)", "sink"))
                 .with_target(prom("max(runstream_processor_lag_seconds)", "process", "B")))
    d.with_panel(timeseries.Panel().title("Sink and processor errors").unit("short").span(12).height(8)
                 .datasource(PROMETHEUS)
                 .with_target(prom("sum by (stage) (rate(runstream_sink_errors_total[$__rate_interval]))", "sink {{stage}}"))
                 .with_target(prom('sum by (view) (rate(runstream_processor_late_points_total[$__rate_interval]))',
                                   "late {{view}}", "B")))
    d.with_panel(stat.Panel().title("Restarts (range)").span(12).height(8).datasource(PROMETHEUS).with_target(prom(
        "sum by (job) (changes(process_start_time_seconds[$__range]))", "{{job}}")))
    return d


DASHBOARDS = {"fleet-overview": fleet_overview, "run-explorer": run_explorer, "alerts": alerts,
              "pipeline-health": pipeline_health}


def _post(name: str, d: dict[str, Any]) -> dict[str, Any]:
    """What the SDK does not model for a plugin datasource: annotations from ClickHouse, and data links."""
    for i, p in enumerate(d.get("panels", []), start=1):
        p["id"] = i
    if name == "run-explorer":
        d.setdefault("annotations", {}).setdefault("list", []).append({
            "name": "Alerts", "enable": True, "iconColor": "red", "datasource": {"type": CLICKHOUSE.type_val, "uid": CLICKHOUSE.uid},
            "target": CH(f"SELECT detected_at AS time, concat(kind, ': ', message) AS text, kind AS tags FROM {DB}.alerts "
                         "WHERE run_id IN (${run:singlequote}) AND $__timeFilter(detected_at)", fmt=1).build().to_json()})
    if name == "alerts":
        for p in d["panels"]:
            if p.get("type") == "table":
                p.setdefault("fieldConfig", {}).setdefault("defaults", {})["links"] = [{
                    "title": "Open in the run explorer",
                    "url": f"/d/{RUN_EXPLORER_UID}/run-explorer?var-run=${{__data.fields.run_id}}&var-metric=${{__data.fields.metric}}"
                           "&from=${__from}&to=${__to}"}]
    return d


def generate() -> dict[str, dict[str, Any]]:
    """Every dashboard as the JSON Grafana stores."""
    return {name: _post(name, json.loads(json.dumps(fn().build(), cls=JSONEncoder))) for name, fn in DASHBOARDS.items()}


def render(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, d in generate().items():
        (OUT / f"{name}.json").write_text(render(d))
        print(f"wrote {OUT / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
