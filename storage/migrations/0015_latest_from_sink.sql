-- metric_latest is written by the sink: per poll, each run and metric's point with the highest step, found over
-- the poll's arrays (storage/columns.py latest_rows), as the argMax states the table keeps. The materialized view
-- grouped every point of an insert instead: 300-400 ns a point at a fleet's shape, a third of the insert
-- (bench/results/sink-views.json). The states merge the same either way; a replayed poll writes the same rows.
DROP VIEW IF EXISTS {db}.metric_latest_mv;
