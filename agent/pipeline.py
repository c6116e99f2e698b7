"""The asyncio pipeline: the README's data-flow diagram, in code.

::

    capture ─Chunk─▶ windows ─Window─▶ acoustics: levels, bands, indices, health (every window)
      (reader thread)                      │  (acoustics thread, filter state carried in order)
                                           ├─ classify queue not full ─▶ classifier (worker thread) ─┐
                                           └─ queue full: classification skipped, counted ───────────┤
                                                                                                     ▼
                                  PostgreSQL ◀─ sync (async psycopg, batches, backoff) ◀─ outbox (SQLite, one writer thread)

Nothing here blocks the event loop: capture reads in its own thread, acoustics and inference
run in executors of one thread each (torch and numpy release the GIL while they compute), SQLite has one writer thread,
and PostgreSQL is reached with async psycopg. Raw audio lives only in :class:`~agent.records.Window`
objects in RAM and is dropped once a window is analysed.

Shutdown (:meth:`Pipeline.request_stop`, wired to SIGTERM/SIGINT by the CLI): capture stops,
windows already cut are analysed and stored, one bounded final sync runs, the queue closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.analysis.acoustics import AcousticAnalyser, Acoustics
from agent.analysis.classifier import Classifier
from agent.capture import ThreadedSource
from agent.config import WindowsConfig
from agent.records import Status, Window, WindowResult
from agent.store import Outbox
from agent.sync import Syncer
from agent.windows import Windower

log = logging.getLogger("agent.pipeline")


@dataclass(slots=True)
class PipelineStats:
    """Counters of one pipeline run.

    Attributes:
        windows: windows cut and stored (each with its levels).
        classified: windows classified; skipped: classification skipped because the classify
            queue was full (levels still stored); failed: the classifier raised.
        xruns: capture overruns.
    """

    windows: int = 0
    classified: int = 0
    skipped: int = 0
    failed: int = 0
    xruns: int = 0


class Pipeline:
    """Capture → windows → acoustics (levels, bands, indices, health) → classification → outbox,
    with sync alongside.

    Args:
        device_id: stored with every window.
        source: an opened capture source.
        windows: the ``[windows]`` section.
        acoustics: levels, indices and health of each window (its state follows the stream).
        classifier: a loaded classifier, or ``None`` to store levels only.
        queue_size: windows that may wait for classification; when it is full, a live source's
            new windows skip classification (counted; SPL is still stored), while a
            non-real-time file replay waits instead.
        outbox: an opened SQLite outbox.
        syncer: the PostgreSQL syncer, or ``None`` when no DSN is configured.
        on_result: called in the event loop with each stored result (e.g. to print it).
        max_windows: stop after this many windows (``None``: run until stopped or the
            source ends).
        final_sync_timeout_s: bound on the final sync attempt at shutdown, s.
    """

    def __init__(self, *, device_id: str, source: ThreadedSource, windows: WindowsConfig,
                 acoustics: AcousticAnalyser, classifier: Classifier | None, queue_size: int,
                 outbox: Outbox, syncer: Syncer | None,
                 on_result: Callable[[WindowResult], None] | None = None,
                 max_windows: int | None = None, final_sync_timeout_s: float = 10.0) -> None:
        self.device_id = device_id
        self.source = source
        self.windower = Windower(windows, stream_id=uuid.uuid4().hex[:16])
        self.acoustics = acoustics
        self.classifier = classifier
        self.outbox = outbox
        self.syncer = syncer
        self.on_result = on_result
        self.max_windows = max_windows
        self.final_sync_timeout_s = final_sync_timeout_s
        self.stats = PipelineStats()
        self._classify_q: asyncio.Queue[tuple[Window, Acoustics] | None] = asyncio.Queue(queue_size)
        self._stop = asyncio.Event()
        # One inference thread: the classifier is not thread-safe, and one at a time is all
        # a Pi 4 can afford next to capture.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="classifier")
        # One acoustics thread: the level meter's filter state must see the windows in order.
        self._acoustics_pool = ThreadPoolExecutor(1, thread_name_prefix="acoustics")

    def request_stop(self) -> None:
        """Stop capture; windows in flight are finished. Safe to call from a signal handler."""
        if not self._stop.is_set():
            log.info("stopping: capture ends, windows in flight are finished")
            self._stop.set()
            self.source.stop()

    async def run(self) -> PipelineStats:
        """Run until the source ends, :meth:`request_stop` is called or ``max_windows`` is reached.

        Returns:
            The run's counters.

        Raises:
            DeviceError, InputError: capture failed (after stored results were kept).
            StoreError: the local queue cannot be written.
        """
        sync_stop = asyncio.Event()
        sync_task = asyncio.create_task(self.syncer.run(sync_stop)) if self.syncer else None
        classify_task = asyncio.create_task(self._classify_loop())
        try:
            await self._capture_loop()
        finally:
            await self._classify_q.put(None)  # after the windows in flight
            await classify_task
            self._infer_pool.shutdown(wait=True)
            self._acoustics_pool.shutdown(wait=True)
            if sync_task is not None:
                sync_stop.set()
                await sync_task
                await self.syncer.final(self.final_sync_timeout_s)
        return self.stats

    async def _capture_loop(self) -> None:
        async with contextlib.aclosing(self.source.chunks()) as chunks:
            async for chunk in chunks:
                self.stats.xruns += chunk.xruns
                for window in self.windower.push(chunk):
                    await self._analyse(window)
                    if self.max_windows is not None and self.stats.windows >= self.max_windows:
                        self.request_stop()
                        break
                if self._stop.is_set():
                    break
        self.windower.finish()

    async def _analyse(self, window: Window) -> None:
        acoustics = await asyncio.get_running_loop().run_in_executor(
            self._acoustics_pool, self.acoustics.analyse, window)
        self.stats.windows += 1
        if self.classifier is None:
            await self._store(window, acoustics, Status.DISABLED)
            return
        if not self.source.live:  # offline replay: wait for the classifier, skip nothing
            await self._classify_q.put((window, acoustics))
            return
        try:
            self._classify_q.put_nowait((window, acoustics))
        except asyncio.QueueFull:
            self.stats.skipped += 1
            log.warning("analysis behind: classification of window %d skipped (%d skipped so far); levels kept",
                        window.index, self.stats.skipped)
            await self._store(window, acoustics, Status.SKIPPED_BACKLOG)

    async def _classify_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while (item := await self._classify_q.get()) is not None:
            window, acoustics = item
            assert self.classifier is not None
            try:
                detections = await loop.run_in_executor(
                    self._infer_pool, self.classifier.classify, window.samples, window.sample_rate)
            except Exception:
                self.stats.failed += 1
                log.exception("classification of window %d failed; its levels are kept", window.index)
                await self._store(window, acoustics, Status.FAILED)
                continue
            self.stats.classified += 1
            await self._store(window, acoustics, Status.CLASSIFIED, detections)

    async def _store(self, window: Window, acoustics: Acoustics, status: Status, detections: tuple = ()) -> None:
        result = WindowResult(
            key=window.key, device_id=self.device_id, index=window.index, start_time=window.start_time,
            duration_s=window.duration_s, sample_rate=window.sample_rate,
            clock_synchronised=window.clock_synchronised, xruns=window.xruns, levels=acoustics.levels,
            indices=acoustics.indices, health=acoustics.health, status=status, detections=tuple(detections),
            model=self.classifier.info if (self.classifier is not None and status is Status.CLASSIFIED) else None,
        )
        await self.outbox.put(result)
        if self.on_result is not None:
            self.on_result(result)
