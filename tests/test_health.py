"""Microphone content health: each fault raises its own flag, thresholds bite, real audio."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import soundfile as sf

from agent.analysis.health import RMS_FLOOR_DBFS, assess_health
from agent.config import HealthConfig
from agent.records import HEALTH_FLAGS
from tests.audio import real_recordings
from tests.isolation import modules_imported_by

FS = 48000
N = 10 * FS
CFG = HealthConfig()


def _noise(rms: float, n: int = N, seed: int = 0) -> np.ndarray:
    """White Gaussian noise with exactly zero mean and exactly the given RMS, float64."""
    x = np.random.default_rng(seed).standard_normal(n)
    x -= x.mean()
    return x * (rms / np.sqrt(np.mean(x**2)))


def _mains(fundamental_hz: float, amplitude: float, harmonics: int = 5, n: int = N) -> np.ndarray:
    """Mains hum: a fundamental and its harmonics, amplitude falling as 1/k, float64."""
    t = np.arange(n) / FS
    return sum(amplitude / k * np.sin(2 * np.pi * k * fundamental_hz * t + k) for k in range(1, harmonics + 1))


def _health(x, fs=FS, cfg=CFG):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return assess_health(np.asarray(x, dtype=np.float32), fs, cfg)


def test_clean_noise_is_healthy():
    h = _health(_noise(0.01))
    assert h.flags == ()
    assert h.clipping_ratio == 0.0 and abs(h.dc_offset_fs) < 1e-6
    assert h.rms_dbfs == pytest.approx(-40.0, abs=0.01)
    assert h.hum_share < 0.002  # 16 Hz of bands out of 24 kHz of white noise


def test_clipped_sine_raises_clipping_only():
    t = np.arange(N) / FS
    x = np.clip(1.5 * np.sin(2 * np.pi * 997.0 * t), -1.0, 1.0)  # driven 3.5 dB past full scale
    h = _health(x)
    assert h.flags == ("clipping",)
    # share of time |1.5 sin| >= 0.999
    assert h.clipping_ratio == pytest.approx(1 - 2 / math.pi * math.asin(0.999 / 1.5), abs=0.005)


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        (0.0, ("silence",)),
        (1 / 32768, ("silence",)),  # a constant one-LSB value: flat, DC below the threshold
        (0.5, ("dc_offset", "silence")),  # a stuck non-zero value is also an offset
        (1.0, ("clipping", "dc_offset", "silence")),  # pinned at full scale; HEALTH_FLAGS order
    ],
)
def test_flat_window_is_silence(value, flags):
    h = _health(np.full(N, value))
    assert h.flags == flags
    assert h.rms_dbfs == RMS_FLOOR_DBFS and h.hum_share == 0.0
    assert h.dc_offset_fs == pytest.approx(value, rel=1e-6)


def test_quiet_noise_is_silence():
    h = _health(_noise(10 ** (-100 / 20)))
    assert h.flags == ("silence",) and h.rms_dbfs == pytest.approx(-100.0, abs=0.01)


def test_dc_offset_raises_dc_offset_only():
    h = _health(_noise(0.01) + 0.1)
    assert h.flags == ("dc_offset",)
    assert h.dc_offset_fs == pytest.approx(0.1, abs=1e-6)
    assert h.rms_dbfs == pytest.approx(-40.0, abs=0.01)  # RMS is taken with the DC removed


@pytest.mark.parametrize("fundamental_hz", [50.0, 49.8, 50.2, 60.0, 59.8, 60.2])
def test_mains_hum_raises_mains_hum_only(fundamental_hz):
    hum = _mains(fundamental_hz, 0.02)
    noise = _noise(10 ** (-60 / 20))  # low-level background
    h = _health(hum + noise)
    assert h.flags == ("mains_hum",)
    true_share = np.mean(hum**2) / np.mean((hum + noise) ** 2)
    # a drifted fundamental (and its 5x drifted 5th harmonic) is captured as fully as 50.0
    assert h.hum_share == pytest.approx(true_share, abs=0.005)
    assert h.hum_share > 0.98


@pytest.mark.parametrize(("true_share", "flagged"), [(0.4, False), (0.6, True)])
def test_hum_share_is_the_power_share(true_share, flagged):
    hum = _mains(50.0, 1.0)
    hum *= math.sqrt(true_share * 1e-4 / np.mean(hum**2))
    noise = _noise(math.sqrt((1 - true_share) * 1e-4), seed=3)
    h = _health(hum + noise)
    assert h.hum_share == pytest.approx(true_share, abs=0.01)
    assert ("mains_hum" in h.flags) is flagged


@pytest.mark.parametrize("freq_hz", [55.0, 90.0, 1000.0])
def test_tones_off_the_mains_harmonics_are_not_hum(freq_hz):
    t = np.arange(N) / FS
    h = _health(0.1 * np.sin(2 * np.pi * freq_hz * t) + _noise(0.001))
    assert h.hum_share < 0.01 and h.flags == ()


def _with_clipped_share(share: float, offset: float = 0.0) -> np.ndarray:
    x = _noise(0.05) + offset
    k = round(share * N)
    x[np.random.default_rng(7).choice(N, size=k, replace=False)] = np.where(np.arange(k) % 2, 1.0, -1.0)
    return x


@pytest.mark.parametrize(("share", "flagged"), [(0.0005, False), (0.001, False), (0.002, True)])
def test_clipping_threshold(share, flagged):
    h = _health(_with_clipped_share(share))
    assert h.clipping_ratio == pytest.approx(share, abs=1e-9)
    assert h.flags == (("clipping",) if flagged else ())


def test_clip_level():
    x = _noise(0.05)
    x[:1000] = 0.9989  # just below clip_level_fs = 0.999: not clipped
    assert _health(x).clipping_ratio == 0.0
    x[:1000] = -32767 / 32768  # within one LSB of full scale
    assert _health(x).clipping_ratio == pytest.approx(1000 / N)


@pytest.mark.parametrize(("offset", "flagged"), [(0.0499, False), (-0.0499, False), (0.0501, True), (-0.0501, True)])
def test_dc_threshold(offset, flagged):
    h = _health(_noise(0.01) + offset)
    assert h.flags == (("dc_offset",) if flagged else ())


@pytest.mark.parametrize(("rms_dbfs", "flagged"), [(-89.0, False), (-91.0, True)])
def test_silence_threshold(rms_dbfs, flagged):
    h = _health(_noise(10 ** (rms_dbfs / 20)))
    assert h.rms_dbfs == pytest.approx(rms_dbfs, abs=0.01)
    assert h.flags == (("silence",) if flagged else ())


def test_thresholds_come_from_the_config():
    x = _with_clipped_share(0.002, offset=0.02)
    assert _health(x).flags == ("clipping",)
    assert _health(x, cfg=HealthConfig(max_dc_offset_fs=0.01)).flags == ("clipping", "dc_offset")
    assert _health(x, cfg=HealthConfig(max_clipping_ratio=0.01)).flags == ()
    hum = _mains(60.0, 0.02, harmonics=8) + _noise(0.001)
    assert "mains_hum" in _health(hum, cfg=HealthConfig(hum_harmonics=1, max_hum_share=0.5)).flags
    assert _health(hum, cfg=HealthConfig(hum_harmonics=1, max_hum_share=0.9)).flags == ()
    assert _health(hum, cfg=HealthConfig(hum_harmonics=8, max_hum_share=0.9)).flags == ("mains_hum",)


def test_other_rates_and_lengths():
    # 8 kHz, 1 s (the shortest window): one 1 s Welch segment, 1 Hz bins
    t = np.arange(8000) / 8000
    hum = 0.02 * np.sin(2 * np.pi * 50.2 * t)
    h = _health(hum + 0.0005 * np.random.default_rng(0).standard_normal(8000), fs=8000)
    assert h.flags == ("mains_hum",) and h.hum_share > 0.95
    assert _health(np.array([0.0, 0.5, -0.5]), fs=8000).rms_dbfs == pytest.approx(20 * math.log10(math.sqrt(1 / 6)))


def _real_windows():
    for path in real_recordings():
        x, fs = sf.read(str(path), dtype="float32")
        step = int(10 * fs)
        for start in range(0, len(x), step):  # every 10 s window, the last one possibly shorter
            yield path.stem, start / fs, x[start:start + step], fs


def test_real_recordings_raise_no_flag():
    """No flag on any window of the real recordings at the defaults. The Song Meter SM4 files
    carry a steady +0.029 FS ADC offset (~940 LSB, 0.26 dB of headroom): below the default
    0.05, flagged only when an operator lowers it to 0.01 (e.g. for an AudioMoth, which
    removes DC in firmware)."""
    windows = list(_real_windows())
    assert len(windows) == 10  # 8 Song Meter windows, 2 of the 19.5 s spinetail file
    for stem, start_s, x, fs in windows:
        h = _health(x, fs=fs)
        where = f"{stem} @ {start_s:g} s"
        assert h.clipping_ratio == 0.0, where
        assert -60.0 < h.rms_dbfs < -25.0, where
        assert h.hum_share < 0.05, where
        assert h.flags == (), where
        strict = _health(x, fs=fs, cfg=HealthConfig(max_dc_offset_fs=0.01))
        if stem.startswith("S4A03895"):
            assert 0.028 < h.dc_offset_fs < 0.030 and strict.flags == ("dc_offset",), where
        else:
            assert abs(h.dc_offset_fs) < 1e-4 and strict.flags == (), where
        assert _health(x - x.mean(), fs=fs).flags == (), where


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 100), np.float32), "1-D"),
        (np.array([0.0, np.nan, 0.1], np.float32), "non-finite"),
        (np.array([0.0, np.inf], np.float64), "non-finite"),
    ],
)
def test_invalid_input_raises_value_error(samples, message):
    with pytest.raises(ValueError, match=message):
        assess_health(samples, FS, CFG)


def test_invalid_rate_raises_value_error():
    with pytest.raises(ValueError, match="sample_rate"):
        assess_health(np.zeros(100, np.float32), 0, CFG)


def test_values_are_floats_and_flags_known():
    h = _health(_mains(50.0, 0.02) + _noise(0.001) + 0.1)
    assert all(type(v) is float for v in (h.clipping_ratio, h.dc_offset_fs, h.rms_dbfs, h.hum_share))
    assert set(h.flags) <= set(HEALTH_FLAGS) and h.flags == ("dc_offset", "mains_hum")


def test_input_is_not_modified():
    x = _noise(0.01) + 0.3
    before = x.copy()
    assess_health(x, FS, CFG)  # float64 in: no conversion copy, yet centring must not touch it
    assert np.array_equal(x, before)


def test_module_import_needs_only_numpy():
    assert modules_imported_by("import agent.analysis.health", ("scipy", "maad")) == []
