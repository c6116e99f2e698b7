"""Where a classification model comes from, what exactly it is, and the random-weight scaffold.

- :func:`resolve_model` turns the ``[classifier] model`` setting (a local directory or a
  Hugging Face hub id) into a local directory plus provenance (:class:`ResolvedModel`).
  It never falls back from a requested real model to anything else.
- :func:`model_hash` fingerprints a model directory (sha256).
- :func:`scaffold` writes an AST model directory with the real AudioSet architecture and
  labels (packaged in ``agent/data/ast-audioset``) but **random weights**, for tests and
  benchmarks on machines that cannot download the real weights. Its id starts with
  :data:`SCAFFOLD_ID_PREFIX`, so nothing it produces passes for real labels.

torch, transformers, optimum and huggingface_hub are imported inside the functions that need
them; importing this module is cheap and has no side effects. :func:`resolve_model` and
:func:`model_hash` (the path every backend takes) use only the standard library and
huggingface_hub (which pulls neither torch nor transformers), so they work in a core, torch-free
install; :func:`scaffold` and :func:`load_feature_extractor` need the ``torch`` extra.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.analysis.hashing import hash_files, sha256_file
from agent.errors import ModelError
from agent.records import ModelInfo

log = logging.getLogger("agent.analysis")

#: Every scaffold's model id starts with this.
SCAFFOLD_ID_PREFIX = "SCAFFOLD-random-weights/"
#: Marker file a scaffold directory holds (written before any weight file).
SCAFFOLD_MARKER = "SCAFFOLD.json"
#: Custom ``config.json`` key a scaffold's config carries (a second, independent mark).
SCAFFOLD_CONFIG_KEY = "soundscape_scaffold"
#: The real model the packaged config comes from.
SOURCE_MODEL_ID = "MIT/ast-finetuned-audioset-10-10-0.4593"
#: The AST AudioSet variants: the real model each scaffold stands for, its patch strides (the
#: only architectural difference: the 16-16 config is the 10-10 config with both strides set to
#: 16, :func:`variant_config`), its patch grid on a 1024-frame × 128-bin fbank
#: (``(128 - 16) // stride + 1`` × ``(1024 - 16) // stride + 1``) and its published AudioSet
#: mAP: the figure in each hub id, from the AST authors' list of their AudioSet checkpoints
#: (github.com/YuanGongND/ast, README, "Pretrained Models": ``audioset_10_10_0.4593.pth``,
#: "10 tstride, 10 fstride, with Weight Averaging (0.459 mAP)"; ``audioset_16_16_0.4422.pth``,
#: "16 tstride, 16 fstride, without Weight Averaging (0.442 mAP)"); Gong, Chung and Glass,
#: "AST: Audio Spectrogram Transformer", Interspeech 2021 (arXiv:2104.01778).
AST_VARIANTS: dict[str, dict[str, Any]] = {
    "10-10": {"model_id": "MIT/ast-finetuned-audioset-10-10-0.4593", "frequency_stride": 10, "time_stride": 10,
              "stride": 10, "patch_grid": (12, 101), "patches": 1212, "audioset_map": 0.4593,
              "audioset_map_source": "YuanGongND/ast README, Pretrained Models: audioset_10_10_0.4593.pth (0.459 mAP, "
                                     "with weight averaging); Gong et al., Interspeech 2021"},
    "16-16": {"model_id": "MIT/ast-finetuned-audioset-16-16-0.442", "frequency_stride": 16, "time_stride": 16,
              "stride": 16, "patch_grid": (8, 64), "patches": 512, "audioset_map": 0.442,
              "audioset_map_source": "YuanGongND/ast README, Pretrained Models: audioset_16_16_0.4422.pth (0.442 mAP, "
                                     "without weight averaging); Gong et al., Interspeech 2021"},
}
#: ``config.json`` key of a derived variant's scaffold: what was derived, from what.
DERIVED_CONFIG_KEY = "soundscape_derived"
DEFAULT_VARIANT = "10-10"
#: Architecture overrides of ``scaffold(tiny=True)``; labels, mel bins, frames, patches and
#: strides stay those of the real model, so features and outputs have the real shapes.
TINY_OVERRIDES: dict[str, int] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
#: File name endings :func:`model_hash` covers.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx_data", ".onnx.data")
HASHED_SUFFIXES = WEIGHT_SUFFIXES + (".json",)
#: Seconds :func:`resolve_model` waits for the hub to answer before calling it unreachable.
DEFAULT_PROBE_TIMEOUT_S = 8.0

_BLOCK = 1 << 20  # 1 MiB
_DOWNLOAD_HINT = (
    f"on a connected machine run `huggingface-cli download {SOURCE_MODEL_ID} --local-dir DIR`, "
    "copy DIR to this device and set [classifier] model = \"DIR\"; for a test model with random "
    "weights (meaningless labels) run `soundscape-agent model scaffold --out DIR`"
)
# ASTFeatureExtractor's numpy path builds a Kaldi mel bank whose lowest filters are empty at
# 16 kHz / 512-point FFT / 128 bins; transformers warns about it on every construction. The
# original AST (torchaudio Kaldi fbank) has the same empty filters, so the warning is noise.
#: transformers' warning for the AST feature extractor's empty top mel filters (harmless).
MEL_WARNING = "At least one mel filter has all zero values"


def packaged_config_dir() -> Path:
    """The directory holding the packaged real AST AudioSet ``config.json`` and
    ``preprocessor_config.json`` (``agent/data/ast-audioset``; no weights).

    Returns:
        an existing directory (the package is installed as files, not zipped).
    """
    return Path(__file__).resolve().parent.parent / "data" / "ast-audioset"


def load_feature_extractor(model_dir: Path) -> Any:
    """Load transformers' ``ASTFeatureExtractor`` of a model directory (its
    ``preprocessor_config.json``). Needs the ``torch`` extra; the classifiers do not use it
    (they use the numpy :class:`~agent.analysis.features.ASTFeatures`, proven equal to it).

    Args:
        model_dir: a local model directory.

    Returns:
        ``transformers.ASTFeatureExtractor``.

    Raises:
        OSError / ValueError from transformers when the file is missing or invalid (callers
        turn them into :class:`ModelError`).
    """
    from transformers import ASTFeatureExtractor

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MEL_WARNING, category=UserWarning)
        return ASTFeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)


# --------------------------------------------------------------------------------------------
# hashing


#: JSON files in a model directory that describe an export rather than the model (dates,
#: timings): never part of the hash, so two identical exports hash the same.
UNHASHED_FILES = frozenset({"manifest.json"})


def _model_files(model_dir: Path, weights: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(model_dir, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or not name.endswith(HASHED_SUFFIXES) or name in UNHASHED_FILES:
                continue
            if weights is not None and name.endswith(WEIGHT_SUFFIXES) and not any(
                    fnmatch.fnmatchcase(name, pattern) for pattern in weights):
                continue
            path = Path(root, name)
            if path.is_file():
                files.append((path.relative_to(model_dir).as_posix(), path))
    files.sort(key=lambda item: item[0].encode("utf-8"))
    return files


def model_hash(model_dir: Path, weights: Sequence[str] | None = None) -> str:
    """sha256 fingerprint of a model directory's weight and config files.

    What is hashed: every regular file (symlinks followed, as in a Hugging Face cache
    snapshot) under ``model_dir``, recursively, whose name ends with one of
    :data:`HASHED_SUFFIXES` (``.safetensors .bin .onnx .onnx_data .onnx.data .json``), skipping
    names and directories that start with ``.`` (e.g. ``huggingface-cli``'s ``.cache``).
    Files are taken in the byte order of their relative POSIX paths (UTF-8); for each one the
    digest is fed ``len(path)`` (8 bytes big-endian), the path, ``len(content)`` (8 bytes
    big-endian) and the content, read in 1 MiB blocks. Length prefixes make the encoding
    unambiguous. So the hash changes when any weight or config byte changes, or a model file
    is added, removed or renamed; README files, ``manifest.json`` (an export's record, with
    its date) and the like do not count.

    Args:
        model_dir: a local directory.
        weights: glob patterns (``fnmatch``) of the weight files to include, e.g.
            ``("model_quantized.onnx",)`` for the onnx backend or ``("*.safetensors", "*.bin")``
            for torch, so that results from the fp32 and the int8 file of one export directory
            carry different hashes; ``None`` includes every weight file.

    Returns:
        64 lowercase hex digits.

    Raises:
        ModelError: ``model_dir`` is not a directory or a file cannot be read.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist", "pass an existing model directory")
    try:
        return hash_files(_model_files(model_dir, weights))[1]
    except OSError as e:
        raise ModelError(f"cannot read model file {e.filename}: {e.strerror}", "check its permissions") from None


# --------------------------------------------------------------------------------------------
# resolution


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model located on local disk, with its provenance.

    Attributes:
        local_dir: absolute path of the directory to ``from_pretrained``.
        model_id: the id recorded with every result: ``SCAFFOLD-random-weights/...`` for a
            scaffold; else the hub id it was resolved from; else the directory's config
            ``_name_or_path`` (e.g. a ``huggingface-cli download --local-dir`` copy of the real
            model keeps ``MIT/ast-finetuned-audioset-10-10-0.4593``); else the directory path.
        model_hash: :func:`model_hash` of ``local_dir``.
        is_scaffold: True for a random-weight scaffold (marker file or config key present).
        source: ``directory``, ``hf-cache`` or ``hf-download``.
    """

    local_dir: Path
    model_id: str
    model_hash: str
    is_scaffold: bool
    source: str

    def info(self, backend: str) -> ModelInfo:
        """The :class:`~agent.records.ModelInfo` stored with results of ``backend``."""
        return ModelInfo(model_id=self.model_id, model_hash=self.model_hash, backend=backend,
                         is_scaffold=self.is_scaffold)


def read_json(path: Path) -> dict[str, Any]:
    """Read a model directory's JSON file (``config.json``, ``preprocessor_config.json``).

    Args:
        path: the file.

    Returns:
        the JSON object as a dict.

    Raises:
        ModelError: the file cannot be read, is not valid JSON, or is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path}: {e}", "restore the file from the original model") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object", "restore the file from the original model")
    return data


def _has_weights(model_dir: Path) -> bool:
    return any(rel.endswith(WEIGHT_SUFFIXES) for rel, _ in _model_files(model_dir))


def _from_directory(model_dir: Path, source: str, hub_id: str | None,
                    hash_weights: Sequence[str] | None = None) -> ResolvedModel:
    model_dir = model_dir.resolve()
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelError(
            f"model directory {model_dir} holds no config.json: not a transformers model directory",
            _DOWNLOAD_HINT,
        )
    config = read_json(config_path)
    if not _has_weights(model_dir):
        raise ModelError(
            f"model directory {model_dir} holds no weights (*.safetensors, *.bin or *.onnx)",
            _DOWNLOAD_HINT,
        )
    marker_path = model_dir / SCAFFOLD_MARKER
    marker = read_json(marker_path) if marker_path.is_file() else None
    name_or_path = str(config.get("_name_or_path") or "")
    is_scaffold = (
        marker is not None
        or bool(config.get(SCAFFOLD_CONFIG_KEY))
        or name_or_path.startswith(SCAFFOLD_ID_PREFIX)
    )
    if is_scaffold:
        mark = marker or config.get(SCAFFOLD_CONFIG_KEY) or {}
        model_id = str(mark.get("model_id", "")) if isinstance(mark, dict) else ""
        if not model_id.startswith(SCAFFOLD_ID_PREFIX):
            model_id = SCAFFOLD_ID_PREFIX + (model_id or model_dir.name)
    elif hub_id is not None:
        model_id = hub_id
    elif name_or_path:
        model_id = name_or_path
    else:
        model_id = str(model_dir)
    return ResolvedModel(local_dir=model_dir, model_id=model_id, model_hash=model_hash(model_dir, hash_weights),
                         is_scaffold=is_scaffold, source=source)


def _is_repo_id(ref: str) -> bool:
    # huggingface_hub.utils re-exports both without __all__ or "as": implicit to mypy --strict
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # type: ignore[attr-defined]

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def _cached_snapshot(ref: str, cache_dir: Path | None, required_files: Sequence[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(ref, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # LocalEntryNotFoundError and friends: not (fully) cached
        return None
    if (local / "config.json").is_file() and _has_weights(local) and all(
        (local / name).is_file() for name in required_files
    ):
        return local
    return None


def _probe_hub(ref: str, endpoint: str | None, timeout_s: float) -> tuple[Any | None, str]:
    """Ask the hub for the repo's file list, giving up after ``timeout_s`` in any case.

    The request runs in a daemon thread so a DNS lookup or a black-holed connection (which
    requests' own timeout does not bound) cannot hold the caller longer than ``timeout_s``.
    Returns (model info or None, reason it failed).
    """
    from huggingface_hub import HfApi

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            # requests' own timeout is longer than the join below, so the join alone decides
            # (no race between the two at the limit); the abandoned thread ends by itself.
            result["info"] = HfApi(endpoint=endpoint).model_info(ref, timeout=2 * timeout_s)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            result["error"] = e

    thread = threading.Thread(target=run, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        from urllib.parse import urlparse

        from huggingface_hub import constants

        host = urlparse(endpoint or constants.ENDPOINT).netloc or str(endpoint)
        return None, f"{host}: no answer within {timeout_s:g} s"
    if "info" in result:
        return result["info"], ""
    err = result.get("error")
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):
        raise ModelError(
            f"model {ref!r} is gated on the Hugging Face hub",
            "accept its terms on huggingface.co and set HF_TOKEN, or copy the model directory here",
        )
    if isinstance(err, RepositoryNotFoundError):
        raise ModelError(
            f"model {ref!r} is neither a local directory nor a model on the Hugging Face hub",
            f"check the spelling of [classifier] model; {_DOWNLOAD_HINT}",
        )
    log.debug("hub probe for %s failed: %r", ref, err)
    return None, _describe_network_error(err, endpoint)


def _describe_network_error(err: BaseException | None, endpoint: str | None) -> str:
    """A short, human reason for a failed hub request (no nested urllib3 reprs)."""
    from urllib.parse import urlparse

    import requests
    from huggingface_hub import constants

    host = urlparse(endpoint or constants.ENDPOINT).netloc or str(endpoint)
    text = repr(err)
    if "NameResolutionError" in text or "name resolution" in text.lower() or "Name or service not known" in text:
        return f"{host}: cannot resolve the host name"
    if isinstance(err, requests.Timeout):
        return f"{host}: timed out"
    if isinstance(err, requests.ConnectionError):
        return f"{host}: connection failed"
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"{host}: HTTP {status}"
    detail = str(err).strip().splitlines()[0][:120] if err is not None and str(err).strip() else ""
    return f"{host}: {type(err).__name__}{': ' + detail if detail else ''}"


def _allow_patterns(info: Any, extra_files: Sequence[str]) -> list[str]:
    """What to download: the JSON files, the PyTorch weights (safetensors, else .bin) unless
    an ONNX file is asked for (the onnx backend needs no PyTorch weights), and ``extra_files``."""
    names = [s.rfilename for s in (getattr(info, "siblings", None) or [])]
    patterns = ["*.json"]
    if not any(f.endswith(".onnx") for f in extra_files):
        if any(n.endswith(".safetensors") for n in names):
            patterns.append("*.safetensors")
        elif any(n.endswith(".bin") for n in names):
            patterns.append("*.bin")
    patterns.extend(extra_files)
    return patterns


def resolve_model(
    ref: str,
    *,
    allow_download: bool = True,
    required_files: Sequence[str] = (),
    extra_files: Sequence[str] = (),
    probe_timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    hash_weights: Sequence[str] | None = None,
) -> ResolvedModel:
    """Locate the model named by ``[classifier] model`` on local disk.

    Order: (1) an existing local directory is used as is; (2) a string that cannot be a hub
    id (``/abs``, ``./rel``, ``~/x``, ``a/b/c``) is a directory that does not exist → error;
    (3) a hub id (``owner/name``) is looked up in the local Hugging Face cache
    (``snapshot_download(local_files_only=True)``, the cache ``from_pretrained`` uses) and
    used if it holds a config, weights and every one of ``required_files``; (4) otherwise,
    unless downloads are disallowed or ``HF_HUB_OFFLINE`` is set, the hub is asked once for
    the repo's file list with a hard time limit of ``probe_timeout_s`` (the request runs in a
    daemon thread, so neither DNS nor a black-holed connection can stretch it), and if it
    answers, the config, the weights (safetensors, else ``.bin``) and ``required_files`` are
    downloaded into the cache (as long as the download takes; the PyTorch weights are skipped when
    ``required_files`` names an ``.onnx`` file). A requested model is never replaced by
    another one (in particular never by a scaffold). Imports neither torch nor transformers.

    Args:
        ref: a local directory or a hub id.
        allow_download: step (4) enabled (default True).
        required_files: files a cached snapshot must hold to be used, and that are
            downloaded, e.g. ``["model.onnx"]`` for the onnx backend.
        extra_files: further optional ``allow_patterns`` to download (``model.onnx_data``).
        probe_timeout_s: hard bound on the reachability check, s (default 8).
        cache_dir: Hugging Face cache (default: ``HF_HUB_CACHE``).
        endpoint: hub URL (default: ``HF_ENDPOINT`` / huggingface.co).
        hash_weights: weight-file patterns for :func:`model_hash` (the backend's own file).

    Returns:
        :class:`ResolvedModel`.

    Raises:
        ModelError: the directory does not exist or is not a model directory (no
            ``config.json`` or no weights); the hub id is not cached and the hub is
            unreachable, offline mode is on, or the repo does not exist / is gated; the
            download failed. The message names ``ref``; the hint says how to get a model.
    """
    path = Path(ref).expanduser()
    if path.is_dir():
        return _from_directory(path, "directory", None, hash_weights)
    if path.exists():
        raise ModelError(f"model path {ref} is not a directory", _DOWNLOAD_HINT)
    if not _is_repo_id(ref):
        raise ModelError(
            f"model directory {ref} does not exist",
            f"run `soundscape-agent model scaffold --out {ref}` for a test model with random weights "
            "(meaningless labels), or copy a real model directory there (on a connected machine: "
            f"`huggingface-cli download {SOURCE_MODEL_ID} --local-dir {ref}`)",
        )

    cached = _cached_snapshot(ref, cache_dir, required_files)
    if cached is not None:
        return _from_directory(cached, "hf-cache", ref, hash_weights)

    not_dir = f"; no local directory {ref} exists either" if "/" in ref else ""
    from huggingface_hub import constants

    if not allow_download or constants.HF_HUB_OFFLINE:
        why = "downloads are disabled" if not allow_download else "HF_HUB_OFFLINE is set"
        raise ModelError(f"model {ref!r} is not in the local Hugging Face cache and {why}{not_dir}",
                         _DOWNLOAD_HINT)

    started = time.monotonic()
    info, reason = _probe_hub(ref, endpoint, probe_timeout_s)
    if info is None:
        log.debug("hub probe for %s failed after %.2f s: %s", ref, time.monotonic() - started, reason)
        raise ModelError(
            f"model {ref!r} is not in the local Hugging Face cache and the hub is unreachable "
            f"({reason}){not_dir}",
            _DOWNLOAD_HINT,
        )

    from huggingface_hub import snapshot_download

    patterns = _allow_patterns(info, [*required_files, *extra_files])
    log.info("downloading %s from the Hugging Face hub (%s) into the local cache", ref, ", ".join(patterns))
    try:
        local = Path(snapshot_download(ref, allow_patterns=patterns, cache_dir=cache_dir, endpoint=endpoint))
    except Exception as e:  # noqa: BLE001 - any download failure becomes one ModelError
        raise ModelError(f"downloading model {ref!r} from the Hugging Face hub failed: {e}",
                         _DOWNLOAD_HINT) from e
    return _from_directory(local, "hf-download", ref, hash_weights)


# --------------------------------------------------------------------------------------------
# scaffold


@dataclass(frozen=True, slots=True)
class ScaffoldResult:
    """What :func:`scaffold` wrote.

    Attributes:
        model_dir: absolute path of the directory.
        model_id: ``SCAFFOLD-random-weights/ast-audioset-527`` (``-tiny`` for a tiny one).
        model_hash: :func:`model_hash` of the directory.
        tiny: the small architecture (see :data:`TINY_OVERRIDES`).
        onnx: ``model.onnx`` was exported too.
        n_parameters: number of weights of the PyTorch model.
        size_bytes: total size of the hashed model files, bytes.
    """

    model_dir: Path
    model_id: str
    model_hash: str
    tiny: bool
    onnx: bool
    n_parameters: int
    size_bytes: int


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir} exists and is not a directory", "choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / SCAFFOLD_MARKER).is_file():
            raise ModelError(
                f"refusing to write a scaffold into {out_dir}: it is not empty and holds no "
                f"{SCAFFOLD_MARKER} (it may be a real model)",
                "choose a new or empty directory for --out",
            )
        # an older scaffold: drop its model files so no stale weights (e.g. model.onnx) remain
        for _, path in _model_files(out_dir):
            path.unlink()
        (out_dir / SCAFFOLD_MARKER).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def variant_config(variant: str = DEFAULT_VARIANT) -> dict[str, Any]:
    """The ``config.json`` of an AST AudioSet variant, from the packaged real 10-10 config.

    ``10-10``: the packaged file as it is. ``16-16``: the same with ``frequency_stride`` and
    ``time_stride`` set to 16 and ``_name_or_path`` set to the 16-16 hub id — the only
    differences between the two real models' architectures (:data:`AST_VARIANTS`); the result
    also carries :data:`DERIVED_CONFIG_KEY`, which says so.

    Raises:
        ValueError: unknown ``variant``.
    """
    if variant not in AST_VARIANTS:
        raise ValueError(f"unknown AST variant {variant!r}: use one of {', '.join(AST_VARIANTS)}")
    path = packaged_config_dir() / "config.json"
    config = read_json(path)
    spec = AST_VARIANTS[variant]
    if variant == DEFAULT_VARIANT:
        return config
    changed = {"frequency_stride": [config["frequency_stride"], spec["frequency_stride"]],
               "time_stride": [config["time_stride"], spec["time_stride"]],
               "_name_or_path": [config.get("_name_or_path"), spec["model_id"]]}
    for key, (_, value) in changed.items():
        config[key] = value
    config[DERIVED_CONFIG_KEY] = {
        "variant": variant,
        "from": f"{SOURCE_MODEL_ID} config.json, packaged in agent/data/ast-audioset "
                f"(sha256 {sha256_file(path)})",
        "changed": changed,
        "why": f"{spec['model_id']} has the same architecture and labels but patch strides of "
               f"{spec['frequency_stride']}: {spec['patch_grid'][0]} x {spec['patch_grid'][1]} = {spec['patches']} "
               "patches of the same 1024 x 128 fbank (12 x 101 = 1212 with strides of 10)",
    }
    return config


def scaffold(out_dir: Path, tiny: bool = False, *, onnx: bool = False, seed: int = 0,
             variant: str = DEFAULT_VARIANT) -> ScaffoldResult:
    """Write an AST AudioSet model directory with RANDOM weights (a test model).

    The architecture and the 527 labels come from the packaged real config
    (``MIT/ast-finetuned-audioset-10-10-0.4593``: 12 layers, hidden 768, 12 heads,
    intermediate 3072, 128 mel bins, 1024 frames, 16×16 patches, strides 10);
    ``variant="16-16"`` starts from :func:`variant_config` instead: both patch strides 16 (512
    patches instead of 1212: the ``MIT/ast-finetuned-audioset-16-16-0.442`` architecture;
    :data:`AST_VARIANTS`), what was derived from what recorded in ``SCAFFOLD.json``
    (``derived_from``, ``derived``) and ``config.json`` (``soundscape_derived``); every scaffold's
    ``config.json`` names its variant (``soundscape_variant``) and its id says it for 16-16
    (``SCAFFOLD-random-weights/ast-16-16-audioset-527``; 10-10 keeps its earlier id). Like the
    10-10 scaffold it has no ``_name_or_path``: random weights never carry a real model's id.
    ``tiny=True`` keeps labels, mel bins, frames, patches and strides but uses
    :data:`TINY_OVERRIDES` (2 layers, hidden 64, 2 heads, intermediate 128). Weights are
    transformers' initialisation under ``torch.manual_seed(seed)`` (deterministic; the global
    RNG state is restored afterwards). Files written: ``SCAFFOLD.json`` (first, so a partly
    written directory is still marked), ``config.json`` (with the custom key
    ``soundscape_scaffold``), ``model.safetensors``, ``preprocessor_config.json`` (the packaged
    one) and, with ``onnx=True``, ``model.onnx`` exported by optimum
    (``ORTModelForAudioClassification.from_pretrained(out_dir, export=True)``) with its attention
    fused as ``model export`` does (:func:`agent.analysis.fusion.fuse_attention_file`; not
    verified: ``model export`` is the verified path).

    Its labels are meaningless: use it only to exercise the code path and measure speed.

    Args:
        out_dir: new or empty directory, or an earlier scaffold (its model files are replaced).
        tiny: small architecture for fast tests.
        onnx: also export ``model.onnx`` (needs the ``export`` extra: optimum-onnx).
        seed: torch seed for the random weights.
        variant: ``10-10`` or ``16-16`` (:data:`AST_VARIANTS`).

    Returns:
        :class:`ScaffoldResult`.

    Raises:
        ValueError: unknown ``variant``.
        ModelError: torch or transformers are not installed (the ``torch`` extra); ``out_dir``
            is a file, or a non-empty directory without ``SCAFFOLD.json`` (never overwrites
            what may be a real model); the ONNX export failed or optimum is not installed
            (the ``export`` extra).
    """
    if variant not in AST_VARIANTS:
        raise ValueError(f"unknown AST variant {variant!r}: use one of {', '.join(AST_VARIANTS)}")
    try:
        import torch
        from transformers import ASTConfig, ASTForAudioClassification
    except ImportError as e:
        raise ModelError(f"building a scaffold needs torch and transformers: {e}",
                         "the scaffold needs the torch extra: pip install 'soundscape-agent[torch]'") from e
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out_dir)

    src_dir = packaged_config_dir()
    config_dict = variant_config(variant)
    # a scaffold does not claim the real model's id (it has random weights): its id is its own
    for key in ("_name_or_path", "transformers_version", "architectures"):
        config_dict.pop(key, None)
    if tiny:
        config_dict.update(TINY_OVERRIDES)
    spec = AST_VARIANTS[variant]
    config_dict["soundscape_variant"] = variant
    n_labels = len(config_dict["id2label"])
    tag = "" if variant == DEFAULT_VARIANT else f"{variant}-"
    model_id = f"{SCAFFOLD_ID_PREFIX}ast-{tag}audioset-{n_labels}{'-tiny' if tiny else ''}"
    mark = {
        "scaffold": True,
        "random_weights": True,
        "tiny": tiny,
        "seed": seed,
        "model_id": model_id,
        "variant": variant,
        "stands_for": spec["model_id"],
        "source_config": f"{SOURCE_MODEL_ID} config.json (packaged in agent/data/ast-audioset)",
        "warning": "labels are meaningless: random weights, for tests and benchmarks only",
    }
    mark["patches"] = spec["patches"]
    if variant != DEFAULT_VARIANT:
        mark["derived_from"] = (f"{SOURCE_MODEL_ID} config.json with frequency_stride = time_stride = "
                                f"{spec['stride']} and _name_or_path = {spec['model_id']}: the only architectural "
                                f"difference of {spec['model_id']} ({spec['patch_grid'][0]} x "
                                f"{spec['patch_grid'][1]} = {spec['patches']} patches)")
        mark["derived"] = config_dict[DERIVED_CONFIG_KEY]
    (out_dir / SCAFFOLD_MARKER).write_text(json.dumps(mark, indent=2) + "\n", encoding="utf-8")

    config = ASTConfig(**config_dict)  # type: ignore[no-untyped-call]  # transformers: __init__ unannotated
    setattr(config, SCAFFOLD_CONFIG_KEY, mark)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ASTForAudioClassification(config)
    model.eval()  # type: ignore[no-untyped-call]  # transformers' override is unannotated
    model.save_pretrained(str(out_dir), safe_serialization=True)
    load_feature_extractor(src_dir).save_pretrained(str(out_dir))
    n_parameters = sum(p.numel() for p in model.parameters())
    del model

    if onnx:
        try:
            from optimum.onnxruntime import ORTModelForAudioClassification
        except ImportError as e:
            raise ModelError(f"cannot export ONNX: {e}", "pip install 'soundscape-agent[export]'") from e
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=MEL_WARNING, category=UserWarning)
                # optimum uses torch's legacy TorchScript exporter, which announces its deprecation
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                exported = ORTModelForAudioClassification.from_pretrained(str(out_dir), export=True)
            exported.save_pretrained(str(out_dir))
            del exported
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"ONNX export of {out_dir} failed: {type(e).__name__}: {e}",
                             "check that optimum-onnx and onnx are installed") from e
        from agent.analysis.fusion import fuse_attention_file

        fuse_attention_file(out_dir / "model.onnx")  # as `model export` does (agent.analysis.fusion)

    size = sum(p.stat().st_size for _, p in _model_files(out_dir))
    digest = model_hash(out_dir)
    log.warning("wrote SCAFFOLD model %s to %s (%d parameters, %.1f MB): random weights, labels are "
                "meaningless (test use only)", model_id, out_dir, n_parameters, size / 1e6)
    return ScaffoldResult(model_dir=out_dir, model_id=model_id, model_hash=digest, tiny=tiny, onnx=onnx,
                          n_parameters=n_parameters, size_bytes=size)


__all__ = [
    "AST_VARIANTS", "DEFAULT_PROBE_TIMEOUT_S", "DEFAULT_VARIANT", "DERIVED_CONFIG_KEY", "HASHED_SUFFIXES",
    "SCAFFOLD_CONFIG_KEY", "SCAFFOLD_ID_PREFIX", "SCAFFOLD_MARKER", "SOURCE_MODEL_ID", "TINY_OVERRIDES",
    "WEIGHT_SUFFIXES", "ResolvedModel", "ScaffoldResult", "load_feature_extractor", "model_hash",
    "packaged_config_dir", "read_json", "resolve_model", "scaffold", "variant_config",
]
