"""Acoustic (ecoacoustic alpha) indices of one window, in numpy, as scikit-maad defines them.

Every index reproduces scikit-maad 1.5.x (``maad.features``) exactly: the same definitions,
the same code path for the parameters used here, the same floating-point arithmetic in the
same order, so that the results equal maad's own functions applied to one short-time Fourier
transform of the window (``maad.sound.spectrogram`` with the ``[indices]`` parameters
``nperseg``, ``noverlap``, ``window``; maad's default per-segment mean removal,
``detrend="constant"``). tests/test_indices.py checks this against scikit-maad called
directly (maad is a test dependency only; this module imports numpy only, besides the agent's
config and records). The spectrogram modes follow scikit-maad's own
``all_spectral_alpha_indices``:

=====  ==========================================================  =================
index  scikit-maad function reproduced                             spectrogram
=====  ==========================================================  =================
ACI    ``acoustic_complexity_index(A)[2]`` (``ACI_sum``)           amplitude ``A``
ADI    ``acoustic_diversity_index(A, fn, fmin, fmax, bin_step,     amplitude
       dB_threshold, index="shannon")``
AEI    ``acoustic_eveness_index(A, fn, fmin, fmax, bin_step,       amplitude
       dB_threshold)``
BI     ``bioacoustics_index(A, fn, flim)`` (soundecology variant)  amplitude
NDSI   ``soundscape_index(P, fn, flim_bioPh, flim_antroPh)[0]``    power (PSD) ``P``
       (soundecology variant)
Hf     ``frequency_entropy(P, compatibility="seewave")[0]``        power (PSD)
Ht     ``temporal_entropy(x, compatibility="seewave",              waveform ``x``
       mode="fast", Nt=512)``
=====  ==========================================================  =================

``A`` is ``maad.sound.spectrogram(x, fs, window, nperseg, noverlap, mode="amplitude")``: scipy's
``scipy.signal.spectrogram(..., nfft=nperseg, mode="complex", scaling="density",
detrend="constant")`` times maad's ``sqrt(2 * fs / nperseg)``, its magnitude, without the
Nyquist bin, with maad's frame count ``len(x) // (nperseg - noverlap) - 1`` (scipy's count
when that is smaller); ``P = A**2`` (maad's ``mode="psd"``). The helpers below name the maad
and scipy functions they reproduce.

Deliberate behaviour: band limits above ``fs/2`` are clipped to it (maad snaps them to the top
bin) and a band wholly at or above ``fs/2`` gives NaN, except the NDSI anthrophony band, used
unclipped; band edges are maad's (``maad.util.index_bw``; NDSI pools bins as wide as the
anthrophony band and selects them by their start frequency); a window whose samples are all
equal gets NaN for every index, and an index that comes out non-finite is NaN.

Details (why, with examples, and the per-index notes): docs/metrology.md#acoustic-indices;
cost and memory: docs/performance.md#acoustics-cost-per-window.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.config import IndicesConfig
from agent.records import AcousticIndices

#: Frame length, samples, of maad's "fast" envelope for Ht (the max of |x| per frame; maad's
#: default, 10.7 ms at 48 kHz).
ENVELOPE_FRAME = 512

_NAN_INDICES = AcousticIndices(
    aci=math.nan, adi=math.nan, aei=math.nan, bi=math.nan, ndsi=math.nan, hf=math.nan, ht=math.nan
)

# maad's _MIN_: what maad.util.entropy and amplitude2dB put in place of exact zeros.
_MIN = sys.float_info.min

# scipy.signal.windows cosine-sum coefficients (hamming's second is scipy's 1. - 0.54,
# 0.45999999999999996, not 0.46); boxcar is all ones. These are the [indices] window values
# IndicesConfig accepts.
_COSINE_WINDOWS = {
    "hann": (0.5, 1.0 - 0.5),
    "hamming": (0.54, 1.0 - 0.54),
    "blackman": (0.42, 0.50, 0.08),
}


def _finite(value: float) -> float:
    """A result as a Python float, NaN unless finite."""
    v = float(value)
    return v if math.isfinite(v) else math.nan


def periodic_window(name: str, n: int) -> npt.NDArray[np.float64]:
    """``scipy.signal.get_window(name, n)`` without scipy: periodic ("DFT-even"), float64, shape
    (n,), for ``name`` in hann, hamming, blackman, boxcar; scipy's arithmetic
    (``_general_cosine_impl`` over ``linspace(-pi, pi, n + 1)``, last point dropped), so the
    values are bit-identical to scipy's. Also the Hann window of the hum check
    (:mod:`agent.analysis.health`) and of ``diagnose``'s spectrogram.

    Raises:
        KeyError: another window name.
    """
    if name == "boxcar":
        return np.ones(n)
    fac = np.linspace(-np.pi, np.pi, n + 1)
    w = np.zeros(n + 1)
    for k, a in enumerate(_COSINE_WINDOWS[name]):
        w += a * np.cos(k * fac)
    return w[:-1]


def _frame_count(n: int, nperseg: int, noverlap: int) -> int:
    """Frames of maad's spectrogram of ``n`` samples: maad keeps ``n // step - 1``, scipy
    makes ``(n - noverlap) // step`` (none when ``n < nperseg``), the smaller wins."""
    step = nperseg - noverlap
    return min(n // step - 1, (n - noverlap) // step if n >= nperseg else 0)


def _spectrogram(
    x: npt.NDArray[np.float64], fs: int, window: str, nperseg: int, noverlap: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.floating[Any]]]:
    """``maad.sound.spectrogram(x, fs, window, nperseg, noverlap, mode="amplitude")``.

    Returns ``(amp, fn)``: amplitude, float64 (nperseg // 2, frames) with maad's memory layout
    (a transposed view: frames along the large stride, which fixes numpy's summation order
    below), and the bin frequencies, Hz, (nperseg // 2,) (``np.fft.rfftfreq``, Nyquist dropped).
    """
    step = nperseg - noverlap
    frames = _frame_count(x.size, nperseg, noverlap)
    # scipy's _fft_helper: strided segments, detrend="constant", window, rfft
    segs = np.lib.stride_tricks.sliding_window_view(x, nperseg)[::step][:frames]
    segs = segs - np.mean(segs, axis=-1, keepdims=True)
    win = periodic_window(window, nperseg)
    segs *= win
    stft = np.fft.rfft(segs, n=nperseg)  # == scipy.fft.rfft, bit for bit
    stft *= np.sqrt(1.0 / (fs * (win * win).sum()))  # scipy: scaling="density", mode="complex"
    stft *= np.sqrt(2 * (fs / nperseg))  # maad: one-sided amplitude (kept apart: same rounding)
    amp = np.abs(stft).T[:-1]  # maad drops the Nyquist bin
    fn = np.fft.rfftfreq(nperseg, 1 / fs)[:-1]
    return amp, fn


def _band_select(fn: npt.NDArray[np.floating[Any]], lo: float, hi: float) -> npt.NDArray[np.bool_]:
    """``maad.util.index_bw(fn, (lo, hi))``: boolean mask of the bins from the one nearest
    ``lo`` to the one nearest ``hi`` (first on ties), both included."""
    mask: npt.NDArray[np.bool_] = (fn >= fn[np.abs(fn - lo).argmin()]) & (fn <= fn[np.abs(fn - hi).argmin()])
    return mask


def _amplitude_db(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``maad.util.amplitude2dB(x)``: ``20 log10 |x|``, zeros taken as the smallest float."""
    x = np.abs(x)
    x[x == 0] = _MIN
    return 20 * np.log10(x)


def _entropy(x: npt.NDArray[np.float64]) -> float:
    """``maad.util.entropy`` of a 1-D array >= 0: Shannon entropy of ``x / sum(x)``
    normalised by ``ln(len(x))``; 0 for one element, 1 when all are zero."""
    if x.size == 1:
        return 0.0
    if not x.any():
        return 1.0
    pmf = x / np.sum(x)
    pmf[pmf == 0] = _MIN
    entropy: float = -np.sum(pmf * np.log(pmf)) / np.log(x.size)
    return entropy


def _aci(amp: npt.NDArray[np.float64]) -> float:
    """``maad.features.acoustic_complexity_index(amp)[2]``, ``ACI_sum``."""
    per_bin = np.sum(np.abs(np.diff(amp, 1)) / np.sum(amp, 1)[:, np.newaxis], axis=1)
    aci: float = np.sum(per_bin)
    return aci


def _adi_aei(norm: npt.NDArray[np.float64], fn: npt.NDArray[np.floating[Any]], fmin: float, fmax: float,
             bin_step: float, db_threshold: float) -> tuple[float, float]:
    """``acoustic_diversity_index(..., index="shannon")`` and ``acoustic_eveness_index`` of
    the max-normalised amplitude ``norm`` (maad's ``Sxx / max(Sxx)``): the share of cells at or
    above ``db_threshold`` in each band (edges truncated to int Hz, as maad), its Shannon
    entropy (maad's ``_shannonEntropy``: nats) and its Gini coefficient (``_gini``)."""
    db = _amplitude_db(norm)
    scores = []
    for ii in np.arange(0, np.floor((fmax - fmin) / bin_step)):
        f0 = int(fmin + bin_step * ii)
        band = db[_band_select(fn, f0, int(f0 + bin_step)), :]
        scores.append(np.mean(np.sum(band >= db_threshold, axis=0) / band.shape[0]))
    s = np.asarray(scores)
    adi = _entropy(s) * np.log(s.size)
    if np.sum(s) == 0:
        return adi, 0.0
    s.sort()
    gini = 2 * np.sum(s * np.arange(1, s.size + 1, 1)) / np.sum(s) - (s.size + 1)
    return adi, gini / s.size


def _bi(norm: npt.NDArray[np.float64], fn: npt.NDArray[np.floating[Any]], lo: float, hi: float) -> float:
    """``maad.features.bioacoustics_index(A, fn, (lo, hi))``, soundecology variant, from
    ``norm = A / max(A)``: the band's time-mean dB spectrum above its minimum, per Hz."""
    mean_db = _amplitude_db(np.mean(norm, axis=1))[_band_select(fn, lo, hi)]
    bi: float = np.sum(mean_db - np.min(mean_db)) / (fn[1] - fn[0])
    return bi


def _ndsi(psd: npt.NDArray[np.float64], fn: npt.NDArray[np.floating[Any]], bio: tuple[float, float],
          anthro: tuple[float, float]) -> float:
    """``maad.features.soundscape_index(psd, fn, bio, anthro)[0]``, soundecology variant: the
    spectrum pooled by ``maad.util.into_bins`` into anthrophony-wide bins from ``fn[0]`` (each
    the bins' mean times the mean bin count), the bands selected by pooled bin start."""
    step = anthro[1] - anthro[0]
    edges = np.arange(fn[0], fn[-1] + step, step)
    pooled, counts = [], []
    for b0, b1 in zip(edges[:-1], edges[1:], strict=True):
        rows = (fn >= b0) & (fn < b1)
        counts.append(np.count_nonzero(rows))
        # an empty pooled bin (conceivable only through rounding) is maad's NaN, minus its warning
        pooled.append(np.mean(psd[rows, :], axis=0) if counts[-1] else np.full(psd.shape[1], np.nan))
    pooled = np.asarray(pooled) * np.mean(counts)
    starts = edges[:-1]
    bio_power = np.sum(pooled[_band_select(starts, *bio), ])
    anthro_power = np.sum(pooled[_band_select(starts, *anthro), ])
    ndsi: float = (bio_power - anthro_power) / (bio_power + anthro_power)
    return ndsi


def _hf(psd: npt.NDArray[np.float64]) -> float:
    """``maad.features.frequency_entropy(psd, compatibility="seewave")[0]``: entropy of the
    amplitude spectrum ``sqrt(time-mean power)``."""
    return _entropy(np.sqrt(np.mean(psd, axis=1)))


def _ht(x: npt.NDArray[np.float64]) -> float:
    """``maad.features.temporal_entropy(x, compatibility="seewave", mode="fast", Nt=512)``:
    entropy of ``maad.sound.envelope(x, "fast")``, max |x| per :data:`ENVELOPE_FRAME` samples
    (a trailing partial frame dropped)."""
    frames = x.size // ENVELOPE_FRAME
    return _entropy(np.max(np.abs(x[: frames * ENVELOPE_FRAME].reshape(frames, ENVELOPE_FRAME)), axis=1))


def compute_indices(
    samples: npt.NDArray[np.floating[Any] | np.integer[Any]], sample_rate: int, cfg: IndicesConfig
) -> AcousticIndices:
    """Seven acoustic indices of one window, equal to scikit-maad's functions, in numpy.

    Args:
        samples: mono audio, shape (n,), any real float/int dtype holding full-scale-±1.0
            values (float32 from capture); converted to float64 internally (as
            ``maad.sound.load`` returns audio).
        sample_rate: Hz (any rate; 48000 typical). Band limits above ``sample_rate / 2`` are
            clipped to it, see the module docstring.
        cfg: the ``[indices]`` section. ``nperseg``, ``noverlap``, ``window`` (``hann``,
            ``hamming``, ``blackman`` or ``boxcar``, scipy's periodic windows): the one STFT
            (frequency resolution ``df = sample_rate / nperseg``, e.g. 46.9 Hz at 48 kHz with
            1024; time step ``(nperseg - noverlap) / sample_rate``). ``fmin_hz``, ``fmax_hz``,
            ``bin_step_hz``, ``db_threshold``: ADI and AEI. ``bi_flim_hz``: BI.
            ``ndsi_bio_hz``, ``ndsi_anthro_hz``: NDSI. ``enabled`` is not read here.

    Returns:
        :class:`~agent.records.AcousticIndices`, every value a Python float or NaN (each the
        scikit-maad 1.5.x function named in the module docstring, reproduced in numpy):

        - ``aci``: Acoustic Complexity Index, Pieretti, Farina & Morri 2011, Ecological
          Indicators 11:868-873. maad's ``ACI_sum``, the "common definition": for every
          frequency bin, the sum over the window of the absolute amplitude difference
          between adjacent frames divided by the bin's summed amplitude, summed over all
          bins (0 Hz to just below ``sample_rate/2``). Dimensionless, >= 0. The whole window is one
          temporal step (Pieretti's ``j``). Scales with the number of bins (``nperseg / 2``).
        - ``adi``: Acoustic Diversity Index, Villanueva-Rivera et al. 2011, Landscape Ecology
          26:1233-1246. Shannon entropy (natural log, nats) of the share of spectrogram cells
          above ``db_threshold`` dB re the spectrogram's maximum in each ``bin_step_hz`` band
          from ``fmin_hz`` to ``min(fmax_hz, sample_rate/2)``; 0 .. ln(number of bands)
          (ln 20 = 3.0 with the defaults at 48 kHz, ln 11 = 2.4 at 22 kHz).
        - ``aei``: Acoustic Evenness Index, Villanueva-Rivera et al. 2011: Gini coefficient
          of the same band scores; 0 (even) .. 1 (all activity in one band).
        - ``bi``: Bioacoustic Index, Boelman et al. 2007, Ecological Applications
          17:2137-2144, as the R package soundecology computes it (maad's default
          ``R_compatible="soundecology"``): the time-mean of the max-normalised amplitude
          spectrogram in dB, minus its minimum within ``bi_flim_hz``, summed over the band's
          bins and divided by ``df`` (soundecology's "area"; dB per Hz, >= 0). Depends on
          ``df``: compare only windows of equal sample rate and ``nperseg``.
        - ``ndsi``: Normalised Difference Soundscape Index, Kasten et al. 2012, Ecological
          Informatics 12:50-67, soundecology variant: (B - A) / (B + A) of the power in the
          biophony band B (``ndsi_bio_hz``) and anthrophony band A (``ndsi_anthro_hz``),
          banded as the module docstring describes; -1 (all anthrophony) .. 1.
        - ``hf``: spectral entropy Hf, Sueur et al. 2008, PLoS ONE 3:e4065: Shannon entropy
          of the window's mean spectrum taken as a probability mass function, normalised by
          ln(number of bins), 0 (pure tone) .. 1 (flat spectrum). ``compatibility="seewave"``
          = the amplitude spectrum (sqrt of the time-mean power), as Sueur et al. and seewave
          define it, not maad's default ``"QUT"`` (entropy of the mean *power* spectrum).
        - ``ht``: temporal entropy Ht, Sueur et al. 2008: Shannon entropy of the amplitude
          envelope as a probability mass function, normalised, 0 (one click) .. 1 (steady).
          ``compatibility="seewave"`` (entropy of the envelope itself, as Sueur et al.; QUT
          uses its square). The envelope is maad's ``mode="fast"``: the max of |x| per
          frame of :data:`ENVELOPE_FRAME` samples (Towsey), not Sueur's Hilbert envelope
          (docs/metrology.md#acoustic-indices says why and how much they differ).

        NaN for every index when all samples are equal; NaN for one index when its band lies
        at or above ``sample_rate / 2`` or its value is not finite.

    Raises:
        ValueError: ``samples`` is empty, not one-dimensional or contains NaN/inf,
            ``sample_rate`` is not positive, the window is too short for two spectrogram
            frames (``nperseg``, ``noverlap``) and two envelope frames, the anthrophony band
            is narrower than one frequency bin (``sample_rate / nperseg``; maad's
            ``into_bins`` would raise a bare Exception), or ``cfg.window`` is not one of the
            four names (only possible for an unvalidated config). These depend only on the
            configuration, the sample rate and the window length, never on the audio: one
            call at start-up finds them.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or inf")
    if _frame_count(x.size, cfg.nperseg, cfg.noverlap) < 2 or x.size // ENVELOPE_FRAME < 2:
        raise ValueError(
            f"a window of {x.size} samples is too short for indices: it needs at least two "
            f"spectrogram frames (nperseg={cfg.nperseg}, noverlap={cfg.noverlap}) and "
            f"{2 * ENVELOPE_FRAME} samples"
        )
    df = sample_rate / cfg.nperseg
    an_width = cfg.ndsi_anthro_hz[1] - cfg.ndsi_anthro_hz[0]
    if an_width < df:
        raise ValueError(
            f"ndsi_anthro_hz is {an_width:g} Hz wide, narrower than one spectrogram bin "
            f"({sample_rate} Hz / nperseg {cfg.nperseg} = {df:g} Hz); widen it or raise nperseg"
        )
    if cfg.window != "boxcar" and cfg.window not in _COSINE_WINDOWS:
        raise ValueError(f"window must be hann, hamming, blackman or boxcar, got {cfg.window!r}")
    if x[0] == x.min() == x.max():
        return _NAN_INDICES

    nyquist = sample_rate / 2.0
    # numpy floating-point warnings are expected on degenerate spectra (0/0 → NaN, mapped
    # below); errstate is thread-local, unlike warnings.catch_warnings.
    with np.errstate(all="ignore"):
        amp, fn = _spectrogram(x, sample_rate, cfg.window, cfg.nperseg, cfg.noverlap)
        if not np.any(amp):  # every segment constant: nothing but DC
            return _NAN_INDICES
        psd = amp**2  # == maad.sound.spectrogram(..., mode="psd"), bit for bit
        norm = amp / np.max(amp)

        aci = _aci(amp)

        fmax = min(cfg.fmax_hz, nyquist)
        if cfg.fmin_hz < fmax and math.floor((fmax - cfg.fmin_hz) / cfg.bin_step_hz) >= 1:
            adi, aei = _adi_aei(norm, fn, cfg.fmin_hz, fmax, cfg.bin_step_hz, cfg.db_threshold)
        else:
            adi = aei = math.nan

        bi_lo, bi_hi = cfg.bi_flim_hz
        bi = _bi(norm, fn, bi_lo, min(bi_hi, nyquist)) if bi_lo < nyquist else math.nan

        # The anthrophony band is used as configured: its width is the pooling bin width.
        (bio_lo, bio_hi), anthro = cfg.ndsi_bio_hz, cfg.ndsi_anthro_hz
        if bio_lo < nyquist and anthro[0] < nyquist:
            ndsi = _ndsi(psd, fn, (bio_lo, min(bio_hi, nyquist)), anthro)
        else:
            ndsi = math.nan

        hf = _hf(psd)
        ht = _ht(x)

    return AcousticIndices(
        aci=_finite(aci), adi=_finite(adi), aei=_finite(aei), bi=_finite(bi),
        ndsi=_finite(ndsi), hf=_finite(hf), ht=_finite(ht),
    )


__all__ = ["compute_indices", "ENVELOPE_FRAME", "periodic_window"]
