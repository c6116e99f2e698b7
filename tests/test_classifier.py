"""AST classification through the real model code path on real recordings. No mocks.

The model is the tiny random-weight scaffold (real 527 labels, real feature pipeline), so the
tests check the plumbing (resampling, segmentation, sigmoid, max-pooling, top-k, backends),
not what the labels say.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soxr

from agent.analysis.classifier import (
    BACKENDS,
    MAX_SEGMENT_S,
    ORT_GRAPH_OPTIMIZATION,
    SCAFFOLD_WARNING,
    Classifier,
    OnnxBackend,
    TorchBackend,
    load_classifier,
    onnx_session_options,
    segment_audio,
    top_k_detections,
)
from agent.analysis.models import SCAFFOLD_ID_PREFIX, model_hash
from agent.config import OnnxClassifierConfig, TorchClassifierConfig
from agent.errors import ModelError
from agent.records import Detection
from tests.isolation import modules_imported_by
from tests.model_fixtures import AUDIO, copy_model, read_recording, shared_labels

_classifiers: dict[tuple, Classifier] = {}


def classifier(model_dir: Path, kind: str = "torch", **kw) -> Classifier:
    """Load (and cache per session) a classifier of the tiny scaffold."""
    key = (str(model_dir), kind, tuple(sorted(kw.items())))
    if key not in _classifiers:
        cfg_cls = TorchClassifierConfig if kind == "torch" else OnnxClassifierConfig
        _classifiers[key] = load_classifier(cfg_cls(model=str(model_dir), **kw))
    return _classifiers[key]


def test_registry():
    assert BACKENDS == {"torch": TorchBackend, "onnx": OnnxBackend}


def test_load_tiny_scaffold_torch(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="agent.analysis"):
        clf = load_classifier(TorchClassifierConfig(model=str(tiny_model_dir)))
    assert isinstance(clf, TorchBackend) and isinstance(clf, Classifier)
    assert clf.info.model_id == SCAFFOLD_ID_PREFIX + "ast-audioset-527-tiny"
    assert clf.info.backend == "torch" and clf.info.is_scaffold
    assert clf.info.model_hash == model_hash(tiny_model_dir, ("*.safetensors", "*.bin"))
    assert clf.info.model_hash != model_hash(tiny_model_dir)  # model.onnx, unused by torch, is not in it
    assert list(clf.labels) == shared_labels()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "agent.analysis"]
    assert any(SCAFFOLD_WARNING in r.getMessage() for r in warnings)
    loaded = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(clf.info.model_hash in m and "torch" in m and clf.info.model_id in m for m in loaded)


def test_classify_real_recording(tiny_model_dir):
    x, rate = read_recording()
    assert rate != 16000  # exercises the internal resampling
    clf = classifier(tiny_model_dir, top_k=7)
    detections = clf.classify(x, rate)
    labels = shared_labels()
    assert len(detections) == 7 and all(isinstance(d, Detection) for d in detections)
    assert [d.rank for d in detections] == list(range(1, 8))
    scores = [d.score for d in detections]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len({d.label_index for d in detections}) == 7
    for d in detections:
        assert d.label == labels[d.label_index]
    # the top-k are the k best of all 527 scores
    all_scores = clf.scores(x, rate)
    assert all_scores.shape == (527,) and all_scores.dtype == np.float64
    assert scores[-1] >= np.sort(all_scores)[-7] - 1e-12


def test_min_score_filters(tiny_model_dir):
    x, rate = read_recording()
    ranked = np.sort(classifier(tiny_model_dir).scores(x, rate))[::-1]
    threshold = float((ranked[4] + ranked[5]) / 2)
    clf = classifier(tiny_model_dir, top_k=10, min_score=threshold)
    detections = clf.classify(x, rate)
    assert len(detections) == 5 and all(d.score >= threshold for d in detections)
    assert classifier(tiny_model_dir, top_k=10, min_score=1.0).classify(x, rate) == ()


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values:UserWarning")
def test_scores_are_sigmoid_of_the_hf_model(tiny_model_dir):
    """Recompute independently: soxr HQ → ASTFeatureExtractor → ASTForAudioClassification →
    torch.sigmoid. A softmax (sums to 1 over 527 labels) could not match."""
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    x, rate = read_recording()
    audio16k = soxr.resample(x, rate, 16000, quality="HQ")
    fe = ASTFeatureExtractor.from_pretrained(tiny_model_dir)
    inputs = fe(audio16k, sampling_rate=16000, return_tensors="pt")
    model = ASTForAudioClassification.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits)[0].numpy()

    clf = classifier(tiny_model_dir, top_k=5)
    np.testing.assert_allclose(clf.scores(x, rate), expected, rtol=0, atol=1e-5)
    for d in clf.classify(x, rate):
        assert d.score == pytest.approx(float(expected[d.label_index]), abs=1e-5)
    assert expected.sum() > 2.0  # independent sigmoids, not a distribution


def test_long_window_is_max_pooled_over_segments(tiny_model_dir):
    parts = [read_recording(AUDIO / f"S4A03895_20190522_{h}0000.wav") for h in ("00", "06", "12")]
    rate = parts[0][1]
    window = np.concatenate([p[0] for p in parts])  # 30 s at 22 kHz: night, dawn, midday
    clf = classifier(tiny_model_dir)

    assert clf.features(window, rate).shape == (3, 1024, 128)
    segments = segment_audio(window, rate, 16000)
    assert [len(s) for s in segments] == [160000] * 3
    per_segment = np.stack([clf.scores(s, 16000) for s in segments])
    pooled = clf.scores(window, rate)
    np.testing.assert_allclose(pooled, per_segment.max(axis=0), rtol=0, atol=1e-5)
    # the check can fail: every segment wins some labels, and max differs from mean
    assert len(np.unique(per_segment.argmax(axis=0))) == 3
    assert np.max(np.abs(pooled - per_segment.mean(axis=0))) > 1e-4


def test_segment_audio_lengths():
    rng = np.random.default_rng(0)
    sixteen_k = 16000
    for seconds, expected in [(10.0, [160000]), (30.0, [160000] * 3), (25.0, [133334, 133333, 133333]),
                              (10.0 + 1 / sixteen_k, [80001, 80000]), (1.0, [16000])]:
        x = rng.standard_normal(int(round(seconds * sixteen_k))).astype(np.float32) * 0.1
        segs = segment_audio(x, sixteen_k, sixteen_k)
        assert [len(s) for s in segs] == expected
        assert all(s.dtype == np.float32 for s in segs)
        assert max(len(s) for s in segs) <= MAX_SEGMENT_S * sixteen_k
        np.testing.assert_array_equal(np.concatenate(segs), x)
    x22, rate = read_recording()
    (seg,) = segment_audio(x22, rate, sixteen_k)
    assert len(seg) == round(len(x22) * sixteen_k / rate)


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 16000), np.float32),
                                 np.array([np.nan] * 16000, np.float32), np.zeros(100, np.float32)])
def test_segment_audio_rejects(bad):
    with pytest.raises(ValueError):
        segment_audio(bad, 16000, 16000)


def test_top_k_ties_and_order():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    d = top_k_detections(scores, ["a", "b", "c", "d", "e"], top_k=3)
    assert [(x.rank, x.label, x.label_index) for x in d] == [(1, "b", 1), (2, "d", 3), (3, "c", 2)]
    assert top_k_detections(scores, list("abcde"), top_k=5, min_score=0.5)[-1].label == "c"


def test_onnx_backend_matches_torch(tiny_model_dir):
    x, rate = read_recording()
    onnx = classifier(tiny_model_dir, "onnx")
    torch = classifier(tiny_model_dir)
    assert isinstance(onnx, OnnxBackend) and onnx.info.backend == "onnx" and onnx.info.is_scaffold
    assert onnx.info.model_hash != torch.info.model_hash  # each hashes the weights it loads
    assert onnx.info.model_hash == model_hash(tiny_model_dir, ("model.onnx", "model.onnx_data"))
    assert list(onnx.labels) == shared_labels()
    # one numpy feature path for both backends: bit-identical model input
    np.testing.assert_array_equal(onnx.features(x, rate), torch.features(x, rate))
    np.testing.assert_allclose(onnx.scores(x, rate), torch.scores(x, rate), rtol=0, atol=1e-5)
    detections = onnx.classify(x, rate)
    assert [d.rank for d in detections] == [1, 2, 3, 4, 5]


def test_onnx_session_options_follow_config():
    import onnxruntime as ort

    cores = len(os.sched_getaffinity(0))
    default = onnx_session_options(OnnxClassifierConfig())
    assert OnnxClassifierConfig().threads == 0  # automatic: all cores but one
    assert (default.intra_op_num_threads, default.inter_op_num_threads) == (max(1, cores - 1), 1)
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert default.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert default.enable_cpu_mem_arena and not default.enable_mem_pattern
    assert default.get_session_config_entry("session.use_env_allocators") == "1"  # the kSameAsRequested arena
    custom = onnx_session_options(OnnxClassifierConfig(
        threads=3, inter_op_threads=2, graph_optimization_level="basic", execution_mode="parallel",
        memory_arena=False, memory_pattern=True))
    assert (custom.intra_op_num_threads, custom.inter_op_num_threads) == (3, 2)
    assert custom.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert custom.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert not custom.enable_cpu_mem_arena and custom.enable_mem_pattern
    with pytest.raises(RuntimeError, match="does not have configuration"):  # no arena: nothing to share
        custom.get_session_config_entry("session.use_env_allocators")
    levels = {k: getattr(ort.GraphOptimizationLevel, v) for k, v in ORT_GRAPH_OPTIMIZATION.items()}
    assert levels["disable"] == ort.GraphOptimizationLevel.ORT_DISABLE_ALL and len(set(levels.values())) == 4


@pytest.mark.parametrize("settings", [
    {"graph_optimization_level": "disable", "memory_arena": False, "memory_pattern": True},
    {"execution_mode": "parallel", "inter_op_threads": 2, "threads": 2},
    {"arena_extend_strategy": "next_power_of_two"},
])
def test_onnx_settings_do_not_change_scores(tiny_model_dir, settings):
    x, rate = read_recording()
    other = load_classifier(OnnxClassifierConfig(model=str(tiny_model_dir), **settings))
    np.testing.assert_allclose(other.scores(x, rate), classifier(tiny_model_dir, "onnx").scores(x, rate),
                               rtol=0, atol=1e-5)


def test_onnx_backend_imports_neither_torch_nor_transformers(tiny_model_dir):
    code = (
        "import sys, soundfile as sf\n"
        "from agent.analysis.classifier import load_classifier\n"
        "from agent.config import OnnxClassifierConfig\n"
        f"clf = load_classifier(OnnxClassifierConfig(model={str(tiny_model_dir)!r}))\n"
        f"x, rate = sf.read({str(AUDIO / 'S4A03895_20190522_060000.wav')!r}, dtype='float32')\n"
        "assert len(clf.classify(x, rate)) == 5\n"
    )
    assert modules_imported_by(code, ("torch", "transformers", "optimum")) == []


def test_onnx_rejects_a_model_whose_outputs_do_not_match_the_labels(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["id2label"] = {k: v for k, v in config["id2label"].items() if k != "526"}
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="scores 527 labels but its config.json names 526"):
        load_classifier(OnnxClassifierConfig(model=str(d)))


def test_onnx_unloadable_file_is_a_model_error(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelError, match="onnxruntime cannot load") as err:
        load_classifier(OnnxClassifierConfig(model=str(d)))
    assert "re-export" in err.value.hint


def test_onnx_only_directory(tiny_model_dir, tmp_path):
    """What a Pi holds: config, preprocessor config and the ONNX file, no PyTorch weights."""
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    x, rate = read_recording()
    clf = load_classifier(OnnxClassifierConfig(model=str(d)))
    np.testing.assert_allclose(clf.scores(x, rate), classifier(tiny_model_dir, "onnx").scores(x, rate),
                               rtol=0, atol=0)
    with pytest.raises(ModelError, match="holds no PyTorch weights"):
        load_classifier(TorchClassifierConfig(model=str(d)))


def test_missing_preprocessor_config_and_bad_labels(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="preprocessor_config.json"):
        load_classifier(OnnxClassifierConfig(model=str(d)))
    d = copy_model(tiny_model_dir, tmp_path / "n")
    config = json.loads((d / "config.json").read_text())
    config["id2label"]["600"] = config["id2label"].pop("3")
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="id2label does not cover 0..526"):
        load_classifier(OnnxClassifierConfig(model=str(d)))


def test_without_torch_the_torch_backend_and_scaffold_say_which_extra(tiny_model_dir, tmp_path):
    """Simulates a core install: importing torch fails."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch -> ImportError\n"
        "from agent.analysis.classifier import load_classifier\n"
        "from agent.analysis.models import scaffold\n"
        "from agent.config import TorchClassifierConfig\n"
        "from agent.errors import ModelError\n"
        "for call in (lambda: load_classifier(TorchClassifierConfig(model=sys.argv[1])),\n"
        "             lambda: scaffold(sys.argv[2])):\n"
        "    try:\n"
        "        call()\n"
        "    except ModelError as e:\n"
        "        assert \"pip install 'soundscape-agent[torch]'\" in e.hint, e.hint\n"
        "    else:\n"
        "        raise AssertionError('no ModelError')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tiny_model_dir), str(tmp_path / "s")], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    assert not (tmp_path / "s").exists()  # nothing written before the check


def test_onnx_missing_file(tiny_model_dir):
    with pytest.raises(ModelError) as err:
        load_classifier(OnnxClassifierConfig(model=str(tiny_model_dir), file_name="model_quantized.onnx"))
    assert "model_quantized.onnx" in err.value.message
    assert "model scaffold --onnx" in err.value.hint and "soundscape-agent model export" in err.value.hint


def test_missing_model_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError) as err:
        load_classifier(TorchClassifierConfig(model=str(missing)))
    assert str(missing) in err.value.message and "model scaffold" in err.value.hint


def test_corrupt_weights_become_model_error(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated download
    with pytest.raises(ModelError) as err:
        load_classifier(TorchClassifierConfig(model=str(d)))
    assert str(d) in err.value.message and "torch backend" in err.value.message


def test_checkpoint_without_classifier_head_is_refused(tiny_model_dir, tmp_path):
    """Weights missing from a checkpoint would be random: never load them silently."""
    from safetensors.torch import load_file, save_file

    d = copy_model(tiny_model_dir, tmp_path / "m")
    tensors = load_file(d / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("classifier.")}, d / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match="lacks .* weight"):
        load_classifier(TorchClassifierConfig(model=str(d)))


def test_imports_are_lazy():
    code = (
        "import agent.analysis, agent.analysis.levels, agent.analysis.models, agent.analysis.classifier\n"
    )
    heavy = ("torch", "transformers", "optimum", "onnxruntime", "maad", "huggingface_hub")
    assert modules_imported_by(code, heavy) == []
