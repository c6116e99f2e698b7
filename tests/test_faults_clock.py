"""Fault: the wall clock steps forward, then back, while the agent records.

The real agent captures a live microphone played by the test (the real recordings written at
real-time pace into a FIFO read by an ALSA ``type file`` PCM through pyalsaaudio:
:class:`tests.test_faults_device.RealtimeFifo`), 1 s windows, syncing to a real PostgreSQL.
The stream's one wall-clock anchor is taken when capture starts; from then on window times
follow the sample count.

The test steps the REAL system clock (``clock_settime(CLOCK_REALTIME)``, needs CAP_SYS_TIME;
libfaketime cannot be used: it fakes the monotonic clock as well, and its
``DONT_FAKE_MONOTONIC`` mode breaks Python's ``time.sleep``): :data:`STEPS_S` = +90 s, then
-150 s, each once the agent has recorded the previous one and cut windows after it. The
agent is stopped and the clock put back (from a monotonic reference, see :class:`WallClock`)
within :data:`MAX_STEPPED_S`; a finaliser puts it back whatever happens. What a user must see:

* consecutive windows start exactly one hop (1 s) apart, to the microsecond, across both
  steps: window times are the sample count's, not the stepped clock's (and stay on the true
  time);
* PostgreSQL's ``clock_steps`` has one row per step, ``step_s`` within 1 s of the step made,
  signs right, ``detected_at`` the device's (stepped) wall time just after it;
* the agent logged ``the wall clock stepped by ...`` for each;
* :func:`tests.faultkit.check_delivery`: exactly the windows committed locally, once each.

Stepping the clock back can disturb another process on the machine (e.g. a TLS handshake
with a certificate made seconds earlier), so the test first waits (bounded) for a running
``test_faults_security`` session of another pytest process to finish.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from tests.audio import PCM_NAME
from tests.faultkit import AgentProcess, check_delivery
from tests.test_faults_device import RealtimeFifo, local_windows, remote_windows
from tests.test_run import write_config

pytestmark = pytest.mark.faults

#: The steps made, s (forward, then back).
STEPS_S = (90.0, -150.0)
#: Tolerance on the step the agent measures, s (its threshold is 1 s; one tick's drift is ppm).
STEP_TOLERANCE_S = 1.0
#: Bound on the time the clock stays stepped (first step -> restored), s.
MAX_STEPPED_S = 60.0
#: Bound on waiting for another pytest process running the TLS tests, s.
TLS_WAIT_S = 900.0
RATE = 16000
PERIOD_FRAMES = 1600
HOP_S = 1.0
DEVICE = "moth-clock-step"

_STEP_LOG = re.compile(r"the wall clock stepped by ([+-][0-9.]+) s")


class WallClock:
    """Steps the system's real wall clock and puts it back.

    The reference (wall and monotonic time, read together) is taken before the first step,
    while the clock is right; :meth:`restore` sets the clock to ``wall_ref + (monotonic now -
    monotonic_ref)``, i.e. what it would read had it never been stepped (this machine's
    clock is not NTP-disciplined, so wall and monotonic time advance together).
    """

    def __init__(self) -> None:
        self._ref = (time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        self.stepped = False

    def _true_ns(self) -> int:
        return self._ref[0] + time.clock_gettime_ns(time.CLOCK_MONOTONIC) - self._ref[1]

    def true_now(self) -> datetime:
        """The true wall time (UTC), whatever the system clock says now."""
        return datetime.fromtimestamp(self._true_ns() / 1e9, timezone.utc)

    def error_s(self) -> float:
        """How far the system clock is from the true time now, s (positive: ahead)."""
        return (time.clock_gettime_ns(time.CLOCK_REALTIME) - self._true_ns()) / 1e9

    def step(self, delta_s: float) -> None:
        """Move CLOCK_REALTIME by ``delta_s`` s (positive: forward).

        Raises:
            pytest.fail: the process lacks CAP_SYS_TIME.
        """
        try:
            time.clock_settime_ns(time.CLOCK_REALTIME,
                                  time.clock_gettime_ns(time.CLOCK_REALTIME) + int(round(delta_s * 1e9)))
        except PermissionError:
            pytest.fail("stepping the wall clock needs CAP_SYS_TIME (run the fault suite as root)", pytrace=False)
        self.stepped = True

    def restore(self) -> None:
        """Put the clock back on the true time (idempotent; a no-op when it was not stepped)."""
        if self.stepped:
            time.clock_settime_ns(time.CLOCK_REALTIME, self._true_ns())
            self.stepped = False


def _ancestors() -> set[int]:
    """This process and its ancestors (their command lines may name the TLS test file)."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def wait_for_tls_tests(timeout: float = TLS_WAIT_S) -> float:
    """Wait until no other process runs ``pytest ... test_faults_security`` (it makes
    certificates valid from "now"; a clock stepped back under it would fail its handshakes).

    Returns:
        Seconds waited.

    Raises:
        pytest.fail: still running after ``timeout`` s.
    """
    t0 = time.monotonic()
    mine = _ancestors()
    while True:
        r = subprocess.run(["pgrep", "-f", "pytest.*test_faults_security"], capture_output=True, text=True)
        others = {int(p) for p in r.stdout.split()} - mine
        if not others:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"a TLS fault test (pids {sorted(others)}) has run for more than {timeout:g} s: "
                        "not stepping the clock under it", pytrace=False)
        time.sleep(2.0)


def test_clock_steps_are_recorded_and_window_times_follow_the_sample_count(tmp_path, fault_dsn, fault_results,
                                                                           request):
    """The real wall clock stepped by +90 s, then by -150 s, during a live ALSA capture:
    consecutive windows stay exactly 1 s apart (their times are the sample count's, on the
    true time), both steps are logged and stored in PostgreSQL's clock_steps (step_s within
    1 s of the step, s), and delivery is exactly once."""
    waited = wait_for_tls_tests()
    clock = WallClock()  # the reference: the clock is right now
    request.addfinalizer(clock.restore)  # whatever happens below, the machine's clock is put back
    db = tmp_path / "queue.db"
    mic = RealtimeFifo(tmp_path / "mic", RATE, PERIOD_FRAMES)  # 64 KiB FIFO: 2 s of slack, nothing dropped
    env = mic.setup()
    mic.start()
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": DEVICE},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": PERIOD_FRAMES},
        windows={"length_s": HOP_S}, classifier={"enabled": False}, store={"path": str(db)},
        sync={"dsn": fault_dsn, "interval_s": 0.3, "final_timeout_s": 30}, ops={"heartbeat_interval_s": 1.0},
    )
    agent = AgentProcess(cfg, tmp_path, env=env)
    windows_before: list[int] = []  # windows stored when each step was made
    after_step: list[datetime] = []  # the (stepped) wall clock just after each step
    stepped_s = 0.0
    try:
        agent.wait_for(lambda: len(local_windows(db)) >= 4, 180, "4 windows stored before the first step", poll=0.2)
        time.sleep(1.5)  # at least one supervision tick with the right clock
        t_first = time.monotonic()
        for k, delta in enumerate(STEPS_S):
            mark = len(agent.stderr())
            n0 = len(local_windows(db))
            windows_before.append(n0)
            clock.step(delta)
            after_step.append(datetime.now(timezone.utc))
            agent.wait_for(lambda mark=mark: _STEP_LOG.search(agent.stderr()[mark:]) is not None, 20,
                           f"step {k} ({delta:+g} s) logged")
            agent.wait_for(lambda n0=n0: len(local_windows(db)) >= n0 + 4, 30, f"4 windows stored after step {k}",
                           poll=0.2)
        true_stop = clock.true_now()
        rc = agent.stop(timeout=60)
        assert rc == 0, f"the agent did not stop cleanly ({rc}):\n{agent.stderr()[-3000:]}"
    finally:
        if clock.stepped:
            stepped_s = time.monotonic() - t_first
            clock.restore()
        if agent.alive():
            agent.kill9()
        mic.close()
    assert abs(clock.error_s()) < 0.05, f"the clock was not put back: {clock.error_s():+.3f} s off"
    assert stepped_s < MAX_STEPPED_S, f"the clock stayed stepped for {stepped_s:.1f} s"

    # -- the log names both steps
    log = agent.stderr()
    logged = [float(s) for s in _STEP_LOG.findall(log)]
    assert len(logged) == len(STEPS_S), f"expected {len(STEPS_S)} steps logged, got {logged}"
    for made, seen in zip(STEPS_S, logged, strict=False):
        assert abs(seen - made) <= STEP_TOLERANCE_S, f"logged a step of {seen:+.3f} s for one of {made:+g} s"

    # -- PostgreSQL: one clock_steps row per step
    with psycopg.connect(fault_dsn) as con:
        steps = con.execute("SELECT step_s, detected_at, clock_synchronised FROM clock_steps WHERE device = %s "
                            "ORDER BY sync_time, step_s DESC", (DEVICE,)).fetchall()
    assert len(steps) == len(STEPS_S), f"expected {len(STEPS_S)} clock_steps rows, got {steps}"
    recorded = sorted((s for s, _, _ in steps), reverse=True)
    for made, (step_s, detected_at, _) in zip(STEPS_S, sorted(steps, key=lambda r: -r[0]), strict=False):
        assert abs(step_s - made) <= STEP_TOLERANCE_S, f"clock_steps holds {step_s:+.3f} s for a {made:+g} s step"
        k = STEPS_S.index(made)
        # detected_at: the device's (stepped) wall clock soon after the step
        assert after_step[k] - timedelta(seconds=0.5) <= detected_at <= after_step[k] + timedelta(seconds=15), (
            made, detected_at, after_step[k])

    # -- windows: one stream, consecutive, exactly one hop apart across both steps
    wins = remote_windows(fault_dsn, DEVICE)
    assert len(wins) >= windows_before[-1] + 4
    assert len({w.key.rsplit("-", 1)[0] for w in wins}) == 1, "more than one capture stream"
    assert [w.index for w in wins] == list(range(wins[0].index, wins[0].index + len(wins))), "window indices skip"
    hop = timedelta(seconds=HOP_S)
    wrong = [(a.index, b.start - a.start) for a, b in zip(wins, wins[1:], strict=False) if b.start - a.start != hop]
    assert not wrong, f"consecutive windows not exactly {HOP_S:g} s apart: {wrong[:5]}"
    for k, n0 in enumerate(windows_before):
        assert len(wins) - n0 >= 4, f"fewer than 4 windows after step {k}"
    with psycopg.connect(fault_dsn) as con:
        xruns = con.execute("SELECT coalesce(sum(xruns), 0) FROM windows WHERE device = %s", (DEVICE,)).fetchone()[0]
    assert xruns == 0, f"{xruns} xruns: the stream was re-anchored, the test proves nothing"
    # ... on the true time: the last window ended just before the agent stopped, not 60 s off
    # (the FIFO's 2 s of audio waiting when capture started may put the stream that much ahead)
    end = wins[-1].end
    assert true_stop - timedelta(seconds=10) <= end <= true_stop + timedelta(seconds=2.5), (end, true_stop)

    d = check_delivery(db, fault_dsn, DEVICE)
    with psycopg.connect(fault_dsn) as con:  # for the report: which heartbeat the fleet view shows
        shown = con.execute("SELECT uptime_s FROM device_status WHERE device = %s", (DEVICE,)).fetchone()
        newest = con.execute("SELECT max(uptime_s) FROM heartbeats WHERE device = %s", (DEVICE,)).fetchone()
    print(f"clock step: steps {list(STEPS_S)} s, logged {logged}, recorded {recorded}, {len(wins)} windows "
          f"1 s apart, stepped for {stepped_s:.1f} s, waited {waited:.0f} s for TLS tests; device_status shows "
          f"the heartbeat of uptime {shown[0] if shown else None} s, the newest has {newest[0]} s")
    fault_results.record(
        "clock_step", cycles=1, faults_injected=len(STEPS_S), windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=None, steps_s=list(STEPS_S),
        recorded_steps_s=[round(s, 3) for s in recorded], stepped_for_s=round(stepped_s, 1),
    )
