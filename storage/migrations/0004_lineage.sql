-- Lineage: datasets runs read, artifacts they made, and the code/environment fingerprints of a run.
CREATE TABLE IF NOT EXISTS {db}.datasets_used
(
    project  LowCardinality(String),
    run_id   String,
    uri      String,
    digest   String,
    size     UInt64,
    ts       DateTime64(3)
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (project, run_id, uri, digest);

CREATE TABLE IF NOT EXISTS {db}.artifacts
(
    project     LowCardinality(String),
    run_id      String,
    uri         String,
    stored_uri  String,
    size        UInt64,
    sha256      String,
    ts          DateTime64(3)
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY (project, run_id, uri, sha256);

ALTER TABLE {db}.run_starts ADD COLUMN IF NOT EXISTS git_diff_sha256 String;
ALTER TABLE {db}.run_starts ADD COLUMN IF NOT EXISTS packages_sha256 String;
