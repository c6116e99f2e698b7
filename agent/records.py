"""Frozen, timezone-aware records passed between the pipeline's stages.

capture -> :class:`Chunk` -> windows -> :class:`Window` -> analysis -> :class:`WindowResult`
-> store (SQLite outbox) -> sync (PostgreSQL).

Raw audio exists only in :class:`Chunk` and :class:`Window` (RAM); :class:`WindowResult`,
the only record that reaches storage, holds no samples.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np


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

    samples: np.ndarray
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
    samples: np.ndarray
    clock_synchronised: bool
    xruns: int = 0

    @property
    def duration_s(self) -> float:
        """Window length in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Levels:
    """Calibrated sound pressure levels of one window (unweighted, i.e. Z / flat).

    Attributes:
        leq_db: equivalent continuous sound level of the whole window, dB re 20 µPa.
        leq_series_db: Leq of each consecutive ``series_interval_s`` interval of the window
            (default 1 s), dB re 20 µPa; floor(n_samples / floor(interval_s · rate)) values.
        peak_dbfs: highest absolute sample of the window, dBFS (0 dBFS = full scale).
    """

    leq_db: float
    leq_series_db: tuple[float, ...]
    peak_dbfs: float


@dataclass(frozen=True, slots=True)
class Detection:
    """One label among a window's top-k.

    Attributes:
        rank: 1 = highest score.
        label: AudioSet display name (e.g. "Bird vocalization, bird call, bird song").
        label_index: index into the model's ``id2label`` (0..526 for AudioSet).
        score: sigmoid of the logit, finite, in [0, 1] (multi-label: scores do not sum to 1).
    """

    rank: int
    label: str
    label_index: int
    score: float


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Provenance of the model that produced a classification.

    Attributes:
        model_id: the hub id, else the config's ``_name_or_path``, else the absolute directory
            path; a scaffold's id starts with ``SCAFFOLD-random-weights/`` so no result made
            with it passes for real labels.
        model_hash: sha256 (hex) over the model directory's weight and config files, see
            :func:`agent.analysis.models.model_hash`.
        backend: ``torch`` or ``onnx``.
        is_scaffold: True for a random-weight test model built by ``model scaffold``.
    """

    model_id: str
    model_hash: str
    backend: str
    is_scaffold: bool


class Status(str, enum.Enum):
    """What happened to a window's classification. SPL is computed for every window."""

    CLASSIFIED = "classified"
    SKIPPED_BACKLOG = "skipped_backlog"  # analysis queue full: classification skipped, counted
    FAILED = "failed"  # the model raised; the window's levels are still kept
    DISABLED = "disabled"  # classifier.enabled = false: levels only


@dataclass(frozen=True, slots=True)
class WindowResult:
    """Everything stored and synced about one window; holds no audio.

    Attributes:
        key: the window's idempotency key (see :class:`Window`).
        device_id: the configured device identifier.
        index, start_time, sample_rate, clock_synchronised, xruns: as in :class:`Window`.
        duration_s: window length, s.
        levels: calibrated SPL, see :class:`Levels`.
        status: classification outcome, see :class:`Status`.
        detections: top-k labels, rank order; empty unless ``status`` is CLASSIFIED.
        model: provenance of the classifier, ``None`` if the window was not classified.
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
    model: ModelInfo | None = None
