-- Append-only audit trail, hash-chained per project: hash = sha256(prev_hash || canonical record).
-- `runstream audit verify` recomputes the chain; an altered or missing record breaks it.
CREATE TABLE IF NOT EXISTS {db}.audit_log
(
    project    LowCardinality(String),
    seq        UInt64,
    at         DateTime64(3),
    actor      String,
    action     LowCardinality(String),
    target     String,
    source     String,
    before     String,
    after      String,
    prev_hash  String,
    hash       String,
    partition  UInt16,
    offset     UInt64
)
ENGINE = MergeTree
ORDER BY (project, seq);
