"""``model export``: ONNX export + int8 quantisation of the tiny scaffold, verified against PyTorch
on the real recordings, with a manifest whose hashes, sizes, versions and tolerances are checked
against the files on disk; a tampered export fails verification with a clear error and exit 66.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from agent.analysis import export as export_mod
from agent.analysis.export import (
    FP32_FILE,
    INT8_FILE,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    TOLERANCES,
    ExportVerificationError,
    Tolerance,
    compare_scores,
    export_model,
    topk_overlap,
    verification_windows,
)
from agent.analysis.models import SCAFFOLD_ID_PREFIX, SCAFFOLD_MARKER, model_hash
from agent.errors import InputError, ModelError
from tests.isolation import modules_imported_by
from tests.model_fixtures import read_recording, shared_labels
from tests.test_run import agent

INT8_FILES = {SCAFFOLD_MARKER, "config.json", "preprocessor_config.json", FP32_FILE, INT8_FILE, "ort_config.json"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def cli_export(tiny_model_dir, tmp_path_factory):
    """The tiny scaffold exported with the default int8 preset by the CLI, in a separate process."""
    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    r = agent("model", "export", "--model", str(tiny_model_dir), "--out", str(out))
    return out, r


# ------------------------------------------------------------------------------ end to end


def test_cli_export_int8_is_verified_and_announced(cli_export):
    out, r = cli_export
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "verified onnx-fp32 vs torch" in r.stdout and "verified onnx-int8 vs torch" in r.stdout
    assert "verified onnx-int8 vs onnx-fp32" in r.stdout
    assert "SCAFFOLD" in r.stdout and 'file_name = "model_quantized.onnx"' in r.stdout
    assert {p.name for p in out.iterdir()} == INT8_FILES | {MANIFEST_NAME}
    assert not list(out.parent.glob(".*partial*")), "the staging directory must be gone"


def test_manifest_records_every_file_with_its_hash_and_size(cli_export):
    out, _ = cli_export
    m = _manifest(out)
    assert m["format"] == MANIFEST_FORMAT
    assert set(m["files"]) == INT8_FILES
    for name, entry in m["files"].items():
        assert entry["sha256"] == _sha256(out / name), name
        assert entry["size_bytes"] == (out / name).stat().st_size > 0, name
    # int8 weights are about a quarter of fp32 plus the float parts (tiny: ~0.66)
    assert m["files"][INT8_FILE]["size_bytes"] < 0.8 * m["files"][FP32_FILE]["size_bytes"]


def test_manifest_provenance_versions_quantisation_and_tolerances(cli_export, tiny_model_dir):
    out, _ = cli_export
    m = _manifest(out)
    src = m["source"]
    assert src["model"] == str(tiny_model_dir) and src["kind"] == "directory" and src["is_scaffold"] is True
    assert src["model_hash"] == src["revision"] == model_hash(tiny_model_dir)
    assert src["model_id"] == m["model_id"] == f"{SCAFFOLD_ID_PREFIX}ast-audioset-527-tiny"
    assert m["n_labels"] == 527 and m["task"] == "audio-classification"
    a = m["architecture"]
    assert (a["variant"], a["patch_grid"], a["patches"], a["tokens"]) == ("10-10", [12, 101], 1212, 1214)
    assert a["stands_for"] == "MIT/ast-finetuned-audioset-10-10-0.4593" and a["input"] == [1, 1024, 128]
    assert isinstance(m["opset"], int) and m["opset"] >= 14
    created = datetime.fromisoformat(m["created_utc"])
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 3600
    for dist in ("onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "onnx"):
        assert m["versions"][dist] == version(dist), dist
    q = m["quantization"]
    assert q["target"] == "arm64" and q["is_static"] is False and q["per_channel"] is True
    assert q["reduce_range"] is False and q["weights_dtype"] == "QInt8" and q["activations_dtype"] == "QUInt8"
    assert "MatMul" in q["operators_to_quantize"] and "Conv" in q["operators_to_quantize"]
    # every MatMul and the classifier Gemm became MatMulInteger, the patch Conv ConvInteger
    n_float_matmuls = m["op_types_fp32"]["MatMul"] + m["op_types_fp32"].get("Gemm", 0)
    assert q["quantized_nodes"]["MatMulInteger"] == n_float_matmuls
    assert q["quantized_nodes"]["ConvInteger"] == 1 and q["float_nodes_left"] == {}
    assert m["tolerances"] == {"fp32": asdict(TOLERANCES.fp32), "int8": asdict(TOLERANCES.int8)}


def test_manifest_verification_results(cli_export):
    out, _ = cli_export
    v = _manifest(out)["verification"]
    assert v["passed"] is True and v["failures"] == []
    assert v["n_windows"] == len(v["windows"]) == 10  # 8 × 10 s at 22 kHz + spinetail 10 s + 9.54 s at 44.1 kHz
    assert {w["sample_rate"] for w in v["windows"]} == {22000, 44100}
    checks = {c["name"]: c for c in v["checks"]}
    assert set(checks) == {"onnx-fp32 vs torch", "onnx-int8 vs torch", "onnx-int8 vs onnx-fp32"}
    for c in checks.values():
        assert c["passed"] and c["max_abs_diff"] <= c["tolerance"]["max_abs_diff"]
        assert c["min_topk_overlap"] >= c["tolerance"]["min_topk_overlap"]
    assert checks["onnx-fp32 vs torch"]["max_abs_diff"] < 1e-5
    assert checks["onnx-fp32 vs torch"]["min_topk_overlap"] == 1.0
    # int8 really is quantised: not bit-identical to fp32
    assert checks["onnx-int8 vs onnx-fp32"]["max_abs_diff"] > 1e-6
    assert set(v["median_latency_s_per_window"]) == {"torch", FP32_FILE, INT8_FILE}


def test_exported_model_loads_and_stays_a_scaffold(cli_export, tiny_model_dir):
    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig, TorchClassifierConfig

    out, _ = cli_export
    x, rate = read_recording()
    reference = load_classifier(TorchClassifierConfig(model=str(tiny_model_dir))).scores(x, rate)
    for file_name, atol in ((FP32_FILE, 1e-5), (INT8_FILE, TOLERANCES.int8.max_abs_diff)):
        clf = load_classifier(OnnxClassifierConfig(model=str(out), file_name=file_name))
        assert clf.info.is_scaffold and clf.info.backend == "onnx"
        assert clf.info.model_id == f"{SCAFFOLD_ID_PREFIX}ast-audioset-527-tiny"
        assert list(clf.labels) == shared_labels()
        np.testing.assert_allclose(clf.scores(x, rate), reference, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def unfused_export(cli_export, tiny_model_dir, tmp_path_factory):
    """fp32 only, attention not fused, written over a copy of an earlier int8 export."""
    out = tmp_path_factory.mktemp("unfused") / "again"
    shutil.copytree(cli_export[0], out)  # an earlier (int8) export: replaced, nothing stale kept
    result = export_model(str(tiny_model_dir), out, quantize="none", fuse_attention=False)
    return out, result


def _tiny_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def test_export_without_quantisation_replaces_an_earlier_export(unfused_export):
    out, result = unfused_export
    assert result.passed and result.is_scaffold and result.model_id.startswith(SCAFFOLD_ID_PREFIX)
    assert {p.name for p in out.iterdir()} == {SCAFFOLD_MARKER, "config.json", "preprocessor_config.json",
                                               FP32_FILE, MANIFEST_NAME}
    m = _manifest(out)
    assert m["quantization"] == {"target": "none"}
    assert [c["name"] for c in m["verification"]["checks"]] == ["onnx-fp32 vs torch"]
    assert set(m["files"]) == {SCAFFOLD_MARKER, "config.json", "preprocessor_config.json", FP32_FILE}
    assert m["files"][FP32_FILE]["sha256"] == _sha256(out / FP32_FILE)


def test_attention_is_fused_into_multiheadattention_and_verified(cli_export, unfused_export, tiny_model_dir):
    """Default export: every layer's MatMul-Softmax-MatMul becomes one com.microsoft.MultiHeadAttention
    (FlashAttention on the CPU), in fp32 and int8, and the fused graph passed the same verification
    against PyTorch; ``--no-fuse-attention`` keeps the standard-operator graph."""
    out, r = cli_export
    cfg = _tiny_config(tiny_model_dir)
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    m = _manifest(out)
    fusion = m["graph_rewrites"]["attention_fusion"]
    assert fusion["enabled"] is True and fusion["op"] == "com.microsoft.MultiHeadAttention"
    assert fusion["fused"] == layers and fusion["unfused_softmax"] == 0 and fusion["num_heads"] == heads
    assert fusion["scale"] == pytest.approx((cfg["hidden_size"] / heads) ** -0.5, rel=1e-6)
    assert f"attention: {layers} blocks fused" in r.stdout
    assert m["op_types_fp32"]["MultiHeadAttention"] == layers and "Softmax" not in m["op_types_fp32"]
    assert m["quantization"]["op_types_int8"]["MultiHeadAttention"] == layers
    assert m["verification"]["passed"] is True

    unfused = _manifest(unfused_export[0])
    assert unfused["graph_rewrites"] == {"attention_fusion": {"enabled": False}}
    assert unfused["op_types_fp32"]["Softmax"] == layers and "MultiHeadAttention" not in unfused["op_types_fp32"]
    assert unfused["verification"]["passed"] is True


def test_fusion_rewrites_only_blocks_that_match_exactly(unfused_export, tiny_model_dir):
    """A block that deviates from the pattern (here: one layer's key transposed differently) is left
    as it was and counted; the others are fused; a graph without attention is left unchanged."""
    import onnx
    from onnx import helper

    from agent.analysis.fusion import fuse_attention

    layers = _tiny_config(tiny_model_dir)["num_hidden_layers"]
    path = unfused_export[0] / FP32_FILE
    model = onnx.load(str(path))
    n_nodes = len(model.graph.node)
    fusion = fuse_attention(model)
    assert (fusion.fused, fusion.unfused, fusion.nodes_before) == (layers, 0, n_nodes)
    assert fusion.nodes_after < n_nodes and sum(n.op_type == "MultiHeadAttention" for n in model.graph.node) == layers
    assert any(o.domain == "com.microsoft" for o in model.opset_import)

    model = onnx.load(str(path))
    key_transposes = [n for n in model.graph.node if n.op_type == "Transpose"
                      and list(helper.get_attribute_value(n.attribute[0])) == [0, 2, 3, 1]]
    assert len(key_transposes) == layers
    key_transposes[0].attribute[0].CopyFrom(helper.make_attribute("perm", [0, 2, 1, 3]))
    fusion = fuse_attention(model)
    assert (fusion.fused, fusion.unfused) == (layers - 1, 1)
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 1

    empty = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]))
    fusion = fuse_attention(empty)
    assert (fusion.fused, fusion.unfused, fusion.nodes_after) == (0, 0, 1)
    assert [o.domain for o in empty.opset_import] == [""]


# ------------------------------------------------------------------------------ failures


def _tamper_classifier_bias(onnx_path: Path) -> None:
    """Raise the classifier bias of 50 labels by 4 (sigmoid +0.4 or so): scores diverge."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    (init,) = [i for i in model.graph.initializer if i.name == "classifier.dense.bias"]
    bias = numpy_helper.to_array(init).copy()
    assert bias.shape == (527,)
    bias[100:150] += 4.0
    init.CopyFrom(numpy_helper.from_array(bias, init.name))
    onnx.save(model, str(onnx_path))


def test_tampered_export_fails_verification_with_a_clear_error(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from agent.cli import main

    real_export = export_mod._export_onnx

    def export_then_tamper(model_dir, staging, opset):
        real_export(model_dir, staging, opset)
        _tamper_classifier_bias(staging / FP32_FILE)  # before quantisation: both files are wrong

    monkeypatch.setattr(export_mod, "_export_onnx", export_then_tamper)
    out = tmp_path / "bad"
    code = main(["model", "export", "--model", str(tiny_model_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 66, err
    assert "Traceback" not in err and err.count("error:") == 1
    assert "verification of the ONNX export" in err and "FAILED" in err and "NOT fit for use" in err
    assert "onnx-fp32 vs torch: max abs score difference" in err and "> tolerance 0.0001" in err
    assert re.search(r"onnx-fp32 vs torch: min top-5 overlap 0\.[0-8]\d < tolerance 1\b", err)
    assert "onnx-int8 vs torch: max abs score difference" in err and "> tolerance 0.05" in err
    # the failed export is kept, with a manifest that says so
    v = _manifest(out)["verification"]
    assert v["passed"] is False
    checks = {c["name"]: c for c in v["checks"]}
    assert not checks["onnx-fp32 vs torch"]["passed"] and checks["onnx-fp32 vs torch"]["max_abs_diff"] > 0.3
    assert not checks["onnx-int8 vs torch"]["passed"]
    assert checks["onnx-int8 vs onnx-fp32"]["passed"]  # both carry the same tampered bias
    assert v["failures"] and all("tolerance" in f for f in v["failures"])


def test_verification_error_carries_the_result(cli_export, tiny_model_dir, tmp_path, monkeypatch):
    strict = export_mod.Tolerances(fp32=Tolerance(max_abs_diff=0.0, min_topk_overlap=1.0))

    def reuse_export(model_dir, staging, opset):  # the fixture's export stands in: faster
        for name in (FP32_FILE, "config.json", "preprocessor_config.json"):
            shutil.copy2(cli_export[0] / name, staging / name)

    monkeypatch.setattr(export_mod, "_export_onnx", reuse_export)
    monkeypatch.setattr(export_mod, "_quantize", lambda *a: pytest.fail("quantize='none' must not quantise"))
    with pytest.raises(ExportVerificationError) as info:
        export_model(str(tiny_model_dir), tmp_path / "x", quantize="none", tolerances=strict)
    err = info.value
    assert isinstance(err, ModelError) and err.exit_code == 66
    assert not err.result.passed and "> tolerance 0" in err.message
    assert _manifest(err.result.out_dir)["tolerances"]["fp32"]["max_abs_diff"] == 0.0


def test_refuses_an_out_dir_that_is_not_an_export(tiny_model_dir, tmp_path, capsys):
    from agent.cli import main

    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["model", "export", "--model", str(tiny_model_dir), "--out", str(out)]) == 66
    assert "refusing to export into" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    with pytest.raises(ModelError, match="must not be"):
        export_model(str(tiny_model_dir), tiny_model_dir / "onnx")
    assert not (tiny_model_dir / "onnx").exists()


def test_missing_model_and_bad_arguments(tmp_path, capsys):
    from agent.cli import main

    assert main(["model", "export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 66
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["model", "export", "--model", "x", "--out", "y", "--quantize", "int4"])
    assert info.value.code == 64
    with pytest.raises(ModelError, match="unknown quantisation target"):
        export_model("x", tmp_path / "o", quantize="int4")


# ------------------------------------------------------------------------------ pieces


def test_verification_windows_of_the_bundled_recordings(tmp_path):
    windows = verification_windows()
    assert len(windows) == 10
    assert all(w.samples.dtype == np.float32 and w.samples.ndim == 1 for w in windows)
    tail = windows[-1]
    assert tail.file.startswith("spinetail") and tail.start_s == 10.0 and tail.sample_rate == 44100
    assert tail.duration_s == pytest.approx(9.542, abs=1e-3)
    assert [round(w.duration_s, 3) for w in windows[:-1]] == [10.0] * 9
    with pytest.raises(InputError, match="do not exist"):
        verification_windows(tmp_path / "none")
    with pytest.raises(InputError, match="no WAV/FLAC"):
        verification_windows(tmp_path)


def test_topk_overlap_and_compare_scores():
    ref = np.array([[0.9, 0.8, 0.7, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    same_set_other_order = np.array([[0.7, 0.8, 0.9, 0.1, 0.0], [0.1, 0.2, 0.3, 0.5, 0.4]])
    np.testing.assert_array_equal(topk_overlap(ref, same_set_other_order, k=3), [1.0, 1.0])
    one_swapped = ref.copy()
    one_swapped[0, 3] = 0.95  # label 3 enters the top 3, label 2 leaves it
    np.testing.assert_allclose(topk_overlap(ref, one_swapped, k=3), [2 / 3, 1.0])

    tol = Tolerance(max_abs_diff=0.1, min_topk_overlap=0.9, top_k=3)
    ok = compare_scores("a vs b", "b", ref, "a", ref + 0.05, tol)
    assert ok.passed and ok.failures == () and ok.max_abs_diff == pytest.approx(0.05)
    bad = compare_scores("a vs b", "b", ref, "a", one_swapped, tol)
    assert not bad.passed and bad.worst_window == 0
    assert bad.failures == ("a vs b: max abs score difference 0.85 > tolerance 0.1",
                            "a vs b: min top-3 overlap 0.67 < tolerance 0.9")
    nan = ref.copy()
    nan[1, 1] = np.nan
    assert "non-finite" in compare_scores("n", "b", ref, "a", nan, tol).failures[0]
    with pytest.raises(ValueError):
        topk_overlap(ref, ref[:1], k=3)


def test_source_revision_is_the_hub_commit_or_the_directory_hash(tmp_path):
    from agent.analysis.models import ResolvedModel

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--MIT--ast" / "snapshots" / commit
    hub = ResolvedModel(local_dir=snapshot, model_id="MIT/ast", model_hash="f" * 64, is_scaffold=False,
                        source="hf-cache")
    assert export_mod._source_revision(hub) == commit
    local = ResolvedModel(local_dir=tmp_path / "m", model_id="m", model_hash="e" * 64, is_scaffold=False,
                          source="directory")
    assert export_mod._source_revision(local) == "e" * 64


def test_export_module_and_cli_import_no_heavy_library():
    code = "import agent.analysis.export, agent.cli\nagent.cli.build_parser()"
    assert modules_imported_by(code, ("torch", "transformers", "optimum", "onnxruntime", "onnx")) == []


def test_fp32_and_int8_of_one_export_carry_different_hashes_and_manifest_does_not_count(cli_export, tmp_path):
    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig

    out, r = cli_export
    assert r.returncode == 0, r.stderr
    fp32 = load_classifier(OnnxClassifierConfig(model=str(out), file_name=FP32_FILE)).info
    int8 = load_classifier(OnnxClassifierConfig(model=str(out), file_name=INT8_FILE)).info
    assert fp32.model_id == int8.model_id and fp32.model_hash != int8.model_hash
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "manifest.json").write_text('{"export_date": "another day"}')
    again = load_classifier(OnnxClassifierConfig(model=str(copy), file_name=INT8_FILE)).info
    assert again.model_hash == int8.model_hash
    (copy / FP32_FILE).write_bytes(b"changed")  # not the file in use: no effect on int8's hash
    assert (load_classifier(OnnxClassifierConfig(model=str(copy), file_name=INT8_FILE)).info.model_hash
            == int8.model_hash)


def test_ast_16_16_scaffold_exports_verifies_and_runs_in_both_backends(tmp_path):
    """The 16-16 variant end to end: `model scaffold --variant 16-16` (512 patches, what was
    derived said in its files), `model export` with int8 and verification, and the torch and
    onnx backends giving the same scores on a real recording from the same 1024×128 features."""
    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig, TorchClassifierConfig

    src = tmp_path / "ast16"
    r = agent("model", "scaffold", "--variant", "16-16", "--tiny", "--out", str(src))
    assert r.returncode == 0, r.stderr
    mark = json.loads((src / SCAFFOLD_MARKER).read_text())
    assert mark["variant"] == "16-16" and mark["stands_for"] == "MIT/ast-finetuned-audioset-16-16-0.442"
    assert "frequency_stride = time_stride = 16" in mark["derived_from"] and "512 patches" in mark["derived_from"]
    config = json.loads((src / "config.json").read_text())
    assert (config["frequency_stride"], config["time_stride"], config["soundscape_variant"]) == (16, 16, "16-16")

    out = tmp_path / "ast16-onnx"
    result = export_model(str(src), out, quantize="avx2")
    assert result.manifest["verification"]["passed"] is True
    a = result.manifest["architecture"]  # the variant recorded in the manifest, from the exported config
    assert (a["variant"], a["stands_for"]) == ("16-16", "MIT/ast-finetuned-audioset-16-16-0.442")
    assert (a["patch_grid"], a["patches"], a["tokens"]) == ([8, 64], 512, 514)
    assert json.loads((out / "config.json").read_text())["soundscape_variant"] == "16-16"
    assert json.loads((out / SCAFFOLD_MARKER).read_text())["variant"] == "16-16"
    x, rate = read_recording()
    torch_clf = load_classifier(TorchClassifierConfig(model=str(src)))
    fp32 = load_classifier(OnnxClassifierConfig(model=str(out)))
    int8 = load_classifier(OnnxClassifierConfig(model=str(out), file_name="model_quantized.onnx"))
    assert "16-16" in torch_clf.info.model_id and torch_clf.info.is_scaffold
    assert fp32.info.model_id == int8.info.model_id == torch_clf.info.model_id and int8.info.is_scaffold
    tokens = torch_clf._model.audio_spectrogram_transformer.embeddings.position_embeddings.shape[1]
    assert tokens == 8 * 64 + 2  # 512 patches + CLS + distillation token
    assert torch_clf.features(x, rate).shape == (1, 1024, 128)
    # feature extraction is the variant-independent 1024 × 128 fbank in both backends
    np.testing.assert_array_equal(fp32.features(x, rate), torch_clf.features(x, rate))
    reference = torch_clf.scores(x, rate)
    assert np.abs(fp32.scores(x, rate) - reference).max() < 1e-4
    assert np.abs(int8.scores(x, rate) - reference).max() < 0.05
