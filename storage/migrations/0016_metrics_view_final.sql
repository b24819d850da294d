-- The metrics view as 0001 had it: metric_points FINAL, without 0010's optimize_move_to_prewhere_if_final. With the
-- engine this project runs now (chDB 26.9), the setting made every read of one run's points slower than FINAL alone:
-- in-process, a 100k-point read through the view took 14.1 ms against 12.3 merged into one part, 32.2 against 24.9
-- with a part per poll (bench/results/history-read.json).
DROP VIEW IF EXISTS {db}.metrics;

CREATE VIEW {db}.metrics AS
SELECT project, run_id, metric, step, ts, value FROM {db}.metric_points FINAL
