"""Multi-label AudioSet classification with the Audio Spectrogram Transformer (AST).

Two backends, chosen by ``[classifier] type`` through the explicit registry :data:`BACKENDS`:

- ``torch``: transformers ``ASTForAudioClassification`` on PyTorch (:class:`TorchBackend`;
  needs the ``torch`` extra);
- ``onnx``: an ``onnxruntime.InferenceSession`` (:class:`OnnxBackend`; core install only, no
  torch, transformers or optimum — what a Raspberry Pi runs).

Both share one pre/post-processing path (:class:`ASTClassifierBase`):

1. resample to the feature extractor's rate (16 kHz for AST) with ``soxr.resample``
   (quality ``HQ``) when the window's rate differs;
2. split a window longer than :data:`MAX_SEGMENT_S` (10 s, AudioSet's clip length; AST sees
   at most 1024 frames × 10 ms = 10.24 s) into ``ceil(duration / 10 s)`` consecutive segments
   of equal length (``numpy.array_split``; lengths differ by at most one sample). Equal
   lengths avoid a short tail segment that would be mostly padding;
3. :class:`~agent.analysis.features.ASTFeatures` (numpy; identical to transformers'
   ``ASTFeatureExtractor``, see ``tests/test_features.py``) → log-mel fbank, shape
   (n_segments, 1024, 128), float32, padded or truncated to 1024 frames and normalised with
   the AudioSet mean/std. Both backends use it, so they see bit-identical input;
4. all segments in one batch through the model → logits, shape (n_segments, n_labels);
5. scores = sigmoid(logits) (``scipy.special.expit``): AudioSet is multi-label, each label
   scored independently (Gong et al., "AST: Audio Spectrogram Transformer", 2021, train
   with BCE), never a softmax;
6. MAX-pooled over segments: a label present in any 10 s of the window scores as it does
   there (the usual clip-level aggregation of segment-level tagging);
7. top-k by score (ties: lower label index first), dropping scores below ``min_score``.

Labels come from the model directory's ``config.json`` (``id2label``), read with ``json``.
torch, transformers and onnxruntime are imported inside the backends' loaders, so importing
this module is cheap.

Details: docs/classification.md; the ONNX session settings and their measurements:
docs/performance.md#onnx-runtime-settings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.analysis.features import ASTFeatures
from agent.analysis.models import ResolvedModel, read_json, resolve_model
from agent.config import ClassifierConfig, OnnxClassifierConfig, TorchClassifierConfig
from agent.errors import AgentError, ModelError
from agent.records import Detection, ModelInfo

log = logging.getLogger("agent.analysis")

#: Longest audio, s, classified in one pass; longer windows are split (see module docstring).
MAX_SEGMENT_S = 10.0
#: Shortest segment the fbank accepts: one 25 ms frame (400 samples at 16 kHz).
MIN_SEGMENT_S = 0.025
SCAFFOLD_WARNING = "SCAFFOLD model with random weights: labels are meaningless (test use only)"
TORCH_EXTRA_HINT = "pip install 'soundscape-agent[torch]'"


@runtime_checkable
class Classifier(Protocol):
    """What the pipeline needs from a loaded classifier.

    Blocking, and NOT thread-safe: call ``classify``/``scores`` from one worker thread at a
    time (the model, its thread pool and the feature extractor hold mutable state).

    Implemented by the AST backends (:class:`ASTClassifierBase`, taxonomy ``audioset``) and
    by :class:`agent.analysis.birdnet.BirdNETClassifier` (taxonomy ``birdnet``).

    Attributes:
        taxonomy: the label set, ``audioset`` or ``birdnet``; stored with every detection.
        info: provenance stored with every result (:class:`~agent.records.ModelInfo`).
        labels: label names in index order (527 AudioSet display names for AST).
    """

    # read-only members: the AST classes set ``taxonomy`` on the class and ``labels`` as a tuple
    @property
    def taxonomy(self) -> str: ...

    @property
    def info(self) -> ModelInfo: ...

    @property
    def labels(self) -> Sequence[str]: ...

    def classify(self, samples: npt.NDArray[np.float32], sample_rate: int,
                 start_time: datetime | None = None) -> tuple[Detection, ...]:
        """Top-k labels of one window (``start_time``: the window's UTC start, for
        date-dependent filters; AST ignores it); see :meth:`ASTClassifierBase.classify`."""
        ...


def segment_audio(
    samples: npt.NDArray[np.floating[Any]], sample_rate: int, target_rate: int, max_segment_s: float = MAX_SEGMENT_S
) -> list[npt.NDArray[np.float32]]:
    """Resample a window to ``target_rate`` and split it into model-sized segments.

    Args:
        samples: mono audio, shape (n,), full scale ±1.0 (any float dtype; float32 used).
        sample_rate: rate of ``samples``, Hz.
        target_rate: the feature extractor's rate, Hz (16000 for AST).
        max_segment_s: longest segment, s.

    Returns:
        ``ceil(n' / (max_segment_s · target_rate))`` float32 arrays of near-equal length that
        concatenate to the resampled window (n' samples); resampling by ``soxr.resample``,
        quality HQ, skipped when the rates are equal.

    Raises:
        ValueError: ``samples`` is empty, not 1-D or not finite, a rate is not positive, or
            a segment would be shorter than one 25 ms analysis frame.
    """
    x = np.asarray(samples)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
    if sample_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {sample_rate} and {target_rate}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or inf")
    if sample_rate != target_rate:
        import soxr

        x = np.ascontiguousarray(soxr.resample(x, sample_rate, target_rate, quality="HQ"), dtype=np.float32)
    max_len = int(round(max_segment_s * target_rate))
    n_segments = max(1, math.ceil(len(x) / max_len))
    segments = np.array_split(x, n_segments)
    if len(segments[-1]) < MIN_SEGMENT_S * target_rate:
        raise ValueError(
            f"window too short to classify: {len(x) / target_rate:.4f} s, need >= {MIN_SEGMENT_S} s"
        )
    return segments


def top_k_detections(
    scores: npt.NDArray[np.floating[Any]], labels: Sequence[str], top_k: int, min_score: float = 0.0
) -> tuple[Detection, ...]:
    """The ``top_k`` highest scores as :class:`~agent.records.Detection` records.

    Args:
        scores: shape (n_labels,), sigmoid scores in [0, 1].
        labels: names, same length, in index order.
        top_k: at most this many detections (>= 1).
        min_score: drop scores below this (keeps ``score >= min_score``).

    Returns:
        rank 1..k (k <= top_k), descending score; ties broken by lower label index.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")[:top_k]
    kept = [int(i) for i in order if scores[i] >= min_score]
    return tuple(
        Detection(rank=rank, label=labels[i], label_index=i, score=float(scores[i]))
        for rank, i in enumerate(kept, start=1)
    )


def read_labels(model_dir: Path, model_id: str = "") -> tuple[str, ...]:
    """Label names of a model directory, from ``config.json``'s ``id2label`` (json only).

    Args:
        model_dir: a local model directory.
        model_id: name used in error messages (default: the directory).

    Returns:
        the names in index order 0..n-1 (527 AudioSet display names for AST).

    Raises:
        ModelError: ``config.json`` is missing or unreadable, has no ``id2label`` object, or its
            keys are not exactly the integers 0..n-1.
    """
    name = model_id or str(model_dir)
    id2label = read_json(Path(model_dir) / "config.json").get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(f"model {name}: config.json has no id2label labels",
                         "the model's config.json is damaged or not a classifier's; restore it")
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except ValueError:
        by_index = {}
    if sorted(by_index) != list(range(len(id2label))):
        raise ModelError(f"model {name}: id2label does not cover 0..{len(id2label) - 1}",
                         "the model's config.json is damaged; restore it")
    return tuple(by_index[i] for i in range(len(by_index)))


class ASTClassifierBase:
    """Shared pre/post-processing of the AST backends; subclasses load a model and implement
    :meth:`_logits`. Not thread-safe (see :class:`Classifier`).

    Attributes:
        backend: registry name (``torch`` / ``onnx``).
        info: :class:`~agent.records.ModelInfo` of the loaded model.
        labels: label names in index order, from the model config's ``id2label``.
        sample_rate: the feature extractor's rate, Hz (16000).
        threads: CPU threads inference uses (the onnx backend resolves ``threads = 0``).
    """

    backend: ClassVar[str] = ""
    taxonomy: ClassVar[str] = "audioset"

    def __init__(self, cfg: TorchClassifierConfig | OnnxClassifierConfig) -> None:
        self._top_k = cfg.top_k
        self._min_score = cfg.min_score
        required, optional = self._files(cfg)
        resolved = resolve_model(cfg.model, required_files=required, extra_files=optional,
                                 hash_weights=self._hashed_weights(cfg))
        try:
            self._features = ASTFeatures.from_pretrained(resolved.local_dir)
        except (OSError, ValueError, TypeError) as e:
            raise ModelError(f"model {resolved.model_id}: cannot read {resolved.local_dir / 'preprocessor_config.json'}"
                             f": {e}", "copy the model's preprocessor_config.json (AST feature settings) "
                             "into its directory") from e
        self.sample_rate: int = self._features.sampling_rate
        self.threads: int = cfg.threads
        self.labels: tuple[str, ...] = read_labels(resolved.local_dir, resolved.model_id)
        self._load(resolved, cfg)
        self.info: ModelInfo = resolved.info(self.backend)
        self.resolved: ResolvedModel = resolved
        log.info("loaded model %s (sha256 %s, %d labels) from %s with the %s backend, %d thread(s)",
                 self.info.model_id, self.info.model_hash, len(self.labels), resolved.local_dir, self.backend,
                 self.threads)
        if resolved.is_scaffold:
            log.warning("%s: %s", SCAFFOLD_WARNING, self.info.model_id)

    # --- to implement -------------------------------------------------------------------
    def _files(self, cfg: Any) -> tuple[Sequence[str], Sequence[str]]:
        """(required, optional) files beyond config and PyTorch weights, for resolve_model."""
        return (), ()

    def _hashed_weights(self, cfg: Any) -> Sequence[str]:
        """Patterns of the weight files this backend loads: they, and no other, enter the hash."""
        return ("*.safetensors", "*.bin")

    def _load(self, resolved: ResolvedModel, cfg: Any) -> None:
        """Load the model (``self.labels`` is already set); raise ModelError if impossible."""
        raise NotImplementedError

    def _logits(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:  # (n, 1024, 128) -> (n, n_labels)
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def features(self, samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float32]:
        """AST input features of a window.

        Args:
            samples: mono, shape (n,), full scale ±1.0.
            sample_rate: Hz.

        Returns:
            float32, shape (n_segments, 1024, 128): normalised log-mel fbank per segment
            (see the module docstring, steps 1-3).

        Raises:
            ValueError: invalid or too short ``samples`` (see :func:`segment_audio`).
        """
        return self._features(segment_audio(samples, sample_rate, self.sample_rate))

    def scores(self, samples: npt.NDArray[np.float32], sample_rate: int) -> npt.NDArray[np.float64]:
        """Sigmoid score of every label for one window, max-pooled over its segments.

        Args:
            samples: mono, shape (n,), full scale ±1.0 (float32 from capture).
            sample_rate: Hz; resampled to 16 kHz internally.

        Returns:
            float64, shape (n_labels,), each in [0, 1].

        Raises:
            ValueError: invalid or too short ``samples``.
            ModelError: the model returned logits of the wrong shape or non-finite values.
            Anything the backend raises during inference (the pipeline records FAILED).
        """
        features = self.features(samples, sample_rate)
        logits = np.asarray(self._logits(features), dtype=np.float64)
        if logits.shape != (features.shape[0], len(self.labels)):
            raise ModelError(f"model {self.info.model_id} returned logits of shape {logits.shape}, "
                             f"expected {(features.shape[0], len(self.labels))}", "check the model files")
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"model {self.info.model_id} returned non-finite logits", "check the model files")
        from scipy.special import expit

        pooled: npt.NDArray[np.float64] = expit(logits).max(axis=0)
        return pooled

    def classify(self, samples: npt.NDArray[np.float32], sample_rate: int,
                 start_time: datetime | None = None) -> tuple[Detection, ...]:
        """Top-k AudioSet labels of one window. Blocking; not thread-safe.

        Args:
            samples: mono, shape (n,), float32, full scale ±1.0.
            sample_rate: Hz (any; resampled to 16 kHz).
            start_time: unused (AudioSet labels do not depend on the date).

        Returns:
            up to ``top_k`` :class:`~agent.records.Detection` (rank from 1, descending sigmoid
            score in [0, 1], label from the model's ``id2label``), scores below ``min_score``
            dropped.

        Raises:
            as :meth:`scores`.
        """
        return top_k_detections(self.scores(samples, sample_rate), self.labels, self._top_k, self._min_score)


class TorchBackend(ASTClassifierBase):
    """``type = "torch"``: ``ASTForAudioClassification.from_pretrained(local_dir)`` in eval
    mode, inference under ``torch.inference_mode()``; needs the ``torch`` extra
    (``pip install 'soundscape-agent[torch]'``: torch and transformers, imported here only).

    Features are the shared numpy ones (:class:`~agent.analysis.features.ASTFeatures`),
    identical to transformers' ``ASTFeatureExtractor`` (``tests/test_features.py``), so both
    backends see the same input. ``torch.set_num_threads(cfg.threads)`` is applied at load; it
    is process-wide.

    Args:
        cfg: the ``[classifier]`` section with ``type = "torch"``.

    Raises:
        ModelError: the model cannot be resolved, has no safetensors/bin weights, its
            checkpoint lacks weights the architecture needs (they would be random), or torch /
            transformers are not installed.
    """

    backend: ClassVar[str] = "torch"

    def _load(self, resolved: ResolvedModel, cfg: TorchClassifierConfig) -> None:
        if not any(resolved.local_dir.glob("*.safetensors")) and not any(resolved.local_dir.glob("*.bin")):
            raise ModelError(
                f"model directory {resolved.local_dir} holds no PyTorch weights (*.safetensors or *.bin)",
                'use type = "onnx" for an ONNX-only directory, or copy the model\'s model.safetensors there',
            )
        try:
            import torch
            from transformers import ASTForAudioClassification
        except ImportError as e:
            raise ModelError(f"the torch backend needs torch and transformers: {e}",
                             f"{TORCH_EXTRA_HINT}, or set [classifier] type = \"onnx\"") from e

        torch.set_num_threads(cfg.threads)
        model, loading_info = ASTForAudioClassification.from_pretrained(
            str(resolved.local_dir), local_files_only=True, output_loading_info=True
        )
        missing = list(loading_info.get("missing_keys", []))
        mismatched = list(loading_info.get("mismatched_keys", []))
        if missing or mismatched:
            raise ModelError(
                f"model {resolved.model_id}: the checkpoint lacks {len(missing) + len(mismatched)} weight(s) "
                f"(e.g. {(missing + [str(m) for m in mismatched])[0]}); they would be random",
                "use an AST checkpoint fine-tuned for audio classification (e.g. "
                "MIT/ast-finetuned-audioset-10-10-0.4593)",
            )
        model.eval()
        self._torch = torch
        self._model = model

    def _logits(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with self._torch.inference_mode():
            out = self._model(input_values=self._torch.from_numpy(features))
        logits: npt.NDArray[np.float32] = out.logits.float().numpy()
        return logits


#: ``[classifier] graph_optimization_level`` → ``onnxruntime.GraphOptimizationLevel`` member.
ORT_GRAPH_OPTIMIZATION: dict[str, str] = {
    "disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: ``[classifier] execution_mode`` → ``onnxruntime.ExecutionMode`` member.
ORT_EXECUTION_MODE: dict[str, str] = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
#: ``[classifier] arena_extend_strategy`` → onnxruntime's ``ArenaExtendStrategy`` value
#: (``onnxruntime/core/framework/arena_extend_strategy.h``: kNextPowerOfTwo 0, kSameAsRequested 1).
ORT_ARENA_EXTEND_STRATEGY: dict[str, int] = {"next_power_of_two": 0, "same_as_requested": 1}


def register_cpu_arena(strategy: str) -> None:
    """Register a CPU arena allocator growing by ``strategy`` with onnxruntime's process-wide
    environment, for the sessions created after it that set ``session.use_env_allocators``.

    onnxruntime has no per-session arena settings for its CPU execution provider; the
    environment's registered allocator is the documented way (C API "Share allocator(s)
    between sessions", ``CreateAndRegisterAllocator``). A later registration replaces the
    earlier one for sessions created after it (checked by measurement); sessions already
    created keep theirs.

    Args:
        strategy: a key of :data:`ORT_ARENA_EXTEND_STRATEGY`.

    Raises:
        ImportError: onnxruntime is not installed.
        KeyError: unknown ``strategy``.
    """
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(
        info, ort.OrtArenaCfg({"arena_extend_strategy": ORT_ARENA_EXTEND_STRATEGY[strategy]})
    )


def onnx_session_options(cfg: OnnxClassifierConfig) -> Any:
    """The ``onnxruntime.SessionOptions`` the ``[classifier]`` keys describe.

    ``intra_op_num_threads = threads`` (0: all usable cores but one, see
    :attr:`~agent.config.OnnxClassifierConfig.intra_op_threads`),
    ``inter_op_num_threads = inter_op_threads``,
    ``graph_optimization_level``, ``execution_mode``, ``enable_cpu_mem_arena =
    memory_arena``, ``enable_mem_pattern = memory_pattern``; log severity ERROR (onnxruntime's
    load-time warnings about unused initialisers are noise in a service log). With the arena
    on, registers the environment's CPU arena with ``arena_extend_strategy``
    (:func:`register_cpu_arena`) and sets ``session.use_env_allocators = 1``, so create the
    session right after this call.

    Args:
        cfg: an ``onnx`` classifier section.

    Returns:
        ``onnxruntime.SessionOptions``.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = cfg.intra_op_threads
    options.inter_op_num_threads = cfg.inter_op_threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               ORT_GRAPH_OPTIMIZATION[cfg.graph_optimization_level])
    options.execution_mode = getattr(ort.ExecutionMode, ORT_EXECUTION_MODE[cfg.execution_mode])
    options.enable_cpu_mem_arena = cfg.memory_arena
    options.enable_mem_pattern = cfg.memory_pattern
    if cfg.memory_arena:
        register_cpu_arena(cfg.arena_extend_strategy)
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3
    return options


class OnnxBackend(ASTClassifierBase):
    """``type = "onnx"``: an ``onnxruntime.InferenceSession`` on the CPU execution provider,
    fed the numpy features (:class:`~agent.analysis.features.ASTFeatures`); labels from the
    directory's ``config.json``. Imports neither torch, transformers nor optimum, so it runs in
    a core install (``pip install soundscape-agent``) on a machine without torch.

    Session options from the ``[classifier]`` keys (:func:`onnx_session_options`). The model's
    input is the one named ``input_values`` (else its only input), float32
    (batch, 1024, 128); its output the one named ``logits`` (else the first), (batch, n_labels),
    as optimum's ``audio-classification`` export writes them.

    Args:
        cfg: the ``[classifier]`` section with ``type = "onnx"``; ``file_name`` is the ONNX
            file inside the model directory (an external-data file ``<file_name>_data`` beside
            it is found by onnxruntime).

    Raises:
        ModelError: the model cannot be resolved; ``file_name`` does not exist in it (hint:
            ``model export`` or ``model scaffold --onnx``); onnxruntime is not
            installed; the file is not a loadable ONNX model; or its inputs/outputs do not look
            like an AST audio classifier with as many outputs as ``config.json`` has labels.
    """

    backend: ClassVar[str] = "onnx"

    def _files(self, cfg: OnnxClassifierConfig) -> tuple[Sequence[str], Sequence[str]]:
        return (cfg.file_name,), (cfg.file_name + "_data",)

    def _hashed_weights(self, cfg: OnnxClassifierConfig) -> Sequence[str]:
        return (cfg.file_name, cfg.file_name + "_data")

    def _load(self, resolved: ResolvedModel, cfg: OnnxClassifierConfig) -> None:
        onnx_path = resolved.local_dir / cfg.file_name
        if not onnx_path.is_file():
            raise ModelError(
                f"model directory {resolved.local_dir} holds no ONNX file {cfg.file_name}",
                "export it on a workstation: `soundscape-agent model export --model MODEL_DIR_OR_ID --out DIR` "
                "writes model.onnx and the int8 model_quantized.onnx (needs the export extra); for a test "
                "model run `soundscape-agent model scaffold --onnx --out DIR`",
            )
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ModelError(f"the onnx backend needs onnxruntime: {e}",
                             "pip install 'onnxruntime>=1.31' (a core dependency of soundscape-agent)") from e
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=onnx_session_options(cfg),
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise ModelError(f"onnxruntime cannot load {onnx_path}: {detail}",
                             "re-export the model with `soundscape-agent model export` or re-scaffold it") from e
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if "input_values" in inputs:
            self._input = "input_values"
        elif len(inputs) == 1:
            self._input = next(iter(inputs))
        else:
            raise ModelError(f"{onnx_path} has inputs {sorted(inputs)}, expected one named input_values",
                             "export it with `soundscape-agent model export`")
        self._output = "logits" if "logits" in outputs else outputs[0]
        out_shape = next(o.shape for o in session.get_outputs() if o.name == self._output)
        width = out_shape[-1] if out_shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise ModelError(f"{onnx_path} scores {width} labels but its config.json names {len(self.labels)}",
                             "the ONNX file and config.json come from different models; re-export it")
        self._session = session
        self.threads = cfg.intra_op_threads

    def _logits(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.asarray(self._session.run([self._output], {self._input: features})[0])


#: ``[classifier] type`` → implementation.
BACKENDS: dict[str, type[ASTClassifierBase]] = {"torch": TorchBackend, "onnx": OnnxBackend}


def load_classifier(cfg: ClassifierConfig) -> Classifier:
    """Load the classifier the ``[classifier]`` section describes.

    Dispatches on ``cfg.type`` through :data:`BACKENDS`. Logs (logger ``agent.analysis``) the
    model id, sha256, backend and thread count, and a WARNING when the model is a scaffold.
    Does not look at ``cfg.enabled`` (the pipeline decides whether to load at all).

    Args:
        cfg: :class:`~agent.config.TorchClassifierConfig` or
            :class:`~agent.config.OnnxClassifierConfig`.

    Returns:
        a :class:`Classifier`.

    Raises:
        ModelError: unknown ``type``, or any failure while resolving or loading the model;
            the message names ``cfg.model`` and the backend, the hint says what to do.
    """
    backend = BACKENDS.get(cfg.type)
    if backend is None:
        raise ModelError(f"unknown classifier type {cfg.type!r}", f"use one of: {', '.join(sorted(BACKENDS))}")
    try:
        return backend(cfg)
    except AgentError:
        raise
    except ImportError as e:
        raise ModelError(f"cannot load model {cfg.model!r} with the {cfg.type} backend: {e}",
                         f"install the missing package ({TORCH_EXTRA_HINT} for torch)") from e
    except Exception as e:  # noqa: BLE001 - never a raw traceback to the user
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"cannot load model {cfg.model!r} with the {cfg.type} backend: {type(e).__name__}: {detail}",
            "check that the directory holds a complete AST model (config.json, preprocessor_config.json, "
            "model.safetensors or the ONNX file); re-download or re-scaffold it",
        ) from e


__all__ = [
    "ASTClassifierBase", "BACKENDS", "Classifier", "MAX_SEGMENT_S", "ORT_EXECUTION_MODE",
    "ORT_GRAPH_OPTIMIZATION", "OnnxBackend", "SCAFFOLD_WARNING", "TORCH_EXTRA_HINT", "TorchBackend",
    "load_classifier", "onnx_session_options", "read_labels", "segment_audio", "top_k_detections",
]
