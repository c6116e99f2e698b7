"""Frozen, timezone-aware records passed between the pipeline's stages.

capture -> :class:`Chunk` -> windows -> :class:`Window` -> analysis -> :class:`WindowResult`
-> store (SQLite outbox) -> sync (PostgreSQL).

Raw audio exists only in :class:`Chunk` and :class:`Window` (RAM); :class:`WindowResult`,
the only record that reaches storage, holds no samples.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True, eq=False)
class Chunk:
    """A run of consecutive samples as one capture read delivered them (typically one ALSA period).

    Attributes:
        samples: float32 array, shape (n_samples,), mono, full scale = ±1.0
            (S16_LE sample / 32768).
        sample_rate: samples per second of this chunk, Hz.
        segment_start: set on the first chunk of a new continuous segment (stream start, a
            new file replayed, or a restart after a device loss): the UTC wall-clock time of
            the segment's first sample. ``None`` for every following chunk of the segment.
        xruns: number of capture overruns detected just before this chunk (samples were
            lost between the previous chunk and this one).
    """

    samples: npt.NDArray[np.float32]
    sample_rate: int
    segment_start: datetime | None = None
    xruns: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Window:
    """A fixed-length window of audio cut from the continuous stream.

    Attributes:
        key: idempotency key, unique per device and window, generated on the device
            (``<stream id>-<index>``); PostgreSQL uses it to refuse duplicates.
        index: window number since the agent's stream started (0-based).
        start_frame: index of the window's first sample since its segment started.
        start_time: UTC time of the first sample: the segment's one wall-clock anchor plus
            ``start_frame / sample_rate``; never a clock read per window.
        sample_rate: Hz.
        samples: float32 array, shape (n_samples,), full scale = ±1.0.
        clock_synchronised: whether the system clock was NTP-synchronised when the window
            closed (kernel ``adjtimex`` status).
        xruns: capture overruns counted while this window was filling.
    """

    key: str
    index: int
    start_frame: int
    start_time: datetime
    sample_rate: int
    samples: npt.NDArray[np.float32]
    clock_synchronised: bool
    xruns: int = 0

    @property
    def duration_s(self) -> float:
        """Window length in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Calibration:
    """The calibration chain a window's levels were computed with, stored with every window
    so that levels can be corrected later (e.g. after a new calibrator reading).

    A level is ``L = L_nominal + offset_db``, where ``L_nominal`` uses the nominal chain
    (``sensitivity_dbv``, ``gain_db``, ``vadc``; scikit-maad's ``wav2pressure``).

    Attributes:
        sensitivity_dbv: microphone sensitivity used, dB re 1 V/Pa.
        gain_db: analogue gain used, dB.
        vadc: ADC full-scale range used, V peak-to-peak.
        offset_db: correction added to every level, dB: ``reference_db`` minus the nominal
            level measured on an acoustic calibrator by ``soundscape-agent calibrate``;
            0.0 when never calibrated.
        calibrated_at: UTC time of that calibrator measurement; ``None`` = nominal chain only.
        reference_db: the calibrator's stated level, dB re 20 µPa (e.g. 94.0); ``None`` when
            never calibrated.
    """

    sensitivity_dbv: float
    gain_db: float
    vadc: float
    offset_db: float = 0.0
    calibrated_at: datetime | None = None
    reference_db: float | None = None


@dataclass(frozen=True, slots=True)
class Levels:
    """Calibrated noise indicators of one window, dB re 20 µPa unless stated.

    Frequency weightings A, C and Z and time weightings F (125 ms) and S (1 s) as IEC
    61672-1:2013 defines them; equivalent levels are energy means over the window.

    Attributes:
        lzeq_db: Z-weighted (unweighted) equivalent continuous sound level, LZeq.
        laeq_db: A-weighted equivalent continuous sound level, LAeq.
        lceq_db: C-weighted equivalent continuous sound level, LCeq.
        lafmax_db: maximum of the A-weighted, F-time-weighted level over the window, LAFmax.
        lafmin_db: minimum of the same, LAFmin.
        lasmax_db: maximum of the A-weighted, S-time-weighted level, LASmax.
        la10_db, la50_db, la90_db: percentile levels: the LAF level exceeded for 10 %, 50 %,
            90 % of the window (LA10 ≥ LA50 ≥ LA90).
        laeq_series_db: LAeq of each consecutive ``series_interval_s`` interval (default
            1 s): floor(n_samples / floor(interval_s · rate)) values.
        lzeq_series_db: LZeq of the same intervals.
        peak_dbfs: highest absolute sample, dBFS (0 dBFS = full scale).
        band_centres_hz: nominal centre frequencies of the one-third-octave bands (IEC
            61260-1:2014, base 10), Hz, ascending; empty when bands are off.
        band_leq_db: Z-weighted Leq of each band, same order and length.
        calibration: the chain and offset these levels used.
    """

    lzeq_db: float
    laeq_db: float
    lceq_db: float
    lafmax_db: float
    lafmin_db: float
    lasmax_db: float
    la10_db: float
    la50_db: float
    la90_db: float
    laeq_series_db: tuple[float, ...]
    lzeq_series_db: tuple[float, ...]
    peak_dbfs: float
    band_centres_hz: tuple[float, ...]
    band_leq_db: tuple[float, ...]
    calibration: Calibration


@dataclass(frozen=True, slots=True)
class AcousticIndices:
    """Acoustic indices of one window, each as scikit-maad's ``maad.features`` computes it
    (:mod:`agent.analysis.indices`, equal to maad's results in the tests) with
    the parameters of the ``[indices]`` section; NaN where an index is undefined (e.g. silence).

    Attributes:
        aci: Acoustic Complexity Index (Pieretti et al. 2011), sum over the spectrogram.
        adi: Acoustic Diversity Index (Villanueva-Rivera et al. 2011), Shannon, nats.
        aei: Acoustic Evenness Index (Villanueva-Rivera et al. 2011), Gini, 0..1.
        bi: Bioacoustic Index (Boelman et al. 2007; soundecology's variant): the area under
            the mean spectrum (dB) above its minimum within the band, per frequency bin; it
            depends on the sample rate and ``nperseg``, so compare only windows with the same
            settings.
        ndsi: Normalised Difference Soundscape Index (Kasten et al. 2012), -1..1.
        hf: spectral entropy Hf (Sueur et al. 2008), 0..1.
        ht: temporal entropy Ht (Sueur et al. 2008), 0..1 (rounding may exceed 1 by ~1e-16).
    """

    aci: float
    adi: float
    aei: float
    bi: float
    ndsi: float
    hf: float
    ht: float


#: Microphone health flags a window can carry (:attr:`MicHealth.flags`).
HEALTH_FLAGS: tuple[str, ...] = ("clipping", "dc_offset", "silence", "mains_hum")


@dataclass(frozen=True, slots=True)
class MicHealth:
    """What the window's content says about the microphone chain.

    Attributes:
        clipping_ratio: share of samples at or beyond the clip level (``[health]
            clip_level_fs``), 0..1.
        dc_offset_fs: mean of the samples, fraction of full scale (signed).
        rms_dbfs: RMS of the samples with the DC removed, dBFS (floored at -240 for digital
            silence).
        hum_share: share of the window's power (DC removed) within the mains-hum bins (50 or
            60 Hz and harmonics, whichever family holds more), 0..1.
        flags: the raised flags, a subset of :data:`HEALTH_FLAGS` in that order; empty = healthy.
    """

    clipping_ratio: float
    dc_offset_fs: float
    rms_dbfs: float
    hum_share: float
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Detection:
    """One label among a window's top-k.

    Attributes:
        rank: 1 = highest score, counted per taxonomy (each classifier ranks its own labels).
        label: AudioSet display name (e.g. "Bird vocalization, bird call, bird song") or a
            BirdNET species ``Scientific name_Common name`` (e.g.
            "Cranioleuca erythrops_Red-faced Spinetail").
        label_index: index into the model's labels (0..526 for AudioSet, 0..6521 for BirdNET).
        score: sigmoid of the logit, finite, in [0, 1] (multi-label: scores do not sum to 1).
        taxonomy: the label set: ``audioset`` (AST) or ``birdnet``.
        offset_s: start of the part of the window that gave the score, s from the window's
            start (BirdNET: the 3 s chunk with the highest score); ``None`` when the score
            is the whole window's (AST).
    """

    rank: int
    label: str
    label_index: int
    score: float
    taxonomy: str = "audioset"
    offset_s: float | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Provenance of the model that produced a classification.

    Attributes:
        model_id: the hub id, else the config's ``_name_or_path``, else the absolute directory
            path; a scaffold's id starts with ``SCAFFOLD-random-weights/`` so no result made
            with it passes for real labels.
        model_hash: sha256 (hex) over the model directory's weight and config files, see
            :func:`agent.analysis.models.model_hash`.
        backend: ``torch``, ``onnx`` (AST) or ``litert`` (BirdNET).
        is_scaffold: True for a random-weight test model built by ``model scaffold``.
        taxonomy: the label set the model scores: ``audioset`` or ``birdnet``.
    """

    model_id: str
    model_hash: str
    backend: str
    is_scaffold: bool
    taxonomy: str = "audioset"


class Status(str, enum.Enum):
    """What happened to a window's classification, per classifier and for the window as a
    whole (:func:`overall_status`). SPL is computed for every window."""

    CLASSIFIED = "classified"
    SKIPPED_BACKLOG = "skipped_backlog"  # analysis queue full: classification skipped, counted
    FAILED = "failed"  # the model raised; the window's levels are still kept
    DISABLED = "disabled"  # no classifier enabled: levels only
    NOT_SCHEDULED = "not_scheduled"  # [classifier] every_n_windows: not this window's turn
    PARTIAL = "partial"  # window only: one classifier ran, another was skipped or failed


def overall_status(statuses: Sequence[Status]) -> Status:
    """A window's status from its classifiers' statuses.

    Args:
        statuses: one per enabled classifier, in configuration order.

    Returns:
        ``DISABLED`` for none; ``CLASSIFIED`` when every classifier classified the window or
        was not scheduled for it (at least one classified); ``NOT_SCHEDULED`` when none was
        scheduled; ``PARTIAL`` when one classified and another was skipped or failed;
        otherwise ``FAILED`` if any failed, else ``SKIPPED_BACKLOG``.
    """
    scheduled = [s for s in statuses if s is not Status.NOT_SCHEDULED]
    if not statuses:
        return Status.DISABLED
    if not scheduled:
        return Status.NOT_SCHEDULED
    if all(s is Status.CLASSIFIED for s in scheduled):
        return Status.CLASSIFIED
    if any(s is Status.CLASSIFIED for s in scheduled):
        return Status.PARTIAL
    return Status.FAILED if Status.FAILED in scheduled else Status.SKIPPED_BACKLOG


@dataclass(frozen=True, slots=True)
class WindowResult:
    """Everything stored and synced about one window; holds no audio.

    Attributes:
        key: the window's idempotency key (see :class:`Window`).
        device_id: the configured device identifier.
        index, start_time, sample_rate, clock_synchronised, xruns: as in :class:`Window`.
        duration_s: window length, s.
        levels: calibrated noise indicators and band levels, see :class:`Levels`.
        status: the window's classification outcome (:func:`overall_status` of
            ``classifier_status``), see :class:`Status`.
        detections: top-k labels of every classifier that ran, each classifier's in rank
            order (AudioSet first); :attr:`Detection.taxonomy` says whose.
        models: provenance of each classifier that classified the window, in configuration
            order; empty if none did. :attr:`model` is the first.
        indices: acoustic indices, ``None`` when ``[indices] enabled = false``.
        health: microphone content health, see :class:`MicHealth`.
        classifier_status: ``(taxonomy, status)`` of each enabled classifier, in
            configuration order (e.g. ``(("audioset", SKIPPED_BACKLOG), ("birdnet",
            CLASSIFIED))``); empty when none is enabled.
    """

    key: str
    device_id: str
    index: int
    start_time: datetime
    duration_s: float
    sample_rate: int
    clock_synchronised: bool
    xruns: int
    levels: Levels
    status: Status
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    models: tuple[ModelInfo, ...] = field(default_factory=tuple)
    indices: AcousticIndices | None = None
    health: MicHealth | None = None
    classifier_status: tuple[tuple[str, Status], ...] = field(default_factory=tuple)

    @property
    def model(self) -> ModelInfo | None:
        """The first classifier's model that classified the window (the legacy one-model
        columns), or ``None``."""
        return self.models[0] if self.models else None

    def model_for(self, taxonomy: str) -> ModelInfo | None:
        """The model of ``taxonomy`` that classified this window, or ``None``."""
        return next((m for m in self.models if m.taxonomy == taxonomy), None)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One health row of the running agent, queued like a window and synced to PostgreSQL's
    ``heartbeats`` table (every ``[ops] heartbeat_interval_s``).

    Counters are since this agent process started. Host values are ``None`` where the host
    has no such information (no thermal zone, not a Raspberry Pi).

    Attributes:
        heartbeat_id: UUID text made on the device: the idempotency key of the row.
        device_id: as ``[agent] device_id``.
        time: when it was taken, timezone-aware UTC.
        uptime_s: seconds since the agent started.
        windows, classified, skipped, failed: windows stored; of those classified,
            classification skipped for backlog, classification failed.
        xruns: capture overruns.
        queue_depth: windows in the outbox not yet synced.
        oldest_unsynced_start: start time of the oldest of those (UTC), or ``None``.
        last_sync_at: server time of the last successful delivery, or ``None`` (none yet).
        cpu_temp_c: SoC temperature, °C.
        throttled: Raspberry Pi ``get_throttled`` bit field; throttle_flags: its bit names.
        disk_free_bytes, disk_total_bytes: the queue's filesystem.
        clock_synchronised: kernel NTP status (``adjtimex``).
        rss_bytes, peak_rss_bytes: this process's ``VmRSS`` and ``VmHWM``.
        model_id, model_hash: the loaded classifier, or ``None`` (levels only).
        agent_version: soundscape-agent's version.
        degraded: why the agent is degraded right now, empty when it is not: ``disk_low``
            (the queue's filesystem below ``[store] min_free_mb``), ``queue_full`` (the queue
            hit its hard cap or the disk filled: windows are being evicted), ``store_failed``
            (a window could not be stored at all), ``capture_lost`` (the microphone is gone;
            retrying), ``sync_failing`` (three or more sync rounds failed in a row),
            ``queue_replaced`` (a damaged queue file was moved aside and a fresh queue started
            within the last day; the ``queue_replaced`` gap says what it held), ``set_aside``
            (the queue holds rows the server refused permanently: ``set_aside``).
        evicted_unsynced: windows ever evicted from this queue before they were synced (the
            eviction policy's hard cap; recorded as gaps).
        evicted_synced: synced windows deleted since the agent started (space or retention).
        dropped_windows: windows since the agent started that could not be stored at all.
        set_aside: rows (windows, events, heartbeats) in the queue that the server refused
            permanently while accepting the rows beside them: kept, no longer sent.
    """

    heartbeat_id: str
    device_id: str
    time: datetime
    uptime_s: float
    windows: int
    classified: int
    skipped: int
    failed: int
    xruns: int
    queue_depth: int
    oldest_unsynced_start: datetime | None
    last_sync_at: datetime | None
    cpu_temp_c: float | None
    throttled: int | None
    throttle_flags: tuple[str, ...]
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    clock_synchronised: bool
    rss_bytes: int | None
    peak_rss_bytes: int | None
    model_id: str | None
    model_hash: str | None
    agent_version: str
    degraded: tuple[str, ...] = ()
    evicted_unsynced: int = 0
    evicted_synced: int = 0
    dropped_windows: int = 0
    set_aside: int = 0

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise ValueError("Heartbeat.time must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of time the server will have no windows for, and why; queued and synced
    like a window (PostgreSQL table ``gaps``), so that a missing hour reads as "microphone
    unplugged" rather than as silence.

    Attributes:
        event_id: UUID text made on the device (the idempotency key).
        device_id: as ``[agent] device_id``.
        start_time: end of the last audio before the gap (UTC, tz-aware; on the capture
            stream's sample-count timeline).
        end_time: start of the first audio after it (UTC, tz-aware), >= ``start_time``.
        reason: ``capture_lost`` (device error or disappearance until it returned),
            ``evicted_unsynced`` (windows deleted unsynced by the eviction policy),
            ``store_failed`` (windows analysed but not storable), ``queue_replaced`` (the queue
            file was damaged: moved aside as ``queue.db.damaged-<UTC time>`` and a fresh one
            started; the gap spans its unsynced windows when they could be read, else it is the
            moment of the replacement).
        detail: the error message or policy note, for people.
        windows: windows lost in the gap when known (evictions, store failures, the unsynced
            windows of a replaced queue), else 0.
    """

    event_id: str
    device_id: str
    start_time: datetime
    end_time: datetime
    reason: str
    detail: str = ""
    windows: int = 0

    def __post_init__(self) -> None:
        if self.start_time.tzinfo is None or self.end_time.tzinfo is None:
            raise ValueError("Gap times must be timezone-aware")
        if self.end_time < self.start_time:
            raise ValueError(f"Gap ends ({self.end_time}) before it starts ({self.start_time})")


@dataclass(frozen=True, slots=True)
class ClockStep:
    """A jump of the system's wall clock seen while the agent ran (NTP stepping a clock that
    was off, an operator's ``date -s``, a Pi without RTC syncing late). Windows keep their
    sample-count timeline (see :mod:`agent.windows`); this record says by how much the wall
    clock disagreed from then on, so times can be corrected afterwards. PostgreSQL table
    ``clock_steps``.

    Attributes:
        event_id: UUID text made on the device (the idempotency key).
        device_id: as ``[agent] device_id``.
        detected_at: wall-clock time just after the step (UTC, tz-aware).
        step_s: the jump, s: positive = the clock moved forward (wall minus monotonic time
            grew by this much between two readings).
        clock_synchronised: the kernel's NTP status after the step (``adjtimex``).
    """

    event_id: str
    device_id: str
    detected_at: datetime
    step_s: float
    clock_synchronised: bool

    def __post_init__(self) -> None:
        if self.detected_at.tzinfo is None:
            raise ValueError("ClockStep.detected_at must be timezone-aware")
