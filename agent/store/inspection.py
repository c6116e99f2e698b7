"""Queue statistics, and a read-only look at a queue file beside the running agent."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.store.codec import _from_text
from agent.store.db import BUSY_TIMEOUT_MS


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
    """

    windows_total: int
    unsynced: int
    oldest_unsynced_start: datetime | None
    skipped_total: int
    xruns_total: int


def _queue_stats(conn: sqlite3.Connection) -> QueueStats:
    """:class:`QueueStats` of an open connection (the outbox's, or a read-only one)."""
    total, unsynced, oldest, skipped, xruns = conn.execute(
        "SELECT count(*),"
        " count(*) FILTER (WHERE synced_at IS NULL),"
        " min(start_time) FILTER (WHERE synced_at IS NULL),"
        " count(*) FILTER (WHERE status = 'skipped_backlog'),"
        " coalesce(sum(xruns), 0)"
        " FROM windows"
    ).fetchone()
    return QueueStats(
        windows_total=int(total),
        unsynced=int(unsynced),
        oldest_unsynced_start=_from_text(oldest) if oldest is not None else None,
        skipped_total=int(skipped),
        xruns_total=int(xruns),
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
