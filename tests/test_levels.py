"""Calibrated SPL: analytic sine levels, silence, a real field recording."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent.analysis.levels import P_RMS_FLOOR_PA, compute_levels
from agent.config import LevelsConfig

# bundled copies of the scikit-maad recordings (/work/shared/audio, byte-identical)
AUDIO = Path(__file__).resolve().parent.parent / "data" / "recordings"


def expected_sine_leq_db(amplitude_fs: float, cfg: LevelsConfig) -> float:
    """Analytic Leq (dB re 20 µPa) of a sine of peak ``amplitude_fs`` through the maad chain.

    p_rms = A/√2 · Vadc/2 / 10^(S/20) / 10^(G/20);  L = 20·log10(p_rms / 20 µPa).
    """
    p_rms = (
        amplitude_fs / math.sqrt(2.0) * cfg.vadc / 2.0
        / 10.0 ** (cfg.sensitivity_dbv / 20.0) / 10.0 ** (cfg.gain_db / 20.0)
    )
    return 20.0 * math.log10(p_rms / 20e-6)


def _sine(amplitude: float, freq_hz: float, rate: int, duration_s: float) -> np.ndarray:
    t = np.arange(int(round(duration_s * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("dbfs", "rate", "duration_s", "cfg", "n_series"),
    [
        # AudioMoth defaults, 48 kHz, 10 s
        (-20.0, 48000, 10.0, LevelsConfig(), 10),
        # different chain; 3.5 s window: the trailing half interval is dropped from the series
        (-6.0, 44100, 3.5, LevelsConfig(gain_db=20.0, sensitivity_dbv=-26.0, vadc=2.0), 3),
        # 0.5 s intervals at a rate where 1 kHz has a non-integer number of samples per cycle
        (-12.0, 22050, 2.3, LevelsConfig(gain_db=30.0, sensitivity_dbv=-42.0, vadc=1.8,
                                         series_interval_s=0.5), 4),
    ],
)
def test_sine_matches_analytic_level(dbfs, rate, duration_s, cfg, n_series):
    amplitude = 10.0 ** (dbfs / 20.0)
    x = _sine(amplitude, 1000.0, rate, duration_s)
    levels = compute_levels(x, rate, cfg)
    expected = expected_sine_leq_db(amplitude, cfg)

    assert levels.leq_db == pytest.approx(expected, abs=0.1)
    assert len(levels.leq_series_db) == n_series == math.floor(duration_s / cfg.series_interval_s)
    for value in levels.leq_series_db:
        assert value == pytest.approx(expected, abs=0.1)
    # the sine's highest sample is within a hair of its amplitude
    assert levels.peak_dbfs == pytest.approx(dbfs, abs=0.05)
    assert all(isinstance(v, float) for v in (levels.leq_db, levels.peak_dbfs, *levels.leq_series_db))


def test_level_scales_with_amplitude_and_gain():
    cfg = LevelsConfig()
    x = _sine(0.05, 1000.0, 48000, 2.0)
    base = compute_levels(x, 48000, cfg).leq_db
    assert compute_levels(2 * x, 48000, cfg).leq_db - base == pytest.approx(20 * math.log10(2), abs=1e-6)
    louder_gain = LevelsConfig(gain_db=cfg.gain_db + 10.0)
    assert compute_levels(x, 48000, louder_gain).leq_db - base == pytest.approx(-10.0, abs=1e-6)


def test_silence_is_finite_and_floored_without_warnings():
    floor_db = 20 * math.log10(P_RMS_FLOOR_PA / 20e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        levels = compute_levels(np.zeros(48000 * 3, dtype=np.float32), 48000, LevelsConfig())
    assert levels.leq_db == pytest.approx(floor_db)
    assert levels.leq_series_db == pytest.approx((floor_db,) * 3)
    assert levels.peak_dbfs == pytest.approx(-240.0)
    assert all(math.isfinite(v) for v in (levels.leq_db, levels.peak_dbfs, *levels.leq_series_db))


def test_silent_second_inside_signal_is_floored_not_minus_inf():
    x = _sine(0.1, 1000.0, 16000, 3.0)
    x[16000:32000] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        levels = compute_levels(x, 16000, LevelsConfig())
    assert levels.leq_series_db[1] == pytest.approx(20 * math.log10(P_RMS_FLOOR_PA / 20e-6))
    assert levels.leq_series_db[0] > 0 and levels.leq_series_db[2] > 0


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 100), np.float32),
                                 np.array([0.0, np.nan], np.float32)])
def test_rejects_invalid_input(bad):
    with pytest.raises(ValueError):
        compute_levels(bad, 48000, LevelsConfig())


@pytest.mark.parametrize("name", ["S4A03895_20190522_060000.wav", "spinetail_20180919_160000.wav"])
def test_real_recording(name):
    import maad.spl

    x, rate = sf.read(AUDIO / name, dtype="float32")
    cfg = LevelsConfig()
    levels = compute_levels(x, rate, cfg)
    series = np.array(levels.leq_series_db)

    assert len(series) == math.floor(len(x) / rate)
    assert np.all(np.isfinite(series)) and math.isfinite(levels.leq_db)
    # plausible outdoor levels through the default AudioMoth chain, far from the silence floor
    assert 10.0 < levels.leq_db < 110.0
    assert np.all(series > 0.0)
    # Leq is an energy mean: between the quietest and loudest second, >= their arithmetic mean
    assert series.min() - 1e-9 <= levels.leq_db <= series.max() + 1e-9
    assert levels.leq_db >= series.mean() - 1e-9
    whole_seconds = x[: len(series) * rate]
    if len(whole_seconds) == len(x):  # no partial interval: exactly the energy mean of the series
        assert levels.leq_db == pytest.approx(10 * math.log10(np.mean(10 ** (series / 10))), abs=1e-6)
    # RMS <= peak: Leq cannot exceed the level of a full-scale DC signal scaled to the peak
    full_scale_db = 20 * math.log10(
        cfg.vadc / 2 / 10 ** (cfg.sensitivity_dbv / 20) / 10 ** (cfg.gain_db / 20) / 20e-6
    )
    assert levels.leq_db <= full_scale_db + levels.peak_dbfs + 1e-9
    assert -90.0 < levels.peak_dbfs <= 0.0
    assert levels.peak_dbfs == pytest.approx(20 * math.log10(np.max(np.abs(x))))
    # independent path through scikit-maad's wav2leq, which adds dBref = 94 dB for 1 Pa
    # instead of the exact 20·log10(1 Pa / 20 µPa) = 93.979 dB: a constant 0.0206 dB apart
    ref = maad.spl.wav2leq(x.astype(np.float64), rate, gain=cfg.gain_db, Vadc=cfg.vadc,
                           sensitivity=cfg.sensitivity_dbv, dt=1)
    np.testing.assert_allclose(ref - series, 94.0 - 20 * math.log10(1 / 20e-6), atol=1e-6)
