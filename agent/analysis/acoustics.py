"""Everything computed from a window's samples except classification: calibrated levels and
band levels (:mod:`agent.analysis.levels`), acoustic indices
(:mod:`agent.analysis.indices`) and microphone content health
(:mod:`agent.analysis.health`), for every window, in stream order.

:class:`AcousticAnalyser` holds the level meters' filter and time-weighting states between
windows (one meter per sample rate), so it must see the windows in order, from one thread.
Pure computation: no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from agent.analysis.health import assess_health
from agent.analysis.indices import compute_indices
from agent.analysis.levels import LevelMeter, compute_levels, nominal_calibration
from agent.config import HealthConfig, IndicesConfig, LevelsConfig
from agent.errors import InputError
from agent.records import AcousticIndices, Calibration, Levels, MicHealth, Window

#: Calibration checks (``soundscape-agent calibrate``): the calibrator's one-third-octave band
#: must hold the window's energy to within this many dB of the broadband LZeq (a clean tone:
#: IEC 60942 calibrators have < 3 % distortion, i.e. harmonics > 30 dB down) ...
CALIBRATION_TONE_DOMINANCE_DB = 1.0
#: ... and the per-second band level may wander by at most this much, dB (IEC 60942 class 1
#: calibrators are stable to 0.1 dB; 0.5 dB allows for handling and wind).
CALIBRATION_MAX_SPREAD_DB = 0.5


@dataclass(frozen=True, slots=True)
class Acoustics:
    """What :meth:`AcousticAnalyser.analyse` computed for one window.

    Attributes:
        levels: calibrated noise indicators and band levels.
        indices: acoustic indices, ``None`` when ``[indices] enabled = false``.
        health: microphone content health.
    """

    levels: Levels
    indices: AcousticIndices | None
    health: MicHealth


class AcousticAnalyser:
    """Levels, indices and health of each window of a stream.

    Args:
        levels: the ``[levels]`` section.
        indices: the ``[indices]`` section.
        health: the ``[health]`` section.
        calibration: the calibration every level uses (see
            :func:`agent.analysis.levels.nominal_calibration` and ``soundscape-agent calibrate``).
        hop_s: the windows' hop, s, or ``None`` when windows are contiguous (hop = length);
            lets the level meter carry its state across overlapping windows.

    Not thread-safe: call :meth:`analyse` from one thread, window after window.
    """

    def __init__(self, levels: LevelsConfig, indices: IndicesConfig, health: HealthConfig,
                 calibration: Calibration, hop_s: float | None = None) -> None:
        self.levels_cfg = levels
        self.indices_cfg = indices
        self.health_cfg = health
        self.calibration = calibration
        self.hop_s = hop_s
        self._meter: LevelMeter | None = None
        self._meter_rate = 0

    def _meter_for(self, sample_rate: int) -> LevelMeter:
        if self._meter is None or self._meter_rate != sample_rate:
            hop = None if self.hop_s is None else int(round(self.hop_s * sample_rate))
            self._meter = LevelMeter(self.levels_cfg, sample_rate, self.calibration, hop_frames=hop)
            self._meter_rate = sample_rate
        return self._meter

    def warm_up(self, sample_rate: int | None = None) -> None:
        """Do the one-off work of the first window ahead of it: import scipy.signal (the
        slowest import of the acoustics: docs/performance.md#acoustics-cost-per-window) and, for
        a known capture rate, design the filters.

        Call it while the model loads, on another thread, and wait for it before the first
        :meth:`analyse` (not thread-safe with it). Optional: ``analyse`` does the same work
        itself when needed.

        Args:
            sample_rate: the expected capture rate, Hz, or ``None`` when unknown (file replay).
        """
        import scipy.signal  # noqa: F401  (weighting and band filters)

        if sample_rate:
            self._meter_for(int(sample_rate))

    def analyse(self, window: Window) -> Acoustics:
        """Levels (state carried from the previous window when it continues the stream),
        indices and health of ``window``.

        Args:
            window: the next window of the stream (float32 samples, full scale ±1).

        Returns:
            :class:`Acoustics`.

        Raises:
            ValueError: the samples are empty or hold NaN/inf; or the window is too short for
                the ``[indices]`` spectrogram settings (see
                :func:`~agent.analysis.indices.compute_indices`).
        """
        levels = self._meter_for(window.sample_rate).process(window.samples, window.start_frame)
        indices = (compute_indices(window.samples, window.sample_rate, self.indices_cfg)
                   if self.indices_cfg.enabled else None)
        health = assess_health(window.samples, window.sample_rate, self.health_cfg)
        return Acoustics(levels=levels, indices=indices, health=health)


def choose_calibration(cfg: LevelsConfig, stored: Calibration | None) -> tuple[Calibration, str | None]:
    """The calibration ``run`` applies, and a warning to log if any.

    Precedence: ``[levels] calibration_offset_db`` when set (fleet-managed; its measurement
    time is not known to the agent); else the latest calibration measured on this device
    (``stored``, from the local queue) applied to the configured chain; else the nominal chain
    (offset 0).

    Args:
        cfg: the ``[levels]`` section.
        stored: the latest stored calibration, or ``None``.

    Returns:
        ``(calibration, warning)``: the record stored with every window (the configured
        sensitivity, gain and Vadc with the chosen offset), and a message when the stored
        calibration was measured with a different nominal chain (its offset still applies: it
        corrects the chain's real sensitivity, but gain steps are then assumed exact).
    """
    nominal = nominal_calibration(cfg)
    if cfg.calibration_offset_db is not None or stored is None:
        return nominal, None
    chosen = dataclasses.replace(nominal, offset_db=stored.offset_db, calibrated_at=stored.calibrated_at,
                                 reference_db=stored.reference_db)
    changed = [f"{name} {getattr(stored, name):g} -> {getattr(nominal, name):g}"
               for name in ("sensitivity_dbv", "gain_db", "vadc")
               if not math.isclose(getattr(stored, name), getattr(nominal, name), abs_tol=1e-9)]
    warning = None
    if changed:
        warning = (f"the calibration of {stored.calibrated_at:%Y-%m-%d %H:%M} UTC was measured with another chain "
                   f"({', '.join(changed)}); its offset {stored.offset_db:+.2f} dB still applies: recalibrate "
                   "with `soundscape-agent calibrate` after changing the microphone or gain")
    return chosen, warning


def measure_calibration(samples: npt.NDArray[np.float32], sample_rate: int, cfg: LevelsConfig, reference_db: float,
                        frequency_hz: float, when: datetime) -> tuple[Calibration, Levels]:
    """The calibration offset from a recording of an acoustic calibrator (e.g. 94 dB, 1 kHz;
    IEC 60942) held on the microphone.

    The nominal level of the calibrator's tone is the Z-weighted Leq of the one-third-octave
    band containing ``frequency_hz`` (IEC 61260-1 base-10 bands), computed with the configured
    chain and no offset; ``offset_db = reference_db - that level``.

    Args:
        samples: float32 array, shape (n,), full scale ±1; at least 2 s.
        sample_rate: Hz.
        cfg: the ``[levels]`` section (its chain; any configured offset is ignored here).
        reference_db: the calibrator's stated level, dB re 20 µPa.
        frequency_hz: the calibrator's frequency, Hz.
        when: UTC time of the measurement (tz-aware).

    Returns:
        ``(calibration, levels)``: the new calibration (configured chain, the measured offset,
        ``when``, ``reference_db``) and the nominal levels it was derived from.

    Raises:
        InputError: shorter than 2 s; clipped (the tone overdrives the chain at this gain);
            no band at ``frequency_hz``; the tone does not dominate the recording (more than
            :data:`CALIBRATION_TONE_DOMINANCE_DB` between band and broadband level: calibrator
            off, not seated, or noisy); the level is unstable (per-second band levels spread
            more than :data:`CALIBRATION_MAX_SPREAD_DB`); or the offset is beyond ±40 dB.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.size < 2 * sample_rate:
        raise InputError(f"calibration needs at least 2 s of audio, got {x.size / sample_rate:.2f} s",
                         "record longer: --seconds 10")
    peak = float(np.max(np.abs(x)))
    if peak >= 0.999:
        raise InputError(f"the calibrator tone clips (peak {20 * math.log10(peak):.2f} dBFS)",
                         "calibrate at a lower gain ([levels] gain_db and the device's gain setting), "
                         "then set the operating gain back")
    chain = dataclasses.replace(nominal_calibration(cfg), offset_db=0.0)
    band_cfg = cfg.model_copy(update={"bands": True, "band_min_hz": max(10.0, frequency_hz / 1.5),
                                      "band_max_hz": frequency_hz * 1.5})
    levels = compute_levels(x, sample_rate, band_cfg, chain)
    if not levels.band_centres_hz:
        raise InputError(f"no one-third-octave band at {frequency_hz:g} Hz at {sample_rate} Hz sampling",
                         "use the calibrator's frequency (usually 1000 Hz) with --frequency")
    i = int(np.argmin([abs(math.log(f / frequency_hz)) for f in levels.band_centres_hz]))
    band_db = levels.band_leq_db[i]
    if levels.lzeq_db - band_db > CALIBRATION_TONE_DOMINANCE_DB:
        raise InputError(
            f"no calibrator tone: the {levels.band_centres_hz[i]:g} Hz band holds {band_db:.1f} dB of "
            f"{levels.lzeq_db:.1f} dB overall",
            "seat the calibrator firmly on the microphone, switch it on, and run calibrate again in a quiet place")
    series = np.asarray(levels.lzeq_series_db[1:] or levels.lzeq_series_db)  # the first second may hold the switch-on
    spread = float(series.max() - series.min()) if series.size else 0.0
    if spread > CALIBRATION_MAX_SPREAD_DB:
        raise InputError(f"the calibrator level is unstable: per-second levels spread {spread:.2f} dB",
                         "hold the calibrator still on the microphone (no wind) and run calibrate again")
    offset = reference_db - band_db
    if abs(offset) > 40.0:
        raise InputError(f"calibration offset {offset:+.1f} dB is implausible (measured {band_db:.1f} dB nominal "
                         f"for a {reference_db:g} dB calibrator)",
                         "check [levels] gain_db, sensitivity_dbv and vadc against the device")
    return (dataclasses.replace(chain, offset_db=round(offset, 3), calibrated_at=when, reference_db=reference_db),
            levels)


__all__ = ["Acoustics", "AcousticAnalyser", "choose_calibration", "measure_calibration",
           "CALIBRATION_MAX_SPREAD_DB", "CALIBRATION_TONE_DOMINANCE_DB"]
