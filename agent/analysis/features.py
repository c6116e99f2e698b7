"""AST input features in pure numpy: a torch-free twin of transformers' ``ASTFeatureExtractor``.

The Audio Spectrogram Transformer (Gong, Chung & Glass, "AST: Audio Spectrogram Transformer",
Interspeech 2021) takes a Kaldi-compatible log-mel filter bank of 16 kHz audio. Its reference
code calls ``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True,
sample_frequency=16000, use_energy=False, window_type='hanning', num_mel_bins=128,
dither=0.0, frame_shift=10)``; transformers' ``ASTFeatureExtractor`` reproduces that with
torchaudio when it is installed and otherwise with its numpy ``audio_utils.spectrogram``
(transformers 4.57,
``models/audio_spectrogram_transformer/feature_extraction_audio_spectrogram_transformer.py``).
That numpy path is the one this module re-implements, vectorised, step for step, so that the
``onnx`` backend needs neither torch nor transformers (transformers' own numpy path still
calls ``torch.from_numpy`` and ``torch.nn.ZeroPad2d`` to pad). ``tests/test_features.py``
checks equality with ``ASTFeatureExtractor`` on every bundled real recording.

Per segment of ``n`` samples at 16 kHz (Kaldi ``fbank`` semantics, ``snip_edges=True``):

1. ``n_frames = 1 + (n - 400) // 160`` frames of 400 samples (25 ms) every 160 samples
   (10 ms), in float64 (input first rounded to float32, as transformers does);
2. per frame: subtract the frame's mean (Kaldi ``remove_dc_offset``), pre-emphasis
   ``y[t] = x[t] - 0.97 x[t-1]``, ``y[0] = x[0] - 0.97 x[0]`` (Kaldi ``preemphasis_coefficient``),
   multiply by a **symmetric Hann** window of 400 samples (``window_type='hanning'`` in AST;
   not Kaldi's default Povey window), zero-pad to 512 (Kaldi ``round_to_power_of_two``);
3. power spectrum ``|rfft|²``, 257 bins (the complex spectrum is rounded to complex64 first,
   exactly as transformers stores it);
4. 128 triangular mel filters, triangular **in Kaldi mel space** (``mel = 1127 ln(1 + f/700)``),
   centres equally spaced in mel between 20 Hz (Kaldi ``low_freq``) and 8 kHz (Nyquist,
   Kaldi ``high_freq=0``), no area normalisation
   (transformers ``mel_filter_bank(257, 128, 20, 8000, 16000, norm=None, mel_scale="kaldi",
   triangularize_in_mel_space=True)``). At 512-point FFT resolution the lowest filters are
   narrower than one 31.25 Hz bin; one of them (filter 3) falls between two bins and stays
   all zero, as in Kaldi/torchaudio;
5. ``log(max(mel_energy, 1.1920929e-07))`` (the float32 machine epsilon, Kaldi's floor),
   natural log, cast to float32; no dither;
6. pad with ``padding_value`` (0.0) or truncate to ``max_length`` = 1024 frames (10.24 s);
7. normalise ``(x - mean) / (2 * std)`` with the AudioSet statistics of the
   ``preprocessor_config.json`` (mean -4.2677393, std 4.5689974; AST paper / its repository
   normalise to mean 0, std 0.5), in float32.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import numpy.typing as npt

#: Kaldi's log floor: ``std::numeric_limits<float>::epsilon()`` (transformers' ``mel_floor``).
MEL_FLOOR = 1.192092955078125e-07
#: Kaldi defaults AST uses: frame length and shift, s; pre-emphasis; lowest mel frequency, Hz.
FRAME_LENGTH_S = 0.025
FRAME_SHIFT_S = 0.010
PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0


@overload
def kaldi_hertz_to_mel(freq: float) -> float: ...


@overload
def kaldi_hertz_to_mel(freq: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]: ...


def kaldi_hertz_to_mel(freq: npt.NDArray[np.floating[Any]] | float) -> npt.NDArray[np.float64] | float:
    """Kaldi's mel scale: ``1127 · ln(1 + f / 700)`` (Kaldi ``MelBanks::MelScale``).

    Args:
        freq: frequency or frequencies, Hz.

    Returns:
        the same shape, in mel.
    """
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_filter_bank(
    num_frequency_bins: int, num_mel_filters: int, min_frequency: float, max_frequency: float,
    sampling_rate: int,
) -> npt.NDArray[np.float64]:
    """Triangular mel filters, triangular in Kaldi mel space, without normalisation.

    Identical to transformers' ``audio_utils.mel_filter_bank(..., norm=None,
    mel_scale="kaldi", triangularize_in_mel_space=True)`` and to Kaldi's ``MelBanks`` /
    torchaudio's ``kaldi.get_mel_banks`` (which leave out the Nyquist bin; its weight here is 0).

    Args:
        num_frequency_bins: ``n_fft // 2 + 1`` (257 for a 512-point FFT).
        num_mel_filters: number of filters (128 for AST).
        min_frequency: left edge of the lowest filter, Hz (20).
        max_frequency: right edge of the highest filter, Hz (8000 = Nyquist at 16 kHz).
        sampling_rate: Hz; FFT bin ``k`` is at ``k · sampling_rate / n_fft`` Hz.

    Returns:
        float64, shape (num_frequency_bins, num_mel_filters), weights in [0, 1]. A filter
        narrower than one FFT bin that falls between two bins is all zero (filter 3 of 128 at
        16 kHz / 512 points).

    Raises:
        ValueError: fewer than 2 frequency bins or ``min_frequency > max_frequency``.
    """
    if num_frequency_bins < 2:
        raise ValueError(f"need at least 2 frequency bins, got {num_frequency_bins}")
    if min_frequency > max_frequency:
        raise ValueError(f"min_frequency {min_frequency} > max_frequency {max_frequency}")
    mel_edges = np.linspace(kaldi_hertz_to_mel(min_frequency), kaldi_hertz_to_mel(max_frequency),
                            num_mel_filters + 2)
    bin_width = sampling_rate / ((num_frequency_bins - 1) * 2)
    fft_mels = kaldi_hertz_to_mel(bin_width * np.arange(num_frequency_bins))
    # as transformers' _create_triangular_filter_bank, in mel space
    diff = np.diff(mel_edges)
    slopes = mel_edges[None, :] - fft_mels[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


class ASTFeatures:
    """The AST feature extractor in numpy (see the module docstring for every step).

    Stateless after construction (the mel filter bank and window are built once and only
    read), so one instance may be shared between threads.

    Args:
        sampling_rate: expected input rate, Hz (16000 for AST).
        num_mel_bins: mel filters (128).
        max_length: frames per output, padded or truncated (1024 = 10.24 s).
        padding_value: value of padded frames before normalisation (0.0; transformers pads
            with ``torch.nn.ZeroPad2d``, i.e. always 0, so it agrees for every AST config,
            which all say 0.0).
        do_normalize: apply ``(x - mean) / (2 * std)``.
        mean, std: AudioSet statistics of the log-mel fbank (-4.2677393, 4.5689974).

    Raises:
        ValueError: a non-positive rate, bin count or length, or ``std <= 0``.

    Attributes:
        frame_length: samples per frame (400 at 16 kHz: 25 ms).
        hop_length: samples between frames (160: 10 ms).
        fft_length: FFT size (512, the next power of two).
        mel_filters: float64, (fft_length // 2 + 1, num_mel_bins).
        window: float64, (frame_length,), symmetric Hann.
    """

    def __init__(
        self,
        *,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        mean: float = -4.2677393,
        std: float = 4.5689974,
    ) -> None:
        if sampling_rate <= 0 or num_mel_bins <= 0 or max_length <= 0:
            raise ValueError(f"sampling_rate, num_mel_bins and max_length must be positive, got "
                             f"{sampling_rate}, {num_mel_bins}, {max_length}")
        if do_normalize and not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.sampling_rate = int(sampling_rate)
        self.num_mel_bins = int(num_mel_bins)
        self.max_length = int(max_length)
        self.padding_value = float(padding_value)
        self.do_normalize = bool(do_normalize)
        self.mean = float(mean)
        self.std = float(std)
        # Kaldi FrameExtractionOptions: WindowSize / WindowShift / PaddedWindowSize
        self.frame_length = int(self.sampling_rate * FRAME_LENGTH_S)
        self.hop_length = int(self.sampling_rate * FRAME_SHIFT_S)
        self.fft_length = 1 << (self.frame_length - 1).bit_length()
        self.window = np.hanning(self.frame_length)  # symmetric: torch.hann_window(periodic=False)
        self.mel_filters = kaldi_mel_filter_bank(
            self.fft_length // 2 + 1, self.num_mel_bins, LOW_FREQ_HZ, self.sampling_rate // 2, self.sampling_rate
        )
        self.window.flags.writeable = False
        self.mel_filters.flags.writeable = False

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> "ASTFeatures":
        """Build from a model directory's ``preprocessor_config.json``.

        Reads ``sampling_rate``, ``num_mel_bins``, ``max_length``, ``padding_value``,
        ``do_normalize``, ``mean`` and ``std`` (missing keys take transformers' defaults);
        other keys are ignored.

        Args:
            model_dir: directory holding ``preprocessor_config.json``.

        Returns:
            :class:`ASTFeatures`.

        Raises:
            FileNotFoundError: no ``preprocessor_config.json``.
            ValueError: it is not a JSON object, names another ``feature_extractor_type``
                than ``ASTFeatureExtractor``, or holds invalid values.
        """
        path = Path(model_dir) / "preprocessor_config.json"
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a JSON object")
        kind = data.get("feature_extractor_type", "ASTFeatureExtractor")
        if kind != "ASTFeatureExtractor":
            raise ValueError(f"{path}: feature_extractor_type is {kind!r}, expected 'ASTFeatureExtractor'")
        keys = ("sampling_rate", "num_mel_bins", "max_length", "padding_value", "do_normalize", "mean", "std")
        return cls(**{k: data[k] for k in keys if k in data})

    def fbank(self, waveform: npt.NDArray[np.floating[Any] | np.integer[Any]]) -> npt.NDArray[np.float32]:
        """Log-mel filter bank of one segment, neither padded nor normalised.

        Args:
            waveform: mono audio at :attr:`sampling_rate`, shape (n,), full scale ±1.0 (any
                real dtype; rounded to float32 first, as transformers does). NaN/inf propagate.

        Returns:
            float32, shape (1 + (n - frame_length) // hop_length, num_mel_bins), natural log of
            the mel energies floored at :data:`MEL_FLOOR`.

        Raises:
            ValueError: not 1-D after squeezing, or shorter than one frame (400 samples).
        """
        x = np.squeeze(np.asarray(waveform, dtype=np.float32))
        if x.ndim != 1:
            raise ValueError(f"waveform must be mono (1-D), got shape {np.shape(waveform)}")
        if x.size < self.frame_length:
            raise ValueError(f"waveform has {x.size} samples, fewer than one {self.frame_length}-sample frame")
        n_frames = 1 + (x.size - self.frame_length) // self.hop_length
        frames = np.lib.stride_tricks.sliding_window_view(x, self.frame_length)[:: self.hop_length][:n_frames]
        frames = frames.astype(np.float64)  # a copy; transformers works in float64 too
        frames -= frames.mean(axis=1, keepdims=True)
        frames[:, 1:] -= PREEMPHASIS * frames[:, :-1]  # the product is a new array
        frames[:, 0] *= 1.0 - PREEMPHASIS
        frames *= self.window
        spectrum = np.fft.rfft(frames, n=self.fft_length, axis=1).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        mel = np.maximum(MEL_FLOOR, power @ self.mel_filters)
        return np.log(mel).astype(np.float32)

    def __call__(
        self,
        segments: (
            Sequence[npt.NDArray[np.floating[Any] | np.integer[Any]]]
            | npt.NDArray[np.floating[Any] | np.integer[Any]]
        ),
    ) -> npt.NDArray[np.float32]:
        """Model input of a batch of segments.

        Args:
            segments: a list of mono arrays at :attr:`sampling_rate` (16 kHz), each shape
                (n_i,) with n_i >= 400, full scale ±1.0; or one 1-D array (a batch of one), or
                a 2-D array (one segment a row).

        Returns:
            float32, C-contiguous, shape (len(segments), max_length, num_mel_bins) =
            (n, 1024, 128): per segment the log-mel fbank padded with ``padding_value`` or
            truncated to ``max_length`` frames, then normalised (if ``do_normalize``).
            Equal to ``ASTFeatureExtractor(...)(segments, sampling_rate=16000,
            return_tensors="np")["input_values"]`` within float32 rounding.

        Raises:
            ValueError: no segments, or a segment that :meth:`fbank` rejects.
        """
        if isinstance(segments, np.ndarray) and segments.ndim == 1:
            segments = [segments]
        if len(segments) == 0:
            raise ValueError("no segments to featurise")
        out = np.full((len(segments), self.max_length, self.num_mel_bins), self.padding_value, dtype=np.float32)
        for i, segment in enumerate(segments):
            fbank = self.fbank(segment)[: self.max_length]
            out[i, : fbank.shape[0]] = fbank
        if self.do_normalize:
            # float32 arithmetic with the constants rounded to float32, as numpy does for
            # transformers' ``(input_values - self.mean) / (self.std * 2)``
            out -= np.float32(self.mean)
            out /= np.float32(self.std * 2)
        return out


__all__ = ["ASTFeatures", "MEL_FLOOR", "kaldi_hertz_to_mel", "kaldi_mel_filter_bank"]
