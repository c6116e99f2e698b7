-- soundscape-agent outbox (SQLite) schema, version 3: heartbeats (records.Heartbeat as JSON),
-- delivered by the sync like windows.
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 3. Never
-- edit a released migration: add the next NNNN_<name>.sql file.
-- The statements keep the indentation they had as Python strings in agent/store.py: SQLite keeps
-- each CREATE statement's text in sqlite_master, so queues created before and after the move have
-- byte-identical schemas.

    CREATE TABLE heartbeats (
        heartbeat_id  TEXT PRIMARY KEY,                 -- UUID, the idempotency key
        time          TEXT NOT NULL,                    -- ISO-8601 UTC
        payload       TEXT NOT NULL,                    -- JSON of records.Heartbeat
        synced_at     TEXT                              -- server commit time, NULL until synced
    );
    CREATE INDEX heartbeats_unsynced ON heartbeats (time) WHERE synced_at IS NULL;
