"""Process plumbing of the service (agent.ops): glibc malloc thresholds for ``run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops import GLIBC_DEFAULT_THRESHOLD, pin_malloc_thresholds

REPO = Path(__file__).resolve().parent.parent
# glibc cannot report its thresholds, so the probe checks their effect, which is what the
# service's memory use depends on: freed 1 MB buffers go back to the OS when pinned, and stay
# resident under glibc's dynamic threshold.
PROBE = r"""
import ctypes, json, os, re, sys
from pathlib import Path
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024
if sys.argv[1] == "pin":
    from agent.ops import pin_malloc_thresholds
    done = pin_malloc_thresholds()
else:
    done = {}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 1) a 4 MB block freed: glibc (dynamic threshold) raises its mmap threshold to 4 MB.
p = libc.malloc(4 << 20); ctypes.memset(p, 1, 4 << 20); libc.free(p)
# 2) 60 blocks of 1 MB, touched, then freed but the last: without pinning they live on the
#    heap (below the raised threshold) and the kept one at the top pins the freed ones below it.
blocks = [libc.malloc(1 << 20) for _ in range(60)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
before = rss()
for b in blocks[:-1]:
    libc.free(b)
print(json.dumps({"pinned": done, "held_mb": rss() - before + 59}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists()
                    and not Path("/lib/aarch64-linux-gnu/libc.so.6").exists(), reason="glibc only")
def test_pinned_thresholds_return_freed_buffers_to_the_os():
    free_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    kept = _probe("none", **free_env)
    pinned = _probe("pin", **free_env)
    assert pinned["pinned"] == {"M_MMAP_THRESHOLD": GLIBC_DEFAULT_THRESHOLD,
                                "M_TRIM_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}
    assert kept["held_mb"] >= 50, kept       # glibc's dynamic threshold keeps the freed 59 MB resident
    assert pinned["held_mb"] <= 5, pinned    # pinned: they went back to the OS


def test_an_operators_malloc_environment_wins():
    out = _probe("pin", MALLOC_MMAP_THRESHOLD_="65536")
    assert out["pinned"] == {"M_TRIM_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}
    out = _probe("pin", GLIBC_TUNABLES="glibc.malloc.trim_threshold=65536")
    assert out["pinned"] == {"M_MMAP_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="> 0 bytes"):
        pin_malloc_thresholds(0)


def test_password_file_is_read_with_credentials_directory_and_must_be_private(tmp_path):
    """[sync] password_file: ${CREDENTIALS_DIRECTORY} expands (systemd LoadCredential=); the first
    line is the password; a file readable by group/others, a missing file or an unset variable
    is a ConfigError naming the fix."""
    from agent.config import read_password
    from agent.errors import ConfigError

    cred = tmp_path / "pg-password"
    cred.write_text("s3cret pass\nignored\n")
    cred.chmod(0o600)
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert read_password("${CREDENTIALS_DIRECTORY}/pg-password", env) == "s3cret pass"
    cred.chmod(0o640)
    with pytest.raises(ConfigError) as e:
        read_password(str(cred), env)
    assert "0640" in e.value.message and "chmod 600" in e.value.hint
    with pytest.raises(ConfigError) as e:
        read_password("${CREDENTIALS_DIRECTORY}/pg-password", {})
    assert "CREDENTIALS_DIRECTORY" in e.value.message
    with pytest.raises(ConfigError):
        read_password(str(tmp_path / "missing"), env)


def test_systemd_notifier_protocol(tmp_path):
    """sd_notify datagrams: abstract and path sockets, watchdog interval only for this pid,
    nothing sent (and no error) without NOTIFY_SOCKET."""
    import socket

    from agent.ops import SystemdNotifier

    assert not SystemdNotifier({}).enabled and SystemdNotifier({}).ready() is False
    path = tmp_path / "n.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    n = SystemdNotifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval_s == 3.0
    assert n.ready("capturing\nat 48 kHz")
    assert s.recv(4096).decode() == "READY=1\nSTATUS=capturing at 48 kHz"
    assert n.watchdog() and s.recv(4096) == b"WATCHDOG=1"
    n.close()
    s.close()
    other = SystemdNotifier({"NOTIFY_SOCKET": "@abstract-test", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None  # the watchdog is someone else's
    assert other.notify(status="x") is False  # nobody listens: no exception


def test_host_probes_read_sysfs_and_report_absence(tmp_path):
    from agent.ops import PI_THROTTLED_PATH, cpu_temperature_c, throttle_flags, throttled_state

    assert cpu_temperature_c(str(tmp_path)) is None
    zone = tmp_path / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("61234\n")
    assert cpu_temperature_c(str(tmp_path)) == pytest.approx(61.234)
    fw = tmp_path / PI_THROTTLED_PATH
    fw.parent.mkdir(parents=True)
    fw.write_text("50005\n")
    assert throttled_state(str(tmp_path)) == 0x50005
    assert throttle_flags(0x50005) == ("under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred")
    assert throttle_flags(None) == () and throttle_flags(0) == ()


def test_textfile_is_readable_by_node_exporter_under_the_units_umask(tmp_path):
    """The unit sets UMask=0077; node-exporter runs as another user and must read the file."""
    from agent.ops import write_textfile

    path = tmp_path / "soundscape_agent.prom"
    old = os.umask(0o077)
    try:
        write_textfile(path, {"windows_total": 3, "clock_synchronised": True, "missing": None}, {"device": 'a"b'})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert path.read_text().splitlines() == [
        "# TYPE soundscape_agent_windows_total gauge", 'soundscape_agent_windows_total{device="a\\"b"} 3',
        "# TYPE soundscape_agent_clock_synchronised gauge", 'soundscape_agent_clock_synchronised{device="a\\"b"} 1',
    ]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("synced", [True, False])
def test_ntp_synchronised_says_what_the_kernel_says(synced):
    """clock_synchronised follows the kernel's NTP state (adjtimex), both ways."""
    from agent.ops import clock_state, ntp_synchronised
    from tests.kernelclock import kernel_synchronised

    with kernel_synchronised(synced):
        assert ntp_synchronised() is synced
        assert clock_state() == (synced, None)
