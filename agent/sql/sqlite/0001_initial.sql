-- soundscape-agent outbox (SQLite) schema, version 1: the initial schema: windows and their
-- detections.
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 1. Never
-- edit a released migration: add the next NNNN_<name>.sql file.
-- The statements keep the indentation they had as Python strings in agent/store.py: SQLite keeps
-- each CREATE statement's text in sqlite_master, so queues created before and after the move have
-- byte-identical schemas.

    CREATE TABLE windows (
        key                 TEXT PRIMARY KEY,
        device_id           TEXT NOT NULL,
        window_index        INTEGER NOT NULL,
        start_time          TEXT NOT NULL,              -- ISO-8601 UTC, microseconds
        duration_s          REAL NOT NULL CHECK (duration_s > 0),
        sample_rate         INTEGER NOT NULL CHECK (sample_rate > 0),
        clock_synchronised  INTEGER NOT NULL CHECK (clock_synchronised IN (0, 1)),
        xruns               INTEGER NOT NULL CHECK (xruns >= 0),
        leq_db              REAL,                       -- NULL stands for NaN
        leq_series_db       TEXT NOT NULL,              -- JSON array of floats
        peak_dbfs           REAL,                       -- NULL stands for NaN
        status              TEXT NOT NULL,              -- records.Status value (not CHECKed:
                                                        -- new statuses need no migration)
        model_id            TEXT,
        model_hash          TEXT,
        model_backend       TEXT,
        model_is_scaffold   INTEGER CHECK (model_is_scaffold IN (0, 1)),
        stored_at           TEXT NOT NULL,              -- ISO-8601 UTC, when put() ran
        sync_id             TEXT,                       -- NULL until synced
        synced_at           TEXT                        -- server commit time, NULL until synced
    );
    CREATE INDEX windows_unsynced ON windows (start_time, key) WHERE synced_at IS NULL;
    CREATE TABLE detections (
        window_key   TEXT NOT NULL REFERENCES windows (key) ON DELETE CASCADE,
        rank         INTEGER NOT NULL CHECK (rank >= 1),
        label        TEXT NOT NULL,
        label_index  INTEGER NOT NULL CHECK (label_index >= 0),
        score        REAL NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
        PRIMARY KEY (window_key, rank)
    ) WITHOUT ROWID;
