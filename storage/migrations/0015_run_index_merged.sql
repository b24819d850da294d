-- A search reads run_index FINAL, which merges the rows of every part in the key ranges a newer part shares: in-process
-- over 10,000 runs, searches took 16-23 ms with the five parts a burst left and 10-16 ms with one
-- (bench/results/run-index-parts.json). The engine merges small parts only when more arrive, so a stack that went quiet kept
-- its last ones for good. Parts a minute old now merge anyway: a quiet stack's run_index is one part within about
-- two minutes of its last write (a merge's new part ages a minute in turn), and a busy one rewrites the table about
-- once a minute (57 core-ms for 10,000 runs here: about 1% of a core per 100,000 runs).
ALTER TABLE {db}.run_index MODIFY SETTING min_age_to_force_merge_seconds = 60
