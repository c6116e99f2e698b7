-- soundscape-agent central schema, version 5: what went wrong in the field, stated explicitly.
-- Applied by agent.sync.migrate() in one transaction, once; idempotent on its own as well.
--
-- gaps: stretches of time without windows and why (microphone lost until it returned,
-- windows evicted unsynced by the device's eviction policy, windows not storable), so that
-- missing data never reads as silence. clock_steps: jumps of a device's wall clock; window
-- times follow the sample count, so they are NOT shifted by a step: this table says by how
-- much the wall clock disagreed from then on. Both are queued on the device like windows and
-- delivered exactly once (device-made event_id, target-less ON CONFLICT DO NOTHING).
-- Heartbeats gain the device's degraded state and eviction counters.

CREATE TABLE IF NOT EXISTS gaps (
    event_id    uuid PRIMARY KEY,
    device      text NOT NULL,
    start_time  timestamptz NOT NULL,
    end_time    timestamptz NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    windows     integer NOT NULL DEFAULT 0 CHECK (windows >= 0),
    sync_time   timestamptz NOT NULL DEFAULT now(),
    CHECK (end_time >= start_time)
);
CREATE INDEX IF NOT EXISTS gaps_device_start ON gaps (device, start_time);

COMMENT ON TABLE gaps IS 'Time without windows and why (soundscape-agent): capture_lost, evicted_unsynced, store_failed.';
COMMENT ON COLUMN gaps.start_time IS 'End of the last audio before the gap (UTC, on the capture''s sample-count timeline).';
COMMENT ON COLUMN gaps.end_time IS 'Start of the first audio after the gap (UTC).';
COMMENT ON COLUMN gaps.windows IS 'Windows lost in the gap where known (evictions, store failures), else 0.';

CREATE TABLE IF NOT EXISTS clock_steps (
    event_id            uuid PRIMARY KEY,
    device              text NOT NULL,
    detected_at         timestamptz NOT NULL,
    step_s              double precision NOT NULL,
    clock_synchronised  boolean NOT NULL,
    sync_time           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS clock_steps_device_time ON clock_steps (device, detected_at);

COMMENT ON TABLE clock_steps IS 'Jumps of a device''s wall clock (NTP step, date -s); window times are not shifted by them.';
COMMENT ON COLUMN clock_steps.step_s IS 'The jump, s: positive = the wall clock moved forward.';
COMMENT ON COLUMN clock_steps.detected_at IS 'Device wall-clock time just after the step.';

ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS degraded text[] NOT NULL DEFAULT '{}';
ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS evicted_unsynced bigint NOT NULL DEFAULT 0;
ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS evicted_synced bigint NOT NULL DEFAULT 0;
ALTER TABLE heartbeats ADD COLUMN IF NOT EXISTS dropped_windows bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN heartbeats.degraded IS
    'Why the device is degraded: disk_low, queue_full, store_failed, capture_lost, sync_failing (empty: healthy).';
COMMENT ON COLUMN heartbeats.evicted_unsynced IS 'Windows ever evicted from the device queue before they were synced.';

-- device_status gains the degraded state (columns may only be appended to a view), and takes
-- the newest heartbeat by delivery, not by the device's wall clock, which may have been
-- stepped back (then the newest heartbeat carries an older time).
CREATE OR REPLACE VIEW device_status AS
SELECT DISTINCT ON (device) device, time, now() - time AS age, uptime_s, windows, skipped, xruns,
       queue_depth, last_sync_at, cpu_temp_c, throttle_flags, disk_free_bytes, clock_synchronised,
       rss_bytes, model_id, degraded, evicted_unsynced, dropped_windows
FROM heartbeats
ORDER BY device, sync_time DESC, uptime_s DESC;

-- Row-level security as in 0004: a device role inserts only its own devices' events.
ALTER TABLE gaps ENABLE ROW LEVEL SECURITY;
ALTER TABLE clock_steps ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS gaps_insert_own_device ON gaps;
CREATE POLICY gaps_insert_own_device ON gaps FOR INSERT
    WITH CHECK (soundscape_may_write(current_user, device));
DROP POLICY IF EXISTS gaps_select_all ON gaps;
CREATE POLICY gaps_select_all ON gaps FOR SELECT USING (true);
DROP POLICY IF EXISTS clock_steps_insert_own_device ON clock_steps;
CREATE POLICY clock_steps_insert_own_device ON clock_steps FOR INSERT
    WITH CHECK (soundscape_may_write(current_user, device));
DROP POLICY IF EXISTS clock_steps_select_all ON clock_steps;
CREATE POLICY clock_steps_select_all ON clock_steps FOR SELECT USING (true);
