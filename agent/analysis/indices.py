"""Acoustic (ecoacoustic alpha) indices of one window, computed with scikit-maad.

Every index is scikit-maad's own function (``maad.features``, version 1.5.x) applied to one
short-time Fourier transform of the window, ``maad.sound.spectrogram`` with the ``[indices]``
parameters (``nperseg``, ``noverlap``, ``window``; maad's default per-segment mean removal,
``detrend="constant"``, so a DC offset of the microphone chain does not leak into the lowest
bin). The spectrogram modes follow scikit-maad's own ``all_spectral_alpha_indices`` (its
"extract alpha indices" example):

=====  ==========================================================  =================
index  maad call                                                   spectrogram
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

``A`` is ``maad.sound.spectrogram(x, fs, window, nperseg, noverlap, mode="amplitude")`` and
``P = A**2``. maad computes its ``mode="psd"`` output as exactly that square of the same
magnitude array, so ``P`` is bit-identical to a second ``spectrogram(..., mode="psd")`` call
(the tests check it) at half the cost: one STFT per window.

Band limits above the Nyquist frequency ``fs/2`` are clipped to it. maad does not: its band
selector (``maad.util.index_bw``) snaps a limit beyond the highest frequency bin to that bin,
so with ``fmax = 20000`` on a 22 kHz recording every 1 kHz ADI/AEI band above 11 kHz would
re-count the spectrogram's top bin (mostly empty: AEI 0.15 → 0.53 on the bundled 22 kHz
night recording). A band lying wholly at or above ``fs/2`` gives NaN for its index. The
NDSI anthrophony band is the exception: it is passed unclipped, since its width is also the
width NDSI pools the spectrum into (clipping it would change the pooling; selecting beyond the
top bin is harmless there).

Band edges are maad's: ``index_bw`` keeps every bin from the one nearest the lower limit to the
one nearest the upper limit, both included. For NDSI (soundecology variant) the spectrum is
first pooled into bins as wide as the anthrophony band starting at 0 Hz and the bands then
select bins by their *start* frequency, both ends included: with the default bands
(0-1000 Hz, 1000-10000 Hz) the anthrophony sums the 0-2 kHz bins and the biophony the
1-11 kHz bins, i.e. the 1-2 kHz bin counts in both (a 1.5 kHz tone gives NDSI 0, white noise
0.67).

Silence: a window whose samples are all equal (digital silence, or a constant DC value: no
sound at all) gets NaN for every index, as do indices that come out non-finite (e.g. ACI with
a frequency bin that is exactly zero throughout). A window with any variation, however small
(e.g. one-LSB dither), gets finite values computed as usual.

Cost, measured on x86-64 (AMD EPYC, one core), default parameters, 48 kHz, 10 s windows of
real audio: about 8 ms a window (not measured on a Raspberry Pi; expect several times that),
plus about 0.7 s for the first call's imports. Peak working memory per call about 13 MB for a
10 s window, 80 MB for a 60 s one (the float64 copy, scipy's complex STFT and maad's
temporaries; it scales with the window length). Importing ``maad.sound`` and
``maad.features`` (resident set, ``/proc/self/status`` VmRSS before/after the import): +40 MB
(32 MB anonymous) in a process that already holds scipy.signal and ``maad.spl``, as the agent
does once :mod:`agent.analysis.levels` has run (matplotlib ~15 MB, scikit-image, PyWavelets,
PIL); +69 MB before ``maad.spl`` (pandas) is loaded; +140 MB on top of numpy alone (scipy.signal
alone is ~65 MB of that).
"""

from __future__ import annotations

import math

import numpy as np

from agent.config import IndicesConfig
from agent.records import AcousticIndices

#: Frame length, samples, of maad's "fast" envelope for Ht (the max of |x| per frame; maad's
#: default, 10.7 ms at 48 kHz).
ENVELOPE_FRAME = 512

_NAN_INDICES = AcousticIndices(
    aci=math.nan, adi=math.nan, aei=math.nan, bi=math.nan, ndsi=math.nan, hf=math.nan, ht=math.nan
)


def _finite(value) -> float:
    """A maad result as a Python float, NaN unless finite."""
    v = float(value)
    return v if math.isfinite(v) else math.nan


def compute_indices(samples: np.ndarray, sample_rate: int, cfg: IndicesConfig) -> AcousticIndices:
    """Seven acoustic indices of one window, each scikit-maad's own function.

    Args:
        samples: mono audio, shape (n,), any real float/int dtype holding full-scale-±1.0
            values (float32 from capture); converted to float64 internally (as
            ``maad.sound.load`` returns audio).
        sample_rate: Hz (any rate; 48000 typical). Band limits above ``sample_rate / 2`` are
            clipped to it, see the module docstring.
        cfg: the ``[indices]`` section. ``nperseg``, ``noverlap``, ``window``: the one STFT
            (frequency resolution ``df = sample_rate / nperseg``, e.g. 46.9 Hz at 48 kHz with
            1024; time step ``(nperseg - noverlap) / sample_rate``). ``fmin_hz``, ``fmax_hz``,
            ``bin_step_hz``, ``db_threshold``: ADI and AEI. ``bi_flim_hz``: BI.
            ``ndsi_bio_hz``, ``ndsi_anthro_hz``: NDSI. ``enabled`` is not read here.

    Returns:
        :class:`~agent.records.AcousticIndices`, every value a Python float or NaN:

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
            frames (``nperseg``, ``noverlap``) and two envelope frames, or the anthrophony
            band is narrower than one frequency bin (``sample_rate / nperseg``). These depend
            only on the configuration, the sample rate and the window length, never on the
            audio: one call at start-up finds them.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or inf")
    step = cfg.nperseg - cfg.noverlap
    # maad keeps len//step - 1 frames; scipy makes (len - noverlap)//step; ACI needs two.
    frames = min(x.size // step - 1, (x.size - cfg.noverlap) // step if x.size >= cfg.nperseg else 0)
    if frames < 2 or x.size // ENVELOPE_FRAME < 2:
        raise ValueError(
            f"a window of {x.size} samples is too short for indices: it needs at least two "
            f"spectrogram frames (nperseg={cfg.nperseg}, noverlap={cfg.noverlap}) and "
            f"{2 * ENVELOPE_FRAME} samples"
        )
    df = sample_rate / cfg.nperseg
    an_width = cfg.ndsi_anthro_hz[1] - cfg.ndsi_anthro_hz[0]
    if an_width < df:  # maad's into_bins would raise a bare Exception
        raise ValueError(
            f"ndsi_anthro_hz is {an_width:g} Hz wide, narrower than one spectrogram bin "
            f"({sample_rate} Hz / nperseg {cfg.nperseg} = {df:g} Hz); widen it or raise nperseg"
        )
    if x[0] == x.min() == x.max():
        return _NAN_INDICES

    # lazy: maad.sound/maad.features pull in scipy.signal, pandas, matplotlib, scikit-image
    # (+40 MB resident in the agent, see the module docstring); keep this module's import cheap
    import maad.features
    import maad.sound

    nyquist = sample_rate / 2.0
    # numpy floating-point warnings are expected on degenerate spectra (0/0 → NaN, mapped
    # below); errstate is thread-local, unlike warnings.catch_warnings.
    with np.errstate(all="ignore"):
        amp, _tn, fn, _ext = maad.sound.spectrogram(
            x, sample_rate, window=cfg.window, nperseg=cfg.nperseg, noverlap=cfg.noverlap,
            mode="amplitude",
        )
        if not np.any(amp):  # every segment constant: nothing but DC
            return _NAN_INDICES
        psd = amp**2  # == maad.sound.spectrogram(..., mode="psd"), bit for bit

        aci = maad.features.acoustic_complexity_index(amp)[2]

        fmax = min(cfg.fmax_hz, nyquist)
        if cfg.fmin_hz < fmax and math.floor((fmax - cfg.fmin_hz) / cfg.bin_step_hz) >= 1:
            band_kw = dict(fmin=cfg.fmin_hz, fmax=fmax, bin_step=cfg.bin_step_hz,
                           dB_threshold=cfg.db_threshold)
            adi = maad.features.acoustic_diversity_index(amp, fn, index="shannon", **band_kw)
            aei = maad.features.acoustic_eveness_index(amp, fn, **band_kw)
        else:
            adi = aei = math.nan

        bi_lo, bi_hi = cfg.bi_flim_hz
        bi = (
            maad.features.bioacoustics_index(amp, fn, flim=(bi_lo, min(bi_hi, nyquist)))
            if bi_lo < nyquist else math.nan
        )

        # The anthrophony band is passed as configured: its width is the pooling bin width.
        (bio_lo, bio_hi), (an_lo, an_hi) = cfg.ndsi_bio_hz, cfg.ndsi_anthro_hz
        if bio_lo < nyquist and an_lo < nyquist:
            ndsi = maad.features.soundscape_index(
                psd, fn, flim_bioPh=(bio_lo, min(bio_hi, nyquist)), flim_antroPh=(an_lo, an_hi),
            )[0]
        else:
            ndsi = math.nan

        hf = maad.features.frequency_entropy(psd, compatibility="seewave")[0]
        ht = maad.features.temporal_entropy(x, compatibility="seewave", mode="fast", Nt=ENVELOPE_FRAME)

    return AcousticIndices(
        aci=_finite(aci), adi=_finite(adi), aei=_finite(aei), bi=_finite(bi),
        ndsi=_finite(ndsi), hf=_finite(hf), ht=_finite(ht),
    )


__all__ = ["compute_indices", "ENVELOPE_FRAME"]
