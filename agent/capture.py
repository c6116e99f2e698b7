"""Capture: one continuous, gap-free stream of audio chunks.

Three sources, chosen by the ``type`` key of the ``[capture]`` section through the explicit
registry :data:`SOURCES`:

- ``alsa``: pyalsaaudio reads one ALSA period at a time in a dedicated thread;
- ``arecord``: ONE long-lived ``arecord`` process streams raw S16_LE to a pipe that a thread
  reads (never one process per window, never a temporary file);
- ``file``: WAV/FLAC files replayed through the same pipeline, optionally paced in real time.

All three share :class:`ThreadedSource`: a reader thread does the blocking I/O and hands
:class:`~agent.records.Chunk` objects to the event loop through a bounded
``asyncio.Queue``. When the queue is full the reader blocks (back-pressure): a file replay
then simply waits, and a live device's own ring buffer overruns, which ALSA reports as an
xrun that is counted, logged, stored with the window and recovered from. Nothing else in the
agent (analysis, storage, sync) runs on the reader thread, so none of it can interrupt capture.

An xrun starts a new *segment*: the samples lost cannot be counted, so the next chunk is
re-anchored to the wall clock (see :mod:`agent.windows`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.config import AlsaCaptureConfig, ArecordCaptureConfig, CaptureConfig, FileCaptureConfig
from agent.errors import DeviceError, InputError
from agent.records import Chunk

log = logging.getLogger("agent.capture")

#: Bytes per frame of the capture format: mono S16_LE (the AudioMoth's native format).
FRAME_BYTES = 2
#: Scale from S16_LE integers to float full scale ±1.0.
S16_SCALE = 1.0 / 32768.0


class AudioSource(Protocol):
    """A continuous audio stream.

    Lifecycle: :meth:`open` (blocking, raises early for a bad device or file), then iterate
    :meth:`chunks` in the event loop, and :meth:`stop` from any thread or task to end it.
    Thread-safety: :meth:`stop` and :attr:`stats` may be used from any thread; :meth:`chunks`
    must be iterated by one task only.
    """

    def open(self) -> None:
        """Open the device or file; raises DeviceError/InputError with a hint."""

    def chunks(self) -> AsyncIterator[Chunk]:
        """Yield consecutive chunks until the source ends or :meth:`stop` is called."""

    def stop(self) -> None:
        """Ask the source to stop after the current read; idempotent, thread-safe."""

    @property
    def stats(self) -> "CaptureStats":
        """Counters since :meth:`open`."""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Capture counters.

    Attributes:
        frames: samples delivered since open (mono: frames = samples).
        xruns: capture overruns detected (samples lost by the device or driver).
    """

    frames: int
    xruns: int


_END = object()


class ThreadedSource:
    """Base of every source: blocking reads in a dedicated thread, chunks to the event loop.

    Subclasses implement :meth:`_open` (runs in :meth:`open`, so a bad device or file is
    reported before anything slow such as loading the model), and :meth:`_start`,
    :meth:`_read` and :meth:`_close`, which run on the reader thread once iteration begins.

    Args:
        queue_chunks: capacity of the hand-over queue, in chunks (bounded buffer).
    """

    #: True for a live device: if analysis falls behind, classification is skipped rather than
    #: capture stalled. A non-real-time file replay is not live: it waits for analysis instead.
    live: bool = True

    def __init__(self, queue_chunks: int) -> None:
        self._queue_chunks = max(2, queue_chunks)
        self._stopping = threading.Event()
        self._frames = 0
        self._xruns = 0
        self._thread: threading.Thread | None = None

    # -- subclass hooks -------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _start(self) -> None:
        """Start the stream (reader thread, before the first read); default: nothing to do."""

    def _read(self) -> Chunk | None:
        """One blocking read. Returns None at the end of the stream."""
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- public ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the source (see subclasses for the errors raised).

        May be called again after :meth:`chunks` ended with a :class:`DeviceError` (the
        microphone was lost): the source then starts a new stream, whose first chunk starts a
        new segment.
        """
        self._stopping.clear()
        self._frames = 0
        self._open()

    def stop(self) -> None:
        """Ask the reader thread to stop after its current read. Thread-safe, idempotent."""
        self._stopping.set()

    @property
    def stats(self) -> CaptureStats:
        """Frames delivered and xruns counted since :meth:`open`."""
        return CaptureStats(self._frames, self._xruns)

    def _count_xrun(self, what: str) -> None:
        self._xruns += 1
        log.warning("capture overrun (xrun #%d): %s; samples were lost, re-anchoring the clock", self._xruns, what)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Yield chunks as the reader thread delivers them; ends at end of stream or stop.

        Raises:
            DeviceError, InputError: the reader failed (device vanished, file corrupt).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue(self._queue_chunks)

        def hand_over(item: object) -> bool:
            # Blocks the reader while the queue is full (back-pressure), waking every 0.5 s
            # to notice a stop request. ONE put per item, awaited until it completes: a put
            # cancelled from this thread may already have completed in the loop (the
            # cancellation reaches the loop later), so submitting it again could deliver the
            # chunk twice: 0.1 s of audio repeated, every later window of the file shifted.
            try:
                fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            except RuntimeError:  # loop closed
                return False
            while True:
                try:
                    fut.result(timeout=0.5)
                    return True
                except TimeoutError:
                    if loop.is_closed() or (self._stopping.is_set() and item is not _END):
                        fut.cancel()
                        return False
                except (concurrent.futures.CancelledError, RuntimeError):
                    return False

        def reader() -> None:
            try:
                self._start()
                while not self._stopping.is_set():
                    chunk = self._read()
                    if chunk is None:
                        break
                    self._frames += len(chunk.samples)
                    if not hand_over(chunk):
                        break
                hand_over(_END)
            except BaseException as exc:  # handed to the consumer, re-raised there
                hand_over(exc)
            finally:
                try:
                    self._close()
                except Exception:  # pragma: no cover - best effort
                    log.exception("closing the capture source failed")

        self._thread = threading.Thread(target=reader, name="capture", daemon=True)
        self._thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            self.stop()
            # Unblock a reader waiting for queue space, then let it finish.
            while not queue.empty():
                queue.get_nowait()
            await asyncio.to_thread(self._thread.join, 5.0)


# ---------------------------------------------------------------------------------------
# Device discovery, shared by the alsa and arecord sources
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaptureDevice:
    """A capture device as ``arecord -l`` lists it.

    Attributes:
        card: card number; card_id: short id (``AudioMoth``); card_name: long name;
        device: device number on the card; device_name: the device's name.
    """

    card: int
    card_id: str
    card_name: str
    device: int
    device_name: str

    @property
    def pcm(self) -> str:
        """The ALSA PCM name for this device through the ``plughw`` plugin (format/rate conversion)."""
        return f"plughw:CARD={self.card_id},DEV={self.device}"

    def __str__(self) -> str:
        return f"card {self.card}: {self.card_id} [{self.card_name}], device {self.device}: {self.device_name}"


_ARECORD_L = re.compile(r"^card (\d+): (\S+) \[(.*?)\], device (\d+): (.*?)(?: \[.*\])?$")


def parse_arecord_list(text: str) -> list[CaptureDevice]:
    """Parse the output of ``arecord -l``.

    Args:
        text: stdout of ``arecord -l``, e.g.
            ``card 1: AudioMoth [AudioMoth], device 0: USB Audio [USB Audio]``.

    Returns:
        One :class:`CaptureDevice` per ``card … device …`` line (subdevice lines ignored).
    """
    out = []
    for line in text.splitlines():
        m = _ARECORD_L.match(line.strip())
        if m:
            out.append(CaptureDevice(int(m[1]), m[2], m[3], int(m[4]), m[5]))
    return out


def list_capture_devices() -> list[CaptureDevice]:
    """List the capture devices as ``arecord -l`` does.

    Raises:
        DeviceError: ``arecord`` (package alsa-utils) is not installed.
    """
    exe = shutil.which("arecord")
    if exe is None:
        raise DeviceError("arecord is not installed, so capture devices cannot be listed",
                          "install the alsa-utils package (apt-get install alsa-utils)")
    proc = subprocess.run([exe, "-l"], capture_output=True, text=True, timeout=10)
    return parse_arecord_list(proc.stdout)


def resolve_pcm(cfg: AlsaCaptureConfig | ArecordCaptureConfig) -> str:
    """The ALSA PCM name to open for a live source.

    ``cfg.pcm`` is used as given; otherwise the one device whose ``arecord -l`` line contains
    ``cfg.device`` (case-insensitive) is chosen.

    Raises:
        DeviceError: no device or several devices match; the message lists the devices found.
    """
    if cfg.pcm:
        return cfg.pcm
    devices = list_capture_devices()
    needle = cfg.device.lower()
    matches = [d for d in devices if needle in f"{d.card_id} {d.card_name} {d.device_name}".lower()]
    if len(matches) == 1:
        return matches[0].pcm
    found = "\n".join(f"    {d}" for d in devices) or "    (none: arecord -l lists no capture devices)"
    if not matches:
        raise DeviceError(
            f"no capture device matches capture.device = {cfg.device!r}; capture devices found:\n{found}",
            "plug the microphone in, or set capture.device to part of a name above "
            "(or capture.pcm to an explicit ALSA PCM name)",
        )
    raise DeviceError(
        f"{len(matches)} capture devices match capture.device = {cfg.device!r}:\n"
        + "\n".join(f"    {d}" for d in matches),
        "make capture.device specific enough to match one, or set capture.pcm",
    )


def _s16_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) * np.float32(S16_SCALE)


def _now_minus(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _queue_chunks(cfg: AlsaCaptureConfig | ArecordCaptureConfig) -> int:
    return int(cfg.buffer_s * cfg.sample_rate / cfg.period_frames) + 1


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------


class AlsaSource(ThreadedSource):
    """``type = "alsa"``: pyalsaaudio, one period per read, mono S16_LE.

    Args:
        cfg: the ``[capture]`` section.

    Raises (from :meth:`open`):
        DeviceError: no matching device, or ALSA refuses to open it or its rate.
    """

    def __init__(self, cfg: AlsaCaptureConfig) -> None:
        super().__init__(_queue_chunks(cfg))
        self.cfg = cfg
        self.pcm_name = ""
        self._pcm = None
        self._pending_xruns = 0

    def _open(self) -> None:
        import alsaaudio  # pyalsaaudio; imported here so the file source works without ALSA

        self.pcm_name = resolve_pcm(self.cfg)
        try:
            self._pcm = alsaaudio.PCM(
                alsaaudio.PCM_CAPTURE, alsaaudio.PCM_NORMAL, device=self.pcm_name,
                rate=self.cfg.sample_rate, channels=1, format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self.cfg.period_frames, periods=self.cfg.periods,
            )
        except alsaaudio.ALSAAudioError as e:
            raise DeviceError(f"cannot open ALSA capture PCM {self.pcm_name!r}: {e}",
                              "check `arecord -l`, that no other program holds the device, "
                              "and that this user is in the audio group") from None
        info = self._pcm.info()
        if info.get("rate") != self.cfg.sample_rate:
            rate = info.get("rate")
            self._pcm.close()
            raise DeviceError(f"ALSA PCM {self.pcm_name!r} runs at {rate} Hz, not capture.sample_rate = "
                              f"{self.cfg.sample_rate}", f"set capture.sample_rate = {rate} or use a plughw: PCM")
        log.info("capturing from ALSA PCM %s at %d Hz, period %d frames x %d",
                 self.pcm_name, self.cfg.sample_rate, self.cfg.period_frames, self.cfg.periods)

    def _read(self) -> Chunk | None:
        import alsaaudio

        while True:
            try:
                n, data = self._pcm.read()
            except alsaaudio.ALSAAudioError as e:
                raise DeviceError(f"ALSA capture from {self.pcm_name!r} failed: {e}",
                                  "check the microphone's USB connection") from None
            if n < 0:  # -EPIPE: overrun; pyalsaaudio has already re-prepared the stream
                self._count_xrun(f"ALSA read returned {n}")
                self._pending_xruns += 1
                continue
            if n == 0:
                if self._stopping.is_set():
                    return None
                continue
            first = self._frames == 0 or self._pending_xruns > 0
            chunk = Chunk(
                _s16_to_float(data), self.cfg.sample_rate,
                segment_start=_now_minus(n / self.cfg.sample_rate) if first else None,
                xruns=self._pending_xruns,
            )
            self._pending_xruns = 0
            return chunk

    def _close(self) -> None:
        if self._pcm is not None:
            self._pcm.close()
            self._pcm = None


_OVERRUN = re.compile(r"overrun", re.IGNORECASE)


def _signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 40`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class ArecordSource(ThreadedSource):
    """``type = "arecord"``: one long-lived ``arecord`` process streaming raw S16_LE to a pipe.

    The process records until stopped (no ``-d``); a second thread reads its stderr, where
    ``arecord`` reports overruns (``overrun!!! (at least N ms long)``) after recovering.

    Args:
        cfg: the ``[capture]`` section.

    Raises (from :meth:`open`):
        DeviceError: arecord missing, no matching device, or arecord exits at start.
    """

    def __init__(self, cfg: ArecordCaptureConfig) -> None:
        super().__init__(_queue_chunks(cfg))
        self.cfg = cfg
        self.pcm_name = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_lines: list[str] = []
        self._head = b""  # the first bytes read by _start, delivered first
        self._pending_xruns = 0
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        """The arecord command line, a list of str."""
        return [
            shutil.which("arecord") or "arecord", "-D", self.pcm_name, "-t", "raw", "-f", "S16_LE",
            "-c", "1", "-r", str(self.cfg.sample_rate), f"--period-size={self.cfg.period_frames}",
            f"--buffer-size={self.cfg.period_frames * self.cfg.periods}",
        ]

    def _open(self) -> None:
        self.pcm_name = resolve_pcm(self.cfg)
        if shutil.which("arecord") is None:
            raise DeviceError("arecord is not installed", "install alsa-utils or use capture.type = \"alsa\"")

    def _start(self) -> None:
        # Spawned only when reading begins: started earlier, its pipe would fill while the
        # model loads and arecord would overrun.
        cmd = self.command()
        self._stderr_lines = []  # this process's own words only (not a previous arecord's)
        self._head = b""
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, bufsize=0)
        threading.Thread(target=self._watch_stderr, args=(self._proc, self._stderr_lines), name="arecord-stderr",
                         daemon=True).start()
        # Wait until audio flows or arecord dies, so a bad device fails at once. Readable may
        # also mean end of file (arecord exiting): only bytes read prove that audio flows.
        ready, _, _ = select.select([self._proc.stdout], [], [], 5.0)
        if ready:
            self._head = os.read(self._proc.stdout.fileno(), self.cfg.period_frames * FRAME_BYTES)
        if not self._head:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=5)
            time.sleep(0.1)  # let the stderr thread collect arecord's last words
            err = " ".join(self._stderr_lines[-3:]) or "no output"
            raise DeviceError(f"arecord could not capture from {self.pcm_name!r}: {err}",
                              "check `arecord -l` and that no other program holds the device")
        log.info("capturing through one arecord process (pid %d) from %s at %d Hz",
                 self._proc.pid, self.pcm_name, self.cfg.sample_rate)

    def _watch_stderr(self, proc: subprocess.Popen[bytes], lines: list[str]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if not line or line.startswith("Recording"):  # the banner, not an error
                continue
            lines.append(line)
            del lines[:-20]
            if _OVERRUN.search(line):
                with self._lock:
                    self._pending_xruns += 1
                self._count_xrun(f"arecord: {line}")
            else:
                log.info("arecord: %s", line)

    def _read(self) -> Chunk | None:
        assert self._proc is not None and self._proc.stdout is not None
        want = self.cfg.period_frames * FRAME_BYTES
        buf = bytearray(self._head)
        self._head = b""
        while len(buf) < want:
            part = self._proc.stdout.read(want - len(buf))
            if not part:
                if self._stopping.is_set():
                    return None
                rc = self._proc.wait(timeout=5)
                time.sleep(0.1)  # let the stderr thread collect arecord's last words
                how = f"exit {rc}" if rc >= 0 else f"killed by {_signal_name(-rc)}"
                err = " ".join(self._stderr_lines[-3:]) or "no error message"
                raise DeviceError(f"arecord stopped unexpectedly ({how}): {err}",
                                  "check the microphone's USB connection")
            buf += part
        with self._lock:
            xruns, self._pending_xruns = self._pending_xruns, 0
        first = self._frames == 0 or xruns > 0
        n = len(buf) // FRAME_BYTES
        return Chunk(_s16_to_float(bytes(buf)), self.cfg.sample_rate,
                     segment_start=_now_minus(n / self.cfg.sample_rate) if first else None, xruns=xruns)

    def stop(self) -> None:
        """Stop reading and terminate the arecord process. Thread-safe, idempotent."""
        super().stop()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def _close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()


_NAME_TIME = re.compile(r"(\d{8})_(\d{6})")
_AUDIO_SUFFIXES = {".wav", ".flac"}


def recording_start(path: Path) -> datetime:
    """Start time of a recording file, UTC (a timezone-aware ``datetime``).

    Read from a ``YYYYMMDD_HHMMSS`` stamp in the file name (AudioMoth and Song Meter
    recorders name files this way, in UTC by default); otherwise (no stamp, or a stamp that is
    no valid date) the file's modification time: the recorders' files carry no other clock.

    Raises:
        OSError: the name has no valid stamp and the file cannot be ``stat``-ed (gone).
    """
    m = _NAME_TIME.search(path.name)
    if m:
        try:
            return datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def expand_paths(pattern: str) -> list[Path]:
    """The recordings named by ``capture.path``: a file, a directory, or a glob pattern.

    A directory contributes its ``*.wav`` / ``*.flac`` files (any case) except hidden ones
    (a name starting with ``.``, such as the ``._*.wav`` metadata files macOS leaves on SD
    cards), a glob pattern the regular files it matches, both sorted by path; a file is taken
    whatever its name (its content is checked when :class:`FileSource` opens).

    Args:
        pattern: the ``capture.path`` setting (``~`` is expanded).

    Returns:
        The files, a non-empty list of paths.

    Raises:
        InputError: nothing matches; the message says whether the path is an empty
            directory or matches nothing at all.
    """
    p = Path(pattern).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir()
                       if f.suffix.lower() in _AUDIO_SUFFIXES and not f.name.startswith(".") and f.is_file())
        if not files:
            raise InputError(f"capture.path = {pattern!r} names no WAV or FLAC file: the directory holds no "
                             ".wav or .flac file", "copy the recordings there, or point capture.path at them")
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(str(p)) if Path(f).is_file())
    if not files:
        raise InputError(f"capture.path = {pattern!r} names no WAV or FLAC file",
                         "give a file, a directory of .wav/.flac files, or a glob pattern")
    return files


class FileSource(ThreadedSource):
    """``type = "file"``: replay WAV/FLAC recordings through the same pipeline.

    Each file is one segment at its own sample rate, anchored at :func:`recording_start`.

    What is replayed (tests/test_faults_input.py checks each point):

    * containers: WAV (``RIFF``/``RIFX``/``RF64``/``BW64`` ``WAVE``, Sony Wave64) and FLAC,
      recognised by their first bytes whatever the file is called. Anything else (MP3, Ogg,
      AIFF, text, ...) is refused naming what it looks like, even where libsndfile could
      decode it: lossy codecs change the levels and indices this agent measures, so a
      conversion (``sox in.ogg out.wav``) must be a deliberate choice.
    * encodings: whatever libsndfile decodes inside those containers: PCM unsigned 8 and
      signed 16/24/32 bit, 32- and 64-bit float, µ-law, A-law, IMA/MS ADPCM, GSM 6.10.
      Samples are delivered as float32 with full scale ±1.0 (a float file may exceed it;
      such samples count as clipped).
    * channels: the first channel of a multi-channel file (the recorders are mono).
    * sample rate: at least :attr:`MIN_RATE_HZ` (8000 Hz).

    Problems found when the source opens, before anything is analysed, raise
    :class:`InputError` at once: a file that is no WAV/FLAC file, a header libsndfile cannot
    read (or an encoding it cannot decode), a sample rate below 8 kHz, or no audio in any
    file. Problems that only reading reveals (a decoding error, NaN or infinite samples) and
    WAVs whose data is shorter than their header declares (a recorder that lost power) or
    that hold no samples at all are *damaged files*: each is replayed up to the problem, a
    warning names it, the replay goes on with the next file, and when the pass over the files
    ends the source raises :class:`InputError` listing every damaged file. So everything
    readable is analysed and stored, and the run still ends with a non-zero exit (66).

    Args:
        cfg: the ``[capture]`` section.
        clock: monotonic clock for real-time pacing, s (injectable for tests).

    Raises (from :meth:`open`, or while iterating :meth:`chunks`):
        InputError: as above; the message names the file and what is wrong with it.
    """

    #: Lowest sample rate replayed, Hz.
    MIN_RATE_HZ = 8000
    #: First four bytes of the WAV family (followed by a size and ``WAVE``).
    _WAV_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64")
    #: The 16-byte GUID starting a Sony Wave64 file.
    _W64_MAGIC = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
    #: Other formats, recognised only to name them when refusing the file.
    _OTHER_MAGIC = (
        (b"OggS", "an Ogg file (Vorbis, Opus or Ogg FLAC audio)"), (b"FORM", "an AIFF (IFF) file"),
        (b".snd", "a Sun/NeXT AU file"), (b"caff", "an Apple CAF file"), (b"MThd", "a MIDI file"),
        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
        (b"\x7fELF", "an executable"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x00\x05\x16\x07", "a macOS AppleDouble metadata file (a '._' file), not audio"),
    )

    def __init__(self, cfg: FileCaptureConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(queue_chunks=int(30 / cfg.chunk_s) + 1)
        self.cfg = cfg
        self.live = cfg.realtime
        self._clock = clock
        self._files: list[Path] = []
        self._named = 0  # files capture.path names, damaged ones included
        self._problems: list[str] = []  # damaged files, one line each, in replay order
        self._iter = None

    @classmethod
    def _sniff(cls, path: Path) -> tuple[str, str]:
        """What a file's first bytes say it is.

        Returns:
            (``"wav"``, ``"flac"`` or ``"other"``; for ``"other"`` a description such as
            ``"an Ogg file (...)"`` or ``"a text file (it begins 'hello')"``).

        Raises:
            OSError: the file cannot be opened or read.
        """
        with open(path, "rb") as fh:
            head = fh.read(64)
            if head[:3] == b"ID3" and len(head) >= 10:  # an ID3v2 tag, before MP3 or (rarely) FLAC
                size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
                fh.seek(10 + size + (10 if head[5] & 0x10 else 0))
                if fh.read(4) == b"fLaC":
                    return "flac", "FLAC"
                return "other", "an MP3 file (MPEG audio with an ID3 tag)"
        if not head:
            return "other", "empty (0 bytes)"
        if head[:4] in cls._WAV_MAGIC:
            if head[8:12] == b"WAVE":
                return "wav", "WAV"
            return "other", f"a RIFF file of type {head[8:12].decode('latin-1')!r}, not WAVE"
        if head[:16] == cls._W64_MAGIC:
            return "wav", "Wave64"
        if head[:4] == b"fLaC":
            return "flac", "FLAC"
        for magic, what in cls._OTHER_MAGIC:
            if head.startswith(magic):
                return "other", what
        if len(head) >= 3 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG frame sync ...
            version, layer = head[1] >> 3 & 3, head[1] >> 1 & 3
            bitrate, rate = head[2] >> 4, head[2] >> 2 & 3
            if (version != 1 and layer != 0 and bitrate != 15 and rate != 3) or head[1] & 0xF6 == 0xF0:
                return "other", "MPEG audio (an MP3 or AAC stream)"  # ... and a plausible header after it
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:  # a character cut at the end of the 64 bytes is still text
            text = head[:e.start].decode("utf-8") if e.reason == "unexpected end of data" else ""
        if text and all(c.isprintable() or c in "\t\r\n" for c in text):
            return "other", f"a text file (it begins {text[:40]!r})"
        return "other", f"of no known audio format (its first bytes are {head[:8].hex(' ')})"

    @staticmethod
    def _wav_shortfall(path: Path, rate: int, frames: int) -> str | None:
        """For a RIFF WAV whose ``data`` chunk is shorter than its header declares (a
        recorder that lost power while writing), the problem in one line; else ``None``.

        libsndfile already reads such a file up to its end; this only names the loss.
        A declared size of 0 or 0xFFFFFFFF (a writer that streams and never went back to
        fill in the size) is not a loss.

        Args:
            path: the file; rate: its sample rate, Hz; frames: the frames libsndfile reads.
        """
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(4) != b"RIFF":
                return None
            pos = 12
            while pos + 8 <= size:
                fh.seek(pos)
                header = fh.read(8)
                chunk, n = header[:4], int.from_bytes(header[4:], "little")
                if chunk == b"data":
                    present = size - pos - 8
                    if n in (0, 0xFFFFFFFF) or present >= n or present <= 0:
                        return None
                    declared_s = frames / rate * n / present
                    return (f"{path} is cut off: its header declares {declared_s:.2f} s of audio, the file holds "
                            f"{frames / rate:.2f} s (replayed)")
                pos += 8 + n + (n & 1)
        return None

    def _open(self) -> None:
        import soundfile as sf

        files = expand_paths(self.cfg.path)
        playable: list[Path] = []
        for f in files:
            try:
                kind, what = self._sniff(f)
            except OSError as e:
                raise InputError(f"{f} cannot be read: {e.strerror or e}",
                                 "check the file and its permissions") from None
            if kind == "other":
                audio = what.startswith(("an Ogg", "an MP3", "MPEG audio", "an AIFF", "a Sun", "an Apple CAF"))
                convert = (f"convert it to WAV or FLAC first (e.g. `ffmpeg -i {f.name} {f.stem}-converted.wav`), "
                           "knowing that a lossy format (MP3, Ogg Vorbis) has already changed the levels and indices "
                           "measured, or remove it from capture.path")
                narrow = "remove it from capture.path, or narrow capture.path to the recordings (e.g. a *.wav pattern)"
                raise InputError(f"{f} is not a WAV or FLAC file: it is {what}", convert if audio else narrow)
            try:
                info = sf.info(str(f))
            except Exception as e:  # soundfile.LibsndfileError, RuntimeError
                detail = getattr(e, "error_string", "") or str(e)
                raise InputError(f"{f}: the {what} header cannot be read or its encoding decoded ({detail.strip()})",
                                 "the file is damaged or in an encoding libsndfile cannot decode: remove it from "
                                 "capture.path, or convert it with sox if another program can play it") from None
            if info.samplerate < self.MIN_RATE_HZ:
                raise InputError(f"{f} has a sample rate of {info.samplerate} Hz; at least {self.MIN_RATE_HZ} Hz "
                                 "is needed", "resample the recording (e.g. `sox in.wav -r 48000 out.wav`)")
            if info.frames <= 0:
                problem = f"{f} holds no audio (a {what} header without samples)"
                log.warning("%s; skipping it", problem)
                self._problems.append(problem)
                continue
            short = self._wav_shortfall(f, info.samplerate, info.frames) if kind == "wav" else None
            if short:
                log.warning("%s", short)
                self._problems.append(short)
            playable.append(f)
        if not playable:
            raise InputError(self._problems[0] if len(files) == 1 else
                             f"none of the {len(files)} files named by capture.path holds audio:\n"
                             + "\n".join(f"    {p}" for p in self._problems),
                             "the recorder wrote headers only (power lost as each file began?): give "
                             "capture.path recordings that hold audio")
        self._files, self._named = playable, len(files)
        self._iter = self._generate()
        log.info("replaying %d file(s) from %s%s", len(self._files), self.cfg.path,
                 " in real time" if self.cfg.realtime else "")

    def _replay(self, f: Path):
        """Yield the chunks of one file; return ``None``, or the problem (one line) that
        ended it early: a decoding error or a NaN/infinite sample (the finite samples before
        it are delivered)."""
        import soundfile as sf

        done, rate = 0, 0
        try:
            start = recording_start(f)
            with sf.SoundFile(str(f)) as snd:
                rate = snd.samplerate
                block = max(1, int(round(self.cfg.chunk_s * rate)))
                t0 = self._clock()
                while True:
                    # read(n) rather than blocks(): blocks() refuses files libsndfile cannot
                    # seek in (GSM 6.10 in WAV)
                    data = snd.read(block, dtype="float32", always_2d=True)
                    if not len(data):
                        return None
                    samples = np.ascontiguousarray(data[:, 0])
                    finite = np.isfinite(samples)
                    bad = -1 if finite.all() else int(np.argmin(finite))
                    if bad > 0:
                        samples = samples[:bad]
                    if bad != 0:
                        yield Chunk(samples, rate, segment_start=start if done == 0 else None)
                    if bad >= 0:
                        at = done + bad
                        return (f"{f} holds a NaN or infinite sample at {at / rate:.2f} s (frame {at}): a damaged "
                                f"float file or a faulty converter; the rest of it was skipped")
                    done += len(samples)
                    if self.cfg.realtime:
                        delay = t0 + done / rate - self._clock()
                        if delay > 0:
                            time.sleep(delay)
        except Exception as e:  # libsndfile decoding errors; the file vanished or changed
            detail = (getattr(e, "error_string", "") or str(e) or type(e).__name__).strip()
            if not f.exists():  # libsndfile says only "System error."
                detail = "the file was removed or renamed during the replay"
            at = f" at {done / rate:.2f} s" if rate else ""
            return f"reading {f} failed{at} ({detail}); the rest of it was skipped"

    def _generate(self):
        """All chunks of all files (again and again with ``loop``); raises InputError at the
        end of a pass that met damaged files."""
        while True:
            for f in self._files:
                problem = yield from self._replay(f)
                if problem:
                    log.warning("%s; continuing with the next file", problem)
                    self._problems.append(problem)
            if self._problems:
                raise self._damaged_error()
            if not self.cfg.loop:
                return

    def _damaged_error(self) -> InputError:
        """The InputError listing the damaged files met so far."""
        n = len(self._problems)
        message = self._problems[0] if n == 1 else (
            f"{n} of the {self._named} files named by capture.path are damaged:\n"
            + "\n".join(f"    {p}" for p in self._problems))
        return InputError(message, "the audio before each problem was analysed and stored; repair the file(s) "
                                   "(a cut-off WAV: `sox in.wav fixed.wav` rewrites its header) or remove them "
                                   "from capture.path")

    def _read(self) -> Chunk | None:
        return next(self._iter, None)


#: The explicit registry: ``[capture] type`` -> source class.
async def record(cfg: CaptureConfig, seconds: float) -> tuple[np.ndarray, int]:
    """``seconds`` of audio from the configured source, then the source is stopped.

    Used by ``calibrate`` and ``diagnose`` (never while the service holds the device: ALSA
    refuses a second opener with "Device or resource busy").

    Args:
        cfg: the ``[capture]`` section.
        seconds: how much to record, s (> 0).

    Returns:
        (float32 samples, shape (n,), full scale ±1; rate, Hz). Shorter than asked only when
        the source ended (a file) or changed rate.

    Raises:
        DeviceError: the device cannot be opened or delivered no audio.
        InputError: a file source cannot be read.
    """
    source = make_source(cfg)
    await asyncio.to_thread(source.open)
    parts, rate, have = [], 0, 0
    try:
        async for chunk in source.chunks():
            if rate and chunk.sample_rate != rate:
                break
            rate = chunk.sample_rate
            parts.append(chunk.samples)
            have += len(chunk.samples)
            if have >= seconds * rate:
                break
    finally:
        source.stop()
    if not parts:
        raise DeviceError("the capture device delivered no audio", "check the device with `arecord -l` and [capture]")
    return np.concatenate(parts)[: int(seconds * rate)], rate


SOURCES: dict[str, type[ThreadedSource]] = {
    "alsa": AlsaSource,
    "arecord": ArecordSource,
    "file": FileSource,
}


def make_source(cfg: CaptureConfig) -> ThreadedSource:
    """Build the source named by ``cfg.type`` (not yet opened).

    Args:
        cfg: the ``[capture]`` section.
    """
    return SOURCES[cfg.type](cfg)  # type: ignore[arg-type]


__all__ = [
    "AlsaSource", "ArecordSource", "AudioSource", "CaptureDevice", "CaptureStats", "FileSource",
    "SOURCES", "ThreadedSource", "expand_paths", "list_capture_devices", "make_source",
    "parse_arecord_list", "recording_start", "resolve_pcm",
]
