-- soundscape-agent outbox (SQLite) schema, version 2: noise indicators, bands, acoustic indices,
-- microphone health and calibration provenance (one JSON document per window: the outbox is a
-- queue, not a query store); the calibrations measured by `soundscape-agent calibrate`.
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 2. Never
-- edit a released migration: add the next NNNN_<name>.sql file.
-- The statements keep the indentation they had as Python strings in agent/store.py: SQLite keeps
-- each CREATE statement's text in sqlite_master, so queues created before and after the move have
-- byte-identical schemas.

    ALTER TABLE windows ADD COLUMN indicators TEXT;     -- JSON, see _indicators_json(); NULL
                                                        -- for windows stored by schema 1
    CREATE TABLE calibrations (
        id               INTEGER PRIMARY KEY,
        measured_at      TEXT NOT NULL,                 -- ISO-8601 UTC
        reference_db     REAL NOT NULL,                 -- calibrator level, dB re 20 uPa
        offset_db        REAL NOT NULL,                 -- reference - nominal measured level
        sensitivity_dbv  REAL NOT NULL,
        gain_db          REAL NOT NULL,
        vadc             REAL NOT NULL,
        frequency_hz     REAL NOT NULL,
        source           TEXT NOT NULL                  -- the capture device it was measured on
    );
