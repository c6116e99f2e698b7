"""Fault: the microphone is lost mid-run and comes back.

A live microphone is played by the test: the real recordings are written at real-time pace
into a FIFO (:class:`RealtimeFifo`) that an ALSA ``type file`` PCM reads through the real
ALSA library (``slave.pcm "null"``: the FIFO supplies samples and pace, as an AudioMoth's USB
stream would). The agent captures it with ``capture.type = "arecord"``: one long-lived
``arecord`` child reading the PCM.

The microphone is "unplugged" as a USB unplug looks to the agent: the PCM disappears (the
ALSA configuration is rewritten without its definition, so every new ``arecord`` exits at
once with ``audio open error``) and the running ``arecord`` dies with an error exit
(SIGKILL). For :data:`OUTAGE_S` seconds nothing records; the writer keeps producing audio
that nobody reads (a microphone's samples are lost when nobody records them). Then the PCM
definition is written back ("plugged in again"). What a user must see:

* the agent stays up; its log says ``capture lost: ...`` and then
  ``reconnecting to the capture device in X s (attempt N)`` with growing, jittered delays
  (the n-th between 1 s and ``min(10, 2**(n-1))`` s, :func:`agent.ops.backoff_delay`),
  each failed attempt reported;
* the heartbeats delivered to PostgreSQL say ``capture_lost`` (column ``degraded``) while
  the device is gone, and no longer once it is back;
* windows are stored again after the device returns;
* PostgreSQL's ``gaps`` table holds one row per outage, ``reason = 'capture_lost'``, its
  detail naming the error, ``start_time`` the end of the last audio before the loss and
  ``end_time`` the start of the first audio after it, about as long as the outage caused;
  no window straddles it;
* :func:`tests.faultkit.check_delivery`: PostgreSQL holds exactly the windows committed
  locally, the SQLite file is intact.

If the agent is stopped while the microphone is still gone, the time without audio up to the
stop is stored as a gap all the same
(:func:`test_microphone_still_lost_when_the_agent_stops_the_gap_is_stored`).

The ``alsa`` source (pyalsaaudio, in the agent's process) cannot be made to fail mid-run
here: alsa-lib 1.2.8's file plugin logs a failed ``read()`` of its infile ("read from file
failed, error: -1: Input/output error") and still returns the full period (garbage), and this
kernel has no sound driver (no ``/dev/snd``) whose device could vanish. What can be checked
for it is :func:`test_alsa_source_reports_a_missing_device_naming_it`.

``SOUNDSCAPE_FAULT_SCALE=full`` runs three outages in one agent run instead of one.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from agent.pipeline import CAPTURE_RETRY_INITIAL_S, CAPTURE_RETRY_MAX_S
from tests.audio import PCM_NAME, real_audio_s16
from tests.faultkit import ROOT, AgentProcess, check_delivery, scaled
from tests.test_run import write_config

pytestmark = pytest.mark.faults

#: Capture rate of the test microphone, Hz (16 kHz keeps the shared 2-core machine free).
RATE = 16000
#: Frames per ALSA period (per read), 0.1 s.
PERIOD_FRAMES = 1600
#: How long the microphone stays unplugged, s.
OUTAGE_S = 12.0
#: The agent's capture reconnection backoff (first delay, cap), s.
RETRY_INITIAL_S = CAPTURE_RETRY_INITIAL_S
RETRY_MAX_S = CAPTURE_RETRY_MAX_S
#: Window length, s.
WINDOW_S = 1.0
DEVICE = "moth-mic-lost"

_RECONNECT = re.compile(r"reconnecting to the capture device in ([0-9.]+) s \(attempt (\d+)\)")
_STILL_DOWN = re.compile(r"capture device still unavailable \(attempt (\d+)\): (.*)")
F_SETPIPE_SZ = 1031  # fcntl.h (Linux)


class RealtimeFifo:
    """A live microphone for the ALSA ``type file`` PCM :data:`tests.audio.PCM_NAME`: a FIFO
    written at real-time pace with the real recordings (resampled to ``rate``, repeated).

    A writer thread writes one unit of ``unit_frames`` frames every ``unit_frames / rate`` s on
    a monotonic schedule (a step of the wall clock does not change the pace). The unit must
    be the reader's ALSA period, and at most ``PIPE_BUF`` (4096 bytes, so each write is
    atomic): alsa-lib 1.2.8's file plugin returns a full period whatever its ``read()`` of the
    infile returned, filling the rest with the null slave's samples, so a reader must always
    find whole periods in the FIFO (or its sample count would run ahead of real time). A unit
    that does not fit in the FIFO (nobody reads: the microphone is unplugged, or the reader
    stalls) is dropped and counted, as a microphone's samples are lost when nobody records
    them. The FIFO is held open read-write by the test, so its reader blocks rather than
    seeing EOF between two readers.

    Args:
        workdir: where the FIFO and the ALSA configuration are created.
        rate: sample rate, Hz.
        unit_frames: frames per write: the capture's ``period_frames``.
        pipe_bytes: FIFO capacity, bytes (``None``: the kernel's default, 64 KiB).
    """

    def __init__(self, workdir: Path, rate: int, unit_frames: int, pipe_bytes: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        if unit_frames * 2 > 4096:
            raise ValueError(f"a unit of {unit_frames} frames is larger than PIPE_BUF: writes would not be atomic")
        self.rate = rate
        self.unit_frames = unit_frames
        self.fifo = workdir / "mic.fifo"
        self.conf = workdir / "asound.conf"
        self._pipe_bytes = pipe_bytes
        # 120 s of real audio, replayed cyclically
        self._data = real_audio_s16(rate, 120).tobytes()
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.units_written = 0
        self.units_dropped = 0

    def setup(self) -> dict[str, str]:
        """Create the FIFO and the ALSA configuration defining the PCM; return the environment
        (``ALSA_CONFIG_PATH``) that makes it visible to a process."""
        os.mkfifo(self.fifo)
        self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        if self._pipe_bytes:
            fcntl.fcntl(self._fd, F_SETPIPE_SZ, self._pipe_bytes)
        self.set_present(True)
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}"}

    def set_present(self, present: bool) -> None:
        """Plug the microphone in (define the PCM) or out (a configuration without it), atomically."""
        text = (f'pcm.{PCM_NAME} {{\n    type file\n    slave.pcm "null"\n    file "/dev/null"\n'
                f'    infile "{self.fifo}"\n    format "raw"\n}}\n') if present else "# the microphone is unplugged\n"
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        if present:
            self.drain()
        os.replace(tmp, self.conf)

    def drain(self) -> None:
        """Discard what waits in the FIFO (audio nobody recorded): a device plugged in again
        starts a fresh stream, it does not deliver audio from before."""
        assert self._fd is not None
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass

    def start(self) -> None:
        """Start writing (the stream's time 0 is now)."""
        self._thread = threading.Thread(target=self._write, name="realtime-fifo", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        assert self._fd is not None
        size = self.unit_frames * 2
        n_units = len(self._data) // size
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * self.rate) // self.unit_frames
            while k < due:
                j = k % n_units
                try:
                    os.write(self._fd, self._data[j * size:(j + 1) * size])
                    self.units_written += 1
                except BlockingIOError:
                    self.units_dropped += 1
                k += 1
            self._stop.wait(0.01)

    def close(self) -> None:
        """Stop writing and close the FIFO (a reader still attached then sees EOF)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def children_named(ppid: int, comm: str) -> list[int]:
    """Pids of the live processes named ``comm`` whose parent is ``ppid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if name == comm and int(fields[1]) == ppid and fields[0] != "Z":
            out.append(int(entry))
    return out


@dataclass(frozen=True)
class Win:
    """One stored window: key, index, start (UTC), duration (s)."""

    key: str
    index: int
    start: datetime
    duration_s: float

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.duration_s)


def local_windows(db: Path) -> list[Win]:
    """The windows in the SQLite outbox (read-only, while the agent runs), oldest first."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        try:
            rows = con.execute("SELECT key, window_index, start_time, duration_s FROM windows").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
    finally:
        con.close()
    wins = [Win(k, i, datetime.fromisoformat(s).astimezone(timezone.utc), d) for k, i, s, d in rows]
    return sorted(wins, key=lambda w: w.index)


def remote_windows(dsn: str, device: str) -> list[Win]:
    """The device's windows in PostgreSQL, by index."""
    with psycopg.connect(dsn) as con:
        rows = con.execute("SELECT window_key, window_index, start_time, duration_s FROM windows "
                           "WHERE device = %s ORDER BY window_index", (device,)).fetchall()
    return [Win(*r) for r in rows]


def check_reconnect_delays(delays: list[tuple[int, float]], what: str) -> None:
    """Assert one outage's reconnection attempts: numbered 1, 2, 3, ... and the n-th delay
    within ``[1 s, min(10 s, 2**(n-1) s)]`` (0.05 s slack: the log rounds to 0.1 s).

    Args:
        delays: (attempt number, delay in s) in log order.
        what: names the outage in messages.
    """
    assert len(delays) >= 3, f"{what}: expected >= 3 reconnection attempts in {OUTAGE_S:g} s, got {delays}"
    assert [n for n, _ in delays] == list(range(1, len(delays) + 1)), f"{what}: attempts not numbered 1..n: {delays}"
    for n, d in delays:
        hi = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (n - 1))
        assert RETRY_INITIAL_S - 0.05 <= d <= hi + 0.05, (
            f"{what}: attempt {n} waited {d} s, not in [1, {hi}] s: {delays}")


def test_microphone_lost_and_back_is_logged_flagged_retried_and_stored_as_a_gap(tmp_path, tiny_model_dir, fault_dsn,
                                                                               fault_results):
    """The arecord microphone unplugged for ~12 s (PCM gone, arecord SIGKILLed), then back:
    the agent stays up, logs the loss and jittered growing reconnection delays, heartbeats say
    capture_lost only while it is gone, windows resume, and PostgreSQL's gaps table holds one
    capture_lost row per outage spanning exactly the time without audio (s, UTC)."""
    outages = scaled(1, 3)
    db = tmp_path / "queue.db"
    # 8 KiB: 2 periods (0.2 s) of slack, like a USB microphone's buffer (and at most 0.2 s of
    # stale audio when arecord starts: the stream's anchor may run that much ahead)
    mic = RealtimeFifo(tmp_path / "mic", RATE, PERIOD_FRAMES, pipe_bytes=8192)
    env = mic.setup()
    mic.start()
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": DEVICE},
        capture={"type": "arecord", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": PERIOD_FRAMES},
        windows={"length_s": WINDOW_S}, classifier={"type": "onnx", "model": str(tiny_model_dir), "queue_size": 10},
        store={"path": str(db)}, sync={"dsn": fault_dsn, "interval_s": 0.3, "final_timeout_s": 30},
        ops={"heartbeat_interval_s": 1.0},
    )
    agent = AgentProcess(cfg, tmp_path, env=env)
    kills: list[datetime] = []  # wall time of each unplug (UTC)
    backs: list[datetime] = []  # wall time the device was plugged in again
    outage_s: list[float] = []  # unplug -> plugged in again, s
    recoveries: list[float] = []  # plugged in again -> first window stored, s
    log_marks: list[tuple[int, int]] = []  # (start, end) of each outage's part of the log
    try:
        agent.wait_for(lambda: len(local_windows(db)) >= 5, 240, "5 windows stored before the microphone is lost",
                       poll=0.2)
        for i in range(outages):
            mark = len(agent.stderr())
            recorders = children_named(agent.pid, "arecord")
            assert len(recorders) == 1, f"outage {i}: expected one arecord child, found {recorders}"
            mic.set_present(False)
            t_kill = time.monotonic()
            kills.append(datetime.now(timezone.utc))
            os.kill(recorders[0], signal.SIGKILL)
            agent.wait_for(lambda mark=mark: "capture lost" in agent.stderr()[mark:], 30,
                           f"outage {i}: the loss logged")
            while time.monotonic() - t_kill < OUTAGE_S:
                assert agent.alive(), f"outage {i}: the agent died without its microphone:\n{agent.stderr()[-3000:]}"
                time.sleep(0.2)
            # no audio without a microphone: nothing was stored for the time after the unplug
            late = [w for w in local_windows(db) if w.end > kills[-1] + timedelta(seconds=0.5)]
            assert not late, f"outage {i}: windows stored for a time without a microphone: {late[:3]}"
            mic.set_present(True)
            t_back = time.monotonic()
            backs.append(datetime.now(timezone.utc))
            outage_s.append(t_back - t_kill)

            def resumed() -> bool:
                return any(w.start > kills[-1] for w in local_windows(db))

            # the next attempt comes within the backoff cap (plus a loaded machine's slack)
            recoveries.append(agent.wait_for(resumed, RETRY_MAX_S + 60, f"outage {i}: a window stored after the return",
                                             poll=0.1))
            agent.wait_for(lambda: sum(w.start > kills[-1] for w in local_windows(db)) >= 5, 60,
                           f"outage {i}: 5 windows stored after the return", poll=0.2)
            log_marks.append((mark, len(agent.stderr())))
        # a few healthy heartbeats after the last return reach the server
        back_ok = datetime.now(timezone.utc)

        def healthy_beats() -> int:
            with psycopg.connect(fault_dsn) as con:
                return con.execute("SELECT count(*) FROM heartbeats WHERE device = %s AND time > %s",
                                   (DEVICE, back_ok)).fetchone()[0]

        agent.wait_for(lambda: healthy_beats() >= 2, 60, "2 heartbeats delivered after the return", poll=0.5)
        rc = agent.stop(timeout=120)
        assert rc == 0, f"the agent did not stop cleanly ({rc}):\n{agent.stderr()[-3000:]}"
    finally:
        if agent.alive():
            agent.kill9()
        mic.close()

    log = agent.stderr()
    # -- the log: the loss, then growing jittered reconnection delays, each failure reported
    all_delays: list[float] = []
    attempts = 0
    for i, (a, b) in enumerate(log_marks):
        part = log[a:b]
        lost = re.findall(r"capture lost: (.*?); reconnecting", part)
        assert len(lost) == 1 and "arecord stopped unexpectedly" in lost[0], f"outage {i}: loss not logged once: {lost}"
        delays = [(int(n), float(d)) for d, n in _RECONNECT.findall(part)]
        check_reconnect_delays(delays, f"outage {i}")
        still = _STILL_DOWN.findall(part)
        assert still and all("audio open error" in msg for _, msg in still), (
            f"outage {i}: failed reconnection attempts not reported with arecord's error: {still}")
        resumed_lines = re.findall(r"capture resumed: ([0-9.]+) s without audio", part)
        assert len(resumed_lines) == 1, f"outage {i}: the resume not logged once: {resumed_lines}"
        all_delays += [d for _, d in delays]
        attempts += len(delays)
    later = [d for d in all_delays if d != RETRY_INITIAL_S]
    assert len(set(later)) > 1, f"no jitter in the reconnection delays: {all_delays}"
    assert max(all_delays) > 1.5 * RETRY_INITIAL_S, f"the reconnection delay never grew: {all_delays}"

    # -- PostgreSQL: gaps, heartbeats, windows
    with psycopg.connect(fault_dsn) as con:
        gaps = con.execute("SELECT start_time, end_time, reason, detail, windows FROM gaps WHERE device = %s "
                           "ORDER BY start_time", (DEVICE,)).fetchall()
        beats = con.execute("SELECT time, degraded FROM heartbeats WHERE device = %s ORDER BY uptime_s",
                            (DEVICE,)).fetchall()
        other = con.execute("SELECT count(*) FROM gaps WHERE device <> %s", (DEVICE,)).fetchone()[0]
    wins = remote_windows(fault_dsn, DEVICE)
    assert other == 0
    assert len(gaps) == outages, f"expected {outages} gap row(s), got {gaps}"
    gap_s = []
    for i, (start, end, reason, detail, _n) in enumerate(gaps):
        # the detail names the error: arecord killed (what a USB unplug does to it)
        assert reason == "capture_lost" and re.search(r"arecord stopped unexpectedly \((exit -9|killed by SIGKILL)\)",
                                                      detail), (reason, detail)
        # the gap begins where the audio ended: at the unplug (minus what was in flight), ...
        assert kills[i] - timedelta(seconds=3) <= start <= kills[i] + timedelta(seconds=0.5), (start, kills[i])
        # ... and ends where audio resumed: after the device came back, within one backoff delay
        assert backs[i] - timedelta(seconds=0.5) <= end <= backs[i] + timedelta(seconds=recoveries[i] + 1), (
            end, backs[i], recoveries[i])
        length = (end - start).total_seconds()
        gap_s.append(round(length, 2))
        assert outage_s[i] - 3 <= length <= outage_s[i] + recoveries[i] + 1, (
            f"outage {i}: a {length:.1f} s gap for a {outage_s[i]:.1f} s outage ({recoveries[i]:.1f} s to recover)")
        before = [w for w in wins if w.start < start]
        after = [w for w in wins if w.start >= end]
        assert before and after, f"outage {i}: no windows on both sides of the gap"
        # the last window before it ends at or before its start (the partial window after it is discarded) ...
        assert before[-1].end <= start < before[-1].end + timedelta(seconds=WINDOW_S + 0.2), (before[-1], start)
        # ... and the first window after it starts exactly where it ends (the new segment's first sample)
        assert end <= after[0].start < end + timedelta(milliseconds=1), (end, after[0])
        straddling = [w for w in wins if w.start < end and w.end > start]
        assert not straddling, f"outage {i}: windows straddle the gap: {straddling}"
    # heartbeats: healthy before, capture_lost while the device is gone, healthy after
    assert beats and "capture_lost" not in beats[0][1], beats[:3]
    for i, (start, end, *_rest) in enumerate(gaps):
        during = [t for t, deg in beats if "capture_lost" in deg and start <= t <= end + timedelta(seconds=3)]
        assert during, f"outage {i}: no heartbeat said capture_lost while the device was gone"
    flagged = [t for t, deg in beats if "capture_lost" in deg]
    stray = [t for t in flagged if not any(s - timedelta(seconds=0.5) <= t <= e + timedelta(seconds=3)
                                           for s, e, *_ in gaps)]
    assert not stray, f"heartbeats flagged capture_lost outside any outage: {stray}"
    tail = [deg for t, deg in beats if t > gaps[-1][1] + timedelta(seconds=3)]
    assert len(tail) >= 2 and not any("capture_lost" in deg for deg in tail), f"after the return: {tail}"

    d = check_delivery(db, fault_dsn, DEVICE)
    print(f"microphone lost: {outages} outage(s) of {[round(o, 1) for o in outage_s]} s, gaps {gap_s} s, recovery "
          f"{[round(r, 2) for r in recoveries]} s, reconnection delays {all_delays} s, {len(d.remote)} windows, "
          f"{len(flagged)} heartbeats flagged capture_lost, FIFO units dropped {mic.units_dropped}")
    fault_results.record(
        "microphone_lost", cycles=outages, faults_injected=outages, windows_sent=len(d.remote), lost=len(d.lost),
        duplicated=d.duplicated, worst_recovery_s=max(recoveries), gap_s=gap_s,
        outage_s=[round(o, 1) for o in outage_s], reconnect_attempts=attempts, backoff_delays_s=all_delays,
        heartbeats_flagged=len(flagged), source="arecord",
    )


def test_microphone_still_lost_when_the_agent_stops_the_gap_is_stored(tmp_path, fault_dsn):
    """The microphone unplugged and the agent stopped (SIGTERM) before it returns: the agent
    stops cleanly and the time without audio is still stored, as one capture_lost gap from
    the end of the last audio to the stop (UTC), delivered by the final sync; exactly-once
    delivery of the windows."""
    db = tmp_path / "queue.db"
    device = "moth-mic-lost-at-stop"
    mic = RealtimeFifo(tmp_path / "mic", RATE, PERIOD_FRAMES, pipe_bytes=8192)
    env = mic.setup()
    mic.start()
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": device},
        capture={"type": "arecord", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": PERIOD_FRAMES},
        windows={"length_s": WINDOW_S}, classifier={"enabled": False}, store={"path": str(db)},
        sync={"dsn": fault_dsn, "interval_s": 0.3, "final_timeout_s": 30}, ops={"heartbeat_interval_s": 1.0},
    )
    agent = AgentProcess(cfg, tmp_path, env=env)
    try:
        agent.wait_for(lambda: len(local_windows(db)) >= 3, 180, "3 windows stored", poll=0.2)
        recorders = children_named(agent.pid, "arecord")
        assert len(recorders) == 1, recorders
        mic.set_present(False)
        kill = datetime.now(timezone.utc)
        os.kill(recorders[0], signal.SIGKILL)
        agent.wait_for(lambda: len(_RECONNECT.findall(agent.stderr())) >= 2, 60, "two reconnection attempts")
        stop = datetime.now(timezone.utc)
        rc = agent.stop(timeout=120)
        assert rc == 0, f"the agent did not stop cleanly ({rc}):\n{agent.stderr()[-3000:]}"
    finally:
        if agent.alive():
            agent.kill9()
        mic.close()
    with psycopg.connect(fault_dsn) as con:
        gaps = con.execute("SELECT start_time, end_time, reason, detail FROM gaps WHERE device = %s",
                           (device,)).fetchall()
    assert len(gaps) == 1, f"the outage until the stop is not stored as one gap: {gaps}\n{agent.stderr()[-2000:]}"
    start, end, reason, detail = gaps[0]
    assert reason == "capture_lost" and "arecord stopped unexpectedly" in detail, (reason, detail)
    assert kill - timedelta(seconds=3) <= start <= kill + timedelta(seconds=0.5), (start, kill)
    assert stop - timedelta(seconds=0.5) <= end <= stop + timedelta(seconds=30), (end, stop)
    wins = remote_windows(fault_dsn, device)
    assert wins and wins[-1].end <= start, (wins[-1], start)
    check_delivery(db, fault_dsn, device)


def test_alsa_source_reports_a_missing_device_naming_it(tmp_path):
    """capture.type = "alsa" (pyalsaaudio) with its PCM undefined: ``run`` fails at once with
    exit 69 (EX_UNAVAILABLE), naming the PCM, ALSA's reason and the fix, and stores nothing;
    with the PCM defined the same configuration captures (windows of 1 s printed). A mid-run
    failure of this source cannot be produced here (see the module docstring)."""
    mic = RealtimeFifo(tmp_path / "mic", RATE, PERIOD_FRAMES)
    env = {**os.environ, **mic.setup()}
    mic.start()
    db = tmp_path / "queue.db"
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": "moth-alsa-missing"},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE, "period_frames": PERIOD_FRAMES},
        windows={"length_s": WINDOW_S}, classifier={"enabled": False}, store={"path": str(db)},
        ops={"heartbeat_interval_s": 0},
    )
    cmd = [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)]
    try:
        mic.set_present(False)
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 69, (r.returncode, r.stderr[-2000:])
        assert f"cannot open ALSA capture PCM '{PCM_NAME}'" in r.stderr and "arecord -l" in r.stderr, r.stderr[-2000:]
        assert not [ln for ln in r.stdout.splitlines() if ln.startswith("window")]
        mic.set_present(True)
        r = subprocess.run([*cmd, "--max-windows", "3"], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len([ln for ln in r.stdout.splitlines() if ln.startswith("window")]) == 3, r.stdout
    finally:
        mic.close()
