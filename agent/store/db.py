"""SQLite plumbing of the outbox: the ``<path>.lock`` flock, the connection's pragmas and
migration, ``BEGIN IMMEDIATE`` transactions, sqlite/OS errors as :class:`StoreError`."""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.errors import StoreError
from agent.store.schema import migrate

log = logging.getLogger("agent.store")

T = TypeVar("T")

#: Bytes in the MB of ``[store]`` sizes (SI megabyte).
MB = 1_000_000
#: WAL pages between automatic checkpoints (SQLite's default is 1000, ~4 MB).
WAL_AUTOCHECKPOINT_PAGES = 256

#: Milliseconds a statement waits for a lock held by another process (e.g. a read-only
#: ``status`` query holding a snapshot while we checkpoint) before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

#: TEST ONLY, NEVER IN PRODUCTION. When this environment variable is ``OFF`` or ``NORMAL``, the
#: outbox runs with that ``synchronous`` instead of ``FULL``, i.e. it acknowledges windows that a
#: power cut can still take away. It exists so that the power-cut fault test
#: (tests/test_faults_power.py) can show that it fails without ``FULL``; a loud warning is logged
#: on every open while it is set, and any other value is refused.
UNSAFE_SYNCHRONOUS_ENV = "SOUNDSCAPE_TEST_ONLY_UNSAFE_SYNCHRONOUS"


def in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
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


class StoreFullError(StoreError):
    """The queue refused a write for lack of space: its hard cap ``[store] max_queue_mb`` or a
    full filesystem, after the eviction policy made what room it could. The pipeline records
    through it (the windows are counted, then recorded as a gap), and, unlike a broken queue,
    it counts as progress for the watchdog: a restart would free nothing."""


#: Free bytes below which the queue's filesystem counts as full: an SQLite I/O error there
#: (e.g. SQLITE_IOERR_SHMSIZE: no room for the ``-shm`` file) is the disk being full.
FULL_FILESYSTEM_BYTES = MB


def filesystem_space(directory: Path) -> tuple[int, int] | None:
    """(free bytes for the agent's user, total bytes) of the filesystem holding ``directory``,
    or ``None`` when it cannot be read."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def no_room(path: Path, err: BaseException) -> bool:
    """Whether ``err`` (from the queue at ``path``) means "no space": SQLITE_FULL (the hard cap
    or a full filesystem), ENOSPC, or an SQLite I/O error while the filesystem is full."""
    name = getattr(err, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL" or (isinstance(err, OSError) and err.errno == errno.ENOSPC):
        return True
    space = filesystem_space(path.parent) if name.startswith("SQLITE_IOERR") else None
    return space is not None and space[0] < FULL_FILESYSTEM_BYTES


def _store_error(path: Path, action: str, err: BaseException) -> StoreError:
    """Translate an sqlite3/OS error into a StoreError naming the file and a fix
    (:class:`StoreFullError` when it means "no space")."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    detail = f"{text} [{name}]" if name else text
    if no_room(path, err):
        space = filesystem_space(path.parent)
        if space is not None and space[0] < FULL_FILESYSTEM_BYTES:
            hint = (f"the filesystem holding {path.parent} is full ({space[0]} bytes free of {space[1] / MB:.1f} MB): "
                    "free space on it (old logs: journalctl --vacuum-size=50M; recordings; queue files moved aside "
                    "as damaged, *.damaged-*)")
        else:
            hint = (f"the queue {path} reached its hard cap [store] max_queue_mb, or its filesystem was full: let "
                    "it drain to the server (see the postgres check), raise max_queue_mb or free space on the disk")
        return StoreFullError(f"outbox {path}: cannot {action}: {detail}", hint)
    if isinstance(err, OSError):
        hint = (
            f"check that {path.parent} can be created and is writable by the agent's user "
            "(systemd: StateDirectory=soundscape-agent), or set [store] path"
        )
    elif name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        hint = f"check that {path} and its directory are writable by the agent's user"
    elif damaged(err):
        hint = (
            f"the queue file is damaged: restart the agent (soundscape-agent run moves {path} and its -wal/-shm "
            f"files aside as {path.name}.damaged-<UTC time>, kept for inspection, and starts a fresh queue), or "
            "move them aside yourself; windows not yet synced from it do not reach the server"
        )
    elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        hint = f"another process holds {path} locked: is a second agent running on the same queue?"
    elif name.startswith("SQLITE_IOERR"):
        hint = f"the storage holding {path} reported an I/O error: check the SD card / disk (dmesg)"
    elif isinstance(err, sqlite3.IntegrityError):
        hint = "the result violates the queue's constraints (a bug in the producing stage): report it"
    else:
        hint = f"check the file {path} and the free space on its filesystem"
    return StoreError(f"outbox {path}: cannot {action}: {detail}", hint)


def damaged(err: BaseException) -> bool:
    """Whether ``err`` says the queue file is damaged or not an SQLite database at all
    (SQLITE_NOTADB, SQLITE_CORRUPT and its extended codes)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT"))


def acquire_lock(path: Path) -> int:
    """Hold ``<path>.lock`` exclusively (flock) while open: one connection per file, ever.

    A second opener, in this or another process (a second agent, ``sync --once`` while the
    service runs), would be a second writer/checkpointer: the WAL-reset bug's condition.
    The kernel drops the lock when the process dies, even by SIGKILL.

    Returns:
        The lock file's descriptor; closing it releases the lock.

    Raises:
        StoreError: the lock is held (another agent has the queue open), or the lock file
            cannot be created or locked.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise _store_error(path, f"create the lock file {lock_path}", err) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"outbox {path} is in use by another soundscape-agent (lock {lock_path} is held)",
            "only one process may open the queue: stop the running agent first "
            "(systemctl stop soundscape-agent); the running agent syncs by itself",
        ) from None
    except OSError as err:
        os.close(fd)
        raise _store_error(path, f"lock {lock_path}", err) from err
    return fd


def _synchronous(path: Path) -> str:
    """``FULL``, unless the test-only :data:`UNSAFE_SYNCHRONOUS_ENV` asks for less.

    Raises:
        StoreError: the variable is set to anything but ``OFF`` or ``NORMAL``.
    """
    unsafe = os.environ.get(UNSAFE_SYNCHRONOUS_ENV)
    if not unsafe:
        return "FULL"
    if unsafe.upper() not in ("OFF", "NORMAL"):
        raise StoreError(f"outbox {path}: {UNSAFE_SYNCHRONOUS_ENV}={unsafe!r} is not OFF or NORMAL",
                         f"unset {UNSAFE_SYNCHRONOUS_ENV}: it is a test-only switch that makes the queue "
                         "lose acknowledged windows at a power cut")
    log.warning("outbox %s: synchronous=%s (%s is set): TEST ONLY, acknowledged windows can be lost at a "
                "power cut; never set it in production", path, unsafe.upper(), UNSAFE_SYNCHRONOUS_ENV)
    return unsafe.upper()


def configure(conn: sqlite3.Connection, path: Path, max_queue_mb: float) -> bool:
    """Set the outbox connection's pragmas (WAL, ``synchronous=FULL``, foreign keys, a
    ``max_page_count`` of ``max_queue_mb`` MB) and migrate its schema; a new file is made
    ``auto_vacuum=INCREMENTAL`` first. (``synchronous`` is lowered only by the test-only
    :data:`UNSAFE_SYNCHRONOUS_ENV`, which the power-cut test uses to show that it can fail.)

    Returns:
        Whether the file gives freed pages back (``auto_vacuum=INCREMENTAL``).

    Raises:
        StoreError: the schema is newer than this agent knows.
        sqlite3.Error: as the connection raises it.
    """
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        # a new file: let it give freed pages back to the filesystem (only possible
        # before the first table exists)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    incremental_vacuum: bool = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("outbox %s: journal_mode is %s, not wal (filesystem without shared memory?)", path, mode)
    conn.execute(f"PRAGMA synchronous = {_synchronous(path)}")
    # checkpoint every ~1 MB of WAL (default 4 MB): a small WAL on a small or full disk
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn, path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    want = max(1, math.ceil(max_queue_mb * MB / page_size))
    got = conn.execute(f"PRAGMA max_page_count = {want}").fetchone()[0]
    if got > want:
        log.warning("outbox %s is already larger (%.1f MB) than [store] max_queue_mb = %g: it cannot "
                    "grow further", path, got * page_size / MB, max_queue_mb)
    return incremental_vacuum
