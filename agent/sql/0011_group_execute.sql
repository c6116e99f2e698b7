-- soundscape-agent central schema, version 11: EXECUTE on the row-level security functions
-- held through a group role, not granted to each device role.
-- compatible-from: 10
-- Until version 10 a new device_roles row granted its role EXECUTE on the SECURITY DEFINER
-- functions of 0008 and 0009 (soundscape_may_write, soundscape_may_write_window,
-- soundscape_window_device). The policies call them for every row a device inserts, and every
-- call checks the function's ACL: with one entry per device role that check grows with the
-- fleet (10,000 roles: a batch of 200 windows and 1,000 detections cost 314 ms of server CPU,
-- 140 ms with the grant held by one group role; docs/performance.md, "Fleet: the central database").
-- Now the trigger grants EXECUTE to the role only when it does not already hold it, e.g. as an
-- INHERIT member of a role that has it (deploy/db.yml's device group role, granted before the
-- device_roles rows are written). Existing direct grants are taken back from each mapped role
-- that still holds the privilege without them. Nothing else changes: agents of schema 10 keep
-- syncing. Idempotent.

CREATE OR REPLACE FUNCTION device_roles_execute_grants() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    functions CONSTANT text := 'public.soundscape_may_write(name, text), '
        'public.soundscape_may_write_window(name, text), public.soundscape_window_device(name, text)';
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = NEW.role_name) THEN
            RAISE EXCEPTION 'device_roles: role "%" does not exist', NEW.role_name
                USING ERRCODE = 'undefined_object', HINT = 'create the role first (deploy/db.yml does)';
        END IF;
        IF NOT (has_function_privilege(NEW.role_name, 'public.soundscape_may_write(name, text)', 'EXECUTE')
                AND has_function_privilege(NEW.role_name, 'public.soundscape_may_write_window(name, text)', 'EXECUTE')
                AND has_function_privilege(NEW.role_name, 'public.soundscape_window_device(name, text)', 'EXECUTE')) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', functions, NEW.role_name);
        END IF;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE')
       AND NOT EXISTS (SELECT 1 FROM public.device_roles WHERE role_name = OLD.role_name)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = OLD.role_name) THEN
        -- the role's own grant only: one held through a group stays with the group
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', functions, OLD.role_name);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION device_roles_execute_grants() IS
    'Row-level security: a role mapped in device_roles gets EXECUTE on soundscape_may_write* and soundscape_window_device unless it holds it already (e.g. through a group role), and loses its own grant with its last row.';

-- Move the existing direct grants: take each mapped role's own entry, give it back only where
-- the role does not hold the privilege otherwise.
DO $$
DECLARE
    functions CONSTANT text := 'public.soundscape_may_write(name, text), '
        'public.soundscape_may_write_window(name, text), public.soundscape_window_device(name, text)';
    r name;
BEGIN
    FOR r IN SELECT DISTINCT p.rolname
             FROM pg_catalog.pg_proc AS f, aclexplode(f.proacl) AS a, pg_catalog.pg_roles AS p
             WHERE f.oid IN ('public.soundscape_may_write(name, text)'::regprocedure,
                             'public.soundscape_may_write_window(name, text)'::regprocedure,
                             'public.soundscape_window_device(name, text)'::regprocedure)
               AND a.grantee = p.oid AND a.privilege_type = 'EXECUTE'
               AND p.rolname IN (SELECT role_name FROM public.device_roles)
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %I', functions, r);
        IF NOT (has_function_privilege(r, 'public.soundscape_may_write(name, text)', 'EXECUTE')
                AND has_function_privilege(r, 'public.soundscape_may_write_window(name, text)', 'EXECUTE')
                AND has_function_privilege(r, 'public.soundscape_window_device(name, text)', 'EXECUTE')) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', functions, r);
        END IF;
    END LOOP;
END
$$;
