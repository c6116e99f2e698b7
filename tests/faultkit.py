"""Shared by the fault-injection suite (``pytest -m faults``): a dedicated PostgreSQL server,
the real agent as a child process, the exactly-once check and the results file.

Every fault test drives the real ``soundscape-agent run`` process against a real SQLite
outbox and a real PostgreSQL, and ends with :func:`check_delivery`: the set of windows in
PostgreSQL equals the set committed locally (nothing lost, nothing duplicated) and SQLite's
``quick_check`` is ``ok``. What each test did is recorded with :meth:`FaultResults.record`;
the session writes it to ``$SOUNDSCAPE_FAULT_RESULTS`` (default ``build/fault-results.json``
plus a Markdown table beside it). ``scripts/faults.sh`` runs the full counts and writes the
committed ``benchmarks/results/faults.{json,md}``.

Scale: ``SOUNDSCAPE_FAULT_SCALE=full`` selects the full counts (e.g. 200 kill -9 cycles);
anything else (CI) the reduced ones, see :func:`scaled`.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from tests.pg import PgServer, PgServerUnavailable

ROOT = Path(__file__).resolve().parent.parent
AGENT = [sys.executable, "-m", "agent.cli"]
SCALE = os.environ.get("SOUNDSCAPE_FAULT_SCALE", "ci")
RESULTS_PATH = Path(os.environ.get("SOUNDSCAPE_FAULT_RESULTS", ROOT / "build" / "fault-results.json"))


def scaled(ci: int, full: int) -> int:
    """``full`` when ``SOUNDSCAPE_FAULT_SCALE=full``, else ``ci`` (the reduced count CI runs)."""
    return full if SCALE == "full" else ci


# ---------------------------------------------------------------------------------------------
# results file


def measured_on() -> dict[str, object]:
    """Where and when a figure is measured: ``commit`` (``git rev-parse HEAD``), ``dirty`` (the
    work tree differs from it under ``agent/`` or ``tests/``: then the figure is of no commit)
    and ``measured_at`` (UTC, ISO 8601)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)

    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--", "agent", "tests")
    return {"commit": head.stdout.strip() if head.returncode == 0 else None,
            "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None,
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@dataclass
class FaultResults:
    """What the suite did, one entry per fault, written at the end of the session."""

    entries: dict[str, dict] = field(default_factory=dict)

    def record(self, fault: str, *, cycles: int, faults_injected: int, windows_sent: int, lost: int,
               duplicated: int, worst_recovery_s: float | None, **extra: object) -> None:
        """Record one fault's figures.

        Args:
            fault: short name (``crash``, ``server_outage``, ``gsm_link``, ...).
            cycles: fault cycles run (kill -9 / restart cycles, outages, ...).
            faults_injected: individual faults injected (kills, resets, black-holes, ...).
            windows_sent: windows committed locally that PostgreSQL holds at the end.
            lost: windows committed locally and missing in PostgreSQL (must be 0).
            duplicated: windows stored twice in PostgreSQL (must be 0).
            worst_recovery_s: longest time from the end of a fault until the queue was
                drained or the agent back at work, s (None when not meaningful).
            extra: any other figure worth stating (JSON-serialisable).
        """
        self.entries[fault] = {
            **measured_on(),
            "scale": SCALE, "cycles": int(cycles), "faults_injected": int(faults_injected),
            "windows_sent": int(windows_sent), "lost": int(lost), "duplicated": int(duplicated),
            "worst_recovery_s": None if worst_recovery_s is None else round(float(worst_recovery_s), 2),
            **extra,
        }

    def write(self, path: Path = RESULTS_PATH) -> None:
        """Merge the entries into ``path`` (JSON) and rewrite the Markdown table beside it."""
        if not self.entries:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        faults = {**doc.get("faults", {}), **self.entries}
        doc = {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "faults": faults}
        path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
        path.with_suffix(".md").write_text(results_markdown(doc))


def results_markdown(doc: dict) -> str:
    """The results document as a Markdown table (one row per fault)."""
    cols = ("cycles", "faults_injected", "windows_sent", "lost", "duplicated", "worst_recovery_s")
    lines = ["| fault | scale | " + " | ".join(c.replace("_", " ") for c in cols) + " | commit | measured at |",
             "|---|---|" + "---:|" * len(cols) + "---|---|"]
    for name, e in doc["faults"].items():
        cells = ["-" if e.get(c) is None else str(e.get(c)) for c in cols]
        when = (e.get("measured_at") or "-").replace("+00:00", "Z")
        lines.append(f"| {name} | {e.get('scale', '?')} | " + " | ".join(cells)
                     + f" | {(e.get('commit') or '-')[:12]} | {when} |")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def fault_results():
    """The session's :class:`FaultResults`, written to :data:`RESULTS_PATH` at the end."""
    results = FaultResults()
    yield results
    results.write()


# ---------------------------------------------------------------------------------------------
# PostgreSQL: a server of the fault suite's own (tests stop and restart it)


def running_server() -> Iterator[PgServer]:
    """Yield a started :class:`tests.pg.PgServer` and remove it afterwards; FAILS the test (never
    skips) when the machine has no server binaries. The body of the PostgreSQL fixtures."""
    try:
        server = PgServer()
    except PgServerUnavailable as err:
        pytest.fail(f"{err} (scripts/test.sh installs the postgresql package)", pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def fault_pg():
    """A :class:`tests.pg.PgServer` for one test module; tests may stop and start it."""
    yield from running_server()


@pytest.fixture
def fault_dsn(fault_pg):
    """DSN (admin) of a fresh database on :func:`fault_pg` with the agent's schema applied."""
    from agent.sync import migrate

    if not fault_pg.running:
        fault_pg.start()
    dsn = fault_pg.create_database()
    migrate(dsn)
    return dsn


# ---------------------------------------------------------------------------------------------
# a recording replayed by successive runs

_STAMP = re.compile(r"(\d{8})_(\d{6})")


def next_anchor(directory: Path) -> Path:
    """Rename the one recording in ``directory`` so that its next replay is anchored where a full
    replay at the current anchor would end: its ``YYYYMMDD_HHMMSS`` stamp (where the file source
    anchors it, :func:`agent.filesource.recording_start`) moves on by the recording's length,
    rounded up to whole seconds. ``capture.path`` names the directory, so the config stays as it is.

    For fault tests that restart the agent on one recording, before each restart: every run
    replays the file from its beginning, and with the stamp unchanged each run would store its
    windows at the start times of the runs before it under a new capture stream: one device's
    start time under two keys, which :func:`check_delivery` counts as a duplicate (it cannot
    tell it from a window re-queued under a new key, nor should it). Moved on, the runs read as
    one recorder's consecutive files, and a real duplicate still shows.

    Args:
        directory: holds exactly one ``.wav``/``.flac`` file with a ``YYYYMMDD_HHMMSS`` stamp
            in its name, and nothing else of the agent's may have it open (stop or kill first).

    Returns:
        The recording's new path.

    Raises:
        AssertionError: ``directory`` does not hold exactly one stamped recording.
    """
    import soundfile as sf

    files = [f for f in directory.iterdir() if f.suffix.lower() in (".wav", ".flac")]
    assert len(files) == 1, f"{directory}: one recording expected, found {sorted(f.name for f in files)}"
    (f,) = files
    m = _STAMP.search(f.name)
    assert m, f"{f.name}: no YYYYMMDD_HHMMSS stamp"
    start = datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S")
    info = sf.info(str(f))
    later = start + timedelta(seconds=math.ceil(info.frames / info.samplerate))
    target = f.with_name(f.name[:m.start()] + later.strftime("%Y%m%d_%H%M%S") + f.name[m.end():])
    f.rename(target)
    return target


# ---------------------------------------------------------------------------------------------
# the agent process


class AgentProcess:
    """``soundscape-agent run`` as a child process, its stdout and stderr in files.

    Args:
        config: the TOML config file.
        logdir: where ``agent-<n>.out`` / ``agent-<n>.err`` go (n counts the starts).
        args: extra CLI arguments (``-v`` is always passed: INFO logs on stderr).
        env: extra environment variables.
        prefix: command prefix (e.g. ``["ip", "netns", "exec", "ns"]``).
    """

    starts = 0

    def __init__(self, config: Path, logdir: Path, *, args: tuple[str, ...] = (), env: dict | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        AgentProcess.starts += 1
        self.n = AgentProcess.starts
        self.out_path = logdir / f"agent-{self.n}.out"
        self.err_path = logdir / f"agent-{self.n}.err"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*prefix, *AGENT, "-v", "run", "--config", str(config), *args],
                                     stdout=self._out, stderr=self._err, cwd=ROOT,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        """Everything the agent printed so far (one line per stored window)."""
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        """The agent's log so far."""
        return self.err_path.read_text(errors="replace")

    def windows_printed(self) -> int:
        """Windows the agent reported as stored so far."""
        return len(self.window_indices())

    def window_indices(self) -> list[int]:
        """Indices of the windows the agent reported as stored (``window <index> ...`` lines)."""
        return [int(ln.split()[1]) for ln in self.stdout().splitlines() if ln.startswith("window ")]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> float:
        """Poll ``predicate`` until true; return the seconds it took.

        Raises:
            AssertionError: not true within ``timeout`` s, or the agent died meanwhile (the
                message holds the tail of its log).
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if predicate():
                return time.monotonic() - t0
            if not self.alive():
                raise AssertionError(f"agent exited ({self.proc.returncode}) while waiting for {what}:\n"
                                     + self.stderr()[-3000:])
            time.sleep(poll)
        raise AssertionError(f"not within {timeout:g} s: {what}\n" + self.stderr()[-3000:])

    def kill9(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would; reap the process."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            self._close()
        return rc

    def _close(self) -> None:
        for fh in (self._out, self._err):
            if not fh.closed:
                fh.close()


# ---------------------------------------------------------------------------------------------
# the exactly-once check


@dataclass(frozen=True)
class Delivery:
    """Local outbox versus PostgreSQL for one device.

    Attributes:
        local: window keys committed to the outbox (still present).
        evicted: keys evicted unsynced by the eviction policy (recorded, counted).
        remote: window keys in PostgreSQL.
        unsynced: local keys not yet marked synced.
        duplicated: rows in PostgreSQL beyond one per window, counted from the data, not from
            the table's key (whose columns a schema may change): the larger of the extra rows per
            (device, start time), i.e. one device's window stored under two or more keys
            whatever their capture stream (a window re-queued under a new key, a recording
            replayed at the same anchor), and the extra rows per (device, window key), i.e. one
            key stored twice (a batch replayed to a server whose key no longer makes
            ``ON CONFLICT DO NOTHING`` skip it). One device never starts two genuine windows at
            the same microsecond, so every such row is a duplicate.
        quick_check: SQLite ``PRAGMA quick_check`` result.
    """

    local: frozenset[str]
    evicted: frozenset[str]
    remote: frozenset[str]
    unsynced: frozenset[str]
    duplicated: int
    quick_check: str

    @property
    def lost(self) -> frozenset[str]:
        """Committed locally (and not evicted by policy) but missing in PostgreSQL."""
        return self.local - self.remote

    @property
    def phantom(self) -> frozenset[str]:
        """In PostgreSQL but never committed locally (or evicted by policy)."""
        return self.remote - self.local - self.evicted


def local_keys(db: Path) -> tuple[set[str], set[str], set[str]]:
    """(all window keys, unsynced keys, keys evicted unsynced) of an outbox, opened read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT key, synced_at IS NULL FROM windows").fetchall()
        has_evicted = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'evicted'").fetchone()
        evicted = {k for (k,) in con.execute("SELECT key FROM evicted")} if has_evicted else set()
    finally:
        con.close()
    return {k for k, _ in rows}, {k for k, u in rows if u}, evicted


def unsynced_count(db: Path) -> int:
    """Windows of an outbox not yet marked synced (file opened read-only)."""
    return len(local_keys(db)[1])


def quick_check(db: Path) -> str:
    """SQLite ``PRAGMA quick_check`` of a file (read-only): ``ok`` or the problems found."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return "; ".join(r[0] for r in con.execute("PRAGMA quick_check"))
    finally:
        con.close()


def check_delivery(db: Path, dsn: str, device: str | None = None, *, synced_locally: bool = True,
                   committed: set[str] | None = None) -> Delivery:
    """Compare the outbox with PostgreSQL and assert exactly-once delivery and an intact file.

    Args:
        db: the SQLite outbox (the agent must have stopped or been killed).
        dsn: the PostgreSQL database (admin).
        device: restrict the server side to this device (default: every row).
        synced_locally: also assert that every local window is marked synced.
        committed: every window key the agent committed, when the outbox no longer holds them
            all (synced windows deleted by the eviction policy); default: the outbox's keys.

    Returns:
        The :class:`Delivery`, for the results file.

    Raises:
        AssertionError: a window lost, a phantom window, a duplicate (see
            :attr:`Delivery.duplicated`), or a damaged file.
    """
    local, unsynced, evicted = local_keys(db)
    if committed is not None:
        assert local <= committed, f"the outbox holds windows the agent never reported: {sorted(local - committed)[:5]}"
        local = set(committed) - evicted
    where = "WHERE device = %s" if device else ""
    args = (device,) if device else ()
    with psycopg.connect(dsn) as con:
        remote = [k for (k,) in con.execute(f"SELECT window_key FROM windows {where}", args)]
        # from the rows, not the constraint: extra rows per (device, start time) or per (device,
        # key), whichever is larger (a key replayed twice adds one to both: counted once)
        (duplicated,) = con.execute(
            f"SELECT count(*) - least(count(DISTINCT (device, start_time)), count(DISTINCT (device, window_key)))"
            f" FROM windows {where}", args).fetchone()
        examples = con.execute(
            f"SELECT device, start_time, count(*), (array_agg(window_key ORDER BY window_key))[1:4] FROM windows"
            f" {where} GROUP BY device, start_time HAVING count(*) > 1 ORDER BY device, start_time LIMIT 3",
            args).fetchall() if duplicated else []
    d = Delivery(frozenset(local), frozenset(evicted), frozenset(remote), frozenset(unsynced),
                 duplicated=int(duplicated), quick_check=quick_check(db))
    assert d.quick_check == "ok", f"SQLite quick_check: {d.quick_check}"
    assert not d.lost, f"{len(d.lost)} windows committed locally never reached PostgreSQL: {sorted(d.lost)[:5]}"
    assert not d.phantom, (f"{len(d.phantom)} windows in PostgreSQL were never committed locally: "
                           f"{sorted(d.phantom)[:5]}")
    assert d.duplicated == 0, (f"{d.duplicated} duplicated windows in PostgreSQL (one device's start time or key "
                               "stored more than once), e.g. " + "; ".join(
                                   f"{dev} {t.isoformat()}: {n} rows, keys {keys}{' ...' if n > len(keys) else ''}"
                                   for dev, t, n, keys in examples))
    if synced_locally:
        assert not d.unsynced, f"{len(d.unsynced)} windows delivered but not marked synced locally"
    return d


def drain(config: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``soundscape-agent sync --once`` with ``config``: deliver what is left in the outbox."""
    return subprocess.run([*AGENT, "sync", "--once", "--config", str(config)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
