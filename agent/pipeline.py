"""The asyncio pipeline: the README's data-flow diagram, in code (:func:`build_pipeline` wires it).

::

    capture ─Chunk─▶ windows ─Window─▶ acoustics: levels, bands, indices, health (every window)
      (reader thread)                      │  (acoustics thread, filter state carried in order)
                                           │  for each classifier (AST, BirdNET), its turn (every_n_windows):
                                           ├─ its queue not full ─▶ classifier (its own worker thread) ─┐
                                           └─ queue full: skipped for that classifier, counted ─────────┤
                                                          window stored when every classifier answered ▼
                              PostgreSQL ◀─ sync (async psycopg, batches, backoff) ◀─ outbox (SQLite, one writer thread)

Nothing here blocks the event loop: capture reads in its own thread, acoustics and inference
run in executors of one thread each (torch and numpy release the GIL while they compute), SQLite has one writer thread,
and PostgreSQL is reached with async psycopg. Raw audio lives only in :class:`~agent.records.Window`
objects in RAM and is dropped once a window is analysed.

Shutdown (:meth:`Pipeline.request_stop`, wired to SIGTERM/SIGINT by the CLI): capture stops,
windows already cut are analysed and stored, one bounded final sync runs, the queue closes.

Supervision runs beside the data flow (:mod:`agent.supervise`, one small task per job:
watchdog and ``STATUS=``, clock steps, housekeeping, heartbeats and the textfile) once the
first audio arrived (``READY=1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypedDict

from agent.analysis.acoustics import AcousticAnalyser, Acoustics
from agent.analysis.classifier import Classifier
from agent.capture import ThreadedSource
from agent.config import BirdnetConfig, ClassifierConfig, Config, OpsConfig, WindowsConfig
from agent.errors import DeviceError, StoreError
from agent.ops import SystemdNotifier, backoff_delay
from agent.records import ClockStep, Detection, Gap, ModelInfo, Status, Window, WindowResult, overall_status
from agent.store import Outbox, StoreFullError, StorePressure
from agent.supervise import supervise
from agent.sync import Syncer
from agent.windows import Windower

log = logging.getLogger("agent.pipeline")

#: Reconnection backoff after the capture device failed, s (first attempt, cap): reopening a
#: PCM costs next to nothing, so the cap is short: a replugged microphone records again within 10 s.
CAPTURE_RETRY_INITIAL_S = 1.0
CAPTURE_RETRY_MAX_S = 10.0


class HeartbeatCounters(TypedDict):
    """:meth:`PipelineStats.heartbeat_counters`: the :class:`~agent.records.Heartbeat` fields of the same names."""

    windows: int
    classified: int
    skipped: int
    failed: int
    xruns: int
    dropped_windows: int


@dataclass(slots=True)
class PipelineStats:
    """Counters of one pipeline run.

    Attributes:
        windows: windows cut and stored (each with its levels).
        classified: windows every scheduled classifier classified; partial: windows one
            classifier classified while another was skipped or failed; skipped: windows no
            classifier classified because their queues were full (levels still stored);
            failed: windows whose classifiers raised (and none classified).
        by_classifier: per taxonomy (``audioset``, ``birdnet``), the count of each
            :class:`~agent.records.Status` value it had.
        xruns: capture overruns.
        frames: audio frames received from capture.
        heartbeats: heartbeats queued.
        dropped: windows analysed but not storable (the queue refused even after eviction).
        capture_errors: times the capture device failed or vanished (each retried).
        gaps: gaps recorded (capture lost, windows dropped).
        clock_steps: wall-clock jumps recorded.
    """

    windows: int = 0
    classified: int = 0
    partial: int = 0
    skipped: int = 0
    failed: int = 0
    by_classifier: dict[str, Counter[str]] = field(default_factory=dict)
    xruns: int = 0
    frames: int = 0
    heartbeats: int = 0
    dropped: int = 0
    capture_errors: int = 0
    gaps: int = 0
    clock_steps: int = 0

    def count(self, classifier_status: Sequence[tuple[str, Status]], status: Status) -> None:
        """Count one stored window: its overall ``status`` and each classifier's."""
        for taxonomy, s in classifier_status:
            self.by_classifier.setdefault(taxonomy, Counter())[s.value] += 1
        if status is Status.CLASSIFIED:
            self.classified += 1
        elif status is Status.PARTIAL:
            self.partial += 1
        elif status is Status.SKIPPED_BACKLOG:
            self.skipped += 1
        elif status is Status.FAILED:
            self.failed += 1

    def heartbeat_counters(self) -> HeartbeatCounters:
        """The counters a :class:`~agent.records.Heartbeat` carries, under its field names."""
        return {"windows": self.windows, "classified": self.classified, "skipped": self.skipped,
                "failed": self.failed, "xruns": self.xruns, "dropped_windows": self.dropped}

    def summary(self) -> str:
        """``N classified, N skipped, N failed`` (and the per-classifier counts when there are
        several or one runs on a duty cycle), for STATUS= and the final line."""
        head = f"{self.classified} classified, {self.skipped} skipped, {self.failed} failed"
        if self.partial:
            head += f", {self.partial} partial"
        per = self.by_classifier
        if len(per) > 1 or any(Status.NOT_SCHEDULED.value in c for c in per.values()):
            head += "; " + "; ".join(f"{t}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
                                     for t, c in per.items())
        return head


@dataclass(frozen=True, slots=True)
class ClassifierSlot:
    """A loaded classifier and how the pipeline feeds it.

    Attributes:
        classifier: the model (AST or BirdNET), called from one worker thread of its own.
        queue_size: windows that may wait for it; when full, a live source's new windows skip
            it (``skipped_backlog`` for this classifier), a file replay waits.
        every_n_windows: classify windows whose index is divisible by N; the others get
            ``not_scheduled`` for this classifier.
    """

    classifier: Classifier
    queue_size: int = 3
    every_n_windows: int = 1


def load_classifier_slots(classifier: ClassifierConfig, birdnet: BirdnetConfig,
                          ast: Classifier | None = None) -> list[ClassifierSlot]:
    """Load the enabled classifiers, AST first, each with its queue size and duty cycle.

    Args:
        classifier: the ``[classifier]`` section (AST), loaded when ``enabled``.
        birdnet: the ``[birdnet]`` section, loaded when ``enabled``.
        ast: an AST classifier loaded already (``demo`` loads its own), used instead of
            loading ``classifier``.

    Returns:
        zero, one or two :class:`ClassifierSlot`.

    Raises:
        ModelError: a model cannot be found or loaded (exit 66).
    """
    slots = []
    if ast is None and classifier.enabled:
        from agent.analysis.classifier import load_classifier

        ast = load_classifier(classifier)
    if ast is not None:
        slots.append(ClassifierSlot(ast, classifier.queue_size, classifier.every_n_windows))
    if birdnet.enabled:
        from agent.analysis.birdnet import load_birdnet

        slots.append(ClassifierSlot(load_birdnet(birdnet), birdnet.queue_size))
    return slots


class _ClassifierWorker:
    """One classifier's bounded queue and its inference thread (the event loop side only)."""

    def __init__(self, slot: ClassifierSlot) -> None:
        self.slot = slot
        self.taxonomy = slot.classifier.taxonomy
        self.queue: asyncio.Queue[tuple[Window, asyncio.Future[Outcome]] | None] = asyncio.Queue(slot.queue_size)
        # One thread: a classifier is not thread-safe.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"classify-{self.taxonomy}")

    async def run(self) -> None:
        """Classify queued windows until ``None`` is queued; each outcome resolves its future."""
        loop = asyncio.get_running_loop()
        while (item := await self.queue.get()) is not None:
            window, outcome = item
            try:
                detections = await loop.run_in_executor(self.pool, self.slot.classifier.classify, window.samples,
                                                        window.sample_rate, window.start_time)
            except Exception:
                log.exception("%s classification of window %d failed; its levels are kept", self.taxonomy,
                              window.index)
                outcome.set_result((Status.FAILED, ()))
                continue
            outcome.set_result((Status.CLASSIFIED, tuple(detections)))


#: A classifier's outcome for one window: its status and its detections.
Outcome = tuple[Status, tuple[Detection, ...]]


class Pipeline:
    """Capture → windows → acoustics (levels, bands, indices, health) → classification → outbox,
    with sync alongside.

    Args:
        device_id: stored with every window.
        source: an opened capture source.
        windows: the ``[windows]`` section.
        acoustics: levels, indices and health of each window (its state follows the stream).
        classifiers: the loaded classifiers (AST, BirdNET: both, either or none — levels
            only), each with its own queue and worker thread (:class:`ClassifierSlot`); a
            window is stored once every one of them has classified or skipped it.
        outbox: an opened SQLite outbox.
        syncer: the PostgreSQL syncer, or ``None`` when no DSN is configured.
        on_result: called in the event loop with each stored result (e.g. to print it).
        max_windows: stop after this many windows (``None``: run until stopped or the
            source ends).
        final_sync_timeout_s: bound on the final sync attempt at shutdown, s.
        ops: the ``[ops]`` section (heartbeats, textfile); ``None``: no heartbeats.
        notifier: systemd notification (``None``: one built from the environment, which does
            nothing outside a ``Type=notify`` service).
    """

    def __init__(self, *, device_id: str, source: ThreadedSource, windows: WindowsConfig,
                 acoustics: AcousticAnalyser, classifiers: Sequence[ClassifierSlot] = (),
                 outbox: Outbox, syncer: Syncer | None,
                 on_result: Callable[[WindowResult], None] | None = None,
                 max_windows: int | None = None, final_sync_timeout_s: float = 10.0,
                 ops: OpsConfig | None = None, notifier: SystemdNotifier | None = None) -> None:
        self.device_id = device_id
        self.source = source
        self.windower = Windower(windows, stream_id=uuid.uuid4().hex[:16])
        self.acoustics = acoustics
        self.classifiers = tuple(classifiers)
        self.outbox = outbox
        self.syncer = syncer
        self.on_result = on_result
        self.max_windows = max_windows
        self.final_sync_timeout_s = final_sync_timeout_s
        self.stats = PipelineStats()
        self.ops = ops
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        hop = windows.hop_s or windows.length_s
        #: the newest window must be younger than this for the watchdog to be fed, s
        self.commit_deadline_s = 3.0 * max(hop, windows.length_s) + 60.0
        self._started = time.monotonic()
        self._ready = asyncio.Event()
        self._last_commit = 0.0  # monotonic time of the newest stored window (0: none yet)
        self._workers = [_ClassifierWorker(slot) for slot in self.classifiers]
        self._storing: set[asyncio.Task[None]] = set()  # windows waiting for their classifiers
        self._stop = asyncio.Event()
        # fault state (event loop only)
        self._capture_lost: tuple[datetime | None, str] | None = None  # (audio end, reason) while down
        self._reconnect_attempts = 0
        self._dropped_since: tuple[datetime, int] | None = None  # first dropped window's start, count
        self._last_store_failure = 0.0  # monotonic
        # One acoustics thread: the level meter's filter state must see the windows in order.
        self._acoustics_pool = ThreadPoolExecutor(1, thread_name_prefix="acoustics")

    def request_stop(self) -> None:
        """Stop capture; windows in flight are finished. Safe to call from a signal handler."""
        if not self._stop.is_set():
            log.info("stopping: capture ends, windows in flight are finished")
            self._stop.set()
            self.notifier.stopping()
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
        syncing = (self.syncer, asyncio.create_task(self.syncer.run(sync_stop))) if self.syncer else None
        classify_tasks = [asyncio.create_task(w.run()) for w in self._workers]
        supervise_task = asyncio.create_task(supervise(self, self.ops, self._ready))
        try:
            await self._capture_loop()
        finally:
            for worker in self._workers:
                await worker.queue.put(None)  # after the windows in flight
            await asyncio.gather(*classify_tasks)
            while self._storing:
                await asyncio.gather(*self._storing)
            supervise_task.cancel()
            await asyncio.gather(supervise_task, return_exceptions=True)
            for worker in self._workers:
                worker.pool.shutdown(wait=True)
            self._acoustics_pool.shutdown(wait=True)
            if syncing is not None:
                syncer, sync_task = syncing
                sync_stop.set()
                await sync_task
                await syncer.final(self.final_sync_timeout_s)
        return self.stats

    async def _capture_loop(self) -> None:
        """Feed the windower until the source ends or a stop is requested. A live source that
        fails (microphone unplugged, driver error) is reopened with backoff for as long as it
        takes; the time without audio is stored as a :class:`Gap` once audio flows again."""
        while True:
            try:
                await self._pump()
                break
            except DeviceError as err:
                if not self.source.live:
                    raise
                if self._stop.is_set():  # stopping (maybe during a reconnection attempt): not an error
                    if self._capture_lost is None:
                        self._capture_lost = (self.windower.stream_end(), err.message)
                    await self._capture_ended_while_lost()
                    break
                if self._capture_lost is None:  # lost now (not a failed reconnection attempt)
                    self.stats.capture_errors += 1
                    self._capture_lost = (self.windower.stream_end(), err.message)
                    self._reconnect_attempts = 0
                    log.error("capture lost: %s; reconnecting with backoff (the gap will be recorded)", err.message)
                else:
                    log.warning("capture device still unavailable (attempt %d): %s", self._reconnect_attempts,
                                err.message)
                self.windower.finish()
                if not await self._reopen():
                    await self._capture_ended_while_lost()
                    break
        self.windower.finish()

    async def _pump(self) -> None:
        async with contextlib.aclosing(self.source.chunks()) as chunks:
            async for chunk in chunks:
                self.stats.xruns += chunk.xruns
                self.stats.frames += len(chunk.samples)
                if not self._ready.is_set():
                    self._ready.set()
                    self.notifier.ready(f"capturing at {chunk.sample_rate} Hz")
                if self._capture_lost is not None and chunk.segment_start is not None:
                    await self._capture_resumed(chunk.segment_start)
                for window in self.windower.push(chunk):
                    await self._analyse(window)
                    if self.max_windows is not None and self.stats.windows >= self.max_windows:
                        self.request_stop()
                        break
                if self._stop.is_set():
                    break

    async def _reopen(self) -> bool:
        """Reopen the lost capture device, waiting :func:`~agent.ops.backoff_delay` before each
        attempt (the count runs on until audio flows again, so a device that opens but fails
        at once still backs off), until it opens (True) or a stop is requested (False)."""
        while not self._stop.is_set():
            self._reconnect_attempts += 1
            delay = backoff_delay(self._reconnect_attempts, CAPTURE_RETRY_INITIAL_S, CAPTURE_RETRY_MAX_S)
            log.info("reconnecting to the capture device in %.1f s (attempt %d)", delay, self._reconnect_attempts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            if self._stop.is_set():
                return False
            try:
                await asyncio.to_thread(self.source.open)
            except DeviceError as again:
                log.warning("capture device still unavailable (attempt %d): %s", self._reconnect_attempts,
                            again.message)
                continue
            return True
        return False

    async def _capture_resumed(self, first_sample: datetime) -> None:
        """Audio flows again after a capture loss: store the gap (last audio -> first new sample)."""
        await self._record_capture_gap(first_sample, "capture resumed", "")

    async def _capture_ended_while_lost(self) -> None:
        """Stopped while the capture device is still lost: store the gap up to now."""
        if self._capture_lost is not None:
            await self._record_capture_gap(datetime.now(timezone.utc), "stopping with the capture device still lost",
                                           " (still lost when the agent stopped)")

    async def _record_capture_gap(self, end: datetime, what: str, detail_suffix: str) -> None:
        """Store the time without audio since the capture was lost, up to ``end`` (UTC), as a
        ``capture_lost`` :class:`Gap`, and clear the lost state."""
        assert self._capture_lost is not None
        lost_at, reason = self._capture_lost
        self._capture_lost = None
        start = lost_at if lost_at is not None and lost_at <= end else end
        log.warning("%s: %.1f s without audio (%s to %s) recorded as a gap", what, (end - start).total_seconds(),
                    start.isoformat(timespec="seconds"), end.isoformat(timespec="seconds"))
        await self.put_event(Gap(event_id=str(uuid.uuid4()), device_id=self.device_id, start_time=start,
                                  end_time=end, reason="capture_lost", detail=reason + detail_suffix))

    async def put_event(self, event: Gap | ClockStep) -> None:
        """Queue a gap or clock step and count it; a store failure is logged, not raised."""
        try:
            await self.outbox.put_event(event)
        except StoreError as err:
            log.error("%s not stored: %s", type(event).__name__, err.message)
            return
        if isinstance(event, Gap):
            self.stats.gaps += 1
        else:
            self.stats.clock_steps += 1

    async def _analyse(self, window: Window) -> None:
        """Acoustics of every window, then each classifier whose turn it is: queued to it, or
        skipped when its queue is full and the source is live (a replay waits instead). The
        window is stored once every classifier has answered."""
        loop = asyncio.get_running_loop()
        acoustics = await loop.run_in_executor(self._acoustics_pool, self.acoustics.analyse, window)
        self.stats.windows += 1
        outcomes: list[asyncio.Future[Outcome]] = []
        for worker in self._workers:
            outcome: asyncio.Future[Outcome] = loop.create_future()
            outcomes.append(outcome)
            if window.index % worker.slot.every_n_windows:
                outcome.set_result((Status.NOT_SCHEDULED, ()))
            elif not self.source.live:  # offline replay: wait for the classifier, skip nothing
                await worker.queue.put((window, outcome))
            else:
                try:
                    worker.queue.put_nowait((window, outcome))
                except asyncio.QueueFull:
                    outcome.set_result((Status.SKIPPED_BACKLOG, ()))
                    log.warning("analysis behind: %s classification of window %d skipped; levels kept",
                                worker.taxonomy, window.index)
        if all(o.done() for o in outcomes):
            await self._store_classified(window, acoustics, outcomes)
        else:
            task = asyncio.create_task(self._store_classified(window, acoustics, outcomes))
            self._storing.add(task)
            task.add_done_callback(self._storing.discard)

    async def _store_classified(self, window: Window, acoustics: Acoustics,
                                outcomes: list[asyncio.Future[Outcome]]) -> None:
        """Wait for every classifier's outcome of ``window``, then store it."""
        results = [await o for o in outcomes]  # one per worker (_analyse)
        status_of = tuple((w.taxonomy, r[0]) for w, r in zip(self._workers, results, strict=True))
        status = overall_status([s for _, s in status_of])
        self.stats.count(status_of, status)
        models = tuple(w.slot.classifier.info for w, r in zip(self._workers, results, strict=True)
                       if r[0] is Status.CLASSIFIED)
        detections = tuple(d for r in results for d in r[1])
        await self._store(window, acoustics, status, detections, models, status_of)

    def degraded(self, pressure: StorePressure | None = None) -> tuple[str, ...]:
        """Why the agent is degraded right now (see :attr:`Heartbeat.degraded`); empty when healthy.

        Args:
            pressure: the outbox's space situation, when known.
        """
        out = []
        if pressure is not None and pressure.disk_low:
            out.append("disk_low")
        if pressure is not None and pressure.full_recently:
            out.append("queue_full")
        if self._last_store_failure and time.monotonic() - self._last_store_failure < 600:
            out.append("store_failed")
        if pressure is not None and pressure.replaced_recently:
            out.append("queue_replaced")
        if self._capture_lost is not None:
            out.append("capture_lost")
        if self.syncer is not None and self.syncer.failures >= 3:
            out.append("sync_failing")
        return tuple(out)

    def status_line(self) -> str:
        """One-line summary for ``systemctl status`` (STATUS=)."""
        s = self.stats
        lost = "; CAPTURE LOST, reconnecting" if self._capture_lost is not None else ""
        dropped = f"; {s.dropped} windows NOT stored" if s.dropped else ""
        return (f"{s.windows} windows ({s.summary()}), "
                f"{s.xruns} xruns, up {time.monotonic() - self._started:.0f} s{lost}{dropped}")

    # -- what agent.supervise reads (agent.supervise.Supervised) --

    @property
    def live(self) -> bool:
        return self.source.live

    @property
    def capture_lost(self) -> bool:
        return self._capture_lost is not None

    @property
    def started(self) -> float:
        return self._started

    @property
    def last_commit(self) -> float:
        return self._last_commit

    def model_info(self) -> tuple[str | None, str | None]:
        info = self.classifiers[0].classifier.info if self.classifiers else None
        return (info.model_id, info.model_hash) if info else (None, None)

    async def _store(self, window: Window, acoustics: Acoustics, status: Status, detections: tuple[Detection, ...],
                     models: tuple[ModelInfo, ...], classifier_status: tuple[tuple[str, Status], ...]) -> None:
        result = WindowResult(
            key=window.key, device_id=self.device_id, index=window.index, start_time=window.start_time,
            duration_s=window.duration_s, sample_rate=window.sample_rate,
            clock_synchronised=window.clock_synchronised, xruns=window.xruns, levels=acoustics.levels,
            indices=acoustics.indices, health=acoustics.health, status=status, detections=detections,
            models=models, classifier_status=classifier_status,
        )
        try:
            await self.outbox.put(result)
        except StoreError as err:
            # Keep recording, count the window, record the gap once storing works again.
            # No room even after the eviction policy made what it could (StoreFullError): the
            # policy is doing its job and a restart would free nothing (it would only lose the
            # count of this gap and the audio while restarting), so this counts as progress
            # for the watchdog. Any other failure (I/O error, damaged file, read-only
            # filesystem) does not: a queue that keeps failing stops the watchdog's pings and
            # systemd restarts the agent, whose start moves a damaged file aside (or exits 74
            # saying what is wrong).
            self.stats.dropped += 1
            self._last_store_failure = time.monotonic()
            if isinstance(err, StoreFullError):
                self._last_commit = self._last_store_failure
            first, n = self._dropped_since or (window.start_time, 0)
            self._dropped_since = (first, n + 1)
            log.error("window %d NOT stored (%d so far): %s", window.index, self.stats.dropped, err)
            return
        self._last_commit = time.monotonic()
        if self._dropped_since is not None:
            first, n = self._dropped_since
            self._dropped_since = None
            await self.put_event(Gap(event_id=str(uuid.uuid4()), device_id=self.device_id, start_time=first,
                                      end_time=max(first, window.start_time), reason="store_failed", windows=n,
                                      detail=f"{n} windows analysed but not storable (queue full or broken)"))
        if self.on_result is not None:
            self.on_result(result)


@contextlib.asynccontextmanager
async def build_pipeline(cfg: Config, *, classifier: Classifier | None = None,
                         on_result: Callable[[WindowResult], None] | None = None,
                         max_windows: int | None = None) -> AsyncIterator[Pipeline]:
    """Open every stage of ``cfg`` and wire them into a :class:`Pipeline` (not yet running);
    the outbox closes when the block ends.

    Order: the outbox (and the calibration it holds), the capture device (a missing microphone
    is reported before a slow model load), then the classifiers while the acoustics warm up.

    Args:
        cfg: the whole configuration; each stage receives only its own section.
        classifier: an already loaded AST classifier (``demo`` loads its own); else loaded
            here when ``[classifier] enabled``. BirdNET is loaded when ``[birdnet] enabled``.
        on_result: called in the event loop with each stored result.
        max_windows: stop after this many windows (``None``: until stopped or the source ends).

    Raises:
        AgentError: a stage could not start (device, model, queue).
    """
    from agent.analysis.acoustics import choose_calibration
    from agent.capture import make_source

    async with Outbox(cfg.store, device_id=cfg.agent.device_id) as outbox:
        calibration, warning = choose_calibration(cfg.levels, await outbox.latest_calibration())
        if warning:
            log.warning("%s", warning)
        hop = cfg.windows.hop_s if cfg.windows.hop_s not in (None, cfg.windows.length_s) else None
        analyser = AcousticAnalyser(cfg.levels, cfg.indices, cfg.health, calibration, hop_s=hop)
        source = make_source(cfg.capture)
        await asyncio.to_thread(source.open)
        # The acoustics' one-off imports and filter designs run while an ONNX model loads. Not
        # beside torch's import: scipy's array-API probe can see a half-imported torch module.
        rate = getattr(cfg.capture, "sample_rate", None)
        load = functools.partial(load_classifier_slots, cfg.classifier, cfg.birdnet, classifier)
        if classifier is None and cfg.classifier.enabled and cfg.classifier.type == "torch":
            await asyncio.to_thread(analyser.warm_up, rate)
            slots = await asyncio.to_thread(load)
        else:
            warm = asyncio.ensure_future(asyncio.to_thread(analyser.warm_up, rate))
            try:
                slots = await asyncio.to_thread(load)
            finally:
                await warm
        yield Pipeline(
            device_id=cfg.agent.device_id, source=source, windows=cfg.windows, acoustics=analyser,
            classifiers=slots, outbox=outbox, syncer=Syncer(cfg.sync, outbox) if cfg.sync.dsn else None,
            on_result=on_result, max_windows=max_windows, final_sync_timeout_s=cfg.sync.final_timeout_s,
            ops=cfg.ops,
        )
