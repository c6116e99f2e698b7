"""The systemd service: the unit file passes ``systemd-analyze verify`` and ``security``; the
agent speaks the notify protocol (READY, WATCHDOG only while audio flows, STATUS) to a test
socket; heartbeats reach PostgreSQL and the node-exporter textfile.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.audio import PCM_NAME, RECORDINGS, real_audio_s16
from tests.test_run import AGENT, write_config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "soundscape-agent.service"
needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (apt-get install systemd)")


def _unit_with_local_exec(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script instead of the
    fleet's /opt/soundscape-agent/current/venv (verify checks that the executable exists)."""
    exe = Path(sys.executable).with_name("soundscape-agent")
    assert exe.exists(), exe
    text = UNIT.read_text().replace("/opt/soundscape-agent/current/venv/bin/soundscape-agent", str(exe))
    out = tmp_path / UNIT.name
    out.write_text(text)
    return out


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(_unit_with_local_exec(tmp_path))],
                       capture_output=True, text=True, timeout=60)
    assert r.stderr == "" and r.returncode == 0, r.stderr


@needs_systemd_analyze
def test_unit_security_exposure_is_at_most_2():
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
    settings = [ln.strip() for ln in UNIT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    text = "\n".join(settings)
    # audio capture must survive the hardening: ALSA devices allowed, /dev not hidden
    assert "DeviceAllow=char-alsa rw" in settings and not any(s.startswith("PrivateDevices=") for s in settings)
    for key in ("Type=notify", "WatchdogSec=", "Restart=always", "StartLimitIntervalSec=0",
                "SupplementaryGroups=audio", "StateDirectory=soundscape-agent",
                "LoadCredential=soundscape-agent.pg-password"):
        assert key in text, key


class NotifyListener:
    """A datagram socket standing in for systemd's notification socket; records every
    assignment with its arrival time (monotonic, s)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def times(self, assignment: str) -> list[float]:
        return [t for t, m in self.messages if m == assignment]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_ready_watchdog_while_audio_flows_and_none_once_capture_stalls(tmp_path):
    """READY=1 once audio arrives; WATCHDOG=1 at least every half WATCHDOG_USEC while the ALSA
    capture delivers; no WATCHDOG=1 once the device stops delivering (its input is a FIFO the
    test stops writing), so systemd would restart the agent; STATUS= carries a summary."""
    rate, period = 16000, 1600
    fifo = tmp_path / "infile.raw"
    os.mkfifo(fifo)
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.{PCM_NAME} {{\n type file\n slave.pcm "null"\n file "/dev/null"\n'
                    f' infile "{fifo}"\n format "raw"\n}}\n')
    env = {**os.environ, "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}",
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    listener = NotifyListener(tmp_path / "notify.sock")
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": "moth-watchdog"},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": rate, "period_frames": period},
        windows={"length_s": 1.0}, classifier={"enabled": False}, store={"path": str(tmp_path / "queue.db")},
        ops={"heartbeat_interval_s": 0},
    )
    writer = os.open(fifo, os.O_RDWR)  # keeps the FIFO open: the reader blocks instead of seeing EOF
    audio = real_audio_s16(rate, 20).tobytes()
    proc = subprocess.Popen([*AGENT, "run", "--config", str(cfg), "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # feed 8 s of real audio in real time, one ALSA period at a time
        step = period * 2
        t0 = time.monotonic()
        flow_end = t0 + 8.0
        pos = 0
        while time.monotonic() < flow_end:
            os.write(writer, audio[pos:pos + step])
            pos += step
            time.sleep(max(0.0, t0 + pos / 2 / rate - time.monotonic()))
        stall_start = time.monotonic()
        time.sleep(5.0)  # the device delivers nothing more
        ready = listener.times("READY=1")
        pings = listener.times("WATCHDOG=1")
        assert ready, listener.messages
        flowing = [t for t in pings if ready[0] <= t <= flow_end]
        assert len(flowing) >= 5, listener.messages
        gaps = [b - a for a, b in zip(flowing, flowing[1:], strict=False)]
        assert max(gaps) <= 1.0 + 0.05, gaps  # half of WATCHDOG_USEC (2 s), with send jitter
        # after the stall: at most one ping already on its way, then silence
        late = [t for t in pings if t > stall_start + 1.2]
        assert late == [], (late, stall_start)
        status = [m for _, m in listener.messages if m.startswith("STATUS=")]
        assert any(re.match(r"STATUS=\d+ windows \(", s) for s in status), status
        assert proc.poll() is None, "the agent must stay up (systemd decides to restart it)"
    finally:
        proc.send_signal(signal.SIGTERM)
        os.close(writer)  # EOF for the blocked reader
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        listener.close()
    assert "capture stalled" in err
    assert "STOPPING=1" in [m for _, m in listener.messages]


def test_heartbeats_reach_postgres_and_the_textfile(tmp_path, tiny_model_dir, migrated_dsn):
    textfile = tmp_path / "soundscape_agent.prom"
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": "moth-heartbeat"},
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_060000.wav"), "realtime": True,
                 "loop": True},
        windows={"length_s": 1.0}, classifier={"model": str(tiny_model_dir)},
        store={"path": str(tmp_path / "queue.db")}, sync={"dsn": migrated_dsn, "interval_s": 1.0},
        ops={"heartbeat_interval_s": 1.0, "textfile_path": str(textfile)},
    )
    r = subprocess.run([*AGENT, "run", "--config", str(cfg), "--quiet", "--max-windows", "5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    with psycopg.connect(migrated_dsn) as con:
        rows = con.execute(
            "SELECT device, time, uptime_s, windows, queue_depth, clock_synchronised, disk_free_bytes,"
            " rss_bytes, model_id, agent_version, heartbeat_id FROM heartbeats ORDER BY time").fetchall()
        status = con.execute("SELECT device, windows FROM device_status").fetchall()
    assert len(rows) >= 3, rows  # one at start, then every second of a ~5 s run
    assert len({r[10] for r in rows}) == len(rows)
    assert all(r[0] == "moth-heartbeat" and r[6] > 0 and r[7] > 0 and r[9] for r in rows)
    assert all(r[8].startswith("SCAFFOLD-random-weights") for r in rows)
    uptimes, windows = [r[2] for r in rows], [r[3] for r in rows]
    assert uptimes == sorted(uptimes) and windows == sorted(windows) and windows[-1] >= 3
    assert status == [("moth-heartbeat", windows[-1])]
    # every queued heartbeat was delivered and marked
    import sqlite3
    con = sqlite3.connect(f"file:{tmp_path / 'queue.db'}?mode=ro", uri=True)
    assert con.execute("SELECT count(*), count(synced_at) FROM heartbeats").fetchone() == (len(rows), len(rows))
    con.close()
    prom = textfile.read_text()
    assert 'soundscape_agent_windows_total{device="moth-heartbeat"}' in prom
    assert re.search(r'soundscape_agent_resident_memory_bytes\{device="moth-heartbeat"\} \d', prom)


def test_agent_runs_under_memory_deny_write_execute(tmp_path, tiny_model_dir, migrated_dsn):
    """The unit sets MemoryDenyWriteExecute=yes: the agent (onnxruntime, numpy, soundfile's cffi,
    psycopg) must work when the kernel refuses writable-executable memory. Applied here with the
    same kernel mechanism systemd uses on Linux >= 6.3 (prctl PR_SET_MDWE), else skipped."""
    wrapper = ("import ctypes, os, sys\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "if libc.prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
               "    sys.exit(77)\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'agent.cli', *sys.argv[1:]])\n")
    cfg = write_config(
        tmp_path / "agent.toml", agent={"device_id": "moth-mdwe"},
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_060000.wav")},
        windows={"length_s": 2.0}, classifier={"type": "onnx", "model": str(tiny_model_dir)},
        store={"path": str(tmp_path / "queue.db")}, sync={"dsn": migrated_dsn},
    )
    r = subprocess.run([sys.executable, "-c", wrapper, "run", "--config", str(cfg), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180)
    if r.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0, r.stderr
    assert "done: 5 windows (5 classified" in r.stdout
    with psycopg.connect(migrated_dsn) as con:
        assert con.execute("SELECT count(*) FROM windows WHERE device = 'moth-mdwe'").fetchone()[0] == 5
