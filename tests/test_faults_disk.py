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
from pathlib import Path

import psycopg
import pytest

from tests.audio import PCM_NAME, real_audio_s16, write_alsa_file_pcm
from tests.faultkit import AGENT, ROOT, AgentProcess, check_delivery, local_keys, quick_check
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
