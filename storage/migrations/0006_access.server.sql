-- Only on a ClickHouse server (the embedded engine has no access control).
-- A read-only role for analysts and Grafana. The row policies per table come from storage/access.py
-- (one list of tables), applied by the sink at start.
CREATE ROLE IF NOT EXISTS runstream_reader_role;
GRANT SELECT ON {db}.* TO runstream_reader_role;
