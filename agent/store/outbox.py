"""The local SQLite outbox: every :class:`~agent.records.WindowResult` is stored here first and
stays until the sync stage has delivered it to PostgreSQL (then it is marked as synced). Raw
audio is never stored. One connection on one thread (see :class:`Outbox`), explicit
``BEGIN IMMEDIATE`` / ``COMMIT`` transactions (``isolation_level=None``: the sqlite3 module never
opens or commits one by itself); schema in :mod:`agent.store.schema`, rows encoded by
:mod:`agent.store.codec`, space managed by :class:`~agent.store.eviction.EvictionPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from agent.config import StoreConfig
from agent.errors import StoreError
from agent.records import Calibration, ClockStep, Detection, Gap, Heartbeat, WindowResult
from agent.store.codec import (
    _WINDOW_COLUMNS,
    EVENT_KINDS,
    _event_kind,
    _from_text,
    _record_from_json,
    _record_json,
    _result_from_row,
    _to_text,
    _window_row,
)
from agent.store.db import BUSY_TIMEOUT_MS, _store_error, acquire_lock, configure, damaged, in_transaction, no_room
from agent.store.eviction import EvictionPolicy, StorePressure
from agent.store.inspection import (
    SET_ASIDE_TABLES,
    QueueReplacement,
    QueueStats,
    _queue_stats,
    count_damaged,
    damaged_name,
    read_only_error,
)

log = logging.getLogger("agent.store")

T = TypeVar("T")


class Outbox:
    """Async facade over the SQLite queue file; one connection on one dedicated thread.

    Every method is a coroutine whose SQLite work runs on the ``outbox`` thread (a
    ``ThreadPoolExecutor(max_workers=1)``), one call after the other, in call order. The
    single connection is deliberate: Debian Bookworm's SQLite 3.40.1 has the WAL-reset bug
    (SQLite 3.7.0 to 3.51.2): a WAL database may be corrupted when two connections write or
    checkpoint concurrently. To keep it at one connection across processes too, an open
    outbox holds an exclusive ``flock`` on ``<path>.lock``; a second :meth:`open` of the same
    file (another process, or another ``Outbox`` here) fails with :class:`StoreError`.
    A viewer that must not stop the service may read the file through its own read-only
    connection (``file:...?mode=ro``), never write or checkpoint it.

    Durability: ``synchronous=FULL``. With WAL, ``NORMAL`` survives a crash of the process
    but a power cut may roll back the last commits; an unattended Pi on a field battery or
    solar supply loses power routinely, and one fsync per 10 s window is negligible, so a
    result acknowledged by :meth:`put` survives a power cut.

    Opening on a full disk: when the file cannot be opened or migrated for lack of space, the
    reserve file is released and the open tried again, then the eviction policy applied.
    Opening a damaged file (not an SQLite database, or damaged where opening or migrating it
    reads): with ``device_id`` (the running agent), the file and its -wal/-shm are moved aside
    as ``<name>.damaged-<UTC time>`` (never deleted), a fresh queue is started and a
    ``queue_replaced`` :class:`~agent.records.Gap` queued in it, saying what could be counted of
    the damaged file's windows read-only (:attr:`replaced`); without it (``sync --once``,
    ``calibrate``), :class:`StoreError` and the file is left as it is.

    Args:
        cfg: the ``[store]`` section (``cfg.path``: the queue file; its directory is created).
        device_id: ``[agent] device_id`` of the agent that records into this queue: lets
            :meth:`open` replace a damaged file (the gap is recorded under this device).

    Usage::

        async with Outbox(cfg) as ob:
            await ob.put(result)
            batch = await ob.pending(500)

    Raises (from every method):
        StoreError: the file cannot be created, opened, read or written (unwritable
            directory, damaged file, disk full, newer schema), or the outbox is not open;
            the message names the path, the hint says what to do.
    """

    def __init__(self, cfg: StoreConfig, *, device_id: str | None = None) -> None:
        self._cfg = cfg
        self._path = Path(cfg.path)
        self._device_id = device_id
        #: the damaged file :meth:`open` moved aside and replaced, if it did
        self.replaced: QueueReplacement | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the outbox thread
        self._lock_fd: int | None = None  # flock on <path>.lock while open
        # eviction policy and its bookkeeping (outbox thread only)
        self._policy = EvictionPolicy(cfg, self._path)

    @property
    def path(self) -> Path:
        """The queue file."""
        return self._path

    # -- plumbing -------------------------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], T], action: str) -> T:
        """Run ``fn(connection)`` on the outbox thread; map sqlite/OS errors to StoreError."""
        if self._executor is None:
            raise StoreError(f"outbox {self._path} is not open", "call Outbox.open() first (or use 'async with')")

        def job() -> T:
            if self._conn is None:
                raise StoreError(f"outbox {self._path} is not open", "call Outbox.open() first")
            try:
                return fn(self._conn)
            except (sqlite3.Error, OSError) as err:
                raise _store_error(self._path, action, err) from err

        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory if needed, open the file, set pragmas and migrate the schema.

        Idempotent: calling it on an open outbox does nothing.

        Raises:
            StoreError: directory not creatable/writable, file damaged or not an SQLite
                database (without ``device_id``), schema newer than this agent knows, disk full
                with no reserve file left to release, the file already open in another process
                / another ``Outbox`` (``<path>.lock`` held), or a damaged file that cannot be
                moved aside.
        """
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        path = self._path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(
                f"outbox {path}: cannot create directory {path.parent}: a file in the way is not a directory",
                "remove or rename the file, or set [store] path to a writable directory",
            ) from None
        except OSError as err:
            raise _store_error(path, f"create directory {path.parent}", err) from err
        self._lock_fd = acquire_lock(path)
        try:
            conn = self._connect()
        except BaseException as err:
            self._release_lock()
            if isinstance(err, (sqlite3.Error, OSError)):
                raise _store_error(path, "open the queue", err) from err
            raise
        self._conn = conn

    def _connect(self) -> sqlite3.Connection:
        """Open, configure and migrate the file (the lock held), curing on the way, once each,
        what the queue's own faults call for: no room to open or migrate it (release the
        reserve, try again, then apply the eviction policy), a damaged file (with
        ``device_id``: move it aside, start a fresh queue, record the replacement)."""
        path = self._path
        released = False
        if self._device_id is not None and path.exists():
            # read-only first: a read-write connection to a damaged file would delete its WAL
            # when it closes; a file that reads fine is opened read-write below
            err = read_only_error(path)
            if err is not None and damaged(err):
                self.replaced = self._move_aside(err)
        while True:
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            try:
                self._policy.incremental_vacuum = configure(conn, path, self._cfg.max_queue_mb)
                break
            except BaseException as err:
                conn.close()
                if self._device_id is not None and self.replaced is None and damaged(err):
                    self.replaced = self._move_aside(err)
                    continue
                if not released and no_room(path, err) and self._policy.release_reserve(
                        "disk too full to open the queue"):
                    released = True
                    continue
                raise
        try:
            if released:  # the disk is full: make room the policy's way before the first window
                self._policy.housekeeping(conn)
            else:
                self._policy.ensure_reserve()
        except (sqlite3.Error, OSError) as err:
            log.warning("outbox %s: eviction policy not applied at open: %s", path, err)
        if self.replaced is not None:
            self._record_replacement(conn, self.replaced)
        self._offer_set_aside_again(conn)
        return conn

    def _offer_set_aside_again(self, conn: sqlite3.Connection) -> None:
        """Make the rows set aside by an earlier run deliverable again (one more try per start:
        the server may have been fixed meanwhile); logged, not raised."""
        try:
            again = 0
            for table in SET_ASIDE_TABLES:
                again += conn.execute(f"UPDATE {table} SET refused_at = NULL, refused = NULL"
                                      " WHERE refused_at IS NOT NULL AND synced_at IS NULL").rowcount
        except sqlite3.Error as err:
            log.warning("outbox %s: set-aside rows not offered again: %s", self._path, err)
            return
        if again:
            log.warning("outbox %s: offering %d rows the server refused before once more", self._path, again)

    def _move_aside(self, err: BaseException) -> QueueReplacement:
        """Move the damaged queue file and its -wal/-shm/-journal aside as
        ``<name>.damaged-<UTC time>`` (and ``...-wal`` etc.: left here, a WAL would be replayed
        into the fresh queue), and count read-only what is readable of it.

        Raises:
            OSError: it cannot be moved (then it is where it was).
        """
        path = self._path
        moved_at = datetime.now(timezone.utc).replace(microsecond=0)
        target = base = damaged_name(path, moved_at)
        n = 0
        while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm", "-journal")):
            n += 1
            target = base.with_name(f"{base.name}-{n}")
        size = path.stat().st_size
        # the side files first: should this be cut short, no WAL is ever left beside a new queue.db
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.rename(side, f"{target}{suffix}")
        os.rename(path, target)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the renames survive a power cut
        finally:
            os.close(fd)
        name = getattr(err, "sqlite_errorname", "") or type(err).__name__
        counted = count_damaged(target)
        windows, unsynced, first, last = counted if counted is not None else (None, None, None, None)
        found = QueueReplacement(path=target, moved_at=moved_at, error=f"{err} [{name}]", size_bytes=size,
                                 windows=windows, unsynced=unsynced, first_start=first, last_end=last)
        log.error("outbox %s: %s", path, found.detail())
        return found

    def _record_replacement(self, conn: sqlite3.Connection, found: QueueReplacement) -> None:
        """Queue the ``queue_replaced`` gap of ``found`` in the fresh queue (logged, not raised,
        when it cannot be stored: the damaged file stays where ``diagnose`` shows it)."""
        assert self._device_id is not None
        start = found.first_start or found.moved_at
        gap = Gap(event_id=str(uuid.uuid4()), device_id=self._device_id, start_time=start,
                  end_time=max(start, found.last_end or found.moved_at), reason="queue_replaced",
                  detail=found.detail(), windows=found.unsynced or 0)
        try:
            self._policy.write_making_room(conn, lambda c: self._insert_event(c, gap))
        except sqlite3.Error as err:
            log.error("outbox %s: the queue_replaced gap was not stored (%s): the server will not hear of %s",
                      self._path, err, found.path.name)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    async def close(self) -> None:
        """Checkpoint the WAL into the main file (``wal_checkpoint(TRUNCATE)``), close, stop the thread.

        Safe to call twice or on an outbox that never opened. A failing checkpoint is
        logged, not raised (the WAL is replayed at the next open).
        """
        executor = self._executor
        if executor is None:
            return

        def job() -> None:
            conn = self._conn
            self._conn = None
            if conn is None:
                return
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as err:
                log.warning("outbox %s: checkpoint at close failed: %s", self._path, err)
            finally:
                conn.close()
                self._release_lock()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, job)
        finally:
            self._executor = None
            executor.shutdown(wait=False)  # the queue is empty: the thread exits at once

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- queue operations -----------------------------------------------------------------

    async def put(self, result: WindowResult) -> bool:
        """Store one window and its detections in one transaction.

        Args:
            result: the analysed window; ``start_time`` must be timezone-aware.

        Returns:
            True if stored, False if a window with the same ``key`` was already there (then
            nothing changes: the first version wins).

        Raises:
            StoreError: disk full, I/O error, or a value violating the queue's constraints
                (e.g. duplicate detection ranks, a score outside [0, 1]); nothing of the window
                is stored then.
            ValueError: ``result.start_time`` is naive.
        """
        row = _window_row(result, _to_text(datetime.now(timezone.utc)))
        dets = [(result.key, d.taxonomy, int(d.rank), d.label, int(d.label_index), float(d.score), d.offset_s)
                for d in result.detections]

        def work(conn: sqlite3.Connection) -> bool:
            # ON CONFLICT (key) DO NOTHING, not INSERT OR IGNORE: OR IGNORE would also
            # silently drop rows violating NOT NULL / CHECK constraints.
            cur = conn.execute(
                f"INSERT INTO windows ({_WINDOW_COLUMNS}, stored_at) VALUES ({', '.join('?' * len(row))})"
                " ON CONFLICT (key) DO NOTHING",
                row,
            )
            if cur.rowcount == 0:
                return False
            conn.executemany(
                "INSERT INTO detections (window_key, taxonomy, rank, label, label_index, score, offset_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                dets,
            )
            return True

        return await self._submit(lambda conn: self._policy.write_making_room(conn, work), f"store window {result.key}")

    async def housekeeping(self) -> int:
        """Apply the eviction policy's steps 1 and 2 (see :class:`~agent.config.StoreConfig`):
        delete synced windows older than ``keep_synced_days``, or every synced window while the
        filesystem has less than ``min_free_mb`` free; give freed pages back to the filesystem
        (queues created by schema 4 or later) and restore the reserve file when there is room.
        Call it now and then (the pipeline does every minute).

        Returns:
            Synced windows deleted.

        Raises:
            StoreError: the file cannot be written.
        """
        return await self._submit(self._policy.housekeeping, "apply the eviction policy")

    async def pressure(self) -> StorePressure:
        """The outbox's :class:`StorePressure` now.

        Raises:
            StoreError: the file cannot be read.
        """
        return await self._submit(self._policy.pressure, "read the queue's size")

    # -- events ---------------------------------------------------------------------------

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, event: Gap | ClockStep) -> bool:
        time_ = event.start_time if isinstance(event, Gap) else event.detected_at
        cur = conn.execute("INSERT INTO events (event_id, kind, time, payload) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT (event_id) DO NOTHING",
                           (event.event_id, _event_kind(event), _to_text(time_), _record_json(event)))
        return cur.rowcount > 0

    async def put_event(self, event: Gap | ClockStep) -> bool:
        """Queue a :class:`~agent.records.Gap` or :class:`~agent.records.ClockStep` for the sync.

        Returns:
            True if stored, False if one with the same ``event_id`` was already there.

        Raises:
            StoreError: the file cannot be written.
            TypeError: not an event record.
        """
        _event_kind(event)
        return await self._submit(
            lambda conn: self._policy.write_making_room(conn, lambda c: self._insert_event(c, event)), "store an event")

    async def pending_events(self, limit: int) -> list[Gap | ClockStep]:
        """The oldest unsynced events (at most ``limit``, >= 1), oldest first.

        Raises:
            StoreError: the file cannot be read.
        """
        return await self._pending_records("events", "event_id", "kind, payload", limit,
                                           lambda row: _record_from_json(EVENT_KINDS[row[0]], row[1]))

    async def mark_events_synced(self, ids: Iterable[str], sync_time: datetime) -> int:
        """Record that the server has committed these events (call after the COMMIT).

        Returns:
            Events newly marked.

        Raises:
            StoreError: the file cannot be written.
        """
        return await self._mark_records_synced("events", "event_id", ids, sync_time)

    async def pending(self, limit: int) -> list[WindowResult]:
        """The oldest unsynced windows, fully reconstructed.

        Args:
            limit: at most this many windows (>= 1).

        Returns:
            Up to ``limit`` results ordered by ``start_time`` (then key), each with its
            detections in rank order, levels and model provenance, equal to what was put.

        Raises:
            StoreError: the file cannot be read.
        """
        limit = int(limit)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")

        def work(conn: sqlite3.Connection) -> list[WindowResult]:
            conn.execute("BEGIN")  # one snapshot for both queries
            try:
                rows = conn.execute(
                    f"SELECT {_WINDOW_COLUMNS} FROM windows WHERE synced_at IS NULL AND refused_at IS NULL"
                    " ORDER BY start_time, key LIMIT ?",
                    (limit,),
                ).fetchall()
                dets: dict[str, list[Detection]] = {}
                for key, taxonomy, rank, label, label_index, score, offset_s in conn.execute(
                    "SELECT window_key, taxonomy, rank, label, label_index, score, offset_s FROM detections"
                    " WHERE window_key IN"
                    " (SELECT key FROM windows WHERE synced_at IS NULL AND refused_at IS NULL"
                    " ORDER BY start_time, key LIMIT ?)"
                    " ORDER BY window_key, taxonomy, rank",
                    (limit,),
                ):
                    dets.setdefault(key, []).append(Detection(int(rank), label, int(label_index), float(score),
                                                              taxonomy, offset_s))
            finally:
                conn.execute("COMMIT")
            return [_result_from_row(row, tuple(dets.get(row[0], ()))) for row in rows]

        return await self._submit(work, "read pending windows")

    async def mark_synced(self, keys: Iterable[str], sync_id: str, sync_time: datetime) -> int:
        """Record that the server has committed these windows. Call only after the server commit.

        Args:
            keys: window keys of the committed batch.
            sync_id: the batch's id (UUID text) as sent to the server.
            sync_time: the server's commit-transaction time (tz-aware).

        Returns:
            Number of windows newly marked (keys unknown or already synced are ignored).

        Raises:
            StoreError: the file cannot be written.
            ValueError: ``sync_time`` is naive.
        """
        when = _to_text(sync_time)
        params = [(str(sync_id), when, k) for k in keys]

        def work(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(
                "UPDATE windows SET sync_id = ?, synced_at = ? WHERE key = ? AND synced_at IS NULL", params
            )
            marked = max(cur.rowcount, 0)
            if marked < len(params):
                self._policy.delivered_after_eviction(conn, [k for _, _, k in params])
            return marked

        return await self._submit(lambda conn: self._policy.write_making_room(conn, work), "mark windows synced")


    async def stats(self) -> QueueStats:
        """Counts over the queue; see :class:`QueueStats`.

        Raises:
            StoreError: the file cannot be read.
        """

        return await self._submit(_queue_stats, "read queue statistics")


    async def put_heartbeat(self, heartbeat: Heartbeat) -> bool:
        """Queue one heartbeat for the sync.

        Returns:
            True if stored, False if one with the same ``heartbeat_id`` was already there.

        Raises:
            StoreError: the file cannot be written (disk full, I/O error).
        """
        row = (heartbeat.heartbeat_id, _to_text(heartbeat.time), _record_json(heartbeat))

        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT INTO heartbeats (heartbeat_id, time, payload) VALUES (?, ?, ?)"
                               " ON CONFLICT (heartbeat_id) DO NOTHING", row)
            return cur.rowcount > 0

        return await self._submit(lambda conn: self._policy.write_making_room(conn, work), "store a heartbeat")

    async def pending_heartbeats(self, limit: int) -> list[Heartbeat]:
        """The oldest unsynced heartbeats (at most ``limit``, >= 1), oldest first.

        Raises:
            StoreError: the file cannot be read.
        """
        return await self._pending_records("heartbeats", "heartbeat_id", "payload", limit,
                                           lambda row: _record_from_json(Heartbeat, row[0]))

    async def mark_heartbeats_synced(self, ids: Iterable[str], sync_time: datetime) -> int:
        """Record that the server has committed these heartbeats (call after the COMMIT).

        Returns:
            Heartbeats newly marked.

        Raises:
            StoreError: the file cannot be written.
        """
        return await self._mark_records_synced("heartbeats", "heartbeat_id", ids, sync_time)

    async def _pending_records(self, table: str, id_column: str, columns: str, limit: int,
                               decode: Callable[[tuple[Any, ...]], T]) -> list[T]:
        """The oldest unsynced rows of a record table (``heartbeats``, ``events``), decoded."""
        limit = int(limit)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")

        def work(conn: sqlite3.Connection) -> list[T]:
            rows = conn.execute(f"SELECT {columns} FROM {table} WHERE synced_at IS NULL AND refused_at IS NULL"
                                f" ORDER BY time, {id_column} LIMIT ?", (limit,)).fetchall()
            return [decode(row) for row in rows]

        return await self._submit(work, f"read pending {table}")

    async def _mark_records_synced(self, table: str, id_column: str, ids: Iterable[str], sync_time: datetime) -> int:
        """Mark rows of a record table synced at the server's commit time; returns rows newly marked."""
        when = _to_text(sync_time)
        params = [(when, i) for i in ids]

        def work(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(f"UPDATE {table} SET synced_at = ? WHERE {id_column} = ? AND synced_at IS NULL",
                                   params)
            return max(cur.rowcount, 0)

        return await self._submit(lambda conn: self._policy.write_making_room(conn, work), f"mark {table} synced")

    async def set_aside(self, table: str, ids: Iterable[str], refused: str) -> int:
        """Set rows the server refused permanently aside: kept, no longer offered by
        :meth:`pending` / :meth:`pending_events` / :meth:`pending_heartbeats` (so the rows after
        them flow), counted in :attr:`QueueStats.set_aside`; offered once more at the next open.

        Args:
            table: ``windows``, ``events`` or ``heartbeats``.
            ids: their keys (``key``, ``event_id``, ``heartbeat_id``).
            refused: the server's message, stored with each row.

        Returns:
            Rows newly set aside (unknown, synced or already set-aside ids are ignored).

        Raises:
            ValueError: ``table`` is not one of the three.
            StoreError: the file cannot be written.
        """
        if table not in SET_ASIDE_TABLES:
            raise ValueError(f"table must be one of {', '.join(SET_ASIDE_TABLES)}, got {table!r}")
        id_column = SET_ASIDE_TABLES[table]
        when = _to_text(datetime.now(timezone.utc))
        params = [(when, refused, i) for i in ids]

        def work(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(f"UPDATE {table} SET refused_at = ?, refused = ? WHERE {id_column} = ?"
                                   " AND synced_at IS NULL AND refused_at IS NULL", params)
            return max(cur.rowcount, 0)

        return await self._submit(lambda conn: self._policy.write_making_room(conn, work), f"set {table} aside")

    async def last_synced_at(self) -> datetime | None:
        """Server time of the most recent delivery of a window or heartbeat, or ``None``.

        Raises:
            StoreError: the file cannot be read.
        """

        def work(conn: sqlite3.Connection) -> datetime | None:
            row = conn.execute("SELECT max(t) FROM (SELECT max(synced_at) AS t FROM windows"
                               " UNION ALL SELECT max(synced_at) FROM heartbeats)").fetchone()
            return _from_text(row[0]) if row and row[0] is not None else None

        return await self._submit(work, "read the last sync time")

    async def add_calibration(self, calibration: Calibration, frequency_hz: float, source: str) -> None:
        """Keep a calibration measured by ``soundscape-agent calibrate``.

        Args:
            calibration: the measurement: ``offset_db``, ``reference_db`` and
                ``calibrated_at`` (tz-aware) set, with the nominal chain it was measured with.
            frequency_hz: the calibrator's frequency, Hz.
            source: the capture device it was measured on (for the record).

        Raises:
            StoreError: the file cannot be written.
            ValueError: ``calibrated_at`` or ``reference_db`` missing.
        """
        if calibration.calibrated_at is None or calibration.reference_db is None:
            raise ValueError("a stored calibration needs calibrated_at and reference_db")
        row = (_to_text(calibration.calibrated_at), float(calibration.reference_db), float(calibration.offset_db),
               float(calibration.sensitivity_dbv), float(calibration.gain_db), float(calibration.vadc),
               float(frequency_hz), str(source))

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO calibrations (measured_at, reference_db, offset_db, sensitivity_dbv, gain_db,"
                         " vadc, frequency_hz, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._submit(lambda conn: in_transaction(conn, work), "store the calibration")

    async def latest_calibration(self) -> Calibration | None:
        """The most recent calibration kept by :meth:`add_calibration`, or ``None``.

        Raises:
            StoreError: the file cannot be read.
        """

        def work(conn: sqlite3.Connection) -> Calibration | None:
            row = conn.execute("SELECT measured_at, reference_db, offset_db, sensitivity_dbv, gain_db, vadc"
                               " FROM calibrations ORDER BY measured_at DESC, id DESC LIMIT 1").fetchone()
            if row is None:
                return None
            measured_at, reference_db, offset_db, sensitivity, gain, vadc = row
            return Calibration(sensitivity_dbv=float(sensitivity), gain_db=float(gain), vadc=float(vadc),
                               offset_db=float(offset_db), calibrated_at=_from_text(measured_at),
                               reference_db=float(reference_db))

        return await self._submit(work, "read the latest calibration")
