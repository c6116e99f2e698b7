"""Windows: cut the continuous chunk stream into fixed-length analysis windows.

:class:`Windower` is pure (no I/O, no clock reads of its own): chunks in, windows out.
A window's start time is the segment's one wall-clock anchor plus its sample offset divided
by the sample rate, so window times follow the sample count exactly and never jitter with
scheduling. A new segment (stream start, next replayed file, restart after an xrun) gives a
new anchor; the partial window buffered before it is discarded and logged, since samples on
both sides of a discontinuity do not belong in one window.

"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from agent.config import WindowsConfig
from agent.ops import ntp_synchronised
from agent.records import Chunk, Window

log = logging.getLogger("agent.windows")

class Windower:
    """Cuts a chunk stream into fixed-length windows.

    Args:
        cfg: the ``[windows]`` section (length and hop in s).
        stream_id: identifier of this capture stream, the prefix of every window key.
        clock_synchronised: called once per window when it closes; defaults to
            :func:`agent.ops.ntp_synchronised`.
        first_index: index of the first window (to continue numbering after a restart).

    Not thread-safe: feed it from one task.
    """

    def __init__(self, cfg: WindowsConfig, stream_id: str,
                 clock_synchronised: Callable[[], bool] = ntp_synchronised, first_index: int = 0) -> None:
        self.cfg = cfg
        self.stream_id = stream_id
        self._synced = clock_synchronised
        self.next_index = first_index
        self._pending: list[npt.NDArray[np.float32]] = []
        self._pending_n = 0
        self._skip = 0  # samples still to drop when hop > length
        self._anchor: datetime | None = None
        self._rate = 0
        self._frame = 0  # segment frame index of the first pending sample
        self._xruns = 0
        self.discarded_frames = 0

    def _sizes(self) -> tuple[int, int]:
        return (int(round(self.cfg.length_s * self._rate)), int(round(self.cfg.effective_hop_s * self._rate)))

    def _discard_partial(self, why: str) -> None:
        if self._pending_n:
            log.info("discarding %.2f s of a partial window (%s)", self._pending_n / self._rate, why)
            self.discarded_frames += self._pending_n
        self._pending, self._pending_n = [], 0

    def push(self, chunk: Chunk) -> list[Window]:
        """Add a chunk; return the windows it completed, oldest first.

        Args:
            chunk: the next chunk of the stream; the first chunk ever must start a segment.

        Raises:
            ValueError: the stream's first chunk has no ``segment_start``.
        """
        if chunk.segment_start is not None:
            self._discard_partial("new segment")
            self._anchor, self._rate, self._frame, self._skip = chunk.segment_start, chunk.sample_rate, 0, 0
        elif self._anchor is None:
            raise ValueError("the first chunk of a stream must carry segment_start")
        self._xruns += chunk.xruns
        samples = chunk.samples
        if self._skip:
            drop = min(self._skip, len(samples))
            samples, self._skip, self._frame = samples[drop:], self._skip - drop, self._frame + drop
        if len(samples):
            self._pending.append(samples)
            self._pending_n += len(samples)
        out: list[Window] = []
        length, hop = self._sizes()
        while self._pending_n >= length:
            data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            assert self._anchor is not None
            out.append(Window(
                key=f"{self.stream_id}-{self.next_index:08d}",
                index=self.next_index,
                start_frame=self._frame,
                start_time=self._anchor + timedelta(seconds=self._frame / self._rate),
                sample_rate=self._rate,
                samples=np.array(data[:length], dtype=np.float32, copy=True),
                clock_synchronised=self._synced(),
                xruns=self._xruns,
            ))
            self.next_index += 1
            self._xruns = 0
            if hop <= len(data):
                rest = data[hop:]
                self._frame += hop
            else:
                rest = data[len(data):]
                self._skip = hop - len(data)
                self._frame += len(data)
            self._pending = [rest] if len(rest) else []
            self._pending_n = len(rest)
        return out

    def finish(self) -> None:
        """End of stream: discard (and log) the samples of an incomplete last window."""
        self._discard_partial("end of stream")

    def stream_end(self) -> datetime | None:
        """Time of the end of the last sample received (UTC, on the segment's sample-count
        timeline: anchor + frames / rate), or ``None`` before the first chunk."""
        if self._anchor is None:
            return None
        return self._anchor + timedelta(seconds=(self._frame + self._pending_n) / self._rate)


def cut(chunks: Iterable[Chunk], cfg: WindowsConfig, stream_id: str = "s",
        clock_synchronised: Callable[[], bool] = ntp_synchronised) -> list[Window]:
    """Cut a finite sequence of chunks into windows (convenience for tests and tools).

    Args:
        chunks: the stream; cfg: the ``[windows]`` section; stream_id: key prefix.

    Returns:
        All complete windows, oldest first.
    """
    w = Windower(cfg, stream_id, clock_synchronised)
    out = [win for c in chunks for win in w.push(c)]
    w.finish()
    return out
