"""Fault: the queue file itself. A ``queue.db`` that is not an SQLite database (garbage) or is
damaged where opening or migrating it reads is moved aside (``queue.db.damaged-<UTC time>``, with
its -wal/-shm, never deleted), a fresh queue is started and a ``queue_replaced`` gap saying what
is known of the damaged file's windows reaches the server; heartbeats say ``queue_replaced`` and
``diagnose`` lists the damaged files. A queue that breaks while the agent runs (the storage dies)
no longer feeds systemd's watchdog, so systemd restarts the agent; a full queue whose eviction
policy is doing its job still does (a restart would free nothing).

The store and pipeline parts run in-process on real files; the faults run the real agent against
a real PostgreSQL (``damaged_queue``) and an ext4 filesystem shut down under it (its storage
failing as a dying SD card does).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import signal
import sqlite3
import struct
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest

from agent.config import StoreConfig, WindowsConfig
from agent.errors import StoreError
from agent.records import Gap, Window
from agent.store import Outbox
from tests.audio import PCM_NAME, real_audio_s16, write_alsa_file_pcm
from tests.factories import make_levels, make_result
from tests.faultkit import AGENT, ROOT, AgentProcess, check_delivery, local_keys
from tests.test_faults_disk import DEVICE, RATE, agent_config, diagnose, remote_heartbeats, schema4_queue
from tests.test_run import write_config
from tests.test_service import NotifyListener

pytestmark = pytest.mark.faults  # scripts/faults.sh runs the module (damaged_queue)

T_OLD = datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)
GARBAGE = b"this is not an SQLite database\n" * 200


def damage_detections(db: Path) -> None:
    """Overwrite the root page of the detections table with garbage: the windows stay readable,
    migration 5 (which copies every detection) fails with SQLITE_CORRUPT."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'detections'").fetchone()
        (page_size,) = con.execute("PRAGMA page_size").fetchone()
    finally:
        con.close()
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(np.random.default_rng(7).integers(0, 256, page_size, dtype=np.uint8).tobytes())


def damaged_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("queue.db.damaged-*") if not p.name.endswith(("-wal", "-shm")))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the store, in-process


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_queue_started_with_a_gap(tmp_path):
    db = tmp_path / "queue.db"
    db.write_bytes(GARBAGE)
    (tmp_path / "queue.db-wal").write_bytes(b"a stale WAL of the damaged file")
    before = datetime.now(timezone.utc).replace(microsecond=0)

    async def main():
        async with Outbox(StoreConfig(path=db), device_id="moth") as ob:
            assert await ob.put(make_result(0))
            return ob.replaced, await ob.pending_events(10), await ob.pending(10)

    replaced, events, pending = asyncio.run(main())
    (moved,) = damaged_files(tmp_path)
    assert moved.read_bytes() == GARBAGE, "the damaged file is kept as it was"
    assert (tmp_path / f"{moved.name}-wal").read_bytes() == b"a stale WAL of the damaged file"
    stamp = datetime.strptime(moved.name.removeprefix("queue.db.damaged-"), "%Y%m%dT%H%M%SZ")
    assert before <= stamp.replace(tzinfo=timezone.utc) <= datetime.now(timezone.utc)
    assert [r.key for r in pending] == ["s1-0"]  # the fresh queue works
    (gap,) = events
    assert isinstance(gap, Gap) and gap.reason == "queue_replaced" and gap.device_id == "moth"
    assert gap.windows == 0 and gap.start_time == gap.end_time
    assert moved.name in gap.detail and f"{len(GARBAGE)} bytes" in gap.detail and "SQLITE_NOTADB" in gap.detail
    assert "could not be read" in gap.detail
    assert replaced is not None and replaced.path == moved and replaced.windows is None


def test_a_queue_damaged_where_its_migration_reads_is_replaced_and_its_unsynced_windows_counted(tmp_path):
    db = tmp_path / "queue.db"
    keys = schema4_queue(db, 200, start=T_OLD)
    damage_detections(db)
    damaged = sha256(db)

    async def main():
        async with Outbox(StoreConfig(path=db), device_id=DEVICE) as ob:
            return await ob.pending_events(10)

    (gap,) = asyncio.run(main())
    (moved,) = damaged_files(tmp_path)
    assert sha256(moved) == damaged
    assert gap.reason == "queue_replaced" and "SQLITE_CORRUPT" in gap.detail
    assert gap.windows == len(keys) == 200
    assert gap.start_time == T_OLD and gap.end_time == T_OLD + timedelta(seconds=200)
    assert "200 windows, 200 of them not synced" in gap.detail, gap.detail


def test_without_a_device_id_a_damaged_queue_is_refused_and_left_where_it_is(tmp_path):
    """The one-off commands (``sync --once``, ``calibrate``) never move a queue: the running
    agent does, at its start."""
    db = tmp_path / "queue.db"
    db.write_bytes(GARBAGE)

    async def main():
        await Outbox(StoreConfig(path=db)).open()

    with pytest.raises(StoreError) as ei:
        asyncio.run(main())
    assert "damaged" in ei.value.hint and "aside" in ei.value.hint
    assert db.read_bytes() == GARBAGE and not damaged_files(tmp_path)


def test_a_queue_of_a_newer_agent_is_not_mistaken_for_a_damaged_one(tmp_path):
    db = tmp_path / "queue.db"
    con = sqlite3.connect(db)
    con.execute("PRAGMA user_version = 999")
    con.close()

    async def main():
        await Outbox(StoreConfig(path=db), device_id="moth").open()

    with pytest.raises(StoreError, match="schema version 999"):
        asyncio.run(main())
    assert not damaged_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# the watchdog, in-process: which store failures count as progress


class FailingOutbox:
    """An outbox whose every ``put`` raises ``error`` (a real one, made by the real store)."""

    def __init__(self, error: StoreError) -> None:
        self.error = error
        self.path = Path("/nonexistent/queue.db")

    async def put(self, result):
        raise self.error

    async def put_event(self, event):
        raise self.error


def real_store_error(tmp_path: Path, kind: str) -> StoreError:
    """The StoreError the outbox raises for a real SQLite error: ``full`` (SQLITE_FULL at the
    queue's hard cap) or ``broken`` (SQLITE_NOTADB)."""
    from agent.store.db import _store_error

    path = tmp_path / f"{kind}.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        if kind == "full":
            con.execute("CREATE TABLE t (x BLOB)")
            con.execute("PRAGMA max_page_count = 3")
            with pytest.raises(sqlite3.Error) as ei:
                con.execute("INSERT INTO t VALUES (zeroblob(100000))")
        else:
            path.write_bytes(GARBAGE)
            with pytest.raises(sqlite3.Error) as ei:
                con.execute("SELECT count(*) FROM sqlite_master")
    finally:
        con.close()
    return _store_error(path, "store window x", ei.value)


class LiveSource:
    live = True


class Notifier:
    watchdog_interval_s = 2.0

    def __init__(self) -> None:
        self.pings = 0

    def watchdog(self) -> None:
        self.pings += 1

    def status(self, text: str) -> None:
        pass


@pytest.mark.parametrize("kind", ["broken", "full"])
def test_a_queue_that_keeps_failing_stops_feeding_the_watchdog_a_full_one_does_not(tmp_path, kind):
    from agent.analysis.acoustics import Acoustics
    from agent.pipeline import Pipeline
    from agent.records import Status
    from agent.supervise import Watchdog

    error = real_store_error(tmp_path, kind)
    assert ("SQLITE_FULL" if kind == "full" else "SQLITE_NOTADB") in error.message

    async def main() -> tuple[int, float]:
        p = Pipeline(device_id="moth", source=LiveSource(), windows=WindowsConfig(length_s=1.0), acoustics=None,
                     outbox=FailingOutbox(error), syncer=None, notifier=Notifier())
        p.commit_deadline_s = 0.3
        wd = Watchdog(p)
        acoustics = Acoustics(levels=make_levels(0), indices=None, health=None)
        for i in range(4):  # capture and analysis go on, every window refused by the queue
            await asyncio.sleep(0.15)
            window = Window(key=f"s-{i}", index=i, start_frame=i * 16000, start_time=T_OLD + timedelta(seconds=i),
                            sample_rate=16000, samples=np.zeros(16000, np.float32), clock_synchronised=True)
            p.stats.windows += 1
            p.stats.frames += 16000
            await p._store(window, acoustics, Status.DISABLED, (), (), ())
            await wd.tick()
        p._acoustics_pool.shutdown()
        return p.notifier.pings, p.stats.dropped

    pings, dropped = asyncio.run(main())
    assert dropped == 4
    if kind == "full":  # the policy made what room it could: a restart would free nothing
        assert pings == 4
    else:  # a broken queue: only the first ticks, within the deadline from the start, feed it
        assert pings <= 2, f"{pings} watchdog pings while every write failed"


# ---------------------------------------------------------------------------------------------
# the real agent


def beats_since(dsn: str, n: int) -> list[tuple[list[str], int]]:
    """(degraded, evicted_unsynced) of the heartbeats in PostgreSQL after the first ``n``."""
    return remote_heartbeats(dsn)[n:]


def remote_gaps(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT start_time, end_time, windows, detail FROM gaps WHERE device = %s"
                           " AND reason = 'queue_replaced' ORDER BY sync_time", (DEVICE,)).fetchall()


def test_a_damaged_queue_is_moved_aside_the_agent_records_and_the_server_hears_of_it(
        tmp_path, fault_dsn, fault_results):
    """Cycle 1: garbage in place of queue.db (SQLITE_NOTADB). Cycle 2: a schema-4 queue whose
    detections table is damaged (its migration fails with SQLITE_CORRUPT) holding 200 unsynced
    windows: the gap says so. Each time the agent starts, records and delivers; the damaged
    files are kept byte for byte; heartbeats and ``diagnose`` report it."""
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 1800))
    state = tmp_path / "state"
    state.mkdir()
    db = state / "queue.db"
    cfg = agent_config(tmp_path, {"path": str(db)}, fault_dsn)
    committed: set[str] = set()
    kept: dict[str, str] = {}
    recoveries = []
    for cycle in ("not a database", "damaged schema 4 queue"):
        if cycle == "not a database":
            db.write_bytes(GARBAGE)
        else:
            assert not local_keys(db)[1]  # the fresh queue of cycle 1 was delivered: make way
            for f in state.glob("queue.db*"):
                if not f.name.startswith("queue.db.damaged-"):
                    f.unlink()
            schema4_queue(db, 200, start=T_OLD)
            damage_detections(db)
        digest = sha256(db)
        gaps_before, beats_before = len(remote_gaps(fault_dsn)), len(remote_heartbeats(fault_dsn))
        proc = AgentProcess(cfg, tmp_path, env=env)
        try:
            t0 = time.monotonic()
            proc.wait_for(lambda p=proc: p.windows_printed() >= 1, 120, f"{cycle}: a window stored")
            recoveries.append(time.monotonic() - t0)
            proc.wait_for(lambda n=gaps_before: len(remote_gaps(fault_dsn)) > n, 60,
                          f"{cycle}: the queue_replaced gap in PostgreSQL")
            proc.wait_for(lambda n=beats_before: any("queue_replaced" in d for d, _ in beats_since(fault_dsn, n)),
                          60, f"{cycle}: a heartbeat saying queue_replaced in PostgreSQL")
            proc.wait_for(lambda p=proc: p.windows_printed() >= 20, 120, f"{cycle}: 20 windows stored")
            report = diagnose(cfg, "sqlite")["sqlite"]
        finally:
            rc = proc.stop()
        assert rc == 0, proc.stderr()[-3000:]
        new = [p for p in damaged_files(state) if p.name not in kept]
        assert len(new) == 1, damaged_files(state)
        assert sha256(new[0]) == digest, "the damaged file was changed"
        kept[new[0].name] = digest
        start, end, windows, detail = remote_gaps(fault_dsn)[-1]
        assert new[0].name in detail, detail
        if cycle == "not a database":
            assert windows == 0 and start == end and "SQLITE_NOTADB" in detail
        else:
            assert windows == 200 and start == T_OLD and end == T_OLD + timedelta(seconds=200), (start, end, windows)
            assert "SQLITE_CORRUPT" in detail
        assert report["status"] == "warn", report
        assert [f["name"] for f in report["value"]["damaged_files"]] == sorted(kept), report
        assert "queue_replaced" in report["value"]["degraded"]
        with psycopg.connect(fault_dsn) as con:
            streams = {s for (s,) in con.execute("SELECT DISTINCT split_part(window_key, '-', 1) FROM windows")}
        stream = (streams - {k.split("-")[0] for k in committed}).pop()
        committed |= {f"{stream}-{i:08d}" for i in proc.window_indices()}
    assert {p.name: sha256(p) for p in damaged_files(state)} == kept  # never deleted, never changed
    d = check_delivery(db, fault_dsn, DEVICE, committed=committed)
    fault_results.record(
        "damaged_queue", cycles=2, faults_injected=2, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=max(recoveries),
        damaged_files_kept=len(kept), unsynced_windows_reported_in_gap=200)


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@pytest.fixture
def ext4_fs(tmp_path):
    """A 32 MB ext4 filesystem on a loop device (needs root); shut down by the test."""
    image, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount an ext4 loop device here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_queue_that_breaks_while_running_stops_feeding_the_watchdog(tmp_path, ext4_fs):
    """The filesystem under the running agent's queue fails (EXT4_IOC_SHUTDOWN: every further
    I/O fails, as on a dying SD card): every window is refused (SQLITE_IOERR, then
    SQLITE_CORRUPT). The agent stays up but stops feeding the watchdog once no window was
    stored for ``commit_deadline_s`` (3 windows + 60 s), so systemd restarts it. Audio comes in
    real time through a FIFO, as from a microphone."""
    fifo = tmp_path / "infile.raw"
    os.mkfifo(fifo)
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.{PCM_NAME} {{\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{fifo}"\n format "raw"\n}}\n')
    env = {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}", "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": "2000000"}
    listener = NotifyListener(tmp_path / "notify.sock")
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": DEVICE},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": 1600},
        windows={"length_s": 1.0}, classifier={"enabled": False},
        store={"path": str(ext4_fs / "queue.db"), "reserve_mb": 0.5}, ops={"heartbeat_interval_s": 1.0})
    audio = real_audio_s16(RATE, 120).tobytes()
    stop = threading.Event()

    def feed() -> None:  # real time, one ALSA period at a time
        t0, pos, step = time.monotonic(), 0, 1600 * 2
        while not stop.is_set() and pos < len(audio):
            try:
                os.write(writer, audio[pos:pos + step])
            except OSError:
                return
            pos += step
            time.sleep(max(0.0, t0 + pos / 2 / RATE - time.monotonic()))

    writer = os.open(fifo, os.O_RDWR)  # keeps the FIFO open: the reader blocks instead of seeing EOF
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    proc = AgentProcess(cfg, tmp_path, env=env)
    try:
        proc.wait_for(lambda: proc.windows_printed() >= 5, 60, "5 windows stored")
        fd = os.open(ext4_fs, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        broken = time.monotonic()
        proc.wait_for(lambda: "NOT stored" in proc.stderr(), 30, "a window refused by the broken queue")
        deadline = 3 * 1.0 + 60.0
        proc.wait_for(lambda: time.monotonic() - broken > deadline + 8, deadline + 20, "the commit deadline passed",
                      poll=1.0)
        pings = listener.times("WATCHDOG=1")
        assert [t for t in pings if broken + 5 < t < broken + 20], "the watchdog was fed while frames flowed"
        late = [t for t in pings if t > broken + deadline + 3]
        assert proc.alive(), "the agent must stay up (systemd decides to restart it)"
        assert late == [], f"{len(late)} watchdog pings more than {deadline:g} s after the queue broke"
        assert "not feeding the watchdog" in proc.stderr()
    finally:
        stop.set()
        feeder.join(5)
        if proc.alive():
            proc.proc.send_signal(signal.SIGTERM)
        os.close(writer)  # EOF for the blocked reader
        proc.stop()
        listener.close()


def test_the_agent_run_as_a_command_replaces_a_damaged_queue(tmp_path):
    """``soundscape-agent run`` (not only the service) starts on a garbage queue."""
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 30))
    db = tmp_path / "queue.db"
    db.write_bytes(GARBAGE)
    cfg = agent_config(tmp_path, {"path": str(db)}, "")
    r = subprocess.run([*AGENT, "run", "--config", str(cfg), "--max-windows", "3"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    assert "moved aside" in r.stderr and len(damaged_files(tmp_path)) == 1
