-- Tables fed by the stream processors (through Kafka and the sink).
-- Windows and alerts may be emitted more than once (updates, replays):
-- ReplacingMergeTree keeps the highest version per key; the views read FINAL.

CREATE TABLE IF NOT EXISTS {db}.rollup_windows
(
    project       LowCardinality(String),
    run_id        String,
    metric        LowCardinality(String),
    resolution_s  UInt32,
    window_start  DateTime64(3),
    count         UInt64,
    nonfinite     UInt64,
    min           Float64,
    max           Float64,
    sum           Float64,
    first         Float64,
    first_step    Int64,
    last          Float64,
    last_step     Int64,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (project, run_id, metric, resolution_s, window_start);

-- Per (run, metric): one row per 10 s window (resolution_s = 10) and per minute (60).
CREATE VIEW IF NOT EXISTS {db}.rollups AS
SELECT project, run_id, metric, resolution_s, window_start, count, nonfinite, min, max, sum,
       if(count > nonfinite, sum / (count - nonfinite), nan) AS avg, first, first_step, last, last_step
FROM {db}.rollup_windows FINAL;

CREATE TABLE IF NOT EXISTS {db}.fleet_windows
(
    project        LowCardinality(String),
    window_start   DateTime64(3),
    partition      UInt32,
    active_runs    UInt32,
    points         UInt64,
    runs_started   UInt32,
    runs_finished  UInt32,
    runs_failed    UInt32,
    version        UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, window_start, partition);

-- Per project and 10 s window: the partitions' shares summed (runs are partition-disjoint).
CREATE VIEW IF NOT EXISTS {db}.fleet AS
SELECT project, window_start, sum(active_runs) AS active_runs, sum(points) AS points,
       sum(runs_started) AS runs_started, sum(runs_finished) AS runs_finished, sum(runs_failed) AS runs_failed
FROM {db}.fleet_windows FINAL
GROUP BY project, window_start;

-- Every alert state change (open, resolved), once per (alert, status).
CREATE TABLE IF NOT EXISTS {db}.alert_events
(
    project        LowCardinality(String),
    alert_id       String,
    status         LowCardinality(String),
    run_id         String,
    metric         LowCardinality(String),
    kind           LowCardinality(String),
    severity       LowCardinality(String),
    step           Int64,
    value          Float64,
    expected_low   Float64,
    expected_high  Float64,
    event_time     DateTime64(3),
    detected_at    DateTime64(3),
    message        String,
    stored         DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (project, alert_id, status);

-- One row per alert: as opened, with when (and whether) it resolved.
CREATE VIEW IF NOT EXISTS {db}.alerts AS
SELECT project, alert_id,
       argMinIf(run_id, t, st = 'open') AS run_id,
       argMinIf(metric, t, st = 'open') AS metric,
       argMinIf(kind, t, st = 'open') AS kind,
       argMinIf(severity, t, st = 'open') AS severity,
       argMinIf(step, t, st = 'open') AS step,
       argMinIf(value, t, st = 'open') AS value,
       argMinIf(expected_low, t, st = 'open') AS expected_low,
       argMinIf(expected_high, t, st = 'open') AS expected_high,
       argMinIf(event_time, t, st = 'open') AS event_time,
       minIf(t, st = 'open') AS detected_at,
       minIf(s, st = 'open') AS stored,
       if(countIf(st = 'resolved') > 0, 'resolved', 'open') AS status,
       maxIf(t, st = 'resolved') AS resolved_at,
       argMinIf(message, t, st = 'open') AS message
FROM (SELECT *, detected_at AS t, status AS st, stored AS s FROM {db}.alert_events FINAL)
GROUP BY project, alert_id
HAVING countIf(st = 'open') > 0;
