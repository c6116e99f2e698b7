"""Microphone chain health from the content of one window: clipping, DC offset, silence, hum.

Pure numpy (no scipy, no I/O; importing this module costs nothing beyond numpy). Four
measurements, each compared with a ``[health]`` threshold to raise a flag:

- **clipping**: the share of samples with ``|x| >= clip_level_fs``.
- **DC offset**: the mean of the samples, fraction of full scale (flag above
  ``max_dc_offset_fs``, default 0.05; an AudioMoth removes DC in firmware, so ~0.01 suits it).
- **RMS level**: ``20·log10(RMS)`` of the samples with their mean removed, dBFS, full scale
  ±1.0 (a full-scale sine reads −3.01 dBFS: no AES17 +3 dB correction), floored at
  :data:`RMS_FLOOR_DBFS` (−240 dBFS) so that digital silence stores as a finite number.
- **mains hum share**: the share of the window's power (mean removed) in narrow bands around
  the mains frequency and its harmonics, computed for 50 Hz and for 60 Hz (harmonics 1 to
  ``hum_harmonics``), the larger family kept.

Hum share: a Welch power spectrum (Hann segments of :data:`HUM_SEGMENT_S`, 0.5 Hz bins, 50 %
overlap, periodograms summed); the one-sided power in the hum bands over the one-sided power
in all bins, so 0..1. The band around harmonic ``k`` of mains frequency ``fm`` is

    |f − k·fm| <= k · MAINS_DRIFT_HZ + HANN_MAIN_LOBE_BINS · df

(mains drift: EN 50160 allows ±1 % on interconnected grids, in practice within ±0.2 Hz, ``k``
times that at harmonic ``k``; plus the Hann main lobe's half-width, 2 bins).

Details (the derivation, what the bundled recordings and white noise read, why these
defaults): docs/metrology.md#microphone-health; cost and memory:
docs/performance.md#acoustics-cost-per-window.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.analysis.indices import periodic_window
from agent.config import HealthConfig
from agent.records import HEALTH_FLAGS, MicHealth

#: Lowest RMS reported, dBFS: an all-zero or constant window gets this.
RMS_FLOOR_DBFS = -240.0
#: Welch segment length for the hum spectrum, s (bin width 1 / HUM_SEGMENT_S = 0.5 Hz).
HUM_SEGMENT_S = 2.0
#: How far the mains fundamental may sit from its nominal 50/60 Hz, Hz.
MAINS_DRIFT_HZ = 0.2
#: Half-width of the Hann window's main lobe, in bins.
HANN_MAIN_LOBE_BINS = 2
#: Nominal mains frequencies tried.
MAINS_HZ = (50.0, 60.0)

_RMS_FLOOR = 10.0 ** (RMS_FLOOR_DBFS / 20.0)


def _welch_power(
    x: npt.NDArray[np.float64], sample_rate: int
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.float64]]:
    """One-sided power per bin (arbitrary common scale) and the bin frequencies, Hz.

    Hann segments of ``HUM_SEGMENT_S`` (at most ``len(x)``), 50 % overlap, periodograms
    summed; bins strictly between 0 and the Nyquist frequency are doubled (one-sided).
    """
    seg = min(x.size, max(2, int(round(HUM_SEGMENT_S * sample_rate))))
    hop = max(1, seg // 2)
    window = periodic_window("hann", seg)  # DFT-even, as scipy.signal.get_window("hann") gives
    power = np.zeros(seg // 2 + 1)
    for start in range(0, x.size - seg + 1, hop):  # one segment at a time: constant memory
        spectrum = np.fft.rfft(x[start:start + seg] * window)
        power += spectrum.real**2 + spectrum.imag**2
    power[1:(seg + 1) // 2] *= 2.0  # every bin but DC and (even seg) Nyquist has a mirror
    return np.fft.rfftfreq(seg, 1.0 / sample_rate), power


def _hum_share(x: npt.NDArray[np.float64], sample_rate: int, harmonics: int) -> float:
    freqs, power = _welch_power(x, sample_rate)
    total = float(power.sum())
    if total <= 0.0:
        return 0.0
    df = freqs[1] - freqs[0]
    best = 0.0
    for mains in MAINS_HZ:
        in_band = np.zeros(freqs.size, dtype=bool)
        for k in range(1, harmonics + 1):
            half_width = k * MAINS_DRIFT_HZ + HANN_MAIN_LOBE_BINS * df
            in_band |= np.abs(freqs - k * mains) <= half_width
        best = max(best, float(power[in_band].sum()) / total)
    return min(best, 1.0)


def assess_health(
    samples: npt.NDArray[np.floating[Any] | np.integer[Any]], sample_rate: int, cfg: HealthConfig
) -> MicHealth:
    """What one window's content says about the microphone chain.

    Args:
        samples: mono audio, shape (n,), any real float/int dtype holding full-scale-±1.0
            values (float32 from capture: S16_LE / 32768); converted to a float64 copy
            internally (the caller's array is never modified).
        sample_rate: Hz.
        cfg: the ``[health]`` section: ``clip_level_fs``, ``max_clipping_ratio``,
            ``max_dc_offset_fs``, ``silence_dbfs`` (dBFS), ``max_hum_share``,
            ``hum_harmonics``.

    Returns:
        :class:`~agent.records.MicHealth` with

        - ``clipping_ratio``: share of samples with ``|x| >= clip_level_fs``, 0..1;
        - ``dc_offset_fs``: mean of the samples, fraction of full scale, signed;
        - ``rms_dbfs``: ``20·log10(sqrt(mean((x − mean)²)))``, dBFS, floored at −240;
        - ``hum_share``: share of the power (mean removed) in the 50 Hz or 60 Hz hum bands,
          whichever is larger, 0..1 (module docstring); 0.0 when there is no power at all;
        - ``flags``, in :data:`~agent.records.HEALTH_FLAGS` order: ``clipping`` when
          ``clipping_ratio > max_clipping_ratio``; ``dc_offset`` when
          ``|dc_offset_fs| > max_dc_offset_fs``; ``silence`` when every sample is equal (all
          zero, or a constant value) or ``rms_dbfs < silence_dbfs``; ``mains_hum`` when
          ``hum_share > max_hum_share``.

        Every value is a finite Python float.

    Raises:
        ValueError: ``samples`` is empty, not one-dimensional, or contains NaN/inf, or
            ``sample_rate`` is not positive.
    """
    x = np.array(samples, dtype=np.float64)  # always a copy: centred in place below
    if x.ndim != 1:
        raise ValueError(f"samples must be a 1-D array (mono), got {x.ndim} dimensions, shape {x.shape}")
    if x.size == 0:
        raise ValueError("samples is empty: a window needs at least one sample")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite]
        raise ValueError(
            f"samples contain {bad.size} non-finite value(s) (NaN/inf, first {bad[0]!r}) "
            f"of {x.size}"
        )

    clipped = np.count_nonzero(x >= cfg.clip_level_fs) + np.count_nonzero(x <= -cfg.clip_level_fs)
    clipping_ratio = int(clipped) / x.size
    dc = float(np.mean(x))
    flat = bool(x.min() == x.max())
    if flat:
        rms_dbfs, hum_share = RMS_FLOOR_DBFS, 0.0
    else:
        x -= dc
        rms = math.sqrt(float(np.dot(x, x)) / x.size)
        rms_dbfs = 20.0 * math.log10(max(rms, _RMS_FLOOR))
        hum_share = _hum_share(x, sample_rate, cfg.hum_harmonics)

    raised = {
        "clipping": clipping_ratio > cfg.max_clipping_ratio,
        "dc_offset": abs(dc) > cfg.max_dc_offset_fs,
        "silence": flat or rms_dbfs < cfg.silence_dbfs,
        "mains_hum": hum_share > cfg.max_hum_share,
    }
    return MicHealth(
        clipping_ratio=clipping_ratio,
        dc_offset_fs=dc,
        rms_dbfs=rms_dbfs,
        hum_share=hum_share,
        flags=tuple(flag for flag in HEALTH_FLAGS if raised[flag]),
    )


__all__ = ["assess_health", "RMS_FLOOR_DBFS", "HUM_SEGMENT_S", "MAINS_DRIFT_HZ", "HANN_MAIN_LOBE_BINS"]
