-- The audit chain's records are signed by the sink (HMAC-SHA256 of the record's hash with a key only the sink
-- holds, sink.audit_key_file), so a trail re-chained with the public rule no longer verifies.
ALTER TABLE {db}.audit_log ADD COLUMN IF NOT EXISTS sig String DEFAULT ''
