"""The numpy AST features (agent.analysis.features) against transformers' ASTFeatureExtractor.

The reference is transformers' own extractor, loaded from the packaged real
``preprocessor_config.json`` (torchaudio is not installed, so it takes its numpy path, the one
``ASTFeatures`` re-implements). Inputs are every bundled real recording, resampled to 16 kHz
with soxr as the classifier does, plus short, boundary-length, long and near-silent inputs.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soxr

from agent.analysis.classifier import segment_audio
from agent.analysis.features import MEL_FLOOR, ASTFeatures, kaldi_mel_filter_bank
from agent.analysis.models import packaged_config_dir
from tests.isolation import modules_imported_by
from tests.model_fixtures import AUDIO, read_recording

RECORDINGS = sorted(AUDIO.glob("*.wav"))
TOL = 1e-4  # max abs difference allowed (normalised units; features span about -1.5..+2)


@pytest.fixture(scope="module")
def reference():
    """transformers' ASTFeatureExtractor of the real model (numpy path: no torchaudio here)."""
    from transformers import ASTFeatureExtractor
    from transformers.utils import is_speech_available

    assert not is_speech_available(), "torchaudio is installed: transformers would take another path"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        return ASTFeatureExtractor.from_pretrained(str(packaged_config_dir()))


@pytest.fixture(scope="module")
def ours() -> ASTFeatures:
    return ASTFeatures.from_pretrained(packaged_config_dir())


def hf_features(fe, batch: list[np.ndarray]) -> np.ndarray:
    return fe(batch, sampling_rate=16000, return_tensors="np")["input_values"]


def assert_same(ours: ASTFeatures, reference, batch: list[np.ndarray], what: str) -> float:
    expected = hf_features(reference, batch)
    got = ours(batch)
    assert got.shape == expected.shape == (len(batch), 1024, 128)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    err = float(np.max(np.abs(got.astype(np.float64) - expected)))
    print(f"{what}: max |numpy - transformers| = {err:.3g}")
    assert err <= TOL, what
    return err


def test_every_bundled_recording_is_used():
    assert len(RECORDINGS) == 9  # 8 Song Meter files + spinetail


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
def test_real_recordings_match_transformers(path, ours, reference):
    x, rate = read_recording(path)
    assert rate != 16000
    whole = soxr.resample(x, rate, 16000, quality="HQ").astype(np.float32)
    # the whole recording (spinetail's 19.5 s is truncated to 1024 frames) and the classifier's
    # own segmentation of it (spinetail: two 9.8 s segments, each padded)
    assert_same(ours, reference, [whole], f"{path.name} whole")
    assert_same(ours, reference, segment_audio(x, rate, 16000), f"{path.name} segments")


def _real16k() -> np.ndarray:
    parts = []
    for name in ("000000", "060000", "120000"):
        x, rate = read_recording(AUDIO / f"S4A03895_20190522_{name}.wav")
        parts.append(soxr.resample(x, rate, 16000, quality="HQ").astype(np.float32))
    return np.concatenate(parts)  # 30 s of real audio at 16 kHz


@pytest.mark.parametrize("n_samples", [
    400,                 # one frame (the shortest input)
    559,                 # still one frame
    560,                 # two frames
    16000,               # 1 s: 98 frames, 926 padded
    400 + 1022 * 160,    # 1023 frames: one padded
    400 + 1023 * 160,    # exactly 1024 frames: no padding, no truncation
    400 + 1024 * 160,    # 1025 frames: one truncated
    480000,              # 30 s: truncated to the first 10.24 s
])
def test_short_and_long_inputs(n_samples, ours, reference):
    x = _real16k()[:n_samples]
    assert x.size == n_samples
    assert_same(ours, reference, [x], f"{n_samples} samples")


def test_mixed_batch_and_padding_value(ours, reference):
    real = _real16k()
    batch = [real[:16000], real[16000:200000], real[:480000]]
    assert_same(ours, reference, batch, "mixed batch")
    got = ours(batch)
    n_frames = 1 + (16000 - 400) // 160
    padded = np.float32((0.0 - ours.mean) / (2 * ours.std))
    assert np.all(got[0, n_frames:] == np.float32(np.float32(0.0) - np.float32(ours.mean)) / np.float32(2 * ours.std))
    assert got[0, n_frames:].mean() == pytest.approx(float(padded), abs=1e-6)
    assert not np.any(got[0, :n_frames] == got[0, n_frames])  # real frames differ from padding


def test_silence_and_near_silence(ours, reference):
    """Digital silence hits the log floor everywhere; -100 dBFS noise sits near it."""
    rng = np.random.default_rng(0)
    silence = np.zeros(160000, np.float32)
    assert_same(ours, reference, [silence], "silence")
    floor = (np.log(np.float32(MEL_FLOOR)) - ours.mean) / (2 * ours.std)
    np.testing.assert_allclose(ours([silence])[0, :998], floor, rtol=0, atol=1e-6)  # 998 real frames
    for amplitude in (1e-5, 1e-3, 1.0):
        noise = np.clip(rng.standard_normal(160000) * amplitude, -1, 1).astype(np.float32)
        assert_same(ours, reference, [noise], f"noise at {amplitude:g}")


def test_filter_bank_and_window_equal_transformers(ours, reference):
    from transformers.audio_utils import mel_filter_bank, window_function

    np.testing.assert_array_equal(ours.window, window_function(400, "hann", periodic=False))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        expected = mel_filter_bank(num_frequency_bins=257, num_mel_filters=128, min_frequency=20,
                                   max_frequency=8000, sampling_rate=16000, norm=None, mel_scale="kaldi",
                                   triangularize_in_mel_space=True)
    np.testing.assert_allclose(ours.mel_filters, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(kaldi_mel_filter_bank(257, 128, 20, 8000, 16000), expected, rtol=0, atol=1e-12)
    assert (ours.frame_length, ours.hop_length, ours.fft_length) == (400, 160, 512)
    assert ours.mel_filters.shape == (257, 128) and ours.mel_filters.max() <= 1.0
    # Kaldi/torchaudio: at 512 points a low filter can fall between two bins and stay empty
    # (here filter 3: 31.25 Hz bins vs ~28 Hz wide filters), hence transformers' warning
    empty = np.flatnonzero(ours.mel_filters.max(axis=0) == 0)
    assert 0 < empty.size and empty.max() < 10
    assert ours.mel_filters[-1].max() == 0.0  # the Nyquist bin, which Kaldi leaves out


def test_config_is_read_from_preprocessor_config(tmp_path, ours):
    assert (ours.sampling_rate, ours.num_mel_bins, ours.max_length) == (16000, 128, 1024)
    assert (ours.mean, ours.std, ours.do_normalize) == (-4.2677393, 4.5689974, True)
    data = json.loads((packaged_config_dir() / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**data, "max_length": 512,
                                                                   "do_normalize": False}))
    short = ASTFeatures.from_pretrained(tmp_path)
    x = _real16k()[:160000]
    out = short([x])
    assert out.shape == (1, 512, 128)
    np.testing.assert_array_equal(out[0], short.fbank(x)[:512])


def test_invalid_inputs(tmp_path, ours):
    with pytest.raises(ValueError, match="fewer than one 400-sample frame"):
        ours([np.zeros(399, np.float32)])
    with pytest.raises(ValueError, match="mono"):
        ours([np.zeros((2, 16000), np.float32)])
    with pytest.raises(ValueError, match="no segments"):
        ours([])
    with pytest.raises(FileNotFoundError):
        ASTFeatures.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor"}))
    with pytest.raises(ValueError, match="expected 'ASTFeatureExtractor'"):
        ASTFeatures.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="std must be positive"):
        ASTFeatures(std=0.0)


def test_one_array_is_a_batch_of_one(ours):
    x = _real16k()[:160000]
    np.testing.assert_array_equal(ours(x), ours([x]))
    np.testing.assert_array_equal(ours(np.stack([x, x]))[1], ours([x])[0])


def test_import_needs_neither_torch_nor_transformers():
    code = ("import agent.analysis.features as f\n"
            "f.ASTFeatures()([__import__('numpy').zeros(16000, 'float32')])")
    assert modules_imported_by(code, ("torch", "transformers", "optimum")) == []
