-- Resume and fork. A later session of a run is a row of run_sessions (its RunResume, replaced by its finish), so
-- the run's start record is never touched and acknowledged counts add up across sessions. A fork is a new run
-- whose start names its parent and the parent's step it starts from.
CREATE TABLE IF NOT EXISTS {db}.run_sessions
(
    project        LowCardinality(String),
    run_id         String,
    session        String,
    resumed        DateTime64(3),
    ended          Nullable(DateTime64(3)),
    status         LowCardinality(String),
    points_acked   UInt64,
    batches_acked  UInt64,
    points_dropped UInt64,
    version        UInt8
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (project, run_id, session);

ALTER TABLE {db}.run_finishes ADD COLUMN IF NOT EXISTS points_dropped UInt64 DEFAULT 0;

ALTER TABLE {db}.run_starts ADD COLUMN IF NOT EXISTS fork_step Nullable(Int64);

DROP VIEW IF EXISTS {db}.runs;

-- status, ended: the latest session's (a resumed session still open is running); points_acked: every finished
-- session's, NULL while one runs.
CREATE VIEW {db}.runs AS
SELECT
    s.project AS project, s.run_id AS run_id, s.name AS name,
    if(r.run_id != '', r.last_status, if(f.run_id = '', 'running', f.status)) AS status,
    s.started AS started,
    if(r.run_id != '', r.last_ended, if(f.run_id = '', NULL, f.ended)) AS ended,
    s.tags AS tags, s.git_commit AS git_commit, s.git_branch AS git_branch, s.git_dirty AS git_dirty,
    s.hostname AS hostname, s.pid AS pid, s.python_version AS python_version, s.parent_run_id AS parent_run_id,
    s.fork_step AS fork_step,
    if(if(r.run_id != '', r.last_status = 'running', f.run_id = ''), NULL, f.points_acked + r.acked) AS points_acked,
    f.points_dropped + r.dropped AS points_dropped,
    1 + r.sessions AS sessions
FROM {db}.run_starts AS s FINAL
LEFT JOIN {db}.run_finishes AS f FINAL ON s.project = f.project AND s.run_id = f.run_id
LEFT JOIN
(
    SELECT project, run_id, argMax(status, resumed) AS last_status, argMax(ended, resumed) AS last_ended,
           sum(points_acked) AS acked, sum(points_dropped) AS dropped, count() AS sessions
    FROM {db}.run_sessions FINAL
    GROUP BY project, run_id
) AS r ON s.project = r.project AND s.run_id = r.run_id;
