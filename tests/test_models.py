"""Model provenance: scaffold, hash, resolution of directories and hub ids. No mocks."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

from agent.analysis.models import (
    SCAFFOLD_CONFIG_KEY,
    SCAFFOLD_ID_PREFIX,
    SCAFFOLD_MARKER,
    SOURCE_MODEL_ID,
    model_hash,
    packaged_config_dir,
    resolve_model,
    scaffold,
)
from agent.config import DEFAULT_MODEL_ID
from agent.errors import EX_NOINPUT, ModelError
from tests.model_fixtures import SHARED_CONFIG, copy_model, shared_labels

# sha256 of the original files of MIT/ast-finetuned-audioset-10-10-0.4593 (see the README)
ORIGINAL_SHA256 = {
    "config.json": "49d0dce922da23685787c73a874d9b1ffa97297f8cc4dc0a4e8bef219725e44d",
    "preprocessor_config.json": "8d04ba5a9c6fca5d39d0de2b1fd05ecf79deb589fbba279728bbebac39934231",
}


def test_packaged_config_is_the_real_one():
    readme = (packaged_config_dir() / "README.md").read_text()
    for name, digest in ORIGINAL_SHA256.items():
        assert hashlib.sha256((packaged_config_dir() / name).read_bytes()).hexdigest() == digest, name
        assert f"{digest}  {name}" in readme
    packaged = json.loads((packaged_config_dir() / "config.json").read_text())
    assert SHARED_CONFIG.resolve() == (packaged_config_dir() / "config.json").resolve()
    assert len(packaged["id2label"]) == 527 and packaged["num_hidden_layers"] == 12
    assert packaged["hidden_size"] == 768 and packaged["max_length"] == 1024
    assert packaged["_name_or_path"] == SOURCE_MODEL_ID == DEFAULT_MODEL_ID
    pre = json.loads((packaged_config_dir() / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == 16000 and pre["max_length"] == 1024 and pre["num_mel_bins"] == 128


def test_tiny_scaffold_layout(tiny_model_dir):
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"SCAFFOLD.json", "config.json", "model.safetensors", "preprocessor_config.json",
            "model.onnx"} <= names
    marker = json.loads((tiny_model_dir / SCAFFOLD_MARKER).read_text())
    assert marker["scaffold"] is True and marker["random_weights"] is True and marker["tiny"] is True
    assert "meaningless" in marker["warning"] and SOURCE_MODEL_ID in marker["source_config"]

    config = json.loads((tiny_model_dir / "config.json").read_text())
    real = json.loads(SHARED_CONFIG.read_text())
    assert config[SCAFFOLD_CONFIG_KEY]["random_weights"] is True
    assert config["id2label"] == real["id2label"] and len(config["id2label"]) == 527
    for key in ("num_mel_bins", "max_length", "patch_size", "frequency_stride", "time_stride"):
        assert config[key] == real[key], key
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"]) == (2, 64, 2, 128)
    assert json.loads((tiny_model_dir / "preprocessor_config.json").read_text())["sampling_rate"] == 16000


def test_resolve_scaffold_directory(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.is_scaffold
    assert resolved.model_id == SCAFFOLD_ID_PREFIX + "ast-audioset-527-tiny"
    assert resolved.source == "directory" and resolved.local_dir == tiny_model_dir.resolve()
    assert resolved.model_hash == model_hash(tiny_model_dir)
    info = resolved.info("onnx")
    assert (info.backend, info.is_scaffold, info.model_id) == ("onnx", True, resolved.model_id)


def test_scaffold_stays_marked_without_its_marker_file(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    (d / SCAFFOLD_MARKER).unlink()
    resolved = resolve_model(str(d))
    assert resolved.is_scaffold and resolved.model_id.startswith(SCAFFOLD_ID_PREFIX)


def test_hash_stable_content_based_and_sensitive(tiny_model_dir, tmp_path):
    h1 = model_hash(tiny_model_dir)
    assert len(h1) == 64 and h1 == model_hash(tiny_model_dir)
    d = copy_model(tiny_model_dir, tmp_path / "copy")
    assert model_hash(d) == h1  # depends on relative paths and bytes, not on where it lives

    (d / "README.md").write_text("not a model file\n")
    assert model_hash(d) == h1

    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    h2 = model_hash(d)
    assert h2 != h1

    (d / "model.onnx").rename(d / "other.onnx")  # renaming a model file changes it too
    assert model_hash(d) != h2


def test_scaffold_is_deterministic_per_seed(tiny_model_dir, tmp_path):
    a = scaffold(tmp_path / "a", tiny=True, seed=0)
    scaffold(tmp_path / "b", tiny=True, seed=1)
    assert a.model_id == SCAFFOLD_ID_PREFIX + "ast-audioset-527-tiny" and a.tiny and not a.onnx
    assert a.model_hash == model_hash(tmp_path / "a")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert (tmp_path / "b" / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    assert 100_000 < a.n_parameters < 1_000_000 and a.size_bytes > 4 * a.n_parameters


def test_rescaffold_replaces_model_files(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    scaffold(d, tiny=True, onnx=False)
    assert not (d / "model.onnx").exists()  # no stale export of an older scaffold survives
    assert (d / SCAFFOLD_MARKER).is_file()


def test_scaffold_refuses_to_overwrite_a_possible_real_model(tmp_path):
    d = tmp_path / "real"
    d.mkdir()
    (d / "config.json").write_text((packaged_config_dir() / "config.json").read_text())
    (d / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(ModelError, match="refusing"):
        scaffold(d, tiny=True)
    assert (d / "model.safetensors").read_bytes() == b"precious"
    assert not (d / SCAFFOLD_MARKER).exists()


def test_plain_directory_ids(tiny_model_dir, tmp_path):
    # a copy of the real model keeps the real config's _name_or_path as its id
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.json").write_text((packaged_config_dir() / "config.json").read_text())
    (real / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    resolved = resolve_model(str(real))
    assert (resolved.model_id, resolved.is_scaffold) == (SOURCE_MODEL_ID, False)

    # no _name_or_path: the directory path is the id
    config = json.loads((real / "config.json").read_text())
    del config["_name_or_path"]
    (real / "config.json").write_text(json.dumps(config))
    assert resolve_model(str(real)).model_id == str(real.resolve())


def test_missing_directory_names_path_and_scaffold(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelError) as err:
        resolve_model(str(missing))
    assert str(missing) in err.value.message and "does not exist" in err.value.message
    assert "model scaffold" in err.value.hint and err.value.exit_code == EX_NOINPUT


@pytest.mark.parametrize("content", ["no-config", "no-weights"])
def test_incomplete_directory(tiny_model_dir, tmp_path, content):
    d = copy_model(tiny_model_dir, tmp_path / "m")
    if content == "no-config":
        (d / "config.json").unlink()
        expected = "no config.json"
    else:
        (d / "model.safetensors").unlink()
        (d / "model.onnx").unlink()
        expected = "no weights"
    with pytest.raises(ModelError, match=expected):
        resolve_model(str(d))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_default_hub_id_not_cached_and_hub_unreachable(tmp_path):
    """The real default id, an empty cache, a hub that refuses connections: one ModelError."""
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        resolve_model(DEFAULT_MODEL_ID, cache_dir=tmp_path / "hf-cache",
                      endpoint=f"http://127.0.0.1:{_closed_port()}")
    elapsed = time.monotonic() - started
    print(f"hub id, connection refused: ModelError after {elapsed:.3f} s")
    assert DEFAULT_MODEL_ID in err.value.message
    assert "not in the local Hugging Face cache and the hub is unreachable" in err.value.message
    assert "connection failed" in err.value.message
    assert "huggingface-cli download" in err.value.hint and "model scaffold" in err.value.hint


def test_hub_that_never_answers_is_given_up(tmp_path):
    """A black-holed hub (accepts, never replies) is abandoned after probe_timeout_s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # connections complete in the kernel backlog; nothing ever answers
    try:
        started = time.monotonic()
        with pytest.raises(ModelError) as err:
            resolve_model("some-owner/some-model", cache_dir=tmp_path / "hf-cache",
                          endpoint=f"http://127.0.0.1:{server.getsockname()[1]}", probe_timeout_s=1.0)
        print(f"black-holed hub: ModelError after {time.monotonic() - started:.3f} s")
    finally:
        server.close()
    assert "the hub is unreachable" in err.value.message and "no answer within 1 s" in err.value.message


def test_hub_id_with_default_endpoint(tmp_path):
    """Through the real default hub: unreachable here (ModelError at once); on a connected
    machine the hub says the repo does not exist. Either way nothing is downloaded."""
    ref = "soundscape-agent-tests/no-such-model-0000"
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        resolve_model(ref, cache_dir=tmp_path / "hf-cache")
    print(f"hub id via default endpoint: ModelError after {time.monotonic() - started:.3f} s")
    assert repr(ref) in err.value.message and "Hugging Face" in err.value.message


def test_downloads_disabled(tmp_path):
    with pytest.raises(ModelError, match="not in the local Hugging Face cache and downloads are disabled"):
        resolve_model(DEFAULT_MODEL_ID, cache_dir=tmp_path / "hf-cache", allow_download=False)


def _fake_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay out ``model_dir`` as huggingface_hub's cache does (refs/main -> snapshots/<sha>)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    copy_model(model_dir, repo / "snapshots" / sha)
    return repo / "snapshots" / sha


def test_hub_id_found_in_local_cache(tiny_model_dir, tmp_path):
    closed = f"http://127.0.0.1:{_closed_port()}"  # proves no network is needed
    snap = _fake_cache(tmp_path / "c1", "someone/ast-copy", tiny_model_dir)
    resolved = resolve_model("someone/ast-copy", cache_dir=tmp_path / "c1", endpoint=closed)
    assert resolved.source == "hf-cache" and resolved.local_dir == snap.resolve()
    # a scaffold stays a scaffold whatever id it is reached by
    assert resolved.is_scaffold and resolved.model_id.startswith(SCAFFOLD_ID_PREFIX)

    # without the scaffold marks, the hub id is the model id
    plain = copy_model(tiny_model_dir, tmp_path / "plain")
    (plain / SCAFFOLD_MARKER).unlink()
    config = json.loads((plain / "config.json").read_text())
    del config[SCAFFOLD_CONFIG_KEY]
    (plain / "config.json").write_text(json.dumps(config))
    _fake_cache(tmp_path / "c2", "someone/ast-copy", plain)
    resolved = resolve_model("someone/ast-copy", cache_dir=tmp_path / "c2", endpoint=closed)
    assert (resolved.model_id, resolved.is_scaffold) == ("someone/ast-copy", False)

    # a cached snapshot without a required file (the onnx backend's model.onnx) is not enough
    (resolved.local_dir / "model.onnx").unlink()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        resolve_model("someone/ast-copy", cache_dir=tmp_path / "c2", endpoint=closed,
                      required_files=["model.onnx"])


def test_labels_helper_matches_shared_config():
    assert len(shared_labels()) == 527 and shared_labels()[0] == "Speech"


# ------------------------------------------------------------------------------ AST variants


def test_ast_variants_registry():
    from agent.analysis.models import AST_VARIANTS

    assert AST_VARIANTS["10-10"]["model_id"] == SOURCE_MODEL_ID == DEFAULT_MODEL_ID
    assert AST_VARIANTS["16-16"]["model_id"] == "MIT/ast-finetuned-audioset-16-16-0.442"
    for name, spec in AST_VARIANTS.items():
        stride = int(name.split("-")[0])
        assert spec["frequency_stride"] == spec["time_stride"] == stride
        f_dim, t_dim = (128 - 16) // stride + 1, (1024 - 16) // stride + 1
        assert tuple(spec["patch_grid"]) == (f_dim, t_dim) and spec["patches"] == f_dim * t_dim
        # the published mAP is the figure in the hub id
        assert spec["model_id"].endswith(str(spec["audioset_map"])) and "Gong" in spec["audioset_map_source"]
    assert (AST_VARIANTS["10-10"]["patches"], AST_VARIANTS["16-16"]["patches"]) == (1212, 512)


def test_variant_config_is_the_packaged_config_with_two_strides_and_the_id_changed():
    from agent.analysis.models import DERIVED_CONFIG_KEY, variant_config

    packaged = json.loads((packaged_config_dir() / "config.json").read_text())
    assert variant_config("10-10") == packaged
    derived = variant_config("16-16")
    note = derived.pop(DERIVED_CONFIG_KEY)
    changed = {k for k in set(packaged) | set(derived) if packaged.get(k) != derived.get(k)}
    assert changed == {"frequency_stride", "time_stride", "_name_or_path"}
    assert (derived["frequency_stride"], derived["time_stride"]) == (16, 16)
    assert derived["_name_or_path"] == "MIT/ast-finetuned-audioset-16-16-0.442"
    assert note["changed"]["time_stride"] == [10, 16] and SOURCE_MODEL_ID in note["from"]
    assert ORIGINAL_SHA256["config.json"] in note["from"] and "512 patches" in note["why"]
    with pytest.raises(ValueError, match="unknown AST variant"):
        variant_config("12-12")


def test_16_16_scaffold_records_its_variant_and_has_512_patches(tiny_16_model_dir):
    import onnx
    import torch
    from transformers import ASTForAudioClassification

    from agent.analysis.models import DERIVED_CONFIG_KEY

    mark = json.loads((tiny_16_model_dir / SCAFFOLD_MARKER).read_text())
    assert mark["variant"] == "16-16" and mark["stands_for"] == "MIT/ast-finetuned-audioset-16-16-0.442"
    assert mark["patches"] == 512 and mark["derived"]["changed"]["frequency_stride"] == [10, 16]
    config = json.loads((tiny_16_model_dir / "config.json").read_text())
    assert config["soundscape_variant"] == "16-16" and config[DERIVED_CONFIG_KEY]["variant"] == "16-16"
    assert (config["frequency_stride"], config["time_stride"]) == (16, 16)
    assert "_name_or_path" not in config  # random weights never carry the real model's id
    resolved = resolve_model(str(tiny_16_model_dir))
    assert resolved.is_scaffold and resolved.model_id == SCAFFOLD_ID_PREFIX + "ast-16-16-audioset-527-tiny"

    # PyTorch: the patch embedding cuts the 1024 × 128 fbank into 8 × 64 = 512 patches (+ 2 tokens)
    model = ASTForAudioClassification.from_pretrained(str(tiny_16_model_dir)).eval()
    with torch.no_grad():
        tokens = model.audio_spectrogram_transformer.embeddings(torch.zeros(1, 1024, 128))
    assert tokens.shape == (1, 512 + 2, 64)
    # ONNX: the patch Conv's output, by ONNX shape inference with the input fixed to (1, 1024, 128)
    graph = onnx.load(str(tiny_16_model_dir / "model.onnx"))
    for d, value in zip(graph.graph.input[0].type.tensor_type.shape.dim, (1, 1024, 128), strict=False):
        d.ClearField("dim_param")
        d.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(graph)
    conv = next(n for n in inferred.graph.node if n.op_type == "Conv")
    vi = next(v for v in inferred.graph.value_info if v.name == conv.output[0])
    assert [d.dim_value for d in vi.type.tensor_type.shape.dim] == [1, 64, 8, 64]


def test_10_10_scaffold_keeps_its_id_and_says_its_variant(tiny_model_dir):
    mark = json.loads((tiny_model_dir / SCAFFOLD_MARKER).read_text())
    assert mark["variant"] == "10-10" and mark["patches"] == 1212 and "derived_from" not in mark
    assert json.loads((tiny_model_dir / "config.json").read_text())["soundscape_variant"] == "10-10"


def test_unknown_variant_is_refused(tmp_path):
    from agent.cli import build_parser

    with pytest.raises(ValueError, match="unknown AST variant '12-12'"):
        scaffold(tmp_path / "x", tiny=True, variant="12-12")
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["model", "scaffold", "--out", str(tmp_path / "y"), "--variant", "12-12"])
    args = build_parser().parse_args(["model", "scaffold", "--out", str(tmp_path / "y")])
    assert args.variant == "10-10"
