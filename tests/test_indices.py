"""Acoustic indices: the numpy implementation against scikit-maad's own functions (the
reference, a test-only dependency) on the real recordings, silence, behaviour, import cost."""

from __future__ import annotations

import math
import warnings

import maad.features
import maad.sound
import numpy as np
import pytest
import soundfile as sf

from agent.analysis.indices import _spectrogram, compute_indices
from agent.config import IndicesConfig
from tests.audio import real_recordings
from tests.isolation import modules_imported_by

FIELDS = ("aci", "adi", "aei", "bi", "ndsi", "hf", "ht")

# The [indices] defaults, written out so that the reference below does not read them from
# the code under test (test_defaults_are_the_values_used_here ties the two together).
DEFAULTS = dict(
    nperseg=1024, noverlap=0, window="hann", fmin=0.0, fmax=20000.0, bin_step=1000.0,
    db_threshold=-50.0, bi_flim=(2000.0, 15000.0), bio=(1000.0, 10000.0), anthro=(0.0, 1000.0),
)
OTHER = dict(
    nperseg=512, noverlap=256, window="hamming", fmin=500.0, fmax=9000.0, bin_step=500.0,
    db_threshold=-40.0, bi_flim=(1500.0, 8000.0), bio=(2000.0, 8000.0), anthro=(0.0, 2000.0),
)


def _config(p: dict) -> IndicesConfig:
    return IndicesConfig(
        nperseg=p["nperseg"], noverlap=p["noverlap"], window=p["window"], fmin_hz=p["fmin"],
        fmax_hz=p["fmax"], bin_step_hz=p["bin_step"], db_threshold=p["db_threshold"],
        bi_flim_hz=p["bi_flim"], ndsi_bio_hz=p["bio"], ndsi_anthro_hz=p["anthro"],
    )


def maad_reference(samples: np.ndarray, fs: int, p: dict) -> dict[str, float]:
    """The seven indices by calling scikit-maad directly, upper band limits clipped to fs/2."""
    x = samples.astype(np.float64)  # as maad.sound.load returns audio
    nyq = fs / 2
    A, _, fn, _ = maad.sound.spectrogram(
        x, fs, window=p["window"], nperseg=p["nperseg"], noverlap=p["noverlap"], mode="amplitude"
    )
    P, _, fn_p, _ = maad.sound.spectrogram(
        x, fs, window=p["window"], nperseg=p["nperseg"], noverlap=p["noverlap"], mode="psd"
    )
    # the module derives P as A**2 from one STFT: must be maad's psd output bit for bit
    assert np.array_equal(A**2, P) and np.array_equal(fn, fn_p)
    fmax = min(p["fmax"], nyq)
    return dict(
        aci=maad.features.acoustic_complexity_index(A)[2],
        adi=maad.features.acoustic_diversity_index(
            A, fn, fmin=p["fmin"], fmax=fmax, bin_step=p["bin_step"],
            dB_threshold=p["db_threshold"], index="shannon",
        ),
        aei=maad.features.acoustic_eveness_index(
            A, fn, fmin=p["fmin"], fmax=fmax, bin_step=p["bin_step"], dB_threshold=p["db_threshold"]
        ),
        bi=maad.features.bioacoustics_index(A, fn, flim=(p["bi_flim"][0], min(p["bi_flim"][1], nyq))),
        ndsi=maad.features.soundscape_index(
            P, fn, flim_bioPh=(p["bio"][0], min(p["bio"][1], nyq)), flim_antroPh=p["anthro"]
        )[0],
        hf=maad.features.frequency_entropy(P, compatibility="seewave")[0],
        ht=maad.features.temporal_entropy(x, compatibility="seewave", mode="fast", Nt=512),
    )


def _window(path, seconds: float = 10.0) -> tuple[np.ndarray, int]:
    x, fs = sf.read(str(path), dtype="float32")
    return x[: int(seconds * fs)], fs


def _assert_equal(result, ref: dict[str, float]) -> None:
    # The module repeats maad's and scipy's arithmetic operation for operation (same FFT
    # library as scipy.fft, same array layouts, hence the same summation order), and with
    # numpy 2.4 / scipy 1.17 / maad 1.5.2 every value is bit-identical. rel=1e-12 leaves room
    # only for a future numpy/scipy changing the rounding of one side's FFT or reductions.
    for name in FIELDS:
        value = getattr(result, name)
        assert type(value) is float, name  # a Python float, not numpy
        assert math.isfinite(value), name
        assert value == pytest.approx(float(ref[name]), rel=1e-12, abs=1e-15), name


def test_defaults_are_the_values_used_here():
    assert _config(DEFAULTS) == IndicesConfig()


@pytest.mark.parametrize("path", real_recordings(), ids=lambda p: p.stem)
def test_equals_scikit_maad_on_real_recordings(path):
    x, fs = _window(path)
    _assert_equal(compute_indices(x, fs, IndicesConfig()), maad_reference(x, fs, DEFAULTS))


@pytest.mark.parametrize("name", ["S4A03895_20190522_060000", "spinetail_20180919_160000"])
def test_every_parameter_is_used_as_maad_uses_it(name):
    x, fs = _window(next(p for p in real_recordings() if p.stem == name))
    result = compute_indices(x, fs, _config(OTHER))
    _assert_equal(result, maad_reference(x, fs, OTHER))
    default = compute_indices(x, fs, IndicesConfig())
    assert all(getattr(result, f) != getattr(default, f) for f in FIELDS if f != "ht")


@pytest.mark.parametrize(
    "changes",
    [
        # scipy's frame count (noverlap > nperseg/2), odd nperseg, int-truncated band edges
        dict(window="blackman", nperseg=1000, noverlap=700, fmin=250.5, bin_step=777.7, anthro=(0.0, 1500.0)),
        # boxcar: every mean-removed segment of PCM audio has an exactly-zero 0 Hz bin, so ACI
        # is NaN (maad's 0/0); a pooled NDSI bin width that is no multiple of the bin width
        dict(window="boxcar", nperseg=64, noverlap=48, anthro=(300.0, 1234.5), bio=(2500.0, 30000.0)),
        # the anthrophony band exactly one bin wide (44.1 kHz / 1024)
        dict(anthro=(0.0, 44100 / 1024), bi_flim=(1000.0, 30000.0)),
        # every ADI/AEI band score zero (maad's entropy of zeros is 1: ADI = ln 5), one band
        dict(db_threshold=0.0, fmin=15000.0),
        dict(fmax=1500.0),
    ],
    ids=["blackman-overlap", "boxcar-64", "anthro-one-bin", "adi-no-activity", "adi-one-band"],
)
def test_other_windows_and_edge_parameters(changes):
    x, fs = _window(next(p for p in real_recordings() if p.stem == "spinetail_20180919_160000"))
    p = dict(DEFAULTS, **changes)
    result = compute_indices(x, fs, _config(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maad's own 0/0 warnings for an ACI/Hf bin of zeros
        ref = {name: float(v) for name, v in maad_reference(x, fs, p).items()}
    for name in FIELDS:
        if math.isfinite(ref[name]):
            assert getattr(result, name) == pytest.approx(ref[name], rel=1e-12, abs=1e-15), name
        else:
            assert math.isnan(getattr(result, name)), name
    if p["window"] == "boxcar":
        assert math.isnan(result.aci) and math.isnan(ref["aci"])


@pytest.mark.parametrize(
    ("window", "nperseg", "noverlap"),
    [("hann", 1024, 0), ("hamming", 512, 256), ("blackman", 1000, 700), ("boxcar", 64, 0)],
)
def test_spectrogram_is_maads_bit_for_bit(window, nperseg, noverlap):
    x, fs = _window(next(p for p in real_recordings() if p.stem == "S4A03895_20190522_060000"))
    x = x.astype(np.float64)
    ref, _, fn_ref, _ = maad.sound.spectrogram(
        x, fs, window=window, nperseg=nperseg, noverlap=noverlap, mode="amplitude"
    )
    amp, fn = _spectrogram(x, fs, window, nperseg, noverlap)
    assert np.array_equal(amp, ref) and np.array_equal(fn, fn_ref)
    # the same memory layout as maad's, hence numpy's same summation order in the indices
    assert amp.strides == ref.strides


@pytest.mark.parametrize("rate", [8000, 16000, 96000])
def test_other_sample_rates(rate):
    import soxr

    x, fs = _window(next(p for p in real_recordings() if p.stem == "spinetail_20180919_160000"))
    y = soxr.resample(x, fs, rate, quality="HQ").astype(np.float32)
    _assert_equal(compute_indices(y, rate, IndicesConfig()), maad_reference(y, rate, DEFAULTS))


def test_band_limits_are_clipped_to_nyquist():
    # 22 kHz recording: Nyquist 11 kHz, default fmax 20 kHz and BI band up to 15 kHz
    x, fs = _window(next(p for p in real_recordings() if p.stem == "S4A03895_20190522_000000"))
    assert fs == 22000
    result = compute_indices(x, fs, IndicesConfig())
    A, _, fn, _ = maad.sound.spectrogram(x.astype(np.float64), fs, nperseg=1024, noverlap=0, mode="amplitude")
    unclipped = maad.features.acoustic_eveness_index(A, fn, fmin=0, fmax=20000, bin_step=1000, dB_threshold=-50)
    clipped = maad.features.acoustic_eveness_index(A, fn, fmin=0, fmax=11000, bin_step=1000, dB_threshold=-50)
    # unclipped, maad re-counts its top bin as 9 phantom 1 kHz bands (11-20 kHz)
    assert result.aei == pytest.approx(clipped, rel=1e-12) and abs(unclipped - clipped) > 0.2
    # a band wholly above Nyquist is undefined; the other indices are unaffected
    high = compute_indices(x, fs, IndicesConfig(bi_flim_hz=(12000.0, 15000.0), fmin_hz=11000.0))
    assert math.isnan(high.bi) and math.isnan(high.adi) and math.isnan(high.aei)
    assert (high.aci, high.ndsi, high.hf, high.ht) == (result.aci, result.ndsi, result.hf, result.ht)


@pytest.mark.parametrize(
    "samples",
    [np.zeros(480000, np.float32), np.full(480000, 0.25, np.float32), np.full(480000, -1 / 32768, np.float32)],
    ids=["zeros", "constant", "constant-1-lsb"],
)
def test_silence_gives_nan_without_warnings_or_output(samples, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_indices(samples, 48000, IndicesConfig())
    assert all(math.isnan(getattr(result, f)) for f in FIELDS)
    assert capsys.readouterr() == ("", "")


def test_near_silence_is_finite_without_warnings_or_output(capsys):
    lsb_dither = np.random.default_rng(0).integers(-1, 2, 480000).astype(np.float32) / 32768
    one_click = np.zeros(480000, np.float32)
    one_click[240000] = 1 / 32768
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x in (lsb_dither, one_click):
            result = compute_indices(x, 48000, IndicesConfig())
            assert all(math.isfinite(getattr(result, f)) for f in FIELDS), result
    assert capsys.readouterr() == ("", "")


def _tone(freq_hz: float, amplitude: float, n: int, fs: int) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / fs)).astype(np.float32)


def test_loud_tone_raises_bi_only_inside_its_band():
    x, fs = _window(next(p for p in real_recordings() if p.stem == "S4A03895_20190522_120000"))
    base = compute_indices(x, fs, IndicesConfig()).bi  # 575.2
    in_band = compute_indices(x + _tone(4000.0, 0.05, x.size, fs), fs, IndicesConfig()).bi  # 589.6
    below_band = compute_indices(x + _tone(1000.0, 0.2, x.size, fs), fs, IndicesConfig()).bi
    assert in_band > base + 10
    # BI is relative to the band's own minimum: a louder sound outside 2-15 kHz changes nothing
    assert below_band == pytest.approx(base, rel=1e-5)


def test_200hz_hum_drives_ndsi_towards_minus_one():
    x, fs = _window(next(p for p in real_recordings() if p.stem == "spinetail_20180919_160000"))
    base = compute_indices(x, fs, IndicesConfig()).ndsi
    hummed = compute_indices(x + _tone(200.0, 0.3, x.size, fs), fs, IndicesConfig()).ndsi
    assert base > 0.9 and hummed < -0.9


def test_entropies_and_diversity_separate_noise_tone_and_clicks():
    fs, n = 48000, 480000
    rng = np.random.default_rng(1)
    noise = (0.1 * rng.standard_normal(n)).astype(np.float32)
    tone = _tone(3000.0, 0.5, n, fs)
    clicks = (0.001 * rng.standard_normal(n)).astype(np.float32)
    clicks[:: fs] = 0.9  # one click a second over faint noise
    r_noise, r_tone, r_clicks = (compute_indices(x, fs, IndicesConfig()) for x in (noise, tone, clicks))
    assert r_noise.hf > 0.95 and r_tone.hf < 0.3  # flat spectrum vs one line
    assert r_noise.adi == pytest.approx(math.log(20), abs=0.01)  # every 1 kHz band active
    assert r_noise.aei < 0.01 and r_tone.aei > 0.5
    assert r_noise.ht > 0.99 and r_clicks.ht < r_noise.ht - 0.05  # energy concentrated in time


def test_invalid_input_raises_value_error():
    cfg = IndicesConfig()
    with pytest.raises(ValueError, match="1-D"):
        compute_indices(np.zeros((2, 48000), np.float32), 48000, cfg)
    with pytest.raises(ValueError, match="1-D"):
        compute_indices(np.zeros(0, np.float32), 48000, cfg)
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_indices(np.array([0.0, np.nan] * 24000, np.float32), 48000, cfg)
    with pytest.raises(ValueError, match="too short"):
        compute_indices(np.ones(2000, np.float32), 48000, cfg)
    with pytest.raises(ValueError, match="narrower than one spectrogram bin"):
        compute_indices(np.ones(480000, np.float32), 48000, IndicesConfig(nperseg=64, ndsi_anthro_hz=(0.0, 500.0)))
    with pytest.raises(ValueError, match="window must be"):  # only an unvalidated config can
        compute_indices(np.ones(480000, np.float32), 48000, IndicesConfig.model_construct(window="kaiser"))


HEAVY = ("maad", "pandas", "matplotlib", "skimage", "PIL", "scipy.stats", "scipy.signal", "scipy.ndimage")


def test_module_import_does_not_load_scikit_maad():
    assert modules_imported_by("import agent.analysis.indices", HEAVY) == []


def test_computing_indices_does_not_load_scikit_maad_or_scipy_stats():
    code = (
        "import math, soundfile\n"
        "from agent.analysis.indices import compute_indices\n"
        "from agent.config import IndicesConfig\n"
        "x, fs = soundfile.read('data/recordings/S4A03895_20190522_060000.wav', dtype='float32')\n"
        "r = compute_indices(x[: 10 * fs], fs, IndicesConfig())\n"
        "assert all(math.isfinite(v) for v in (r.aci, r.adi, r.aei, r.bi, r.ndsi, r.hf, r.ht)), r\n"
    )
    assert modules_imported_by(code, HEAVY) == []
