"""Capture: one continuous, gap-free stream of audio chunks.

Three sources, chosen by the ``type`` key of the ``[capture]`` section through the explicit
registry :data:`SOURCES`:

- ``alsa``: pyalsaaudio reads one ALSA period at a time in a dedicated thread;
- ``arecord``: ONE long-lived ``arecord`` process streams raw S16_LE to a pipe that a thread
  reads (never one process per window, never a temporary file);
- ``file``: WAV/FLAC files replayed through the same pipeline, optionally paced in real time
  (:mod:`agent.filesource`).

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
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt

from agent.config import AlsaCaptureConfig, ArecordCaptureConfig, CaptureConfig
from agent.errors import DeviceError
from agent.records import Chunk

log = logging.getLogger("agent.capture")

#: Bytes per frame of the capture format: mono S16_LE (the AudioMoth's native format).
FRAME_BYTES = 2
#: Scale from S16_LE integers to float full scale ±1.0.
S16_SCALE = 1.0 / 32768.0


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

    def _count_xrun(self, what: str) -> None:
        self._xruns += 1
        log.warning("capture overrun (xrun #%d): %s; samples were lost, re-anchoring the clock", self._xruns, what)

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
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
                yield item  # type: ignore[misc]  # the reader queues Chunks besides _END and exceptions
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


def _s16_to_float(data: bytes) -> npt.NDArray[np.float32]:
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
        self._pcm: Any = None  # an alsaaudio.PCM once open (pyalsaaudio has no type information)
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
        stdout = cast(IO[bytes], self._proc.stdout)  # stdout=PIPE: never None (typeshed says Optional)
        ready, _, _ = select.select([stdout], [], [], 5.0)
        if ready:
            self._head = os.read(stdout.fileno(), self.cfg.period_frames * FRAME_BYTES)
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


async def record(cfg: CaptureConfig, seconds: float) -> tuple[npt.NDArray[np.float32], int]:
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


def _file_source() -> type[ThreadedSource]:
    from agent.filesource import FileSource  # its own module; it builds on ThreadedSource

    return FileSource


#: ``[capture] type`` -> source class (the file replay is loaded on first use).
SOURCES: dict[str, Callable[[], type[ThreadedSource]]] = {
    "alsa": lambda: AlsaSource,
    "arecord": lambda: ArecordSource,
    "file": _file_source,
}


def make_source(cfg: CaptureConfig) -> ThreadedSource:
    """Build the source named by ``cfg.type`` (not yet opened).

    Args:
        cfg: the ``[capture]`` section.
    """
    return SOURCES[cfg.type]()(cfg)  # type: ignore[arg-type]  # cfg.type picks the class taking this config


__all__ = [
    "AlsaSource", "ArecordSource", "CaptureDevice", "SOURCES", "ThreadedSource", "list_capture_devices",
    "make_source", "parse_arecord_list", "record", "resolve_pcm",
]
