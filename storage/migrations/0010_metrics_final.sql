-- The metrics view reads metric_points FINAL, which merges every part holding the queried key range on each
-- query: under a steady insert rate, dozens of fresh parts. A replayed point is an exact copy of the stored one,
-- so a filter keeps or drops every copy alike and may run before the merge (PREWHERE): about a quarter less
-- work for a dashboard's per-run read (measured with 33 parts).
DROP VIEW IF EXISTS {db}.metrics;

CREATE VIEW {db}.metrics AS
SELECT project, run_id, metric, step, ts, value FROM {db}.metric_points FINAL
SETTINGS optimize_move_to_prewhere_if_final = 1;
