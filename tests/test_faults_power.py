"""Fault ``power_cut``: the queue's disk loses every write that was not fsynced, then a restart.

``kill -9`` (tests/test_faults_crash.py) keeps the kernel's page cache, so it cannot tell
``synchronous=FULL`` from ``OFF``. Here the outbox lives on :class:`tests.powercut.VolatileDisk`,
a FUSE filesystem that holds every write, truncation, create, unlink and rename in memory
until ``fsync`` of that file (or of its directory) puts it on a backing directory; a cut
drops everything else, the filesystem is unmounted and a fresh one mounted on what was
persisted: what the Pi finds after the power comes back. The ``-wal`` and ``-shm`` files get
no favours: unsynced, they are lost like the rest (SQLite rebuilds ``-shm``).

Each cycle starts the real ``soundscape-agent run`` on the queue (a real recording replayed
from its start as fast as the agent stores it, each run anchored one recording length after
the previous one; 1 s windows, ~30 commits a second, synced to a real PostgreSQL every 0.2 s),
waits until it is back at work and cuts the power in one of three ways, drawn from a seeded RNG:

* ``random``: after a random time; in half of these cycles the disk's cache has written a
  random part of itself first (each 512-byte sector of each unsynced write, with a random
  probability): unsynced writes may land in any combination, not only all or none;
* ``commit``: inside the Nth ``fsync`` of the WAL from then on (a commit waiting for the disk);
* ``checkpoint``: at the first write into the database file (SQLite copying WAL frames back).

Then the agent is SIGKILLed, the disk unmounted and mounted again, and the check: SQLite's
``quick_check`` is ``ok``, every window the agent printed (``window N`` is printed after its
outbox ``put`` returned, i.e. after the COMMIT) is in the queue, and no window seen in an
earlier cycle has vanished. After the last cycle a final run delivers the backlog, is stopped
with SIGTERM, the power is cut once more and :func:`tests.faultkit.check_delivery` proves
exactly-once delivery from what the platter holds.

The same cycles with the test-only switch ``SOUNDSCAPE_TEST_ONLY_UNSAFE_SYNCHRONOUS=OFF`` (and
``NORMAL``) in ``agent.store.db.configure`` must LOSE acknowledged windows: that shows the
check can fail and that ``FULL`` is what passes it.

Seed: ``$SOUNDSCAPE_FAULT_SEED`` (default: a fresh one, printed and recorded).
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import soundfile as sf

from agent.errors import StoreError
from agent.store.db import UNSAFE_SYNCHRONOUS_ENV, configure
from tests.audio import real_audio_s16
from tests.faultkit import AgentProcess, check_delivery, local_keys, next_anchor, quick_check, scaled
from tests.powercut import VolatileDisk, unavailable
from tests.test_run import write_config

pytestmark = pytest.mark.faults

RATE = 16000
DEVICE = "moth-power"
#: Length of the recording each run replays from its start, s (a run stores ~30 windows/s).
RECORDING_S = 1200
#: Longest random run time after the agent is back at work, before a ``random`` cut, s.
MAX_DELAY_S = 1.5
#: Bound on waiting for an armed cut (``commit``, ``checkpoint``) to fire, s; then cut anyway.
TRIGGER_TIMEOUT_S = 15.0
#: Shares of the cut modes (see the module docstring); the order is shuffled.
MODES = {"random": 0.4, "commit": 0.3, "checkpoint": 0.3}


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def disk(tmp_path):
    """A :class:`VolatileDisk` at ``tmp_path/state`` over ``tmp_path/platter``; FAILS (never
    skips) where FUSE cannot run."""
    why = unavailable()
    if why:
        pytest.fail(f"the power-cut disk cannot run here: {why}", pytrace=False)
    d = VolatileDisk(tmp_path / "platter", tmp_path / "state", tmp_path)
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def controls() -> dict[str, dict]:
    """Figures of the ``synchronous=OFF/NORMAL`` control runs, for the ``power_cut`` record."""
    return {}


def agent_config(tmp_path: Path, db: Path, dsn: str) -> Path:
    """The agent's config: the outbox at ``db``, the recording in ``tmp_path/recording`` (the
    directory is ``capture.path``: a test that restarts the agent moves the recording's anchor
    on before each restart with :func:`tests.faultkit.next_anchor`), written once."""
    recording = tmp_path / "recording"
    if not recording.exists():
        recording.mkdir()
        sf.write(str(recording / "field_20240601_120000.wav"), real_audio_s16(RATE, RECORDING_S), RATE,
                 subtype="PCM_16")
    return write_config(
        tmp_path / "agent.toml",
        agent={"device_id": DEVICE},
        capture={"type": "file", "path": str(recording), "realtime": False},
        windows={"length_s": 1.0},
        classifier={"enabled": False},
        store={"path": str(db)},
        sync={"dsn": dsn, "interval_s": 0.2, "backoff_initial_s": 0.5, "backoff_max_s": 2, "final_timeout_s": 30},
    )


def inspect(db: Path) -> tuple[str, set[str], set[str]]:
    """(quick_check, window keys, unsynced keys) of the queue; a file SQLite cannot read
    counts as empty, its error as the quick_check result."""
    try:
        qc = quick_check(db)
    except sqlite3.Error as err:
        qc = f"{type(err).__name__}: {err}"
    try:
        keys, unsynced, _ = local_keys(db)
    except sqlite3.Error:
        keys, unsynced = set(), set()
    return qc, keys, unsynced


def stream(key: str) -> str:
    return key.rsplit("-", 1)[0]


@dataclass
class Cycle:
    """One power cut and the restart's findings."""

    n: int
    mode: str
    keep: float
    cut: dict
    fired: bool  # an armed cut fired by itself (else: cut by command)
    recovery_s: float
    acknowledged: list[int]  # window indices the run printed (each after its COMMIT)
    survived: int  # of those, in the queue after the restart
    lost: list[int]  # acknowledged, missing after the restart
    vanished: int  # windows seen after an earlier cut, missing now
    quick_check: str


@dataclass
class PowerCycles:
    """Runs the agent on the volatile disk and cuts the power, cycle after cycle."""

    disk: VolatileDisk
    cfg: Path
    db: Path
    logdir: Path
    rng: random.Random
    env: dict = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # every key found after a restart
    streams: set[str] = field(default_factory=set)  # the runs (capture streams) found so far
    results: list[Cycle] = field(default_factory=list)

    def run(self, n: int, mode: str, keep: float = 0.0) -> Cycle:
        """One cycle on the mounted disk: start, wait for the first window, cut, kill,
        remount, check; the disk is mounted again at the end."""
        agent = AgentProcess(self.cfg, self.logdir, env=self.env)
        fired = False
        try:
            recovery = agent.wait_for(lambda: agent.windows_printed() >= 1, 120,
                                      f"cycle {n}: the first window after a restart")
            if mode == "random":
                time.sleep(self.rng.uniform(0.0, MAX_DELAY_S))
                cut = self.disk.cut(keep, self.rng.randrange(2**31))
            else:
                self.disk.arm("sync" if mode == "commit" else "checkpoint", self.rng.randint(1, 30))
                answer = self.disk.wait_triggered(TRIGGER_TIMEOUT_S)
                fired = answer is not None
                cut = answer if answer is not None else self.disk.cut()
        finally:
            agent.kill9()
        acknowledged = agent.window_indices()
        self.disk.unmount()
        self.disk.mount()
        qc, keys, _ = inspect(self.db)
        new = {stream(k) for k in keys} - self.streams
        assert len(new) <= 1, f"cycle {n}: windows of {len(new)} unknown capture streams after the restart: {new}"
        survived = {int(k.rsplit("-", 1)[1]) for k in keys if stream(k) in new}
        lost = sorted(set(acknowledged) - survived)
        vanished = len(self.seen - keys)
        self.seen |= keys
        self.streams |= new
        c = Cycle(n, mode, keep, cut, fired, recovery, acknowledged, len(set(acknowledged) & survived), lost,
                  vanished, qc)
        self.results.append(c)
        print(f"cycle {n:3d}: {mode:10s} keep {keep:4.2f} {'fired' if fired or mode == 'random' else 'TIMEOUT'} "
              f"recovery {recovery:5.2f} s, {len(acknowledged):3d} acknowledged, {c.survived:3d} survived, "
              f"{len(lost)} lost, {vanished} earlier vanished, quick_check {qc[:60]}, dropped "
              f"{cut.get('unsynced_writes_dropped')} unsynced writes ({cut.get('unsynced_bytes_dropped')} B)",
              flush=True)
        return c


# ---------------------------------------------------------------------------------------------
# the switch and the disk model themselves


def test_unsafe_synchronous_switch_is_test_only_and_refuses_other_values(tmp_path, monkeypatch):
    """``configure`` sets FULL unless the test-only variable says OFF or NORMAL; any other
    value is refused rather than guessed."""

    def synchronous() -> int:
        conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
        try:
            configure(conn, tmp_path / "q.db", 10)
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            conn.close()

    monkeypatch.delenv(UNSAFE_SYNCHRONOUS_ENV, raising=False)
    assert synchronous() == 2  # FULL
    for value, level in (("OFF", 0), ("normal", 1), ("", 2)):
        monkeypatch.setenv(UNSAFE_SYNCHRONOUS_ENV, value)
        assert synchronous() == level, value
    monkeypatch.setenv(UNSAFE_SYNCHRONOUS_ENV, "FULLL")
    with pytest.raises(StoreError, match="not OFF or NORMAL"):
        synchronous()


def test_volatile_disk_keeps_exactly_what_was_synced(disk):
    """The disk model: synced data and directory entries survive a cut, nothing else does."""
    m = disk.mountpoint
    disk.mount()

    def write(name: str, text: str, sync: bool, mode: str = "w") -> None:
        with open(m / name, mode) as f:
            f.write(text)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def sync_dir() -> None:
        fd = os.open(m, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    write("synced", "kept", sync=True)
    write("empty", "never synced", sync=False)
    write("gone-later", "x", sync=True)
    sync_dir()  # the three names are durable now; "empty" has no durable data
    write("synced", " + not synced", sync=False, mode="a")
    write("unlisted", "data synced, name not", sync=True)  # its directory is never synced again
    (m / "gone-later").unlink()  # not durable: the directory is not synced after it
    cut = disk.cut()
    assert cut["unsynced_writes_dropped"] == 2 and cut["directory_changes_dropped"] == 2, cut
    with pytest.raises(OSError):
        (m / "synced").read_text()
    disk.unmount()
    ready = disk.mount()
    assert ready["orphans_removed"] == 1  # "unlisted": synced data, but no durable name
    assert sorted(os.listdir(m)) == ["empty", "gone-later", "synced"]
    assert (m / "synced").read_text() == "kept"
    assert (m / "empty").read_text() == ""
    assert (m / "gone-later").read_text() == "x"
    disk.cut()
    disk.unmount()


# ---------------------------------------------------------------------------------------------
# the fault


def test_power_cut_loses_acknowledged_windows_without_synchronous_full(tmp_path, disk, fault_dsn, controls):
    """The control: with the test-only switch at OFF, then NORMAL, the same cycles and the same
    check find acknowledged windows missing after a power cut. The check can fail. (And with
    OFF, ``kill -9`` alone loses nothing: the page cache survives it, which is why the crash
    test cannot tell OFF from FULL.)"""
    cycles = scaled(3, 5)
    seed = int(os.environ.get("SOUNDSCAPE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)

    # kill -9 on an ordinary filesystem, synchronous=OFF: every acknowledged window is still there
    plain = tmp_path / "plain" / "queue.db"
    plain.parent.mkdir()
    cfg = agent_config(tmp_path, plain, fault_dsn)
    acknowledged = lost = 0
    known: set[str] = set()
    for n in range(cycles):
        agent = AgentProcess(cfg, tmp_path, env={UNSAFE_SYNCHRONOUS_ENV: "OFF"})
        try:
            agent.wait_for(lambda agent=agent: agent.windows_printed() >= 1, 120, f"kill -9 cycle {n}: first window")
            time.sleep(rng.uniform(0.0, MAX_DELAY_S))
        finally:
            agent.kill9()
        keys = inspect(plain)[1]
        new = {stream(k) for k in keys} - known
        known |= new
        printed = set(agent.window_indices())
        acknowledged += len(printed)
        lost += len(printed - {int(k.rsplit("-", 1)[1]) for k in keys if stream(k) in new})
    controls["synchronous_off_kill9_only"] = {"cycles": cycles, "windows_acknowledged": acknowledged,
                                              "acknowledged_lost": lost}
    print(f"synchronous=OFF, kill -9 only: {controls['synchronous_off_kill9_only']}")
    assert acknowledged > 0 and lost == 0, controls["synchronous_off_kill9_only"]

    db = disk.mountpoint / "queue.db"
    cfg = agent_config(tmp_path, db, fault_dsn)
    for level in ("OFF", "NORMAL"):
        disk.wipe()
        disk.mount()
        runs = PowerCycles(disk, cfg, db, tmp_path, random.Random(seed), env={UNSAFE_SYNCHRONOUS_ENV: level})
        try:
            for n in range(cycles):
                runs.run(n, "random")
        finally:
            disk.unmount()
        res = runs.results
        acknowledged = sum(len(c.acknowledged) for c in res)
        lost = sum(len(c.lost) for c in res)
        figures = {
            "cycles": cycles, "cycles_losing_acknowledged_windows": sum(1 for c in res if c.lost),
            "windows_acknowledged": acknowledged, "acknowledged_lost": lost,
            "earlier_windows_vanished": sum(c.vanished for c in res),
            # read-only, as after every cycle: an error here is a file SQLite must repair first
            "quick_check_read_only": dict(Counter(c.quick_check for c in res)),
        }
        print(f"synchronous={level}: {figures} (seed {seed})")
        controls[f"synchronous_{level.lower()}"] = figures
        assert acknowledged > 0, f"synchronous={level}: no window was acknowledged before the cuts"
        # what proves the point: the check that passes with FULL fails here
        assert lost > 0, (f"synchronous={level}: no acknowledged window was lost in {cycles} power cuts: "
                          "the volatile disk does not model a power cut")


def test_power_cut_keeps_every_acknowledged_window_and_an_intact_queue(tmp_path, disk, fault_dsn, fault_results,
                                                                      controls):
    """>= 20 power cuts (random moments, mid-commit, mid-checkpoint): after each, quick_check is
    ok and every window the outbox acknowledged is there; at the end PostgreSQL holds exactly
    the windows committed locally, each once."""
    assert not os.environ.get(UNSAFE_SYNCHRONOUS_ENV), f"unset {UNSAFE_SYNCHRONOUS_ENV} to run the fault suite"
    cycles = scaled(20, 100)
    seed = int(os.environ.get("SOUNDSCAPE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    plan = [m for m, share in MODES.items() for _ in range(round(cycles * share))]
    plan = (plan + ["random"] * cycles)[:cycles]
    rng.shuffle(plan)
    print(f"power-cut test: {cycles} cycles, seed {seed} (set SOUNDSCAPE_FAULT_SEED={seed} to replay the draw)")
    db = disk.mountpoint / "queue.db"
    cfg = agent_config(tmp_path, db, fault_dsn)
    t_start = time.monotonic()
    disk.mount()
    runs = PowerCycles(disk, cfg, db, tmp_path, rng)
    partial = 0
    try:
        for n, mode in enumerate(plan):
            # every run replays the recording from its start: at an unchanged anchor it would
            # store the windows of the runs before it again under a new stream, the same device
            # and start times under new keys, which check_delivery rightly counts as duplicates
            if n:
                next_anchor(tmp_path / "recording")
            keep = 0.0
            if mode == "random" and partial * 2 < sum(1 for m in plan[:n + 1] if m == "random"):
                keep, partial = rng.uniform(0.2, 0.8), partial + 1
            c = runs.run(n, mode, keep)
            assert c.quick_check == "ok", f"cycle {n} ({mode}, seed {seed}): quick_check after the power cut: " \
                                          f"{c.quick_check}"
            assert not c.lost, (f"cycle {n} ({mode}, seed {seed}): {len(c.lost)} of {len(c.acknowledged)} "
                                f"acknowledged windows lost at the power cut: {c.lost[:10]}")
            assert not c.vanished, f"cycle {n} ({mode}, seed {seed}): {c.vanished} earlier windows vanished"

        # the final run delivers the backlog and stops cleanly; then the power goes once more
        next_anchor(tmp_path / "recording")
        agent = AgentProcess(cfg, tmp_path)
        try:
            final_recovery = agent.wait_for(lambda: agent.windows_printed() >= 1, 120, "final run: first window")
            agent.wait_for(lambda: not (inspect(db)[2] & runs.seen), 120, "final run: the backlog delivered")
            rc = agent.stop(timeout=120)
            assert rc == 0, f"the final run did not stop cleanly ({rc}):\n" + agent.stderr()[-3000:]
        finally:
            if agent.alive():
                agent.kill9()
        last = disk.cut()
        disk.unmount()
        disk.mount()
        keys = inspect(db)[1]
        final_run = {k for k in keys if stream(k) not in runs.streams}
        assert {int(k.rsplit("-", 1)[1]) for k in final_run} >= set(agent.window_indices()), \
            "the final run's acknowledged windows did not all survive the last cut"
        d = check_delivery(db, fault_dsn, committed=runs.seen | keys)
    finally:
        disk.unmount()

    res = runs.results
    fired = Counter(c.mode for c in res if c.fired)
    modes = Counter(c.mode for c in res)
    # the armed cuts must mostly land where they were aimed, or the modes mean nothing
    for m in ("commit", "checkpoint"):
        assert fired[m] >= modes[m] // 2, f"only {fired[m]} of {modes[m]} {m} cuts fired: {dict(fired)}"
    recoveries = [c.recovery_s for c in res] + [final_recovery]
    figures = {
        "cuts": len(res) + 1, "modes": dict(modes), "armed_cuts_fired": dict(fired),
        "random_cuts_with_partial_flush": partial,
        "windows_acknowledged": sum(len(c.acknowledged) for c in res),
        "acknowledged_lost": sum(len(c.lost) for c in res),
        "unsynced_writes_dropped": sum(c.cut.get("unsynced_writes_dropped", 0) for c in res),
        "unsynced_bytes_dropped": sum(c.cut.get("unsynced_bytes_dropped", 0) for c in res),
        "fsyncs": sum(c.cut.get("fsyncs", 0) for c in res), "directory_fsyncs": sum(c.cut.get("fsyncdirs", 0)
                                                                                   for c in res),
        "windows": len(d.remote), "recovery_mean_s": round(statistics.mean(recoveries), 2),
        "total_s": round(time.monotonic() - t_start, 1),
    }
    print(f"power-cut test figures: {figures}; controls: {controls}")
    fault_results.record(
        "power_cut", cycles=cycles, faults_injected=len(res) + 1, windows_sent=len(d.remote),
        lost=len(d.lost) + figures["acknowledged_lost"], duplicated=d.duplicated, worst_recovery_s=max(recoveries),
        windows_acknowledged=figures["windows_acknowledged"], cut_modes=dict(modes),
        armed_cuts_fired=dict(fired), random_cuts_with_partial_flush=partial,
        unsynced_writes_dropped=figures["unsynced_writes_dropped"],
        unsynced_bytes_dropped=figures["unsynced_bytes_dropped"], final_cut_dropped=last.get("unsynced_writes_dropped"),
        quick_check_ok_after_every_cut=True, mean_recovery_s=figures["recovery_mean_s"],
        unsafe_controls=dict(controls), seed=seed,
    )
