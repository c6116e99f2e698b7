-- soundscape-agent outbox (SQLite) schema, version 5: several classifiers per window (AST and
-- BirdNET): each detection says whose label set it belongs to (taxonomy; ranks count per taxonomy)
-- and which part of the window gave it (offset_s); the window keeps every classifier's model
-- (models, JSON list of records.ModelInfo; the schema-1 model_* columns keep the first) and status
-- (classifier_status, JSON object taxonomy -> records.Status value). NULL for older rows.
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 5. Never
-- edit a released migration: add the next NNNN_<name>.sql file.
-- The statements keep the indentation they had as Python strings in agent/store.py: SQLite keeps
-- each CREATE statement's text in sqlite_master, so queues created before and after the move have
-- byte-identical schemas.

    ALTER TABLE windows ADD COLUMN models TEXT;
    ALTER TABLE windows ADD COLUMN classifier_status TEXT;
    CREATE TABLE detections_v5 (
        window_key   TEXT NOT NULL REFERENCES windows (key) ON DELETE CASCADE,
        taxonomy     TEXT NOT NULL,                     -- 'audioset' | 'birdnet'
        rank         INTEGER NOT NULL CHECK (rank >= 1),
        label        TEXT NOT NULL,
        label_index  INTEGER NOT NULL CHECK (label_index >= 0),
        score        REAL NOT NULL CHECK (score >= 0.0 AND score <= 1.0),
        offset_s     REAL,                              -- s from the window's start; NULL: whole window
        PRIMARY KEY (window_key, taxonomy, rank)
    ) WITHOUT ROWID;
    INSERT INTO detections_v5 (window_key, taxonomy, rank, label, label_index, score)
        SELECT window_key, 'audioset', rank, label, label_index, score FROM detections;
    DROP TABLE detections;
    ALTER TABLE detections_v5 RENAME TO detections;
