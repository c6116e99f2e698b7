"""``soundscape-agent calibrate``: a 94 dB / 1 kHz calibrator recorded through real ALSA (file
plugin), the offset kept in the real SQLite queue, then applied by ``run`` to every level and
stored with every window; and the refusals a user meets with a bad recording."""

from __future__ import annotations

import math
import re
import sqlite3

import numpy as np
import pytest

from agent.config import LevelsConfig
from tests.audio import PCM_NAME, real_audio_s16, write_alsa_file_pcm
from tests.test_run import agent, write_config

RATE = 48000


def nominal_db(rms_fs: float, cfg: LevelsConfig | None = None) -> float:
    """dB re 20 µPa of a signal with this RMS (fraction of full scale) through the nominal chain
    (scikit-maad: p = x · Vadc/2 / 10^(S/20) / 10^(G/20))."""
    cfg = cfg if cfg is not None else LevelsConfig()
    p = rms_fs * cfg.vadc / 2 / 10 ** (cfg.sensitivity_dbv / 20) / 10 ** (cfg.gain_db / 20)
    return 20 * math.log10(p / 20e-6)


def calibrator_s16(amplitude_fs: float, seconds: float, noise_fs: float = 1e-4, freq: float = 1000.0) -> np.ndarray:
    """A calibrator tone (sine, peak ``amplitude_fs``) over faint noise, int16."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = amplitude_fs * np.sin(2 * np.pi * freq * t) + np.random.default_rng(3).normal(0, noise_fs, t.size)
    return np.round(x * 32767).astype("<i2")


def _setup(tmp_path, monkeypatch, samples_s16) -> str:
    for k, v in write_alsa_file_pcm(tmp_path, samples_s16).items():
        monkeypatch.setenv(k, v)
    return str(write_config(tmp_path / "agent.toml",
                            capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE},
                            classifier={"enabled": False},
                            store={"path": str(tmp_path / "queue.db")}))


def test_calibrate_then_run_applies_the_offset_and_stores_its_provenance(tmp_path, monkeypatch):
    # The tone's nominal level is 83.0 dB (0.5 FS peak at the AudioMoth defaults); a 94 dB
    # calibrator produced it, so the real chain is ~11 dB less sensitive than nominal.
    amplitude = 0.5
    expected_offset = 94.0 - nominal_db(amplitude / math.sqrt(2))
    cfg = _setup(tmp_path, monkeypatch, np.concatenate([calibrator_s16(amplitude, 12), real_audio_s16(RATE, 60)]))
    r = agent("calibrate", "--config", cfg, "--reference-db", "94", "--seconds", "10")
    assert r.returncode == 0, r.stderr
    printed = float(re.search(r"offset ([+-][\d.]+) dB", r.stdout).group(1))
    assert printed == pytest.approx(expected_offset, abs=0.05)

    con = sqlite3.connect(tmp_path / "queue.db")
    (offset, reference, measured_at), = con.execute(
        "SELECT offset_db, reference_db, measured_at FROM calibrations").fetchall()
    con.close()
    assert offset == pytest.approx(expected_offset, abs=0.05) and reference == 94.0

    # run: the ALSA PCM replays from its start, so the first window is the calibrator itself:
    # with the offset applied, it must read 94 dB; every window carries the calibration.
    r = agent("run", "--config", cfg, "--max-windows", "3")
    assert r.returncode == 0, r.stderr
    assert f"calibration offset {offset:+.2f} dB (measured" in r.stdout
    con = sqlite3.connect(tmp_path / "queue.db")
    rows = con.execute("SELECT leq_db, json_extract(indicators, '$.calibration.offset_db'),"
                       " json_extract(indicators, '$.calibration.calibrated_at'),"
                       " json_extract(indicators, '$.calibration.reference_db') FROM windows ORDER BY window_index"
                       ).fetchall()
    con.close()
    assert len(rows) == 3
    assert rows[0][0] == pytest.approx(94.0, abs=0.1)
    assert all(row[1] == offset and row[2] == measured_at and row[3] == 94.0 for row in rows)


def clipped_s16(seconds: float) -> np.ndarray:
    """A 1 kHz tone driven 3.5 dB past full scale, as too high a gain records a calibrator."""
    t = np.arange(int(seconds * RATE)) / RATE
    return np.round(np.clip(1.5 * np.sin(2 * np.pi * 1000 * t), -1, 32767 / 32768) * 32768).astype("<i2")


def unstable_s16(seconds: float) -> np.ndarray:
    """A calibrator tone whose level drops by 6 dB from 4 s to 7 s (the calibrator moved)."""
    x = calibrator_s16(0.3, seconds).astype(np.float64)
    x[4 * RATE: 7 * RATE] *= 0.5
    return np.round(x).astype("<i2")


@pytest.mark.parametrize(("samples", "message"), [
    (lambda: real_audio_s16(RATE, 30), "no calibrator tone"),
    (lambda: clipped_s16(30), "clips"),
    (lambda: unstable_s16(30), "unstable"),
], ids=["no-tone", "clipped", "unstable"])
def test_calibrate_refuses_a_bad_recording_with_a_hint_and_stores_nothing(tmp_path, monkeypatch, samples, message):
    cfg = _setup(tmp_path, monkeypatch, samples())
    r = agent("calibrate", "--config", cfg, "--reference-db", "94", "--seconds", "10")
    assert r.returncode == 66, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    con = sqlite3.connect(tmp_path / "queue.db")
    assert con.execute("SELECT count(*) FROM calibrations").fetchone()[0] == 0
    con.close()
