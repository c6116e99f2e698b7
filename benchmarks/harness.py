"""Measurement plumbing of the benchmark: the audio, a real-time ALSA source, measured processes.

- :func:`prepare_audio`: the bundled real recordings (``data/recordings``, scikit-maad's,
  BSD-3-Clause) resampled to 48 kHz (soxr HQ, as the agent's own tests do), concatenated and
  repeated to the benchmark's duration, written once as a 16-bit WAV: every variant hears
  exactly these samples.
- :class:`RealtimeAlsaFifo`: a live "microphone" for ``arecord``. An ALSA ``type file`` PCM
  whose ``infile`` is a FIFO that a thread fills in real time (48 kHz, 1024-frame units). The
  FIFO's buffer is shrunk to one page, and a unit that finds it full is dropped, as a
  microphone's samples are lost when no one is recording. So ``arecord -d 1`` takes 1 s of
  wall time, as on a real device, and whatever the prototype does not record is lost.
- :func:`run_measured`: start a command as a separate process, timestamp each stdout line,
  read its CPU time when chosen lines appear, and reap it with ``os.wait4`` for its exact
  CPU time (user + system, including its reaped children such as ``arecord``) and peak RSS
  (``ru_maxrss``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.analysis.hashing import sha256_file

REPO = Path(__file__).resolve().parent.parent
RECORDINGS = REPO / "data" / "recordings"
CLK_TCK = os.sysconf("SC_CLK_TCK")
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), not exported by every Python build


# ------------------------------------------------------------------------------------ audio


@dataclass(frozen=True)
class BenchAudio:
    """The benchmark's audio.

    Attributes:
        wav: 16-bit mono WAV at ``rate``, ``seconds`` long.
        samples: the same samples, int16.
        rate: Hz.
        seconds: duration, s.
        sources: the recordings it was made from, in order (repeated as needed).
        sha256: of the WAV file.
    """

    wav: Path
    samples: np.ndarray
    rate: int
    seconds: float
    sources: tuple[str, ...]
    sha256: str


def prepare_audio(out_dir: Path, seconds: float, rate: int = 48000) -> BenchAudio:
    """Build (or reuse) the benchmark WAV: the bundled recordings at ``rate``, repeated.

    Args:
        out_dir: where ``bench_<rate>_<seconds>s.wav`` is written.
        seconds: duration, s (the agent's windows are 10 s: use a multiple of 10).
        rate: sample rate, Hz (48000: the AudioMoth's default).

    Returns:
        :class:`BenchAudio`.
    """
    import soundfile as sf
    import soxr

    files = sorted(RECORDINGS.glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"no bundled recordings in {RECORDINGS}")
    n = int(round(seconds * rate))
    wav = out_dir / f"bench_{rate}_{seconds:g}s.wav"
    if wav.is_file() and sf.info(str(wav)).frames == n:
        samples = sf.read(str(wav), dtype="int16")[0]
    else:
        parts = []
        for f in files:
            x, sr = sf.read(str(f), dtype="float32", always_2d=True)
            parts.append(soxr.resample(x[:, 0], sr, rate, quality="HQ"))
        one = np.concatenate(parts)
        audio = np.tile(one, int(np.ceil(n / len(one))))[:n]
        samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
        out_dir.mkdir(parents=True, exist_ok=True)
        sf.write(str(wav), samples, rate, subtype="PCM_16")
    return BenchAudio(wav=wav, samples=samples, rate=rate, seconds=n / rate,
                      sources=tuple(f.name for f in files), sha256=sha256_file(wav))


# ------------------------------------------------------------------- real-time ALSA source


@dataclass
class FifoStats:
    """What the real-time writer did.

    Attributes:
        units_total: 1024-frame units the "microphone" produced.
        units_accepted: units that went into the FIFO (read by arecord, or at most a page
            of them waiting in the FIFO).
        units_dropped: units lost because no one was reading.
        t_start, t_end: monotonic times of the first unit and of the end of the stream.
    """

    units_total: int = 0
    units_accepted: int = 0
    units_dropped: int = 0
    t_start: float = 0.0
    t_end: float = 0.0


class RealtimeAlsaFifo:
    """An ALSA ``type file`` capture PCM fed in real time through a FIFO.

    ``arecord -D <pcm_name>`` reads the FIFO through the real ALSA library (``slave.pcm
    "null"`` supplies the timing-free device, the FIFO the samples and the real-time pace).
    A writer thread produces one 1024-frame unit (2048 bytes, less than ``PIPE_BUF`` so each
    write is atomic) every 1024/rate s on a wall-clock schedule; the FIFO holds at most 4096
    bytes (two units, 43 ms at 48 kHz), and a unit that does not fit is dropped and counted.

    Args:
        work_dir: where the FIFO and the ALSA config are created.
        samples: int16 mono samples to play, at ``rate``.
        rate: Hz.
        pcm_name: the PCM's name in the generated config.
    """

    UNIT_FRAMES = 1024

    def __init__(self, work_dir: Path, samples: np.ndarray, rate: int, pcm_name: str = "bench_live") -> None:
        self.work_dir = work_dir
        self.samples = np.ascontiguousarray(samples, dtype="<i2")
        self.rate = rate
        self.pcm_name = pcm_name
        self.fifo = work_dir / "live.fifo"
        self.conf = work_dir / "asound.conf"
        self.stats = FifoStats()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def setup(self) -> dict[str, str]:
        """Create the FIFO and the ALSA config; open the FIFO (read-write, non-blocking).

        Returns:
            the environment (``ALSA_CONFIG_PATH``) that makes ``pcm_name`` visible.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.fifo.exists():
            self.fifo.unlink()
        os.mkfifo(self.fifo)
        self.conf.write_text(
            f'pcm.{self.pcm_name} {{\n    type file\n    slave.pcm "null"\n    file "/dev/null"\n'
            f'    infile "{self.fifo}"\n    format "raw"\n}}\n'
        )
        # O_RDWR: the FIFO always has a reader (us), so writes never fail with EPIPE/ENXIO
        # between two arecord processes; they just find it full.
        self._fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)
        fcntl.fcntl(self._fd, F_SETPIPE_SZ, 4096)
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}"}

    def start(self) -> None:
        """Start the real-time writer thread (the stream's time 0 is now)."""
        self._thread = threading.Thread(target=self._write, name="realtime-fifo", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        assert self._fd is not None
        unit = self.UNIT_FRAMES
        n_units = len(self.samples) // unit
        data = self.samples[: n_units * unit].tobytes()
        size = unit * 2
        t0 = time.monotonic()
        self.stats.t_start = t0
        k = 0
        while k < n_units:
            due = min(n_units, int((time.monotonic() - t0) * self.rate) // unit)
            while k < due:
                try:
                    os.write(self._fd, data[k * size:(k + 1) * size])
                    self.stats.units_accepted += 1
                except BlockingIOError:
                    self.stats.units_dropped += 1
                k += 1
            self.stats.units_total = k
            time.sleep(0.004)
        # the stream lasts until the last unit's end
        end = t0 + n_units * unit / self.rate
        time.sleep(max(0.0, end - time.monotonic()))
        self.stats.t_end = time.monotonic()
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end of the stream; True when it ended."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """Close our end of the FIFO: an arecord still reading gets end-of-file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------- measured processes


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds of a live process so far: utime + stime + cutime + cstime (``/proc/PID/stat``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def system_cpu_s() -> float:
    """CPU seconds all processes of this machine have used since boot (``/proc/stat``, all
    states except idle and iowait)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in parts]
    busy = sum(values[:8]) - values[3] - values[4]  # minus idle, iowait (guest is in user)
    return busy / CLK_TCK


@dataclass
class Line:
    """One stdout line of a measured process.

    Attributes:
        t: monotonic time it was read.
        text: the line, without its newline.
        cpu_s: the process's CPU seconds then (only for lines ``mark`` selected).
    """

    t: float
    text: str
    cpu_s: float | None = None


@dataclass
class RunResult:
    """A measured process run.

    Attributes:
        cmd: the command.
        returncode: exit status (negative: killed by that signal).
        t_start, t_end: monotonic times of the spawn and of the reaping.
        cpu_user_s, cpu_sys_s: from ``wait4``: the process and its reaped children.
        max_rss_mb: ``ru_maxrss`` from ``wait4``, MiB (largest of the process and its reaped
            children; kilobytes on Linux).
        lines: stdout, timestamped.
        other_cpu_s: CPU seconds the rest of the machine used while it ran (other processes;
            a busy machine makes wall-clock numbers noisy).
        stderr_path: where its stderr went.
    """

    cmd: list[str]
    returncode: int
    t_start: float
    t_end: float
    cpu_user_s: float
    cpu_sys_s: float
    max_rss_mb: float
    lines: list[Line] = field(default_factory=list)
    other_cpu_s: float = 0.0
    stderr_path: Path | None = None

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds."""
        return self.cpu_user_s + self.cpu_sys_s

    @property
    def wall_s(self) -> float:
        """Spawn to reaping, s."""
        return self.t_end - self.t_start

    def first(self, pattern: str) -> Line | None:
        """The first stdout line matching the regular expression ``pattern``."""
        rx = re.compile(pattern)
        return next((ln for ln in self.lines if rx.search(ln.text)), None)

    def all(self, pattern: str) -> list[Line]:
        """Every stdout line matching ``pattern``."""
        rx = re.compile(pattern)
        return [ln for ln in self.lines if rx.search(ln.text)]


def run_measured(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 stderr_path: Path, mark: str | None = None,
                 on_line: Callable[[Line, subprocess.Popen], None] | None = None,
                 timeout_s: float = 1800.0) -> RunResult:
    """Run ``cmd`` as a separate process and measure it.

    Args:
        cmd: the command.
        env: extra environment variables (added to this process's).
        cwd: working directory.
        stderr_path: file that receives the process's stderr.
        mark: regular expression; for stdout lines matching it the process's CPU time so far
            is read from ``/proc`` at once (e.g. the "model loaded" line).
        on_line: called in the reader thread with each line (e.g. to start the audio stream).
        timeout_s: the process is killed after this long.

    Returns:
        :class:`RunResult`.

    Raises:
        TimeoutError: the process did not end in time (it is killed first).
    """
    full_env = {**os.environ, **(env or {})}
    mark_rx = re.compile(mark) if mark else None
    lines: list[Line] = []
    sys_cpu0 = system_cpu_s()
    with open(stderr_path, "wb") as err:
        t_start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=full_env, cwd=cwd, bufsize=1, text=True)

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = Line(time.monotonic(), raw.rstrip("\n"))
                if mark_rx is not None and mark_rx.search(line.text):
                    line.cpu_s = proc_cpu_s(proc.pid)
                lines.append(line)
                if on_line is not None:
                    on_line(line, proc)

        thread = threading.Thread(target=reader, name="stdout-reader", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: never signal it again
                break
            if time.monotonic() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise TimeoutError(f"{cmd[0]} did not finish within {timeout_s:g} s")
            time.sleep(0.02)
        t_end = time.monotonic()
        thread.join(5.0)
    other = system_cpu_s() - sys_cpu0 - (usage.ru_utime + usage.ru_stime)
    return RunResult(cmd=cmd, returncode=proc.returncode, t_start=t_start, t_end=t_end,
                     cpu_user_s=usage.ru_utime, cpu_sys_s=usage.ru_stime,
                     max_rss_mb=usage.ru_maxrss / 1024.0, lines=lines,
                     other_cpu_s=max(0.0, other), stderr_path=stderr_path)


def terminate(proc: subprocess.Popen) -> None:
    """Send SIGTERM to a process :func:`run_measured` started (by its pid), unless reaped.

    Never calls ``proc.poll()``: that could reap the process before ``os.wait4`` does and
    lose its resource usage.
    """
    if proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except OSError as e:  # pragma: no cover - it just ended
            if e.errno != errno.ESRCH:
                raise


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop the given files' clean pages from the page cache (``posix_fadvise DONTNEED``), so
    the next load reads them from disk. Affects only these files; needs no privileges."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
