-- Only on a ClickHouse server (the embedded engine has no access control).
-- A read-only role for analysts and Grafana, and the permissive policies that keep every table readable
-- once per-project restrictive policies exist (see storage/access.py).
CREATE ROLE IF NOT EXISTS runstream_reader_role;
GRANT SELECT ON {db}.* TO runstream_reader_role;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.metric_points FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.batches FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.run_starts FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.run_finishes FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.params FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.tags FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.rollup_windows FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.fleet_windows FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.alert_events FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.datasets_used FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.artifacts FOR SELECT USING 1 TO ALL;
CREATE ROW POLICY IF NOT EXISTS runstream_all ON {db}.audit_log FOR SELECT USING 1 TO ALL;
