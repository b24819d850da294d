-- Reads that dashboards and `runstream runs` make on every refresh, made cheap.
-- metric_latest: per (project, run, metric) the point with the highest step, kept by a materialized view as
-- points are stored (argMax over a replayed batch gives the same answer, so duplicates do not matter);
-- rebuilt from metric_points here, and by replaying Kafka like everything else.
-- ts_minmax: "the last N minutes" panels skip the granules of every run outside the range (within a run,
-- time grows with the step, which orders the table).

CREATE TABLE IF NOT EXISTS {db}.metric_latest
(
    project  LowCardinality(String),
    run_id   String,
    metric   LowCardinality(String),
    last_step   SimpleAggregateFunction(max, Int64),
    last_value  AggregateFunction(argMax, Float64, Int64),
    last_ts     AggregateFunction(argMax, DateTime64(3), Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id, metric);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.metric_latest_mv TO {db}.metric_latest AS
SELECT project, run_id, metric, max(step) AS last_step, argMaxState(value, step) AS last_value,
       argMaxState(ts, step) AS last_ts
FROM {db}.metric_points GROUP BY project, run_id, metric;

INSERT INTO {db}.metric_latest
SELECT project, run_id, metric, max(step), argMaxState(value, step), argMaxState(ts, step)
FROM {db}.metric_points GROUP BY project, run_id, metric;

CREATE VIEW IF NOT EXISTS {db}.latest AS
SELECT project, run_id, metric, max(last_step) AS step, argMaxMerge(last_value) AS value, argMaxMerge(last_ts) AS ts
FROM {db}.metric_latest GROUP BY project, run_id, metric;

ALTER TABLE {db}.metric_points ADD INDEX IF NOT EXISTS ts_minmax ts TYPE minmax GRANULARITY 1;

ALTER TABLE {db}.metric_points MATERIALIZE INDEX ts_minmax
