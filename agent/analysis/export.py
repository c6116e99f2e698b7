"""Export an AST model to ONNX, quantise it to int8, verify both against PyTorch, write a manifest.

``soundscape-agent model export --model ID_OR_DIR --out DIR [--quantize arm64|avx2|avx512_vnni|none]``
calls :func:`export_model`, which

1. resolves the source like the classifier does (:func:`agent.analysis.models.resolve_model`:
   a local directory or a Hugging Face hub id, never a substitute) and needs its PyTorch
   weights;
2. exports it with optimum (``optimum.exporters.onnx.main_export``, task
   ``audio-classification``, optimum's default opset for AST) to ``model.onnx``, with
   ``config.json`` and ``preprocessor_config.json``; a scaffold's ``SCAFFOLD.json`` is copied,
   so an exported test model stays marked (its id still starts with
   ``SCAFFOLD-random-weights/``); ``config.json`` gets ``_name_or_path`` = the source's model
   id, so results of the exported model carry the source's id (e.g.
   ``MIT/ast-finetuned-audioset-10-10-0.4593``), not a cache path;
3. unless ``fuse_attention=False`` (CLI ``--no-fuse-attention``), replaces each layer's
   self-attention (MatMul, Softmax, MatMul and their reshapes) by onnxruntime's
   ``com.microsoft.MultiHeadAttention``, which runs FlashAttention on the CPU instead of
   materialising the per-layer attention score tensors (:mod:`agent.analysis.fusion`; memory
   figures: docs/performance.md#attention-fusion-at-export); the count of fused blocks is in
   the manifest (``graph_rewrites``) and the fused graph is verified below like any other;
4. unless ``quantize="none"``, quantises it with onnxruntime **dynamic** int8 quantisation
   through optimum (``ORTQuantizer`` + ``AutoQuantizationConfig.<target>(is_static=False,
   per_channel=True)``) to ``model_quantized.onnx`` (+ optimum's ``ort_config.json``). The
   weights of every MatMul/Gemm and of the patch-embedding Conv become int8 (MatMulInteger,
   ConvInteger); activations are quantised to uint8 at run time (DynamicQuantizeLinear), so no
   calibration data is needed;
5. verifies the ONNX model(s) against the PyTorch model on every :data:`DEFAULT_WINDOW_S`
   window of the bundled real recordings (``data/recordings``; 9 files → 10 windows), each at
   its native rate through the public classifier API (:func:`agent.analysis.classifier.load_classifier`,
   which resamples to 16 kHz): max |Δ sigmoid score| and top-k overlap (see
   :func:`compare_scores`) against :data:`TOLERANCES`, also int8 against fp32 ONNX;
6. writes ``manifest.json`` (:data:`MANIFEST_NAME`): provenance, the architecture (AST
   variant 10-10 or 16-16 by its patch strides, patch grid, tokens), sha256 and size of every
   file, quantisation settings and the operators it quantised, label count, library versions,
   opset, date, the verification results and the tolerances they were held to.

Everything is built in a hidden staging directory beside ``out_dir`` and moved into place at
the end, so ``out_dir`` never holds a half-written export. **When a check fails**, the export
is still moved into ``out_dir`` *with* its manifest — ``"verification": {"passed": false, ...}``
and every measurement, for diagnosis — and :class:`ExportVerificationError` (a
:class:`~agent.errors.ModelError`: the CLI exits 66) names each failed metric, its value and
its tolerance. Deploy an export only if its manifest says ``verification.passed`` is true.

Quantisation targets (``AutoQuantizationConfig`` presets, optimum
``optimum/onnxruntime/configuration.py``): ``arm64`` and ``avx512_vnni`` are the same scheme
(uint8 activations, int8 symmetric weights, ``reduce_range`` off); ``avx2`` is uint8/uint8.
The default is ``arm64``: the Raspberry Pi 4 (Cortex-A72, aarch64) is the target, and optimum
notes u8/s8 is faster than u8/u8 on lower-end ARM64. An arm64-quantised model runs on x86 too
(it is standard ONNX: MatMulInteger/ConvInteger); but on an x86 CPU *without* VNNI
onnxruntime's u8s8 kernels can saturate (onnxruntime docs, "Quantize ONNX models", FAQ on
``reduce_range``), so verification on such a host can show errors the Pi would not have: the
manifest records the host and whether it has VNNI. Per-channel weight scales are on by
default (they gave the smaller error on the full-size scaffold).

Tolerances (:data:`TOLERANCES`): fp32 ONNX vs PyTorch must agree to 1e-4 in every score with
identical top-5 sets; int8 is held to max |Δ| <= 0.05 and a top-5 overlap >= 0.6 in every
window (at most 2 of the 5 labels replaced).

What the presets, per-channel scales and tolerances rest on (the errors measured on the
full-size and tiny scaffolds, the headroom the limits leave): docs/classification.md#exporting-and-quantising.

torch, transformers, optimum, onnx and onnxruntime are imported inside the functions that need
them; importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.analysis.hashing import sha256_file
from agent.analysis.models import MEL_WARNING, ResolvedModel
from agent.errors import InputError, ModelError
from agent.filesource import BUNDLED_RECORDINGS

log = logging.getLogger("agent.analysis")

#: ``--quantize`` choices: optimum ``AutoQuantizationConfig`` presets, or ``none`` (fp32 only).
QUANTIZE_CHOICES: tuple[str, ...] = ("arm64", "avx2", "avx512_vnni", "none")
#: Default target: the Raspberry Pi 4 (aarch64, Cortex-A72). See the module docstring.
DEFAULT_QUANTIZE = "arm64"
#: The manifest's file name inside the export directory.
MANIFEST_NAME = "manifest.json"
#: ``manifest["format"]``: identifies a manifest written by this module (and its layout version).
MANIFEST_FORMAT = "soundscape-agent-onnx-export/1"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
#: Verification windows: length, s, and the shortest tail window kept, s.
DEFAULT_WINDOW_S = 10.0
MIN_TAIL_S = 1.0
#: k of the top-k overlap.
TOP_K = 5
#: The bundled real field recordings (scikit-maad's data, BSD-3-Clause).
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------------------------
# tolerances and score comparison


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Limits one comparison of sigmoid scores must meet in every verification window.

    Attributes:
        max_abs_diff: largest allowed |candidate − reference| of any label's sigmoid score in
            any window (scores are in [0, 1]; unitless).
        min_topk_overlap: smallest allowed |top-k(candidate) ∩ top-k(reference)| / k in any
            window, in [0, 1].
        top_k: k.
    """

    max_abs_diff: float
    min_topk_overlap: float
    top_k: int = TOP_K


@dataclass(frozen=True, slots=True)
class Tolerances:
    """The limits :func:`export_model` verifies against (how they were chosen and what was
    measured: docs/classification.md#exporting-and-quantising).

    Attributes:
        fp32: ``model.onnx`` vs PyTorch.
        int8: ``model_quantized.onnx`` vs PyTorch, and vs ``model.onnx``.
    """

    fp32: Tolerance = Tolerance(max_abs_diff=1e-4, min_topk_overlap=1.0)
    int8: Tolerance = Tolerance(max_abs_diff=0.05, min_topk_overlap=0.6)


#: The default tolerances.
TOLERANCES = Tolerances()


def topk_overlap(
    reference: npt.NDArray[np.floating[Any]], candidate: npt.NDArray[np.floating[Any]], k: int = TOP_K
) -> npt.NDArray[np.float64]:
    """Per-window share of the reference's top-k labels that the candidate's top-k also holds.

    Args:
        reference, candidate: scores, shape (n_windows, n_labels), any float dtype.
        k: 1 <= k <= n_labels.

    Returns:
        float64, shape (n_windows,): |top-k(reference) ∩ top-k(candidate)| / k, in [0, 1].
        Top-k is by descending score, ties broken by lower label index (as
        :func:`agent.analysis.classifier.top_k_detections`); sets, so order within the top-k
        does not matter.

    Raises:
        ValueError: shapes differ or are not 2-D, or k is out of range.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"score arrays must have the same 2-D shape, got {ref.shape} and {cand.shape}")
    if not 1 <= k <= ref.shape[1]:
        raise ValueError(f"k must be in 1..{ref.shape[1]}, got {k}")
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    top_cand = np.argsort(-cand, axis=1, kind="stable")[:, :k]
    return np.array([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_ref, top_cand, strict=True)])


@dataclass(frozen=True, slots=True)
class VerificationCheck:
    """One verification comparison over all windows.

    Attributes:
        name: e.g. ``onnx-int8 vs torch``.
        reference, candidate: what was compared (``torch``, ``model.onnx``, ``model_quantized.onnx``).
        max_abs_diff: max over windows and labels of |Δ sigmoid score|.
        mean_abs_diff: mean over windows and labels of |Δ sigmoid score| (information only).
        min_topk_overlap: min over windows of :func:`topk_overlap`.
        mean_topk_overlap: mean over windows (information only).
        worst_window: index (into the manifest's ``windows``) of the largest |Δ|.
        tolerance: the limits applied.
        passed: both limits met.
        failures: one sentence per limit not met, naming metric, value and tolerance.
    """

    name: str
    reference: str
    candidate: str
    max_abs_diff: float
    mean_abs_diff: float
    min_topk_overlap: float
    mean_topk_overlap: float
    worst_window: int
    tolerance: Tolerance
    passed: bool
    failures: tuple[str, ...] = ()


def compare_scores(name: str, reference_name: str, reference: npt.NDArray[np.floating[Any]], candidate_name: str,
                   candidate: npt.NDArray[np.floating[Any]], tolerance: Tolerance) -> VerificationCheck:
    """Compare two models' sigmoid scores on the same windows against ``tolerance``.

    Args:
        name: label of the check (e.g. ``onnx-fp32 vs torch``).
        reference_name, candidate_name: what produced the scores.
        reference, candidate: shape (n_windows, n_labels), sigmoid scores in [0, 1].
        tolerance: the limits.

    Returns:
        :class:`VerificationCheck`; ``passed`` is False (and ``failures`` says why) when the max
        |Δ| exceeds ``tolerance.max_abs_diff``, the min top-k overlap is below
        ``tolerance.min_topk_overlap``, or a score is not finite.

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    overlap = topk_overlap(ref, cand, tolerance.top_k)
    diff = np.abs(cand - ref)
    finite = bool(np.all(np.isfinite(diff)))
    per_window = np.where(np.isfinite(diff), diff, np.inf).max(axis=1)
    max_abs = float(per_window.max())
    failures = []
    if not finite:
        failures.append(f"{name}: non-finite scores")
    elif max_abs > tolerance.max_abs_diff:
        failures.append(f"{name}: max abs score difference {max_abs:.3g} > tolerance {tolerance.max_abs_diff:g}")
    min_overlap = float(overlap.min())
    if min_overlap < tolerance.min_topk_overlap:
        failures.append(f"{name}: min top-{tolerance.top_k} overlap {min_overlap:.2f} < tolerance "
                        f"{tolerance.min_topk_overlap:g}")
    return VerificationCheck(
        name=name, reference=reference_name, candidate=candidate_name, max_abs_diff=max_abs,
        mean_abs_diff=float(diff.mean()) if finite else float("inf"), min_topk_overlap=min_overlap,
        mean_topk_overlap=float(overlap.mean()), worst_window=int(per_window.argmax()),
        tolerance=tolerance, passed=not failures, failures=tuple(failures),
    )


# --------------------------------------------------------------------------------------------
# verification audio


@dataclass(frozen=True, slots=True)
class AudioWindow:
    """One verification window of a real recording, at the file's native rate.

    Attributes:
        file: file name (no directory).
        start_s: offset in the file, s.
        samples: mono float32, shape (n,), full scale ±1.0.
        sample_rate: Hz.
    """

    file: str
    start_s: float
    samples: npt.NDArray[np.float32] = field(repr=False)
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length, s."""
        return len(self.samples) / self.sample_rate


def verification_windows(recordings: Path = BUNDLED_RECORDINGS, window_s: float = DEFAULT_WINDOW_S,
                         min_tail_s: float = MIN_TAIL_S) -> list[AudioWindow]:
    """Cut every WAV/FLAC file in ``recordings`` into consecutive windows of ``window_s``.

    A file's last, shorter window is kept when it lasts at least ``min_tail_s``. Multi-channel
    files are averaged to mono. The bundled recordings give 10 windows (8 files of 10 s at
    22 kHz, one of 19.5 s at 44.1 kHz → 10 s + 9.54 s).

    Args:
        recordings: a directory (its ``*.wav``/``*.flac``, sorted by name) or one file.
        window_s: window length, s (> 0).
        min_tail_s: shortest tail window kept, s.

    Returns:
        the windows, in file then time order.

    Raises:
        InputError: ``recordings`` does not exist, holds no audio file, a file cannot be
            read, or no window results.
    """
    import soundfile as sf

    from agent.filesource import expand_paths

    recordings = Path(recordings)
    if not recordings.exists():
        raise InputError(f"verification recordings {recordings} do not exist",
                         "pass --recordings DIR with real WAV/FLAC recordings")
    try:
        files = expand_paths(str(recordings))
    except InputError:
        raise InputError(f"no WAV/FLAC file in {recordings}", "pass --recordings DIR with real recordings") from None
    windows: list[AudioWindow] = []
    for path in files:
        try:
            x, rate = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:  # noqa: BLE001 - libsndfile errors are RuntimeError/LibsndfileError
            raise InputError(f"cannot read recording {path}: {e}", "check the file") from e
        mono = np.ascontiguousarray(x.mean(axis=1), dtype=np.float32)
        step = int(round(window_s * rate))
        for start in range(0, len(mono), step):
            chunk = mono[start:start + step]
            if len(chunk) >= min_tail_s * rate:
                windows.append(AudioWindow(file=path.name, start_s=start / rate, samples=chunk,
                                           sample_rate=int(rate)))
    if not windows:
        raise InputError(f"the recordings in {recordings} are all shorter than {min_tail_s} s",
                         "pass longer recordings")
    return windows


# --------------------------------------------------------------------------------------------
# export steps


def quantization_config(target: str, per_channel: bool = True) -> Any:
    """optimum's dynamic int8 quantisation preset for ``target``.

    ``AutoQuantizationConfig.<target>(is_static=False, per_channel=per_channel)``
    (optimum-onnx, ``optimum/onnxruntime/configuration.py``): QOperator format, IntegerOps
    mode, operators optimum quantises by default for dynamic quantisation (Conv, MatMul,
    Attention, LSTM, Gather, Transpose, EmbedLayerNormalization — for AST: the patch Conv,
    every MatMul and the classifier Gemm).

    Args:
        target: ``arm64``, ``avx2`` or ``avx512_vnni``.
        per_channel: per-output-channel weight scales (True) or one per tensor.

    Returns:
        ``optimum.onnxruntime.configuration.QuantizationConfig``.

    Raises:
        ModelError: unknown target, or optimum-onnx is not installed.
    """
    if target not in QUANTIZE_CHOICES or target == "none":
        raise ModelError(f"unknown quantisation target {target!r}",
                         f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    try:
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError as e:
        raise ModelError(f"cannot quantise: {e}", "pip install 'soundscape-agent[export]'") from e
    return getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=per_channel)


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' known noise (restored afterwards) unless debug logging is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MEL_WARNING, category=UserWarning)
            # optimum uses torch's legacy TorchScript exporter, which announces its deprecation
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_onnx(model_dir: Path, staging: Path, opset: int | None) -> None:
    """optimum ``main_export`` of ``model_dir`` (task audio-classification) into ``staging``."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise ModelError(f"cannot export ONNX: {e}", "pip install 'soundscape-agent[export]'") from e
    try:
        with _quiet_exporters():
            # do_validation=False: optimum's own check runs random inputs once more; the
            # verification below compares real recordings through the classifier instead.
            main_export(str(model_dir), output=staging, task="audio-classification", opset=opset,
                        device="cpu", do_validation=False, local_files_only=True, library_name="transformers")
    except Exception as e:  # noqa: BLE001 - any exporter failure becomes one ModelError
        raise ModelError(f"ONNX export of {model_dir} failed: {type(e).__name__}: {e}",
                         "check that the model is an AST audio-classification model and that optimum-onnx "
                         "and onnx are installed") from e
    if not (staging / FP32_FILE).is_file():
        raise ModelError(f"ONNX export of {model_dir} wrote no {FP32_FILE}", "report this as a bug")


def _quantize(staging: Path, target: str, per_channel: bool) -> Any:
    """Dynamic int8 quantisation of ``staging/model.onnx`` into ``staging/model_quantized.onnx``."""
    qconfig = quantization_config(target, per_channel)
    from optimum.onnxruntime import ORTQuantizer

    try:
        with _quiet_exporters():
            quantizer = ORTQuantizer.from_pretrained(str(staging), file_name=FP32_FILE)
            quantizer.quantize(qconfig, save_dir=staging)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"int8 quantisation ({target}) failed: {type(e).__name__}: {e}",
                         "try --quantize none, or another target") from e
    if not (staging / INT8_FILE).is_file():
        raise ModelError(f"quantisation wrote no {INT8_FILE}", "report this as a bug")
    return qconfig


def _fuse_attention(staging: Path) -> dict[str, Any]:
    """Fuse ``staging/model.onnx``'s attention blocks in place; the manifest's record of it."""
    from agent.analysis.fusion import fuse_attention_file

    fusion = fuse_attention_file(staging / FP32_FILE)
    if fusion.fused:
        log.info("fused %d attention blocks into MultiHeadAttention (%d nodes -> %d)", fusion.fused,
                 fusion.nodes_before, fusion.nodes_after)
    else:
        log.warning("no attention block matched the fusion pattern; the export keeps the unfused graph "
                    "(more memory per inference)")
    return {"enabled": True, **fusion.as_dict()}


def _op_counts(path: Path) -> tuple[dict[str, int], int]:
    """(node count per op type, default-domain opset) of an ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    return dict(sorted(counts.items())), opset


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("soundscape-agent", "onnxruntime", "optimum", "optimum-onnx", "onnx", "transformers",
                 "torch", "numpy", "soxr"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    out["python"] = platform.python_version()
    return out


def _host() -> dict[str, Any]:
    """The export host: machine, CPU model and (x86) VNNI support, which decides whether
    onnxruntime's u8s8 kernels can saturate here (see the module docstring)."""
    machine = platform.machine()
    cpu: str | None = None
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and cpu is None:
                cpu = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "i386")
    return {
        "machine": machine,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "x86_vnni": bool(flags & {"avx512_vnni", "avx_vnni"}) if x86 else None,
    }


def _source_revision(resolved: ResolvedModel) -> str:
    """Hub commit hash for a hub model (its cache snapshot directory's name), else the
    directory's :func:`~agent.analysis.models.model_hash`."""
    if resolved.source in ("hf-cache", "hf-download") and _HEX40.match(resolved.local_dir.name):
        return resolved.local_dir.name
    return resolved.model_hash


# --------------------------------------------------------------------------------------------
# output directory


def _check_out_dir(out_dir: Path, source_dir: Path) -> None:
    if out_dir == source_dir or source_dir in out_dir.parents or out_dir in source_dir.parents:
        raise ModelError(f"--out {out_dir} must not be, or contain, or lie inside the source model {source_dir}",
                         "choose a new directory for the export")
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir} exists and is not a directory", "choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / MANIFEST_NAME
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != MANIFEST_FORMAT:
            raise ModelError(
                f"refusing to export into {out_dir}: it is not empty and is not an earlier export "
                f"(no {MANIFEST_NAME} of format {MANIFEST_FORMAT})",
                "choose a new or empty directory for --out",
            )


def _install(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``, replacing an earlier export (checked before)."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# verification


def _score_all(classifier: Any, windows: Sequence[AudioWindow]) -> tuple[npt.NDArray[np.float64], float]:
    """(scores, shape (n_windows, n_labels) float64; median wall time per window, s — the
    median, so the first call's warm-up does not count)."""
    rows, seconds = [], []
    for w in windows:
        started = time.perf_counter()
        rows.append(classifier.scores(w.samples, w.sample_rate))
        seconds.append(time.perf_counter() - started)
    return np.stack(rows), float(np.median(seconds))


def _verify(source_dir: Path, staging: Path, candidates: Sequence[tuple[str, str, Tolerance]],
            windows: Sequence[AudioWindow], threads: int) -> dict[str, Any]:
    """Scores of PyTorch and each ONNX file on ``windows``; the checks; model ids and latencies."""
    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig, TorchClassifierConfig

    with _quiet_exporters():
        torch_clf = load_classifier(TorchClassifierConfig(model=str(source_dir), threads=threads))
    ref, ref_latency = _score_all(torch_clf, windows)
    n_labels = len(torch_clf.labels)
    del torch_clf
    latency = {"torch": ref_latency}
    scores: dict[str, npt.NDArray[np.float64]] = {}
    loaded: dict[str, Any] = {}
    checks: list[VerificationCheck] = []
    for kind, file_name, tolerance in candidates:
        clf = load_classifier(OnnxClassifierConfig(model=str(staging), file_name=file_name, threads=threads))
        if len(clf.labels) != n_labels:
            raise ModelError(f"{file_name} has {len(clf.labels)} labels, the PyTorch model {n_labels}",
                             "report this as a bug")
        scores[file_name], latency[file_name] = _score_all(clf, windows)
        loaded[file_name] = clf.info
        checks.append(compare_scores(f"onnx-{kind} vs torch", "torch", ref, file_name, scores[file_name],
                                     tolerance))
        del clf
    if FP32_FILE in scores and INT8_FILE in scores:
        checks.append(compare_scores("onnx-int8 vs onnx-fp32", FP32_FILE, scores[FP32_FILE], INT8_FILE,
                                     scores[INT8_FILE], candidates[-1][2]))
    return {"checks": checks, "latency": latency, "infos": loaded, "n_labels": n_labels}


# --------------------------------------------------------------------------------------------
# the export


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        out_dir: absolute path of the export directory.
        manifest_path: ``out_dir / manifest.json``.
        manifest: the manifest's content (as written).
        checks: the verification comparisons.
        passed: every check passed.
        model_id: the id the exported model is loaded with (a scaffold's starts with
            ``SCAFFOLD-random-weights/``).
        is_scaffold: the source (and so the export) is a random-weight test model.
        seconds: wall time of the whole export, s.
    """

    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    checks: tuple[VerificationCheck, ...]
    passed: bool
    model_id: str
    is_scaffold: bool
    seconds: float


class ExportVerificationError(ModelError):
    """The exported model's scores do not match the PyTorch model's within the tolerances.

    The export and its manifest (``verification.passed = false``) are in ``result.out_dir``.
    Exit status 66, as every :class:`~agent.errors.ModelError`.

    Attributes:
        result: the :class:`ExportResult`.
    """

    def __init__(self, message: str, hint: str, result: ExportResult) -> None:
        super().__init__(message, hint)
        self.result = result


def export_model(
    model: str,
    out_dir: Path,
    *,
    quantize: str = DEFAULT_QUANTIZE,
    per_channel: bool = True,
    recordings: Path = BUNDLED_RECORDINGS,
    window_s: float = DEFAULT_WINDOW_S,
    tolerances: Tolerances = TOLERANCES,
    threads: int | None = None,
    opset: int | None = None,
    fuse_attention: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX (and int8), verify it on real recordings, write a manifest.

    See the module docstring for the steps, the quantisation presets and the tolerances.

    Args:
        model: a local model directory or a Hugging Face hub id (resolved as the classifier
            does; a hub id must be in the local cache or downloadable). Needs PyTorch weights.
        out_dir: a new or empty directory, or an earlier export (holding this module's
            ``manifest.json``), which is replaced. Must not be or contain the source.
        quantize: ``arm64`` (default), ``avx2``, ``avx512_vnni``, or ``none`` (fp32 only).
        per_channel: per-channel int8 weight scales (default True).
        recordings: real recordings to verify on (default: the bundled ``data/recordings``).
        window_s: verification window length, s (default 10, AST's clip length).
        tolerances: the limits (default :data:`TOLERANCES`).
        threads: CPU threads of the verification models (default: all cores).
        opset: ONNX opset (default: optimum's for AST).
        fuse_attention: replace the attention blocks by ``com.microsoft.MultiHeadAttention``
            before quantising (default True; see :mod:`agent.analysis.fusion`).

    Returns:
        :class:`ExportResult` (every check passed).

    Raises:
        ExportVerificationError: a check failed; the message lists each failed metric, value
            and tolerance; the export and its manifest (``verification.passed = false``) are in
            ``out_dir``.
        ModelError: the source cannot be resolved or has no PyTorch weights, ``out_dir`` is
            unusable, ``quantize`` is unknown, optimum/onnx is missing, export or
            quantisation failed. Nothing is left in ``out_dir`` then.
        InputError: the verification recordings are missing or unreadable.
    """
    from agent.analysis.models import SCAFFOLD_ID_PREFIX, SCAFFOLD_MARKER, resolve_model

    started = time.perf_counter()
    if quantize not in QUANTIZE_CHOICES:
        raise ModelError(f"unknown quantisation target {quantize!r}", f"use one of: {', '.join(QUANTIZE_CHOICES)}")
    if window_s <= 0:
        raise ModelError(f"window length must be positive, got {window_s}", "pass a window length in seconds")
    resolved = resolve_model(model)
    source_dir = resolved.local_dir
    if not any(source_dir.glob("*.safetensors")) and not any(source_dir.glob("*.bin")):
        raise ModelError(f"model {model!r} ({source_dir}) holds no PyTorch weights (*.safetensors or *.bin)",
                         "export from the PyTorch model (a hub id or a directory with model.safetensors)")
    out_dir = Path(out_dir).expanduser().resolve()
    _check_out_dir(out_dir, source_dir)
    windows = verification_windows(recordings, window_s)  # before the slow export: fail early
    threads = threads or os.cpu_count() or 1

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        t0 = time.perf_counter()
        _export_onnx(source_dir, staging, opset)
        export_s = time.perf_counter() - t0
        rewrites = {"attention_fusion": _fuse_attention(staging) if fuse_attention else {"enabled": False}}
        qconfig = None
        quantize_s = None
        if quantize != "none":
            t0 = time.perf_counter()
            qconfig = _quantize(staging, quantize, per_channel)
            quantize_s = time.perf_counter() - t0
        # after quantisation: ORTQuantizer re-saves config.json
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["_name_or_path"] = resolved.model_id
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if not (staging / "preprocessor_config.json").is_file():
            shutil.copy2(source_dir / "preprocessor_config.json", staging / "preprocessor_config.json")
        if resolved.is_scaffold and (source_dir / SCAFFOLD_MARKER).is_file():
            shutil.copy2(source_dir / SCAFFOLD_MARKER, staging / SCAFFOLD_MARKER)

        candidates = [("fp32", FP32_FILE, tolerances.fp32)]
        if qconfig is not None:
            candidates.append(("int8", INT8_FILE, tolerances.int8))
        t0 = time.perf_counter()
        verification = _verify(source_dir, staging, candidates, windows, threads)
        verify_s = time.perf_counter() - t0
        infos = verification["infos"]
        exported_id = infos[FP32_FILE].model_id
        exported_scaffold = infos[FP32_FILE].is_scaffold
        if exported_scaffold != resolved.is_scaffold or (
                resolved.is_scaffold and not exported_id.startswith(SCAFFOLD_ID_PREFIX)):
            raise ModelError(f"the export of {resolved.model_id} loads as {exported_id!r} "
                             f"(scaffold: {exported_scaffold}); a scaffold must stay marked", "report this as a bug")
        checks: list[VerificationCheck] = verification["checks"]
        passed = all(c.passed for c in checks)

        manifest = _manifest(
            resolved=resolved, model=model, staging=staging, quantize=quantize, per_channel=per_channel,
            qconfig=qconfig, windows=windows, window_s=window_s, tolerances=tolerances, threads=threads,
            checks=checks, passed=passed, verification=verification, exported_id=exported_id, rewrites=rewrites,
            timings={"export_s": export_s, "quantize_s": quantize_s, "verify_s": verify_s},
        )
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        (staging / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
        _install(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    result = ExportResult(out_dir=out_dir, manifest_path=out_dir / MANIFEST_NAME, manifest=manifest,
                          checks=tuple(checks), passed=passed, model_id=exported_id,
                          is_scaffold=resolved.is_scaffold, seconds=time.perf_counter() - started)
    if not passed:
        failures = "; ".join(f for c in checks for f in c.failures)
        raise ExportVerificationError(
            f"verification of the ONNX export of {resolved.model_id} FAILED on {len(windows)} windows of real "
            f"audio: {failures}. The export in {out_dir} is NOT fit for use; {MANIFEST_NAME} records every "
            "measurement (verification.passed = false)",
            "compare with --quantize none (fp32 only); check the onnxruntime/optimum versions; an int8 "
            "failure on an x86 host without VNNI may be kernel saturation (try --quantize avx2)",
            result,
        )
    log.info("exported %s to %s in %.1f s; verification passed", resolved.model_id, out_dir, result.seconds)
    return result


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The exported AST's shape from its ``config.json``: patch grid and tokens of the 1024 × 128
    fbank, and which AST variant (:data:`agent.analysis.models.AST_VARIANTS`) its strides are."""
    from agent.analysis.models import AST_VARIANTS

    patch = int(config.get("patch_size", 16))
    fs, ts = int(config["frequency_stride"]), int(config["time_stride"])
    grid = ((int(config["num_mel_bins"]) - patch) // fs + 1, (int(config["max_length"]) - patch) // ts + 1)
    variant = next((name for name, spec in AST_VARIANTS.items()
                    if (spec["frequency_stride"], spec["time_stride"]) == (fs, ts)), None)
    return {"variant": variant, "stands_for": AST_VARIANTS[variant]["model_id"] if variant else None,
            "frequency_stride": fs, "time_stride": ts, "patch_size": patch,
            "input": [1, int(config["max_length"]), int(config["num_mel_bins"])],
            "patch_grid": list(grid), "patches": grid[0] * grid[1], "tokens": grid[0] * grid[1] + 2,
            "layers": int(config["num_hidden_layers"]), "hidden_size": int(config["hidden_size"])}


def _manifest(*, resolved: ResolvedModel, model: str, staging: Path, quantize: str, per_channel: bool, qconfig: Any,
              windows: Sequence[AudioWindow], window_s: float, tolerances: Tolerances, threads: int,
              checks: Sequence[VerificationCheck], passed: bool, verification: dict[str, Any], exported_id: str,
              rewrites: dict[str, Any], timings: dict[str, float | None]) -> dict[str, Any]:
    fp32_ops, opset = _op_counts(staging / FP32_FILE)
    quant: dict[str, Any] = {"target": quantize}
    if qconfig is not None:
        int8_ops, _ = _op_counts(staging / INT8_FILE)
        quant.update({
            "method": "onnxruntime dynamic quantisation via optimum ORTQuantizer",
            "config": f"AutoQuantizationConfig.{quantize}(is_static=False, per_channel={per_channel})",
            "is_static": bool(qconfig.is_static),
            "format": qconfig.format.name,
            "mode": qconfig.mode.name,
            "activations_dtype": qconfig.activations_dtype.name,
            "activations_symmetric": bool(qconfig.activations_symmetric),
            "weights_dtype": qconfig.weights_dtype.name,
            "weights_symmetric": bool(qconfig.weights_symmetric),
            "per_channel": bool(qconfig.per_channel),
            "reduce_range": bool(qconfig.reduce_range),
            "operators_to_quantize": [getattr(op, "value", op) for op in qconfig.operators_to_quantize],
            "quantized_nodes": {op: n for op, n in int8_ops.items()
                                if op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear",
                                          "DynamicQuantizeMatMul", "QAttention", "QGemm")},
            "float_nodes_left": {op: n for op, n in int8_ops.items() if op in ("MatMul", "Gemm", "Conv")},
            "op_types_int8": int8_ops,
        })
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        files[rel] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    latency = verification["latency"]
    return {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "model": model,
            "model_id": resolved.model_id,
            "kind": resolved.source,
            "revision": _source_revision(resolved),
            "model_hash": resolved.model_hash,
            "is_scaffold": resolved.is_scaffold,
        },
        "model_id": exported_id,
        "is_scaffold": resolved.is_scaffold,
        "architecture": _architecture(json.loads((staging / "config.json").read_text(encoding="utf-8"))),
        "n_labels": verification["n_labels"],
        "task": "audio-classification",
        "opset": opset,
        "files": files,
        "graph_rewrites": rewrites,
        "op_types_fp32": fp32_ops,
        "quantization": quant,
        "versions": _versions(),
        "host": _host(),
        "timings_s": {k: (round(v, 3) if v is not None else None) for k, v in timings.items()},
        "tolerances": {"fp32": asdict(tolerances.fp32), "int8": asdict(tolerances.int8)},
        "verification": {
            "passed": passed,
            "method": ("sigmoid scores of every window through agent.analysis.classifier.load_classifier "
                       "(resampled to 16 kHz with soxr HQ), ONNX vs PyTorch; max |diff| over windows and "
                       "labels; top-k overlap = |topk(candidate) & topk(reference)| / k, min over windows"),
            "n_windows": len(windows),
            "window_s": window_s,
            "threads": threads,
            "median_latency_s_per_window": {k: round(v, 4) for k, v in latency.items()},
            "checks": [_check_dict(c) for c in checks],
            "failures": [f for c in checks for f in c.failures],
            "windows": [{"file": w.file, "start_s": round(w.start_s, 3), "duration_s": round(w.duration_s, 3),
                         "sample_rate": w.sample_rate} for w in windows],
        },
    }


def _check_dict(check: VerificationCheck) -> dict[str, Any]:
    d = asdict(check)
    d["failures"] = list(check.failures)
    return d


__all__ = [
    "AudioWindow", "BUNDLED_RECORDINGS", "VerificationCheck", "DEFAULT_QUANTIZE", "DEFAULT_WINDOW_S",
    "ExportResult", "ExportVerificationError", "FP32_FILE", "INT8_FILE", "MANIFEST_FORMAT",
    "MANIFEST_NAME", "QUANTIZE_CHOICES", "TOLERANCES", "TOP_K", "Tolerance", "Tolerances",
    "compare_scores", "export_model", "quantization_config", "sha256_file", "topk_overlap",
    "verification_windows",
]
