"""The outbox's SQLite schema: the migrations ``agent/sql/sqlite/NNNN_<name>.sql``, applied in
order and versioned with ``PRAGMA user_version``.

Migration ``N`` brings a file from ``user_version`` N-1 to N. Never edit a released file: add
the next one. Every step is plain SQL (no Python hook).
"""

from __future__ import annotations

import importlib.resources
import logging
import re
import sqlite3
from pathlib import Path

from agent.errors import StoreError

log = logging.getLogger("agent.store")

_MIGRATION_FILE = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


def _load_migrations() -> tuple[str, ...]:
    """The SQL of every ``agent/sql/sqlite/NNNN_*.sql``, by number (index i: version i+1).

    Raises:
        RuntimeError: there are none, or they are not numbered 0001, 0002, ... without gaps (a
            packaging or editing mistake).
    """
    folder = importlib.resources.files("agent").joinpath("sql").joinpath("sqlite")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION_FILE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _ in found]
    if not versions or versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"agent/sql/sqlite migrations must be numbered 0001, 0002, ... without gaps: {versions}")
    return tuple(sql for _, sql in found)


# Schema migrations, applied in order; index i brings the file from user_version i to i+1.
_MIGRATIONS: tuple[str, ...] = _load_migrations()

#: Schema version this code writes and reads (``PRAGMA user_version``).
SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the open connection's file to :data:`SCHEMA_VERSION`, one migration per transaction.

    Args:
        conn: the outbox's connection (``isolation_level=None``, no transaction open).
        path: the queue file, for messages.

    Raises:
        StoreError: the file has a newer schema (written by a newer agent); nothing is changed.
        sqlite3.Error: a migration failed (it is rolled back; earlier ones stay applied).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"outbox {path} has schema version {version}, this agent knows up to {SCHEMA_VERSION}",
            "it was written by a newer soundscape-agent: upgrade the agent, or set [store] path to a new file",
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        # executescript() commits any open transaction first, so the whole migration,
        # its BEGIN and the version bump go into one script.
        script = f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target - 1]}\nPRAGMA user_version = {target};\nCOMMIT;"
        try:
            conn.executescript(script)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("outbox %s: schema migrated to version %d", path, target)
