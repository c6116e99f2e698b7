"""The file replay source (``[capture] type = "file"``): WAV/FLAC recordings through the same
pipeline as a live device, one segment per file, optionally paced in real time."""

from __future__ import annotations

import glob
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np

from agent.capture import ThreadedSource
from agent.config import FileCaptureConfig
from agent.errors import InputError
from agent.records import Chunk

log = logging.getLogger("agent.capture")

#: The real field recordings shipped with the repository (demo, export verification, tests).
BUNDLED_RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "recordings"

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
        self._iter: Iterator[Chunk] | None = None  # set by _open

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

    def _replay(self, f: Path) -> Generator[Chunk, None, str | None]:
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
            when = f" at {done / rate:.2f} s" if rate else ""
            return f"reading {f} failed{when} ({detail}); the rest of it was skipped"

    def _generate(self) -> Generator[Chunk, None, None]:
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
        return next(cast(Iterator[Chunk], self._iter), None)  # _open, which set it, runs first


#: The explicit registry: ``[capture] type`` -> source class.



__all__ = ["BUNDLED_RECORDINGS", "FileSource", "expand_paths", "recording_start"]
