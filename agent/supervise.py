"""Supervision beside the data flow: small periodic tasks, one job each.

- :class:`Watchdog`: ``WATCHDOG=1`` to systemd only while the pipeline makes progress, and the
  ``STATUS=`` line, every third of the watchdog interval (at most 5 s);
- :class:`ClockWatch`: a :class:`~agent.records.ClockStep` when the wall clock jumps;
- :class:`Housekeeping`: the outbox's eviction policy every :data:`HOUSEKEEPING_INTERVAL_S`;
- :class:`Heartbeats`: a :class:`~agent.records.Heartbeat` every ``[ops] heartbeat_interval_s``,
  and the node-exporter textfile.

:func:`supervise` runs them together once the first audio arrived. They read the pipeline's
state through :class:`Supervised` and never stop the recorder: a failing job is logged and
retried at its next tick. All run in the event loop (not thread-safe).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from agent.errors import StoreError
from agent.ops import SystemdNotifier, heartbeat_metrics, host_snapshot, ntp_synchronised, write_textfile
from agent.records import ClockStep, Gap, Heartbeat

if TYPE_CHECKING:
    from agent.config import OpsConfig
    from agent.pipeline import PipelineStats
    from agent.store import Outbox, StorePressure
    from agent.sync import Syncer

log = logging.getLogger("agent.supervise")

#: A change of (wall clock - boot clock) larger than this between two ticks is a clock step,
#: s. NTP slews at most 500 ppm (0.0025 s over a 5 s tick); steps are larger.
CLOCK_STEP_THRESHOLD_S = 1.0
#: Seconds between two clock checks.
CLOCK_TICK_S = 5.0
#: Seconds between two applications of the outbox's eviction policy (retention, low disk).
HOUSEKEEPING_INTERVAL_S = 60.0


class Supervised(Protocol):
    """What the supervision tasks read from the running pipeline (event loop only)."""

    device_id: str
    stats: PipelineStats
    outbox: Outbox
    syncer: Syncer | None
    notifier: SystemdNotifier
    #: the newest stored window must be younger than this for the watchdog to be fed, s
    commit_deadline_s: float

    @property
    def live(self) -> bool:
        """The source is a live device (a replay waits for the classifier by design)."""

    @property
    def capture_lost(self) -> bool:
        """The capture device is gone and being reconnected."""

    @property
    def started(self) -> float:
        """Monotonic time the pipeline started, s."""

    @property
    def last_commit(self) -> float:
        """Monotonic time of the newest stored window (or window refused for lack of room only),
        s (0: none yet)."""

    def degraded(self, pressure: StorePressure | None = None) -> tuple[str, ...]: ...

    def status_line(self) -> str: ...

    def model_info(self) -> tuple[str | None, str | None]:
        """(model id, model hash) of the first classifier, or (None, None)."""

    async def put_event(self, event: Gap | ClockStep) -> None: ...


async def periodic(interval_s: float, job: Callable[[], Awaitable[None]], failure: str) -> None:
    """Run ``job`` now and then every ``interval_s`` seconds until cancelled; an exception is
    logged as ``"<failure>: <error>"`` and the next tick runs as usual."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # never let supervision stop the recorder
            log.warning("%s: %s", failure, err)
        await asyncio.sleep(interval_s)


class Watchdog:
    """Feeds systemd's watchdog only while the pipeline makes progress and updates ``STATUS=``.

    Progress: frames captured or windows cut since the last tick (a live backlog draining),
    and the newest window committed within ``commit_deadline_s`` (or refused only for lack of
    room after the eviction policy did its part; a queue that fails otherwise is no progress:
    the restart moves a damaged file aside, see ``Pipeline._store``). A replay that is not live
    waits for the classifier by design, so only its commit deadline counts. While the
    microphone is lost, reconnecting to it is the progress: a restart would not bring it back.
    """

    failure = "watchdog tick failed"

    def __init__(self, pipeline: Supervised) -> None:
        self.p = pipeline
        wd = pipeline.notifier.watchdog_interval_s
        #: seconds between ticks: pings at least every third of the watchdog interval
        self.interval_s = min(wd / 3.0, 5.0) if wd else 5.0
        self._last = (-1, -1)
        self._stalled = False

    async def tick(self) -> None:
        p, now = self.p, time.monotonic()
        lost = p.capture_lost
        counts = (p.stats.frames, p.stats.windows)
        moved = lost or not p.live or counts != self._last
        self._last = counts
        newest = p.last_commit or p.started
        if moved and (lost or now - newest <= p.commit_deadline_s):
            p.notifier.watchdog()
            if self._stalled:
                log.info("progress again: feeding the watchdog")
            self._stalled = False
        elif not self._stalled:
            self._stalled = True
            log.warning("no progress (%s)%s", "capture stalled" if not moved else
                        f"no window stored for {now - newest:.0f} s",
                        ": not feeding the watchdog, systemd will restart the agent"
                        if p.notifier.watchdog_interval_s else "")
        p.notifier.status(p.status_line())


def wall_minus_boottime() -> float:
    """Wall-clock time minus the time since boot, s: constant unless the wall clock is stepped
    (``CLOCK_BOOTTIME`` keeps counting through a suspend, unlike ``CLOCK_MONOTONIC``, so a
    suspend is not mistaken for a step)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class ClockWatch:
    """Records a :class:`~agent.records.ClockStep` when wall minus boot time moved by more than
    :data:`CLOCK_STEP_THRESHOLD_S` since the last tick (window times keep following the sample
    count; the step is only recorded)."""

    interval_s = CLOCK_TICK_S
    failure = "clock check failed"

    def __init__(self, pipeline: Supervised) -> None:
        self.p = pipeline
        self._offset = wall_minus_boottime()

    async def tick(self) -> None:
        offset = wall_minus_boottime()
        step, self._offset = offset - self._offset, offset
        if abs(step) > CLOCK_STEP_THRESHOLD_S:
            synced = await asyncio.to_thread(ntp_synchronised)
            log.warning("the wall clock stepped by %+.3f s; window times keep following the sample count "
                        "(the step is recorded)", step)
            await self.p.put_event(ClockStep(event_id=str(uuid.uuid4()), device_id=self.p.device_id,
                                             detected_at=datetime.now(timezone.utc), step_s=round(step, 6),
                                             clock_synchronised=synced))


class Housekeeping:
    """Applies the outbox's eviction policy (retention, low disk) every :data:`HOUSEKEEPING_INTERVAL_S`."""

    interval_s = HOUSEKEEPING_INTERVAL_S
    failure = "eviction policy not applied"

    def __init__(self, pipeline: Supervised) -> None:
        self.p = pipeline

    async def tick(self) -> None:
        try:
            await self.p.outbox.housekeeping()
        except StoreError as err:
            log.warning("eviction policy not applied: %s", err.message)


class Heartbeats:
    """Queues a :class:`~agent.records.Heartbeat` every ``[ops] heartbeat_interval_s`` (the
    sync delivers it) and rewrites ``[ops] textfile_path`` from it."""

    failure = "heartbeat not queued"

    def __init__(self, pipeline: Supervised, ops: OpsConfig) -> None:
        self.p = pipeline
        self.ops = ops
        self.interval_s = ops.heartbeat_interval_s

    async def take(self) -> Heartbeat:
        """Take and queue one heartbeat (and write the textfile when configured)."""
        from agent import __version__

        p = self.p
        queue = await p.outbox.stats()
        pressure = await p.outbox.pressure()
        degraded = p.degraded(pressure) + (("set_aside",) if queue.set_aside else ())
        if degraded:
            log.warning("degraded: %s", ", ".join(degraded))
        host = await asyncio.to_thread(host_snapshot, p.outbox.path)
        model_id, model_hash = p.model_info()
        beat = Heartbeat(
            heartbeat_id=str(uuid.uuid4()), device_id=p.device_id, time=datetime.now(timezone.utc),
            uptime_s=round(time.monotonic() - p.started, 3), **p.stats.heartbeat_counters(),
            queue_depth=queue.unsynced, oldest_unsynced_start=queue.oldest_unsynced_start,
            last_sync_at=await p.outbox.last_synced_at(), model_id=model_id, model_hash=model_hash,
            agent_version=__version__, degraded=degraded, evicted_unsynced=pressure.evicted_unsynced,
            evicted_synced=pressure.evicted_synced, set_aside=queue.set_aside, **host,
        )
        await p.outbox.put_heartbeat(beat)
        p.stats.heartbeats += 1
        if self.ops.textfile_path:
            try:
                await asyncio.to_thread(write_textfile, self.ops.textfile_path, heartbeat_metrics(beat),
                                        {"device": p.device_id})
            except OSError as err:
                log.warning("node-exporter textfile %s not written: %s", self.ops.textfile_path, err)
        return beat

    async def tick(self) -> None:
        await self.take()


async def supervise(pipeline: Supervised, ops: OpsConfig | None, ready: asyncio.Event) -> None:
    """Run every supervision task once ``ready`` is set (the first audio arrived), until cancelled."""
    await ready.wait()
    tasks: list[Watchdog | ClockWatch | Housekeeping | Heartbeats] = [
        Watchdog(pipeline), ClockWatch(pipeline), Housekeeping(pipeline)]
    if ops is not None and ops.heartbeat_interval_s:
        tasks.append(Heartbeats(pipeline, ops))
    await asyncio.gather(*(periodic(t.interval_s, t.tick, t.failure) for t in tasks))


__all__ = ["CLOCK_STEP_THRESHOLD_S", "ClockWatch", "HOUSEKEEPING_INTERVAL_S", "Heartbeats", "Housekeeping",
           "Supervised", "Watchdog", "periodic", "supervise", "wall_minus_boottime"]
