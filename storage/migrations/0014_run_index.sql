-- Runs as one row each. The runs view, the read API's searches and run pages read this table (sized by runs) instead
-- of joining the start, finish and session records and then reading params, tags and latest metrics apart: each table
-- a query touches costs the embedded engine a few ms, and a search over 10k runs took 100-500 ms.
-- Kept by materialized views as the sink writes the source tables; a replayed row changes no answer (maps merge by max
-- per key); rebuilt here from the source tables, and by replaying Kafka like everything else.
CREATE TABLE IF NOT EXISTS {db}.run_index
(
    project    LowCardinality(String),
    run_id     String,
    -- The start record (a resume never writes one) and the first session's finish: arrays of the records stored
    -- (one each; a replay appends a copy), which merge by concatenation, far cheaper than comparing tuples.
    start      SimpleAggregateFunction(groupArrayArray, Array(Tuple(started DateTime64(3), name String,
               tags Array(String), git_commit String, git_branch String, git_dirty Bool, hostname String, pid UInt32,
               python_version String, parent_run_id String, fork_step Nullable(Int64)))),
    finish     SimpleAggregateFunction(groupArrayArray, Array(Tuple(ended DateTime64(3), status String,
               points_acked UInt64, points_dropped UInt64))),
    -- Later sessions by id: a finish (version 2) replaces its resume (version 1); ended 0 while one runs.
    sessions   SimpleAggregateFunction(maxMap, Map(String, Tuple(version UInt8, resumed DateTime64(3),
               ended DateTime64(3), status String, points_acked UInt64, points_dropped UInt64))),
    -- Each key's value at its latest time (params JSON-encoded; a deleted tag's value is the deletion marker).
    params     SimpleAggregateFunction(maxMap, Map(String, Tuple(ts DateTime64(3), value String))),
    tags       SimpleAggregateFunction(maxMap, Map(String, Tuple(ts DateTime64(3), value String))),
    -- Each metric's latest point: the largest step, then time, then value.
    metrics    SimpleAggregateFunction(maxMap, Map(String, Tuple(step Int64, ts DateTime64(3), value Float64)))
)
ENGINE = AggregatingMergeTree
ORDER BY (project, run_id)
-- A run's page merges the granules holding it in every part: small granules keep that to a few hundred rows.
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_starts_mv TO {db}.run_index AS
SELECT project, run_id, groupArray((started, name, tags, git_commit, git_branch, git_dirty, hostname, pid,
       python_version, parent_run_id, fork_step)) AS start
FROM {db}.run_starts GROUP BY project, run_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_finishes_mv TO {db}.run_index AS
SELECT project, run_id, groupArray((ended, status, points_acked, points_dropped)) AS finish
FROM {db}.run_finishes GROUP BY project, run_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_sessions_mv TO {db}.run_index AS
SELECT project, run_id, maxMap(map(session, (version, resumed, ifNull(ended, toDateTime64(0, 3)), status, points_acked,
       points_dropped))) AS sessions
FROM {db}.run_sessions GROUP BY project, run_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_params_mv TO {db}.run_index AS
SELECT project, run_id, maxMap(map(key, (ts, value))) AS params FROM {db}.params GROUP BY project, run_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_tags_mv TO {db}.run_index AS
SELECT project, run_id, maxMap(map(key, (ts, value))) AS tags FROM {db}.tags GROUP BY project, run_id;

-- From metric_latest's rows (one per run and metric of each insert), not from every point.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.run_index_metrics_mv TO {db}.run_index AS
SELECT project, run_id, maxMap(map(metric, (last_step, finalizeAggregation(last_ts), finalizeAggregation(last_value))))
       AS metrics
FROM {db}.metric_latest GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, start)
SELECT project, run_id, groupArray((started, name, tags, git_commit, git_branch, git_dirty, hostname, pid,
       python_version, parent_run_id, fork_step))
FROM {db}.run_starts GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, finish)
SELECT project, run_id, groupArray((ended, status, points_acked, points_dropped)) FROM {db}.run_finishes GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, sessions)
SELECT project, run_id, maxMap(map(session, (version, resumed, ifNull(ended, toDateTime64(0, 3)), status, points_acked,
       points_dropped)))
FROM {db}.run_sessions GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, params)
SELECT project, run_id, maxMap(map(key, (ts, value))) FROM {db}.params GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, tags)
SELECT project, run_id, maxMap(map(key, (ts, value))) FROM {db}.tags GROUP BY project, run_id;

INSERT INTO {db}.run_index (project, run_id, metrics)
SELECT project, run_id, maxMap(map(metric, (last_step, finalizeAggregation(last_ts), finalizeAggregation(last_value))))
FROM {db}.metric_latest GROUP BY project, run_id;

DROP VIEW IF EXISTS {db}.runs;

-- The runs view of 0009 (same columns, same answers) over run_index. status, ended: the latest session's (a resumed
-- session still open is running, with no end: 0009's argMax skipped its NULL and showed the previous session's end);
-- points_acked: every finished session's, NULL while one runs.
CREATE VIEW {db}.runs AS
SELECT
    project, run_id, st.name AS name,
    if(s_last.version != 0, s_last.status, if(fin.status = '', 'running', fin.status)) AS status,
    st.started AS started,
    if(s_last.version != 0, if(s_last.ended = 0, NULL, s_last.ended), if(fin.status = '', NULL, fin.ended)) AS ended,
    st.tags AS tags, st.git_commit AS git_commit, st.git_branch AS git_branch, st.git_dirty AS git_dirty,
    st.hostname AS hostname, st.pid AS pid, st.python_version AS python_version,
    st.parent_run_id AS parent_run_id, st.fork_step AS fork_step,
    if(if(s_last.version != 0, s_last.status = 'running', fin.status = ''), NULL,
       fin.points_acked + s_acked) AS points_acked,
    fin.points_dropped + s_dropped AS points_dropped,
    1 + s_count AS sessions
FROM
(
    SELECT project, run_id, start[1] AS st, arrayReverseSort(finish)[1] AS fin,
           arrayLast(s -> 1, arraySort(s -> s.resumed, mapValues(sessions))) AS s_last,
           arraySum(s -> s.points_acked, mapValues(sessions)) AS s_acked,
           arraySum(s -> s.points_dropped, mapValues(sessions)) AS s_dropped, length(sessions) AS s_count
    FROM {db}.run_index FINAL WHERE notEmpty(start)
)
