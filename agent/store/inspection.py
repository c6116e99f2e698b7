"""Queue statistics, a read-only look at a queue file beside the running agent, and at the
damaged queue files moved aside beside it."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.store.codec import _from_text
from agent.store.db import BUSY_TIMEOUT_MS

#: A damaged queue file moved aside is named ``<queue file name>.damaged-<UTC time>`` (its
#: -wal/-shm beside it under the same name plus ``-wal``/``-shm``, as SQLite expects them).
DAMAGED_INFIX = ".damaged-"
_DAMAGED_TIME = "%Y%m%dT%H%M%SZ"
#: Seconds a read-only count of a damaged file's windows may take (a large file on an SD card).
COUNT_DAMAGED_S = 10.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot of the outbox, for ``status`` output and health logs.

    Attributes:
        windows_total: windows stored (synced or not).
        unsynced: windows not yet confirmed by the server.
        oldest_unsynced_start: start time (UTC, tz-aware) of the oldest unsynced window,
            ``None`` when everything is synced.
        skipped_total: stored windows whose classification was skipped (analysis backlog).
        xruns_total: capture overruns summed over the stored windows.
        set_aside: windows, events and heartbeats the server refused permanently, kept in the
            queue and no longer offered to it (not counted in ``unsynced``).
    """

    windows_total: int
    unsynced: int
    oldest_unsynced_start: datetime | None
    skipped_total: int
    xruns_total: int
    set_aside: int = 0


#: The queue tables whose rows can be set aside, each with its key column.
SET_ASIDE_TABLES = {"windows": "key", "events": "event_id", "heartbeats": "heartbeat_id"}


def _queue_stats(conn: sqlite3.Connection) -> QueueStats:
    """:class:`QueueStats` of an open connection (the outbox's, or a read-only one of a file
    the agent has not migrated yet: before schema 6 nothing is set aside)."""
    has_set_aside = any(row[1] == "refused_at" for row in conn.execute("PRAGMA table_info(windows)"))
    pending = "synced_at IS NULL AND refused_at IS NULL" if has_set_aside else "synced_at IS NULL"
    total, unsynced, oldest, skipped, xruns = conn.execute(
        "SELECT count(*),"
        f" count(*) FILTER (WHERE {pending}),"
        f" min(start_time) FILTER (WHERE {pending}),"
        " count(*) FILTER (WHERE status = 'skipped_backlog'),"
        " coalesce(sum(xruns), 0)"
        " FROM windows"
    ).fetchone()
    set_aside = sum(conn.execute(f"SELECT count(*) FROM {table} WHERE refused_at IS NOT NULL AND synced_at IS NULL"
                                 ).fetchone()[0] for table in SET_ASIDE_TABLES) if has_set_aside else 0
    return QueueStats(
        windows_total=int(total),
        unsynced=int(unsynced),
        oldest_unsynced_start=_from_text(oldest) if oldest is not None else None,
        skipped_total=int(skipped),
        xruns_total=int(xruns),
        set_aside=int(set_aside),
    )


@dataclass(frozen=True, slots=True)
class QueueInspection:
    """What a read-only look at a queue file found (:func:`inspect_queue`).

    Attributes:
        quick_check: ``PRAGMA quick_check`` rows (``["ok"]`` when intact; at most 5 kept).
        stats: :class:`QueueStats`, or ``None`` when the file is damaged.
        latest_health: the newest window's microphone health (``start_time`` plus the
            :class:`~agent.records.MicHealth` fields), or ``None`` (no window, or stored
            before schema 2).
        evicted_unsynced: windows ever evicted from the file before they were synced.
        latest_heartbeat: the newest queued :class:`~agent.records.Heartbeat` (its JSON
            fields: ``time``, ``degraded``, ...), or ``None``.
    """

    quick_check: list[str]
    stats: QueueStats | None
    latest_health: dict[str, Any] | None
    evicted_unsynced: int = 0
    latest_heartbeat: dict[str, Any] | None = None


def inspect_queue(path: Path) -> QueueInspection:
    """Look at a queue file without writing, locking or checkpointing it (``mode=ro``), so it
    is safe beside the running agent (SQLite 3.40's WAL-reset bug needs two *writers*).

    Raises:
        sqlite3.Error: the file is not an SQLite database or cannot be read.
    """
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        integrity = [r[0] for r in con.execute("PRAGMA quick_check").fetchall()]
        if integrity != ["ok"]:
            return QueueInspection(integrity[:5], None, None)
        stats = _queue_stats(con)
        row = con.execute("SELECT start_time, indicators FROM windows ORDER BY start_time DESC LIMIT 1").fetchone()
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        evicted = con.execute("SELECT count(*) FROM evicted").fetchone()[0] if "evicted" in tables else 0
        beat = (con.execute("SELECT payload FROM heartbeats ORDER BY time DESC LIMIT 1").fetchone()
                if "heartbeats" in tables else None)
    finally:
        con.close()
    health = json.loads(row[1]).get("health") if row is not None and row[1] is not None else None
    return QueueInspection(integrity, stats, {"start_time": row[0], **health} if health else None,
                           evicted_unsynced=int(evicted), latest_heartbeat=json.loads(beat[0]) if beat else None)


def damaged_name(path: Path, moved_at: datetime) -> Path:
    """Where the queue file ``path`` is moved when found damaged at ``moved_at`` (UTC)."""
    return path.with_name(f"{path.name}{DAMAGED_INFIX}{moved_at.astimezone(timezone.utc):{_DAMAGED_TIME}}")


def damaged_queues(path: Path) -> list[tuple[Path, datetime]]:
    """The damaged queue files moved aside beside the queue file ``path`` (not their -wal or
    -shm), each with the UTC time it was moved aside (from its name), oldest first."""
    prefix = path.name + DAMAGED_INFIX
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    found = []
    for name in names:
        if name.endswith(("-wal", "-shm", "-journal")):
            continue
        try:
            moved_at = datetime.strptime(name[len(prefix):len(prefix) + 16], _DAMAGED_TIME).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        found.append((path.parent / name, moved_at))
    return sorted(found, key=lambda f: (f[1], f[0].name))


@dataclass(frozen=True, slots=True)
class QueueReplacement:
    """A damaged queue file the agent moved aside, replacing it by a fresh queue, and what
    could be learnt of it read-only (:attr:`~agent.store.Outbox.replaced`).

    Attributes:
        path: where the damaged file lies now (``<queue>.damaged-<UTC time>``).
        moved_at: when it was moved aside, UTC.
        error: the SQLite error that showed the damage, e.g. ``file is not a database [SQLITE_NOTADB]``.
        size_bytes: its size, bytes (its -wal, moved beside it, not included).
        windows: its windows, counted read-only; ``None`` when they could not be read.
        unsynced: of those, the ones not yet synced (the server never got them); ``None`` likewise.
        first_start: start of its oldest unsynced window (UTC), ``None`` when unknown or none.
        last_end: end of its newest unsynced window (UTC), ``None`` likewise.
    """

    path: Path
    moved_at: datetime
    error: str
    size_bytes: int
    windows: int | None = None
    unsynced: int | None = None
    first_start: datetime | None = None
    last_end: datetime | None = None

    def detail(self) -> str:
        """One sentence for people: what happened and what is known (the gap's detail)."""
        out = (f"queue file damaged ({self.error}): moved aside to {self.path.name} ({self.size_bytes} bytes, kept "
               "for inspection) and a fresh queue started; ")
        if self.windows is None:
            return out + "its windows could not be read"
        out += f"{self.windows} windows, {self.unsynced} of them not synced, counted read-only"
        if self.first_start is not None and self.last_end is not None:
            out += (f"; the unsynced ones from {self.first_start.isoformat(timespec='seconds')} to "
                    f"{self.last_end.isoformat(timespec='seconds')}")
        return out


def read_only_error(path: Path) -> sqlite3.Error | None:
    """Read what opening the queue reads (its schema, its version) through a read-only
    connection, which never writes, checkpoints or deletes anything of the file (a read-write
    connection to a damaged file deletes the WAL beside it when it closes).

    Returns:
        The error reading raised (e.g. SQLITE_NOTADB, SQLITE_CORRUPT, or SQLITE_IOERR_SHMSIZE on
        a full disk), or ``None`` when it read fine.
    """
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        return err
    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        con.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as err:
        return err
    finally:
        con.close()
    return None


def count_damaged(path: Path, budget_s: float = COUNT_DAMAGED_S
                  ) -> tuple[int, int, datetime | None, datetime | None] | None:
    """Count what is readable of a damaged queue file, read-only (``mode=ro``: the file itself
    is never written), within ``budget_s`` seconds.

    Returns:
        (windows, unsynced windows, start of the oldest unsynced, end of the newest unsynced),
        or ``None`` when its windows cannot be read (not a database, damaged pages, too slow).
    """
    deadline = time.monotonic() + budget_s
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error:
        return None
    try:
        con.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        total, unsynced, first = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE synced_at IS NULL),"
            " min(start_time) FILTER (WHERE synced_at IS NULL) FROM windows").fetchone()
        last = con.execute("SELECT start_time, duration_s FROM windows WHERE synced_at IS NULL"
                           " ORDER BY start_time DESC LIMIT 1").fetchone()
        first_start = _from_text(first) if first is not None else None
        last_end = _from_text(last[0]) + timedelta(seconds=float(last[1])) if last is not None else None
    except (sqlite3.Error, ValueError, TypeError):
        return None
    finally:
        con.close()
    return int(total), int(unsynced), first_start, last_end
