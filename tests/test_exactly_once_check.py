"""The fault suite's exactly-once check (:func:`tests.faultkit.check_delivery`) can fail.

Real PostgreSQL (tests/pg.py), a real SQLite outbox (:class:`agent.store.Outbox`) and the real
:class:`agent.sync.Syncer`; idempotency is broken on purpose and the check must say
"duplicated":

* a lost acknowledgement (the windows marked unsynced again in the SQLite file, as if the power
  went between the server's COMMIT and the local mark) replayed to a server whose primary key
  on ``windows`` was dropped, so that ``ON CONFLICT DO NOTHING`` no longer fires; the same
  replay to the intact server passes;
* a delivered window queued again under a new key (another capture stream's prefix): the same
  device and start time under two keys, which no key on the server can catch.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from agent.config import StoreConfig, SyncConfig
from agent.records import WindowResult
from agent.store import Outbox
from agent.sync import Syncer
from tests.factories import make_results
from tests.faultkit import check_delivery

DEVICE = "moth-once"


def sync_cfg(dsn: str) -> SyncConfig:
    return SyncConfig(dsn=dsn, batch_size=3, connect_timeout_s=5, statement_timeout_s=10, interval_s=0.2,
                      backoff_initial_s=0.05, backoff_max_s=0.3, final_timeout_s=5)


def queue(db: Path, results: list[WindowResult]) -> None:
    """Commit ``results`` to the outbox at ``db`` (created if missing)."""

    async def main() -> None:
        async with Outbox(StoreConfig(path=db)) as ob:
            for r in results:
                assert await ob.put(r) is True

    asyncio.run(main())


def sync(db: Path, dsn: str) -> int:
    """One sync round of the real Syncer from ``db`` to ``dsn``; returns the windows it sent."""

    async def main() -> int:
        async with Outbox(StoreConfig(path=db)) as ob:
            return await Syncer(sync_cfg(dsn), ob).sync_once()

    return asyncio.run(main())


def lose_acknowledgements(db: Path) -> int:
    """Mark every window unsynced again, as if the power went between the server's COMMIT and the
    local mark; returns how many."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        return con.execute("UPDATE windows SET synced_at = NULL, sync_id = NULL WHERE synced_at IS NOT NULL").rowcount
    finally:
        con.close()


def drop_window_key(dsn: str) -> str:
    """Drop the primary key of ``windows`` (whatever its columns; CASCADE takes the detections'
    foreign key with it) and check that no unique index is left for ``ON CONFLICT`` to fire on.
    Returns the constraint's name."""
    with psycopg.connect(dsn, autocommit=True) as con:
        (name,) = con.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'windows'::regclass"
                              " AND contype = 'p'").fetchone()
        con.execute(sql.SQL("ALTER TABLE windows DROP CONSTRAINT {} CASCADE").format(sql.Identifier(name)))
        (unique,) = con.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'windows'::regclass"
                                " AND indisunique").fetchone()
    assert unique == 0, "windows still has a unique index: ON CONFLICT DO NOTHING would still fire"
    return str(name)


def requeue_under_new_key(db: Path, key: str, new_key: str) -> None:
    """Copy window ``key`` (and its detections) in the outbox as ``new_key``, unsynced: the same
    window queued a second time under another key."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        for table, key_column, reset in (("windows", "key", ("sync_id", "synced_at")),
                                         ("detections", "window_key", ())):
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            values = ["?" if c == key_column else "NULL" if c in reset else c for c in cols]
            con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(values)} FROM {table}"
                        f" WHERE {key_column} = ?", (new_key, key))
        con.execute("COMMIT")
    finally:
        con.close()


def server_rows(dsn: str) -> tuple[int, int, int]:
    """(rows, distinct keys, distinct start times) of :data:`DEVICE` in ``windows``."""
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT count(*), count(DISTINCT window_key), count(DISTINCT start_time) FROM windows"
                           " WHERE device = %s", (DEVICE,)).fetchone()


def test_a_lost_acknowledgement_replayed_to_the_idempotent_server_passes_the_check(migrated_dsn, tmp_path):
    """The control: the replay after a lost acknowledgement inserts nothing (the server's key
    makes ON CONFLICT DO NOTHING skip every row) and the check passes."""
    db = tmp_path / "queue.db"
    queue(db, make_results(5, device=DEVICE))
    assert sync(db, migrated_dsn) == 5
    assert lose_acknowledgements(db) == 5
    assert sync(db, migrated_dsn) == 5  # sent again ...
    assert server_rows(migrated_dsn) == (5, 5, 5)  # ... and skipped
    d = check_delivery(db, migrated_dsn, DEVICE)
    assert d.duplicated == 0 and len(d.remote) == 5


def test_a_lost_acknowledgement_replayed_without_the_servers_key_fails_the_check(migrated_dsn, tmp_path):
    """Idempotency broken on the server: with no primary key on ``windows`` the replay after a
    lost acknowledgement stores every window a second time, and the check fails on it."""
    db = tmp_path / "queue.db"
    queue(db, make_results(5, device=DEVICE))
    assert sync(db, migrated_dsn) == 5
    check_delivery(db, migrated_dsn, DEVICE)  # exactly once so far
    drop_window_key(migrated_dsn)
    assert lose_acknowledgements(db) == 5
    assert sync(db, migrated_dsn) == 5
    assert server_rows(migrated_dsn) == (10, 5, 5)  # every window twice, under its own key
    with pytest.raises(AssertionError, match=r"^5 duplicated windows in PostgreSQL"):
        check_delivery(db, migrated_dsn, DEVICE)


def test_a_window_queued_again_under_a_new_key_fails_the_check(migrated_dsn, tmp_path):
    """Idempotency broken on the device: a delivered window queued again under another stream's
    key is delivered again (no key on the server can tell), the same device and start time
    under two keys, and the check fails on it. Two streams of one device at different times
    (a restart) pass."""
    db = tmp_path / "queue.db"
    first, restarted = make_results(3, device=DEVICE, stream="s1"), make_results(6, device=DEVICE, stream="s2")[3:]
    queue(db, first + restarted)
    assert sync(db, migrated_dsn) == 6
    assert check_delivery(db, migrated_dsn, DEVICE).duplicated == 0
    requeue_under_new_key(db, "s1-1", "s7-1")
    assert sync(db, migrated_dsn) == 1
    assert server_rows(migrated_dsn) == (7, 7, 6)
    with psycopg.connect(migrated_dsn) as con:
        twice = con.execute("SELECT array_agg(window_key ORDER BY window_key) FROM windows WHERE device = %s"
                            " GROUP BY start_time HAVING count(*) > 1", (DEVICE,)).fetchall()
    assert twice == [(["s1-1", "s7-1"],)]
    with pytest.raises(AssertionError, match=r"^1 duplicated windows in PostgreSQL") as err:
        check_delivery(db, migrated_dsn, DEVICE)
    assert f"{DEVICE} " in str(err.value) and "['s1-1', 's7-1']" in str(err.value), err.value
