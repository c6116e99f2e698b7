"""Fault: ``kill -9`` of the agent at random moments during capture and sync, then a restart.

The real ``soundscape-agent run`` process captures a real recording in real time (the file
source paced like a live microphone, 1 s windows: one window a second, every one classified by
the real model code path) into the real SQLite outbox and syncs every 0.2 s to a real
PostgreSQL. Each cycle restarts it (the recording replayed from its start, anchored one
recording length after the previous run: :func:`tests.faultkit.next_anchor`, so every run's
windows have start times of their own), waits until it is back at work (its first new window
committed), lets it run for a random time drawn from a seeded RNG and SIGKILLs it in one of
three ways, drawn from the same RNG:

* ``now``: at that random moment, whatever the agent is doing (mostly capture and analysis:
  a sync round with windows to send lasts a few ms of every second);
* ``in_transaction``: at the next moment the agent holds a transaction open on the server
  that has inserted rows (``pg_stat_activity.backend_xid`` set), i.e. in the middle of a batch;
* ``after_commit``: as soon as a batch's COMMIT is visible on the server, i.e. usually after
  the server committed and before the agent marked the windows synced locally, the crash
  window that at-least-once delivery plus ``ON CONFLICT DO NOTHING`` must absorb.

Every kill is classified by a ``pg_stat_activity`` snapshot taken immediately before the
SIGKILL: a sync transaction open (``xact_start`` set; ``write`` when it had inserted rows,
``read`` for the schema-version check each round starts with), a sync connection open between
transactions, or no connection at all (capture only).

After every cycle: SQLite ``quick_check`` is ``ok``, every window committed before is still
there, and every window marked synced locally is in PostgreSQL. After all cycles one last run
is stopped with SIGTERM (final sync) and :func:`tests.faultkit.check_delivery` proves the
window sets equal: nothing lost, nothing duplicated.

Seed: ``$SOUNDSCAPE_FAULT_SEED`` (default: a fresh one, printed and recorded).
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
import soundfile as sf

from tests.audio import real_audio_s16
from tests.faultkit import AgentProcess, check_delivery, local_keys, next_anchor, quick_check, scaled
from tests.test_run import write_config

pytestmark = pytest.mark.faults

#: Sample rate of the test recording, Hz (an AudioMoth's usual rate).
RATE = 48000
#: Longest random run time after the agent is back at work, before the kill, s.
MAX_DELAY_S = 2.0
#: Bound on waiting for a targeted moment (transaction open / COMMIT visible), s.
TARGET_TIMEOUT_S = 8.0
#: Kill modes and their shares of the cycles (see the module docstring); the order is shuffled.
MODES = {"now": 0.4, "in_transaction": 0.3, "after_commit": 0.3}

_SYNC_LINE = re.compile(r"synced (\d+) windows to \S+ \((\d+) new, (\d+) already there\)")

# One round trip: the agent's sync sessions on this database (connected; in a transaction; in
# a transaction that has written, i.e. holds an xid: a batch being inserted), their states and
# the windows committed so far.
_SNAPSHOT = """
SELECT count(*),
       count(*) FILTER (WHERE xact_start IS NOT NULL),
       count(*) FILTER (WHERE backend_xid IS NOT NULL),
       coalesce(string_agg(state, ','), ''),
       (SELECT count(*) FROM windows)
FROM pg_stat_activity
WHERE application_name = 'soundscape-agent' AND datname = current_database()
"""


def write_field_recording(dirpath: Path, seconds: float, rate: int = RATE) -> Path:
    """Write the bundled real recordings, resampled and repeated, as one long 16-bit WAV.

    The name carries a ``YYYYMMDD_HHMMSS`` stamp (as AudioMoth files do), which the file source
    takes as the recording's start time. Each agent start replays it from its beginning, so it
    must be longer than any one run: the source ends (and the agent exits) at its end. A test
    that restarts the agent on it moves the stamp on first (:func:`tests.faultkit.next_anchor`).

    Args:
        dirpath: directory to write into.
        seconds: minimum length, s.
        rate: sample rate, Hz.

    Returns:
        Path of the WAV file (mono, PCM_16, ``rate`` Hz, at least ``seconds`` long).
    """
    path = dirpath / "field_20240601_120000.wav"
    sf.write(str(path), real_audio_s16(rate, seconds), rate, subtype="PCM_16")
    return path


def live_config(path: Path, *, recording: Path, model_dir: Path, db: Path, dsn: str, **sync: object) -> Path:
    """A TOML config for a live-paced agent: the realtime file source replaying ``recording`` (a
    file or a directory), 1 s windows, the ONNX scaffold model, the outbox at ``db`` and a sync
    every 0.2 s (``sync`` overrides keys of ``[sync]``).

    Returns:
        ``path``, written.
    """
    return write_config(
        path,
        agent={"device_id": "moth-faults"},
        capture={"type": "file", "path": str(recording), "realtime": True},
        windows={"length_s": 1.0},
        classifier={"type": "onnx", "model": str(model_dir), "queue_size": 10},
        store={"path": str(db)},
        sync={"dsn": dsn, "interval_s": 0.2, "final_timeout_s": 30, **sync},
    )


def sync_lines(log: str) -> list[tuple[int, int, int]]:
    """``(sent, new, already there)`` of every "synced N windows" INFO line in an agent log."""
    return [(int(a), int(b), int(c)) for a, b, c in _SYNC_LINE.findall(log)]


def test_kill9_during_capture_and_sync_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, fault_dsn,
                                                                    fault_results):
    """kill -9 at random moments, >= 50 cycles: the outbox stays intact, nothing committed
    locally is lost, nothing marked synced is missing on the server, and after a final run
    PostgreSQL holds exactly the windows committed locally, each once."""
    cycles = scaled(50, 200)
    seed = int(os.environ.get("SOUNDSCAPE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    plan = [m for m, share in MODES.items() for _ in range(round(cycles * share))]
    plan = (plan + ["now"] * cycles)[:cycles]
    rng.shuffle(plan)
    print(f"crash test: {cycles} cycles, seed {seed} (set SOUNDSCAPE_FAULT_SEED={seed} to replay the draw)")
    db = tmp_path / "queue.db"
    # capture.path names a directory holding the one recording, whose anchor moves on before
    # every restart (faultkit.next_anchor): each run replays the file from its start, and at the
    # same anchor every run would store the windows of the runs before it again under a new
    # stream, the same device and start times under new keys, which check_delivery rightly
    # counts as duplicates
    recording = tmp_path / "recording"
    recording.mkdir()
    write_field_recording(recording, 120)
    cfg = live_config(tmp_path / "agent.toml", recording=recording, model_dir=tiny_model_dir, db=db, dsn=fault_dsn,
                      backoff_initial_s=0.5, backoff_max_s=4)

    kinds: Counter[str] = Counter()  # classification at the moment of each kill
    modes: Counter[str] = Counter()
    states: Counter[str] = Counter()  # pg_stat_activity state of the agent's backend at the kill
    recoveries: list[float] = []
    cycle_s: list[float] = []
    committed_not_marked = 0  # kills that left windows on the server but unmarked locally
    lag_ms: list[float] = []  # snapshot -> SIGKILL
    seen: set[str] = set()  # every window key ever committed locally
    logs: list[AgentProcess] = []
    agent: AgentProcess | None = None
    t_start = time.monotonic()
    with psycopg.connect(fault_dsn, autocommit=True) as mon:

        def snapshot() -> tuple[int, int, int, str, int]:
            return mon.execute(_SNAPSHOT).fetchone()

        try:
            for cycle in range(cycles):
                t_cycle = time.monotonic()
                if cycle:
                    next_anchor(recording)
                agent = AgentProcess(cfg, tmp_path)
                logs.append(agent)
                # back at work: the first window of this run committed (printed after the commit)
                recoveries.append(agent.wait_for(lambda agent=agent: agent.windows_printed() >= 1, 180,
                                                 f"cycle {cycle}: first window after a restart (seed {seed})"))
                delay = rng.uniform(0.0, MAX_DELAY_S)
                mode = plan[cycle]
                modes[mode] += 1
                time.sleep(delay)
                snap = snapshot()
                if mode != "now":
                    committed_before = snap[4]
                    deadline = time.monotonic() + TARGET_TIMEOUT_S
                    while time.monotonic() < deadline and agent.alive():
                        if mode == "in_transaction" and snap[2] > 0:
                            break
                        if mode == "after_commit" and snap[4] > committed_before:
                            break
                        snap = snapshot()
                t_snap = time.monotonic()
                if agent.alive():
                    os.kill(agent.pid, signal.SIGKILL)
                lag_ms.append((time.monotonic() - t_snap) * 1000)
                agent.kill9()  # reap
                assert agent.proc.returncode == -signal.SIGKILL, (
                    f"cycle {cycle}: the agent was not running when killed (exit {agent.proc.returncode}):\n"
                    + agent.stderr()[-3000:])
                connections, in_xact, writing, state, _ = snap
                kind = ("sync_write_transaction" if writing else "sync_read_transaction" if in_xact else
                        "sync_connected" if connections else "capture")
                kinds[kind] += 1
                for s in filter(None, state.split(",")):
                    states[s] += 1

                # the server drops the dead agent's session (and rolls its transaction back)
                t0 = time.monotonic()
                while snapshot()[0] > 0:
                    assert time.monotonic() - t0 < 60, f"cycle {cycle}: the killed agent's session stayed on the server"
                    time.sleep(0.02)
                # the outbox survived the kill
                assert quick_check(db) == "ok", f"cycle {cycle} ({mode}, seed {seed}): SQLite quick_check failed"
                local, unsynced, evicted = local_keys(db)
                remote = {k for (k,) in mon.execute("SELECT window_key FROM windows")}
                # (synced windows may leave the outbox by the eviction policy; unsynced ones never)
                vanished = seen - local - evicted - remote
                assert not vanished, (
                    f"cycle {cycle} ({mode}, seed {seed}): {len(vanished)} committed windows vanished after kill -9")
                seen |= local
                marked = local - unsynced
                assert marked <= remote, (
                    f"cycle {cycle} ({mode}, seed {seed}): {len(marked - remote)} windows marked synced locally "
                    f"are not in PostgreSQL: {sorted(marked - remote)[:5]}")
                if unsynced & remote:
                    committed_not_marked += 1
                cycle_s.append(time.monotonic() - t_cycle)
                print(f"cycle {cycle:3d}: {mode:14s} after {delay:4.2f} s -> {kind:16s} {state or '-':20s} "
                      f"recovery {recoveries[-1]:5.2f} s, cycle {cycle_s[-1]:5.2f} s, {len(local)} windows "
                      f"({len(unsynced)} unsynced, {len(unsynced & remote)} committed but not marked)", flush=True)

            # the final run delivers the backlog; SIGTERM ends it with a final sync
            next_anchor(recording)
            agent = AgentProcess(cfg, tmp_path)
            logs.append(agent)
            recoveries.append(agent.wait_for(lambda agent=agent: agent.windows_printed() >= 1, 180,
                                             "final run: first window"))
            agent.wait_for(lambda: not local_keys(db)[1], 120, "final run: the backlog delivered")
            rc = agent.stop(timeout=120)
            assert rc == 0, f"the final run did not stop cleanly ({rc}):\n" + agent.stderr()[-3000:]
        finally:
            if agent is not None and agent.alive():
                agent.kill9()

    d = check_delivery(db, fault_dsn, committed=seen | local_keys(db)[0])
    kills = sum(kinds.values())
    in_sync = kinds["sync_write_transaction"] + kinds["sync_read_transaction"]
    # a meaningful share of the kills must hit a sync round, in the middle of a batch and
    # between the server's COMMIT and the local mark: that is the point of the test
    assert kinds["sync_write_transaction"] >= max(3, cycles // 10), (
        f"only {kinds['sync_write_transaction']} of {kills} kills landed in a batch transaction: {dict(kinds)}")
    assert committed_not_marked >= 1, f"no kill landed between a batch's COMMIT and its local mark: {dict(kinds)}"
    assert kinds["capture"] >= max(3, cycles // 10), f"too few kills during capture only: {dict(kinds)}"

    replays = [already for a in logs for (_, _, already) in sync_lines(a.stderr())]
    figures = {
        "kills": kills, "kinds": dict(kinds), "modes": dict(modes), "states": dict(states),
        "committed_not_marked": committed_not_marked, "replayed_already_there": sum(replays),
        "windows": len(d.remote), "recovery_mean_s": round(statistics.mean(recoveries), 2),
        "recovery_max_s": round(max(recoveries), 2), "cycle_mean_s": round(statistics.mean(cycle_s), 2),
        "lag_ms_max": round(max(lag_ms), 1), "total_s": round(time.monotonic() - t_start, 1),
    }
    print(f"crash test figures: {figures}")
    fault_results.record(
        "crash", cycles=cycles, faults_injected=kills, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=max(recoveries),
        kills_during_sync=in_sync, kills_in_batch_transaction=kinds["sync_write_transaction"],
        kills_sync_connected_between_transactions=kinds["sync_connected"],
        kills_during_capture=kinds["capture"], kills_after_commit_before_mark=committed_not_marked,
        windows_replayed_already_there=sum(replays), kill_modes=dict(modes),
        mean_recovery_s=round(statistics.mean(recoveries), 2), mean_cycle_s=round(statistics.mean(cycle_s), 2),
        seed=seed,
    )
