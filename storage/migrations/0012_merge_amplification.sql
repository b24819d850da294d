-- Merges rewrite every point a few times over its life; they were the largest part of the sink's CPU. Merging about
-- ten parts of a size at once (the selector's base, 5 by default) rewrites each point fewer times, for somewhat more
-- parts between merges. Measured (bench/results/merge-base.json, bench/ingest.py at 400k points/s): the sink's
-- merges 0.83 -> 0.67 core-seconds per million points, the sink 2.10 -> 1.92, e2e p99 no higher.
ALTER TABLE {db}.metric_points MODIFY SETTING merge_selector_base = 10
