"""SQLite plumbing of the outbox: the ``<path>.lock`` flock, the connection's pragmas and
migration, ``BEGIN IMMEDIATE`` transactions, sqlite/OS errors as :class:`StoreError`."""

from __future__ import annotations

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


def configure(conn: sqlite3.Connection, path: Path, max_queue_mb: float) -> bool:
    """Set the outbox connection's pragmas (WAL, ``synchronous=FULL``, foreign keys, a
    ``max_page_count`` of ``max_queue_mb`` MB) and migrate its schema; a new file is made
    ``auto_vacuum=INCREMENTAL`` first.

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
    conn.execute("PRAGMA synchronous = FULL")
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
