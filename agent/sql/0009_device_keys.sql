-- soundscape-agent central schema, version 9: every key is scoped by its device.
-- compatible-from: 6
-- Until version 8 window_key, heartbeat_id and event_id were global primary keys. A device that
-- learned another device's stream id could insert that device's future window keys in its own
-- name: the victim's window without detections was then skipped by ON CONFLICT DO NOTHING as
-- "already there" and lost silently, and one with detections was refused by row-level security
-- on every round. Now each primary key leads with the device, so one device's rows never
-- collide with another's, whatever keys it sends (and the tables can be distributed by device).
--
--   windows      (device, window_key)
--   detections   (device, window_key, taxonomy, rank), FOREIGN KEY (device, window_key)
--   heartbeats   (device, heartbeat_id)
--   gaps         (device, event_id)
--   clock_steps  (device, event_id)
--
-- detections gains a device column. Agents of schema 9 send it; for agents of schema 6-8 (which
-- do not) a BEFORE INSERT trigger fills it from the window of that key whose device the
-- inserting role may write (soundscape_window_device, SECURITY DEFINER), so they keep syncing.
-- The detections policy becomes the same device check as every other table: the foreign key
-- guarantees that the window exists under the same device.
-- Heartbeats gain set_aside: rows the server refused permanently that the device has set aside.
--
-- Rebuilding the primary keys holds each table's ACCESS EXCLUSIVE lock while its index is
-- built (seconds per million rows): run it in a quiet hour on a large database. Idempotent on
-- its own (the keys are dropped and rebuilt, the rest is IF [NOT] EXISTS / OR REPLACE).

ALTER TABLE detections ADD COLUMN IF NOT EXISTS device text;
COMMENT ON COLUMN detections.device IS 'Device of the window (part of the key: windows are keyed by device and window_key).';
UPDATE detections AS d SET device = w.device
FROM windows AS w
WHERE d.window_key = w.window_key AND d.device IS NULL;
ALTER TABLE detections ALTER COLUMN device SET NOT NULL;

-- The device of the window with this key that the role may write (NULL: none). SECURITY DEFINER
-- for the same reason as soundscape_may_write (0004): device roles cannot read windows.
CREATE OR REPLACE FUNCTION soundscape_window_device(role name, window_key text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT w.device FROM public.windows AS w
    JOIN public.device_roles AS r ON r.device = w.device
    WHERE w.window_key = soundscape_window_device.window_key AND r.role_name = soundscape_window_device.role
    ORDER BY w.device
    LIMIT 1
$$;
COMMENT ON FUNCTION soundscape_window_device(name, text) IS
    'Detections of agents older than schema 9 (no device column): the device of the window with this key that role may write.';
REVOKE EXECUTE ON FUNCTION soundscape_window_device(name, text) FROM PUBLIC;

-- Runs as the inserting (device) role: it needs EXECUTE on soundscape_window_device (granted
-- with the other row-level security functions, below).
CREATE OR REPLACE FUNCTION detections_device_from_window() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.device IS NULL THEN
        NEW.device := public.soundscape_window_device(current_user, NEW.window_key);
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS detections_device_from_window ON detections;
CREATE TRIGGER detections_device_from_window BEFORE INSERT ON detections
    FOR EACH ROW EXECUTE FUNCTION detections_device_from_window();

-- The keys. Foreign key first (it depends on windows_pkey), then each primary key.
ALTER TABLE detections DROP CONSTRAINT IF EXISTS detections_window_key_fkey;
ALTER TABLE detections DROP CONSTRAINT IF EXISTS detections_window_fkey;
ALTER TABLE windows DROP CONSTRAINT IF EXISTS windows_pkey;
ALTER TABLE windows ADD CONSTRAINT windows_pkey PRIMARY KEY (device, window_key);
ALTER TABLE detections DROP CONSTRAINT IF EXISTS detections_pkey;
ALTER TABLE detections ADD CONSTRAINT detections_pkey PRIMARY KEY (device, window_key, taxonomy, rank);
ALTER TABLE detections ADD CONSTRAINT detections_window_fkey
    FOREIGN KEY (device, window_key) REFERENCES windows (device, window_key) ON DELETE CASCADE;
ALTER TABLE heartbeats DROP CONSTRAINT IF EXISTS heartbeats_pkey;
ALTER TABLE heartbeats ADD CONSTRAINT heartbeats_pkey PRIMARY KEY (device, heartbeat_id);
ALTER TABLE gaps DROP CONSTRAINT IF EXISTS gaps_pkey;
ALTER TABLE gaps ADD CONSTRAINT gaps_pkey PRIMARY KEY (device, event_id);
ALTER TABLE clock_steps DROP CONSTRAINT IF EXISTS clock_steps_pkey;
ALTER TABLE clock_steps ADD CONSTRAINT clock_steps_pkey PRIMARY KEY (device, event_id);
COMMENT ON COLUMN windows.window_key IS
    'Device-generated idempotency key <stream id>-<index>, unique per device (the primary key is (device, window_key)).';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = 'public.detections'::regclass AND conname = 'detections_device_size') THEN
        ALTER TABLE public.detections ADD CONSTRAINT detections_device_size CHECK (octet_length(device) <= 256) NOT VALID;
    END IF;
END
$$;

-- detections: the device check of every other table (the foreign key does the rest).
DROP POLICY IF EXISTS detections_insert_own_device ON detections;
CREATE POLICY detections_insert_own_device ON detections FOR INSERT TO PUBLIC
    WITH CHECK (soundscape_may_write(current_user, device));

-- The first five columns stay label, score, device, sync_id, sync_time; the join now follows
-- the key (a window key alone may exist under two devices).
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
JOIN windows AS w ON w.device = d.device AND w.window_key = d.window_key;

-- Rows the server refused permanently (a constraint, row-level security) are set aside on the
-- device, kept and counted, so that everything queued after them still flows.
ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS set_aside bigint NOT NULL DEFAULT 0;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                   WHERE conrelid = 'public.heartbeats'::regclass AND conname = 'heartbeats_set_aside_check') THEN
        ALTER TABLE public.heartbeats ADD CONSTRAINT heartbeats_set_aside_check CHECK (set_aside >= 0) NOT VALID;
    END IF;
END
$$;
COMMENT ON COLUMN heartbeats.set_aside IS
    'Rows (windows, events, heartbeats) in the device queue that this server refused permanently and the device set aside (kept locally; see soundscape-agent diagnose).';

CREATE OR REPLACE VIEW device_status AS
SELECT DISTINCT ON (device) device, time, now() - time AS age, uptime_s, windows, skipped, xruns,
       queue_depth, last_sync_at, cpu_temp_c, throttle_flags, disk_free_bytes, clock_synchronised,
       rss_bytes, model_id, degraded, evicted_unsynced, dropped_windows, set_aside
FROM heartbeats
ORDER BY device, sync_time DESC, uptime_s DESC;

-- EXECUTE on the SECURITY DEFINER functions for the mapped roles (0008), now three of them.
CREATE OR REPLACE FUNCTION device_roles_execute_grants() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = NEW.role_name) THEN
            RAISE EXCEPTION 'device_roles: role "%" does not exist', NEW.role_name
                USING ERRCODE = 'undefined_object', HINT = 'create the role first (deploy/db.yml does)';
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.soundscape_may_write(name, text),'
                       ' public.soundscape_may_write_window(name, text),'
                       ' public.soundscape_window_device(name, text) TO %I', NEW.role_name);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE')
       AND NOT EXISTS (SELECT 1 FROM public.device_roles WHERE role_name = OLD.role_name)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = OLD.role_name) THEN
        EXECUTE format('REVOKE EXECUTE ON FUNCTION public.soundscape_may_write(name, text),'
                       ' public.soundscape_may_write_window(name, text),'
                       ' public.soundscape_window_device(name, text) FROM %I', OLD.role_name);
    END IF;
    RETURN NULL;
END
$$;

DO $$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT DISTINCT d.role_name FROM public.device_roles AS d
             JOIN pg_catalog.pg_roles AS p ON p.rolname = d.role_name
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION public.soundscape_window_device(name, text) TO %I', r);
    END LOOP;
END
$$;

-- 0007 said these would go in schema 8; they stay until a later version (10 at the earliest).
COMMENT ON COLUMN windows.leq_db IS 'Deprecated name of lzeq_db (same value), to be removed in schema version 10 at the earliest.';
COMMENT ON COLUMN windows.leq_series_db IS 'Deprecated name of lzeq_series_db (same value), to be removed in schema version 10 at the earliest.';
