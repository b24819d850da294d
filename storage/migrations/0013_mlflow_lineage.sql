-- A dataset as MLflow describes it (name, source, schema, profile) and the tags of its use (MLflow's context among
-- them), so the MLflow API answers with what it was given; empty for datasets the SDK logs.
ALTER TABLE {db}.datasets_used ADD COLUMN IF NOT EXISTS name String, ADD COLUMN IF NOT EXISTS source_type String,
    ADD COLUMN IF NOT EXISTS source String, ADD COLUMN IF NOT EXISTS schema String,
    ADD COLUMN IF NOT EXISTS profile String, ADD COLUMN IF NOT EXISTS input_tags Map(String, String);

-- The step an output was made at (MLflow's model outputs: a run's models:/<id> at a step).
ALTER TABLE {db}.artifacts ADD COLUMN IF NOT EXISTS step Int64
