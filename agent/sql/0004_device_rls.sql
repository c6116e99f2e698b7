-- soundscape-agent central schema, version 4: row-level security per device.
-- Applied by agent.sync.migrate() in one transaction, once; idempotent on its own as well
-- (IF NOT EXISTS / OR REPLACE / DROP POLICY IF EXISTS).
--
-- A device role (deploy/db.yml: one LOGIN role per device, or one fleet role) may insert
-- only rows whose device id is mapped to it in device_roles. Reading, updating and deleting
-- need privileges a device role does not have (db.yml grants INSERT only), so a device can
-- neither see nor change any row, its own included. The table owner (who runs
-- `soundscape-agent db init`) and superusers bypass row-level security (no FORCE): the owner
-- maintains device_roles and any data by hand.
--
-- Every table a device inserts into is covered: windows, detections, heartbeats (the
-- indicator families of 0002 are views over windows, written by nobody).
-- PostgreSQL documentation, "Row Security Policies" (ddl-rowsecurity) and CREATE POLICY.

-- Which role may write which device's rows: (role, device id), one row per pair. A fleet role
-- has one row per device. Maintained by the owner (deploy/db.yml inserts a row per device);
-- no privilege on it is granted to anyone else.
CREATE TABLE IF NOT EXISTS device_roles (
    role_name  name NOT NULL,
    device     text NOT NULL,
    PRIMARY KEY (role_name, device)
);

COMMENT ON TABLE device_roles IS
    'Row-level security: role_name may insert rows of device (windows, detections, heartbeats). Owner-maintained (deploy/db.yml).';

-- true iff device_roles maps the role to the device. SECURITY DEFINER: it reads device_roles
-- with the owner's rights, so the device roles need no privilege on that table; search_path
-- is pinned so that no object of another schema (or pg_temp) can stand in for device_roles.
CREATE OR REPLACE FUNCTION soundscape_may_write(role name, device text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.device_roles AS r
        WHERE r.role_name = soundscape_may_write.role AND r.device = soundscape_may_write.device
    )
$$;

-- true iff the window exists and its device is one the role may write. The window inserted
-- earlier in the same transaction (the batch's windows precede its detections) is visible:
-- a STABLE function sees the snapshot of the calling statement, taken after the previous one.
CREATE OR REPLACE FUNCTION soundscape_may_write_window(role name, window_key text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.windows AS w
        JOIN public.device_roles AS r ON r.device = w.device
        WHERE w.window_key = soundscape_may_write_window.window_key
          AND r.role_name = soundscape_may_write_window.role
    )
$$;

COMMENT ON FUNCTION soundscape_may_write(name, text) IS
    'Row-level security: may role insert rows of device? (device_roles)';
COMMENT ON FUNCTION soundscape_may_write_window(name, text) IS
    'Row-level security: does the window exist and may role insert rows of its device? (detections)';

-- EXECUTE stays granted to PUBLIC (stated explicitly, in case default privileges were
-- changed): a policy expression runs with the privileges of the role running the INSERT, so
-- every role that may insert needs EXECUTE, and a role provisioned without it would fail with
-- "permission denied for function". What the functions disclose is a boolean: whether a
-- (role, device) pair is mapped and whether a window key exists with a device mapped to a role.
-- Any inserter learns a key's existence anyway (a target-less ON CONFLICT DO NOTHING inserts 0
-- rows), role names are derived from device ids (sa_<device id>), and deploy/db.yml lets only
-- the owner and the device roles connect. They are read-only (STABLE, no dynamic SQL) and
-- pin search_path, so running them as the owner grants nothing else.
GRANT EXECUTE ON FUNCTION soundscape_may_write(name, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION soundscape_may_write_window(name, text) TO PUBLIC;

ALTER TABLE windows ENABLE ROW LEVEL SECURITY;
ALTER TABLE detections ENABLE ROW LEVEL SECURITY;
ALTER TABLE heartbeats ENABLE ROW LEVEL SECURITY;

-- INSERT: only rows of a device mapped to the inserting role. The check applies to every
-- proposed row before the conflict test, replays included: a device's replay of its own rows
-- passes it and is then skipped by the agent's target-less ON CONFLICT DO NOTHING; a row in
-- another device's name is refused even when its key exists already.
DROP POLICY IF EXISTS windows_insert_own_device ON windows;
CREATE POLICY windows_insert_own_device ON windows FOR INSERT TO PUBLIC
    WITH CHECK (soundscape_may_write(current_user, device));

DROP POLICY IF EXISTS detections_insert_own_device ON detections;
CREATE POLICY detections_insert_own_device ON detections FOR INSERT TO PUBLIC
    WITH CHECK (soundscape_may_write_window(current_user, window_key));

DROP POLICY IF EXISTS heartbeats_insert_own_device ON heartbeats;
CREATE POLICY heartbeats_insert_own_device ON heartbeats FOR INSERT TO PUBLIC
    WITH CHECK (soundscape_may_write(current_user, device));

-- SELECT: every row, for roles holding the SELECT privilege (analysts, dashboards); device
-- roles have none. The views of 0001-0003 run with their owner's rights and so are unaffected.
DROP POLICY IF EXISTS windows_select_all ON windows;
CREATE POLICY windows_select_all ON windows FOR SELECT TO PUBLIC USING (true);

DROP POLICY IF EXISTS detections_select_all ON detections;
CREATE POLICY detections_select_all ON detections FOR SELECT TO PUBLIC USING (true);

DROP POLICY IF EXISTS heartbeats_select_all ON heartbeats;
CREATE POLICY heartbeats_select_all ON heartbeats FOR SELECT TO PUBLIC USING (true);

-- No UPDATE or DELETE policy: for any role but the owner and superusers, updates and deletes
-- touch no row even where the privilege was granted (row-level security's default deny).
