-- Governance history: every control event (projects, tokens) as the sink read it. Token secrets are
-- never here; only their sha256, in the token record.
CREATE TABLE IF NOT EXISTS {db}.governance_events
(
    at          DateTime64(3),
    actor       String,
    action      LowCardinality(String),
    object      String,
    record      String,
    partition   UInt16,
    offset      UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (partition, offset);
