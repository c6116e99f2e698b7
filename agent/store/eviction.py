"""The outbox's eviction policy (see :class:`~agent.config.StoreConfig`): retention of synced
windows, low-disk relief, the reserve file ``<queue>.reserve``, the hard cap
``[store] max_queue_mb`` and, last, eviction of unsynced windows recorded in a gap."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from agent.config import StoreConfig
from agent.records import Gap
from agent.store.codec import _from_text, _record_from_json, _record_json, _to_text
from agent.store.db import MB, WAL_AUTOCHECKPOINT_PAGES, in_transaction
from agent.store.inspection import damaged_queues

log = logging.getLogger("agent.store")

T = TypeVar("T")

#: Share of the unsynced windows evicted at once when the queue is at its hard cap (at least one).
EVICT_SHARE = 0.01
#: A write that hit the hard cap or a full disk this recently (s) makes the queue "full" in
#: heartbeats (``queue_full``).
FULL_RECENT_S = 60.0
#: Synced windows deleted per transaction by the eviction policy.
DELETE_BATCH = 32
#: Attempts to store one window when the queue is full (each after making room).
_PUT_ATTEMPTS = 6
#: WAL pages between automatic checkpoints while the disk is low (below ``min_free_mb``): a WAL
#: that checkpoints often stays small and leaves the last free bytes to the queue file, which a
#: checkpoint must be able to grow (a WAL that took them can never be checkpointed, so never
#: restarted: no write would commit again, not even a deletion). E.g. after a start on a full
#: disk, where the WAL starts empty and the released reserve is all the room there is.
LOW_DISK_AUTOCHECKPOINT_PAGES = 16
#: A damaged queue file moved aside this recently (s, by its name's UTC time) makes heartbeats
#: say ``queue_replaced``; ``diagnose`` lists such files for as long as they are there.
REPLACED_RECENT_S = 86400.0


@dataclass(frozen=True, slots=True)
class StorePressure:
    """The outbox's space situation, and damaged queue files moved aside beside it (heartbeats,
    ``STATUS=``, ``diagnose``).

    Attributes:
        free_bytes: free space on the queue's filesystem for the agent's user, bytes.
        queue_bytes: pages the queue file uses (free pages inside it excluded), bytes.
        max_queue_bytes: the hard cap, ``[store] max_queue_mb`` in bytes.
        disk_low: ``free_bytes`` is below ``[store] min_free_mb``.
        full_recently: a write hit the hard cap or a full disk within the last
            :data:`FULL_RECENT_S` seconds.
        evicted_synced: synced windows deleted since the outbox was opened.
        evicted_unsynced: windows ever evicted unsynced from this file (its ``evicted`` table).
        replaced_recently: a damaged queue file was moved aside and replaced by a fresh queue
            within the last :data:`REPLACED_RECENT_S` seconds.
    """

    free_bytes: int
    queue_bytes: int
    max_queue_bytes: int
    disk_low: bool
    full_recently: bool
    evicted_synced: int
    evicted_unsynced: int
    replaced_recently: bool = False


class EvictionPolicy:
    """The eviction policy of one queue file, applied through the connection it is given.

    It owns no connection and no thread: the :class:`~agent.store.Outbox` calls it on its
    ``outbox`` thread with its single connection (``isolation_level=None``, no transaction
    open), one call at a time; its bookkeeping is not locked. Sizes in ``cfg`` are MB
    (:data:`MB` bytes), free space and file sizes bytes, ``keep_synced_days`` days, times
    ``time.monotonic()`` seconds.

    Args:
        cfg: the ``[store]`` section (``keep_synced_days``, ``min_free_mb``, ``reserve_mb``,
            ``max_queue_mb``).
        path: the queue file; free space is measured on its filesystem and the reserve file is
            ``<path>.reserve`` beside it.

    Raises (from the methods taking a connection):
        sqlite3.Error, OSError: as the connection or the filesystem raise them (the outbox
            turns them into :class:`~agent.errors.StoreError`).
    """

    def __init__(self, cfg: StoreConfig, path: Path) -> None:
        self._cfg = cfg
        self._path = path
        self.reserve_path = path.with_name(path.name + ".reserve")
        #: the file gives freed pages back (auto_vacuum=INCREMENTAL); set by the outbox at open
        self.incremental_vacuum = False
        self._last_full: float | None = None  # time.monotonic() of the last SQLITE_FULL
        self._evicted_synced = 0
        self._free_checked = 0.0  # time.monotonic() of the last free-space check at write time
        self._autocheckpoint = WAL_AUTOCHECKPOINT_PAGES  # as agent.store.db.configure() sets it

    def write_making_room(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in a transaction; when it fails for lack of space (SQLITE_FULL: the hard
        cap or a full disk), make room by the eviction policy and try again, a few times.

        Raises:
            sqlite3.Error: ``work`` failed otherwise, or still found no room after
                :data:`_PUT_ATTEMPTS` attempts or when nothing more could be freed.
        """
        self._keep_free(conn)
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            try:
                return in_transaction(conn, work)
            except sqlite3.Error as err:
                if getattr(err, "sqlite_errorname", "") != "SQLITE_FULL" or attempt == _PUT_ATTEMPTS:
                    raise
                self._last_full = time.monotonic()
                if not self._make_room(conn, attempt):
                    raise
        raise AssertionError("unreachable")

    def _keep_free(self, conn: sqlite3.Connection) -> None:
        """Policy step 2 at write time, at most once a second: below ``min_free_mb`` free,
        delete the synced windows now, before the disk is full (a full disk leaves the WAL no
        room even for the deletion), and restore the reserve file when there is room again."""
        now = time.monotonic()
        if now - self._free_checked < 1.0:
            return
        self._free_checked = now
        try:
            if self._relieve_low_disk(conn) is None:
                self.ensure_reserve()
        except (sqlite3.Error, OSError) as err:  # the write itself will say what is wrong
            log.debug("outbox %s: keeping space free failed: %s", self._path, err)

    def _relieve_low_disk(self, conn: sqlite3.Connection) -> int | None:
        """Policy step 2: with less than ``min_free_mb`` free, delete every synced window and
        checkpoint, so that the freed pages take the next windows and the file need not grow;
        while it is low, the WAL checkpoints every :data:`LOW_DISK_AUTOCHECKPOINT_PAGES`.

        Returns:
            Synced windows deleted, or ``None`` when the disk is not low.

        Raises:
            sqlite3.Error: not even one batch could be deleted.
        """
        low = self._free_bytes() < self._cfg.min_free_mb * MB
        want = LOW_DISK_AUTOCHECKPOINT_PAGES if low else WAL_AUTOCHECKPOINT_PAGES
        if want != self._autocheckpoint:
            conn.execute(f"PRAGMA wal_autocheckpoint = {want}")
            self._autocheckpoint = want
        if not low:
            return None
        n = self._delete_synced(conn, None)
        if n:
            log.warning("outbox %s: less than [store] min_free_mb = %g MB free: deleted %d synced windows",
                        self._path, self._cfg.min_free_mb, n)
            self._checkpoint(conn)
        return n

    def _free_bytes(self) -> int:
        """Free space on the queue's filesystem for the agent's user (``f_bavail``), bytes."""
        st = os.statvfs(self._path.parent)
        return st.f_bavail * st.f_frsize

    def ensure_reserve(self) -> None:
        """Make sure the ballast file ``<path>.reserve`` holds ``reserve_mb`` MB (``reserve_mb``
        times :data:`MB` bytes, rounded down to whole bytes; 0: no reserve, nothing done).

        A file that is missing, or whose size (``st_size``) is smaller than that (e.g. 0 bytes:
        created, but its size never reached the disk before a power cut; released, it would free
        nothing), is made anew when the filesystem can spare it: free space for the agent's user
        (plus the blocks a short file holds) at least twice its size plus ``min_free_mb``;
        otherwise it is left as it is until a later call finds room. A short file is logged at
        INFO and deleted first. The new file is allocated with ``posix_fallocate`` and fsynced,
        then its directory, so that its name and its size survive a power cut.

        Never raises: a failure (ENOSPC, EIO, a filesystem without ``posix_fallocate``, ...) is
        logged at DEBUG and leaves no file of a wrong size behind; the next call tries again.
        A directory that cannot be fsynced (logged at DEBUG) leaves the file in place.
        """
        size = int(self._cfg.reserve_mb * MB)
        if size <= 0:
            return
        path = self.reserve_path
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        except OSError as err:
            log.debug("outbox %s: cannot check the reserve file %s (%s)", self._path, path, err)
            return
        if st is not None and st.st_size >= size:
            return
        try:
            held = 0 if st is None else st.st_blocks * 512  # freed when a short file is deleted
            if self._free_bytes() + held < 2 * size + self._cfg.min_free_mb * MB:
                return
            if st is not None:
                log.info("outbox %s: the reserve file %s has %d of its %d bytes (cut short, e.g. by a power cut "
                         "before its size reached the disk): making it anew", self._path, path, st.st_size, size)
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
                os.fsync(fd)  # its size and blocks on the disk
            finally:
                os.close(fd)
        except OSError as err:
            log.debug("outbox %s: no reserve file (%s)", self._path, err)
            with contextlib.suppress(OSError):
                path.unlink()
            return
        try:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)  # its name on the disk
            finally:
                os.close(dfd)
        except OSError as err:
            log.debug("outbox %s: reserve file made, but its directory could not be fsynced (%s)", self._path, err)

    def release_reserve(self, why: str = "disk full") -> bool:
        """Delete the ballast file; True if there was one (its space is free now).

        Args:
            why: what needs the room, for the log line.
        """
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        log.warning("outbox %s: %s: released the %g MB reserve file to make room", self._path, why,
                    self._cfg.reserve_mb)
        return True

    def _delete_synced(self, conn: sqlite3.Connection, synced_before: str | None) -> int:
        """Delete synced windows (with their detections), heartbeats and events, all or those
        synced before ``synced_before`` (ISO text), oldest first, in transactions of at most
        :data:`DELETE_BATCH` windows: on a full disk the WAL may hold one small transaction and
        not one big one. Stops early when a later batch finds no room (what was deleted stays
        deleted); returns the windows deleted.

        Raises:
            sqlite3.Error: not even the first batch could be deleted.
        """
        cond, args = ("synced_at IS NOT NULL", ()) if synced_before is None else ("synced_at < ?", (synced_before,))

        def batch(c: sqlite3.Connection) -> int:
            n = max(c.execute(f"DELETE FROM windows WHERE key IN (SELECT key FROM windows WHERE {cond}"
                              " ORDER BY synced_at LIMIT ?)", (*args, DELETE_BATCH)).rowcount, 0)
            c.execute(f"DELETE FROM heartbeats WHERE heartbeat_id IN (SELECT heartbeat_id FROM heartbeats"
                      f" WHERE {cond} ORDER BY synced_at LIMIT ?)", (*args, DELETE_BATCH))
            c.execute(f"DELETE FROM events WHERE event_id IN (SELECT event_id FROM events WHERE {cond}"
                      " ORDER BY synced_at LIMIT ?)", (*args, DELETE_BATCH))
            return n

        total = 0
        while True:
            try:
                n = in_transaction(conn, batch)
            except sqlite3.Error as err:
                if total and getattr(err, "sqlite_errorname", "") == "SQLITE_FULL":
                    break
                raise
            total += n
            self._evicted_synced += n
            if n < DELETE_BATCH:
                break
        return total

    def _evict_unsynced(self, conn: sqlite3.Connection, reason: str, factor: int = 1) -> int:
        """Evict the oldest unsynced windows (``factor`` times :data:`EVICT_SHARE` of them, at
        least ``factor``): delete them, keep their keys in ``evicted`` and record them in a
        :class:`Gap` for the server (extending the previous eviction gap while it is unsynced
        and this one continues it, so a long outage reads as one gap, not thousands)."""

        def work(c: sqlite3.Connection) -> tuple[int, Gap | None]:
            (unsynced,) = c.execute("SELECT count(*) FROM windows WHERE synced_at IS NULL").fetchone()
            rows = c.execute("SELECT key, start_time, duration_s, device_id FROM windows WHERE synced_at IS NULL"
                             " ORDER BY start_time, key LIMIT ?",
                             (factor * max(1, math.ceil(unsynced * EVICT_SHARE)),)).fetchall()
            if not rows:
                return 0, None
            now = _to_text(datetime.now(timezone.utc))
            c.executemany("DELETE FROM windows WHERE key = ?", [(r[0],) for r in rows])
            c.executemany("INSERT INTO evicted (key, start_time, evicted_at, reason) VALUES (?, ?, ?, ?)"
                          " ON CONFLICT (key) DO NOTHING", [(r[0], r[1], now, reason) for r in rows])
            start = _from_text(rows[0][1])
            end = max(_from_text(r[1]) + timedelta(seconds=float(r[2])) for r in rows)
            gap = Gap(event_id=str(uuid.uuid4()), device_id=rows[0][3], start_time=start, end_time=end,
                      reason="evicted_unsynced", windows=len(rows))
            last = c.execute("SELECT payload FROM events WHERE kind = 'gap' AND synced_at IS NULL"
                             " ORDER BY time DESC, event_id DESC LIMIT 1").fetchone()
            prev = _record_from_json(Gap, last[0]) if last else None
            if prev is not None and prev.reason == gap.reason and prev.device_id == gap.device_id \
                    and prev.start_time <= start <= prev.end_time + timedelta(seconds=float(rows[0][2])):
                gap = dataclasses.replace(prev, end_time=max(prev.end_time, end), windows=prev.windows + len(rows))
            gap = dataclasses.replace(gap, detail=f"{gap.windows} windows evicted before they were synced: "
                                                  f"{reason.replace('_', ' ')}")
            c.execute("INSERT INTO events (event_id, kind, time, payload) VALUES (?, 'gap', ?, ?)"
                      " ON CONFLICT (event_id) DO UPDATE SET payload = excluded.payload",
                      (gap.event_id, _to_text(gap.start_time), _record_json(gap)))
            return len(rows), gap

        n, gap = in_transaction(conn, work)
        if gap is not None:
            total = conn.execute("SELECT count(*) FROM evicted").fetchone()[0]
            log.error("outbox %s: %s and nothing synced left to delete: evicted the %d oldest UNSYNCED windows, "
                      "recorded in a gap (%s to %s); %d evicted unsynced in all", self._path,
                      "queue at its hard cap [store] max_queue_mb" if reason == "queue_full" else "disk full",
                      n, gap.start_time.isoformat(timespec="seconds"), gap.end_time.isoformat(timespec="seconds"),
                      total)
        return n

    def _restart_wal(self, conn: sqlite3.Connection) -> bool:
        """Checkpoint the whole WAL so that the next transaction writes it from its start, into
        blocks it already has. True if the WAL held frames and all were copied: then there is
        room without deleting anything. (A WAL that starts empty on a full disk, e.g. after
        the agent started there, cannot grow to the size where it checkpoints by itself.)"""
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as err:
            log.debug("outbox %s: checkpoint to make room failed: %s", self._path, err)
            return False
        return not busy and frames > 0 and copied == frames

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the main file (into the pages just freed there) and let the next
        transaction write the WAL from its start again (RESTART, not TRUNCATE: on a full disk
        the WAL file's blocks must stay allocated, or no transaction could commit again)."""
        try:
            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error as err:
            log.debug("outbox %s: checkpoint after eviction failed: %s", self._path, err)

    def _make_room(self, conn: sqlite3.Connection, attempt: int) -> bool:
        """After the ``attempt``-th SQLITE_FULL storing one window: free space by the eviction
        policy (evicting twice as many unsynced windows at each further attempt); False if
        nothing could be freed."""
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (limit,) = conn.execute("PRAGMA max_page_count").fetchone()
        (free_pages,) = conn.execute("PRAGMA freelist_count").fetchone()
        at_cap = pages >= limit and free_pages < 16
        reason = "queue_full" if at_cap else "disk_full"
        released = False if at_cap else self.release_reserve()
        try:
            n = self._delete_synced(conn, None)
        except sqlite3.Error as err:
            if getattr(err, "sqlite_errorname", "") != "SQLITE_FULL":
                raise
            # not even room for the deletion in the WAL: let it start over from its beginning
            self._checkpoint(conn)
            n = self._delete_synced(conn, None)
        if n:
            log.warning("outbox %s: %s: deleted %d synced windows to make room", self._path,
                        "queue at its hard cap" if at_cap else "disk full", n)
            self._checkpoint(conn)
            return True
        if attempt == 1 and not at_cap and self._restart_wal(conn):
            return True  # the WAL has room again: no unsynced window need go
        factor = 2 ** (attempt - 1)
        for _ in range(4):  # the eviction's own bookkeeping may not fit: evict more at once
            try:
                evicted = self._evict_unsynced(conn, reason, factor)
                if evicted:
                    self._checkpoint(conn)
                return bool(evicted) or released
            except sqlite3.Error as err:
                if getattr(err, "sqlite_errorname", "") != "SQLITE_FULL":
                    raise
                factor *= 4
        return released

    def housekeeping(self, conn: sqlite3.Connection) -> int:
        """Steps 1 and 2 of the policy: delete synced windows older than ``keep_synced_days``, or
        every synced window while the filesystem has less than ``min_free_mb`` free; give freed
        pages back to the filesystem (queues created by schema 4 or later) and restore the
        reserve file when there is room.

        Returns:
            Synced windows deleted.
        """
        n = self._relieve_low_disk(conn)
        if n is None:  # space to spare: retention, and give the freed pages back
            n = self._delete_synced(conn, _to_text(datetime.now(timezone.utc)
                                                   - timedelta(days=self._cfg.keep_synced_days)))
            if n and self.incremental_vacuum:
                # executescript steps it to completion (execute() would free one page per call)
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self.ensure_reserve()
        return n

    def pressure(self, conn: sqlite3.Connection) -> StorePressure:
        """The queue's :class:`StorePressure` now."""
        pages, free_pages, page_size, limit = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in
                                               ("page_count", "freelist_count", "page_size", "max_page_count"))
        free = self._free_bytes()
        return StorePressure(
            free_bytes=free, queue_bytes=(pages - free_pages) * page_size, max_queue_bytes=limit * page_size,
            disk_low=free < self._cfg.min_free_mb * MB,
            full_recently=self._last_full is not None and time.monotonic() - self._last_full < FULL_RECENT_S,
            evicted_synced=self._evicted_synced,
            evicted_unsynced=conn.execute("SELECT count(*) FROM evicted").fetchone()[0],
            replaced_recently=any(datetime.now(timezone.utc) - moved_at < timedelta(seconds=REPLACED_RECENT_S)
                                  for _, moved_at in damaged_queues(self._path)),
        )

    @staticmethod
    def delivered_after_eviction(conn: sqlite3.Connection, keys: list[str]) -> None:
        """Windows evicted while their batch was on its way reached the server after all: take
        them out of ``evicted`` and out of the count of the (still unsynced) gap that has them."""
        rows = []
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            rows += conn.execute(f"DELETE FROM evicted WHERE key IN ({', '.join('?' * len(part))})"
                                 " RETURNING start_time", part).fetchall()
        if not rows:
            return
        log.info("%d windows evicted while their batch was in flight reached the server after all", len(rows))
        gaps = [(_record_from_json(Gap, p), i) for i, p in conn.execute(
            "SELECT event_id, payload FROM events WHERE kind = 'gap' AND synced_at IS NULL").fetchall()]
        for gap, event_id in gaps:
            if gap.reason != "evicted_unsynced":
                continue
            n = sum(1 for (t,) in rows if gap.start_time <= _from_text(t) < gap.end_time)
            if n:
                left = max(0, gap.windows - n)
                gap = dataclasses.replace(gap, windows=left,
                                          detail=f"{left} windows evicted before they were synced: "
                                                 + gap.detail.partition(": ")[2])
                conn.execute("UPDATE events SET payload = ? WHERE event_id = ?", (_record_json(gap), event_id))
