-- soundscape-agent outbox (SQLite) schema, version 4: events (records.Gap, records.ClockStep as
-- JSON) delivered by the sync; the keys of windows evicted before they were synced (the eviction
-- policy's hard cap), kept as proof.
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 4. Never
-- edit a released migration: add the next NNNN_<name>.sql file.
-- The statements keep the indentation they had as Python strings in agent/store.py: SQLite keeps
-- each CREATE statement's text in sqlite_master, so queues created before and after the move have
-- byte-identical schemas.

    CREATE TABLE events (
        event_id   TEXT PRIMARY KEY,                    -- UUID, the idempotency key
        kind       TEXT NOT NULL,                       -- 'gap' | 'clock_step'
        time       TEXT NOT NULL,                       -- ISO-8601 UTC
        payload    TEXT NOT NULL,                       -- JSON of the record
        synced_at  TEXT                                 -- server commit time, NULL until synced
    );
    CREATE INDEX events_unsynced ON events (time) WHERE synced_at IS NULL;
    CREATE TABLE evicted (
        key         TEXT PRIMARY KEY,                   -- the window's key
        start_time  TEXT NOT NULL,                      -- ISO-8601 UTC
        evicted_at  TEXT NOT NULL,                      -- ISO-8601 UTC
        reason      TEXT NOT NULL                       -- 'queue_full' | 'disk_full'
    ) WITHOUT ROWID;
