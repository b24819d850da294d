-- runstream storage, version 1. `{db}` is the configured database.
-- Every table is written only by the storage sink, from Kafka; replaying
-- Kafka rebuilds them. Duplicated deliveries of a batch share (batch, idx)
-- and collapse in the ReplacingMergeTree key; the views read FINAL, so
-- queries see each point once.

CREATE TABLE IF NOT EXISTS {db}.metric_points
(
    project  LowCardinality(String),
    run_id   String,
    metric   LowCardinality(String),
    step     Int64          CODEC(Delta, ZSTD(1)),
    ts       DateTime64(3)  CODEC(Delta, ZSTD(1)),
    value    Float64        CODEC(Gorilla, ZSTD(1)),
    batch    UInt64         CODEC(ZSTD(1)),   -- first 64 bits of the batch id: the dedup key
    idx      UInt32         CODEC(Delta, ZSTD(1)),  -- point's position in its batch
    stored   DateTime64(3)  DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (project, run_id, metric, step, batch, idx);

CREATE VIEW IF NOT EXISTS {db}.metrics AS
SELECT project, run_id, metric, step, ts, value FROM {db}.metric_points FINAL;

-- One row per stored batch (every kind): the ledger behind "acknowledged vs stored".
CREATE TABLE IF NOT EXISTS {db}.batches
(
    project     LowCardinality(String),
    run_id      String,
    batch_id    String,
    seq         UInt64,
    kind        LowCardinality(String),
    points      UInt32,
    created     DateTime64(3),
    stored      DateTime64(3) DEFAULT now64(3),
    partition   UInt16,
    offset      UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id, batch_id);

CREATE TABLE IF NOT EXISTS {db}.run_starts
(
    project        LowCardinality(String),
    run_id         String,
    name           String,
    started        DateTime64(3),
    tags           Array(String),
    git_commit     String,
    git_branch     String,
    git_remote     String,
    git_dirty      Bool,
    hostname       String,
    pid            UInt32,
    python_version String,
    parent_run_id  String
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id);

CREATE TABLE IF NOT EXISTS {db}.run_finishes
(
    project        LowCardinality(String),
    run_id         String,
    status         LowCardinality(String),
    ended          DateTime64(3),
    points_acked   UInt64,
    batches_acked  UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (project, run_id);

-- Params (including a run's config) and tags: latest value per key wins.
CREATE TABLE IF NOT EXISTS {db}.params
(
    project  LowCardinality(String),
    run_id   String,
    key      String,
    value    String,
    ts       DateTime64(3)
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (project, run_id, key);

CREATE TABLE IF NOT EXISTS {db}.tags
(
    project  LowCardinality(String),
    run_id   String,
    key      String,
    value    String,
    ts       DateTime64(3)
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (project, run_id, key);

CREATE VIEW IF NOT EXISTS {db}.runs AS
SELECT
    s.project AS project, s.run_id AS run_id, s.name AS name,
    if(f.run_id = '', 'running', f.status) AS status,
    s.started AS started, if(f.run_id = '', NULL, f.ended) AS ended,
    s.tags AS tags, s.git_commit AS git_commit, s.git_branch AS git_branch, s.git_dirty AS git_dirty,
    s.hostname AS hostname, s.pid AS pid, s.python_version AS python_version, s.parent_run_id AS parent_run_id,
    if(f.run_id = '', NULL, f.points_acked) AS points_acked
FROM {db}.run_starts AS s FINAL
LEFT JOIN {db}.run_finishes AS f FINAL ON s.project = f.project AND s.run_id = f.run_id;
