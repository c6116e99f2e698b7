-- soundscape-agent central schema, version 8: what one device role can do to the server, bounded.
-- compatible-from: 6
-- Nothing an agent sends changes: agents of schema 6 and 7 keep syncing (every value they send
-- is far inside the limits below; sync_time was never sent). Idempotent on its own.
--
-- 1. Size limits on every value a device sends (CHECK constraints), far above what the agent
--    ever sends (agent/records.py, agent/config.py; deploy/README.md "Limits of a device role"):
--      identifiers and words (device <= 64 characters by config, window_key ~26, status,
--      taxonomy, reason, backend <= 16, model_hash 64 hex, agent_version)    256 bytes
--      model_id (a hub id, or a model directory's absolute path <= PATH_MAX)  8192 bytes
--      detections.label (AudioSet <= 40 bytes, BirdNET <= 62)                 1024 bytes
--      gaps.detail (an error message, three lines of arecord's stderr)        64 KiB
--      LZeq/LAeq series (window <= 60 s / interval >= 0.125 s: <= 480 values) 4096 values
--      one-third-octave bands (10 Hz - 40 kHz: <= 37)                         256 values
--      health_flags, throttle_flags, degraded (<= 8 short names)              64 names, 4096 bytes
--      classifier_status (one word per classifier, ~60 bytes)                 4096 bytes
--    NOT VALID: checked on every new row, not on the rows already stored, so adding them takes
--    a moment under the table lock instead of a scan of the whole table (which would stop every
--    device's inserts meanwhile), and an oversized row stored earlier does not make the
--    migration fail. The owner may delete such rows and then ALTER TABLE ... VALIDATE CONSTRAINT.
-- 2. sync_time is set by the server (a BEFORE INSERT trigger: now(), the delivering
--    transaction's start, the value the column default gave and the agent reads back): a
--    device can no longer put a heartbeat at 9999-01-01 and freeze its device_status row.
--    windows.sync_id stays the agent's: it marks its local rows with it (a device's own rows only).
-- 3. EXECUTE on the row-level security functions of 0004 (SECURITY DEFINER) is no longer
--    granted to PUBLIC, only to the roles device_roles maps: granted to those mapped now, and
--    by a trigger on device_roles to every role mapped later (revoked when its last row goes).

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT * FROM (VALUES
            ('windows', 'windows_window_key_size', 'octet_length(window_key) <= 256'),
            ('windows', 'windows_device_size', 'octet_length(device) <= 256'),
            ('windows', 'windows_status_size', 'octet_length(status) <= 256'),
            ('windows', 'windows_model_id_size', 'octet_length(model_id) <= 8192'),
            ('windows', 'windows_model_hash_size', 'octet_length(model_hash) <= 256'),
            ('windows', 'windows_model_backend_size', 'octet_length(model_backend) <= 256'),
            ('windows', 'windows_lzeq_series_db_size', 'cardinality(lzeq_series_db) <= 4096'),
            ('windows', 'windows_laeq_series_db_size', 'cardinality(laeq_series_db) <= 4096'),
            ('windows', 'windows_band_centres_hz_size', 'cardinality(band_centres_hz) <= 256'),
            ('windows', 'windows_band_leq_db_size', 'cardinality(band_leq_db) <= 256'),
            ('windows', 'windows_health_flags_size',
             'cardinality(health_flags) <= 64 AND octet_length(array_to_string(health_flags, '''')) <= 4096'),
            ('windows', 'windows_classifier_status_size', 'octet_length(classifier_status::text) <= 4096'),
            ('detections', 'detections_window_key_size', 'octet_length(window_key) <= 256'),
            ('detections', 'detections_taxonomy_size', 'octet_length(taxonomy) <= 256'),
            ('detections', 'detections_label_size', 'octet_length(label) <= 1024'),
            ('detections', 'detections_model_id_size', 'octet_length(model_id) <= 8192'),
            ('detections', 'detections_model_hash_size', 'octet_length(model_hash) <= 256'),
            ('heartbeats', 'heartbeats_device_size', 'octet_length(device) <= 256'),
            ('heartbeats', 'heartbeats_throttle_flags_size',
             'cardinality(throttle_flags) <= 64 AND octet_length(array_to_string(throttle_flags, '''')) <= 4096'),
            ('heartbeats', 'heartbeats_degraded_size',
             'cardinality(degraded) <= 64 AND octet_length(array_to_string(degraded, '''')) <= 4096'),
            ('heartbeats', 'heartbeats_model_id_size', 'octet_length(model_id) <= 8192'),
            ('heartbeats', 'heartbeats_model_hash_size', 'octet_length(model_hash) <= 256'),
            ('heartbeats', 'heartbeats_agent_version_size', 'octet_length(agent_version) <= 256'),
            ('gaps', 'gaps_device_size', 'octet_length(device) <= 256'),
            ('gaps', 'gaps_reason_size', 'octet_length(reason) <= 256'),
            ('gaps', 'gaps_detail_size', 'octet_length(detail) <= 65536'),
            ('clock_steps', 'clock_steps_device_size', 'octet_length(device) <= 256')
        ) AS v (tbl, name, expr)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                       WHERE conrelid = format('public.%I', c.tbl)::regclass AND conname = c.name) THEN
            EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I CHECK (%s) NOT VALID', c.tbl, c.name, c.expr);
        END IF;
    END LOOP;
END
$$;

-- Runs as the inserting (device) role and touches only the new row: no privilege needed.
CREATE OR REPLACE FUNCTION soundscape_server_sync_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.sync_time := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION soundscape_server_sync_time() IS
    'sync_time is the server''s: the delivering transaction''s start, whatever the inserting role sent.';
DROP TRIGGER IF EXISTS windows_server_sync_time ON windows;
CREATE TRIGGER windows_server_sync_time BEFORE INSERT ON windows
    FOR EACH ROW EXECUTE FUNCTION soundscape_server_sync_time();
DROP TRIGGER IF EXISTS heartbeats_server_sync_time ON heartbeats;
CREATE TRIGGER heartbeats_server_sync_time BEFORE INSERT ON heartbeats
    FOR EACH ROW EXECUTE FUNCTION soundscape_server_sync_time();
DROP TRIGGER IF EXISTS gaps_server_sync_time ON gaps;
CREATE TRIGGER gaps_server_sync_time BEFORE INSERT ON gaps
    FOR EACH ROW EXECUTE FUNCTION soundscape_server_sync_time();
DROP TRIGGER IF EXISTS clock_steps_server_sync_time ON clock_steps;
CREATE TRIGGER clock_steps_server_sync_time BEFORE INSERT ON clock_steps
    FOR EACH ROW EXECUTE FUNCTION soundscape_server_sync_time();

-- EXECUTE on the SECURITY DEFINER functions: the mapped roles only (a policy expression runs
-- with the inserting role's privileges, so each of them needs it; nobody else does).
REVOKE EXECUTE ON FUNCTION soundscape_may_write(name, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION soundscape_may_write_window(name, text) FROM PUBLIC;

-- Runs as whoever maps a role: the owner (deploy/db.yml) or a superuser, who may grant on the
-- owner's functions (device_roles has no privilege for anyone else). A row naming a role that
-- does not exist is refused (a typo would otherwise be a mapping nobody can use).
CREATE OR REPLACE FUNCTION device_roles_execute_grants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = NEW.role_name) THEN
            RAISE EXCEPTION 'device_roles: role "%" does not exist', NEW.role_name
                USING ERRCODE = 'undefined_object', HINT = 'create the role first (deploy/db.yml does)';
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.soundscape_may_write(name, text),'
                       ' public.soundscape_may_write_window(name, text) TO %I', NEW.role_name);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE')
       AND NOT EXISTS (SELECT 1 FROM public.device_roles WHERE role_name = OLD.role_name)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = OLD.role_name) THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION public.soundscape_may_write(name, text),'
                       ' public.soundscape_may_write_window(name, text) FROM %I', OLD.role_name);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION device_roles_execute_grants() IS
    'Row-level security: a role mapped in device_roles gets EXECUTE on soundscape_may_write*, and loses it with its last row.';
DROP TRIGGER IF EXISTS device_roles_execute_grants ON device_roles;
CREATE TRIGGER device_roles_execute_grants AFTER INSERT OR UPDATE OR DELETE ON device_roles
    FOR EACH ROW EXECUTE FUNCTION device_roles_execute_grants();

DO $$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT DISTINCT d.role_name FROM public.device_roles AS d
             JOIN pg_catalog.pg_roles AS p ON p.rolname = d.role_name
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.soundscape_may_write(name, text),'
                       ' public.soundscape_may_write_window(name, text) TO %I', r);
    END LOOP;
END
$$;
