"""Fault: the PostgreSQL server stopped for a while, then started again.

The real agent captures a real recording in real time (1 s windows, one a second) and syncs
every 0.3 s with a small backoff (0.5 s initial, 4 s cap). The suite's own server
(:func:`tests.faultkit.fault_pg`) is stopped (``pg_ctl stop -m fast``: sessions cut) for
:data:`OUTAGE_S` seconds, then started. What a user sees:

* capture goes on: windows keep being printed and committed to the SQLite outbox;
* the queue of unsynced windows grows during the outage, then drains once the server is back;
* the log says ``sync failed (...); retrying in X s`` after every failed round, X drawn
  between ``backoff_initial_s`` and ``min(backoff_max_s, backoff_initial_s * 2**(n-1))`` for
  the n-th consecutive failure (exponential backoff with jitter, capped).

The agent is then stopped with SIGTERM and :func:`tests.faultkit.check_delivery` proves that
PostgreSQL holds exactly the windows committed locally. ``SOUNDSCAPE_FAULT_SCALE=full`` runs
three outages in one agent run instead of one.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from tests.faultkit import AgentProcess, check_delivery, local_keys, scaled
from tests.test_faults_crash import live_config, write_field_recording

pytestmark = pytest.mark.faults

#: How long the server stays down, s.
OUTAGE_S = 18.0
#: Backoff of the agent under test, s.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 4.0
#: Bound on draining the queue once the server is back, s (the backoff cap plus a generous
#: allowance for a machine loaded by other tests).
DRAIN_TIMEOUT_S = 90.0

_RETRY = re.compile(r"(WARNING|ERROR) agent\.sync: sync failed (unexpectedly )?\((.*)\); retrying in ([0-9.]+) s")


def queue_counts(db: Path) -> tuple[int, int]:
    """(windows stored, windows not yet synced) in the outbox, read-only while the agent runs."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        total, unsynced = con.execute("SELECT count(*), count(*) FILTER (WHERE synced_at IS NULL) FROM windows"
                                      ).fetchone()
    finally:
        con.close()
    return int(total), int(unsynced)


def retry_delays(log: str) -> list[tuple[str, float, bool]]:
    """``(reason, delay in s, unexpected?)`` of every ``sync failed (...); retrying in X s`` line
    of an agent log (``unexpected``: the ERROR variant the agent logs for an exception that is
    not an :class:`~agent.errors.AgentError`, i.e. a bug)."""
    return [(reason, float(delay), bool(unexpected)) for _, unexpected, reason, delay in _RETRY.findall(log)]


def check_backoff(delays: list[float], initial: float, cap: float) -> None:
    """Assert a streak of retry delays follows :meth:`agent.sync.Syncer.backoff_delay`.

    The n-th delay (n from 1) must lie in ``[initial, min(cap, initial * 2**(n-1))]`` (with
    0.05 s of slack: the log rounds to 0.1 s), the first one is therefore ``initial``; they
    must not all be equal (jitter) and must grow beyond ``1.5 * initial`` (the envelope
    widens exponentially; the chance that 5+ uniform draws all stay below it is < 1e-4).

    Args:
        delays: the logged delays of one streak of consecutive failures, s, in order.
        initial, cap: ``backoff_initial_s`` and ``backoff_max_s``, s.

    Raises:
        AssertionError: fewer than 5 delays, or any rule above broken.
    """
    assert len(delays) >= 5, f"expected at least 5 retries during the outage, got {delays}"
    for n, d in enumerate(delays, start=1):
        hi = min(cap, initial * 2 ** (n - 1))
        assert initial - 0.05 <= d <= hi + 0.05, f"retry {n}: {d} s outside [{initial}, {hi}] s; all: {delays}"
    assert len(set(delays)) > 1, f"no jitter: every delay is {delays[0]} s"
    assert max(delays) > 1.5 * initial, f"the backoff never grew: {delays}"


def test_server_outage_capture_continues_queue_grows_then_drains(tmp_path, tiny_model_dir, fault_pg, fault_dsn,
                                                                 fault_results):
    """PostgreSQL down for ~18 s: windows keep being stored, the unsynced queue grows, the log
    shows jittered exponential backoff capped at backoff_max_s, and after the restart the
    queue drains to 0; at the end PostgreSQL holds every window exactly once."""
    outages = scaled(1, 3)
    db = tmp_path / "queue.db"
    recording = write_field_recording(tmp_path, 60 + outages * (OUTAGE_S + 60))
    cfg = live_config(tmp_path / "agent.toml", recording=recording, model_dir=tiny_model_dir, db=db, dsn=fault_dsn,
                      interval_s=0.3, backoff_initial_s=BACKOFF_INITIAL_S, backoff_max_s=BACKOFF_MAX_S,
                      connect_timeout_s=2, statement_timeout_s=5)

    def remote_count() -> int:
        with psycopg.connect(fault_dsn, connect_timeout=5) as con:
            return con.execute("SELECT count(*) FROM windows").fetchone()[0]

    agent = AgentProcess(cfg, tmp_path)
    all_delays: list[float] = []
    recoveries: list[float] = []
    outage_lengths: list[float] = []
    peak = 0
    stored_during = 0
    try:
        agent.wait_for(lambda: remote_count() >= 3, 180, "3 windows synced before the outage", poll=0.5)
        for i in range(outages):
            log_mark = len(agent.stderr())
            printed0 = agent.windows_printed()
            fault_pg.stop()
            t_down = time.monotonic()
            keys0, unsynced0, _ = local_keys(db)
            samples = []
            while time.monotonic() - t_down < OUTAGE_S:
                assert agent.alive(), f"the agent died during the outage:\n{agent.stderr()[-3000:]}"
                samples.append(queue_counts(db))
                time.sleep(0.5)
            keys1, unsynced1, _ = local_keys(db)
            printed1 = agent.windows_printed()
            fault_pg.start()
            t_up = time.monotonic()
            outage_lengths.append(t_up - t_down)

            # capture went on, and nothing could be delivered meanwhile: the queue grew by it all
            new = keys1 - keys0
            stored = len(new)
            assert stored >= OUTAGE_S / 3, f"outage {i}: only {stored} windows stored in {OUTAGE_S:g} s"
            assert printed1 - printed0 >= OUTAGE_S / 3, f"outage {i}: the agent stopped printing windows"
            assert new <= unsynced1, f"outage {i}: {len(new - unsynced1)} windows marked synced with the server down"
            assert len(unsynced1) > len(unsynced0), f"outage {i}: the queue did not grow"
            assert [u for _, u in samples] == sorted(u for _, u in samples), (
                f"outage {i}: the unsynced count fell while the server was down: {samples}")
            stored_during += stored
            peak = max([peak, len(unsynced1), *(u for _, u in samples)])

            # the server is back: the queue drains (every window stored before the restart synced)
            def drained(keys1: set[str] = keys1) -> bool:
                return not (local_keys(db)[1] & keys1)

            recoveries.append(agent.wait_for(drained, DRAIN_TIMEOUT_S, f"outage {i}: the queue drained", poll=0.1))
            # and the queue is empty again (new windows keep coming: one a second, synced at once)
            agent.wait_for(lambda: queue_counts(db)[1] == 0, 30, f"outage {i}: the queue back to 0", poll=0.05)
            assert agent.alive()

            # the log: one failed round after another, each with its jittered, growing delay
            log = agent.stderr()[log_mark:]
            retries = retry_delays(log)
            assert not [r for r in retries if r[2]], f"outage {i}: unexpected sync errors (bugs): {retries}"
            assert all("PostgreSQL" in reason for reason, _, _ in retries), retries
            delays = [d for _, d, _ in retries]
            check_backoff(delays, BACKOFF_INITIAL_S, BACKOFF_MAX_S)
            all_delays += delays
            # the round that drained the queue logs its line once its events and heartbeats are
            # delivered too, a moment after the windows are marked synced
            agent.wait_for(lambda mark=log_mark: re.search(r"synced \d+ windows to ",
                                                           agent.stderr()[mark:].split("retrying in")[-1]),
                           30, f"outage {i}: a successful sync logged after the restart")
        rc = agent.stop(timeout=120)
        assert rc == 0, f"the agent did not stop cleanly ({rc}):\n{agent.stderr()[-3000:]}"
    finally:
        if agent.alive():
            agent.kill9()
        fault_pg.start()

    d = check_delivery(db, fault_dsn)
    print(f"outage: {outages} x {OUTAGE_S:g} s, {stored_during} windows stored during outages, peak queue {peak}, "
          f"recovery {recoveries} s, delays {all_delays}, {len(d.remote)} windows delivered")
    fault_results.record(
        "server_outage", cycles=outages, faults_injected=outages, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=max(recoveries),
        outage_s=round(max(outage_lengths), 1), retries_logged=len(all_delays), backoff_delays_s=all_delays,
        peak_queue_depth=peak, windows_stored_during_outage=stored_during,
        backoff_initial_s=BACKOFF_INITIAL_S, backoff_max_s=BACKOFF_MAX_S,
    )
