"""Acoustic (ecoacoustic alpha) indices of one window, in numpy, as scikit-maad defines them.

Every index reproduces scikit-maad 1.5.x (``maad.features``) exactly: the same definitions,
the same code path for the parameters used here, the same floating-point arithmetic in the
same order, so that the results equal maad's own functions applied to one short-time Fourier
transform of the window (``maad.sound.spectrogram`` with the ``[indices]`` parameters
``nperseg``, ``noverlap``, ``window``; maad's default per-segment mean removal,
``detrend="constant"``, so a DC offset of the microphone chain does not leak into the lowest
bin). tests/test_indices.py checks this against scikit-maad called directly, on every bundled
recording, at other sample rates and with non-default parameters (maad is a test dependency
only). The spectrogram modes follow scikit-maad's own ``all_spectral_alpha_indices`` (its
"extract alpha indices" example):

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
detrend="constant")`` (segment mean removed, scipy's periodic window, ``scipy.fft.rfft``, for
which ``np.fft.rfft`` is bit-identical: both are pocketfft; times ``sqrt(1 / (fs *
sum(w**2)))``), times maad's ``sqrt(2 * fs / nperseg)``, its magnitude, without
the Nyquist bin, and with maad's frame count ``len(x) // (nperseg - noverlap) - 1`` (one frame
fewer than scipy's with ``noverlap = 0``; scipy's count when that is smaller). ``P = A**2``,
which is what maad's ``mode="psd"`` returns. The helpers below name the maad and scipy
functions they reproduce (``maad.util.index_bw``, ``into_bins``, ``entropy``,
``amplitude2dB``, ``maad.sound.envelope``, ``scipy.signal.get_window``...).

Why not call scikit-maad: importing ``maad.sound`` and ``maad.features`` pulls in pandas,
matplotlib, scikit-image, PyWavelets, PIL and scipy.signal (which itself imports scipy.stats
and scipy.ndimage). Resident set (``/proc/self/status`` VmRSS before/after, fresh interpreter
on x86-64 with numpy and the agent's config already loaded), ``import agent.analysis.indices``
plus one call on a 10 s 48 kHz window: +143 MB through maad (peak VmHWM 198 MB; +148 MB for
the two maad packages on top of numpy alone, scipy.signal ~75 MB of it, and still +41 MB in a
process that already holds scipy.signal and ``maad.spl``), +3 MB now (peak 60 MB). This module
imports numpy only, besides the agent's config and records.

Band limits above the Nyquist frequency ``fs/2`` are clipped to it. maad does not: its band
selector (``maad.util.index_bw``) snaps a limit beyond the highest frequency bin to that bin,
so with ``fmax = 20000`` on a 22 kHz recording every 1 kHz ADI/AEI band above 11 kHz would
re-count the spectrogram's top bin (mostly empty: AEI 0.15 → 0.53 on the bundled 22 kHz
night recording). A band lying wholly at or above ``fs/2`` gives NaN for its index. The
NDSI anthrophony band is the exception: it is used unclipped, since its width is also the
width NDSI pools the spectrum into (clipping it would change the pooling; selecting beyond the
top bin is harmless there).

Band edges are maad's: ``index_bw`` keeps every bin from the one nearest the lower limit to the
one nearest the upper limit, both included (a tie goes to the lower bin). For NDSI
(soundecology variant) the spectrum is first pooled into bins as wide as the anthrophony band
starting at 0 Hz and the bands then select bins by their *start* frequency, both ends
included: with the default bands (0-1000 Hz, 1000-10000 Hz) the anthrophony sums the 0-2 kHz
bins and the biophony the 1-11 kHz bins, i.e. the 1-2 kHz bin counts in both (a 1.5 kHz tone
gives NDSI 0, white noise 0.67).

Silence: a window whose samples are all equal (digital silence, or a constant DC value: no
sound at all) gets NaN for every index, as do indices that come out non-finite (e.g. ACI with
a frequency bin that is exactly zero throughout: with ``window = "boxcar"`` the 0 Hz bin of
every mean-removed segment of integer PCM audio is exactly zero, so ACI is then always NaN, in
maad too). A window with any variation, however small (e.g. one-LSB dither), gets finite
values computed as usual.

Cost, measured on x86-64 (a shared 2-core VM), default parameters, 48 kHz, 10 s windows of
real audio: about 6-8 ms a window (maad: 9-13 ms, same conditions); 15-19 ms in a fresh
process, where glibc returns the large temporaries to the kernel after every call and re-maps
them (~3700 page faults a call; maad 24-31 ms). Not measured on a Raspberry Pi; expect several
times that. No import cost beyond numpy. Peak working memory per call (tracemalloc) about
13 MB for a 10 s window, 77 MB for a 60 s one: the float64 copy, the detrended and windowed
segments, the complex STFT, the amplitude, power and dB spectrograms; it scales with the
window length.
"""

from __future__ import annotations

import math
import sys

import numpy as np

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


def _finite(value) -> float:
    """A result as a Python float, NaN unless finite."""
    v = float(value)
    return v if math.isfinite(v) else math.nan


def periodic_window(name: str, n: int) -> np.ndarray:
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


def _spectrogram(x: np.ndarray, fs: int, window: str, nperseg: int, noverlap: int):
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


def _band_select(fn: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``maad.util.index_bw(fn, (lo, hi))``: boolean mask of the bins from the one nearest
    ``lo`` to the one nearest ``hi`` (first on ties), both included."""
    return (fn >= fn[np.abs(fn - lo).argmin()]) & (fn <= fn[np.abs(fn - hi).argmin()])


def _amplitude_db(x: np.ndarray) -> np.ndarray:
    """``maad.util.amplitude2dB(x)``: ``20 log10 |x|``, zeros taken as the smallest float."""
    x = np.abs(x)
    x[x == 0] = _MIN
    return 20 * np.log10(x)


def _entropy(x: np.ndarray) -> float:
    """``maad.util.entropy`` of a 1-D array >= 0: Shannon entropy of ``x / sum(x)``
    normalised by ``ln(len(x))``; 0 for one element, 1 when all are zero."""
    if x.size == 1:
        return 0.0
    if not x.any():
        return 1.0
    pmf = x / np.sum(x)
    pmf[pmf == 0] = _MIN
    return -np.sum(pmf * np.log(pmf)) / np.log(x.size)


def _aci(amp: np.ndarray) -> float:
    """``maad.features.acoustic_complexity_index(amp)[2]``, ``ACI_sum``."""
    per_bin = np.sum(np.abs(np.diff(amp, 1)) / np.sum(amp, 1)[:, np.newaxis], axis=1)
    return np.sum(per_bin)


def _adi_aei(norm: np.ndarray, fn: np.ndarray, fmin: float, fmax: float, bin_step: float,
             db_threshold: float) -> tuple[float, float]:
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


def _bi(norm: np.ndarray, fn: np.ndarray, lo: float, hi: float) -> float:
    """``maad.features.bioacoustics_index(A, fn, (lo, hi))``, soundecology variant, from
    ``norm = A / max(A)``: the band's time-mean dB spectrum above its minimum, per Hz."""
    mean_db = _amplitude_db(np.mean(norm, axis=1))[_band_select(fn, lo, hi)]
    return np.sum(mean_db - np.min(mean_db)) / (fn[1] - fn[0])


def _ndsi(psd: np.ndarray, fn: np.ndarray, bio: tuple[float, float],
          anthro: tuple[float, float]) -> float:
    """``maad.features.soundscape_index(psd, fn, bio, anthro)[0]``, soundecology variant: the
    spectrum pooled by ``maad.util.into_bins`` into anthrophony-wide bins from ``fn[0]`` (each
    the bins' mean times the mean bin count), the bands selected by pooled bin start."""
    step = anthro[1] - anthro[0]
    edges = np.arange(fn[0], fn[-1] + step, step)
    pooled, counts = [], []
    for b0, b1 in zip(edges[:-1], edges[1:]):
        rows = (fn >= b0) & (fn < b1)
        counts.append(np.count_nonzero(rows))
        # an empty pooled bin (conceivable only through rounding) is maad's NaN, minus its warning
        pooled.append(np.mean(psd[rows, :], axis=0) if counts[-1] else np.full(psd.shape[1], np.nan))
    pooled = np.asarray(pooled) * np.mean(counts)
    starts = edges[:-1]
    bio_power = np.sum(pooled[_band_select(starts, *bio), ])
    anthro_power = np.sum(pooled[_band_select(starts, *anthro), ])
    return (bio_power - anthro_power) / (bio_power + anthro_power)


def _hf(psd: np.ndarray) -> float:
    """``maad.features.frequency_entropy(psd, compatibility="seewave")[0]``: entropy of the
    amplitude spectrum ``sqrt(time-mean power)``."""
    return _entropy(np.sqrt(np.mean(psd, axis=1)))


def _ht(x: np.ndarray) -> float:
    """``maad.features.temporal_entropy(x, compatibility="seewave", mode="fast", Nt=512)``:
    entropy of ``maad.sound.envelope(x, "fast")``, max |x| per :data:`ENVELOPE_FRAME` samples
    (a trailing partial frame dropped)."""
    frames = x.size // ENVELOPE_FRAME
    return _entropy(np.max(np.abs(x[: frames * ENVELOPE_FRAME].reshape(frames, ENVELOPE_FRAME)), axis=1))


def compute_indices(samples: np.ndarray, sample_rate: int, cfg: IndicesConfig) -> AcousticIndices:
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
          temporal step (Pieretti's ``j``); soundecology's default j = 5 s would give about
          twice the value for a 10 s window. Scales with the number of bins
          (``nperseg / 2``): stationary noise gives about 0.59 per bin, ~300 with 1024.
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
          define it; maad's default ``"QUT"`` (entropy of the mean *power* spectrum) gives
          markedly lower values (0.19-0.65 instead of 0.65-0.92 on the bundled recordings).
        - ``ht``: temporal entropy Ht, Sueur et al. 2008: Shannon entropy of the amplitude
          envelope as a probability mass function, normalised, 0 (one click) .. 1 (steady).
          ``compatibility="seewave"`` (entropy of the envelope itself, as Sueur et al.; QUT
          uses its square). The envelope is maad's ``mode="fast"``: the max of |x| per
          frame of :data:`ENVELOPE_FRAME` samples (Towsey), not Sueur's Hilbert envelope,
          whose FFT needs ~7 times the window's memory (+200 MB for a 60 s window at
          48 kHz); on the bundled recordings' 10 s windows the two differ by <= 0.05.

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
