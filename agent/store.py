"""The local SQLite outbox: every :class:`~agent.records.WindowResult` is stored here first.

Results are written as soon as a window is analysed and stay until the sync stage has
delivered them to PostgreSQL (and after, marked as synced). Raw audio is never stored:
a :class:`WindowResult` holds none.

Design, in short:

* ONE ``sqlite3`` connection, created, used and closed by ONE dedicated thread (a
  single-worker executor); the ``async`` methods hand their work to that thread, so the
  event loop never blocks on disk I/O and no two connections ever touch the file at once.
  Debian Bookworm ships SQLite 3.40.1, inside the range (3.7.0 - 3.51.2) of the
  *WAL-reset bug*: a database in WAL mode can be corrupted when two connections (threads or
  processes) write or checkpoint at the same moment. One connection cannot race itself.
* WAL journal, ``synchronous=FULL``, explicit ``BEGIN IMMEDIATE`` / ``COMMIT`` transactions
  (``isolation_level=None``: the sqlite3 module never opens or commits one by itself).
* Schema versioned with ``PRAGMA user_version``; migrations run at :meth:`Outbox.open`.
* Timestamps are ISO-8601 UTC text with microseconds (``2024-05-01T12:00:00.000000+00:00``),
  so text order is time order; they are read back as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import logging
import math
import sqlite3
import time
import typing
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from agent.config import StoreConfig
from agent.errors import StoreError
from agent.records import (
    AcousticIndices, Calibration, ClockStep, Detection, Gap, Heartbeat, Levels, MicHealth, ModelInfo, Status,
    WindowResult,
)

log = logging.getLogger("agent.store")

T = TypeVar("T")

#: Bytes in the MB of ``[store]`` sizes (SI megabyte).
MB = 1_000_000
#: Share of the unsynced windows evicted at once when the queue is at its hard cap (at least one).
EVICT_SHARE = 0.01
#: A write that hit the hard cap or a full disk this recently (s) makes the queue "full" in
#: heartbeats (``queue_full``).
FULL_RECENT_S = 60.0
#: Synced windows deleted per transaction by the eviction policy.
DELETE_BATCH = 32
#: WAL pages between automatic checkpoints (SQLite's default is 1000, ~4 MB).
WAL_AUTOCHECKPOINT_PAGES = 256
#: Attempts to store one window when the queue is full (each after making room).
_PUT_ATTEMPTS = 6

#: Milliseconds a statement waits for a lock held by another process (e.g. a read-only
#: ``status`` query holding a snapshot while we checkpoint) before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

# Schema migrations, applied in order; index i brings the file from user_version i to i+1.
# Never edit a released entry: append a new one.
_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
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
    """,
    # 2: noise indicators, bands, acoustic indices, microphone health and calibration
    # provenance (one JSON document per window: the outbox is a queue, not a query store);
    # the calibrations measured by `soundscape-agent calibrate`.
    """
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
    """,
    # 3: heartbeats (records.Heartbeat as JSON), delivered by the sync like windows
    """
    CREATE TABLE heartbeats (
        heartbeat_id  TEXT PRIMARY KEY,                 -- UUID, the idempotency key
        time          TEXT NOT NULL,                    -- ISO-8601 UTC
        payload       TEXT NOT NULL,                    -- JSON of records.Heartbeat
        synced_at     TEXT                              -- server commit time, NULL until synced
    );
    CREATE INDEX heartbeats_unsynced ON heartbeats (time) WHERE synced_at IS NULL;
    """,
    # 4: events (records.Gap, records.ClockStep as JSON) delivered by the sync; the keys of
    # windows evicted before they were synced (the eviction policy's hard cap), kept as proof.
    """
    CREATE TABLE events (
        event_id   TEXT PRIMARY KEY,                    -- UUID, the idempotency key
        kind       TEXT NOT NULL,                       -- 'gap' | 'clock_step'
        time       TEXT NOT NULL,                       -- ISO-8601 UTC
        payload    TEXT NOT NULL,                       -- JSON of the record
        synced_at  TEXT                                 -- server commit time, NULL until synced
    );
    CREATE INDEX events_unsynced ON events (time) WHERE synced_at IS NULL;
    CREATE TABLE evicted (
        key         TEXT PRIMARY KEY,                   -- the window's key
        start_time  TEXT NOT NULL,                      -- ISO-8601 UTC
        evicted_at  TEXT NOT NULL,                      -- ISO-8601 UTC
        reason      TEXT NOT NULL                       -- 'queue_full' | 'disk_full'
    ) WITHOUT ROWID;
    """,
    # 5: several classifiers per window (AST and BirdNET): each detection says whose label set
    # it belongs to (taxonomy; ranks count per taxonomy) and which part of the window gave it
    # (offset_s); the window keeps every classifier's model (models, JSON list of
    # records.ModelInfo; the schema-1 model_* columns keep the first) and status
    # (classifier_status, JSON object taxonomy -> records.Status value). NULL for older rows.
    """
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
    """,
)

#: Schema version this code writes and reads (``PRAGMA user_version``).
SCHEMA_VERSION = len(_MIGRATIONS)

_WINDOW_COLUMNS = (
    "key, device_id, window_index, start_time, duration_s, sample_rate, clock_synchronised,"
    " xruns, leq_db, leq_series_db, peak_dbfs, status, model_id, model_hash, model_backend,"
    " model_is_scaffold, indicators, models, classifier_status"
)


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


# ---------------------------------------------------------------------------------------------
# value conversions (SQLite <-> records)


def _to_text(t: datetime) -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"naive datetime {t.isoformat()} cannot be stored: records hold UTC times")
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _from_text(s: str) -> datetime:
    return datetime.fromisoformat(s).astimezone(timezone.utc)


def nan_to_none(x: float) -> float | None:
    """A measured value for a database column: NaN (undefined, e.g. an index of digital
    silence) becomes NULL (``None``), which SQL aggregates (avg, percentiles) skip and read
    back as NaN here; SQLite would turn NaN into NULL on its own, PostgreSQL would keep a NaN
    that poisons aggregates. Used by the outbox and by the sync."""
    x = float(x)
    return None if math.isnan(x) else x


def _unreal(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _plain(value: Any) -> Any:
    """A record field as JSON: tuples as lists, datetimes as ISO text."""
    if isinstance(value, datetime):
        return _to_text(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _record_json(record: Any) -> str:
    """A frozen record (:class:`Heartbeat`, :class:`Gap`, :class:`ClockStep`) as one JSON
    object: field names as keys, datetimes as ISO text, tuples as lists."""
    return json.dumps({f.name: _plain(getattr(record, f.name)) for f in dataclasses.fields(record)}, allow_nan=False)


def _record_from_json(cls: type[T], payload: str) -> T:
    """The inverse of :func:`_record_json`. Keys the record does not have are ignored and
    fields missing from the document take their defaults (a payload queued by an older or
    newer agent still reads)."""
    hints = typing.get_type_hints(cls)
    doc = json.loads(payload)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in doc:
            continue
        value, hint = doc[f.name], hints[f.name]
        if value is not None and (hint is datetime or datetime in typing.get_args(hint)):
            value = _from_text(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


#: Event records queued in the ``events`` table, by kind.
EVENT_KINDS: dict[str, type] = {"gap": Gap, "clock_step": ClockStep}


def _event_kind(event: Gap | ClockStep) -> str:
    for kind, cls in EVENT_KINDS.items():
        if isinstance(event, cls):
            return kind
    raise TypeError(f"not an event record: {type(event).__name__}")


def _indicators_json(r: WindowResult) -> str:
    """Everything of a window's analysis beyond the schema-1 columns, as one JSON document:
    ``{"levels": {...}, "calibration": {...}, "indices": {...} | null, "health": {...} | null}``
    (field names as in :mod:`agent.records`; NaN / ±inf as JSON's NaN / Infinity tokens)."""
    lv = r.levels
    levels = {f.name: _plain(getattr(lv, f.name)) for f in dataclasses.fields(Levels)
              if f.name not in ("lzeq_db", "lzeq_series_db", "peak_dbfs", "calibration")}
    doc = {
        "levels": levels,
        "calibration": {f.name: _plain(getattr(lv.calibration, f.name)) for f in dataclasses.fields(Calibration)},
        "indices": None if r.indices is None else dataclasses.asdict(r.indices),
        "health": None if r.health is None else {f.name: _plain(getattr(r.health, f.name))
                                                  for f in dataclasses.fields(MicHealth)},
    }
    return json.dumps(doc, allow_nan=True, separators=(",", ":"))


def _levels_from(doc: dict | None, lzeq_db: float, lzeq_series: tuple[float, ...], peak_dbfs: float) -> Levels:
    """:class:`Levels` from the schema-1 columns and the ``indicators`` document (None for a
    window stored by schema 1: its other indicators were never computed, so NaN / empty)."""
    nan = math.nan
    if doc is None:
        return Levels(lzeq_db=lzeq_db, laeq_db=nan, lceq_db=nan, lafmax_db=nan, lafmin_db=nan, lasmax_db=nan,
                      la10_db=nan, la50_db=nan, la90_db=nan, laeq_series_db=(), lzeq_series_db=lzeq_series,
                      peak_dbfs=peak_dbfs, band_centres_hz=(), band_leq_db=(),
                      calibration=Calibration(sensitivity_dbv=nan, gain_db=nan, vadc=nan))
    cal = dict(doc["calibration"])
    if cal.get("calibrated_at") is not None:
        cal["calibrated_at"] = _from_text(cal["calibrated_at"])
    values = {k: tuple(float(x) for x in v) if isinstance(v, list) else float(v) for k, v in doc["levels"].items()}
    return Levels(lzeq_db=lzeq_db, lzeq_series_db=lzeq_series, peak_dbfs=peak_dbfs,
                  calibration=Calibration(**cal), **values)


def _window_row(r: WindowResult, stored_at: str) -> tuple[Any, ...]:
    m = r.model
    return (
        r.key,
        r.device_id,
        int(r.index),
        _to_text(r.start_time),
        float(r.duration_s),
        int(r.sample_rate),
        int(bool(r.clock_synchronised)),
        int(r.xruns),
        nan_to_none(r.levels.lzeq_db),
        # allow_nan: json writes NaN / Infinity tokens, which json.loads reads back.
        json.dumps([float(v) for v in r.levels.lzeq_series_db], allow_nan=True),
        nan_to_none(r.levels.peak_dbfs),
        Status(r.status).value,
        m.model_id if m else None,
        m.model_hash if m else None,
        m.backend if m else None,
        int(bool(m.is_scaffold)) if m else None,
        _indicators_json(r),
        json.dumps([dataclasses.asdict(mi) for mi in r.models]),
        json.dumps({t: Status(st).value for t, st in r.classifier_status}),
        stored_at,
    )


def _result_from_row(row: tuple[Any, ...], detections: tuple[Detection, ...]) -> WindowResult:
    (key, device_id, index, start_time, duration_s, sample_rate, clock_sync, xruns, leq_db,
     leq_series, peak_dbfs, status, model_id, model_hash, model_backend, model_is_scaffold, indicators,
     models_json, classifier_status_json) = row
    if models_json is not None:  # schema 5
        models = tuple(ModelInfo(**m) for m in json.loads(models_json))
    elif model_id is not None:
        models = (ModelInfo(model_id=model_id, model_hash=model_hash, backend=model_backend,
                            is_scaffold=bool(model_is_scaffold)),)
    else:
        models = ()
    classifier_status = tuple((t, Status(v)) for t, v in json.loads(classifier_status_json or "{}").items())
    order = {t: i for i, (t, _) in enumerate(classifier_status)}
    detections = tuple(sorted(detections, key=lambda d: (order.get(d.taxonomy, len(order)), d.rank)))
    doc = json.loads(indicators) if indicators is not None else None
    health = None
    if doc is not None and doc.get("health") is not None:
        h = doc["health"]
        health = MicHealth(**{**h, "flags": tuple(h["flags"])})
    return WindowResult(
        key=key,
        device_id=device_id,
        index=int(index),
        start_time=_from_text(start_time),
        duration_s=float(duration_s),
        sample_rate=int(sample_rate),
        clock_synchronised=bool(clock_sync),
        xruns=int(xruns),
        levels=_levels_from(doc, _unreal(leq_db), tuple(float(v) for v in json.loads(leq_series)),
                            _unreal(peak_dbfs)),
        status=Status(status),
        detections=detections,
        models=models,
        indices=AcousticIndices(**doc["indices"]) if doc is not None and doc.get("indices") is not None else None,
        health=health,
        classifier_status=classifier_status,
    )


def _store_error(path: Path, action: str, err: BaseException) -> StoreError:
    """Translate an sqlite3/OS error into a StoreError naming the file and a fix."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError):
        text = err.strerror or text
        hint = (
            f"check that {path.parent} can be created and is writable by the agent's user "
            "(systemd: StateDirectory=soundscape-agent), or set [store] path"
        )
    elif name == "SQLITE_FULL":
        hint = f"the filesystem holding {path} is full: free space on it (old logs, recordings)"
    elif name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        hint = f"check that {path} and its directory are writable by the agent's user"
    elif name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        hint = (
            f"the queue file is damaged: stop the agent, move {path} (and its -wal/-shm files) "
            "aside and start again; windows not yet synced from it are lost"
        )
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        hint = f"another process holds {path} locked: is a second agent running on the same queue?"
    elif name.startswith("SQLITE_IOERR"):
        hint = f"the storage holding {path} reported an I/O error: check the SD card / disk (dmesg)"
    elif isinstance(err, sqlite3.IntegrityError):
        hint = "the result violates the queue's constraints (a bug in the producing stage): report it"
    else:
        hint = f"check the file {path} and the free space on its filesystem"
    detail = f"{text} [{name}]" if name else text
    return StoreError(f"outbox {path}: cannot {action}: {detail}", hint)


@dataclass(frozen=True, slots=True)
class StorePressure:
    """The outbox's space situation (heartbeats, ``STATUS=``, ``diagnose``).

    Attributes:
        free_bytes: free space on the queue's filesystem for the agent's user, bytes.
        queue_bytes: pages the queue file uses (free pages inside it excluded), bytes.
        max_queue_bytes: the hard cap, ``[store] max_queue_mb`` in bytes.
        disk_low: ``free_bytes`` is below ``[store] min_free_mb``.
        full_recently: a write hit the hard cap or a full disk within the last
            :data:`FULL_RECENT_S` seconds.
        evicted_synced: synced windows deleted since the outbox was opened.
        evicted_unsynced: windows ever evicted unsynced from this file (its ``evicted`` table).
    """

    free_bytes: int
    queue_bytes: int
    max_queue_bytes: int
    disk_low: bool
    full_recently: bool
    evicted_synced: int
    evicted_unsynced: int


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


# ---------------------------------------------------------------------------------------------
# the outbox


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

    Args:
        cfg: the ``[store]`` section (``cfg.path``: the queue file; its directory is created).

    Usage::

        async with Outbox(cfg) as ob:
            await ob.put(result)
            batch = await ob.pending(500)

    Raises (from every method):
        StoreError: the file cannot be created, opened, read or written (unwritable
            directory, damaged file, disk full, newer schema), or the outbox is not open;
            the message names the path, the hint says what to do.
    """

    def __init__(self, cfg: StoreConfig) -> None:
        self._cfg = cfg
        self._path = Path(cfg.path)
        self._reserve_path = self._path.with_name(self._path.name + ".reserve")
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the outbox thread
        self._lock_fd: int | None = None  # flock on <path>.lock while open
        # eviction bookkeeping (outbox thread only)
        self._last_full: float | None = None  # time.monotonic() of the last SQLITE_FULL
        self._evicted_synced = 0
        self._free_checked = 0.0  # time.monotonic() of the last free-space check at write time
        self._incremental_vacuum = False  # the file gives freed pages back (auto_vacuum=INCREMENTAL)

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

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside BEGIN IMMEDIATE ... COMMIT, rolling back on any error."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
            conn.execute("COMMIT")
            return out
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory if needed, open the file, set pragmas and migrate the schema.

        Idempotent: calling it on an open outbox does nothing.

        Raises:
            StoreError: directory not creatable/writable, file damaged or not an SQLite
                database, schema newer than this agent knows, disk full, or the file already
                open in another process / another ``Outbox`` (``<path>.lock`` held).
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
        self._lock_fd = self._acquire_lock()
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                # a new file: let it give freed pages back to the filesystem (only possible
                # before the first table exists)
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._incremental_vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("outbox %s: journal_mode is %s, not wal (filesystem without shared memory?)", path, mode)
            conn.execute("PRAGMA synchronous = FULL")
            # checkpoint every ~1 MB of WAL (default 4 MB): a small WAL on a small or full disk
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            want = max(1, math.ceil(self._cfg.max_queue_mb * MB / page_size))
            got = conn.execute(f"PRAGMA max_page_count = {want}").fetchone()[0]
            if got > want:
                log.warning("outbox %s is already larger (%.1f MB) than [store] max_queue_mb = %g: it cannot "
                            "grow further", path, got * page_size / MB, self._cfg.max_queue_mb)
            self._ensure_reserve()
        except BaseException as err:
            if conn is not None:
                conn.close()
            self._release_lock()
            if isinstance(err, (sqlite3.Error, OSError)):
                raise _store_error(path, "open the queue", err) from err
            raise
        self._conn = conn

    def _acquire_lock(self) -> int:
        """Hold ``<path>.lock`` exclusively (flock) while open: one connection per file, ever.

        A second opener, in this or another process (a second agent, ``sync --once`` while the
        service runs), would be a second writer/checkpointer: the WAL-reset bug's condition.
        The kernel drops the lock when the process dies, even by SIGKILL.
        """
        lock_path = self._path.with_name(self._path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise _store_error(self._path, f"create the lock file {lock_path}", err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"outbox {self._path} is in use by another soundscape-agent (lock {lock_path} is held)",
                "only one process may open the queue: stop the running agent first "
                "(systemctl stop soundscape-agent); the running agent syncs by itself",
            ) from None
        except OSError as err:
            os.close(fd)
            raise _store_error(self._path, f"lock {lock_path}", err) from err
        return fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"outbox {self._path} has schema version {version}, this agent knows up to {SCHEMA_VERSION}",
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
            log.info("outbox %s: schema migrated to version %d", self._path, target)

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

        return await self._submit(lambda conn: self._write_making_room(conn, work), f"store window {result.key}")

    def _write_making_room(self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in a transaction; when it fails for lack of space (SQLITE_FULL: the hard
        cap or a full disk), make room by the eviction policy and try again, a few times."""
        self._keep_free(conn)
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            try:
                return self._in_transaction(conn, work)
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
                self._ensure_reserve()
        except (sqlite3.Error, OSError) as err:  # the write itself will say what is wrong
            log.debug("outbox %s: keeping space free failed: %s", self._path, err)

    def _relieve_low_disk(self, conn: sqlite3.Connection) -> int | None:
        """Policy step 2: with less than ``min_free_mb`` free, delete every synced window and
        checkpoint, so that the freed pages take the next windows and the file need not grow.

        Returns:
            Synced windows deleted, or ``None`` when the disk is not low.

        Raises:
            sqlite3.Error: not even one batch could be deleted.
        """
        if self._free_bytes() >= self._cfg.min_free_mb * MB:
            return None
        n = self._delete_synced(conn, None)
        if n:
            log.warning("outbox %s: less than [store] min_free_mb = %g MB free: deleted %d synced windows",
                        self._path, self._cfg.min_free_mb, n)
            self._checkpoint(conn)
        return n

    # -- eviction policy (see StoreConfig) ------------------------------------------------

    def _free_bytes(self) -> int:
        st = os.statvfs(self._path.parent)
        return st.f_bavail * st.f_frsize

    def _ensure_reserve(self) -> None:
        """Create the ballast file ``<path>.reserve`` (``reserve_mb``) if it is missing and the
        filesystem can spare it (free space at least twice its size)."""
        size = int(self._cfg.reserve_mb * MB)
        if size <= 0 or self._reserve_path.exists():
            return
        try:
            if self._free_bytes() < 2 * size + self._cfg.min_free_mb * MB:
                return
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as err:
            log.debug("outbox %s: no reserve file (%s)", self._path, err)
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()

    def _release_reserve(self) -> bool:
        """Delete the ballast file; True if there was one (its space is free now)."""
        try:
            self._reserve_path.unlink()
        except OSError:
            return False
        log.warning("outbox %s: disk full: released the %g MB reserve file to make room", self._path,
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
                n = self._in_transaction(conn, batch)
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

        n, gap = self._in_transaction(conn, work)
        if gap is not None:
            total = conn.execute("SELECT count(*) FROM evicted").fetchone()[0]
            log.error("outbox %s: %s and nothing synced left to delete: evicted the %d oldest UNSYNCED windows, "
                      "recorded in a gap (%s to %s); %d evicted unsynced in all", self._path,
                      "queue at its hard cap [store] max_queue_mb" if reason == "queue_full" else "disk full",
                      n, gap.start_time.isoformat(timespec="seconds"), gap.end_time.isoformat(timespec="seconds"),
                      total)
        return n

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
        released = False if at_cap else self._release_reserve()
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
        cfg = self._cfg

        def work(conn: sqlite3.Connection) -> int:
            n = self._relieve_low_disk(conn)
            if n is None:  # space to spare: retention, and give the freed pages back
                n = self._delete_synced(conn, _to_text(datetime.now(timezone.utc)
                                                       - timedelta(days=cfg.keep_synced_days)))
                if n and self._incremental_vacuum:
                    # executescript steps it to completion (execute() would free one page per call)
                    conn.executescript("PRAGMA incremental_vacuum;")
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._ensure_reserve()
            return n

        return await self._submit(work, "apply the eviction policy")

    async def pressure(self) -> StorePressure:
        """The outbox's :class:`StorePressure` now.

        Raises:
            StoreError: the file cannot be read.
        """

        def work(conn: sqlite3.Connection) -> StorePressure:
            pages, free_pages, page_size, limit = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in
                                                   ("page_count", "freelist_count", "page_size", "max_page_count"))
            free = self._free_bytes()
            return StorePressure(
                free_bytes=free, queue_bytes=(pages - free_pages) * page_size, max_queue_bytes=limit * page_size,
                disk_low=free < self._cfg.min_free_mb * MB,
                full_recently=self._last_full is not None and time.monotonic() - self._last_full < FULL_RECENT_S,
                evicted_synced=self._evicted_synced,
                evicted_unsynced=conn.execute("SELECT count(*) FROM evicted").fetchone()[0],
            )

        return await self._submit(work, "read the queue's size")

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
        return await self._submit(lambda conn: self._write_making_room(conn, lambda c: self._insert_event(c, event)),
                                  "store an event")

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
                    f"SELECT {_WINDOW_COLUMNS} FROM windows WHERE synced_at IS NULL"
                    " ORDER BY start_time, key LIMIT ?",
                    (limit,),
                ).fetchall()
                dets: dict[str, list[Detection]] = {}
                for key, taxonomy, rank, label, label_index, score, offset_s in conn.execute(
                    "SELECT window_key, taxonomy, rank, label, label_index, score, offset_s FROM detections"
                    " WHERE window_key IN"
                    " (SELECT key FROM windows WHERE synced_at IS NULL ORDER BY start_time, key LIMIT ?)"
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
                self._delivered_after_eviction(conn, [k for _, _, k in params])
            return marked

        return await self._submit(lambda conn: self._write_making_room(conn, work), "mark windows synced")

    @staticmethod
    def _delivered_after_eviction(conn: sqlite3.Connection, keys: list[str]) -> None:
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

        return await self._submit(lambda conn: self._write_making_room(conn, work), "store a heartbeat")

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
            rows = conn.execute(f"SELECT {columns} FROM {table} WHERE synced_at IS NULL ORDER BY time, {id_column}"
                                " LIMIT ?", (limit,)).fetchall()
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

        return await self._submit(lambda conn: self._write_making_room(conn, work), f"mark {table} synced")

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

        await self._submit(lambda conn: self._in_transaction(conn, work), "store the calibration")

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


__all__ = ["EVENT_KINDS", "Outbox", "QueueInspection", "QueueStats", "SCHEMA_VERSION", "StorePressure", "inspect_queue",
           "nan_to_none"]
