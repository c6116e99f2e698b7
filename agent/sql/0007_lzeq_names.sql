-- soundscape-agent central schema, version 7: LZeq under its own name.
-- compatible-from: 6
-- windows.leq_db and leq_series_db always held the Z-weighted Leq (LZeq); their names now say
-- so: lzeq_db, lzeq_series_db. For one version both names exist: the new columns are filled
-- from the old ones, and a trigger keeps them equal on every insert, whichever name the writer
-- used, so agents of schema 6 (writing leq_*) keep syncing and dashboards reading leq_* keep
-- working. A later version (schema 10 at the earliest) drops leq_db, leq_series_db and the trigger:
-- move dashboards to lzeq_*.

ALTER TABLE windows ADD COLUMN IF NOT EXISTS lzeq_db double precision;
ALTER TABLE windows ADD COLUMN IF NOT EXISTS lzeq_series_db double precision[];
COMMENT ON COLUMN windows.lzeq_db IS
    'LZeq: Z-weighted (unweighted) Leq of the whole window, dB re 20 uPa (calibration offset included).';
COMMENT ON COLUMN windows.lzeq_series_db IS 'LZeq of each consecutive series interval (default 1 s), dB re 20 uPa.';
COMMENT ON COLUMN windows.leq_db IS 'Deprecated name of lzeq_db (same value), removed in schema version 8.';
COMMENT ON COLUMN windows.leq_series_db IS 'Deprecated name of lzeq_series_db (same value), removed in schema version 8.';

UPDATE windows SET lzeq_db = leq_db, lzeq_series_db = leq_series_db
WHERE lzeq_db IS NULL AND lzeq_series_db IS NULL AND (leq_db IS NOT NULL OR leq_series_db IS NOT NULL);

-- Runs as the inserting (device) role and touches only the new row: no privilege needed.
CREATE OR REPLACE FUNCTION windows_lzeq_legacy_names() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.lzeq_db := coalesce(NEW.lzeq_db, NEW.leq_db);
    NEW.lzeq_series_db := coalesce(NEW.lzeq_series_db, NEW.leq_series_db);
    NEW.leq_db := NEW.lzeq_db;
    NEW.leq_series_db := NEW.lzeq_series_db;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS windows_lzeq_legacy_names ON windows;
CREATE TRIGGER windows_lzeq_legacy_names BEFORE INSERT ON windows
    FOR EACH ROW EXECUTE FUNCTION windows_lzeq_legacy_names();

-- The views read the new names (so that a later version can drop the old columns).
CREATE OR REPLACE VIEW noise_levels AS
SELECT w.device,
       w.start_time,
       w.duration_s,
       w.lzeq_db,
       w.laeq_db,
       w.lceq_db,
       w.lafmax_db,
       w.lafmin_db,
       w.lasmax_db,
       w.la10_db,
       w.la50_db,
       w.la90_db,
       w.peak_dbfs,
       w.cal_offset_db,
       w.cal_sensitivity_dbv,
       w.cal_gain_db,
       w.cal_vadc,
       w.cal_reference_db,
       w.cal_time,
       w.clock_synchronised,
       w.window_key
FROM windows AS w;

CREATE OR REPLACE VIEW noise_levels_series AS
SELECT w.device,
       w.start_time + (s.i - 1) * (w.duration_s / cardinality(w.laeq_series_db)) * interval '1 second' AS interval_start,
       w.duration_s / cardinality(w.laeq_series_db) AS interval_s,
       s.laeq_db,
       s.lzeq_db,
       w.window_key
FROM windows AS w
CROSS JOIN LATERAL unnest(w.laeq_series_db, w.lzeq_series_db) WITH ORDINALITY AS s (laeq_db, lzeq_db, i)
WHERE cardinality(w.laeq_series_db) > 0;
