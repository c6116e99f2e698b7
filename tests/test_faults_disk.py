"""Fault 4, disk full: the queue's filesystem fills up, or the queue reaches its hard cap
(``[store] max_queue_mb``, SQLite ``max_page_count``) while the server is away.

The real agent captures through the ALSA file plugin (real recordings, 1 s windows) into a
real SQLite queue and syncs to a real PostgreSQL. The agent must stay up, report the degraded
state in heartbeats and ``diagnose``, evict by the documented policy (synced windows first;
unsynced ones only past the hard cap, each recorded, counted and reported as a gap) and
corrupt nothing; every window it committed and did not evict by policy reaches PostgreSQL once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from tests.audio import PCM_NAME, real_audio_s16, write_alsa_file_pcm
from tests.faultkit import AGENT, ROOT, AgentProcess, check_delivery, drain, local_keys, quick_check
from tests.test_run import write_config

pytestmark = pytest.mark.faults

RATE = 16000
DEVICE = "moth-disk"


def agent_config(tmp_path: Path, store: dict, dsn: str, **extra: dict) -> Path:
    return write_config(
        tmp_path / "agent.toml",
        agent={"device_id": DEVICE},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": 1600},
        windows={"length_s": 1.0},
        classifier={"enabled": False},
        sync={"dsn": dsn, "interval_s": 0.3, "backoff_initial_s": 0.3, "backoff_max_s": 1.0},
        ops={"heartbeat_interval_s": 1.0, "disk_fail_free_mb": 1.0, "disk_warn_free_mb": 2.0},
        store=store, **extra,
    )


def committed_keys(dsn: str, proc: AgentProcess) -> set[str]:
    """Keys of every window the agent reported stored (one run = one capture stream)."""
    with psycopg.connect(dsn) as con:
        streams = {s for (s,) in con.execute("SELECT DISTINCT split_part(window_key, '-', 1) FROM windows")}
    assert len(streams) == 1, streams
    stream = streams.pop()
    return {f"{stream}-{i:08d}" for i in proc.window_indices()}


def remote_heartbeats(dsn: str) -> list[tuple[list[str], int]]:
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT degraded, evicted_unsynced FROM heartbeats WHERE device = %s ORDER BY time",
                           (DEVICE,)).fetchall()


def diagnose(cfg: Path, *checks: str) -> dict:
    args = [a for c in checks for a in ("--check", c)]
    r = subprocess.run([*AGENT, "diagnose", "--json", "--config", str(cfg), *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert "Traceback" not in r.stderr, r.stderr
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


@pytest.fixture
def small_fs(tmp_path):
    """An 8 MB tmpfs for the queue: a filesystem the test can fill."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave_bytes: int) -> Path:
    """Occupy all but ``leave_bytes`` of the filesystem's free space with one file."""
    st = os.statvfs(mnt)
    size = st.f_bavail * st.f_frsize - leave_bytes
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_deletes_synced_windows_first_keeps_recording_and_reports_degraded(
        tmp_path, small_fs, fault_dsn, fault_results):
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 1200))
    db = small_fs / "queue.db"
    cfg = agent_config(tmp_path, {"path": str(db), "min_free_mb": 1.0, "reserve_mb": 0.5}, fault_dsn)
    proc = AgentProcess(cfg, tmp_path, env=env)
    try:
        proc.wait_for(lambda: proc.windows_printed() >= 40, 120, "40 windows stored")
        assert (small_fs / "queue.db.reserve").stat().st_size == 500_000  # the ballast is there
        filler = fill(small_fs, 64_000)
        filled_at, stored_at_fill = time.monotonic(), proc.windows_printed()
        # the agent keeps storing on a full disk: synced windows make room
        proc.wait_for(lambda: proc.windows_printed() >= stored_at_fill + 150, 180,
                      "150 more windows stored on the full filesystem")
        proc.wait_for(lambda: any("disk_low" in d for d, _ in remote_heartbeats(fault_dsn)), 60,
                      "a heartbeat reporting disk_low in PostgreSQL")
        report = diagnose(cfg, "sqlite", "disk")
        log = proc.stderr()
        assert "released the 0.5 MB reserve file" in log
        assert "deleted" in log and "synced windows to make room" in log
        assert "UNSYNCED" not in log, "an unsynced window was evicted although synced ones were there"
        assert report["disk"]["status"] == "fail"
        assert report["sqlite"]["status"] == "warn" and "disk_low" in report["sqlite"]["value"]["degraded"]
        assert report["sqlite"]["value"]["evicted_unsynced"] == 0
        filler.unlink()  # space again
        freed_at = time.monotonic()
        # recovered: the queue no longer hits a full disk (queue_full clears a minute after the
        # last full write). disk_low may come back: this replay runs ~40x faster than real time
        # and refills the 8 MB to min_free_mb within a minute, where the policy holds it.
        proc.wait_for(lambda: not {"queue_full", "store_failed"} & set(remote_heartbeats(fault_dsn)[-1][0]), 150,
                      "a heartbeat without queue_full or store_failed")
        recovery = time.monotonic() - freed_at
        assert "NOT stored" not in proc.stderr(), "a window was dropped although synced windows could make room"
    finally:
        rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]
    d = check_delivery(db, fault_dsn, DEVICE, committed=committed_keys(fault_dsn, proc))
    assert not d.evicted
    fault_results.record(
        "disk_full", cycles=1, faults_injected=1, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=recovery, filesystem_mb=8,
        windows_stored_while_full=proc.windows_printed() - stored_at_fill,
        seconds_full=round(freed_at - filled_at, 1), evicted_unsynced=0)


def test_past_the_hard_cap_with_the_server_down_the_oldest_unsynced_windows_are_evicted_counted_and_reported(
        tmp_path, fault_pg, fault_dsn, fault_results):
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 1200))
    db = tmp_path / "state" / "queue.db"
    cfg = agent_config(tmp_path, {"path": str(db), "max_queue_mb": 0.4, "reserve_mb": 0}, fault_dsn)
    fault_pg.stop()
    proc = AgentProcess(cfg, tmp_path, env=env)
    try:
        proc.wait_for(lambda: "UNSYNCED" in proc.stderr(), 180, "the hard cap forcing an unsynced eviction")
        at_cap = proc.windows_printed()
        proc.wait_for(lambda: proc.windows_printed() >= at_cap + 50, 120, "50 more windows stored past the cap")

        def local_beat() -> dict:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT payload FROM heartbeats ORDER BY time DESC LIMIT 1").fetchone()
            finally:
                con.close()
            return json.loads(row[0]) if row else {}

        proc.wait_for(lambda: {"queue_full", "sync_failing"} <= set(local_beat().get("degraded", [])), 60,
                      "a heartbeat reporting queue_full and sync_failing")
        beat = local_beat()
        report = diagnose(cfg, "sqlite")["sqlite"]
        assert beat["evicted_unsynced"] > 0
        assert report["status"] == "warn" and report["value"]["evicted_unsynced"] > 0
        assert "queue_full" in report["value"]["degraded"]
        assert "evicted" in report["detail"]
        fault_pg.start()
        back = time.monotonic()
        proc.wait_for(lambda: not local_keys(db)[1], 120, "the queue drained once the server is back")
        recovery = time.monotonic() - back
        proc.wait_for(lambda: any(ev > 0 for _, ev in remote_heartbeats(fault_dsn)), 60,
                      "a heartbeat with the eviction count in PostgreSQL")
    finally:
        fault_pg.start()
        rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]
    assert quick_check(db) == "ok"
    committed = committed_keys(fault_dsn, proc) | local_keys(db)[2]
    d = check_delivery(db, fault_dsn, DEVICE, committed=committed)
    assert d.evicted and not (d.evicted & d.remote), "an evicted window reached the server"
    with psycopg.connect(fault_dsn) as con:
        gaps = con.execute("SELECT start_time, end_time, windows, detail FROM gaps WHERE device = %s"
                           " AND reason = 'evicted_unsynced'", (DEVICE,)).fetchall()
    assert sum(g[2] for g in gaps) == len(d.evicted), "every evicted window is accounted for in the gaps"
    assert all("queue full" in g[3] for g in gaps)
    fault_results.record(
        "queue_hard_cap", cycles=1, faults_injected=1, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=recovery, max_queue_mb=0.4,
        evicted_unsynced_by_policy=len(d.evicted), evicted_reported_in_gaps=sum(g[2] for g in gaps))


# ---------------------------------------------------------------------------------------------
# a full disk at start (issue 14, item 1)


def schema4_queue(path: Path, n: int, *, start: datetime, stream: str = "old4", k: int = 3) -> list[str]:
    """A queue as an agent of schema 4 left it (before the upgrade that brings schema 5): ``n``
    unsynced 1 s windows of :data:`DEVICE` from ``start`` with ``k`` detections each, WAL
    checkpointed. Migrating it to schema 5 rewrites its detections table (it needs space).

    Returns:
        The window keys.
    """
    from agent.store.schema import _MIGRATIONS

    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        con.execute("PRAGMA journal_mode = WAL")
        con.executescript("BEGIN; " + " ".join(_MIGRATIONS[:4]) + " PRAGMA user_version = 4; COMMIT;")
        keys = [f"{stream}-{i:08d}" for i in range(n)]
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO windows (key, device_id, window_index, start_time, duration_s, sample_rate,"
            " clock_synchronised, xruns, leq_db, leq_series_db, peak_dbfs, status, model_id, model_hash,"
            " model_backend, model_is_scaffold, stored_at) VALUES (?, ?, ?, ?, 1.0, 16000, 1, 0, 51.5, '[51.5]',"
            " -20.0, 'classified', 'MIT/ast', 'ab', 'onnx', 0, ?)",
            [(key, DEVICE, i, (start + timedelta(seconds=i)).isoformat(timespec="microseconds"),
              (start + timedelta(seconds=i + 1)).isoformat(timespec="microseconds")) for i, key in enumerate(keys)])
        con.executemany("INSERT INTO detections VALUES (?, ?, ?, ?, ?)",
                        [(key, r + 1, f"label {r}", r, 0.9 / (r + 1)) for key in keys for r in range(k)])
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return keys


def old_queue_partly_delivered(db: Path, tmp_path: Path, dsn: str, n: int = 300, synced: int = 250) -> set[str]:
    """A schema-4 queue at ``db`` as an agent of that release leaves it: ``n`` windows, the
    first ``synced`` of them delivered to ``dsn`` (really: from a copy, through ``sync --once``)
    and marked synced, the rest waiting. Returns every key."""
    keys = schema4_queue(db, n, start=datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc))
    copy = tmp_path / "delivered-copy.db"
    copy.write_bytes(db.read_bytes())
    con = sqlite3.connect(copy, isolation_level=None)
    try:
        con.execute("PRAGMA foreign_keys = ON")  # their detections go with them
        con.execute("DELETE FROM windows WHERE key >= ?", (keys[synced],))
    finally:
        con.close()
    (tmp_path / "copy").mkdir(exist_ok=True)
    r = drain(agent_config(tmp_path / "copy", {"path": str(copy)}, dsn))
    assert r.returncode == 0 and f"synced {synced} windows" in r.stdout, r.stdout + r.stderr
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("UPDATE windows SET synced_at = ?, sync_id = ? WHERE key < ?",
                    (datetime.now(timezone.utc).isoformat(timespec="microseconds"), str(uuid.uuid4()), keys[synced]))
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    return set(keys)


def reserve(mnt: Path, size: int) -> None:
    """The ballast file ``queue.db.reserve`` as the agent makes it."""
    fd = os.open(mnt / "queue.db.reserve", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def remote_keys(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as con:
        return {k for (k,) in con.execute("SELECT window_key FROM windows WHERE device = %s", (DEVICE,))}


def new_stream_keys(dsn: str, proc: AgentProcess, known: set[str]) -> set[str]:
    """The keys of every window ``proc`` reported stored: its stream is the one in PostgreSQL
    that none of ``known`` belongs to."""
    streams = {k.split("-")[0] for k in remote_keys(dsn)} - {k.split("-")[0] for k in known}
    assert len(streams) == 1, streams
    stream = streams.pop()
    return {f"{stream}-{i:08d}" for i in proc.window_indices()}


def test_a_full_disk_at_start_releases_the_reserve_opens_or_migrates_the_queue_and_records(
        tmp_path, small_fs, fault_dsn, fault_results):
    """The queue's filesystem is full to the last byte while the agent is stopped. At its next
    start the agent releases its reserve file, opens the queue, applies the eviction policy and
    records, in three cycles: a queue closed cleanly (opening it needs room for its -shm and
    -wal: SQLITE_IOERR_SHMSIZE before the fix); the same after a read-only look (``diagnose``)
    left its -shm behind (it opens, but its empty WAL cannot grow: every write SQLITE_FULL); a
    schema-4 queue left by the previous release, 250 of its 300 windows delivered and kept by
    retention (its migration rewrites a table: SQLITE_FULL). Nothing is lost."""
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 1200))
    db = small_fs / "queue.db"
    cfg = agent_config(tmp_path, {"path": str(db), "min_free_mb": 1.0, "reserve_mb": 0.5}, fault_dsn)
    first = AgentProcess(cfg, tmp_path, env=env)
    try:
        first.wait_for(lambda: first.windows_printed() >= 30, 120, "30 windows stored")
    finally:
        assert first.stop() == 0, first.stderr()[-3000:]  # its final sync delivers them
    committed = new_stream_keys(fault_dsn, first, set())
    recoveries, stored_while_full = {}, {}
    for cycle in ("closed cleanly", "after a read-only look", "schema 4 queue"):
        if cycle == "after a read-only look":
            assert quick_check(db) == "ok"  # as diagnose does: leaves queue.db-shm behind
            assert (small_fs / "queue.db-shm").exists()
        if cycle == "schema 4 queue":
            for f in small_fs.iterdir():
                f.unlink()
            committed |= old_queue_partly_delivered(db, tmp_path, fault_dsn)
        if not (small_fs / "queue.db.reserve").exists():  # as the agent makes it when there is room
            reserve(small_fs, 500_000)
        filler = fill(small_fs, 0)
        assert os.statvfs(small_fs).f_bavail == 0
        beats_before = len(remote_heartbeats(fault_dsn))
        proc = AgentProcess(cfg, tmp_path, env=env)
        try:
            started = time.monotonic()
            proc.wait_for(lambda p=proc: p.windows_printed() >= 1, 120, f"{cycle}: a window stored on the full disk")
            recoveries[cycle] = round(time.monotonic() - started, 2)
            # about four times what the released reserve holds: the policy keeps making room
            proc.wait_for(lambda p=proc: p.windows_printed() >= 400, 120,
                          f"{cycle}: 400 windows stored on the full disk")
            proc.wait_for(lambda c=frozenset(committed): c <= remote_keys(fault_dsn), 120,
                          f"{cycle}: the earlier windows delivered")
            proc.wait_for(lambda n=beats_before: any("disk_low" in d for d, _ in remote_heartbeats(fault_dsn)[n:]), 60,
                          f"{cycle}: a heartbeat reporting disk_low in PostgreSQL")
            log = proc.stderr()
            assert "released the 0.5 MB reserve file" in log, log[-3000:]
            assert "NOT stored" not in log, log[-3000:]
            assert "UNSYNCED" not in log, "an unsynced window was evicted although synced ones were there"
            assert not (small_fs / "queue.db.reserve").exists()
        finally:
            rc = proc.stop()
        assert rc == 0, proc.stderr()[-3000:]
        stored_while_full[cycle] = proc.windows_printed()
        committed |= new_stream_keys(fault_dsn, proc, committed)
        filler.unlink()
    d = check_delivery(db, fault_dsn, DEVICE, committed=committed)
    assert not d.evicted
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        from agent.store import SCHEMA_VERSION

        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        con.close()
    fault_results.record(
        "disk_full_at_start", cycles=3, faults_injected=3, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=max(recoveries.values()), filesystem_mb=8, reserve_mb=0.5,
        start_to_first_window_s=recoveries, windows_stored_while_full=stored_while_full,
        migrated_from_schema=4)


def test_a_full_disk_at_start_without_a_reserve_exits_74_saying_what_is_full(tmp_path, small_fs):
    """Nothing of its own left to release (no reserve file): the agent cannot open its queue and
    says which filesystem is full, not that the SD card failed."""
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 60))
    db = small_fs / "queue.db"
    cfg = agent_config(tmp_path, {"path": str(db), "min_free_mb": 1.0, "reserve_mb": 0}, "")
    r = subprocess.run([*AGENT, "run", "--config", str(cfg), "--max-windows", "3"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    fill(small_fs, 0)
    r = subprocess.run([*AGENT, "run", "--config", str(cfg), "--max-windows", "3"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**os.environ, **env})
    assert r.returncode == 74, r.stderr
    assert "Traceback" not in r.stderr
    hint = r.stderr.partition("hint:")[2]
    assert f"the filesystem holding {small_fs} is full" in hint and "0 bytes free" in hint, r.stderr
    assert "SD card" not in hint
