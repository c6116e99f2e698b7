"""Calibrated noise indicators of one window: frequency weightings A, C, Z, time weightings
F and S, percentile levels and one-third-octave band levels, in dB re 20 µPa.

Pure computation: no I/O, no logging. scipy.signal is imported lazily inside the functions
that need it, so importing this module costs only numpy and the record/config modules;
scikit-maad is not imported at all: its calibration chain is reproduced in
:func:`wav_to_pressure` and checked against ``maad.spl.wav2pressure`` bit for bit in the tests.

Formulas and their sources (p0 = :data:`P_REF_PA` = 20 µPa, ``x`` full scale ±1.0):

- calibration (scikit-maad >= 1.5.1, ``maad.spl.wav2volt`` then ``volt2pressure``):
  ``p = x · Vadc/2 / 10^(S/20) / 10^(G/20)`` Pa, then the :class:`~agent.records.Calibration`'s
  ``offset_db`` added to every level (never to ``peak_dbfs``);
- frequency weightings A and C: the analogue curves of IEC 61672-1:2013, 5.5 and Annex E
  (f1..f4, A1000, C1000 below), realised as the bilinear transform of their high-pass part
  times a linear-phase FIR fitted to the rest; Z flat, with a 2nd-order Butterworth DC-blocking
  high-pass at :data:`Z_HIGHPASS_HZ`;
- time weightings F and S (IEC 61672-1:2013, 3.7-3.8, formula (1)):
  ``y[n] = α·y[n-1] + (1-α)·p_A²[n]``, ``α = exp(-1/(τ·fs))``, τ = :data:`TAU_F_S`,
  :data:`TAU_S_S`;
- LZeq, LAeq, LCeq (IEC 61672-1:2013, 3.9): ``10 lg(mean(p_w²)/p0²)``; LAFmax/LAFmin/LASmax
  the max/min of the per-sample time-weighted level; LA10/LA50/LA90 (ISO 1996-1) the
  90th/50th/10th percentile of the per-sample LAF level; the series one Leq per
  ``floor(series_interval_s · fs)`` samples (``maad.spl.pressure2leq``'s convention);
  ``peak_dbfs = 20 lg(max|x|)``;
- one-third-octave bands (IEC 61260-1:2014, clause 5, base 10): ``fm = 1000·10^(x/10)`` Hz,
  edges ``fm·10^(∓1/20)``, nominal (ISO 266 R10) labels; Butterworth band-passes of order
  ``band_filter_order`` in a multirate bank;
- floors: mean squares at :data:`P_RMS_FLOOR_PA`², peaks at :data:`PEAK_FLOOR_FS`.

:class:`LevelMeter` carries every filter state from one window to the next of a stream and
resets, initialised from the first samples' steady state, at any discontinuity.

Details (derivations, IEC 61672-1 Class 1 evidence and tables, the multirate bank, state and
resets, floors): docs/metrology.md, sections "Calibration chain" to "Floors"; costs:
docs/performance.md#acoustics-cost-per-window.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt

from agent.config import LevelsConfig
from agent.records import Calibration, Levels

#: Reference sound pressure in air, Pa (ISO 1683 / IEC 61672-1:2013, 3.2).
P_REF_PA = 20e-6
#: Lowest RMS pressure reported, Pa; an all-zero window or interval gets this (-146.02 dB SPL
#: before the calibration offset).
P_RMS_FLOOR_PA = 1e-12
#: Lowest peak reported, fraction of full scale; an all-zero window gets -240 dBFS.
PEAK_FLOOR_FS = 1e-12

_MS_FLOOR = P_RMS_FLOOR_PA**2
_P_REF2 = P_REF_PA**2

# IEC 61672-1:2013, Annex E: pole frequencies (Hz) and 1 kHz normalisation constants (dB).
_F1_HZ = 20.598997
_F2_HZ = 107.65265
_F3_HZ = 737.86223
_F4_HZ = 12194.217
_A1000_DB = -2.000
_C1000_DB = -0.062

#: IEC 61672-1:2013, 3.7-3.8: time constants of time weightings F and S, s.
TAU_F_S = 0.125
TAU_S_S = 1.0

#: Z weighting's DC-blocking high-pass (2nd-order Butterworth), Hz. IEC 61672-1:2013 Table 3
#: gives Z as 0 dB with Class 1 limits of +3.0/-inf dB at 10 Hz, +2.5/-inf at 12.5 Hz and
#: +2.0/-4.0 at 16 Hz: this filter reads -0.26 dB at 10 Hz and -0.04 dB at 16 Hz, and keeps a
#: microphone chain's DC offset (a voltage, not a sound pressure) out of LZeq.
Z_HIGHPASS_HZ = 5.0

# Audio processed at once inside a window, s: bounds the meter's working memory (~0.1 KB per
# sample of a block: ~5 MB at 48 kHz) whatever the window length.
_BLOCK_S = 1.0

# Highest frequency a capture rate is trusted with, as a fraction of the rate.
_MAX_FRACTION = 0.45
# FIR correction: candidate lengths (odd, type I) and the accuracy sought against Annex E.
_FIR_LENGTHS = (11, 15, 21, 27, 33, 41, 51, 63)
_FIR_GOAL_DB = 0.01
# Multirate band bank: a band is filtered at fs/2^k when its upper edge <= _AA_GAMMA·fs/2^k;
# anti-alias elliptic low-pass passband ripple / stopband attenuation.
_AA_GAMMA = 0.33
_AA_RP_DB = 0.001
_AA_RS_DB = 80.0

# ISO 266 preferred (R10) mantissas of the nominal mid-band frequencies tabulated in
# IEC 61260-1:2014, for band numbers x = 0..9 (mod 10) of fm = 1000·10^(x/10).
_R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)

# The float64 arrays of the filter designs and states, pressures and levels.
_F64: TypeAlias = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- weightings


def _annex_e_db(curve: str, freqs_hz: _F64) -> _F64:
    """Analogue A or C weighting of IEC 61672-1:2013 Annex E, dB, at ``freqs_hz`` (> 0)."""
    f2 = np.asarray(freqs_hz, dtype=np.float64) ** 2
    if curve == "A":
        num = _F4_HZ**2 * f2**2
        den = (f2 + _F1_HZ**2) * np.sqrt(f2 + _F2_HZ**2) * np.sqrt(f2 + _F3_HZ**2) * (f2 + _F4_HZ**2)
        return 20.0 * np.log10(num / den) - _A1000_DB
    num = _F4_HZ**2 * f2
    den = (f2 + _F1_HZ**2) * (f2 + _F4_HZ**2)
    return 20.0 * np.log10(num / den) - _C1000_DB


def _highpass_zpk(curve: str) -> tuple[list[float], list[float], float]:
    """The analogue high-pass part (zeros, poles in rad/s, gain 1) of Annex E's A or C."""
    w = 2.0 * math.pi
    if curve == "A":
        return [0.0] * 4, [-w * _F1_HZ, -w * _F1_HZ, -w * _F2_HZ, -w * _F3_HZ], 1.0
    return [0.0] * 2, [-w * _F1_HZ, -w * _F1_HZ], 1.0


@dataclass(frozen=True, slots=True, eq=False)
class _Weighting:
    sos: _F64  # (k, 6) float64: bilinear high-pass part
    fir: _F64  # (L,) float64: linear-phase correction (low-pass part)
    sos_zi: _F64  # (k, 2): sosfilt_zi(sos), steady state for a unit input
    sos_dc: float  # DC gain of sos (0 for a high-pass)
    fir_zi: _F64  # (L-1,): lfilter_zi(fir, 1)


def _fir_amplitude(coef: _F64, omega: _F64) -> _F64:
    """Amplitude of a type I FIR given as cosine coefficients c0 + Σ ck·cos(k·ω)."""
    amplitude: _F64 = np.cos(np.outer(omega, np.arange(coef.size))) @ coef
    return amplitude


@functools.lru_cache(maxsize=32)
def _weighting_design(curve: str, sample_rate: int) -> _Weighting:
    """Design the digital A, C or Z weighting for ``sample_rate`` (docs/metrology.md#frequency-weightings)."""
    import scipy.signal as sps  # lazy: scipy.signal costs ~0.6 s to import
    if curve == "Z":  # flat, but no DC or infrasound: a 2nd-order Butterworth high-pass
        sos = sps.butter(2, Z_HIGHPASS_HZ, btype="highpass", output="sos", fs=float(sample_rate))
        one = np.ones(1)
        return _Weighting(sos=sos, fir=one, sos_zi=sps.sosfilt_zi(sos), sos_dc=0.0, fir_zi=np.zeros(0))
    z, p, k = _highpass_zpk(curve)
    zd, pd, kd = sps.bilinear_zpk(z, p, k, float(sample_rate))
    sos = sps.zpk2sos(zd, pd, kd)

    n_grid = 4096
    freqs = np.linspace(0.5, n_grid, n_grid) * (sample_rate / 2.0 / n_grid)  # (0, fs/2]
    omega = 2.0 * math.pi * freqs / sample_rate
    _, h_hp = sps.sosfreqz(sos, worN=freqs, fs=sample_rate)
    target_db = _annex_e_db(curve, freqs)
    ratio = 10.0 ** (target_db / 20.0) / np.abs(h_hp)
    weight = np.where(freqs <= _MAX_FRACTION * sample_rate, 1.0, 0.05) / ratio
    check = (freqs >= 10.0) & (freqs <= _MAX_FRACTION * sample_rate)

    best = None
    for length in _FIR_LENGTHS:
        basis = np.cos(np.outer(omega, np.arange((length + 1) // 2)))
        coef, *_ = np.linalg.lstsq(basis * weight[:, None], ratio * weight, rcond=None)
        total_db = 20.0 * np.log10(np.abs(h_hp * _fir_amplitude(coef, omega)))
        err = float(np.max(np.abs(total_db - target_db)[check])) if check.any() else 0.0
        best = coef
        if err <= _FIR_GOAL_DB:
            break
    assert best is not None
    fir = np.concatenate([best[:0:-1] / 2.0, best[:1], best[1:] / 2.0])

    sos_zi = sps.sosfilt_zi(sos)
    sos_dc = float(np.prod(sos[:, :3].sum(axis=1) / sos[:, 3:].sum(axis=1)))
    fir_zi = sps.lfilter_zi(fir, [1.0])
    return _Weighting(sos=sos, fir=fir, sos_zi=sos_zi, sos_dc=sos_dc, fir_zi=fir_zi)


def weighting_response_db(
    curve: str, sample_rate: int, freqs_hz: npt.NDArray[np.floating[Any]]
) -> npt.NDArray[np.float64]:
    """Magnitude response of the digital frequency weighting :class:`LevelMeter` uses.

    Args:
        curve: ``"A"``, ``"C"`` or ``"Z"`` (IEC 61672-1:2013, 5.5; Z is flat, 0 dB, from 10 Hz
            up; here with a DC-blocking high-pass at :data:`Z_HIGHPASS_HZ`).
        sample_rate: capture rate, Hz (positive int).
        freqs_hz: frequencies, Hz, any shape, each in [0, sample_rate/2].

    Returns:
        float64 array of ``freqs_hz``'s shape: ``20·lg|H(e^{j2πf/fs})|``, dB, of the cascade
        actually run (bilinear high-pass sections times the FIR correction,
        docs/metrology.md#frequency-weightings); -inf at 0 Hz (zeros at DC, Z included).

    Raises:
        ValueError: unknown curve, non-positive rate, or a frequency outside [0, fs/2] or
            not finite.
    """
    import scipy.signal as sps  # lazy: scipy.signal costs ~0.6 s to import
    curve = _check_curve(curve)
    sample_rate = _check_rate(sample_rate)
    f = np.asarray(freqs_hz, dtype=np.float64)
    if not np.all(np.isfinite(f)) or np.any(f < 0) or np.any(f > sample_rate / 2.0):
        raise ValueError(f"frequencies must be finite and within [0, {sample_rate / 2} Hz]")
    design = _weighting_design(curve, sample_rate)
    flat = f.reshape(-1)
    _, h_sos = sps.sosfreqz(design.sos, worN=flat, fs=sample_rate)
    _, h_fir = sps.freqz(design.fir, worN=flat, fs=sample_rate)
    with np.errstate(divide="ignore"):
        response_db: npt.NDArray[np.float64] = (20.0 * np.log10(np.abs(h_sos * h_fir))).reshape(f.shape)
        return response_db


# --------------------------------------------------------------------------- bands


def third_octave_bands(
    min_hz: float, max_hz: float, sample_rate: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """One-third-octave bands of IEC 61260-1:2014 (base 10) between two nominal frequencies.

    Exact mid-band frequency ``fm = fr·G^(x/b) = 1000·10^(x/10)`` Hz for integer band number
    x (clause 5: G = 10^(3/10), fr = 1000 Hz, b = 3), edges ``fm·10^(-1/20)`` and
    ``fm·10^(+1/20)`` (geometric mean fm); nominal frequencies are the standard's preferred
    (ISO 266 R10) values: 25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500,
    630, 800, 1000, 1250, ... 20000 Hz (band numbers x = -16 ... 13).

    Args:
        min_hz, max_hz: nominal mid-band frequency of the lowest and highest band wanted, Hz
            (a band is kept when its nominal frequency lies in [min_hz, max_hz], 1e-6
            relative tolerance).
        sample_rate: capture rate, Hz; bands whose upper edge is not below the Nyquist
            frequency (sample_rate / 2) are dropped.

    Returns:
        ``(nominal, exact, lower, upper)``: four float64 arrays of shape (n_bands,), Hz,
        ascending; all empty when no band qualifies.

    Raises:
        ValueError: ``min_hz`` or ``max_hz`` not finite and positive, ``min_hz > max_hz``,
            or a non-positive ``sample_rate``.
    """
    sample_rate = _check_rate(sample_rate)
    if not (math.isfinite(min_hz) and math.isfinite(max_hz) and min_hz > 0 and max_hz > 0):
        raise ValueError(f"band limits must be finite and positive, got {min_hz}, {max_hz}")
    if min_hz > max_hz:
        raise ValueError(f"min_hz ({min_hz}) must not exceed max_hz ({max_hz})")
    x_lo = math.floor(10.0 * math.log10(min_hz / 1000.0)) - 1
    x_hi = math.ceil(10.0 * math.log10(max_hz / 1000.0)) + 1
    xs = np.arange(x_lo, x_hi + 1)
    nominal = np.array([_R10[x % 10] * 10.0 ** (3 + x // 10) for x in xs], dtype=np.float64)
    exact = 1000.0 * 10.0 ** (xs / 10.0)
    lower = exact * 10.0 ** (-1.0 / 20.0)
    upper = exact * 10.0 ** (1.0 / 20.0)
    keep = (
        (nominal >= min_hz * (1 - 1e-6))
        & (nominal <= max_hz * (1 + 1e-6))
        & (upper < 0.5 * sample_rate)
    )
    return nominal[keep], exact[keep], lower[keep], upper[keep]


@dataclass(frozen=True, slots=True, eq=False)
class _BandBank:
    nominal: _F64  # (nb,) Hz
    stage: tuple[int, ...]  # decimation stage of each band (rate fs / 2**stage)
    by_stage: tuple[tuple[int, ...], ...]  # band indices per stage 0..n_stages-1
    sos: tuple[_F64, ...]  # per band, (order, 6)
    sos_zi: tuple[_F64, ...]  # per band, sosfilt_zi
    aa_sos: _F64  # anti-alias low-pass, normalised (same at every stage)
    aa_zi: _F64
    aa_dc: float

    @property
    def n_stages(self) -> int:
        return len(self.by_stage)


@functools.lru_cache(maxsize=1)
def _aa_design() -> tuple[_F64, _F64, float]:
    import scipy.signal as sps  # lazy: scipy.signal costs ~0.6 s to import
    order, wn = sps.ellipord(_AA_GAMMA, 1.0 - _AA_GAMMA, _AA_RP_DB, _AA_RS_DB)
    sos = sps.ellip(order, _AA_RP_DB, _AA_RS_DB, wn, output="sos")
    zi = sps.sosfilt_zi(sos)
    dc = float(np.prod(sos[:, :3].sum(axis=1) / sos[:, 3:].sum(axis=1)))
    return sos, zi, dc


@functools.lru_cache(maxsize=16)
def _band_design(sample_rate: int, min_hz: float, max_hz: float, order: int) -> _BandBank:
    import scipy.signal as sps  # lazy: scipy.signal costs ~0.6 s to import
    nominal, _exact, lower, upper = third_octave_bands(min_hz, max_hz, sample_rate)
    stages = [
        max(0, math.floor(math.log2(_AA_GAMMA * sample_rate / hi))) for hi in upper
    ]
    n_stages = (max(stages) + 1) if stages else 0
    soss, zis = [], []
    for lo, hi, k in zip(lower, upper, stages, strict=True):  # one stage per band
        sos = sps.butter(order, [lo, hi], btype="bandpass", output="sos", fs=sample_rate / 2**k)
        zi = sps.sosfilt_zi(sos)
        soss.append(sos)
        zis.append(zi)
    aa_sos, aa_zi, aa_dc = _aa_design()
    return _BandBank(
        nominal=nominal,
        stage=tuple(stages),
        by_stage=tuple(tuple(j for j, s in enumerate(stages) if s == k) for k in range(n_stages)),
        sos=tuple(soss),
        sos_zi=tuple(zis),
        aa_sos=aa_sos,
        aa_zi=aa_zi,
        aa_dc=aa_dc,
    )


# --------------------------------------------------------------------------- streaming state


def _sosfilt(sos: _F64, x: _F64, zi: _F64) -> tuple[_F64, _F64]:
    import scipy.signal as sps  # lazy (cached in sys.modules after the first call)

    if x.size == 0:  # scipy refuses empty input
        return x, zi
    y_zf: tuple[_F64, _F64] = sps.sosfilt(sos, x, zi=zi)
    return y_zf


def _lfilter(b: _F64, a: _F64, x: _F64, zi: _F64) -> tuple[_F64, _F64]:
    import scipy.signal as sps  # lazy (cached in sys.modules after the first call)

    if x.size == 0:
        return x, zi
    y_zf: tuple[_F64, _F64] = sps.lfilter(b, a, x, zi=zi)
    return y_zf


@dataclass(slots=True)
class _BandState:
    aa_zi: list[_F64]  # per decimation stage 1..K
    phase: list[int]  # per stage 1..K: index in the next chunk of the first sample kept
    band_zi: list[_F64]  # per band


@dataclass(slots=True)
class _State:
    z: tuple[_F64, _F64]  # (sos zi, fir zi) of Z (its DC-blocking high-pass)
    a: tuple[_F64, _F64]  # (sos zi, fir zi) of A
    c: tuple[_F64, _F64]
    f_zi: _F64  # (1,) lfilter state of the F time weighting
    s_zi: _F64  # (1,) of S
    bands: _BandState | None


def _run_weighting(w: _Weighting, x: _F64, st: tuple[_F64, _F64]) -> tuple[_F64, tuple[_F64, _F64]]:
    y, z_sos = _sosfilt(w.sos, x, st[0])
    y, z_fir = _lfilter(w.fir, _ONE, y, st[1])
    return y, (z_sos, z_fir)


_ONE = np.ones(1)


def _run_bands(
    bank: _BandBank, x: _F64, st: _BandState
) -> tuple[_F64, npt.NDArray[np.int64], _BandState]:
    """Stream ``x`` (Pa) through the multirate bank: per-band Σy², sample counts, new state."""
    nb = len(bank.sos)
    sums = np.zeros(nb)
    counts = np.zeros(nb, dtype=np.int64)
    new = _BandState(aa_zi=[], phase=[], band_zi=[np.empty(0)] * nb)
    cur = x
    for k in range(bank.n_stages):
        if k > 0:
            y, zf = _sosfilt(bank.aa_sos, cur, st.aa_zi[k - 1])
            ph = st.phase[k - 1]
            cur = y[ph::2]
            new.aa_zi.append(zf)
            new.phase.append((ph - y.size) % 2)
        for j in bank.by_stage[k]:
            yb, zf = _sosfilt(bank.sos[j], cur, st.band_zi[j])
            sums[j] = float(np.dot(yb, yb))
            counts[j] = yb.size
            new.band_zi[j] = zf
    return sums, counts, new


def _initial_band_state(bank: _BandBank, v: float) -> _BandState:
    st = _BandState(aa_zi=[], phase=[], band_zi=[np.empty(0)] * len(bank.sos))
    for k in range(bank.n_stages):
        if k > 0:
            st.aa_zi.append(bank.aa_zi * v)
            st.phase.append(0)
            v *= bank.aa_dc
        for j in bank.by_stage[k]:
            st.band_zi[j] = bank.sos_zi[j] * v
    return st


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True, eq=False)
class LevelTrace:
    """Per-sample signals behind one window's :class:`~agent.records.Levels` (for tests,
    plots and reference computations; :meth:`LevelMeter.process_with_trace`).

    Attributes:
        pz_pa, pa_pa, pc_pa: Z-, A- and C-weighted sound pressure, Pa (nominal chain, the
            calibration offset is not applied to pressures), float64, shape (n,).
        laf_db, las_db: A-weighted F- and S-time-weighted level at every sample, dB re 20 µPa
            with the calibration offset added, float64, shape (n,).
    """

    pz_pa: npt.NDArray[np.float64]
    pa_pa: npt.NDArray[np.float64]
    pc_pa: npt.NDArray[np.float64]
    laf_db: npt.NDArray[np.float64]
    las_db: npt.NDArray[np.float64]


def wav_to_pressure(
    samples: npt.NDArray[np.floating[Any] | np.integer[Any]], calibration: Calibration
) -> npt.NDArray[np.float64]:
    """Instantaneous sound pressure of full-scale samples through a calibration chain.

    ``p = x · Vadc/2 · 10^(-S/20) / 10^(G/20)``, in scikit-maad's order of operations
    (``maad.spl.wav2volt`` then ``maad.spl.volt2pressure``, version >= 1.5.1), so the result
    equals ``maad.spl.wav2pressure(x, gain=G, Vadc=Vadc, sensitivity=S)`` bit for bit (tested)
    without importing scikit-maad. ``offset_db`` is not applied here (it is added to levels in
    dB).

    Args:
        samples: shape (n,), any real dtype, full scale ±1.0.
        calibration: ``sensitivity_dbv`` S (dB re 1 V/Pa), ``gain_db`` G (dB), ``vadc`` (V
            peak-to-peak ADC range).

    Returns:
        float64 array, shape (n,), Pa.
    """
    volt = np.asarray(samples, dtype=np.float64) * calibration.vadc / 2
    coeff = 1 / 10 ** (calibration.sensitivity_dbv / 20)
    return volt * coeff / 10 ** (calibration.gain_db / 20)


class LevelMeter:
    """A streaming sound level meter for consecutive (possibly overlapping) windows of one
    capture stream: frequency weightings A/C/Z, time weightings F/S and one-third-octave
    bands with state carried across windows (see the module docstring for every formula and
    its source).

    Args:
        cfg: the ``[levels]`` section: ``series_interval_s`` (s), ``bands``, ``band_min_hz``,
            ``band_max_hz`` (Hz), ``band_filter_order``. The calibration chain comes from
            ``calibration``, not from ``cfg``.
        sample_rate: capture rate, Hz (positive int; 16000-48000 verified).
        calibration: chain (sensitivity dB re 1 V/Pa, gain dB, Vadc V) passed to
            :func:`wav_to_pressure` (``maad.spl.wav2pressure``) and ``offset_db`` added to every level; returned as
            ``Levels.calibration``. :func:`nominal_calibration` builds one from ``cfg``.
        hop_frames: the windows' hop, samples; ``None`` = contiguous windows (hop = window
            length). With ``hop < n`` the state is snapshot at sample ``hop`` of each window.

    Raises:
        ValueError: non-positive ``sample_rate`` or ``hop_frames``, or ``series_interval_s``
            shorter than one sample.

    Not thread-safe (it holds the stream's state): feed one stream's windows in order from
    one thread. Filter designs are cached per rate and shared between meters (read-only).
    Working memory: the window's per-sample LAF (8 bytes per sample) plus the block being
    filtered (:data:`_BLOCK_S` of audio at a time); figures in
    docs/performance.md#acoustics-cost-per-window.
    """

    def __init__(
        self, cfg: LevelsConfig, sample_rate: int, calibration: Calibration, hop_frames: int | None = None
    ) -> None:
        self._rate = _check_rate(sample_rate)
        if hop_frames is not None and (int(hop_frames) != hop_frames or hop_frames < 1):
            raise ValueError(f"hop_frames must be a positive integer or None, got {hop_frames}")
        self._hop = None if hop_frames is None else int(hop_frames)
        self._interval = math.floor(cfg.series_interval_s * self._rate)
        if self._interval < 1:
            raise ValueError(
                f"series_interval_s={cfg.series_interval_s} s is shorter than one sample at {self._rate} Hz"
            )
        self._calibration = calibration
        self._offset = float(calibration.offset_db)
        self._z = _weighting_design("Z", self._rate)
        self._a = _weighting_design("A", self._rate)
        self._c = _weighting_design("C", self._rate)
        self._alpha_f = math.exp(-1.0 / (TAU_F_S * self._rate))
        self._alpha_s = math.exp(-1.0 / (TAU_S_S * self._rate))
        self._bank = (
            _band_design(self._rate, float(cfg.band_min_hz), float(cfg.band_max_hz), int(cfg.band_filter_order))
            if cfg.bands
            else None
        )
        self._band_centres = (
            tuple(float(v) for v in self._bank.nominal) if self._bank is not None else ()
        )
        self._state: _State | None = None
        self._next_start: int | None = None

    @property
    def sample_rate(self) -> int:
        """The capture rate the meter was designed for, Hz."""
        return self._rate

    @property
    def band_centres_hz(self) -> tuple[float, ...]:
        """Nominal mid-band frequencies of the bands this meter reports, Hz (empty if off)."""
        return self._band_centres

    def reset(self) -> None:
        """Forget the carried state: the next window initialises it
        (docs/metrology.md#state-windows-and-resets)."""
        self._state = None
        self._next_start = None

    def process(self, samples: npt.NDArray[np.floating[Any] | np.integer[Any]], start_frame: int) -> Levels:
        """The noise indicators of one window, continuing the stream's filter state.

        Args:
            samples: one window, shape (n,), float32 (any real dtype accepted), full scale
                ±1.0; converted to float64.
            start_frame: index of the window's first sample within its continuous segment
                (0 at a segment's start). Unless it equals the previous window's
                ``start_frame + min(hop, n)`` the meter resets first.

        Returns:
            :class:`~agent.records.Levels` (all levels dB re 20 µPa with the calibration
            offset added; ``peak_dbfs`` in dBFS; see the module docstring).

        Raises:
            ValueError: ``samples`` empty, not 1-D, or holding NaN/inf; ``start_frame``
                negative. The meter's state is unchanged then.
        """
        return self._process(samples, start_frame, trace=False)[0]

    def process_with_trace(
        self, samples: npt.NDArray[np.floating[Any] | np.integer[Any]], start_frame: int
    ) -> tuple[Levels, LevelTrace]:
        """As :meth:`process`, also returning the per-sample :class:`LevelTrace` (n float64
        values per signal, ~40 bytes per sample). Same errors."""
        levels, trace = self._process(samples, start_frame, trace=True)
        assert trace is not None
        return levels, trace

    # -- internals

    def _process(
        self, samples: npt.NDArray[np.floating[Any] | np.integer[Any]], start_frame: int, trace: bool
    ) -> tuple[Levels, LevelTrace | None]:
        x = np.asarray(samples)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("samples contain NaN or inf")
        if int(start_frame) != start_frame or start_frame < 0:
            raise ValueError(f"start_frame must be a non-negative integer, got {start_frame}")
        start_frame = int(start_frame)
        n = x.size
        split = n if self._hop is None else min(self._hop, n)
        cal = self._calibration
        m = self._interval
        k = n // m

        fresh = self._state is None or start_frame != self._next_start
        # A fresh state is the filters' steady state for the mean of the first 0.1 s (the
        # chain's DC offset, if any), so neither a DC step nor one noisy first sample rings.
        st = (self._initial_state(float(np.mean(self._pressure(x[: max(1, round(0.1 * self._rate))]))))
              if fresh else self._state)
        assert st is not None
        if fresh:  # time weighting starts from the mean square of the first τ (module docstring)
            head = self._pressure(x[: max(1, round(TAU_S_S * self._rate))])
            tw_head = _run_weighting(self._a, head, st.a)[0] ** 2 + _MS_FLOOR
            st = dataclasses.replace(
                st,
                f_zi=np.array([self._alpha_f * float(np.mean(tw_head[: max(1, round(TAU_F_S * self._rate))]))]),
                s_zi=np.array([self._alpha_s * float(np.mean(tw_head))]),
            )

        # Block by block (at most _BLOCK_S of audio at a time, split at the hop snapshot), so
        # working memory stays a few MB whatever the window length; only the per-sample LAF
        # level (for the percentiles) spans the window.
        sum_z = sum_a = sum_c = 0.0
        series_a = np.zeros(k + 1)
        series_z = np.zeros(k + 1)
        laf = np.empty(n)
        las_max = -math.inf
        band_sums = band_counts = None
        mid: _State | None = None
        traces: list[tuple[_F64, ...]] = []
        block = max(1, round(_BLOCK_S * self._rate))
        bounds = sorted({*range(0, n, block), split, n})
        for b0, b1 in zip(bounds[:-1], bounds[1:], strict=True):
            p = self._pressure(x[b0:b1])
            pz, z_zi = _run_weighting(self._z, p, st.z)
            pa, a_zi = _run_weighting(self._a, p, st.a)
            pc, c_zi = _run_weighting(self._c, p, st.c)
            pa2, pc2, pz2 = pa * pa, pc * pc, pz * pz
            tw_in = pa2 + _MS_FLOOR
            ms_f, f_zi = self._exp(self._alpha_f, tw_in, st.f_zi)
            ms_s, s_zi = self._exp(self._alpha_s, tw_in, st.s_zi)
            bands = st.bands
            if self._bank is not None and st.bands is not None:
                sums, counts, bands = _run_bands(self._bank, p, st.bands)
                band_sums = sums if band_sums is None else band_sums + sums
                band_counts = counts if band_counts is None else band_counts + counts
            st = _State(z=z_zi, a=a_zi, c=c_zi, f_zi=f_zi, s_zi=s_zi, bands=bands)
            if b1 == split:
                mid = st
            sum_z += float(np.sum(pz2))
            sum_a += float(np.sum(pa2))
            sum_c += float(np.sum(pc2))
            idx = np.minimum(np.arange(b0, b1) // m, k)  # samples past the last full interval -> k
            series_a += np.bincount(idx, weights=pa2, minlength=k + 1)
            series_z += np.bincount(idx, weights=pz2, minlength=k + 1)
            laf[b0:b1] = 10.0 * np.log10(ms_f / _P_REF2) + self._offset
            las_max = max(las_max, float(np.max(ms_s)))
            if trace:
                traces.append((pz, pa, pc, ms_s))
        assert mid is not None
        self._state = mid
        self._next_start = start_frame + split

        band_levels: tuple[float, ...] = ()
        if band_sums is not None and band_counts is not None:
            ms_bands = np.where(band_counts > 0, band_sums / np.maximum(band_counts, 1), 0.0)
            band_levels = tuple(float(v) for v in self._db(ms_bands))
        la90, la50, la10 = np.percentile(laf, [10.0, 50.0, 90.0])
        peak = max(float(np.max(np.abs(x))), PEAK_FLOOR_FS)

        levels = Levels(
            lzeq_db=float(self._db(sum_z / n)),
            laeq_db=float(self._db(sum_a / n)),
            lceq_db=float(self._db(sum_c / n)),
            lafmax_db=float(np.max(laf)),
            lafmin_db=float(np.min(laf)),
            lasmax_db=float(self._db(las_max)),
            la10_db=float(la10),
            la50_db=float(la50),
            la90_db=float(la90),
            laeq_series_db=tuple(float(v) for v in self._db(series_a[:k] / m)),
            lzeq_series_db=tuple(float(v) for v in self._db(series_z[:k] / m)),
            peak_dbfs=20.0 * math.log10(peak),
            band_centres_hz=self._band_centres if self._bank is not None else (),
            band_leq_db=band_levels,
            calibration=cal,
        )
        tr = None
        if trace:
            pz, pa, pc, ms_s = (np.concatenate(parts) for parts in zip(*traces, strict=True))
            tr = LevelTrace(pz_pa=pz, pa_pa=pa, pc_pa=pc, laf_db=laf, las_db=self._db(ms_s))
        return levels, tr

    def _pressure(self, x: npt.NDArray[np.floating[Any] | np.integer[Any]]) -> _F64:
        """Sound pressure, Pa, float64, of full-scale samples through the calibration chain."""
        return wav_to_pressure(x, self._calibration)

    @overload
    def _db(self, mean_square: float) -> float: ...

    @overload
    def _db(self, mean_square: _F64) -> _F64: ...

    def _db(self, mean_square: float | _F64) -> float | _F64:
        """dB re 20 µPa of a mean square (Pa²), floored, plus the calibration offset."""
        return 10.0 * np.log10(np.maximum(mean_square, _MS_FLOOR) / _P_REF2) + self._offset

    @staticmethod
    def _exp(alpha: float, x: _F64, zi: _F64) -> tuple[_F64, _F64]:
        return _lfilter(np.array([1.0 - alpha]), np.array([1.0, -alpha]), x, zi)

    def _initial_state(self, v: float) -> _State:
        def weighting(w: _Weighting) -> tuple[_F64, _F64]:
            return (w.sos_zi * v, w.fir_zi * (v * w.sos_dc))

        return _State(
            z=weighting(self._z),
            a=weighting(self._a),
            c=weighting(self._c),
            f_zi=np.zeros(1),  # replaced from the window's first τ in _process
            s_zi=np.zeros(1),
            bands=_initial_band_state(self._bank, v) if self._bank is not None else None,
        )


def nominal_calibration(cfg: LevelsConfig) -> Calibration:
    """The calibration chain configured in ``cfg`` as a :class:`~agent.records.Calibration`.

    Args:
        cfg: the ``[levels]`` section (``sensitivity_dbv`` dB re 1 V/Pa, ``gain_db`` dB,
            ``vadc`` V peak-to-peak, ``calibration_offset_db`` dB or None).

    Returns:
        ``Calibration(sensitivity_dbv, gain_db, vadc, offset_db=calibration_offset_db or 0.0,
        calibrated_at=None, reference_db=None)``.
    """
    return Calibration(
        sensitivity_dbv=float(cfg.sensitivity_dbv),
        gain_db=float(cfg.gain_db),
        vadc=float(cfg.vadc),
        offset_db=float(cfg.calibration_offset_db) if cfg.calibration_offset_db is not None else 0.0,
        calibrated_at=None,
    )


def compute_levels(
    samples: npt.NDArray[np.floating[Any] | np.integer[Any]],
    sample_rate: int,
    cfg: LevelsConfig,
    calibration: Calibration | None = None,
) -> Levels:
    """One-shot levels of a single window: a fresh :class:`LevelMeter` (state initialised from
    this window, docs/metrology.md#state-windows-and-resets) processing ``samples`` as a
    segment starting at frame 0.

    Args:
        samples: shape (n,), real (float32 from capture), full scale ±1.0.
        sample_rate: Hz.
        cfg: the ``[levels]`` section.
        calibration: the chain to use; ``None`` = :func:`nominal_calibration` of ``cfg``.

    Returns:
        :class:`~agent.records.Levels`, dB re 20 µPa (offset added), see the module docstring.

    Raises:
        ValueError: as :class:`LevelMeter` and :meth:`LevelMeter.process` (empty / not 1-D /
            NaN or inf samples, non-positive rate, interval shorter than one sample).
    """
    cal = calibration if calibration is not None else nominal_calibration(cfg)
    return LevelMeter(cfg, sample_rate, cal).process(samples, 0)


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate}")
    return int(sample_rate)


def _check_curve(curve: str) -> str:
    if curve not in ("A", "C", "Z"):
        raise ValueError(f"curve must be 'A', 'C' or 'Z', got {curve!r}")
    return curve


__all__ = [
    "LevelMeter",
    "LevelTrace",
    "compute_levels",
    "nominal_calibration",
    "third_octave_bands",
    "weighting_response_db",
    "wav_to_pressure",
    "P_REF_PA",
    "P_RMS_FLOOR_PA",
    "PEAK_FLOOR_FS",
    "TAU_F_S",
    "TAU_S_S",
]
