-- soundscape-agent central schema, version 6: several classifiers per window.
-- A window may be classified by AST (AudioSet labels) and by BirdNET (species): each detection
-- says which classifier produced it (taxonomy, model id and hash), ranks count per taxonomy,
-- and the window says what each classifier did with it (one may be skipped under backlog while
-- the other ran). Idempotent on its own (IF NOT EXISTS / OR REPLACE).

ALTER TABLE detections ADD COLUMN IF NOT EXISTS taxonomy text NOT NULL DEFAULT 'audioset';
ALTER TABLE detections ADD COLUMN IF NOT EXISTS model_id text;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS model_hash text;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS model_is_scaffold boolean;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS offset_s real;
COMMENT ON COLUMN detections.taxonomy IS 'Label set of the classifier: audioset (AST) or birdnet (BirdNET species, Scientific name_Common name).';
COMMENT ON COLUMN detections.model_id IS 'Model that produced the detection (BirdNET''s id names its licence, CC BY-NC-SA 4.0).';
COMMENT ON COLUMN detections.model_hash IS 'sha256 of that model''s files.';
COMMENT ON COLUMN detections.offset_s IS 'Start of the part of the window that gave the score, s (BirdNET: its 3 s chunk); NULL: the whole window (AST).';
COMMENT ON COLUMN detections.rank IS 'Rank within the window and taxonomy, 1 = highest score.';

-- rows of versions 1-5 came from the window's one model
UPDATE detections AS d SET model_id = w.model_id, model_hash = w.model_hash, model_is_scaffold = w.model_is_scaffold
FROM windows AS w
WHERE d.window_key = w.window_key AND d.model_id IS NULL;

ALTER TABLE detections DROP CONSTRAINT IF EXISTS detections_pkey;
ALTER TABLE detections ADD CONSTRAINT detections_pkey PRIMARY KEY (window_key, taxonomy, rank);
CREATE INDEX IF NOT EXISTS detections_taxonomy_label_idx ON detections (taxonomy, label);

ALTER TABLE windows ADD COLUMN IF NOT EXISTS classifier_status jsonb;
COMMENT ON COLUMN windows.classifier_status IS
    'Per classifier (taxonomy): classified, skipped_backlog, failed or not_scheduled. windows.status is the whole window''s: classified, partial (one ran, another was skipped or failed), skipped_backlog, failed, not_scheduled or disabled.';

-- The first five columns stay label, score, device, sync_id, sync_time. model_id and
-- model_is_scaffold now come from the detection's own classifier; new columns are appended.
CREATE OR REPLACE VIEW detections_flat AS
SELECT d.label,
       d.score,
       w.device,
       w.sync_id,
       w.sync_time,
       w.window_key,
       w.start_time,
       w.duration_s,
       d.rank,
       d.label_index,
       COALESCE(d.model_id, w.model_id) AS model_id,
       COALESCE(d.model_is_scaffold, w.model_is_scaffold) AS model_is_scaffold,
       w.clock_synchronised,
       d.taxonomy,
       COALESCE(d.model_hash, w.model_hash) AS model_hash,
       d.offset_s,
       w.classifier_status ->> d.taxonomy AS classifier_status
FROM detections AS d
JOIN windows AS w USING (window_key);
