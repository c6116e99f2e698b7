"""Operating-system plumbing of the long-running service (no audio).

- :func:`pin_malloc_thresholds`: keep glibc from holding on to freed memory, so the agent's
  resident set stays near what it uses (issue 3's ≤ 400 MB target on a Raspberry Pi 4).
- :class:`SystemdNotifier`: the ``sd_notify`` protocol (readiness, watchdog, status).
- host probes for heartbeats and ``diagnose``: :func:`cpu_temperature_c`,
  :func:`throttled_state` / :func:`throttle_flags` (Raspberry Pi), :func:`disk_free_bytes`,
  :func:`rss_bytes`; each returns ``None`` where the host has no such information.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    import socket

    from agent.records import Heartbeat

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc ``malloc/malloc.h``): M_TRIM_THRESHOLD -1,
#: M_MMAP_THRESHOLD -3.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's static default of both thresholds, bytes (``mallopt(3)``: 128 * 1024).
GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def pin_malloc_thresholds(threshold: int = GLIBC_DEFAULT_THRESHOLD) -> dict[str, int]:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes, turning off their dynamic
    adjustment.

    Without this, glibc raises its mmap threshold each time a large block is freed (up to
    32 MiB on 64-bit, ``mallopt(3)``, "M_MMAP_THRESHOLD"), so later large buffers (numpy
    windows, features, scores) come from the heap, where fragmentation keeps them resident
    after they are freed (the peak RSS it saves: docs/performance.md#glibcs-malloc-thresholds-pinned).
    Call it early, before the model is loaded and threads start.

    A parameter whose environment variable (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``) or ``GLIBC_TUNABLES`` entry is set is left to it: an operator's
    explicit choice wins. On a C library other than glibc (no ``mallopt``) nothing happens.

    Args:
        threshold: bytes, > 0.

    Returns:
        The parameters set, ``{"M_MMAP_THRESHOLD": bytes, "M_TRIM_THRESHOLD": bytes}``; empty
        when nothing was set.

    Raises:
        ValueError: ``threshold`` ≤ 0.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 bytes, not {threshold}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    done: dict[str, int] = {}
    for name, param, env, tunable in (
        ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
        ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    ):
        if env in os.environ or tunable in tunables:
            continue
        if mallopt(ctypes.c_int(param), ctypes.c_int(threshold)) == 1:
            done[name] = threshold
    log.debug("malloc thresholds pinned: %s", done)
    return done





# --------------------------------------------------------------------------------------------
# systemd notification protocol (sd_notify(3)): readiness, watchdog, status


class SystemdNotifier:
    """Sends ``sd_notify(3)`` datagrams to the socket systemd names in ``$NOTIFY_SOCKET``.

    A small standard-library implementation of the protocol (``man sd_notify``: one
    ``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=VALUE`` assignments; a path
    starting with ``@`` is in the abstract namespace). Without ``$NOTIFY_SOCKET`` (not started
    by systemd with ``Type=notify``) every method does nothing. Sending never raises: a lost
    notification must not stop the agent (it is logged at debug level).

    The watchdog interval comes from ``$WATCHDOG_USEC`` (µs), honoured only when
    ``$WATCHDOG_PID`` is unset or this process's pid (``sd_watchdog_enabled(3)``).

    Thread-safety: the methods may be called from any thread (one ``sendto`` each).

    Args:
        environ: the environment to read (default ``os.environ``).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_usec: int | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog timeout, s (``WatchdogSec=``), or ``None`` when not enabled."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 1e6

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=value`` lines, keys upper-cased (``ready=1`` → ``READY=1``).

        Returns:
            True when sent; False when disabled or the send failed.
        """
        if self._address is None or not fields:
            return False
        import socket

        text = "\n".join(f"{k.upper()}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), self._address)
        except OSError as e:
            log.debug("sd_notify %r failed: %s", text, e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): start-up finished, capture delivers audio."""
        return self.notify(ready=1, **({"status": status} if status else {}))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the pipeline made progress since the last ping."""
        return self.notify(watchdog=1)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the one-line summary ``systemctl status`` shows."""
        return self.notify(status=text)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify(stopping=1)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None



# --------------------------------------------------------------------------------------------
# host probes: temperature, throttling, disk, memory (heartbeats and diagnose)

#: Raspberry Pi firmware ``get_throttled`` bits (Raspberry Pi documentation, "vcgencmd",
#: ``get_throttled``): bit -> name. Bits 0-3 are "now", 16-19 "since boot".
THROTTLE_BITS: dict[int, str] = {
    0: "under_voltage", 1: "freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
#: Where the Raspberry Pi kernel's firmware driver exposes ``get_throttled`` (hex).
PI_THROTTLED_PATH = "devices/platform/soc/soc:firmware/get_throttled"


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (>= 1): exponential
    backoff with jitter, uniform between ``initial_s`` and ``min(max_s, initial_s *
    2**(failures - 1))`` (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015: the
    jitter keeps a fleet that lost its server at once from retrying in lockstep). Serves the
    sync's retries and the capture's reconnection attempts.
    """
    lo = min(initial_s, max_s)
    hi = min(max_s, initial_s * 2.0 ** min(max(failures, 1) - 1, 60))
    return random.uniform(lo, max(lo, hi))


def cpu_temperature_c(sys_root: str = "/sys") -> float | None:
    """CPU (SoC) temperature, °C, from the kernel's first thermal zone
    (``/sys/class/thermal/thermal_zone0/temp``, millidegrees Celsius); ``None`` when absent
    (no thermal zone, e.g. a VM)."""
    try:
        return int(Path(sys_root, "class/thermal/thermal_zone0/temp").read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def throttled_state(sys_root: str = "/sys") -> int | None:
    """The Raspberry Pi firmware's throttling/under-voltage bit field, or ``None`` off a Pi.

    Read from the firmware driver's sysfs attribute (``soc:firmware/get_throttled``, hex), else
    from ``vcgencmd get_throttled`` (``throttled=0x50005``) when that tool is installed. Decode
    with :func:`throttle_flags`.
    """
    try:
        return int(Path(sys_root, PI_THROTTLED_PATH).read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    import shutil
    import subprocess

    tool = shutil.which("vcgencmd")
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "get_throttled"], capture_output=True, text=True, timeout=5, check=True).stdout
        return int(out.strip().partition("=")[2], 16)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def throttle_flags(state: int | None) -> tuple[str, ...]:
    """Names of the bits set in a ``get_throttled`` value (:data:`THROTTLE_BITS`); () for None/0."""
    if not state:
        return ()
    return tuple(name for bit, name in THROTTLE_BITS.items() if state & (1 << bit))


def disk_free_bytes(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(free bytes available to an unprivileged user, total bytes) of the filesystem holding
    ``path`` (or its nearest existing parent); ``None`` when it cannot be read."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return int(usage.free), int(usage.total)


def rss_bytes(proc_status: str = "/proc/self/status") -> tuple[int, int] | None:
    """(resident set ``VmRSS``, peak ``VmHWM``) of this process, bytes; ``None`` off Linux."""
    try:
        text = Path(proc_status).read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return (values["VmRSS"], values["VmHWM"]) if len(values) == 2 else None


class HostSnapshot(TypedDict):
    """:func:`host_snapshot`'s result: the :class:`~agent.records.Heartbeat` fields of the same names."""

    cpu_temp_c: float | None
    throttled: int | None
    throttle_flags: tuple[str, ...]
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    rss_bytes: int | None
    peak_rss_bytes: int | None
    clock_synchronised: bool


def host_snapshot(state_path: str | os.PathLike[str], sys_root: str = "/sys") -> HostSnapshot:
    """The host's state for a heartbeat: temperature, throttling, disk, memory, clock.

    Args:
        state_path: a path on the queue's filesystem (the outbox file or its directory).
        sys_root: sysfs mount point (tests point it elsewhere).

    Returns:
        ``cpu_temp_c`` (°C or None), ``throttled`` (int or None), ``throttle_flags`` (tuple),
        ``disk_free_bytes``/``disk_total_bytes`` (or None), ``rss_bytes``/``peak_rss_bytes``
        (or None), ``clock_synchronised`` (bool, :func:`ntp_synchronised`).
    """
    throttled = throttled_state(sys_root)
    disk = disk_free_bytes(state_path)
    rss = rss_bytes()
    return {
        "cpu_temp_c": cpu_temperature_c(sys_root), "throttled": throttled, "throttle_flags": throttle_flags(throttled),
        "disk_free_bytes": disk[0] if disk else None, "disk_total_bytes": disk[1] if disk else None,
        "rss_bytes": rss[0] if rss else None, "peak_rss_bytes": rss[1] if rss else None,
        "clock_synchronised": ntp_synchronised(),
    }


def write_textfile(
    path: str | os.PathLike[str], metrics: dict[str, float | int | bool | None], labels: dict[str, str]
) -> None:
    """Write node-exporter textfile-collector metrics atomically (temp file + rename).

    Each metric becomes ``soundscape_agent_<name>{labels} value`` (Prometheus text exposition
    format 0.0.4); ``None`` values are left out, booleans are 0/1. The file's mode is 0644
    whatever the process umask, so that node-exporter (another user) can read it.

    Raises:
        OSError: the directory is not writable.
    """
    esc = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in labels.items()}
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(esc.items()))
    lines = []
    for name, value in metrics.items():
        if value is None:
            continue
        lines.append(f"# TYPE soundscape_agent_{name} gauge")
        lines.append(f"soundscape_agent_{name}{{{label_text}}} {float(value):g}")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # readable by node-exporter (another user) whatever the umask (the unit sets UMask=0077)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)



#: ``adjtimex(2)`` return value meaning the clock is not synchronised (linux/timex.h).
TIME_ERROR = 5


def clock_state() -> tuple[bool, str | None]:
    """Ask the kernel whether the system clock is NTP-synchronised (as ``timedatectl`` reports).

    Calls ``adjtimex(2)`` read-only (``modes = 0``; glibc issues the ``clock_adjtime`` system
    call); the return value ``TIME_ERROR`` (5) means unsynchronised (``STA_UNSYNC`` set or
    maximum error exceeded), see ``man adjtimex``.

    Returns:
        ``(synchronised, error)``: ``error`` is ``None`` when the kernel answered, else why it
        could not (e.g. ``"adjtimex: Operation not permitted"`` under a seccomp filter that
        denies ``@clock``); ``synchronised`` is then False.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # >= sizeof(struct timex); modes = 0 (read only)
        state = libc.adjtimex(buf)
    except (OSError, AttributeError) as err:
        return False, f"adjtimex unavailable: {err}"
    if state < 0:
        errno = ctypes.get_errno()
        return False, f"adjtimex: {os.strerror(errno)}"
    return state < TIME_ERROR, None


_clock_error_logged = False


def ntp_synchronised() -> bool:
    """Whether the kernel considers the system clock synchronised (:func:`clock_state`).

    Returns:
        False too when the kernel cannot be asked; that is logged once as a warning naming the
        cause (a systemd unit must allow ``adjtimex``/``clock_adjtime`` and not set
        ``ProtectClock=yes``, which denies them).
    """
    global _clock_error_logged
    synced, error = clock_state()
    if error is not None and not _clock_error_logged:
        _clock_error_logged = True
        log.warning("cannot read the clock's synchronisation state (%s): every window is stored with "
                    "clock_synchronised = false; under systemd allow adjtimex and clock_adjtime "
                    "(SystemCallFilter=) and do not set ProtectClock=yes", error)
    return synced

#: node-exporter metric (``soundscape_agent_<name>``) <- :class:`~agent.records.Heartbeat` field:
#: the one place the textfile's names are spelled (Prometheus conventions: ``_total`` for
#: counters, base units in the suffix).
TEXTFILE_METRICS: tuple[tuple[str, str], ...] = (
    ("uptime_seconds", "uptime_s"), ("windows_total", "windows"), ("skipped_total", "skipped"),
    ("failed_total", "failed"), ("xruns_total", "xruns"), ("queue_depth", "queue_depth"),
    ("last_sync_timestamp_seconds", "last_sync_at"), ("cpu_temperature_celsius", "cpu_temp_c"),
    ("throttled", "throttled"), ("disk_free_bytes", "disk_free_bytes"),
    ("clock_synchronised", "clock_synchronised"), ("resident_memory_bytes", "rss_bytes"),
    ("set_aside", "set_aside"),
)


def heartbeat_metrics(beat: Heartbeat) -> dict[str, float | int | bool | None]:
    """The textfile metrics of a :class:`~agent.records.Heartbeat` (:data:`TEXTFILE_METRICS`);
    datetimes become Unix time, s."""
    out: dict[str, float | int | bool | None] = {}
    for metric, field_name in TEXTFILE_METRICS:
        value = getattr(beat, field_name)
        out[metric] = value.timestamp() if hasattr(value, "timestamp") else value
    return out


__all__ = [
    "GLIBC_DEFAULT_THRESHOLD", "TEXTFILE_METRICS", "TIME_ERROR", "clock_state", "ntp_synchronised",
    "heartbeat_metrics", "host_snapshot", "write_textfile", "PI_THROTTLED_PATH", "SystemdNotifier", "THROTTLE_BITS",
    "cpu_temperature_c",
    "disk_free_bytes", "pin_malloc_thresholds", "rss_bytes", "throttle_flags", "throttled_state",
]
