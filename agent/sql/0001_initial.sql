-- soundscape-agent central schema, version 1.
-- Applied by agent.sync.migrate() inside one transaction holding the migration advisory lock.
-- Written to be idempotent on its own as well (IF NOT EXISTS / OR REPLACE).

-- One row per analysed window. window_key is generated on the device ("<stream id>-<index>")
-- and is the idempotency key: a replayed batch inserts nothing new.
CREATE TABLE IF NOT EXISTS windows (
    window_key          text PRIMARY KEY,
    device              text NOT NULL,
    window_index        bigint NOT NULL,
    start_time          timestamptz NOT NULL,
    duration_s          double precision NOT NULL,
    sample_rate         int NOT NULL,
    clock_synchronised  boolean NOT NULL,
    xruns               int NOT NULL DEFAULT 0,
    leq_db              double precision,
    leq_series_db       double precision[],
    peak_dbfs           double precision,
    status              text NOT NULL,
    model_id            text,
    model_hash          text,
    model_backend       text,
    model_is_scaffold   boolean,
    sync_id             uuid NOT NULL,
    sync_time           timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE windows IS 'One analysed audio window per row (soundscape-agent); no audio is stored.';
COMMENT ON COLUMN windows.window_key IS 'Device-generated idempotency key <stream id>-<index>.';
COMMENT ON COLUMN windows.start_time IS 'UTC time of the window''s first sample (segment anchor + frames / rate).';
COMMENT ON COLUMN windows.clock_synchronised IS 'Whether the device clock was NTP-synchronised when the window closed.';
COMMENT ON COLUMN windows.leq_db IS 'Z-weighted Leq of the whole window, dB re 20 uPa.';
COMMENT ON COLUMN windows.leq_series_db IS 'Leq of each consecutive 1 s interval, dB re 20 uPa.';
COMMENT ON COLUMN windows.peak_dbfs IS 'Highest absolute sample, dBFS.';
COMMENT ON COLUMN windows.status IS 'Classification outcome: classified, skipped_backlog, failed or disabled (levels only).';
COMMENT ON COLUMN windows.model_is_scaffold IS 'True: random-weight test model, labels are meaningless.';
COMMENT ON COLUMN windows.sync_id IS 'Id of the device batch (transaction) that first delivered the row.';
COMMENT ON COLUMN windows.sync_time IS 'Server time of the delivering transaction.';

CREATE INDEX IF NOT EXISTS windows_device_start_idx ON windows (device, start_time);
CREATE INDEX IF NOT EXISTS windows_start_idx ON windows (start_time);

-- Top-k labels of a window, rank 1 = highest score.
CREATE TABLE IF NOT EXISTS detections (
    window_key   text NOT NULL REFERENCES windows (window_key) ON DELETE CASCADE,
    rank         smallint NOT NULL,
    label        text NOT NULL,
    label_index  int NOT NULL,
    score        real NOT NULL,
    PRIMARY KEY (window_key, rank)
);

CREATE INDEX IF NOT EXISTS detections_label_idx ON detections (label);

-- The layout the original prototype's users query: its first five columns are exactly
-- label, score, device, sync_id, sync_time. Later columns may be appended, never reordered
-- (CREATE OR REPLACE VIEW can only add columns at the end).
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
       w.model_id,
       w.model_is_scaffold,
       w.clock_synchronised
FROM detections AS d
JOIN windows AS w USING (window_key);
