-- soundscape-agent central schema, version 10: time-partitioned tables, hourly rollups,
-- retention by whole partitions (a fleet of 10,000 devices writes ~6,000 rows/s).
-- compatible-from: 10
-- Agents of schema 9 and older stop syncing (detections now carry their window's start_time,
-- the partition key); their queues keep everything until they are upgraded. An agent of
-- schema 10 syncs to schema 9 and 10 servers: upgrade the fleet first, then migrate
-- (deploy/README.md, "Partitions, retention and rollups").
--
-- In place, without copying a row: each table T (windows, detections, heartbeats, gaps,
-- clock_steps) is renamed T_legacy and attached as the partition FROM (MINVALUE) TO (tomorrow,
-- UTC) of a new T partitioned by range of its time column (an empty one is dropped); rows
-- dated later (a device clock in the future) move to T_default. New rows go to daily partitions T_pYYYYMMDD, created ahead
-- by soundscape_maintain() (soundscape-agent db maintain; the timer deploy/db.yml installs), or
-- to T_default when none covers their time (moved into their day's partition by the next run).
-- Each primary key is the device key of schema 9 plus the partition column (PostgreSQL:
-- "a unique constraint on a partitioned table must include all the partition key columns");
-- replays still conflict, because a device sends the same time for the same key.
--   windows (device, window_key, start_time)      detections (device, window_key, taxonomy, rank, start_time)
--   heartbeats (device, heartbeat_id, time)        gaps (device, event_id, start_time)
--   clock_steps (device, event_id, detected_at)
-- Carried over to each new T: column defaults and comments, CHECK constraints (NOT VALID:
-- the legacy rows are not scanned, new partitions check them), row-level security and its
-- policies, triggers, grants (table and column), and every view reading T (re-created from its
-- own definition). The detections -> windows foreign key is gone (partitions of the two tables
-- are dropped independently by retention); the detections policy checks the device as before.
-- Cost: attaching builds each legacy table's new primary key index (seconds per million rows)
-- under the table's ACCESS EXCLUSIVE lock; detections.start_time is filled by one UPDATE.
--
-- Partition width: one day (docs/performance.md, "Partition width": measured against a week).
-- Retention: soundscape_partition_policy.keep (NULL: keep forever); whole partitions older than
-- it are detached and dropped, after their hours are rolled up (rollups are kept).

-- ------------------------------------------------------------------ detections get start_time
ALTER TABLE detections DROP CONSTRAINT IF EXISTS detections_window_fkey;
ALTER TABLE detections ADD COLUMN IF NOT EXISTS start_time timestamptz;
COMMENT ON COLUMN detections.start_time IS
    'Start of the window (UTC): the partition key; the same value as windows.start_time.';
UPDATE detections AS d SET start_time = w.start_time
FROM windows AS w
WHERE d.start_time IS NULL AND w.device = d.device AND w.window_key = d.window_key;
-- (a detection without its window cannot exist under the schema 9 foreign key)
ALTER TABLE detections ALTER COLUMN start_time SET NOT NULL;
-- agents of schema 9 and older no longer sync (compatible-from 10): their fill-in trigger goes
DROP TRIGGER IF EXISTS detections_device_from_window ON detections;

-- ------------------------------------------------------------------ the policy table
CREATE TABLE IF NOT EXISTS soundscape_partition_policy (
    table_name   text PRIMARY KEY,
    time_column  text NOT NULL,
    keep         interval CHECK (keep IS NULL OR keep >= interval '1 day'),
    ahead_days   int NOT NULL DEFAULT 7 CHECK (ahead_days BETWEEN 1 AND 366)
);
COMMENT ON TABLE soundscape_partition_policy IS
    'Per partitioned table: its partition column, how long raw rows are kept (NULL: forever) and how many days of partitions soundscape_maintain() creates ahead.';
INSERT INTO soundscape_partition_policy (table_name, time_column) VALUES
    ('windows', 'start_time'), ('detections', 'start_time'), ('heartbeats', 'time'),
    ('gaps', 'start_time'), ('clock_steps', 'detected_at')
ON CONFLICT (table_name) DO NOTHING;

-- ------------------------------------------------------------------ the conversion
CREATE FUNCTION pg_temp.soundscape_partition(tbl text, col text, key text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    legacy text := tbl || '_legacy';
    cutover timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC';
    r record;
    checks text[] := '{}';
    n bigint;
    kept boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_partitioned_table WHERE partrelid = format('public.%I', tbl)::regclass) THEN
        RETURN;  -- already partitioned
    END IF;
    -- views reading T, by their own text (which names T), to re-create against the new T
    INSERT INTO soundscape_views_to_replace
    SELECT DISTINCT v.oid::regclass::text, pg_catalog.pg_get_viewdef(v.oid)
    FROM pg_catalog.pg_depend AS d
    JOIN pg_catalog.pg_rewrite AS rw ON rw.oid = d.objid
    JOIN pg_catalog.pg_class AS v ON v.oid = rw.ev_class
    WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid = format('public.%I', tbl)::regclass
      AND v.relkind = 'v'
    ON CONFLICT DO NOTHING;

    EXECUTE format('ALTER TABLE public.%I RENAME TO %I', tbl, legacy);
    -- index names are the schema's: free the ones the new table takes
    FOR r IN SELECT i.relname FROM pg_catalog.pg_index AS x JOIN pg_catalog.pg_class AS i ON i.oid = x.indexrelid
             WHERE x.indrelid = format('public.%I', legacy)::regclass AND NOT x.indisprimary LOOP
        EXECUTE format('ALTER INDEX public.%I RENAME TO %I', r.relname, left(r.relname, 50) || '_legacy');
    END LOOP;
    EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT IF EXISTS %I', legacy, tbl || '_pkey');
    -- CHECK constraints: dropped here, added to the new T (NOT VALID) once this is its partition
    FOR r IN SELECT conname, pg_catalog.pg_get_constraintdef(oid) AS def FROM pg_catalog.pg_constraint
             WHERE conrelid = format('public.%I', legacy)::regclass AND contype = 'c' LOOP
        checks := checks || format('ADD CONSTRAINT %I %s', r.conname,
                                   regexp_replace(r.def, '\s+NOT VALID$', '') || ' NOT VALID');
        EXECUTE format('ALTER TABLE public.%I DROP CONSTRAINT %I', legacy, r.conname);
    END LOOP;

    EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING COMMENTS INCLUDING STORAGE)'
                   ' PARTITION BY RANGE (%I)', tbl, legacy, col);
    EXECUTE format('COMMENT ON TABLE public.%I IS %L', tbl,
                   obj_description(format('public.%I', legacy)::regclass, 'pg_class'));
    EXECUTE format('ALTER TABLE public.%I ADD CONSTRAINT %I PRIMARY KEY (%s)', tbl, tbl || '_pkey',
                   (SELECT string_agg(quote_ident(k), ', ') FROM unnest(key || col) AS k));

    -- rows dated after the cutover (a device clock ahead) leave the legacy table, to come back
    -- through the new table (its default partition) below
    EXECUTE format('CREATE TEMP TABLE soundscape_ahead ON COMMIT DROP AS'
                   ' WITH moved AS (DELETE FROM public.%I WHERE %I >= %L RETURNING *) SELECT * FROM moved',
                   legacy, col, cutover);
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I)', legacy) INTO kept;
    IF kept THEN
        EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I FOR VALUES FROM (MINVALUE) TO (%L)',
                       tbl, legacy, cutover);
    ELSE  -- a new database: nothing to keep, dropped once no view reads it
        INSERT INTO soundscape_empty_legacy VALUES (legacy);
    END IF;
    EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I DEFAULT', tbl || '_default', tbl);
    -- before the triggers and checks exist on T: the moved rows keep the sync_time they were delivered at
    EXECUTE format('INSERT INTO public.%I SELECT * FROM soundscape_ahead', tbl);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        RAISE NOTICE '%: % rows dated after % moved to %_default', tbl, n, cutover, tbl;
    END IF;
    DROP TABLE soundscape_ahead;

    IF array_length(checks, 1) > 0 THEN
        EXECUTE format('ALTER TABLE public.%I %s', tbl, array_to_string(checks, ', '));
    END IF;

    -- row-level security and its policies
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', tbl);
    FOR r IN SELECT p.polname, p.polcmd, p.polpermissive, p.polroles,
                    pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual,
                    pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS chk
             FROM pg_catalog.pg_policy AS p WHERE p.polrelid = format('public.%I', legacy)::regclass LOOP
        EXECUTE format('DROP POLICY %I ON public.%I', r.polname, legacy);
        EXECUTE format('CREATE POLICY %I ON public.%I AS %s FOR %s TO %s%s%s', r.polname, tbl,
                       CASE WHEN r.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                       CASE r.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                     WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                       CASE WHEN r.polroles = '{0}' THEN 'PUBLIC' ELSE
                           (SELECT string_agg(quote_ident(rolname), ', ') FROM pg_catalog.pg_roles
                            WHERE oid = ANY (r.polroles)) END,
                       coalesce(' USING (' || r.qual || ')', ''), coalesce(' WITH CHECK (' || r.chk || ')', ''));
    END LOOP;
    -- triggers (the legacy table keeps none of its own: the new T's are cloned onto it)
    FOR r IN SELECT t.tgname, pg_catalog.pg_get_triggerdef(t.oid) AS def FROM pg_catalog.pg_trigger AS t
             WHERE t.tgrelid = format('public.%I', legacy)::regclass AND NOT t.tgisinternal AND t.tgparentid = 0 LOOP
        EXECUTE format('DROP TRIGGER %I ON public.%I', r.tgname, legacy);
        EXECUTE replace(r.def, format(' ON public.%I ', legacy), format(' ON public.%I ', tbl));
    END LOOP;
    -- grants, table and column: to the new T; the legacy partition keeps none (it is read and
    -- written through T; row-level security stays enabled on it, without policies: no access)
    FOR r IN SELECT a.privilege_type, a.grantee FROM pg_catalog.pg_class AS c, aclexplode(c.relacl) AS a
             WHERE c.oid = format('public.%I', legacy)::regclass AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON public.%I TO %s', r.privilege_type, tbl,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.grantee::regrole::text) END);
        EXECUTE format('REVOKE %s ON public.%I FROM %s', r.privilege_type, legacy,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.grantee::regrole::text) END);
    END LOOP;
    FOR r IN SELECT att.attname, a.privilege_type, a.grantee
             FROM pg_catalog.pg_attribute AS att, aclexplode(att.attacl) AS a
             WHERE att.attrelid = format('public.%I', legacy)::regclass AND att.attacl IS NOT NULL LOOP
        EXECUTE format('GRANT %s (%I) ON public.%I TO %s', r.privilege_type, r.attname, tbl,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.grantee::regrole::text) END);
    END LOOP;

END
$$;

CREATE TEMP TABLE soundscape_views_to_replace (name text PRIMARY KEY, def text) ON COMMIT DROP;
CREATE TEMP TABLE soundscape_empty_legacy (name text PRIMARY KEY) ON COMMIT DROP;
SELECT pg_temp.soundscape_partition('windows', 'start_time', ARRAY['device', 'window_key']);
SELECT pg_temp.soundscape_partition('detections', 'start_time', ARRAY['device', 'window_key', 'taxonomy', 'rank']);
SELECT pg_temp.soundscape_partition('heartbeats', 'time', ARRAY['device', 'heartbeat_id']);
SELECT pg_temp.soundscape_partition('gaps', 'start_time', ARRAY['device', 'event_id']);
SELECT pg_temp.soundscape_partition('clock_steps', 'detected_at', ARRAY['device', 'event_id']);

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT name, def FROM soundscape_views_to_replace ORDER BY name::regclass::oid LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', r.name, r.def);
    END LOOP;
    FOR r IN SELECT name FROM soundscape_empty_legacy LOOP
        EXECUTE format('DROP TABLE public.%I', r.name);
    END LOOP;
END
$$;

-- indexes of the queries the views, reports and maintenance make (each partition gets its own)
CREATE INDEX IF NOT EXISTS windows_device_start ON windows (device, start_time);
CREATE INDEX IF NOT EXISTS windows_sync_time_brin ON windows USING brin (sync_time);
CREATE INDEX IF NOT EXISTS detections_taxonomy_label ON detections (taxonomy, label);
CREATE INDEX IF NOT EXISTS heartbeats_device_time_desc ON heartbeats (device, time DESC);
CREATE INDEX IF NOT EXISTS gaps_device_start_time ON gaps (device, start_time);
CREATE INDEX IF NOT EXISTS clock_steps_device_detected ON clock_steps (device, detected_at);

-- ------------------------------------------------------------------ device_status at fleet scale
-- The newest heartbeat of each device, kept by a trigger (one row per device), so that
-- device_status reads one row and one heartbeat per device instead of scanning every
-- partition of heartbeats. Newest: by delivery (sync_time), then uptime (as 0005).
CREATE TABLE IF NOT EXISTS device_latest (
    device        text PRIMARY KEY,
    heartbeat_id  uuid NOT NULL,
    time          timestamptz NOT NULL,
    sync_time     timestamptz NOT NULL,
    uptime_s      double precision NOT NULL
);
COMMENT ON TABLE device_latest IS
    'Key of each device''s newest heartbeat (by sync_time, then uptime_s), kept by the heartbeats trigger soundscape_note_heartbeat.';
ALTER TABLE device_latest ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS device_latest_select_all ON device_latest;
CREATE POLICY device_latest_select_all ON device_latest FOR SELECT TO PUBLIC USING (true);
INSERT INTO device_latest (device, heartbeat_id, time, sync_time, uptime_s)
SELECT DISTINCT ON (device) device, heartbeat_id, time, sync_time, uptime_s
FROM heartbeats ORDER BY device, sync_time DESC, uptime_s DESC
ON CONFLICT (device) DO NOTHING;

-- SECURITY DEFINER: device roles insert heartbeats but may not write device_latest themselves.
-- Fires only for rows actually inserted (a replayed heartbeat conflicts and does not).
CREATE OR REPLACE FUNCTION soundscape_note_heartbeat() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    INSERT INTO public.device_latest AS l (device, heartbeat_id, time, sync_time, uptime_s)
    VALUES (NEW.device, NEW.heartbeat_id, NEW.time, NEW.sync_time, NEW.uptime_s)
    ON CONFLICT (device) DO UPDATE
        SET heartbeat_id = EXCLUDED.heartbeat_id, time = EXCLUDED.time, sync_time = EXCLUDED.sync_time,
            uptime_s = EXCLUDED.uptime_s
        WHERE (EXCLUDED.sync_time, EXCLUDED.uptime_s) > (l.sync_time, l.uptime_s);
    RETURN NULL;
END
$$;
REVOKE EXECUTE ON FUNCTION soundscape_note_heartbeat() FROM PUBLIC;
DROP TRIGGER IF EXISTS heartbeats_note_latest ON heartbeats;
CREATE TRIGGER heartbeats_note_latest AFTER INSERT ON heartbeats
    FOR EACH ROW EXECUTE FUNCTION soundscape_note_heartbeat();

CREATE OR REPLACE VIEW device_status AS
SELECT h.device, h.time, now() - h.time AS age, h.uptime_s, h.windows, h.skipped, h.xruns,
       h.queue_depth, h.last_sync_at, h.cpu_temp_c, h.throttle_flags, h.disk_free_bytes, h.clock_synchronised,
       h.rss_bytes, h.model_id, h.degraded, h.evicted_unsynced, h.dropped_windows, h.set_aside
FROM device_latest AS l
JOIN heartbeats AS h ON h.device = l.device AND h.heartbeat_id = l.heartbeat_id AND h.time = l.time;

-- ------------------------------------------------------------------ hourly rollups
-- Per device and hour (UTC) of window start, recomputed whole for every hour that received a
-- window since the last refresh (so late, replayed or backfilled windows are counted once).
-- soundscape_rollup_of / soundscape_detections_of compute one device-hour from the raw rows:
-- the refresh stores them, and a report reads them directly for the hours not rolled up yet.
--   laeq_db     energy mean of the windows' LAeq, weighted by duration: 10 lg(sum(T_i 10^(L_i/10)) / sum(T_i))
--               (IEC 61672-1:2013, 3.9: the equivalent continuous level of the whole hour)
--   laeq_s      seconds of windows with an LAeq (the weight to combine hours)
--   la90_db     level exceeded 90 % of the hour: 10th percentile of the windows' LAeq series
--               (their short-interval LAeq; a window without a series counts with its LAeq)
--   lafmax_db   maximum of the windows' LAFmax
--   band_leq_db energy mean per one-third-octave band (by nominal centre), as laeq_db
--   indices     arithmetic mean (ACI, ADI, AEI, BI, NDSI, H)
CREATE TABLE IF NOT EXISTS rollup_hourly (
    device           text NOT NULL,
    hour             timestamptz NOT NULL,
    windows          int NOT NULL,
    duration_s       double precision NOT NULL,
    first_start      timestamptz NOT NULL,
    last_end         timestamptz NOT NULL,
    laeq_db          double precision,
    laeq_s           double precision NOT NULL,
    la90_db          double precision,
    lafmax_db        double precision,
    band_centres_hz  real[],
    band_leq_db      real[],
    aci              double precision,
    adi              double precision,
    aei              double precision,
    bi               double precision,
    ndsi             double precision,
    hf               double precision,
    ht               double precision,
    PRIMARY KEY (device, hour)
);
COMMENT ON TABLE rollup_hourly IS
    'Levels, bands and acoustic indices per device and UTC hour of window start (soundscape_rollup_of; kept beyond the raw rows'' retention).';
CREATE INDEX IF NOT EXISTS rollup_hourly_hour ON rollup_hourly (hour);

CREATE TABLE IF NOT EXISTS rollup_detections_hourly (
    device      text NOT NULL,
    hour        timestamptz NOT NULL,
    taxonomy    text NOT NULL,
    label       text NOT NULL,
    detections  int NOT NULL,
    max_score   real NOT NULL,
    scaffold    boolean NOT NULL,
    PRIMARY KEY (device, hour, taxonomy, label)
);
COMMENT ON TABLE rollup_detections_hourly IS
    'Detections (top-k rows) per device, UTC hour of window start, classifier taxonomy and label: count, highest score, whether any came from a random-weight scaffold model.';
CREATE INDEX IF NOT EXISTS rollup_detections_hourly_hour ON rollup_detections_hourly (hour, taxonomy);

CREATE TABLE IF NOT EXISTS rollup_state (
    name          text PRIMARY KEY,
    rolled_until  timestamptz NOT NULL
);
COMMENT ON TABLE rollup_state IS
    'Windows delivered (sync_time) up to rolled_until are rolled up: the last refresh''s start minus soundscape.rollup_lag (default 15 min, for transactions that committed late), as the refreshing session had it.';

CREATE OR REPLACE FUNCTION soundscape_hour(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_trunc('hour', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';

-- One device-hour of rollup_hourly from the raw windows (no row: no window in that hour).
CREATE OR REPLACE FUNCTION soundscape_rollup_of(dev text, h timestamptz) RETURNS SETOF rollup_hourly
LANGUAGE sql STABLE AS $$
    SELECT dev, h, a.windows, a.duration_s, a.first_start, a.last_end, a.laeq_db, a.laeq_s, p.la90_db,
           a.lafmax_db, b.centres, b.leq, a.aci, a.adi, a.aei, a.bi, a.ndsi, a.hf, a.ht
    FROM (
        SELECT count(*)::int AS windows, sum(w.duration_s) AS duration_s, min(w.start_time) AS first_start,
               max(w.start_time + w.duration_s * interval '1 second') AS last_end,
               10 * log(sum(w.duration_s * power(10::double precision, w.laeq_db / 10)) FILTER (WHERE w.laeq_db IS NOT NULL)
                        / nullif(sum(w.duration_s) FILTER (WHERE w.laeq_db IS NOT NULL), 0)) AS laeq_db,
               coalesce(sum(w.duration_s) FILTER (WHERE w.laeq_db IS NOT NULL), 0) AS laeq_s,
               max(w.lafmax_db) AS lafmax_db,
               avg(w.aci) AS aci, avg(w.adi) AS adi, avg(w.aei) AS aei, avg(w.bi) AS bi, avg(w.ndsi) AS ndsi,
               avg(w.hf) AS hf, avg(w.ht) AS ht
        FROM public.windows AS w
        WHERE w.device = dev AND w.start_time >= h AND w.start_time < h + interval '1 hour') AS a,
    LATERAL (
        SELECT percentile_cont(0.1) WITHIN GROUP (ORDER BY s.v) AS la90_db
        FROM public.windows AS w, unnest(coalesce(w.laeq_series_db, ARRAY[w.laeq_db])) AS s (v)
        WHERE w.device = dev AND w.start_time >= h AND w.start_time < h + interval '1 hour'
          AND s.v > '-Infinity'::float8 AND s.v < 'Infinity'::float8) AS p,
    LATERAL (
        SELECT array_agg(g.centre ORDER BY g.centre) AS centres, array_agg(g.leq ORDER BY g.centre) AS leq
        FROM (SELECT u.c AS centre,
                     (10 * log(sum(w.duration_s * power(10::double precision, u.v / 10)) / sum(w.duration_s)))::real AS leq
              FROM public.windows AS w, unnest(w.band_centres_hz, w.band_leq_db) AS u (c, v)
              WHERE w.device = dev AND w.start_time >= h AND w.start_time < h + interval '1 hour'
                AND u.c IS NOT NULL AND u.v > '-Infinity'::real AND u.v < 'Infinity'::real
              GROUP BY u.c) AS g) AS b
    WHERE a.windows > 0
$$;

-- One device-hour of rollup_detections_hourly from the raw detections.
CREATE OR REPLACE FUNCTION soundscape_detections_of(dev text, h timestamptz) RETURNS SETOF rollup_detections_hourly
LANGUAGE sql STABLE AS $$
    SELECT dev, h, d.taxonomy, d.label, count(*)::int, max(d.score), bool_or(coalesce(d.model_is_scaffold, false))
    FROM public.detections AS d
    WHERE d.device = dev AND d.start_time >= h AND d.start_time < h + interval '1 hour'
    GROUP BY d.taxonomy, d.label
$$;

-- The device-hours overlapping [since, until) with windows delivered after the last refresh's cutoff:
-- what soundscape_refresh_rollups recomputes, and what a report computes itself meanwhile
-- (pass the report's range: the partitions outside it are not read). An hour older than the
-- windows' retention that already has its rollup row is not listed: its raw rows are gone,
-- so a late or replayed window of it would replace the hour's figures with its own; such a
-- window is kept raw until its partition or the default partition's retention removes it
-- (a device offline for longer than the retention: its hours have no row yet and are rolled up).
CREATE OR REPLACE FUNCTION soundscape_unrolled_hours(since timestamptz DEFAULT '-infinity',
                                                     until timestamptz DEFAULT 'infinity')
RETURNS TABLE (device text, hour timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT w.device, soundscape_hour(w.start_time)
    FROM public.windows AS w
    WHERE w.start_time >= soundscape_hour(since)
      AND w.start_time < CASE WHEN until = soundscape_hour(until) THEN until
                              ELSE soundscape_hour(until) + interval '1 hour' END
      AND w.sync_time > coalesce((SELECT s.rolled_until FROM public.rollup_state AS s WHERE s.name = 'hourly'),
                                 '-infinity')
      AND NOT (soundscape_hour(w.start_time) + interval '1 hour'
                   <= coalesce((SELECT now() - p.keep FROM public.soundscape_partition_policy AS p
                                WHERE p.table_name = 'windows'), '-infinity')
               AND EXISTS (SELECT 1 FROM public.rollup_hourly AS r
                           WHERE r.device = w.device AND r.hour = soundscape_hour(w.start_time)))
$$;

CREATE OR REPLACE VIEW noise_levels_hourly AS
SELECT device, hour, windows, duration_s, laeq_db, la90_db, lafmax_db FROM rollup_hourly;
CREATE OR REPLACE VIEW band_levels_hourly AS
SELECT device, hour, b.band_hz, b.leq_db
FROM rollup_hourly AS r, unnest(r.band_centres_hz, r.band_leq_db) AS b (band_hz, leq_db);
CREATE OR REPLACE VIEW acoustic_indices_hourly AS
SELECT device, hour, windows, aci, adi, aei, bi, ndsi, hf, ht FROM rollup_hourly;
CREATE OR REPLACE VIEW detections_hourly AS
SELECT device, hour, taxonomy, label, detections, max_score, scaffold FROM rollup_detections_hourly;

-- Rolls up every device-hour soundscape_unrolled_hours() lists; returns their number.
-- Serialised by the caller (soundscape_maintain's advisory lock).
CREATE OR REPLACE FUNCTION soundscape_refresh_rollups() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    mark timestamptz := clock_timestamp()
        - coalesce(nullif(current_setting('soundscape.rollup_lag', true), ''), '15 minutes')::interval;
    n bigint;
BEGIN
    CREATE TEMP TABLE soundscape_touched ON COMMIT DROP AS SELECT * FROM soundscape_unrolled_hours();
    GET DIAGNOSTICS n = ROW_COUNT;
    ANALYZE soundscape_touched;
    DELETE FROM rollup_hourly AS r USING soundscape_touched AS t WHERE r.device = t.device AND r.hour = t.hour;
    INSERT INTO rollup_hourly SELECT r.* FROM soundscape_touched AS t, soundscape_rollup_of(t.device, t.hour) AS r;
    DELETE FROM rollup_detections_hourly AS r USING soundscape_touched AS t
    WHERE r.device = t.device AND r.hour = t.hour;
    INSERT INTO rollup_detections_hourly
    SELECT d.* FROM soundscape_touched AS t, soundscape_detections_of(t.device, t.hour) AS d;
    INSERT INTO rollup_state (name, rolled_until) VALUES ('hourly', mark)
    ON CONFLICT (name) DO UPDATE SET rolled_until = EXCLUDED.rolled_until;
    DROP TABLE soundscape_touched;
    RETURN n;
END
$$;

-- ------------------------------------------------------------------ partition maintenance
-- The range partitions of a table with their bounds (MINVALUE: -infinity); the default
-- partition is not listed.
CREATE OR REPLACE FUNCTION soundscape_partitions(tbl text)
RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           CASE WHEN m[1] = 'MINVALUE' THEN '-infinity'::timestamptz ELSE trim(both '''' from m[1])::timestamptz END,
           CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity'::timestamptz ELSE trim(both '''' from m[2])::timestamptz END
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid,
    LATERAL regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'FROM \((.+)\) TO \((.+)\)') AS m
    WHERE i.inhparent = format('public.%I', tbl)::regclass AND m IS NOT NULL
$$;

-- The day partition of tbl from day (UTC midnight), unless a partition already covers part of
-- it. Rows of that day waiting in the default partition move into it, keeping their values
-- (the triggers of the new partition are off while they move; the partition is locked).
CREATE OR REPLACE FUNCTION soundscape_create_partition(tbl text, day timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    col text := (SELECT time_column FROM soundscape_partition_policy WHERE table_name = tbl);
    name text := tbl || '_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
    waiting boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM soundscape_partitions(tbl) AS p
               WHERE p.lower_bound < day + interval '1 day' AND p.upper_bound > day) THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE %I >= %L AND %I < %L)',
                   tbl || '_default', col, day, col, day + interval '1 day') INTO waiting;
    IF NOT waiting THEN
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES FROM (%L) TO (%L)',
                       name, tbl, day, day + interval '1 day');
        RETURN name;
    END IF;
    EXECUTE format('ALTER TABLE public.%I DETACH PARTITION public.%I', tbl, tbl || '_default');
    EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES FROM (%L) TO (%L)',
                   name, tbl, day, day + interval '1 day');
    EXECUTE format('ALTER TABLE public.%I DISABLE TRIGGER USER', name);
    EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE %I >= %L AND %I < %L RETURNING *)'
                   ' INSERT INTO public.%I SELECT * FROM moved',
                   tbl || '_default', col, day, col, day + interval '1 day', name);
    EXECUTE format('ALTER TABLE public.%I ENABLE TRIGGER USER', name);
    EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I DEFAULT', tbl, tbl || '_default');
    RETURN name || ' (rows moved from ' || tbl || '_default)';
END
$$;

-- Create partitions ahead, give rows waiting in a default partition their day's partition,
-- refresh the rollups, then drop what is older than the retention. Run as the owner
-- (soundscape-agent db maintain; the timer of deploy/db.yml), hourly or daily; concurrent runs
-- wait for each other. Returns what it did, one row per action.
CREATE OR REPLACE FUNCTION soundscape_maintain()
RETURNS TABLE (action text, relation text, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    part record;
    today timestamptz := (date_trunc('day', now() AT TIME ZONE 'UTC')) AT TIME ZONE 'UTC';
    day timestamptz;
    made text;
    n bigint;
    horizon timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('soundscape_maintain'));
    FOR p IN SELECT * FROM soundscape_partition_policy ORDER BY table_name LOOP
        horizon := CASE WHEN p.keep IS NULL THEN '-infinity'::timestamptz ELSE now() - p.keep END;
        -- ahead, from yesterday (a day late for devices whose clock lags)
        FOR day IN SELECT generate_series(today - interval '1 day', today + p.ahead_days * interval '1 day',
                                          interval '1 day') LOOP
            made := soundscape_create_partition(p.table_name, day);
            IF made IS NOT NULL THEN
                action := 'created'; relation := made; detail := ''; RETURN NEXT;
            END IF;
        END LOOP;
        -- rows in the default partition within the retention: their day's partition
        FOR day IN EXECUTE format('SELECT DISTINCT (date_trunc(''day'', %I AT TIME ZONE ''UTC'')) AT TIME ZONE ''UTC'''
                                  ' FROM public.%I WHERE %I >= %L ORDER BY 1',
                                  p.time_column, p.table_name || '_default', p.time_column, horizon) LOOP
            made := soundscape_create_partition(p.table_name, day);
            IF made IS NOT NULL THEN
                action := 'created'; relation := made; detail := ''; RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;

    n := soundscape_refresh_rollups();
    action := 'rolled up'; relation := 'rollup_hourly'; detail := n || ' device-hours'; RETURN NEXT;

    FOR p IN SELECT * FROM soundscape_partition_policy WHERE keep IS NOT NULL ORDER BY table_name LOOP
        horizon := now() - p.keep;
        FOR part IN SELECT * FROM soundscape_partitions(p.table_name) WHERE upper_bound <= horizon LOOP
            relation := part.partition::text;  -- the name, before the table is gone
            EXECUTE format('ALTER TABLE public.%I DETACH PARTITION %s', p.table_name, relation);
            EXECUTE format('DROP TABLE %s', relation);
            action := 'dropped';
            detail := 'older than ' || p.keep; RETURN NEXT;
        END LOOP;
        EXECUTE format('DELETE FROM public.%I WHERE %I < %L', p.table_name || '_default', p.time_column, horizon);
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            action := 'deleted'; relation := p.table_name || '_default';
            detail := n || ' rows older than ' || p.keep; RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION soundscape_maintain() IS
    'Partitions ahead, strays out of the default partitions, rollups, retention: run by soundscape-agent db maintain (hourly timer of deploy/db.yml).';

-- the first partitions and rollups now
SELECT count(*) FROM soundscape_maintain();
