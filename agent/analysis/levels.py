"""Calibrated, unweighted (Z / flat) sound pressure levels of one window.

The calibration chain is scikit-maad's (``maad.spl``, version >= 1.5.1, which fixed the
missing ``Vadc / 2``):

    volt  = x · Vadc / 2                            (``maad.spl.wav2volt``)
    p     = volt / 10^(S/20) / 10^(G/20)            (``maad.spl.volt2pressure``)

with ``x`` the sample (full scale ±1.0), ``Vadc`` the ADC's peak-to-peak range (V), ``S`` the
microphone sensitivity (dB re 1 V/Pa) and ``G`` the total analogue gain (dB); ``p`` is in Pa.

The equivalent continuous sound level over a time T (IEC 61672-1:2013, 3.9, with no frequency
weighting) is

    Leq,T = 10 · log10( (1/T) ∫ p²(t) dt / p0² ),    p0 = 20 µPa

computed on samples as ``10 · log10(mean(p²) / p0²)`` = ``20 · log10(p_rms / p0)``, the same
formula as ``maad.spl.pressure2leq`` (see the scikit-maad documentation, "maad.spl"), which
gives the per-interval series.

Digital silence has ``p_rms = 0`` and an Leq of −inf. Neither SQLite/PostgreSQL ``REAL`` nor
JSON accept −inf portably, so every RMS pressure is floored at :data:`P_RMS_FLOOR_PA`
(1e-12 Pa, i.e. −146.02 dB SPL) and the peak at :data:`PEAK_FLOOR_FS` (1e-12 of full scale,
i.e. −240 dBFS). Both are far below anything a real microphone chain can produce (one LSB of
16-bit audio at the AudioMoth defaults is about −1.3 dB SPL), so a floored value reads as
"digital silence", never as a measurement.
"""

from __future__ import annotations

import math

import numpy as np

from agent.config import LevelsConfig
from agent.records import Levels

#: Reference sound pressure in air, Pa (ISO 1683 / IEC 61672-1).
P_REF_PA = 20e-6
#: Lowest RMS pressure reported, Pa; an all-zero window or interval gets this (-146.02 dB SPL).
P_RMS_FLOOR_PA = 1e-12
#: Lowest peak reported, fraction of full scale; an all-zero window gets -240 dBFS.
PEAK_FLOOR_FS = 1e-12

_LEQ_FLOOR_DB = 20.0 * math.log10(P_RMS_FLOOR_PA / P_REF_PA)


def compute_levels(samples: np.ndarray, sample_rate: int, cfg: LevelsConfig) -> Levels:
    """Calibrated unweighted Leq of a window, its per-interval Leq series and its peak.

    Args:
        samples: mono audio, shape (n,), any real float/int dtype holding full-scale-±1.0
            values (float32 from capture); converted to float64 internally.
        sample_rate: Hz.
        cfg: the ``[levels]`` section: ``gain_db`` (G, dB), ``sensitivity_dbv`` (S, dB re
            1 V/Pa), ``vadc`` (V peak-to-peak), ``series_interval_s`` (s).

    Returns:
        :class:`~agent.records.Levels` with
        ``leq_db`` = 10·log10(mean(p²)/p0²) over the whole window, dB re 20 µPa;
        ``leq_series_db`` = ``maad.spl.pressure2leq(p, sample_rate, dt=series_interval_s)``:
        one Leq per consecutive interval of ``floor(series_interval_s · sample_rate)`` samples,
        ``floor(n / that)`` values (a trailing partial interval is dropped; it still counts
        in ``leq_db``), dB re 20 µPa; ``peak_dbfs`` = 20·log10(max|x|), dBFS.
        Silence is floored as described in the module docstring (never −inf or NaN).

    Raises:
        ValueError: ``samples`` is empty or not one-dimensional, ``sample_rate`` is not
            positive, the samples contain NaN/inf, or ``series_interval_s`` is shorter than
            one sample.
    """
    import maad.spl  # lazy: scikit-maad pulls in pandas (~0.2 s); keep module import cheap

    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or inf")
    if math.floor(cfg.series_interval_s * sample_rate) < 1:
        raise ValueError(
            f"series_interval_s={cfg.series_interval_s} s is shorter than one sample at {sample_rate} Hz"
        )

    p = maad.spl.wav2pressure(x, gain=cfg.gain_db, Vadc=cfg.vadc, sensitivity=cfg.sensitivity_dbv)

    p_rms = max(math.sqrt(float(np.mean(np.square(p)))), P_RMS_FLOOR_PA)
    leq_db = 20.0 * math.log10(p_rms / P_REF_PA)

    # maad floors an all-zero interval at sys.float_info.min (≈ -6000 dB); clip to our floor.
    series = maad.spl.pressure2leq(p, sample_rate, dt=cfg.series_interval_s, pRef=P_REF_PA)
    series = np.maximum(np.asarray(series, dtype=np.float64), _LEQ_FLOOR_DB)

    peak = max(float(np.max(np.abs(x))), PEAK_FLOOR_FS)
    peak_dbfs = 20.0 * math.log10(peak)

    return Levels(
        leq_db=leq_db,
        leq_series_db=tuple(float(v) for v in series),
        peak_dbfs=peak_dbfs,
    )


__all__ = ["compute_levels", "P_REF_PA", "P_RMS_FLOOR_PA", "PEAK_FLOOR_FS"]
