"""Multi-label AudioSet classification with the Audio Spectrogram Transformer (AST).

Two backends, chosen by ``[classifier] type`` through the explicit registry :data:`BACKENDS`:

- ``torch``: transformers ``ASTForAudioClassification`` on PyTorch (:class:`TorchBackend`);
- ``onnx``: optimum ``ORTModelForAudioClassification`` on onnxruntime (:class:`OnnxBackend`).

Both share one pre/post-processing path (:class:`ASTClassifierBase`):

1. resample to the feature extractor's rate (16 kHz for AST) with ``soxr.resample``
   (quality ``HQ``) when the window's rate differs;
2. split a window longer than :data:`MAX_SEGMENT_S` (10 s, AudioSet's clip length; AST sees
   at most 1024 frames × 10 ms = 10.24 s) into ``ceil(duration / 10 s)`` consecutive segments
   of equal length (``numpy.array_split``; lengths differ by at most one sample). Equal
   lengths avoid a short tail segment that would be mostly padding;
3. ``ASTFeatureExtractor`` → log-mel fbank, shape (n_segments, 1024, 128), float32, padded
   or truncated to 1024 frames and normalised with the AudioSet mean/std;
4. all segments in one batch through the model → logits, shape (n_segments, n_labels);
5. scores = sigmoid(logits) (``scipy.special.expit``): AudioSet is multi-label, each label
   scored independently (Gong et al., "AST: Audio Spectrogram Transformer", 2021, train
   with BCE), never a softmax;
6. MAX-pooled over segments: a label present in any 10 s of the window scores as it does
   there (the usual clip-level aggregation of segment-level tagging);
7. top-k by score (ties: lower label index first), dropping scores below ``min_score``.

torch, transformers and optimum are imported inside the backends' constructors, so importing
this module is cheap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from agent.config import ClassifierConfig, OnnxClassifierConfig, TorchClassifierConfig
from agent.errors import AgentError, ModelError
from agent.records import Detection, ModelInfo

from agent.analysis.models import ResolvedModel, load_feature_extractor, resolve_model

log = logging.getLogger("agent.analysis")

#: Longest audio, s, classified in one pass; longer windows are split (see module docstring).
MAX_SEGMENT_S = 10.0
#: Shortest segment the fbank accepts: one 25 ms frame (400 samples at 16 kHz).
MIN_SEGMENT_S = 0.025
SCAFFOLD_WARNING = "SCAFFOLD model with random weights: labels are meaningless (test use only)"


@runtime_checkable
class Classifier(Protocol):
    """What the pipeline needs from a loaded classifier.

    Blocking, and NOT thread-safe: call ``classify``/``scores`` from one worker thread at a
    time (the model, its thread pool and the feature extractor hold mutable state).

    Attributes:
        info: provenance stored with every result (:class:`~agent.records.ModelInfo`).
        labels: label names in index order (527 AudioSet display names for AST).
    """

    info: ModelInfo
    labels: Sequence[str]

    def classify(self, samples: np.ndarray, sample_rate: int) -> tuple[Detection, ...]:
        """Top-k labels of one window; see :meth:`ASTClassifierBase.classify`."""
        ...

    def scores(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Every label's score of one window; see :meth:`ASTClassifierBase.scores`."""
        ...


def segment_audio(
    samples: np.ndarray, sample_rate: int, target_rate: int, max_segment_s: float = MAX_SEGMENT_S
) -> list[np.ndarray]:
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
    scores: np.ndarray, labels: Sequence[str], top_k: int, min_score: float = 0.0
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


class ASTClassifierBase:
    """Shared pre/post-processing of the AST backends; subclasses load a model and implement
    :meth:`_logits`. Not thread-safe (see :class:`Classifier`).

    Attributes:
        backend: registry name (``torch`` / ``onnx``).
        info: :class:`~agent.records.ModelInfo` of the loaded model.
        labels: label names in index order, from the model config's ``id2label``.
        sample_rate: the feature extractor's rate, Hz (16000).
    """

    backend: ClassVar[str] = ""

    def __init__(self, cfg: TorchClassifierConfig | OnnxClassifierConfig) -> None:
        self._top_k = cfg.top_k
        self._min_score = cfg.min_score
        required, optional = self._files(cfg)
        resolved = resolve_model(cfg.model, required_files=required, extra_files=optional)
        self._feature_extractor = load_feature_extractor(resolved.local_dir)
        self.sample_rate: int = int(self._feature_extractor.sampling_rate)
        config = self._load(resolved, cfg)
        n_labels = int(config.num_labels)
        id2label = {int(k): str(v) for k, v in config.id2label.items()}
        if sorted(id2label) != list(range(n_labels)):
            raise ModelError(f"model {resolved.model_id}: id2label does not cover 0..{n_labels - 1}",
                             "the model's config.json is damaged; restore it")
        self.labels: tuple[str, ...] = tuple(id2label[i] for i in range(n_labels))
        self.info: ModelInfo = resolved.info(self.backend)
        self.resolved: ResolvedModel = resolved
        log.info("loaded model %s (sha256 %s, %d labels) from %s with the %s backend, %d thread(s)",
                 self.info.model_id, self.info.model_hash, n_labels, resolved.local_dir, self.backend,
                 cfg.threads)
        if resolved.is_scaffold:
            log.warning("%s: %s", SCAFFOLD_WARNING, self.info.model_id)

    # --- to implement -------------------------------------------------------------------
    def _files(self, cfg: Any) -> tuple[Sequence[str], Sequence[str]]:
        """(required, optional) files beyond config and PyTorch weights, for resolve_model."""
        return (), ()

    def _load(self, resolved: ResolvedModel, cfg: Any) -> Any:  # returns the model's config
        raise NotImplementedError

    def _logits(self, features: np.ndarray) -> np.ndarray:  # (n, 1024, 128) -> (n, n_labels)
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def features(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
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
        segments = segment_audio(samples, sample_rate, self.sample_rate)
        out = self._feature_extractor(segments, sampling_rate=self.sample_rate, return_tensors="np")
        return np.ascontiguousarray(out["input_values"], dtype=np.float32)

    def scores(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
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

        return expit(logits).max(axis=0)

    def classify(self, samples: np.ndarray, sample_rate: int) -> tuple[Detection, ...]:
        """Top-k AudioSet labels of one window. Blocking; not thread-safe.

        Args:
            samples: mono, shape (n,), float32, full scale ±1.0.
            sample_rate: Hz (any; resampled to 16 kHz).

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
    mode, inference under ``torch.inference_mode()``.

    ``torch.set_num_threads(cfg.threads)`` is applied at load; it is process-wide.

    Args:
        cfg: the ``[classifier]`` section with ``type = "torch"``.

    Raises:
        ModelError: the model cannot be resolved, has no safetensors/bin weights, or its
            checkpoint lacks weights the architecture needs (they would be random).
    """

    backend: ClassVar[str] = "torch"

    def _load(self, resolved: ResolvedModel, cfg: TorchClassifierConfig) -> Any:
        import torch
        from transformers import ASTForAudioClassification

        if not any(resolved.local_dir.glob("*.safetensors")) and not any(resolved.local_dir.glob("*.bin")):
            raise ModelError(
                f"model directory {resolved.local_dir} holds no PyTorch weights (*.safetensors or *.bin)",
                'use type = "onnx" for an ONNX-only directory, or copy the model\'s model.safetensors there',
            )
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
        return model.config

    def _logits(self, features: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self._model(input_values=self._torch.from_numpy(features))
        return out.logits.float().numpy()


class OnnxBackend(ASTClassifierBase):
    """``type = "onnx"``: ``optimum.onnxruntime.ORTModelForAudioClassification`` on the
    CPU execution provider, ``intra_op_num_threads = cfg.threads``, ``inter_op_num_threads = 1``.

    Args:
        cfg: the ``[classifier]`` section with ``type = "onnx"``; ``file_name`` is the ONNX
            file inside the model directory.

    Raises:
        ModelError: the model cannot be resolved, ``file_name`` does not exist in it (hint:
            ``model scaffold --onnx`` or ``optimum-cli export onnx``), or optimum/onnxruntime
            are not installed.
    """

    backend: ClassVar[str] = "onnx"

    def _files(self, cfg: OnnxClassifierConfig) -> tuple[Sequence[str], Sequence[str]]:
        return (cfg.file_name,), (cfg.file_name + "_data",)

    def _load(self, resolved: ResolvedModel, cfg: OnnxClassifierConfig) -> Any:
        onnx_path = resolved.local_dir / cfg.file_name
        if not onnx_path.is_file():
            raise ModelError(
                f"model directory {resolved.local_dir} holds no ONNX file {cfg.file_name}",
                "for a test model run `soundscape-agent model scaffold --onnx --out DIR`; for a real one "
                f"export it: `optimum-cli export onnx --model {resolved.local_dir} "
                f"--task audio-classification {resolved.local_dir}`",
            )
        try:
            import onnxruntime as ort
            from optimum.onnxruntime import ORTModelForAudioClassification
        except ImportError as e:
            raise ModelError(f"the onnx backend needs optimum and onnxruntime: {e}",
                             "pip install 'soundscape-agent[onnx]', or set [classifier] type = \"torch\"") from e
        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.threads
        options.inter_op_num_threads = 1
        rel = onnx_path.relative_to(resolved.local_dir)
        subfolder = "" if rel.parent.as_posix() == "." else rel.parent.as_posix()
        model = ORTModelForAudioClassification.from_pretrained(
            str(resolved.local_dir),
            file_name=rel.name,
            subfolder=subfolder,
            session_options=options,
            provider="CPUExecutionProvider",
            local_files_only=True,
        )
        self._model = model
        return model.config

    def _logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(input_values=features).logits)


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
                         "install the missing package (pip install 'soundscape-agent[onnx]' for onnx)") from e
    except Exception as e:  # noqa: BLE001 - never a raw traceback to the user
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(
            f"cannot load model {cfg.model!r} with the {cfg.type} backend: {type(e).__name__}: {detail}",
            "check that the directory holds a complete AST model (config.json, preprocessor_config.json, "
            "model.safetensors or the ONNX file); re-download or re-scaffold it",
        ) from e


__all__ = [
    "ASTClassifierBase", "BACKENDS", "Classifier", "MAX_SEGMENT_S", "OnnxBackend", "SCAFFOLD_WARNING",
    "TorchBackend", "load_classifier", "segment_audio", "top_k_detections",
]
