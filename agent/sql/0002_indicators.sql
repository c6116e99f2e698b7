-- soundscape-agent central schema, version 2: calibrated noise indicators, one-third-octave
-- bands, acoustic indices, microphone health and calibration provenance per window, and one
-- view per indicator family for dashboards.
-- Applied by agent.sync.migrate() in one transaction; idempotent on its own as well.
-- Windows delivered by a version-1 agent keep NULL in every new column.

ALTER TABLE windows
    ADD COLUMN IF NOT EXISTS laeq_db            double precision,
    ADD COLUMN IF NOT EXISTS lceq_db            double precision,
    ADD COLUMN IF NOT EXISTS lafmax_db          double precision,
    ADD COLUMN IF NOT EXISTS lafmin_db          double precision,
    ADD COLUMN IF NOT EXISTS lasmax_db          double precision,
    ADD COLUMN IF NOT EXISTS la10_db            double precision,
    ADD COLUMN IF NOT EXISTS la50_db            double precision,
    ADD COLUMN IF NOT EXISTS la90_db            double precision,
    ADD COLUMN IF NOT EXISTS laeq_series_db     double precision[],
    ADD COLUMN IF NOT EXISTS band_centres_hz    real[],
    ADD COLUMN IF NOT EXISTS band_leq_db        real[],
    ADD COLUMN IF NOT EXISTS aci                double precision,
    ADD COLUMN IF NOT EXISTS adi                double precision,
    ADD COLUMN IF NOT EXISTS aei                double precision,
    ADD COLUMN IF NOT EXISTS bi                 double precision,
    ADD COLUMN IF NOT EXISTS ndsi               double precision,
    ADD COLUMN IF NOT EXISTS hf                 double precision,
    ADD COLUMN IF NOT EXISTS ht                 double precision,
    ADD COLUMN IF NOT EXISTS clipping_ratio     double precision,
    ADD COLUMN IF NOT EXISTS dc_offset_fs       double precision,
    ADD COLUMN IF NOT EXISTS rms_dbfs           double precision,
    ADD COLUMN IF NOT EXISTS hum_share          double precision,
    ADD COLUMN IF NOT EXISTS health_flags       text[],
    ADD COLUMN IF NOT EXISTS cal_offset_db      double precision,
    ADD COLUMN IF NOT EXISTS cal_sensitivity_dbv double precision,
    ADD COLUMN IF NOT EXISTS cal_gain_db        double precision,
    ADD COLUMN IF NOT EXISTS cal_vadc           double precision,
    ADD COLUMN IF NOT EXISTS cal_reference_db   double precision,
    ADD COLUMN IF NOT EXISTS cal_time           timestamptz;

COMMENT ON COLUMN windows.leq_db IS 'LZeq: Z-weighted (unweighted) Leq of the whole window, dB re 20 uPa (calibration offset included).';
COMMENT ON COLUMN windows.leq_series_db IS 'LZeq of each consecutive series interval (default 1 s), dB re 20 uPa.';
COMMENT ON COLUMN windows.laeq_db IS 'LAeq: A-weighted Leq of the window (IEC 61672-1), dB re 20 uPa.';
COMMENT ON COLUMN windows.lceq_db IS 'LCeq: C-weighted Leq of the window, dB re 20 uPa.';
COMMENT ON COLUMN windows.lafmax_db IS 'LAFmax: maximum A-weighted, Fast (125 ms) time-weighted level, dB re 20 uPa.';
COMMENT ON COLUMN windows.lafmin_db IS 'LAFmin: minimum A-weighted, Fast time-weighted level, dB re 20 uPa.';
COMMENT ON COLUMN windows.lasmax_db IS 'LASmax: maximum A-weighted, Slow (1 s) time-weighted level, dB re 20 uPa.';
COMMENT ON COLUMN windows.la10_db IS 'LA10: LAF level exceeded 10 % of the window, dB re 20 uPa.';
COMMENT ON COLUMN windows.la50_db IS 'LA50: LAF level exceeded 50 % of the window, dB re 20 uPa.';
COMMENT ON COLUMN windows.la90_db IS 'LA90: LAF level exceeded 90 % of the window (background level), dB re 20 uPa.';
COMMENT ON COLUMN windows.laeq_series_db IS 'LAeq of each consecutive series interval (default 1 s), dB re 20 uPa.';
COMMENT ON COLUMN windows.band_centres_hz IS 'Nominal centre frequencies of the one-third-octave bands (IEC 61260-1 base 10), Hz.';
COMMENT ON COLUMN windows.band_leq_db IS 'Z-weighted Leq per one-third-octave band, same order as band_centres_hz, dB re 20 uPa.';
COMMENT ON COLUMN windows.aci IS 'Acoustic Complexity Index (Pieretti et al. 2011), scikit-maad.';
COMMENT ON COLUMN windows.adi IS 'Acoustic Diversity Index (Villanueva-Rivera et al. 2011), scikit-maad.';
COMMENT ON COLUMN windows.aei IS 'Acoustic Evenness Index (Villanueva-Rivera et al. 2011), scikit-maad.';
COMMENT ON COLUMN windows.bi IS 'Bioacoustic Index (Boelman et al. 2007), scikit-maad.';
COMMENT ON COLUMN windows.ndsi IS 'Normalised Difference Soundscape Index (Kasten et al. 2012), scikit-maad.';
COMMENT ON COLUMN windows.hf IS 'Spectral entropy Hf (Sueur et al. 2008), scikit-maad.';
COMMENT ON COLUMN windows.ht IS 'Temporal entropy Ht (Sueur et al. 2008), scikit-maad.';
COMMENT ON COLUMN windows.clipping_ratio IS 'Share of samples at or beyond the clip level.';
COMMENT ON COLUMN windows.dc_offset_fs IS 'Mean of the samples, fraction of full scale.';
COMMENT ON COLUMN windows.rms_dbfs IS 'RMS of the samples (DC removed), dBFS.';
COMMENT ON COLUMN windows.hum_share IS 'Share of the power at the mains frequency (50 or 60 Hz) and its harmonics.';
COMMENT ON COLUMN windows.health_flags IS 'Raised microphone health flags: clipping, dc_offset, silence, mains_hum; empty = healthy.';
COMMENT ON COLUMN windows.cal_offset_db IS 'Calibration offset added to every level of the window, dB (0 = nominal chain).';
COMMENT ON COLUMN windows.cal_sensitivity_dbv IS 'Microphone sensitivity used, dB re 1 V/Pa.';
COMMENT ON COLUMN windows.cal_gain_db IS 'Analogue gain used, dB.';
COMMENT ON COLUMN windows.cal_vadc IS 'ADC full-scale range used, V peak-to-peak.';
COMMENT ON COLUMN windows.cal_reference_db IS 'Level of the acoustic calibrator the offset was measured with, dB re 20 uPa; NULL = never calibrated.';
COMMENT ON COLUMN windows.cal_time IS 'When the calibration offset was measured; NULL = never calibrated.';

-- Noise levels: one row per window.
CREATE OR REPLACE VIEW noise_levels AS
SELECT w.device,
       w.start_time,
       w.duration_s,
       w.leq_db AS lzeq_db,
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

-- Noise levels: one row per series interval (default 1 s) of every window.
CREATE OR REPLACE VIEW noise_levels_series AS
SELECT w.device,
       w.start_time + (s.i - 1) * (w.duration_s / cardinality(w.laeq_series_db)) * interval '1 second' AS interval_start,
       w.duration_s / cardinality(w.laeq_series_db) AS interval_s,
       s.laeq_db,
       s.lzeq_db,
       w.window_key
FROM windows AS w
CROSS JOIN LATERAL unnest(w.laeq_series_db, w.leq_series_db) WITH ORDINALITY AS s (laeq_db, lzeq_db, i)
WHERE cardinality(w.laeq_series_db) > 0;

-- One-third-octave band levels: one row per window and band.
CREATE OR REPLACE VIEW band_levels AS
SELECT w.device,
       w.start_time,
       w.duration_s,
       b.band_hz,
       b.leq_db,
       w.window_key
FROM windows AS w
CROSS JOIN LATERAL unnest(w.band_centres_hz, w.band_leq_db) AS b (band_hz, leq_db)
WHERE w.band_centres_hz IS NOT NULL;

-- Acoustic indices: one row per window analysed by a version-2 agent (NULL: undefined, e.g.
-- digital silence, or [indices] enabled = false).
CREATE OR REPLACE VIEW acoustic_indices AS
SELECT w.device,
       w.start_time,
       w.duration_s,
       w.aci,
       w.adi,
       w.aei,
       w.bi,
       w.ndsi,
       w.hf,
       w.ht,
       w.window_key
FROM windows AS w
WHERE w.health_flags IS NOT NULL;

-- Microphone content health: one row per window that has it.
CREATE OR REPLACE VIEW mic_health AS
SELECT w.device,
       w.start_time,
       w.duration_s,
       cardinality(w.health_flags) = 0 AS healthy,
       w.health_flags AS flags,
       w.clipping_ratio,
       w.dc_offset_fs,
       w.rms_dbfs,
       w.hum_share,
       w.window_key
FROM windows AS w
WHERE w.health_flags IS NOT NULL;
