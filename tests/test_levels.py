"""Calibrated noise indicators (agent.analysis.levels), verified against IEC 61672-1:2013
(frequency weightings A/C, time weightings F/S) and IEC 61260-1:2014 (one-third-octave bands)
with real signals: sines, tone bursts, pink noise and the bundled field recordings. No mocks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.signal as sps
import soundfile as sf

from agent.analysis import levels as levels_mod
from agent.analysis.levels import (
    P_REF_PA,
    P_RMS_FLOOR_PA,
    LevelMeter,
    compute_levels,
    nominal_calibration,
    third_octave_bands,
    wav_to_pressure,
    weighting_response_db,
)
from agent.config import LevelsConfig
from agent.records import Calibration
from tests.isolation import modules_imported_by

# bundled copies of the scikit-maad recordings (/work/shared/audio, byte-identical)
AUDIO = Path(__file__).resolve().parent.parent / "data" / "recordings"
RECORDINGS = sorted(p.name for p in AUDIO.glob("*.wav"))

FLOOR_DB = 20 * math.log10(P_RMS_FLOOR_PA / 20e-6)
INF = math.inf

# IEC 61672-1:2013, Table 3: nominal frequency (Hz), A weighting (dB), C weighting (dB),
# Class 1 acceptance limits (upper, lower) on the deviation from the design goal (dB).
IEC_61672_TABLE3 = [
    (10, -70.4, -14.3, 3.0, -INF),
    (12.5, -63.4, -11.2, 2.5, -INF),
    (16, -56.7, -8.5, 2.0, -4.0),
    (20, -50.5, -6.2, 2.0, -2.0),
    (25, -44.7, -4.4, 2.0, -1.5),
    (31.5, -39.4, -3.0, 1.5, -1.5),
    (40, -34.6, -2.0, 1.0, -1.0),
    (50, -30.2, -1.3, 1.0, -1.0),
    (63, -26.2, -0.8, 1.0, -1.0),
    (80, -22.5, -0.5, 1.0, -1.0),
    (100, -19.1, -0.3, 1.0, -1.0),
    (125, -16.1, -0.2, 1.0, -1.0),
    (160, -13.4, -0.1, 1.0, -1.0),
    (200, -10.9, 0.0, 1.0, -1.0),
    (250, -8.6, 0.0, 1.0, -1.0),
    (315, -6.6, 0.0, 1.0, -1.0),
    (400, -4.8, 0.0, 1.0, -1.0),
    (500, -3.2, 0.0, 1.0, -1.0),
    (630, -1.9, 0.0, 1.0, -1.0),
    (800, -0.8, 0.0, 1.0, -1.0),
    (1000, 0.0, 0.0, 0.7, -0.7),
    (1250, 0.6, 0.0, 1.0, -1.0),
    (1600, 1.0, -0.1, 1.0, -1.0),
    (2000, 1.2, -0.2, 1.0, -1.0),
    (2500, 1.3, -0.3, 1.0, -1.0),
    (3150, 1.2, -0.5, 1.0, -1.0),
    (4000, 1.0, -0.8, 1.0, -1.0),
    (5000, 0.5, -1.3, 1.5, -1.5),
    (6300, -0.1, -2.0, 1.5, -2.0),
    (8000, -1.1, -3.0, 1.5, -2.5),
    (10000, -2.5, -4.4, 2.0, -3.0),
    (12500, -4.3, -6.2, 2.0, -5.0),
    (16000, -6.6, -8.5, 2.5, -16.0),
    (20000, -9.3, -11.2, 3.0, -INF),
]
# Table 3's rows are band numbers -20..13 of the base-10 series: exact fm = 1000·10^(x/10).
TABLE3_EXACT_HZ = [1000.0 * 10 ** (x / 10) for x in range(-20, 14)]

# IEC 61672-1:2013, Annex E: analytic design goals, transcribed independently of the module.
F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217
A1000, C1000 = -2.000, -0.062


def annex_e_db(curve: str, f: np.ndarray) -> np.ndarray:
    f2 = np.asarray(f, dtype=np.float64) ** 2
    if curve == "A":
        return 20 * np.log10(
            F4**2 * f2**2 / ((f2 + F1**2) * np.sqrt(f2 + F2**2) * np.sqrt(f2 + F3**2) * (f2 + F4**2))
        ) - A1000
    return 20 * np.log10(F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))) - C1000


def table3_rows(sample_rate: int):
    """(nominal, exact, A, C, upper, lower) of the Table 3 rows a rate can represent (≤ 0.45·fs)."""
    return [(row[0], ex, *row[1:]) for row, ex in zip(IEC_61672_TABLE3, TABLE3_EXACT_HZ, strict=False)
            if row[0] <= 0.45 * sample_rate]


def expected_sine_leq_db(amplitude_fs: float, cfg: LevelsConfig) -> float:
    """Analytic Leq (dB re 20 µPa) of a sine of peak ``amplitude_fs`` through the maad chain.

    p_rms = A/√2 · Vadc/2 / 10^(S/20) / 10^(G/20);  L = 20·log10(p_rms / 20 µPa).
    """
    p_rms = (
        amplitude_fs / math.sqrt(2.0) * cfg.vadc / 2.0
        / 10.0 ** (cfg.sensitivity_dbv / 20.0) / 10.0 ** (cfg.gain_db / 20.0)
    )
    return 20.0 * math.log10(p_rms / 20e-6)


def _sine(amplitude: float, freq_hz: float, rate: int, duration_s: float, start: int = 0) -> np.ndarray:
    t = (start + np.arange(int(round(duration_s * rate)))) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _meter(rate: int, hop: int | None = None, **cfg_kwargs) -> LevelMeter:
    cfg = LevelsConfig(**cfg_kwargs)
    return LevelMeter(cfg, rate, nominal_calibration(cfg), hop_frames=hop)


def _energy_sum_db(levels_db) -> float:
    return 10 * math.log10(float(np.sum(10 ** (np.asarray(levels_db) / 10))))


def _energy_mean_db(levels_db, axis=None):
    return 10 * np.log10(np.mean(10 ** (np.asarray(levels_db) / 10), axis=axis))


def _pink_noise(n: int, rate: int, lo_hz: float, hi_hz: float, seed: int) -> np.ndarray:
    """Periodic pink noise (power ∝ 1/f) with no energy outside [lo_hz, hi_hz], peak 0.5 FS."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1 / rate)
    spec = rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)
    inside = (f >= lo_hz) & (f <= hi_hz)
    spec[~inside] = 0
    spec[inside] /= np.sqrt(f[inside])
    x = np.fft.irfft(spec, n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


# --------------------------------------------------------------------- frequency weighting


@pytest.mark.parametrize("rate", [48000, 16000, 22050, 32000, 44100])
@pytest.mark.parametrize("curve", ["A", "C"])
def test_weighting_response_within_iec61672_class1(curve, rate):
    rows = table3_rows(rate)
    # 48 kHz reaches the whole table; 44.1 kHz stops at 16 kHz (0.45 × 44.1 kHz = 19.8 kHz),
    # 16 kHz at 6.3 kHz (0.45 × 16 kHz = 7.2 kHz)
    assert len(rows) == {48000: 34, 44100: 33, 32000: 32, 22050: 30, 16000: 29}[rate]
    nominal = np.array([r[0] for r in rows])
    exact = np.array([r[1] for r in rows])
    goal = np.array([r[2] if curve == "A" else r[3] for r in rows])
    upper = np.array([r[4] for r in rows])
    lower = np.array([r[5] for r in rows])
    for freqs in (nominal, exact):
        deviation = weighting_response_db(curve, rate, freqs) - goal
        assert np.all(deviation <= upper) and np.all(deviation >= lower), list(zip(freqs, deviation, strict=False))
    # the design goal itself (Annex E) to within 0.02 dB on a dense grid from 10 Hz to 0.45·fs
    grid = np.geomspace(10, 0.45 * rate, 1500)
    err = weighting_response_db(curve, rate, grid) - annex_e_db(curve, grid)
    assert np.max(np.abs(err)) < 0.02
    # and the transcribed table agrees with Annex E at the exact frequencies: rounding to 0.1 dB
    # (A at 160 Hz is -13.34996 with the rounded A1000, -13.3503 normalised exactly: -13.4)
    assert np.max(np.abs(annex_e_db(curve, exact) - goal)) <= 0.051


def test_z_weighting_is_flat_from_10_hz_and_blocks_dc():
    for rate in (16000, 48000):
        f = np.array([16.0, 20.0, 100.0, 1000.0, 0.45 * rate, rate / 2])
        assert np.all(np.abs(weighting_response_db("Z", rate, f)) < 0.05)
        assert -0.5 < weighting_response_db("Z", rate, np.array([10.0]))[0] < 0  # Class 1: +3.0/-inf
        assert weighting_response_db("Z", rate, np.array([0.0]))[0] == -np.inf
    f = np.array([0.0, 10.0, 1000.0, 7999.0])
    with pytest.raises(ValueError):
        weighting_response_db("B", 16000, f)
    with pytest.raises(ValueError):
        weighting_response_db("A", 16000, np.array([9000.0]))


def test_plain_bilinear_a_filter_fails_table3_at_16k():
    """Why the FIR correction exists: the bilinear transform of the whole Annex E A filter,
    normalised to 0 dB at 1 kHz, is far outside Class 1 near Nyquist at a 16 kHz capture."""
    rate = 16000
    w = 2 * np.pi
    zeros = [0.0] * 4
    poles = [-w * F1, -w * F1, -w * F2, -w * F3, -w * F4, -w * F4]
    z, p, k = sps.bilinear_zpk(zeros, poles, (w * F4) ** 2, rate)
    rows = table3_rows(rate)
    freqs = np.array([r[0] for r in rows] + [1000.0])
    _, h = sps.freqz_zpk(z, p, k, worN=freqs, fs=rate)
    resp = 20 * np.log10(np.abs(h))
    resp = resp[:-1] - resp[-1]
    deviation = resp - np.array([r[2] for r in rows])
    outside = [(r[0], round(d, 2)) for r, d in zip(rows, deviation, strict=False) if not r[5] <= d <= r[4]]
    assert outside and outside[-1][0] == 6300  # 6.3 kHz: about -5.6 dB, limit -2.0 dB
    assert deviation[-1] < -5.0
    # the meter's filter at the same frequency is within 0.02 dB of the goal
    assert abs(weighting_response_db("A", rate, np.array([6300.0]))[0] - annex_e_db("A", 6300.0)) < 0.02


@pytest.mark.parametrize(
    ("rate", "freqs"),
    [(48000, [31.5, 100.0, 1000.0, 4000.0, 8000.0, 12500.0, 16000.0, 20000.0]),
     (16000, [31.5, 250.0, 2000.0, 5000.0, 6300.0])],
)
def test_weighting_measured_with_sines_through_the_meter(rate, freqs):
    table = {r[0]: r for r in IEC_61672_TABLE3}
    for f0 in freqs:
        duration = 2.0  # f0 · 2 s is a whole number of cycles: the second window continues the first
        x = _sine(0.1, f0, rate, 2 * duration)
        meter = _meter(rate, bands=False)
        meter.process(x[: len(x) // 2], 0)  # warm-up: no switch-on transient in the measurement
        levels = meter.process(x[len(x) // 2:], len(x) // 2)
        _, a_goal, c_goal, upper, lower = table[f0]
        for measured, goal, curve in ((levels.laeq_db - levels.lzeq_db, a_goal, "A"),
                                      (levels.lceq_db - levels.lzeq_db, c_goal, "C")):
            assert lower <= measured - goal <= upper, (f0, curve, measured)
            assert measured == pytest.approx(float(annex_e_db(curve, f0)), abs=0.03), (f0, curve)
            assert measured == pytest.approx(float(weighting_response_db(curve, rate, np.array([f0]))[0]), abs=0.01)
    # one-shot compute_levels (fresh state, switch-on included) still reads the A weighting
    levels = compute_levels(_sine(0.1, 4000.0, rate, 2.0), rate, LevelsConfig(bands=False))
    assert levels.laeq_db - levels.lzeq_db == pytest.approx(float(annex_e_db("A", 4000.0)), abs=0.03)


# --------------------------------------------------------------------- analytic levels


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
def test_1khz_sine_matches_analytic_level(dbfs, rate, duration_s, cfg, n_series):
    amplitude = 10.0 ** (dbfs / 20.0)
    x = _sine(amplitude, 1000.0, rate, duration_s)
    levels = compute_levels(x, rate, cfg)
    expected = expected_sine_leq_db(amplitude, cfg)

    # at 1 kHz A = C = Z = 0 dB (IEC 61672-1:2013, Table 3)
    for value in (levels.lzeq_db, levels.laeq_db, levels.lceq_db):
        assert value == pytest.approx(expected, abs=0.1)
    assert levels.laeq_db == pytest.approx(levels.lzeq_db, abs=0.1)
    assert levels.lceq_db == pytest.approx(levels.lzeq_db, abs=0.1)
    # a steady tone: every time-weighted level and percentile reads the same level (the
    # time weightings start from the window's mean square, not from silence)
    for value in (levels.lafmax_db, levels.lafmin_db, levels.lasmax_db,
                  levels.la10_db, levels.la50_db, levels.la90_db):
        assert value == pytest.approx(expected, abs=0.1)
    assert len(levels.lzeq_series_db) == len(levels.laeq_series_db) == n_series
    assert n_series == math.floor(duration_s / cfg.series_interval_s)
    for value in (*levels.lzeq_series_db, *levels.laeq_series_db):
        assert value == pytest.approx(expected, abs=0.1)
    # the sine's highest sample is within a hair of its amplitude
    assert levels.peak_dbfs == pytest.approx(dbfs, abs=0.05)
    assert levels.calibration == nominal_calibration(cfg)
    # the 1 kHz band holds the tone
    centres = list(levels.band_centres_hz)
    assert levels.band_leq_db[centres.index(1000.0)] == pytest.approx(expected, abs=0.1)
    floats = (levels.lzeq_db, levels.laeq_db, levels.peak_dbfs, *levels.lzeq_series_db, *levels.band_leq_db)
    assert all(isinstance(v, float) for v in floats)


def test_dc_offset_does_not_enter_lzeq():
    """A chain's DC offset is a voltage, not sound: LZeq of a 1 kHz sine is the same with
    +0.03 FS of DC added (the Song Meter recordings' offset), within 0.01 dB."""
    rate = 48000
    t = np.arange(10 * rate) / rate
    tone = 0.01 * np.sin(2 * np.pi * 1000 * t)
    plain = compute_levels(tone.astype(np.float32), rate, LevelsConfig())
    offset = compute_levels((tone + 0.03).astype(np.float32), rate, LevelsConfig())
    assert offset.lzeq_db == pytest.approx(plain.lzeq_db, abs=0.01)
    assert offset.lzeq_series_db == pytest.approx(plain.lzeq_series_db, abs=0.01)


def test_level_scales_with_amplitude_gain_and_offset():
    cfg = LevelsConfig(bands=False)
    x = _sine(0.05, 1000.0, 48000, 2.0)
    base = compute_levels(x, 48000, cfg)
    assert compute_levels(2 * x, 48000, cfg).lzeq_db - base.lzeq_db == pytest.approx(20 * math.log10(2), abs=1e-6)
    louder_gain = LevelsConfig(gain_db=cfg.gain_db + 10.0, bands=False)
    assert compute_levels(x, 48000, louder_gain).laeq_db - base.laeq_db == pytest.approx(-10.0, abs=1e-6)

    # a calibration offset (from config, or a Calibration record) is added to every level
    with_offset = compute_levels(x, 48000, LevelsConfig(bands=False, calibration_offset_db=3.5))
    assert with_offset.calibration.offset_db == 3.5
    cal = Calibration(sensitivity_dbv=cfg.sensitivity_dbv, gain_db=cfg.gain_db, vadc=cfg.vadc,
                      offset_db=3.5, reference_db=94.0)
    explicit = compute_levels(x, 48000, cfg, cal)
    assert explicit.calibration is cal
    for lv in (with_offset, explicit):
        for name in ("lzeq_db", "laeq_db", "lceq_db", "lafmax_db", "lafmin_db", "lasmax_db",
                     "la10_db", "la50_db", "la90_db"):
            assert getattr(lv, name) - getattr(base, name) == pytest.approx(3.5, abs=1e-9), name
        np.testing.assert_allclose(np.subtract(lv.laeq_series_db, base.laeq_series_db), 3.5, atol=1e-9)
        assert lv.peak_dbfs == base.peak_dbfs  # dBFS: not a sound pressure level

    # the chain comes from the Calibration record, not from cfg
    other_chain = Calibration(sensitivity_dbv=cfg.sensitivity_dbv - 6.0, gain_db=cfg.gain_db, vadc=cfg.vadc)
    assert compute_levels(x, 48000, cfg, other_chain).lzeq_db - base.lzeq_db == pytest.approx(6.0, abs=1e-6)


def test_nominal_calibration():
    cal = nominal_calibration(LevelsConfig(gain_db=30.0, sensitivity_dbv=-40.0, vadc=2.0))
    assert cal == Calibration(sensitivity_dbv=-40.0, gain_db=30.0, vadc=2.0, offset_db=0.0)
    assert cal.calibrated_at is None
    assert nominal_calibration(LevelsConfig(calibration_offset_db=-1.25)).offset_db == -1.25


# --------------------------------------------------------------------- time weighting


def _trace_with_short_windows(x: np.ndarray, rate: int, window: int, attr: str) -> np.ndarray:
    """Feed ``x`` as consecutive windows of ``window`` samples; one value of ``attr`` each."""
    meter = _meter(rate, bands=False)
    return np.array([getattr(meter.process(x[i:i + window], i), attr)
                     for i in range(0, len(x) - window + 1, window)])


@pytest.mark.parametrize(
    ("tau", "attr", "tone_s", "fit_from_s", "fit_to_s", "window_s"),
    [(0.125, "lafmin_db", 1.0, 0.1, 0.6, 0.01),   # F: during a decay LAFmin = the window's last value
     (1.0, "lasmax_db", 4.0, 1.0, 4.0, 0.1)],     # S: during a decay LASmax = the window's first value
)
def test_decay_rate_matches_time_constant(tau, attr, tone_s, fit_from_s, fit_to_s, window_s):
    rate = 16000
    x = np.concatenate([_sine(0.1, 1000.0, rate, tone_s), np.zeros(int(5 * rate), np.float32)])
    window = int(window_s * rate)
    values = _trace_with_short_windows(x, rate, window, attr)
    # time of each value: end of window (min while decaying) or its start (max while decaying)
    starts = np.arange(len(values)) * window_s
    t = starts + (window_s if attr == "lafmin_db" else 0.0) - tone_s
    sel = (t >= fit_from_s) & (t <= fit_to_s)
    slope = np.polyfit(t[sel], values[sel], 1)[0]
    expected = 10 * math.log10(math.e) / tau  # 34.7 dB/s (F), 4.34 dB/s (S)
    assert -slope == pytest.approx(expected, rel=0.10)
    assert -slope == pytest.approx(expected, rel=0.01)  # the recursion is exact, not just within 10 %


@pytest.mark.parametrize(("tau", "attr", "window_s"), [(0.125, "lafmax_db", 0.005), (1.0, "lasmax_db", 0.05)])
def test_rise_after_switch_on(tau, attr, window_s):
    """A 1 kHz tone switched on after silence: 10·lg(1 - e^(-t/τ)) below steady state at t,
    i.e. -2.0 dB at τ and within 1 dB from 1.6τ (0.03 dB at 5τ)."""
    rate = 16000
    silence_s = 2.0
    x = np.concatenate([np.zeros(int(silence_s * rate), np.float32),
                        _sine(0.1, 1000.0, rate, 6 * tau + 0.5)])
    window = int(window_s * rate)
    values = _trace_with_short_windows(x, rate, window, attr)  # rising: max = last sample
    ends = (np.arange(len(values)) + 1) * window_s - silence_s
    steady = expected_sine_leq_db(0.1, LevelsConfig())
    at = {k: values[np.argmin(np.abs(ends - k * tau))] - steady for k in (1, 2, 5)}
    assert at[1] == pytest.approx(10 * math.log10(1 - math.exp(-1)), abs=0.15)  # -1.99 dB
    assert -1.0 < at[2] < 0.0
    assert abs(at[5]) < 0.1


@pytest.mark.parametrize(
    ("tau", "burst_s"),
    [(0.125, 0.2), (0.125, 0.05), (0.125, 0.01), (1.0, 1.0), (1.0, 0.2)],
)
def test_tone_burst_response(tau, burst_s):
    """IEC 61672-1:2013 tone-burst response: LAFmax (LASmax) of a 4 kHz burst of duration Tb
    minus the steady tone's level = 10·lg(1 - e^(-Tb/τ)) (the reference values of the
    standard's tone-burst table, e.g. -1.0 dB for 200 ms F, -7.4 dB for 200 ms S)."""
    rate = 48000
    cfg = LevelsConfig(bands=False)
    steady = compute_levels(_sine(0.1, 4000.0, rate, 2.0), rate, cfg).laeq_db
    burst = _sine(0.1, 4000.0, rate, burst_s)  # whole cycles: starts and ends at a zero crossing
    x = np.concatenate([np.zeros(rate, np.float32), burst, np.zeros(2 * rate, np.float32)])
    levels = compute_levels(x, rate, cfg)
    measured = (levels.lafmax_db if tau == 0.125 else levels.lasmax_db) - steady
    assert measured == pytest.approx(10 * math.log10(1 - math.exp(-burst_s / tau)), abs=0.1)


def test_percentiles_of_laf():
    """LA10 is the level exceeded 10 % of the time (the 90th percentile of LAF), not the 10th
    percentile: 2 s of a tone 20 dB louder in 10 s puts LA10 at the loud level."""
    rate = 16000
    quiet, loud = 0.01, 0.1
    x = np.concatenate([_sine(quiet, 1000.0, rate, 4.0), _sine(loud, 1000.0, rate, 2.0, start=4 * rate),
                        _sine(quiet, 1000.0, rate, 4.0, start=6 * rate)])
    levels = compute_levels(x, rate, LevelsConfig(bands=False))
    cfg = LevelsConfig()
    l_quiet, l_loud = expected_sine_leq_db(quiet, cfg), expected_sine_leq_db(loud, cfg)
    assert levels.la10_db == pytest.approx(l_loud, abs=0.2)
    assert levels.la50_db == pytest.approx(l_quiet, abs=0.1)
    assert levels.la90_db == pytest.approx(l_quiet, abs=0.1)
    assert levels.lafmax_db == pytest.approx(l_loud, abs=0.1)
    assert levels.lafmin_db == pytest.approx(l_quiet, abs=0.1)
    assert levels.la90_db <= levels.la50_db <= levels.la10_db <= levels.lafmax_db
    # the energy mean: 10·lg((8·q² + 2·l²)/10)
    expected_eq = 10 * math.log10((8 * 10 ** (l_quiet / 10) + 2 * 10 ** (l_loud / 10)) / 10)
    assert levels.laeq_db == pytest.approx(expected_eq, abs=0.1)


# --------------------------------------------------------------------- one-third-octave bands


def test_third_octave_bands_iec61260():
    nominal, exact, lower, upper = third_octave_bands(25, 20000, 96000)
    assert nominal.tolist() == [25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630,
                                800, 1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000,
                                10000, 12500, 16000, 20000]
    assert all(a.dtype == np.float64 for a in (nominal, exact, lower, upper))
    # IEC 61260-1:2014 base 10: fm = 1000·10^(x/10), edges fm·10^(±1/20); x = -16..13
    np.testing.assert_allclose(exact, 1000 * 10 ** (np.arange(-16, 14) / 10), rtol=1e-12)
    np.testing.assert_allclose(lower, exact * 10 ** (-1 / 20), rtol=1e-12)
    np.testing.assert_allclose(upper, exact * 10 ** (1 / 20), rtol=1e-12)
    np.testing.assert_allclose(upper[:-1], lower[1:], rtol=1e-12)  # contiguous bands
    assert exact[16] == pytest.approx(1000.0) and lower[16] == pytest.approx(891.2509381)
    assert upper[16] == pytest.approx(1122.0184543)
    # only bands whose upper edge lies below Nyquist: 25 Hz-20 kHz (30 bands) at 48 kHz
    for rate, last in ((48000, 20000), (44100, 16000), (32000, 12500), (22050, 8000), (22000, 8000),
                       (16000, 6300)):
        nom, _, _, up = third_octave_bands(25, 20000, rate)
        assert nom[-1] == last and nom[0] == 25 and np.all(up < 0.5 * rate)
    assert third_octave_bands(25, 20000, 48000)[0].size == 30
    assert third_octave_bands(100, 1000, 48000)[0].tolist() == [100, 125, 160, 200, 250, 315, 400, 500,
                                                                630, 800, 1000]
    assert third_octave_bands(10, 12.5, 48000)[0].tolist() == [10, 12.5]
    assert third_octave_bands(25, 20000, 1000)[0][-1] == 400  # upper edge 448.9 Hz < 500 Hz
    assert third_octave_bands(30000, 40000, 48000)[0].size == 0
    with pytest.raises(ValueError):
        third_octave_bands(1000, 100, 48000)


def test_band_filters_sine_at_centres_and_edges():
    """Through the multirate bank: a sine at a band's centre is fully in that band (0 dB) and
    far down in the neighbours' (>= 20 dB); a sine at a shared edge is -3 dB in both
    (Butterworth -3 dB points at the IEC 61260-1 edges)."""
    rate = 48000
    nominal, exact, lower, upper = third_octave_bands(25, 20000, rate)
    meter_cfg = LevelsConfig()
    for j in range(len(nominal)):
        for f0, kind in ((exact[j], "centre"), (upper[j], "edge")):
            if kind == "edge" and j == len(nominal) - 1:
                continue
            x = _sine(0.1, f0, rate, 2.0)
            meter = LevelMeter(meter_cfg, rate, nominal_calibration(meter_cfg))
            meter.process(x[:rate], 0)  # warm-up (the 25 Hz band rises over ~0.2 s)
            levels = meter.process(x[rate:], rate)
            rel = np.array(levels.band_leq_db) - levels.lzeq_db
            if kind == "centre":
                assert rel[j] == pytest.approx(0.0, abs=0.05), (nominal[j], rel[j])
                others = np.delete(rel, j)
                assert np.all(others < -20.0), (nominal[j], others.max())
            else:
                assert rel[j] == pytest.approx(-3.01, abs=0.15), (nominal[j], rel[j])
                assert rel[j + 1] == pytest.approx(-3.01, abs=0.15), (nominal[j + 1], rel[j + 1])


@pytest.mark.parametrize("f0", [15000.0, 20000.0, 23000.0])
def test_no_aliasing_into_low_bands(f0):
    """A tone above the low bands' decimated rates must not alias into them: the anti-alias
    filters attenuate >= 80 dB (20 kHz would alias to 4 kHz at the 24 kHz stage)."""
    rate = 48000
    x = _sine(0.5, f0, rate, 4.0)
    meter = _meter(rate)
    meter.process(x[: 2 * rate], 0)
    levels = meter.process(x[2 * rate:], 2 * rate)
    rel = np.array(levels.band_leq_db) - levels.lzeq_db
    low = np.array(levels.band_centres_hz) <= 5000
    assert np.all(rel[low] < -78.0), rel[low].max()


@pytest.mark.parametrize("rate", [48000, 16000, 22050])
def test_pink_noise_bands_sum_to_lzeq(rate):
    """The bands tile [lower edge of the lowest band, upper edge of the highest] without gaps
    and adjacent Butterworth bands cross at -3 dB, so their powers sum to the broadband power
    of a signal with no energy outside that range. Pink noise (equal power per band) exercises
    every band equally; it is synthesised in the frequency domain with nothing outside the
    range (energy below 22 Hz or above the top band would count in LZeq but in no band). It
    is periodic, so the meter warms up on one period and measures the next with continued
    state: the low bands' start-up transient (~0.2 s at 25 Hz) does not count."""
    _, _, lower, upper = third_octave_bands(25, 20000, rate)
    n = 10 * rate
    x = _pink_noise(n, rate, lower[0], upper[-1], seed=rate)
    meter = _meter(rate)
    meter.process(x, 0)
    levels = meter.process(x, n)
    assert _energy_sum_db(levels.band_leq_db) == pytest.approx(levels.lzeq_db, abs=0.2)
    # pink: each band holds about the same power (statistical scatter ~0.6 dB at 25 Hz over 10 s)
    bands = np.array(levels.band_leq_db)
    assert np.all(np.abs(bands - np.median(bands)) < 2.0)


# --------------------------------------------------------------------- continuity


def _recording_at_16k() -> np.ndarray:
    x, rate = sf.read(AUDIO / "S4A03895_20190522_060000.wav", dtype="float64")
    assert rate == 22000
    return sps.resample_poly(x, 8, 11).astype(np.float32)  # dawn chorus, 10 s at 16 kHz


def test_contiguous_windows_equal_one_stream():
    """Five 2 s windows with carried state = the same 10 s processed in one go. At 16 kHz the
    deepest band stage runs at fs/128 and 2 s = 250 × 128 samples, so each window holds
    exactly its share of every band's decimated samples and the band levels' energy mean is
    exact."""
    rate = 16000
    x = _recording_at_16k()
    length = 2 * rate
    n_win = len(x) // length
    x = x[: n_win * length]
    whole, trace = _meter(rate).process_with_trace(x, 0)

    meter = _meter(rate)
    windows = [meter.process(x[k * length:(k + 1) * length], k * length) for k in range(n_win)]

    np.testing.assert_allclose(np.concatenate([w.laeq_series_db for w in windows]), whole.laeq_series_db, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([w.lzeq_series_db for w in windows]), whole.lzeq_series_db, atol=1e-9)
    assert float(_energy_mean_db([w.laeq_db for w in windows])) == pytest.approx(whole.laeq_db, abs=1e-9)
    assert float(_energy_mean_db([w.lceq_db for w in windows])) == pytest.approx(whole.lceq_db, abs=1e-9)
    np.testing.assert_allclose(_energy_mean_db([w.band_leq_db for w in windows], axis=0), whole.band_leq_db,
                               atol=1e-9)
    for k, w in enumerate(windows):
        sl = slice(k * length, (k + 1) * length)
        assert w.lafmax_db == pytest.approx(trace.laf_db[sl].max(), abs=1e-9)
        assert w.lafmin_db == pytest.approx(trace.laf_db[sl].min(), abs=1e-9)
        assert w.lasmax_db == pytest.approx(trace.las_db[sl].max(), abs=1e-9)
        np.testing.assert_allclose([w.la10_db, w.la50_db, w.la90_db],
                                   np.percentile(trace.laf_db[sl], [90, 50, 10]), atol=1e-9)
    assert max(w.lafmax_db for w in windows) == pytest.approx(whole.lafmax_db, abs=1e-9)


def test_overlapping_windows_equal_slices_of_one_stream():
    """2 s windows every 1 s (hop < length): each window's levels equal those of its slice of
    the whole stream, i.e. the state is snapshot where the next window starts."""
    rate = 16000
    x = _recording_at_16k()
    length, hop = 2 * rate, rate
    _, trace = _meter(rate).process_with_trace(x, 0)
    # band reference: contiguous 1 s windows (exact, see the previous test); a 2 s window's
    # band power is the mean of its two seconds'
    halves = _meter(rate)
    half_bands = np.array([halves.process(x[i:i + hop], i).band_leq_db for i in range(0, len(x) - hop + 1, hop)])

    meter = _meter(rate, hop=hop)
    starts = range(0, len(x) - length + 1, hop)
    assert len(starts) == 9
    for k, s in enumerate(starts):
        w = meter.process(x[s:s + length], s)
        sl = slice(s, s + length)
        pa2, pz2 = trace.pa_pa[sl] ** 2, trace.pz_pa[sl] ** 2
        assert w.laeq_db == pytest.approx(10 * math.log10(pa2.mean() / P_REF_PA**2), abs=1e-9)
        assert w.lceq_db == pytest.approx(10 * math.log10(np.mean(trace.pc_pa[sl] ** 2) / P_REF_PA**2), abs=1e-9)
        series = 10 * np.log10(pa2.reshape(2, rate).mean(axis=1) / P_REF_PA**2)
        np.testing.assert_allclose(w.laeq_series_db, series, atol=1e-9)
        np.testing.assert_allclose(w.lzeq_series_db, 10 * np.log10(pz2.reshape(2, rate).mean(axis=1) / P_REF_PA**2),
                                   atol=1e-9)
        assert w.lafmax_db == pytest.approx(trace.laf_db[sl].max(), abs=1e-9)
        assert w.lafmin_db == pytest.approx(trace.laf_db[sl].min(), abs=1e-9)
        assert w.lasmax_db == pytest.approx(trace.las_db[sl].max(), abs=1e-9)
        np.testing.assert_allclose([w.la10_db, w.la50_db, w.la90_db],
                                   np.percentile(trace.laf_db[sl], [90, 50, 10]), atol=1e-9)
        np.testing.assert_allclose(w.band_leq_db, _energy_mean_db(half_bands[k:k + 2], axis=0), atol=1e-9)


def test_new_segment_or_gap_resets_and_continuation_does_not():
    rate = 16000
    x = _recording_at_16k()
    length = 2 * rate
    a, b = x[:length], x[length:2 * length]
    fresh_b = _meter(rate).process(b, 0)

    def fields(lv):
        return (lv.lzeq_db, lv.laeq_db, lv.lceq_db, lv.lafmax_db, lv.lafmin_db, lv.lasmax_db,
                lv.la10_db, lv.la50_db, lv.la90_db, *lv.laeq_series_db, *lv.band_leq_db)

    meter = _meter(rate)
    meter.process(a, 0)
    continued = meter.process(b, length)
    # carried state differs from a fresh start (otherwise this test could not fail)
    assert max(abs(u - v) for u, v in zip(fields(continued), fields(fresh_b), strict=False)) > 0.01

    for next_start in (0, 5 * length):  # a new segment restarts at 0; a gap skips frames
        meter = _meter(rate)
        meter.process(a, 0)
        np.testing.assert_allclose(fields(meter.process(b, next_start)), fields(fresh_b), atol=1e-9)
    meter = _meter(rate)
    meter.process(a, 0)
    meter.reset()
    np.testing.assert_allclose(fields(meter.process(b, length)), fields(fresh_b), atol=1e-9)
    # with a hop longer than the window the windows are not contiguous: every one resets
    meter = _meter(rate, hop=3 * length)
    meter.process(a, 0)
    np.testing.assert_allclose(fields(meter.process(b, 3 * length)), fields(fresh_b), atol=1e-9)


def test_reset_initialises_from_the_signal_not_from_silence():
    """A fresh meter on a tone riding on a large DC offset: the weighting and band filters
    start in their steady state for that offset (sosfilt_zi × mean of the first 0.1 s), so no step
    transient swamps a quiet tone, and LAFmin/LASmax start at the tone's level."""
    rate = 16000
    tone = _sine(0.001, 1000.0, rate, 1.0)
    x = (tone + np.float32(0.2)).astype(np.float32)
    levels = compute_levels(x, rate, LevelsConfig())
    expected = expected_sine_leq_db(0.001, LevelsConfig())
    assert levels.laeq_db == pytest.approx(expected, abs=0.1)
    assert levels.lceq_db == pytest.approx(expected, abs=0.1)
    assert levels.lafmin_db == pytest.approx(expected, abs=0.1)
    assert levels.lasmax_db == pytest.approx(expected, abs=0.1)
    centres = list(levels.band_centres_hz)
    assert levels.band_leq_db[centres.index(1000.0)] == pytest.approx(expected, abs=0.1)
    assert levels.lzeq_db == pytest.approx(expected, abs=0.1)  # the DC is kept out of LZeq


def test_failed_call_leaves_state_untouched():
    rate = 16000
    x = _recording_at_16k()
    length = rate
    meter, reference = _meter(rate), _meter(rate)
    meter.process(x[:length], 0)
    reference.process(x[:length], 0)
    bad = x[length:2 * length].copy()
    bad[10] = np.nan
    with pytest.raises(ValueError):
        meter.process(bad, length)
    assert meter.process(x[length:2 * length], length) == reference.process(x[length:2 * length], length)


# --------------------------------------------------------------------- real recordings


@pytest.mark.parametrize("name", RECORDINGS)
def test_real_recording(name):
    import maad.spl

    x, rate = sf.read(AUDIO / name, dtype="float32")
    cfg = LevelsConfig()
    levels = compute_levels(x, rate, cfg)
    values = [levels.lzeq_db, levels.laeq_db, levels.lceq_db, levels.lafmax_db, levels.lafmin_db,
              levels.lasmax_db, levels.la10_db, levels.la50_db, levels.la90_db, levels.peak_dbfs,
              *levels.laeq_series_db, *levels.lzeq_series_db, *levels.band_leq_db]
    assert all(math.isfinite(v) for v in values)
    # plausible outdoor levels through the default AudioMoth chain, far from the silence floor
    assert 10.0 < levels.lzeq_db < 110.0 and levels.laeq_db > 0.0

    assert levels.lafmin_db <= levels.la90_db <= levels.la50_db <= levels.la10_db <= levels.lafmax_db
    # A and C attenuate except for at most +1.27 dB (A, 2.5 kHz) and +0.03 dB (C) of gain
    max_gain = {c: float(weighting_response_db(c, rate, np.geomspace(10, rate / 2, 4000)).max())
                for c in "AC"}
    assert max_gain["A"] < 1.3 and max_gain["C"] < 0.05
    assert levels.laeq_db <= levels.lzeq_db + max_gain["A"] + 1e-9
    assert levels.lceq_db <= levels.lzeq_db + max_gain["C"] + 1e-9

    # bands: exactly the IEC 61260-1 bands up to 0.45·fs
    nominal, _, _, upper = third_octave_bands(25, 20000, rate)
    assert levels.band_centres_hz == tuple(nominal) and len(levels.band_leq_db) == len(nominal)
    assert upper[-1] <= 0.45 * rate and nominal[-1] == {22000: 8000, 44100: 16000}[rate]
    # band powers cannot exceed the broadband power by more than the bank's overlap (<0.7 dB)
    assert _energy_sum_db(levels.band_leq_db) <= levels.lzeq_db + 0.7

    series = np.array(levels.lzeq_series_db)
    assert len(series) == len(levels.laeq_series_db) == math.floor(len(x) / rate)
    if len(x) % rate == 0:  # no partial interval: LZeq, LAeq are the energy means of their series
        assert levels.lzeq_db == pytest.approx(float(_energy_mean_db(series)), abs=1e-6)
        assert levels.laeq_db == pytest.approx(float(_energy_mean_db(levels.laeq_series_db)), abs=1e-6)
    # independent path through scikit-maad's wav2leq, which adds dBref = 94 dB for 1 Pa
    # instead of the exact 20·log10(1 Pa / 20 µPa) = 93.979 dB: a constant 0.0206 dB apart.
    # maad's Leq keeps DC and infrasound; Z here blocks them (5 Hz high-pass; IEC 61672-1's Z
    # starts at 10 Hz), so LZeq is lower by the wind and handling infrasound of these
    # recordings (up to ~1.5 dB once the mean is removed); the first interval may hold the
    # high-pass's start-up transient (< 0.2 dB).
    ref = maad.spl.wav2leq(x.astype(np.float64) - float(np.mean(x)), rate, gain=cfg.gain_db, Vadc=cfg.vadc,
                           sensitivity=cfg.sensitivity_dbv, dt=1) - (94.0 - 20 * math.log10(1 / 20e-6))
    assert np.all(series <= ref + 0.2) and np.all(series >= ref - 2.0)
    assert -90.0 < levels.peak_dbfs <= 0.0
    assert levels.peak_dbfs == pytest.approx(20 * math.log10(np.max(np.abs(x))))


# --------------------------------------------------------------------- silence and errors


def test_silence_is_finite_and_floored_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        levels = compute_levels(np.zeros(48000 * 3, dtype=np.float32), 48000, LevelsConfig())
        offset = compute_levels(np.zeros(16000, np.float32), 16000, LevelsConfig(calibration_offset_db=2.0))
    for name in ("lzeq_db", "laeq_db", "lceq_db", "lafmax_db", "lafmin_db", "lasmax_db",
                 "la10_db", "la50_db", "la90_db"):
        assert getattr(levels, name) == pytest.approx(FLOOR_DB), name
        assert getattr(offset, name) == pytest.approx(FLOOR_DB + 2.0), name
    assert levels.laeq_series_db == pytest.approx((FLOOR_DB,) * 3)
    assert levels.lzeq_series_db == pytest.approx((FLOOR_DB,) * 3)
    assert levels.band_leq_db == pytest.approx((FLOOR_DB,) * len(levels.band_centres_hz))
    assert len(levels.band_centres_hz) == 30
    assert levels.peak_dbfs == pytest.approx(-240.0)
    assert offset.peak_dbfs == pytest.approx(-240.0)


def test_silent_second_inside_signal_is_floored_not_minus_inf():
    x = _sine(0.1, 1000.0, 16000, 3.0)
    x[16000:32000] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        levels = compute_levels(x, 16000, LevelsConfig())
    # the Z high-pass (5 Hz) barely rings after the tone stops: far down, finite
    assert FLOOR_DB <= levels.lzeq_series_db[1] < levels.lzeq_series_db[0] - 40
    assert levels.lzeq_series_db[0] > 0 and levels.lzeq_series_db[2] > 0
    # the A filter rings for a few ms after the tone stops: far down, finite
    assert FLOOR_DB <= levels.laeq_series_db[1] < levels.laeq_series_db[0] - 20
    assert levels.lafmin_db > FLOOR_DB  # F decays 34.7 dB/s: 1 s of silence is not enough to reach it


def test_bands_off():
    levels = compute_levels(_sine(0.1, 1000.0, 16000, 1.0), 16000, LevelsConfig(bands=False))
    assert levels.band_centres_hz == () and levels.band_leq_db == ()


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 100), np.float32),
                                 np.array([0.0, np.nan], np.float32), np.array([0.0, np.inf], np.float32)])
def test_rejects_invalid_input(bad):
    with pytest.raises(ValueError):
        compute_levels(bad, 48000, LevelsConfig())


def test_rejects_invalid_parameters():
    cfg = LevelsConfig()
    cal = nominal_calibration(cfg)
    with pytest.raises(ValueError):
        LevelMeter(cfg, 0, cal)
    with pytest.raises(ValueError):
        LevelMeter(cfg, 16000, cal, hop_frames=0)
    with pytest.raises(ValueError):  # a 0.125 s series interval is shorter than one sample at 4 Hz
        LevelMeter(LevelsConfig(series_interval_s=0.125), 4, cal)
    with pytest.raises(ValueError):
        _meter(16000).process(np.zeros(10, np.float32), -1)


def test_import_is_pure_and_lazy():
    assert modules_imported_by("import agent.analysis.levels", ("maad", "pandas", "scipy.signal")) == []


def test_calibration_chain_is_scikit_maads_bit_for_bit_without_importing_it():
    """wav_to_pressure == maad.spl.wav2pressure exactly, for several chains, on a real recording;
    and computing levels (weightings, bands, the chain) never imports scikit-maad or pandas,
    which would cost ~80 MB of resident memory on the Pi."""
    import maad.spl

    x, _ = sf.read(AUDIO / RECORDINGS[0], dtype="float32")
    for s_dbv, g_db, vadc in ((-18.0, 30.0, 2.0), (-38.0, 15.5, 1.8), (0.0, 0.0, 5.0)):
        cal = Calibration(sensitivity_dbv=s_dbv, gain_db=g_db, vadc=vadc, offset_db=0.0)
        ours = wav_to_pressure(x, cal)
        ref = maad.spl.wav2pressure(x.astype(np.float64), gain=g_db, Vadc=vadc, sensitivity=s_dbv)
        assert ours.dtype == np.float64 and np.array_equal(ours, ref)
    code = ("import numpy as np, soundfile as sf\n"
            "from agent.analysis.levels import compute_levels\nfrom agent.config import LevelsConfig\n"
            f"x, rate = sf.read({str(AUDIO / RECORDINGS[0])!r}, dtype='float32')\n"
            "assert compute_levels(x, rate, LevelsConfig()).laeq_db > 0")
    assert modules_imported_by(code, ("maad", "pandas", "matplotlib")) == []


def test_public_api_documented():
    for name in levels_mod.__all__:
        obj = getattr(levels_mod, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 80, name
    for method in ("process", "process_with_trace", "reset"):
        assert getattr(LevelMeter, method).__doc__, method
