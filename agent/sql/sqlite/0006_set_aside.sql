-- soundscape-agent outbox (SQLite) schema, version 6: rows the server refused permanently.
-- A window, event or heartbeat that the server refuses with an error that replaying it cannot
-- cure (a constraint, row-level security), while the rows beside it are accepted, is set aside:
-- kept in the queue with the time and the server's message, no longer offered to the sync (so
-- everything after it flows), counted in heartbeats and shown by `soundscape-agent diagnose`.
-- Each start of the agent offers set-aside rows once more (after a fix on the server).
-- Applied by agent.store.schema.migrate() in one transaction, with PRAGMA user_version = 6. Never
-- edit a released migration: add the next NNNN_<name>.sql file.

    ALTER TABLE windows ADD COLUMN refused_at TEXT;     -- ISO-8601 UTC when set aside, NULL: deliverable
    ALTER TABLE windows ADD COLUMN refused TEXT;        -- the server's message
    ALTER TABLE events ADD COLUMN refused_at TEXT;
    ALTER TABLE events ADD COLUMN refused TEXT;
    ALTER TABLE heartbeats ADD COLUMN refused_at TEXT;
    ALTER TABLE heartbeats ADD COLUMN refused TEXT;
