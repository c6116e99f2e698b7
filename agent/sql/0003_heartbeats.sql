-- Heartbeats: one health row per device every [ops] heartbeat_interval_s (default 5 min),
-- queued in the device's SQLite outbox like windows and delivered by the same sync, exactly
-- once (heartbeat_id is generated on the device; inserts are ON CONFLICT DO NOTHING).

CREATE TABLE IF NOT EXISTS heartbeats (
    heartbeat_id            uuid PRIMARY KEY,
    device                  text NOT NULL,
    time                    timestamptz NOT NULL,
    uptime_s                double precision NOT NULL CHECK (uptime_s >= 0),
    windows                 bigint NOT NULL CHECK (windows >= 0),
    classified              bigint NOT NULL CHECK (classified >= 0),
    skipped                 bigint NOT NULL CHECK (skipped >= 0),
    failed                  bigint NOT NULL CHECK (failed >= 0),
    xruns                   bigint NOT NULL CHECK (xruns >= 0),
    queue_depth             bigint NOT NULL CHECK (queue_depth >= 0),
    oldest_unsynced_start   timestamptz,
    last_sync_at            timestamptz,
    cpu_temp_c              real,
    throttled               integer,
    throttle_flags          text[] NOT NULL DEFAULT '{}',
    disk_free_bytes         bigint,
    disk_total_bytes        bigint,
    clock_synchronised      boolean NOT NULL,
    rss_bytes               bigint,
    peak_rss_bytes          bigint,
    model_id                text,
    model_hash              text,
    agent_version           text NOT NULL,
    sync_time               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS heartbeats_device_time ON heartbeats (device, time DESC);

COMMENT ON TABLE heartbeats IS 'Device health, every few minutes: counters since the agent started, queue, host state.';
COMMENT ON COLUMN heartbeats.uptime_s IS 'Seconds since this agent process started.';
COMMENT ON COLUMN heartbeats.windows IS 'Windows analysed and stored since the agent started (classified, skipped, failed: of those).';
COMMENT ON COLUMN heartbeats.queue_depth IS 'Windows in the device outbox not yet delivered when the heartbeat was taken.';
COMMENT ON COLUMN heartbeats.last_sync_at IS 'Server time of the last successful delivery before the heartbeat.';
COMMENT ON COLUMN heartbeats.throttled IS 'Raspberry Pi firmware get_throttled bits; NULL off a Pi.';
COMMENT ON COLUMN heartbeats.cpu_temp_c IS 'SoC temperature, degrees Celsius; NULL where the host has no thermal zone.';

-- The latest heartbeat of every device: what a fleet dashboard polls.
CREATE OR REPLACE VIEW device_status AS
SELECT DISTINCT ON (device) device, time, now() - time AS age, uptime_s, windows, skipped, xruns,
       queue_depth, last_sync_at, cpu_temp_c, throttle_flags, disk_free_bytes, clock_synchronised,
       rss_bytes, model_id
FROM heartbeats
ORDER BY device, time DESC;
